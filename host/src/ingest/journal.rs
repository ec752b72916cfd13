//! The ingest journal: acknowledged events survive a crash.
//!
//! Before the webhook answers 200, it writes the request body, with the
//! (auditID, stage) of the events it accepted from it, to a file of its own
//! in the journal directory. The file is removed once the batch is evaluated
//! and every alert it raised is durable: in the spool of every output it is
//! routed to (see [`crate::durable`]). At start, the files left by a killed
//! process are decoded again and their accepted events evaluated before new
//! traffic is taken. A batch evaluated just before a crash may be evaluated
//! again: at least once, never lost.
//!
//! One file per request keeps the hot path to a write and a rename, with no
//! compaction to stall it; there are about as many files as batches queued
//! or on their way to the spools (plus, until the next start, the batches
//! whose alerts a spool failed to write). Files are not fsynced: they
//! survive the process being killed (the data is in the operating system's
//! cache), not a power loss of the node.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use peregrine_sdk::audit::AuditEvent;
use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"peregrine-journal 1\n";
const EXTENSION: &str = "batch";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Keep acknowledged events on disk until they are evaluated.
    pub enabled: bool,
    /// Journal directory. Default: `$XDG_DATA_HOME/peregrine/journal` or
    /// `~/.local/share/peregrine/journal`.
    pub dir: Option<PathBuf>,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            dir: None,
        }
    }
}

