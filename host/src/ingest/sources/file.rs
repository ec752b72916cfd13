//! `type = "file"`: tails the kube-apiserver's `--audit-log-path` (JSON
//! lines), for clusters whose apiserver flags are yours but whose webhook
//! backend is not wanted.
//!
//! Each poll reads from the saved offset to the last complete line, hands
//! those lines to the pipeline, and only once the journal holds them saves
//! the new position (offset, device and inode) to the position file: a
//! `kill -9` at any moment loses nothing, and at worst a batch is read
//! twice. A line still being written (no newline yet) waits for the next
//! poll. The file is held open, so when the apiserver (its log rotation)
//! renames it and starts a new one, the old file is read to its end before
//! the new one is read from its start; a file that shrank under the offset
//! was truncated in place and is read again from its start. After a
//! restart the saved inode is looked for in the file's directory, so a
//! rotation while the process was down is read to its end too.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::config::{FileSourceConfig, StartAt};
use super::{count_error, count_records, record_lag};
use crate::ingest::decode::decode_input;
use crate::ingest::submit::{Arrival, SubmitError, submit};
use crate::server::state::AppState;
use crate::tenants::Tenant;

/// Lines handed to the pipeline at a time (each batch one journal entry).
const BATCH_LINES: usize = 500;

/// What the position file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Position {
    dev: u64,
    inode: u64,
    offset: u64,
}

/// A running file source; dropping it does not stop it, [`FileSource::stop`] does.
pub struct FileSource {
    stop: crossbeam_channel::Sender<()>,
    thread: Option<JoinHandle<()>>,
}

