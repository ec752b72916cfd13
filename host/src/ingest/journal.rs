//! The ingest journal: acknowledged events survive a crash.
//!
//! The webhook writes every accepted batch to an embedded SQLite journal
//! before it answers 200, and the worker deletes the entry once the batch is
//! evaluated and its alerts are handed to the outputs. At start, entries
//! still in the journal (the process died with them queued) are evaluated
//! before new traffic is taken. A batch evaluated just before a crash may be
//! evaluated again: at least once, never lost.
//!
//! The journal runs in WAL mode with `synchronous = NORMAL`: a commit survives
//! the process being killed (it is in the operating system's cache) without
//! an fsync on every request; a power loss can take the last moments.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use peregrine_sdk::audit::AuditEvent;
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Keep acknowledged events on disk until they are evaluated.
    pub enabled: bool,
    /// Journal file. Default: `$XDG_DATA_HOME/peregrine/ingest-journal.sqlite`
    /// or `~/.local/share/peregrine/ingest-journal.sqlite`.
    pub path: Option<PathBuf>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            path: None,
        }
    }
}

impl JournalConfig {
    pub fn resolved_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.path {
            return Some(p.clone());
        }
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))?;
        Some(base.join("peregrine/ingest-journal.sqlite"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("ingest journal {path}: {source}")]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "ingest journal {path} is in use by another process (is another peregrine serve running?)"
    )]
    Locked { path: PathBuf },
    #[error("ingest journal: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ingest journal: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A batch's place in the journal; completing it removes the batch.
pub struct JournalEntry {
    journal: Arc<Journal>,
    id: i64,
}

impl JournalEntry {
    pub fn new(journal: Arc<Journal>, id: i64) -> Self {
        JournalEntry { journal, id }
    }

    /// The batch is evaluated and its alerts handed on.
    pub fn complete(self) {
        self.journal.complete(self.id);
    }

    /// The batch was not queued after all.
    pub fn discard(self) {
        self.journal.discard(self.id);
    }
}

/// A batch found in the journal at start.
pub struct PendingBatch {
    pub id: i64,
    pub tenant: Arc<str>,
    pub events: Vec<AuditEvent>,
}

