//! Provider envelopes around Kubernetes audit events.
//!
//! On managed clusters the apiserver's audit log reaches us only through the
//! provider's logging service, which wraps every event:
//! - GKE: Cloud Audit Logs `LogEntry`s, from which the Event is rebuilt
//!   ([`gke`], with the field-by-field mapping and what cannot be rebuilt);
//! - AKS: Diagnostic Settings records, the Event as text in `properties.log`
//!   ([`aks`]);
//! - EKS: CloudWatch Logs subscription payloads, `FilterLogEvents` pages and
//!   S3 exports, the Event as text in each log event's `message`
//!   ([`cloudwatch`]);
//! - and the transports that carry those: Firehose HTTP endpoint requests
//!   ([`firehose`]) and Pub/Sub push and pull messages ([`pubsub`]).
//!
//! Everything here is a pure function of the bytes received. Each record is
//! unwrapped on its own: a malformed record is rejected with its place and
//! reason while its siblings are kept. A record that is well formed but holds
//! no audit event (a CloudWatch control message, an AKS `guard` record, the
//! audit entry of another Google service) is skipped and counted, not
//! rejected. Error messages name fields, never quote their values, so what an
//! envelope carried (tokens in a request object, say) does not reach a log.

use std::sync::Arc;

use serde_json::Value;

use super::decode::{Decoded, PayloadError, Rejection, decode_payload};
use peregrine_sdk::audit::AuditEvent;

pub(crate) mod aks;
pub(crate) mod cloudwatch;
// The push endpoints and pull sources use the request and answer decoders
// of these two; replay uses the rest.
#[allow(dead_code)]
pub(crate) mod firehose;
pub(crate) mod gke;
#[allow(dead_code)]
pub(crate) mod pubsub;

/// An audit payload (normally one Event) taken out of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unwrapped {
    /// Where it was in the input, e.g. `line 3 records[2]`; empty for an
    /// input that is one record.
    pub at: String,
    /// The audit payload as JSON text: an Event (an EventList or an array
    /// only for plain audit input).
    pub json: String,
    /// The cluster the envelope names (GKE `resource.labels.cluster_name`,
    /// the AKS `resourceId`, the EKS log group), if it names one.
    pub cluster: Option<String>,
}

/// What unwrapping an input gave.
#[derive(Debug, Default)]
pub(crate) struct Unwrapping {
    pub events: Vec<Unwrapped>,
    /// Malformed records, each with its place and reason.
    pub rejected: Vec<Rejection>,
    /// Well-formed records that hold no audit event.
    pub skipped: Vec<Rejection>,
}

impl Unwrapping {
    fn event(&mut self, at: &str, json: String, cluster: Option<String>) {
        self.events.push(Unwrapped {
            at: at.to_string(),
            json,
            cluster,
        });
    }

    fn reject(&mut self, at: &str, kind: &'static str, reason: impl Into<String>) {
        self.rejected.push(Rejection {
            at: at.to_string(),
            reason: reason.into(),
            kind,
        });
    }

    fn skip(&mut self, at: &str, kind: &'static str, reason: impl Into<String>) {
        self.skipped.push(Rejection {
            at: at.to_string(),
            reason: reason.into(),
            kind,
        });
    }

    /// Decodes every unwrapped payload into audit events, each with the
    /// cluster its envelope named. A payload that is not a valid Event is
    /// rejected at its place, with the decoder's reason.
    pub(crate) fn decode(self, max_event_bytes: usize) -> DecodedEnvelope {
        let mut out = DecodedEnvelope {
            rejected: self.rejected,
            skipped: self.skipped,
            ..DecodedEnvelope::default()
        };
        let mut last_cluster: Option<Arc<str>> = None;
        for u in self.events {
            // One Arc per run of events from the same cluster.
            let cluster = match (&u.cluster, &last_cluster) {
                (None, _) => None,
                (Some(c), Some(l)) if **l == **c => Some(l.clone()),
                (Some(c), _) => {
                    let a: Arc<str> = Arc::from(c.as_str());
                    last_cluster = Some(a.clone());
                    Some(a)
                }
            };
            let place = |inner: &str| join(&u.at, inner);
            match decode_payload(u.json.as_bytes(), max_event_bytes) {
                Ok(Decoded { events, rejected }) => {
                    out.clusters
                        .extend(std::iter::repeat_n(cluster.clone(), events.len()));
                    out.events.extend(events);
                    out.rejected.extend(rejected.into_iter().map(|r| Rejection {
                        at: place(&r.at),
                        reason: redact_values(&r.reason),
                        kind: r.kind,
                    }));
                }
                Err(e) => out.rejected.push(Rejection {
                    at: u.at.clone(),
                    kind: match e {
                        PayloadError::NotJson(_) => "not_json",
                        PayloadError::NotAudit(_) => "not_an_event",
                    },
                    reason: redact_values(&e.to_string()),
                }),
            }
        }
        out
    }
}

