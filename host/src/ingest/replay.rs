//! Reading recorded audit events from files, directories or stdin.
//!
//! Each input may hold one JSON document (an Event, an EventList or an array)
//! or JSON lines, decoded by [`decode_input`]: a whole document is tried
//! first; if the input is not one JSON value, it is read as JSON lines, and
//! each bad line is rejected with its number while the others are kept.
//! `peregrine replay` streams JSON lines ([`stream_inputs`]): a line at a
//! time, so an input of any length takes the memory of a few batches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use peregrine_sdk::audit::AuditEvent;

use super::decode::{Decoded, Rejection, decode_input};

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

/// Why one input gave no events at all, or stopped giving them.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Input(#[from] super::envelope::InputError),
}

/// How [`stream_inputs`] reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamOptions {
    pub max_event_bytes: usize,
    pub format: super::envelope::InputFormat,
    /// The most events in one [`Item::Events`].
    pub chunk_events: usize,
    /// The longest line read; a longer one is rejected and skipped, so one
    /// line without an end cannot take all memory.
    pub max_line_bytes: usize,
}

impl StreamOptions {
    pub(crate) fn new(max_event_bytes: usize, format: super::envelope::InputFormat) -> Self {
        StreamOptions {
            max_event_bytes,
            format,
            chunk_events: 400,
            max_line_bytes: super::envelope::Limits::default().max_decoded_bytes,
        }
    }
}

/// What [`stream_inputs`] sends, in input order.
#[derive(Debug)]
pub(crate) enum Item {
    /// The next input starts.
    Input(Input),
    /// Consecutive events of one cluster (`None`: the envelope named none),
    /// at most `chunk_events` of them.
    Events {
        cluster: Option<Arc<str>>,
        events: Vec<AuditEvent>,
    },
    /// A record or line that held no valid event.
    Rejected(Rejection),
    /// Well-formed records that hold no audit event.
    Skipped(usize),
    /// The current input could not be read, or was refused from here on.
    Failed(ReadError),
}

/// Reads every input in turn and sends its events, in order, in chunks of
/// one cluster each. JSON lines are read one line at a time, so memory holds
/// a line and the chunks the channel has room for, whatever the size of the
/// input; a document spread over lines (a pretty-printed EventList) is read
/// whole. `decoded` counts the events read so far. Returns once every input
/// is read, or when the receiver is gone.
pub(crate) fn stream_inputs(
    inputs: &[Input],
    opts: &StreamOptions,
    tx: &crossbeam_channel::Sender<Item>,
    decoded: &AtomicUsize,
) {
    for input in inputs {
        if tx.send(Item::Input(input.clone())).is_err() {
            return;
        }
        let mut out = Emitter {
            tx,
            opts,
            decoded,
            cluster: None,
            chunk: Vec::new(),
            gone: false,
        };
        let result = match input {
            Input::Stdin => stream_one(std::io::stdin().lock(), opts, &mut out),
            Input::File(p) => std::fs::File::open(p)
                .map_err(ReadError::from)
                .and_then(|f| stream_one(f, opts, &mut out)),
        };
        out.flush();
        if let Err(e) = result {
            out.send(Item::Failed(e));
        }
        if out.gone {
            return;
        }
    }
}

/// Gathers events into chunks of one cluster and sends them.
struct Emitter<'a> {
    tx: &'a crossbeam_channel::Sender<Item>,
    opts: &'a StreamOptions,
    decoded: &'a AtomicUsize,
    cluster: Option<Arc<str>>,
    chunk: Vec<AuditEvent>,
    /// The receiver hung up: stop reading.
    gone: bool,
}

impl Emitter<'_> {
    fn send(&mut self, item: Item) {
        if !self.gone && self.tx.send(item).is_err() {
            self.gone = true;
        }
    }

    fn flush(&mut self) {
        if !self.chunk.is_empty() {
            let events = std::mem::take(&mut self.chunk);
            let cluster = self.cluster.clone();
            self.send(Item::Events { cluster, events });
        }
    }

    fn take(&mut self, d: super::envelope::DecodedEnvelope) {
        for r in d.rejected {
            self.send(Item::Rejected(r));
        }
        if !d.skipped.is_empty() {
            self.send(Item::Skipped(d.skipped.len()));
        }
        self.decoded.fetch_add(d.events.len(), Ordering::Relaxed);
        for (e, c) in d.events.into_iter().zip(d.clusters) {
            if c != self.cluster || self.chunk.len() >= self.opts.chunk_events.max(1) {
                self.flush();
                self.cluster = c;
            }
            self.chunk.push(e);
        }
    }
}