impl FileSource {
    /// Starts tailing. The tenant must exist (the configuration was validated).
    pub fn start(config: FileSourceConfig, app: Arc<AppState>) -> anyhow::Result<Self> {
        let journal_dir = app.journal.as_ref().map(|j| j.dir().to_path_buf());
        let position_file = config
            .resolved_position_file(journal_dir.as_deref())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "file source {}: no place for its position file (set position_file)",
                    config.name()
                )
            })?;
        if let Some(dir) = position_file.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "file source {}: cannot create {}: {e}",
                    config.name(),
                    dir.display()
                )
            })?;
        }
        let tenant =
            app.tenants.get(&config.tenant).cloned().ok_or_else(|| {
                anyhow::anyhow!("file source: unknown tenant `{}`", config.tenant)
            })?;
        let cluster: Arc<str> = match &config.cluster {
            Some(c) => c.as_str().into(),
            None => tenant.cluster.clone(),
        };
        let (stop, stopped) = crossbeam_channel::bounded(1);
        let mut tail = Tail {
            name: config.name(),
            path: config.path.clone(),
            start_at: config.start_at,
            position_file,
            poll: Duration::from_millis(config.poll_interval_ms),
            app,
            tenant,
            cluster,
            open: None,
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("peregrine-file-source".into())
            .spawn(move || tail.run())?;
        Ok(FileSource {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops after the batch in hand; what was read and not saved is read
    /// again at the next start.
    pub fn stop(mut self) {
        let _ = self.stop.send(());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The file being read.
struct Open {
    file: File,
    dev: u64,
    inode: u64,
    offset: u64,
}

struct Tail {
    name: String,
    path: PathBuf,
    start_at: StartAt,
    position_file: PathBuf,
    poll: Duration,
    app: Arc<AppState>,
    tenant: Arc<Tenant>,
    cluster: Arc<str>,
    open: Option<Open>,
    stopped: crossbeam_channel::Receiver<()>,
}

/// Why a pass over the file ended early.
enum Stop {
    /// Shutting down.
    Shutdown,
    /// An I/O error: counted and logged; the next poll tries again.
    Io(std::io::Error),
}

impl Tail {
    fn run(&mut self) {
        let span = tracing::info_span!("file_source", source = %self.name);
        let _enter = span.enter();
        tracing::info!(path = %self.path.display(), "tailing");
        loop {
            match self.pass() {
                Ok(()) => {}
                Err(Stop::Shutdown) => return,
                Err(Stop::Io(e)) => {
                    count_error(&self.name, "io");
                    tracing::warn!(path = %self.path.display(), "{e}");
                }
            }
            match self.stopped.recv_timeout(self.poll) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        }
    }

    /// One poll: open the file if needed, read what is new, follow a
    /// rotation or a truncation.
    fn pass(&mut self) -> Result<(), Stop> {
        if self.open.is_none() && !self.open_file()? {
            return Ok(());
        }
        self.read_available(false)?;
        // Rotated: the path names another file now (or none yet).
        let current = std::fs::metadata(&self.path).ok();
        let open = self.open.as_ref().expect("opened above");
        let moved = current
            .as_ref()
            .is_some_and(|m| (m.dev(), m.ino()) != (open.dev, open.inode));
        if moved {
            // Lines written to the old file after the read above, and a
            // last line its writer will never finish.
            self.read_available(true)?;
            tracing::info!("file rotated: reading the new file from its start");
            self.open = None;
            if self.open_new(0)? {
                self.read_available(false)?;
            }
        }
        Ok(())
    }

    /// Opens the file at the saved position, or where `start_at` says.
    /// `false` when the file is not there yet.
    fn open_file(&mut self) -> Result<bool, Stop> {
        let saved: Option<Position> = super::load_position(&self.position_file);
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Stop::Io(e)),
        };
        match saved {
            Some(p) if (p.dev, p.inode) == (meta.dev(), meta.ino()) => {
                // Shorter than the offset: truncated while we were down.
                let offset = if p.offset <= meta.len() { p.offset } else { 0 };
                self.open_new(offset)
            }
            Some(p) => {
                // Rotated while we were down: finish the old file first, if
                // it is still beside the new one.
                if let Some(old) = find_inode(&self.path, p.dev, p.inode) {
                    tracing::info!(old = %old.display(), "reading the rest of the file rotated while stopped");
                    let file = File::open(&old).map_err(Stop::Io)?;
                    self.open = Some(Open {
                        file,
                        dev: p.dev,
                        inode: p.inode,
                        offset: p.offset,
                    });
                    self.read_available(true)?;
                    self.open = None;
                } else {
                    count_error(&self.name, "rotated_away");
                    tracing::warn!(
                        "the file read before the stop was rotated away; lines written to it after the saved position are lost"
                    );
                }
                self.open_new(0)
            }
            None => {
                let offset = match self.start_at {
                    StartAt::Beginning => 0,
                    StartAt::End => start_of_last_line(&self.path, meta.len()).map_err(Stop::Io)?,
                };
                self.open_new(offset)
            }
        }
    }

    /// Opens the path and records `offset` as the position.
    fn open_new(&mut self, offset: u64) -> Result<bool, Stop> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Stop::Io(e)),
        };
        let meta = file.metadata().map_err(Stop::Io)?;
        self.open = Some(Open {
            file,
            dev: meta.dev(),
            inode: meta.ino(),
            offset,
        });
        self.save()?;
        Ok(true)
    }

    fn save(&self) -> Result<(), Stop> {
        let Some(o) = &self.open else { return Ok(()) };
        let p = Position {
            dev: o.dev,
            inode: o.inode,
            offset: o.offset,
        };
        super::save_position(&self.position_file, &p).map_err(Stop::Io)?;
        metrics::gauge!("peregrine_source_position_bytes", "source" => self.name.clone())
            .set(o.offset as f64);
        Ok(())
    }

    /// Reads from the offset to the last complete line (or, with
    /// `to_end`, to the end of the file), handing each batch of lines to
    /// the pipeline and saving the position after each.
    fn read_available(&mut self, to_end: bool) -> Result<(), Stop> {
        let max_line = self.app.server.max_body_bytes as u64;
        loop {
            let open = self.open.as_mut().expect("a file is open");
            let len = open.file.metadata().map_err(Stop::Io)?.len();
            if len < open.offset {
                count_error(&self.name, "truncated");
                tracing::info!("file truncated: reading it again from its start");
                open.offset = 0;
                self.save()?;
                continue;
            }
            metrics::gauge!("peregrine_source_lag_bytes", "source" => self.name.clone())
                .set((len - open.offset) as f64);
            if len == open.offset {
                return Ok(());
            }
            let want = (len - open.offset).min(max_line.max(1 << 20));
            let mut buf = Vec::with_capacity(want as usize);
            open.file
                .seek(SeekFrom::Start(open.offset))
                .map_err(Stop::Io)?;
            (&mut open.file)
                .take(want)
                .read_to_end(&mut buf)
                .map_err(Stop::Io)?;
            let complete = match buf.iter().rposition(|b| *b == b'\n') {
                Some(i) => i + 1,
                // The whole end of the file is one unfinished line: wait,
                // unless its writer is gone or it is over the size limit.
                None if to_end => buf.len(),
                None if buf.len() as u64 >= max_line => {
                    count_records(&self.name, "rejected", 1);
                    tracing::warn!(
                        offset = open.offset,
                        "a line is over the {max_line}-byte limit: skipped"
                    );
                    open.offset += buf.len() as u64;
                    self.save()?;
                    continue;
                }
                None => return Ok(()),
            };
            if complete == 0 {
                return Ok(());
            }
            buf.truncate(complete);
            self.hand_over(&buf)?;
        }
    }

    /// Hands `bytes` (whole lines) to the pipeline in batches, advancing
    /// and saving the position after each one the journal holds.
    fn hand_over(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .enumerate()
                .filter(|(_, b)| **b == b'\n')
                .nth(BATCH_LINES - 1)
                .map_or(rest.len(), |(i, _)| i + 1);
            let (chunk, tail) = rest.split_at(end);
            self.submit_chunk(chunk)?;
            let open = self.open.as_mut().expect("a file is open");
            open.offset += chunk.len() as u64;
            self.save()?;
            rest = tail;
        }
        Ok(())
    }

    /// Submits one batch of lines, waiting while the pipeline is full.
    fn submit_chunk(&self, chunk: &[u8]) -> Result<(), Stop> {
        let max_event = self.app.server.max_event_bytes;
        let decoded = decode_input(chunk, max_event);
        // Oversize events are logged by `count_rejected`, rate-limited.
        for r in decoded.rejected.iter().filter(|r| r.kind != "too_large") {
            tracing::warn!(at = %r.at, "audit log line rejected: {}", r.reason);
        }
        crate::ingest::decode::count_rejected(&decoded.rejected, &self.tenant.id, &self.name);
        count_records(&self.name, "rejected", decoded.rejected.len());
        if decoded.events.is_empty() {
            return Ok(());
        }
        loop {
            let arrival = Arrival {
                cluster: self.cluster.clone(),
                events: decoded.events.clone(),
                body: chunk,
                json_lines: true,
            };
            match submit(&self.app, &self.tenant, arrival) {
                Ok(s) => {
                    count_records(&self.name, "accepted", s.accepted);
                    count_records(&self.name, "duplicate", s.duplicates);
                    record_lag(&self.name, &decoded.events);
                    return Ok(());
                }
                Err(SubmitError::Queue(crate::queue::QueueError::Closed)) => {
                    return Err(Stop::Shutdown);
                }
                Err(e) => {
                    // Full or over quota: wait and offer the same lines
                    // again; the position has not moved.
                    count_error(&self.name, e.reason());
                    let wait = match &e {
                        SubmitError::TenantRate { retry_after, .. } => {
                            Duration::from_secs(*retry_after)
                        }
                        _ => self.poll,
                    };
                    match self.stopped.recv_timeout(wait) {
                        Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                        _ => return Err(Stop::Shutdown),
                    }
                }
            }
        }
    }
}