/// Audit events decoded from envelopes.
#[derive(Debug, Default)]
pub(crate) struct DecodedEnvelope {
    pub events: Vec<AuditEvent>,
    /// `clusters[i]` is the cluster `events[i]`'s envelope named.
    pub clusters: Vec<Option<Arc<str>>>,
    pub rejected: Vec<Rejection>,
    pub skipped: Vec<Rejection>,
}

/// Size limits while unwrapping hostile input.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The most bytes a gzip stream or a base64 field may decode to.
    pub max_decoded_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_decoded_bytes: 64 << 20,
        }
    }
}

/// The envelope shapes an input may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// Plain audit events: an Event, an EventList or an array of them.
    Audit,
    /// GKE: Cloud Audit Logs `LogEntry`s.
    Gke,
    /// AKS: Diagnostic Settings records.
    Aks,
    /// EKS: CloudWatch Logs subscription payloads, `FilterLogEvents` pages.
    CloudWatch,
    /// A Firehose HTTP endpoint delivery request.
    Firehose,
    /// A Pub/Sub push request or `subscriptions.pull` response.
    PubSub,
}

impl Shape {
    fn describe(self) -> &'static str {
        match self {
            Shape::Audit => "a plain audit event",
            Shape::Gke => "a GKE LogEntry",
            Shape::Aks => "an AKS diagnostic record",
            Shape::CloudWatch => "a CloudWatch Logs payload",
            Shape::Firehose => "a Firehose request",
            Shape::PubSub => "a Pub/Sub message",
        }
    }
}

/// `--input-format`: detect the shape, or force one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum InputFormat {
    #[default]
    Auto,
    Forced(Shape),
}

pub(crate) const INPUT_FORMATS: [&str; 7] = [
    "auto",
    "audit",
    "gke",
    "aks",
    "cloudwatch",
    "firehose",
    "pubsub",
];

impl std::str::FromStr for InputFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "auto" => InputFormat::Auto,
            "audit" => InputFormat::Forced(Shape::Audit),
            "gke" => InputFormat::Forced(Shape::Gke),
            "aks" => InputFormat::Forced(Shape::Aks),
            "cloudwatch" => InputFormat::Forced(Shape::CloudWatch),
            "firehose" => InputFormat::Forced(Shape::Firehose),
            "pubsub" => InputFormat::Forced(Shape::PubSub),
            other => {
                return Err(format!(
                    "unknown input format `{}`; one of: {}",
                    shown(other),
                    INPUT_FORMATS.join(", ")
                ));
            }
        })
    }
}

/// Why a whole input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InputError {
    #[error(
        "line {line} is {} but line {first_line} is {}: an input holds one format \
         (split the file, or force one with --input-format)",
        found.describe(), first.describe()
    )]
    Mixed {
        line: usize,
        found: Shape,
        first_line: usize,
        first: Shape,
    },
}

