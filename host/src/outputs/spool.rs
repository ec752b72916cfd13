//! Where an output keeps the alerts it has accepted until its receiver
//! acknowledges them.
//!
//! The durable kind is one SQLite file per output. An alert is inserted when
//! it leaves the output's in-memory queue and deleted only after the receiver
//! acknowledged it, so a Peregrine killed mid-send re-delivers it on its next
//! start: delivery is at-least-once, and a receiver may see an alert twice
//! after a crash, never zero times.
//!
//! Why SQLite rather than a segment log: ordered reads, deletes of any
//! prefix and crash recovery are SQLite's, tested far beyond what a
//! hand-written log would be; at the rates alerts come (hundreds per second
//! at the very most) its per-transaction cost does not matter.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags, params};

use crate::alert::Alert;

/// Schema version in `PRAGMA user_version`. A file with another version is
/// refused rather than misread.
const SCHEMA_VERSION: i64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("cannot create spool directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool {path} is in use by another process (two Peregrine processes must not share a spool directory)"
    )]
    Locked { path: PathBuf },
    #[error(
        "spool {path} cannot be used: {message} (move the file away to start with an empty spool)"
    )]
    Unusable { path: PathBuf, message: String },
    #[error("spool {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

/// What removing a stored alert needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryKey {
    pub id: i64,
    pub bytes: u64,
}

/// An alert taken from the store.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: EntryKey,
    pub alert: Alert,
}

/// What `append` did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub stored: usize,
    /// Refused because the store is full.
    pub full: usize,
    /// Refused because they could not be serialised.
    pub unencodable: usize,
}

/// What `peek` found.
#[derive(Debug, Default)]
pub struct Peeked {
    pub entries: Vec<Entry>,
    /// Rows that did not decode as alerts; they are deleted.
    pub corrupt: usize,
}

/// The store of one output: durable (`Disk`) or, when the output's spool is
/// off, in memory.
pub enum Store {
    Disk(DiskSpool),
    Memory(MemoryStore),
}

impl Store {
    pub fn append(&mut self, alerts: Vec<Alert>) -> Result<Appended, SpoolError> {
        match self {
            Store::Disk(s) => s.append(alerts),
            Store::Memory(s) => Ok(s.append(alerts)),
        }
    }

    /// The oldest `n` alerts, oldest first, without removing them.
    pub fn peek(&mut self, n: usize) -> Result<Peeked, SpoolError> {
        match self {
            Store::Disk(s) => s.peek(n),
            Store::Memory(s) => Ok(s.peek(n)),
        }
    }