/// Where reading from the end starts: after the last complete line, so a
/// line being written as we start is read whole.
fn start_of_last_line(path: &Path, len: u64) -> std::io::Result<u64> {
    let mut f = File::open(path)?;
    let from = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(len - from).read_to_end(&mut buf)?;
    Ok(match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => from + i as u64 + 1,
        None if from == 0 => 0,
        None => len,
    })
}

/// The file in `path`'s directory with this device and inode (the rotated
/// file, under its new name).
fn find_inode(path: &Path, dev: u64, inode: u64) -> Option<PathBuf> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|e| {
            e.metadata()
                .is_ok_and(|m| m.is_file() && m.dev() == dev && m.ino() == inode)
        })
        .map(|e| e.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_from_the_end_starts_after_the_last_complete_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        std::fs::write(&p, b"{\"a\":1}\n{\"b\":").unwrap();
        assert_eq!(start_of_last_line(&p, 13).unwrap(), 8);
        std::fs::write(&p, b"{\"a\":1}\n").unwrap();
        assert_eq!(start_of_last_line(&p, 8).unwrap(), 8);
        std::fs::write(&p, b"{\"a\"").unwrap();
        assert_eq!(start_of_last_line(&p, 4).unwrap(), 0);
    }

    #[test]
    fn a_rotated_file_is_found_by_its_inode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        std::fs::write(&p, b"x\n").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let rotated = dir.path().join("audit-2026-12-03T00-00-00.000.log");
        std::fs::rename(&p, &rotated).unwrap();
        std::fs::write(&p, b"y\n").unwrap();
        assert_eq!(find_inode(&p, m.dev(), m.ino()), Some(rotated));
    }
}