/// Recognises an envelope by its fields. `None` when nothing is recognised:
/// the caller then reads it as plain audit input, whose decoder explains
/// what is wrong with it in the words operators know.
pub(crate) fn detect(v: &Value) -> Option<Shape> {
    match v {
        Value::Array(items) => items.iter().find_map(detect),
        Value::Object(m) => {
            let has = |k: &str| m.contains_key(k);
            if matches!(
                m.get("kind").and_then(Value::as_str),
                Some("Event" | "EventList")
            ) {
                Some(Shape::Audit)
            } else if has("messageType")
                || has("logEvents")
                || has("searchedLogStreams")
                || (m.get("events").and_then(Value::as_array)).is_some_and(|e| {
                    e.first()
                        .is_some_and(|e| e.get("message").is_some() && e.get("timestamp").is_some())
                })
            {
                Some(Shape::CloudWatch)
            } else if has("requestId") && has("records") {
                Some(Shape::Firehose)
            } else if has("records")
                || (has("category") && (has("properties") || has("operationName")))
            {
                Some(Shape::Aks)
            } else if has("protoPayload")
                || has("insertId")
                || has("entries")
                || (has("logName") && has("resource"))
                || m.get("operation")
                    .is_some_and(|o| o.get("producer").is_some())
            {
                Some(Shape::Gke)
            } else if has("receivedMessages") || (has("message") && has("subscription")) {
                Some(Shape::PubSub)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Unwraps one input (a file, stdin, a blob): one JSON document, or JSON
/// lines, or a CloudWatch S3 export (lines of `<timestamp> <message>`),
/// gzip-compressed or not. With [`InputFormat::Auto`] each document or line
/// is recognised by its fields, and lines of two different shapes make the
/// whole input an error naming the line.
pub(crate) fn unwrap_input(
    bytes: &[u8],
    format: InputFormat,
    limits: &Limits,
) -> Result<Unwrapping, InputError> {
    let mut out = Unwrapping::default();
    let owned;
    let bytes = if is_gzip(bytes) {
        match gunzip(bytes, limits.max_decoded_bytes) {
            Ok(b) => {
                owned = b;
                &owned[..]
            }
            Err(reason) => {
                out.reject("", "bad_encoding", reason);
                return Ok(out);
            }
        }
    } else {
        bytes
    };
    if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
        let shape = match format {
            InputFormat::Forced(s) => s,
            InputFormat::Auto => detect(&v).unwrap_or(Shape::Audit),
        };
        // Valid JSON is valid UTF-8.
        let text = std::str::from_utf8(bytes).unwrap_or_default();
        unwrap_value(&v, text, shape, "", limits, true, &mut out);
        return Ok(out);
    }
    // Not one document: lines.
    let mut lines = Lines::new(format, *limits);
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        lines.line(i + 1, line, &mut out)?;
    }
    Ok(out)
}

/// The JSON-lines half of [`unwrap_input`], one line at a time, so that
/// `peregrine replay` can stream an input of any length: with
/// [`InputFormat::Auto`] the first recognised line's shape binds the others.
pub(crate) struct Lines {
    format: InputFormat,
    limits: Limits,
    first: Option<(usize, Shape)>,
}

impl Lines {
    pub(crate) fn new(format: InputFormat, limits: Limits) -> Self {
        Lines {
            format,
            limits,
            first: match format {
                InputFormat::Forced(s) => Some((0, s)),
                InputFormat::Auto => None,
            },
        }
    }

    /// Unwraps line `n` (counted from 1) into `out`; blank lines give nothing.
    pub(crate) fn line(
        &mut self,
        n: usize,
        line: &[u8],
        out: &mut Unwrapping,
    ) -> Result<(), InputError> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        let at = format!("line {n}");
        let Ok(text) = std::str::from_utf8(line) else {
            out.reject(&at, "not_json", "line is not UTF-8");
            return Ok(());
        };
        let text = text.trim_end_matches(['\n', '\r']);
        let v = match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(e) => {
                if let Some(message) = cloudwatch::export_line(text)
                    && matches!(self.first, None | Some((_, Shape::CloudWatch)))
                {
                    self.first.get_or_insert((n, Shape::CloudWatch));
                    cloudwatch::unwrap_message(message, None, None, &at, out);
                } else {
                    out.reject(
                        &at,
                        "not_json",
                        format!("line is not JSON: {}", json_error(&e)),
                    );
                }
                return Ok(());
            }
        };
        let shape = match (self.format, detect(&v), self.first) {
            (InputFormat::Forced(s), _, _) => s,
            (InputFormat::Auto, Some(found), Some((first_line, first)))
                if found != first
                    // An audit line in a CloudWatch export is an event's
                    // message without its timestamp, not another format.
                    && !(first == Shape::CloudWatch && found == Shape::Audit) =>
            {
                return Err(InputError::Mixed {
                    line: n,
                    found,
                    first_line,
                    first,
                });
            }
            (InputFormat::Auto, _, Some((_, first))) => first,
            (InputFormat::Auto, Some(found), None) => {
                self.first = Some((n, found));
                found
            }
            (InputFormat::Auto, None, None) => Shape::Audit,
        };
        unwrap_value(&v, text, shape, &at, &self.limits, true, out);
        Ok(())
    }
}