fn stream_one(
    input: impl Read,
    opts: &StreamOptions,
    out: &mut Emitter<'_>,
) -> Result<(), ReadError> {
    use std::io::BufRead;
    let limits = super::envelope::Limits::default();
    let mut plain = std::io::BufReader::with_capacity(1 << 16, input);
    let gzip = super::envelope::is_gzip(plain.fill_buf()?);
    let mut reader: Box<dyn BufRead + '_> = if gzip {
        Box::new(std::io::BufReader::with_capacity(
            1 << 16,
            flate2::bufread::MultiGzDecoder::new(plain),
        ))
    } else {
        Box::new(plain)
    };
    let mut lines = super::envelope::Lines::new(opts.format, limits);
    let mut line = Vec::new();
    // The first line with content waits for the second: if there is none,
    // the input is one document, whose places carry no line number.
    let mut first: Option<(usize, Vec<u8>)> = None;
    let mut n = 0usize;
    let mut content_lines = 0usize;
    loop {
        line.clear();
        let cap = opts.max_line_bytes as u64 + 1;
        if (&mut reader).take(cap).read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        if line.len() > opts.max_line_bytes {
            skip_line(&mut reader)?;
            out.send(Item::Rejected(Rejection {
                at: format!("line {n}"),
                reason: format!("line is longer than {} bytes", opts.max_line_bytes),
                kind: "too_large",
            }));
            content_lines += 1;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        content_lines += 1;
        if content_lines == 1 {
            if starts_a_document(&line) {
                // A document spread over lines: read it whole, as it comes.
                // Decompressed, it is held to the limit a gzip body has.
                let cap = if gzip {
                    limits.max_decoded_bytes as u64
                } else {
                    u64::MAX
                };
                let mut all = vec![b'\n'; n - 1];
                all.extend_from_slice(&line);
                let budget = cap.saturating_sub(all.len() as u64).saturating_add(1);
                (&mut reader).take(budget).read_to_end(&mut all)?;
                if all.len() as u64 > cap {
                    out.send(Item::Rejected(Rejection {
                        at: String::new(),
                        reason: format!("gzip data decodes to more than {cap} bytes"),
                        kind: "bad_encoding",
                    }));
                    return Ok(());
                }
                out.take(
                    super::envelope::unwrap_input(&all, opts.format, &limits)?
                        .decode(opts.max_event_bytes),
                );
                return Ok(());
            }
            first = Some((n, std::mem::take(&mut line)));
            continue;
        }
        if let Some((at, text)) = first.take() {
            out.take(one_line(&mut lines, at, &text, opts)?);
        }
        out.take(one_line(&mut lines, n, &line, opts)?);
        if out.gone {
            return Ok(());
        }
    }
    if let Some((at, text)) = first {
        if content_lines > 1 {
            // Only over-long lines followed it: still a line of many.
            out.take(one_line(&mut lines, at, &text, opts)?);
            return Ok(());
        }
        // The only line: one document, read as `unwrap_input` reads one.
        out.take(
            super::envelope::unwrap_input(&text, opts.format, &limits)?
                .decode(opts.max_event_bytes),
        );
    }
    Ok(())
}

fn one_line(
    lines: &mut super::envelope::Lines,
    n: usize,
    line: &[u8],
    opts: &StreamOptions,
) -> Result<super::envelope::DecodedEnvelope, ReadError> {
    let mut u = super::envelope::Unwrapping::default();
    lines.line(n, line, &mut u)?;
    Ok(u.decode(opts.max_event_bytes))
}

/// Whether a line is the start of a JSON document that goes on past it.
fn starts_a_document(line: &[u8]) -> bool {
    let trimmed = line.trim_ascii();
    matches!(trimmed.first(), Some(b'{' | b'['))
        && serde_json::from_slice::<serde::de::IgnoredAny>(trimmed).is_err_and(|e| e.is_eof())
}