impl JournalConfig {
    pub fn resolved_dir(&self) -> Option<PathBuf> {
        if let Some(p) = &self.dir {
            return Some(p.clone());
        }
        Some(crate::paths::xdg_dir("XDG_DATA_HOME", ".local/share")?.join("peregrine/journal"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("ingest journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "ingest journal {path} is in use by another process (is another peregrine serve running?)"
    )]
    Locked { path: PathBuf },
}

/// The header of a journal file; the request body follows it.
#[derive(Serialize, Deserialize)]
struct Header {
    tenant: String,
    /// Absent in files written before clusters were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster: Option<String>,
    json_lines: bool,
    accepted: Vec<(String, String)>,
}

/// A batch's place in the journal; completing it removes the batch.
pub struct JournalEntry {
    journal: Arc<Journal>,
    id: u64,
}

impl JournalEntry {
    pub fn new(journal: Arc<Journal>, id: u64) -> Self {
        JournalEntry { journal, id }
    }

    /// The batch is evaluated and its alerts are durable. An entry dropped
    /// without this stays, and is evaluated again at the next start.
    pub fn complete(self) {
        self.journal.complete(self.id);
    }
}

/// A batch found in the journal at start.
pub struct PendingBatch {
    pub id: u64,
    pub tenant: Arc<str>,
    /// `None` for a file written before clusters were recorded: the
    /// tenant's cluster then.
    pub cluster: Option<Arc<str>>,
    pub events: Vec<AuditEvent>,
}

pub struct Journal {
    dir: PathBuf,
    next: AtomicU64,
    /// Held for the life of the journal: one process per directory, or two
    /// would evaluate the same batches.
    _lock: File,
}

impl Journal {
    /// Opens (or creates) the journal directory and locks it for this process.
    pub fn open(dir: &Path) -> Result<Arc<Self>, JournalError> {
        let io = |source| JournalError::Io {
            path: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(io)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked {
                    path: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let mut last = 0;
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            match path.extension().and_then(|e| e.to_str()) {
                // A write the process did not finish: never acknowledged.
                Some("tmp") => {
                    let _ = fs::remove_file(&path);
                }
                Some(EXTENSION) => {
                    if let Some(id) = file_id(&path) {
                        last = last.max(id);
                    }
                }
                _ => {}
            }
        }
        Ok(Arc::new(Journal {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(last + 1),
            _lock: lock,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: u64, extension: &str) -> PathBuf {
        // Zero-padded, so names sort in the order batches were accepted.
        self.dir.join(format!("{id:020}.{extension}"))
    }

    /// Records a request body about to be acknowledged, with its tenant
    /// and cluster and the (auditID, stage) of the events accepted from it;
    /// returns the entry's id.
    pub fn append(
        &self,
        tenant: &str,
        cluster: &str,
        body: &[u8],
        json_lines: bool,
        accepted: &[(String, String)],
    ) -> Result<u64, JournalError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tmp, done) = (self.file(id, "tmp"), self.file(id, EXTENSION));
        let io = |source| JournalError::Io {
            path: tmp.clone(),
            source,
        };
        let header = serde_json::to_vec(&Header {
            tenant: tenant.to_string(),
            cluster: Some(cluster.to_string()),
            json_lines,
            accepted: accepted.to_vec(),
        })
        .map_err(|e| io(e.into()))?;
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(MAGIC).map_err(io)?;
        f.write_all(&header).map_err(io)?;
        f.write_all(b"\n").map_err(io)?;
        f.write_all(body).map_err(io)?;
        drop(f);
        // Only whole files carry the batch's name.
        fs::rename(&tmp, &done).map_err(io)?;
        Ok(id)
    }

    /// The batch is evaluated and its alerts handed on, or was never queued.
    pub fn complete(&self, id: u64) {
        if let Err(e) = fs::remove_file(self.file(id, EXTENSION)) {
            // The batch stays and is evaluated again at the next start: a
            // duplicate, not a loss.
            tracing::error!(
                id,
                "cannot remove an evaluated batch from the ingest journal: {e}"
            );
        }
    }

    /// Batches left by a previous process, oldest first: each body decoded
    /// again, keeping the events that were accepted from it. Unreadable
    /// files are logged, counted and removed, so they cannot block a start.
    pub fn pending(&self, max_event_bytes: usize) -> Result<Vec<PendingBatch>, JournalError> {
        let io = |source| JournalError::Io {
            path: self.dir.clone(),
            source,
        };
        let mut files: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == EXTENSION))
            .filter_map(|p| file_id(&p).map(|id| (id, p)))
            .collect();
        files.sort();
        let mut out = Vec::new();
        for (id, path) in files {
            match read_batch(&path, max_event_bytes) {
                Ok((tenant, cluster, events)) => out.push(PendingBatch {
                    id,
                    tenant: tenant.into(),
                    cluster: cluster.map(Into::into),
                    events,
                }),
                Err(why) => {
                    metrics::counter!("peregrine_journal_discarded_total").increment(1);
                    tracing::error!(file = %path.display(), "discarding an unreadable ingest journal file: {why}");
                    let _ = fs::remove_file(&path);
                }
            }
        }
        Ok(out)
    }
}

fn file_id(path: &Path) -> Option<u64> {
    path.file_stem()?.to_str()?.parse().ok()
}

type ReadBatch = (String, Option<String>, Vec<AuditEvent>);

fn read_batch(path: &Path, max_event_bytes: usize) -> Result<ReadBatch, String> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    let rest = bytes.strip_prefix(MAGIC).ok_or("not a journal file")?;
    let newline = rest.iter().position(|b| *b == b'\n').ok_or("no header")?;
    let header: Header = serde_json::from_slice(&rest[..newline]).map_err(|e| e.to_string())?;
    let body = &rest[newline + 1..];
    let decoded = if header.json_lines {
        super::decode::decode_input(body, max_event_bytes)
    } else {
        super::decode::decode_payload(body, max_event_bytes).map_err(|e| e.to_string())?
    };
    // Each accepted key as many times as it was accepted: the body's
    // duplicates and rejected items were left out then, and are now.
    let mut wanted: std::collections::HashMap<(String, String), usize> =
        std::collections::HashMap::new();
    for key in header.accepted {
        *wanted.entry(key).or_default() += 1;
    }
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
    Ok((header.tenant, header.cluster, events))
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
        let path = dir.path().join("journal");
        {
            let j = Journal::open(&path).unwrap();
            // a2 was a duplicate of an earlier request and was not
            // accepted: only a1 and a3 were.
            let body = format!(
                r#"{{"kind":"EventList","items":[{},{},{}]}}"#,
                ev("a1"),
                ev("a2"),
                ev("a3")
            );
            j.append("t1", "c", body.as_bytes(), false, &keys(&["a1", "a3"]))
                .unwrap();
            let b = j
                .append("t2", "c", ev("b1").as_bytes(), false, &keys(&["b1"]))
                .unwrap();
            let lines = format!("{}\n{}\n", ev("c1"), ev("c2"));
            j.append("t1", "eks-1", lines.as_bytes(), true, &keys(&["c1", "c2"]))
                .unwrap();
            j.complete(b);
            assert!(matches!(
                Journal::open(&path),
                Err(JournalError::Locked { .. })
            ));
            // A write cut off by a crash, and a damaged file.
            fs::write(path.join("00000000000000000099.tmp"), b"half").unwrap();
            fs::write(path.join("00000000000000000098.batch"), b"garbage").unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert!(!path.join("00000000000000000099.tmp").exists());
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
        assert_eq!(pending[1].cluster.as_deref(), Some("eks-1"));
        assert!(
            !path.join("00000000000000000098.batch").exists(),
            "the damaged file is removed"
        );
        assert_eq!(
            pending[0].events[0].request_object.as_ref().unwrap().get(),
            r#"{"kind":"Pod","spec":{"hostPID":true}}"#,
            "raw objects survive byte for byte"
        );
        // New ids continue after the ones found, keeping the order.
        let next = j
            .append("t1", "c", ev("e1").as_bytes(), false, &keys(&["e1"]))
            .unwrap();
        assert!(next > 98);
    }
}