/// Unwraps one parsed document of a known shape. `text` is its JSON text,
/// kept as it came for plain audit input. `transports`: whether a Firehose
/// request or a Pub/Sub message may stand here (not inside one another).
fn unwrap_value(
    v: &Value,
    text: &str,
    shape: Shape,
    at: &str,
    limits: &Limits,
    transports: bool,
    out: &mut Unwrapping,
) {
    match shape {
        Shape::Audit => out.event(at, text.trim().to_string(), None),
        Shape::Gke => gke::unwrap(v, at, out),
        Shape::Aks => aks::unwrap(v, at, out),
        Shape::CloudWatch => cloudwatch::unwrap(v, at, out),
        Shape::Firehose | Shape::PubSub if !transports => out.reject(
            at,
            "invalid",
            format!("{} cannot be nested in another", shape.describe()),
        ),
        Shape::Firehose => firehose::unwrap_request_value(v, at, limits, out),
        Shape::PubSub => pubsub::unwrap_value(v, at, limits, out),
    }
}

/// Unwraps the decoded bytes a transport carried (a Firehose record, a
/// Pub/Sub message's data): gzip or not, one document or JSON lines, of any
/// shape but a transport.
fn unwrap_carried(bytes: &[u8], at: &str, limits: &Limits, out: &mut Unwrapping) {
    let owned;
    let bytes = if is_gzip(bytes) {
        match gunzip(bytes, limits.max_decoded_bytes) {
            Ok(b) => {
                owned = b;
                &owned[..]
            }
            Err(reason) => return out.reject(at, "bad_encoding", reason),
        }
    } else {
        bytes
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return out.reject(at, "not_json", "data is not UTF-8");
    };
    let one = |v: &Value, text: &str, at: &str, out: &mut Unwrapping| {
        let shape = detect(v).unwrap_or(Shape::Audit);
        unwrap_value(v, text, shape, at, limits, false, out);
    };
    match serde_json::from_str::<Value>(text) {
        Ok(v) => one(&v, text, at, out),
        Err(first_error) => {
            // Firehose may carry newline-delimited records (CloudWatch
            // message extraction, or events put directly).
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() < 2 {
                return out.reject(
                    at,
                    "not_json",
                    format!("data is not JSON: {}", json_error(&first_error)),
                );
            }
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let at = join(at, &format!("line {}", i + 1));
                match serde_json::from_str::<Value>(line) {
                    Ok(v) => one(&v, line, &at, out),
                    Err(e) => out.reject(
                        &at,
                        "not_json",
                        format!("line is not JSON: {}", json_error(&e)),
                    ),
                }
            }
        }
    }
}

/// `a b`, or either alone when the other is empty.
pub(crate) fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a} {b}"),
    }
}

pub(crate) fn is_gzip(b: &[u8]) -> bool {
    b.starts_with(&[0x1f, 0x8b])
}

/// Decompresses gzip (any number of members), refusing more than `max`
/// bytes of output: a small hostile body may expand a thousandfold.
pub(crate) fn gunzip(b: &[u8], max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut reader = flate2::read::MultiGzDecoder::new(b).take(max as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| format!("gzip data is corrupt: {e}"))?;
    if out.len() > max {
        return Err(format!("gzip data expands past the {max}-byte limit"));
    }
    Ok(out)
}

/// Decodes standard base64 (padding optional), refusing input that would
/// decode past `max` bytes.
pub(crate) fn base64_decode(s: &str, max: usize) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    if s.len() / 4 * 3 > max + 3 {
        return Err(format!("base64 data decodes past the {max}-byte limit"));
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine
        .decode(s.trim())
        .map_err(|e| format!("data is not valid base64: {e}"))
}

/// A JSON error without the input it quotes: serde's messages can carry
/// the offending value, which may be a secret.
pub(crate) fn json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Io => "read error",
        Category::Syntax => "syntax error",
        Category::Data => "unexpected value",
        Category::Eof => "unexpected end of input",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// serde's data errors quote the offending value (`invalid type: string
/// "…", expected i32`), which may be a secret an event carried: the words
/// are kept, the value is not.
pub(crate) fn redact_values(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut quoted = false;
    for c in reason.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// A value from the input, short enough for a message.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// The JSON type of a value, for messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `v[key]` as a string: `Ok(None)` when absent or null, an error naming
/// `field` when it is another type.
pub(crate) fn opt_str<'a>(
    v: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a str>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!(
            "field `{field}` is {}, not a string",
            type_name(other)
        )),
    }
}

/// `v[key]` as an object: `Ok(None)` when absent or null.
pub(crate) fn opt_obj<'a>(
    v: &'a serde_json::Map<String, Value>,
    key: &str,
    field: &str,
) -> Result<Option<&'a serde_json::Map<String, Value>>, String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(format!(
            "field `{field}` is {}, not an object",
            type_name(other)
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests;