/// Consumes the rest of an over-long line, without keeping it.
fn skip_line(reader: &mut dyn std::io::BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let len = buf.len();
                reader.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &str = r#"{"kind":"Event","auditID":"a","stage":"ResponseComplete","verb":"get"}"#;

    fn aks_line(i: usize, cluster: &str) -> String {
        let event = format!(
            r#"{{"kind":"Event","auditID":"e{i}","stage":"ResponseComplete","verb":"get"}}"#
        );
        serde_json::json!({
            "category": "kube-audit",
            "properties": { "log": event },
            "resourceId": format!("/SUBSCRIPTIONS/S/RESOURCEGROUPS/G/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/{cluster}"),
        })
        .to_string()
    }

    /// Everything [`stream_inputs`] sends for `text`, through a channel of
    /// `bound` items, read one item at a time. After each item, the reader
    /// may be ahead of the consumer by the channel and the chunk it fills,
    /// never by the rest of the input.
    fn stream_text(text: &str, chunk_events: usize, bound: usize) -> Vec<Item> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.jsonl");
        std::fs::write(&path, text).unwrap();
        let opts = StreamOptions {
            chunk_events,
            ..StreamOptions::new(1 << 20, super::super::envelope::InputFormat::Auto)
        };
        let (tx, rx) = crossbeam_channel::bounded(bound);
        let decoded = Arc::new(AtomicUsize::new(0));
        let reader = {
            let decoded = decoded.clone();
            std::thread::spawn(move || stream_inputs(&[Input::File(path)], &opts, &tx, &decoded))
        };
        let mut items = Vec::new();
        let mut received = 0usize;
        for item in rx {
            if let Item::Events { events, .. } = &item {
                received += events.len();
            }
            let ahead = decoded.load(Ordering::Relaxed) - received;
            assert!(
                ahead <= (bound + 2) * chunk_events,
                "the reader is {ahead} events ahead with a channel of {bound} chunks of {chunk_events}"
            );
            items.push(item);
        }
        reader.join().unwrap();
        items
    }

    #[test]
    fn streams_json_lines_in_order_in_chunks_of_one_cluster_with_bounded_read_ahead() {
        // 3,000 records of three clusters, in runs of 1 to 90, and a bad line.
        let mut text = String::new();
        let mut expected: Vec<(String, String)> = Vec::new();
        let clusters = ["alpha", "beta", "gamma"];
        let (mut i, mut run) = (0usize, 0usize);
        while i < 3_000 {
            let cluster = clusters[run % 3];
            for _ in 0..(run * 37 % 90 + 1).min(3_000 - i) {
                if i == 1_234 {
                    text.push_str("not json\n");
                }
                text.push_str(&aks_line(i, cluster));
                text.push('\n');
                expected.push((cluster.to_string(), format!("e{i}")));
                i += 1;
            }
            run += 1;
        }
        let items = stream_text(&text, 16, 2);
        let mut got: Vec<(String, String)> = Vec::new();
        let mut rejected = Vec::new();
        for item in &items {
            match item {
                Item::Events { cluster, events } => {
                    assert!(!events.is_empty() && events.len() <= 16);
                    let c = cluster.as_deref().expect("AKS records name their cluster");
                    got.extend(events.iter().map(|e| (c.to_string(), e.audit_id.clone())));
                }
                Item::Rejected(r) => rejected.push(r.at.clone()),
                Item::Input(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got.len(), 3_000, "every event arrives");
        assert_eq!(got, expected, "in input order, each with its cluster");
        assert_eq!(rejected, ["line 1235"]);
        // A chunk ends where the cluster changes, so no chunk mixes clusters
        // and runs of one cluster are cut only at the chunk size.
        let chunks: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Item::Events { cluster, events } => Some((cluster.clone(), events.len())),
                _ => None,
            })
            .collect();
        for w in chunks.windows(2) {
            assert!(w[0].0 != w[1].0 || w[0].1 == 16, "{w:?}");
        }
    }

    #[test]
    fn a_document_over_many_lines_or_on_one_line_reads_as_before() {
        let list = format!(r#"{{"kind":"EventList","items":[{EV},{EV},{{"kind":"Pod"}}]}}"#);
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(&list).unwrap(),
        )
        .unwrap();
        for text in [format!("\n{pretty}\n"), list.clone(), format!("{list}\n\n")] {
            let items = stream_text(&text, 400, 1);
            let events: usize = items
                .iter()
                .map(|i| match i {
                    Item::Events { events, .. } => events.len(),
                    _ => 0,
                })
                .sum();
            assert_eq!(events, 2, "{text}");
            let places: Vec<_> = items
                .iter()
                .filter_map(|i| match i {
                    Item::Rejected(r) => Some(r.at.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(places, ["item 2"], "no line number in one document: {text}");
        }
    }

    #[test]
    fn an_over_long_line_is_rejected_and_the_next_lines_are_read() {
        let long = format!(r#"{{"kind":"Event","auditID":"{}"}}"#, "x".repeat(5_000));
        let text = format!("{EV}\n{long}\n{EV}\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.jsonl");
        std::fs::write(&path, &text).unwrap();
        let opts = StreamOptions {
            max_line_bytes: 1_000,
            ..StreamOptions::new(1 << 20, super::super::envelope::InputFormat::Auto)
        };
        let (tx, rx) = crossbeam_channel::unbounded();
        stream_inputs(&[Input::File(path)], &opts, &tx, &AtomicUsize::new(0));
        drop(tx);
        let items: Vec<Item> = rx.iter().collect();
        let events: usize = items
            .iter()
            .map(|i| match i {
                Item::Events { events, .. } => events.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(events, 2);
        assert!(items.iter().any(|i| matches!(i,
            Item::Rejected(r) if r.at == "line 2" && r.kind == "too_large")));
    }

    #[test]
    fn gzip_json_lines_are_streamed() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for _ in 0..1_000 {
            writeln!(gz, "{EV}").unwrap();
        }
        let bytes = gz.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("input.jsonl.gz");
        std::fs::write(&path, bytes).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        let opts = StreamOptions::new(1 << 20, super::super::envelope::InputFormat::Auto);
        let decoded = AtomicUsize::new(0);
        stream_inputs(&[Input::File(path)], &opts, &tx, &decoded);
        assert_eq!(decoded.load(Ordering::Relaxed), 1_000);
        drop(tx);
        assert_eq!(
            rx.iter()
                .filter(|i| matches!(i, Item::Events { .. }))
                .count(),
            3
        );
    }
}
