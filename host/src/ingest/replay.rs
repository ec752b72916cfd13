//! Reading recorded audit events from files, directories or stdin.
//!
//! Each input may hold one JSON document (an Event, an EventList or an array)
//! or JSON lines. A whole document is tried first; if the input is not one
//! JSON value, it is read as JSON lines, and each bad line is rejected with
//! its number while the others are kept.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::decode::{Decoded, PayloadError, Rejection, decode_payload};

/// Where events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Stdin,
    File(PathBuf),
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::Stdin => f.write_str("<stdin>"),
            Input::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Expands the command line's paths: `-` is stdin, a directory stands for
/// its files (recursively, sorted, hidden files skipped).
pub fn expand_inputs(paths: &[PathBuf]) -> std::io::Result<Vec<Input>> {
    let mut out = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            out.push(Input::Stdin);
        } else if p.is_dir() {
            let mut files = Vec::new();
            collect_files(p, &mut files)?;
            files.sort();
            out.extend(files.into_iter().map(Input::File));
        } else if p.exists() {
            out.push(Input::File(p.clone()));
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file or directory", p.display()),
            ));
        }
    }
    Ok(out)
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect_files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and decodes one input.
pub fn read_input(input: &Input, max_event_bytes: usize) -> std::io::Result<Decoded> {
    let mut bytes = Vec::new();
    match input {
        Input::Stdin => {
            std::io::stdin().lock().read_to_end(&mut bytes)?;
        }
        Input::File(p) => {
            bytes = std::fs::read(p)?;
        }
    }
    Ok(decode_input(&bytes, max_event_bytes))
}

/// Why one input gave no events at all.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Input(#[from] super::envelope::InputError),
}

/// Reads one input of any shape `peregrine replay` takes: plain audit
/// events or a provider's envelopes (GKE, AKS, CloudWatch Logs, Firehose,
/// Pub/Sub), detected by their fields unless `format` forces one.
pub(crate) fn read_envelopes(
    input: &Input,
    max_event_bytes: usize,
    format: super::envelope::InputFormat,
) -> Result<super::envelope::DecodedEnvelope, ReadError> {
    let mut bytes = Vec::new();
    match input {
        Input::Stdin => {
            std::io::stdin().lock().read_to_end(&mut bytes)?;
        }
        Input::File(p) => {
            bytes = std::fs::read(p)?;
        }
    }
    let limits = super::envelope::Limits::default();
    Ok(super::envelope::unwrap_input(&bytes, format, &limits)?.decode(max_event_bytes))
}

/// Decodes the bytes of one input: one document, else JSON lines.
pub fn decode_input(bytes: &[u8], max_event_bytes: usize) -> Decoded {
    match decode_payload(bytes, max_event_bytes) {
        Ok(d) => return d,
        Err(PayloadError::NotAudit(reason)) => {
            return Decoded {
                events: Vec::new(),
                rejected: vec![Rejection {
                    at: String::new(),
                    reason,
                    kind: "not_an_event",
                }],
            };
        }
        Err(PayloadError::NotJson(_)) => {}
    }
    let mut out = Decoded::default();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let at = format!("line {}", i + 1);
        match decode_payload(line, max_event_bytes) {
            Ok(d) => {
                out.events.extend(d.events);
                out.rejected
                    .extend(d.rejected.into_iter().map(|r| Rejection {
                        at: if r.at.is_empty() {
                            at.clone()
                        } else {
                            format!("{at} {}", r.at)
                        },
                        ..r
                    }));
            }
            Err(e) => out.rejected.push(Rejection {
                at,
                reason: e.to_string(),
                kind: match e {
                    PayloadError::NotJson(_) => "not_json",
                    PayloadError::NotAudit(_) => "not_an_event",
                },
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"kind":"Event","auditID":"a","stage":"ResponseComplete","verb":"get"}"#;

    #[test]
    fn reads_documents_and_json_lines() {
        assert_eq!(decode_input(EV.as_bytes(), 1 << 20).events.len(), 1);
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(EV).unwrap())
                .unwrap();
        assert_eq!(decode_input(pretty.as_bytes(), 1 << 20).events.len(), 1);
        let lines = format!("{EV}\n\n{EV}\nnot json\n{{\"kind\":\"Pod\"}}\n{EV}\n");
        let r = decode_input(lines.as_bytes(), 1 << 20);
        assert_eq!(r.events.len(), 3);
        let places: Vec<_> = r.rejected.iter().map(|p| p.at.as_str()).collect();
        assert_eq!(places, ["line 4", "line 5"]);
    }

    #[test]
    fn falco_fal_01_003_is_reported_not_crashed_on() {
        let r = decode_input(br#"{"kind": 0}"#, 1 << 20);
        assert!(r.events.is_empty());
        assert_eq!(r.rejected.len(), 1);
        assert!(
            r.rejected[0]
                .reason
                .starts_with("data not recognized as a k8s audit event")
        );
    }
}