pub struct Journal {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Journal {
    /// Opens (or creates) the journal and locks it for this process.
    pub fn open(path: &Path) -> Result<Arc<Self>, JournalError> {
        let err = |source: rusqlite::Error| match source {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) =>
            {
                JournalError::Locked {
                    path: path.to_path_buf(),
                }
            }
            source => JournalError::Open {
                path: path.to_path_buf(),
                source,
            },
        };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        // Another process holding the journal is an answer, not something to wait for.
        conn.busy_timeout(std::time::Duration::from_millis(100))
            .map_err(err)?;
        // Two processes evaluating one journal would evaluate its batches
        // twice: the first to open it keeps it.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS batches (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                tenant TEXT NOT NULL,
                body BLOB NOT NULL,
                json_lines INTEGER NOT NULL,
                accepted TEXT NOT NULL
             );",
        )
        .map_err(err)?;
        Ok(Arc::new(Journal {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a request body about to be acknowledged, with the (auditID,
    /// stage) of the events accepted from it; returns the entry's id.
    pub fn append(
        &self,
        tenant: &str,
        body: &[u8],
        json_lines: bool,
        accepted: &[(String, String)],
    ) -> Result<i64, JournalError> {
        let accepted = serde_json::to_string(accepted)?;
        let conn = self.conn();
        conn.execute(
            "INSERT INTO batches (tenant, body, json_lines, accepted) VALUES (?, ?, ?, ?)",
            params![tenant, body, json_lines, accepted],
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// The batch is evaluated and its alerts handed on.
    pub fn complete(&self, id: i64) {
        if let Err(e) = self
            .conn()
            .execute("DELETE FROM batches WHERE id = ?", params![id])
        {
            // The batch stays in the journal and is evaluated again at the
            // next start: a duplicate, not a loss.
            tracing::error!(
                id,
                "cannot remove an evaluated batch from the ingest journal: {e}"
            );
        }
    }

    /// Forgets a batch that was journalled but could not be queued (the
    /// webhook answers 429, and the apiserver sends it again).
    pub fn discard(&self, id: i64) {
        self.complete(id);
    }

    /// Batches left by a previous process, oldest first: each body decoded
    /// again, keeping the events that were accepted from it. Unreadable
    /// entries are logged, counted and removed, so they cannot block the start.
    pub fn pending(&self, max_event_bytes: usize) -> Result<Vec<PendingBatch>, JournalError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT id, tenant, body, json_lines, accepted FROM batches ORDER BY id")?;
        let rows: Vec<(i64, String, Vec<u8>, bool, String)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        let mut out = Vec::new();
        for (id, tenant, body, json_lines, accepted) in rows {
            let decoded = if json_lines {
                Ok(super::replay::decode_input(&body, max_event_bytes))
            } else {
                super::decode::decode_payload(&body, max_event_bytes)
            };
            let accepted = serde_json::from_str::<Vec<(String, String)>>(&accepted);
            match (decoded, accepted) {
                (Ok(decoded), Ok(accepted)) => {
                    let mut wanted: std::collections::HashMap<(String, String), usize> =
                        std::collections::HashMap::new();
                    for key in accepted {
                        *wanted.entry(key).or_default() += 1;
                    }
                    // Each accepted key as many times as it was accepted: the
                    // body's duplicates were dropped then, and are now.
                    let events = decoded
                        .events
                        .into_iter()
                        .filter(
                            |e| match wanted.get_mut(&(e.audit_id.clone(), e.stage.clone())) {
                                Some(n) if *n > 0 => {
                                    *n -= 1;
                                    true
                                }
                                _ => false,
                            },
                        )
                        .collect();
                    out.push(PendingBatch {
                        id,
                        tenant: tenant.into(),
                        events,
                    });
                }
                (decoded, accepted) => {
                    let why = match (decoded.err(), accepted.err()) {
                        (Some(e), _) => e.to_string(),
                        (_, Some(e)) => e.to_string(),
                        _ => String::new(),
                    };
                    metrics::counter!("peregrine_journal_discarded_total").increment(1);
                    tracing::error!(id, "discarding an unreadable ingest journal entry: {why}");
                    conn.execute("DELETE FROM batches WHERE id = ?", params![id])?;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> String {
        format!(
            r#"{{"kind":"Event","auditID":"{id}","stage":"ResponseComplete","verb":"create","requestObject":{{"kind":"Pod","spec":{{"hostPID":true}}}}}}"#
        )
    }

    fn keys(ids: &[&str]) -> Vec<(String, String)> {
        ids.iter()
            .map(|i| (i.to_string(), "ResponseComplete".to_string()))
            .collect()
    }

    #[test]
    fn batches_survive_until_completed_and_a_second_process_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sqlite");
        {
            let j = Journal::open(&path).unwrap();
            // a2 was a duplicate of an earlier request and b2 was rejected:
            // only a1 and a3 were accepted from this body.
            let body = format!(
                r#"{{"kind":"EventList","items":[{},{},{}]}}"#,
                ev("a1"),
                ev("a2"),
                ev("a3")
            );
            j.append("t1", body.as_bytes(), false, &keys(&["a1", "a3"]))
                .unwrap();
            let b = j
                .append("t2", ev("b1").as_bytes(), false, &keys(&["b1"]))
                .unwrap();
            let lines = format!("{}\n{}\n", ev("c1"), ev("c2"));
            j.append("t1", lines.as_bytes(), true, &keys(&["c1", "c2"]))
                .unwrap();
            let d = j
                .append("t1", ev("d1").as_bytes(), false, &keys(&["d1"]))
                .unwrap();
            j.complete(b);
            j.discard(d);
            assert!(matches!(
                Journal::open(&path),
                Err(JournalError::Locked { .. })
            ));
        }
        let j = Journal::open(&path).unwrap();
        let pending = j.pending(1 << 20).unwrap();
        let got: Vec<(String, Vec<String>)> = pending
            .iter()
            .map(|p| {
                (
                    p.tenant.to_string(),
                    p.events.iter().map(|e| e.audit_id.clone()).collect(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("t1".to_string(), vec!["a1".to_string(), "a3".to_string()]),
                ("t1".to_string(), vec!["c1".to_string(), "c2".to_string()]),
            ]
        );
        assert_eq!(
            pending[0].events[0].request_object.as_ref().unwrap().get(),
            r#"{"kind":"Pod","spec":{"hostPID":true}}"#,
            "raw objects survive byte for byte"
        );
    }
}
