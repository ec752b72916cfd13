//! `type = "file"`: JSON lines (Falco's JSON, or text) appended to a file
//! that is rotated by size: `alerts.jsonl` becomes `alerts.jsonl.1`, and
//! so on up to `max_files`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::BuildError;
use super::delivery::{Deliver, OutputDeliveryConfig, SendError, SendFailure};
use crate::alert::Alert;
use crate::alert::AlertFormat;

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The file alerts are appended to; its directory is created if needed.
    pub path: PathBuf,
    /// `json` (Falco's JSON, one alert per line) or `text`.
    #[serde(default)]
    pub format: AlertFormat,
    /// Size at which the file is rotated, in bytes; 0 never rotates.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotated files kept (`<path>.1` is the newest); older ones are deleted.
    #[serde(default = "default_max_files")]
    pub max_files: u32,
    /// fsync after every write, so an acknowledged alert survives a power
    /// cut too, at the cost of a disk flush per batch.
    #[serde(default)]
    pub fsync: bool,
    #[serde(default)]
    pub delivery: OutputDeliveryConfig,
}

fn default_max_bytes() -> u64 {
    100 << 20
}

fn default_max_files() -> u32 {
    5
}

impl FileConfig {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if self.path.as_os_str().is_empty() {
            return Err(BuildError("path must not be empty".into()));
        }
        if self.path.file_name().is_none() {
            return Err(BuildError(format!(
                "path {} does not name a file",
                self.path.display()
            )));
        }
        Ok(())
    }

    pub fn build(&self) -> Result<FileOutput, BuildError> {
        self.validate()?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                BuildError(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        // Open now, so a path that cannot be written is a start-up error.
        let state = FileState::open(&self.path)
            .map_err(|e| BuildError(format!("cannot open {}: {e}", self.path.display())))?;
        Ok(FileOutput {
            config: Arc::new(self.clone()),
            state: Arc::new(Mutex::new(state)),
        })
    }
}

struct FileState {
    file: File,
    size: u64,
}

impl FileState {
    fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let mut size = file.metadata()?.len();
        // A process killed in the middle of a write leaves a partial last
        // line; its alerts are sent again from the spool, and must start on
        // a line of their own.
        if size > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            file.seek(SeekFrom::Start(size - 1))?;
            file.read_exact(&mut last)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
                size += 1;
            }
        }
        Ok(FileState { file, size })
    }
}

pub struct FileOutput {
    config: Arc<FileConfig>,
    state: Arc<Mutex<FileState>>,
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

impl FileOutput {
    fn rotate(config: &FileConfig, state: &mut FileState) -> std::io::Result<()> {
        let path = &config.path;
        if config.max_files == 0 {
            std::fs::remove_file(path)?;
        } else {
            // Shift .N-1 -> .N, ..., .1 -> .2, then the live file -> .1.
            let _ = std::fs::remove_file(rotated(path, config.max_files));
            for n in (1..config.max_files).rev() {
                let from = rotated(path, n);
                if from.exists() {
                    std::fs::rename(&from, rotated(path, n + 1))?;
                }
            }
            std::fs::rename(path, rotated(path, 1))?;
        }
        *state = FileState::open(path)?;
        Ok(())
    }

    /// Appends one line per alert, rotating before a line that would take
    /// the file past `max_bytes` (a single longer line still goes in whole).
    fn write(config: &FileConfig, state: &mut FileState, alerts: &[Alert]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(alerts.len() * 512);
        for a in alerts {
            let mut line = match config.format {
                AlertFormat::Json => serde_json::to_vec(&a.to_falco_json())?,
                AlertFormat::Text => a.to_text_line().into_bytes(),
            };
            line.push(b'\n');
            let size = state.size + buf.len() as u64;
            if config.max_bytes > 0 && size > 0 && size + line.len() as u64 > config.max_bytes {
                Self::append(config, state, &buf)?;
                buf.clear();
                Self::rotate(config, state)?;
            }
            buf.extend_from_slice(&line);
        }
        Self::append(config, state, &buf)
    }

    fn append(config: &FileConfig, state: &mut FileState, buf: &[u8]) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        state.file.write_all(buf)?;
        state.file.flush()?;
        if config.fsync {
            state.file.sync_data()?;
        }
        state.size += buf.len() as u64;
        Ok(())
    }
}

impl Deliver for FileOutput {
    async fn send(&mut self, alerts: &[Alert]) -> Result<(), SendFailure> {
        let config = self.config.clone();
        let state = self.state.clone();
        let alerts = alerts.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            FileOutput::write(&config, &mut s, &alerts).map_err(|e| {
                // After a failed write the file may end in a partial line;
                // reopening starts the retry on a fresh line.
                if let Ok(fresh) = FileState::open(&config.path) {
                    *s = fresh;
                    let _ = s.file.write_all(b"\n");
                    s.size += 1;
                }
                SendError::retry(format!("cannot write {}: {e}", config.path.display()))
            })
        })
        .await
        .map_err(|e| SendError::retry(format!("file writer failed: {e}")))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/alerts.jsonl");
        let config = FileConfig {
            path: path.clone(),
            format: AlertFormat::Text,
            max_bytes: 10,
            max_files: 2,
            fsync: false,
            delivery: Default::default(),
        };
        let out = config.build().unwrap();
        let mut s = out.state.lock().unwrap();
        let alert = |n: u32| Alert {
            time_unix_nanos: 0,
            rule: format!("R{n}"),
            rule_id: "r".into(),
            priority: crate::alert::Priority::Notice,
            output: "o".into(),
            tags: vec![],
            fields: vec![],
            tenant: "t".into(),
            cluster: "t".into(),
            module: "m".into(),
            module_digest: "d".into(),
            audit_id: "a".into(),
            hostname: "h".into(),
        };
        for n in 0..4 {
            FileOutput::write(&config, &mut s, &[alert(n)]).unwrap();
        }
        let live = std::fs::read_to_string(&path).unwrap();
        assert!(live.contains(" R3 "), "{live}");
        assert!(
            std::fs::read_to_string(rotated(&path, 1))
                .unwrap()
                .contains(" R2 ")
        );
        assert!(
            std::fs::read_to_string(rotated(&path, 2))
                .unwrap()
                .contains(" R1 ")
        );
        assert!(!rotated(&path, 3).exists());
    }

    #[test]
    fn a_partial_last_line_is_ended_before_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        std::fs::write(&path, b"{\"whole\":1}\n{\"cut").unwrap();
        let mut s = FileState::open(&path).unwrap();
        s.file.write_all(b"{\"next\":2}\n").unwrap();
        drop(s);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"whole\":1}\n{\"cut\n{\"next\":2}\n");
        // A file that ends a line is left as it is.
        let s = FileState::open(&path).unwrap();
        assert_eq!(s.size, text.len() as u64);
    }
}