    /// Removes acknowledged (or definitively refused) alerts.
    pub fn remove(&mut self, entries: &[EntryKey]) -> Result<(), SpoolError> {
        match self {
            Store::Disk(s) => s.remove(entries),
            Store::Memory(s) => {
                s.remove(entries);
                Ok(())
            }
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Store::Disk(s) => s.alerts,
            Store::Memory(s) => s.alerts.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn bytes(&self) -> u64 {
        match self {
            Store::Disk(s) => s.bytes,
            Store::Memory(_) => 0,
        }
    }

    pub fn is_durable(&self) -> bool {
        matches!(self, Store::Disk(_))
    }
}

/// The on-disk spool of one output.
pub struct DiskSpool {
    conn: Connection,
    path: PathBuf,
    alerts: u64,
    /// Sum of the serialised alerts' sizes: what `max_bytes` bounds. The file
    /// itself is somewhat larger (SQLite pages and indexes).
    bytes: u64,
    max_bytes: u64,
}

impl DiskSpool {
    /// Opens (or creates) the spool file and takes an exclusive lock on it
    /// for the life of the process.
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| SpoolError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let sqlite = |source| SpoolError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        let unusable = |e: rusqlite::Error| classify(path, e);
        // Fail at once on a lock held by another process, not after rusqlite's
        // default five-second wait.
        conn.busy_timeout(std::time::Duration::ZERO)
            .map_err(unusable)?;
        // Exclusive locking: a second process on the same file fails at once
        // instead of both delivering (and deleting) the same alerts. With it,
        // WAL needs no shared-memory file. The lock goes away with the
        // process, however it dies.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(unusable)?;
        // Must precede the first table so SQLite can give pages back.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(unusable)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(unusable)?;
        // In WAL mode NORMAL survives a killed process (the case the spool
        // is for); only a power cut may lose the last transactions.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(unusable)?;
        conn.execute_batch("BEGIN EXCLUSIVE").map_err(unusable)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(unusable)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(unusable)?;
        if version == 0 && tables == 0 {
            conn.execute_batch(&format!(
                "CREATE TABLE alerts (
                     id INTEGER PRIMARY KEY AUTOINCREMENT,
                     spooled_at_ms INTEGER NOT NULL,
                     payload BLOB NOT NULL
                 );
                 PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(unusable)?;
        } else if version != SCHEMA_VERSION {
            return Err(SpoolError::Unusable {
                path: path.to_path_buf(),
                message: format!(
                    "it has schema version {version}, this Peregrine reads version {SCHEMA_VERSION}"
                ),
            });
        }
        conn.execute_batch("COMMIT").map_err(unusable)?;
        let (alerts, bytes): (i64, i64) = conn
            .query_row(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM alerts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(unusable)?;
        Ok(DiskSpool {
            conn,
            path: path.to_path_buf(),
            alerts: alerts.max(0) as u64,
            bytes: bytes.max(0) as u64,
            max_bytes,
        })
    }

    fn err(&self, source: rusqlite::Error) -> SpoolError {
        SpoolError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Inserts alerts in one transaction. When the spool is full the newest
    /// alerts are refused, not the oldest: the oldest are the start of what
    /// happened and have waited longest, and refusing keeps every stored
    /// alert's place in the order.
    pub fn append(&mut self, alerts: Vec<Alert>) -> Result<Appended, SpoolError> {
        let mut out = Appended::default();
        let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
        let mut added_bytes = 0u64;
        let tx = self.conn.transaction().map_err(|e| SpoolError::Sqlite {
            path: self.path.clone(),
            source: e,
        })?;
        {
            let mut insert = tx
                .prepare_cached("INSERT INTO alerts (spooled_at_ms, payload) VALUES (?1, ?2)")
                .map_err(|e| SpoolError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            for alert in alerts {
                let Ok(payload) = serde_json::to_vec(&alert) else {
                    out.unencodable += 1;
                    continue;
                };
                let size = payload.len() as u64;
                if self.bytes + added_bytes + size > self.max_bytes {
                    out.full += 1;
                    continue;
                }
                insert
                    .execute(params![now_ms as i64, payload])
                    .map_err(|e| SpoolError::Sqlite {
                        path: self.path.clone(),
                        source: e,
                    })?;
                added_bytes += size;
                out.stored += 1;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.alerts += out.stored as u64;
        self.bytes += added_bytes;
        Ok(out)
    }

    pub fn peek(&mut self, n: usize) -> Result<Peeked, SpoolError> {
        let mut out = Peeked::default();
        let mut bad: Vec<EntryKey> = Vec::new();
        {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT id, payload FROM alerts ORDER BY id LIMIT ?1")
                .map_err(|e| SpoolError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            let rows = stmt
                .query_map(params![n as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(|e| SpoolError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
            for row in rows {
                let (id, payload) = row.map_err(|e| SpoolError::Sqlite {
                    path: self.path.clone(),
                    source: e,
                })?;
                let bytes = payload.len() as u64;
                match serde_json::from_slice::<Alert>(&payload) {
                    Ok(alert) => out.entries.push(Entry {
                        key: EntryKey { id, bytes },
                        alert,
                    }),
                    Err(e) => {
                        tracing::error!(spool = %self.path.display(), id, "dropping a spooled alert that does not decode: {e}");
                        bad.push(EntryKey { id, bytes });
                    }
                }
            }
        }
        if !bad.is_empty() {
            out.corrupt = bad.len();
            self.remove(&bad)?;
        }
        Ok(out)
    }

    pub fn remove(&mut self, keys: &[EntryKey]) -> Result<(), SpoolError> {
        if keys.is_empty() {
            return Ok(());
        }
        let path = self.path.clone();
        let sqlite = |source| SpoolError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sqlite)?;
        let mut removed = 0u64;
        let mut removed_bytes = 0u64;
        {
            let mut del = tx
                .prepare_cached("DELETE FROM alerts WHERE id = ?1")
                .map_err(sqlite)?;
            for k in keys {
                if del.execute(params![k.id]).map_err(sqlite)? > 0 {
                    removed += 1;
                    removed_bytes += k.bytes;
                }
            }
        }
        tx.commit().map_err(sqlite)?;
        self.alerts = self.alerts.saturating_sub(removed);
        self.bytes = self.bytes.saturating_sub(removed_bytes);
        if self.alerts == 0 {
            // Give the pages of a drained backlog back to the file system.
            if let Err(e) = self.conn.execute_batch("PRAGMA incremental_vacuum") {
                tracing::debug!(spool = %self.path.display(), "incremental vacuum failed: {e}");
            }
        }
        Ok(())
    }
}

fn classify(path: &Path, e: rusqlite::Error) -> SpoolError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => SpoolError::Locked {
            path: path.to_path_buf(),
        },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => SpoolError::Unusable {
            path: path.to_path_buf(),
            message: e.to_string(),
        },
        _ => SpoolError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// The store of an output whose spool is off: bounded, and lost with the
/// process.
pub struct MemoryStore {
    alerts: VecDeque<Entry>,
    next_id: i64,
    capacity: usize,
}

impl MemoryStore {
    pub fn new(capacity: usize) -> Self {
        MemoryStore {
            alerts: VecDeque::new(),
            next_id: 1,
            capacity: capacity.max(1),
        }
    }

    fn append(&mut self, alerts: Vec<Alert>) -> Appended {
        let mut out = Appended::default();
        for alert in alerts {
            if self.alerts.len() >= self.capacity {
                out.full += 1;
                continue;
            }
            self.alerts.push_back(Entry {
                key: EntryKey {
                    id: self.next_id,
                    bytes: 0,
                },
                alert,
            });
            self.next_id += 1;
            out.stored += 1;
        }
        out
    }

    fn peek(&self, n: usize) -> Peeked {
        Peeked {
            entries: self.alerts.iter().take(n).cloned().collect(),
            corrupt: 0,
        }
    }

    fn remove(&mut self, keys: &[EntryKey]) {
        for k in keys {
            if let Some(pos) = self.alerts.iter().position(|a| a.key.id == k.id) {
                self.alerts.remove(pos);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::Priority;

    fn alert(n: usize) -> Alert {
        Alert {
            time_unix_nanos: 1_700_000_000_000_000_000,
            rule: "R".into(),
            rule_id: "r".into(),
            priority: Priority::Warning,
            output: format!("alert {n}"),
            tags: vec![],
            fields: vec![("n".into(), Some(n.to_string()))],
            tenant: "default".into(),
            cluster: "default".into(),
            module: "m".into(),
            module_digest: "d".into(),
            audit_id: format!("id-{n}"),
            hostname: "h".into(),
        }
    }

    #[test]
    fn survives_reopen_and_removes_only_what_was_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.sqlite");
        {
            let mut s = DiskSpool::open(&path, 1 << 20).unwrap();
            let a = s.append((0..10).map(alert).collect()).unwrap();
            assert_eq!(a.stored, 10);
            let p = s.peek(4).unwrap();
            assert_eq!(p.entries.len(), 4);
            assert_eq!(p.entries[0].alert.output, "alert 0");
            let keys: Vec<EntryKey> = p.entries[..3].iter().map(|e| e.key).collect();
            s.remove(&keys).unwrap();
            assert_eq!(s.alerts, 7);
        }
        let mut s = DiskSpool::open(&path, 1 << 20).unwrap();
        assert_eq!(s.alerts, 7);
        let p = s.peek(100).unwrap();
        let outs: Vec<_> = p.entries.iter().map(|e| e.alert.output.as_str()).collect();
        assert_eq!(outs[0], "alert 3");
        assert_eq!(outs.len(), 7);
    }

    #[test]
    fn a_second_process_on_the_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.sqlite");
        let _first = DiskSpool::open(&path, 1 << 20).unwrap();
        let err = DiskSpool::open(&path, 1 << 20)
            .err()
            .expect("second open must fail");
        assert!(matches!(err, SpoolError::Locked { .. }), "{err}");
    }

    #[test]
    fn a_full_spool_refuses_the_newest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let one = serde_json::to_vec(&alert(0)).unwrap().len() as u64;
        let mut s = DiskSpool::open(&dir.path().join("s.sqlite"), one * 3).unwrap();
        let a = s.append((0..5).map(alert).collect()).unwrap();
        assert_eq!((a.stored, a.full), (3, 2));
        let p = s.peek(10).unwrap();
        assert_eq!(p.entries.last().unwrap().alert.output, "alert 2");
    }

    #[test]
    fn garbage_files_and_rows_give_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("garbage.sqlite");
        std::fs::write(
            &path,
            b"this is not a database, just some text that is long enough",
        )
        .unwrap();
        let err = DiskSpool::open(&path, 1 << 20)
            .err()
            .expect("garbage must be refused");
        assert!(matches!(err, SpoolError::Unusable { .. }), "{err}");

        let path = dir.path().join("rows.sqlite");
        {
            let mut s = DiskSpool::open(&path, 1 << 20).unwrap();
            s.append(vec![alert(1)]).unwrap();
            s.conn
                .execute(
                    "INSERT INTO alerts (spooled_at_ms, payload) VALUES (0, X'7b7d')",
                    [],
                )
                .unwrap();
            s.append(vec![alert(2)]).unwrap();
        }
        let mut s = DiskSpool::open(&path, 1 << 20).unwrap();
        let p = s.peek(10).unwrap();
        assert_eq!(p.corrupt, 1);
        assert_eq!(p.entries.len(), 2);
        assert_eq!(s.alerts, 2);
    }

    #[test]
    fn memory_store_is_bounded() {
        let mut s = MemoryStore::new(2);
        let a = s.append((0..3).map(alert).collect());
        assert_eq!((a.stored, a.full), (2, 1));
        let p = s.peek(5);
        s.remove(&[p.entries[0].key]);
        assert_eq!(s.peek(5).entries[0].alert.output, "alert 1");
    }
}
