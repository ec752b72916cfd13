//! EKS: audit events in CloudWatch Logs (log group `/aws/eks/<cluster>/cluster`,
//! streams `kube-apiserver-audit-*`).
//!
//! Three wrappings carry them, each log event's `message` being the
//! apiserver's Event as JSON text:
//! - a subscription payload (`messageType`, `logGroup`, `logStream`,
//!   `logEvents[]`), as a subscription filter delivers it to Firehose or
//!   Lambda, gzip-compressed; `CONTROL_MESSAGE`s (the connectivity check
//!   CloudWatch sends when a subscription is created) are skipped;
//! - a `FilterLogEvents` answer (`events[]` with `logStreamName`), as the
//!   API and `aws logs filter-log-events` return it;
//! - an S3 export (`CreateExportTask`): gzip text, one `<timestamp> <message>`
//!   per line.
//!
//! The log group also holds the control plane's other logs (apiserver,
//! authenticator, scheduler, controller manager): their messages are not
//! JSON and their streams are not audit streams, so they are skipped; a
//! non-JSON message in an audit stream is rejected.

use serde::Deserialize;
use serde_json::Value;

use super::{Unwrapping, join, opt_str, shown, type_name};

/// Unwraps a subscription payload, a `FilterLogEvents` answer, or an array
/// of either.
pub(super) fn unwrap(v: &Value, at: &str, out: &mut Unwrapping) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let at = join(at, &format!("item {i}"));
                match item {
                    Value::Object(_) => unwrap(item, &at, out),
                    other => out.reject(
                        &at,
                        "invalid",
                        format!(
                            "a CloudWatch Logs payload is an object, not {}",
                            type_name(other)
                        ),
                    ),
                }
            }
        }
        Value::Object(m) if m.contains_key("events") && !m.contains_key("logEvents") => {
            if let Err(reason) = filter_page_value(m, at, out) {
                out.reject(
                    at,
                    "invalid",
                    format!("invalid FilterLogEvents answer: {reason}"),
                );
            }
        }
        Value::Object(m) => {
            if let Err(reason) = subscription_payload(m, at, out) {
                out.reject(
                    at,
                    "invalid",
                    format!("invalid CloudWatch Logs payload: {reason}"),
                );
            }
        }
        other => out.reject(
            at,
            "invalid",
            format!(
                "a CloudWatch Logs payload is an object, not {}",
                type_name(other)
            ),
        ),
    }
}

fn subscription_payload(
    m: &serde_json::Map<String, Value>,
    at: &str,
    out: &mut Unwrapping,
) -> Result<(), String> {
    match opt_str(m, "messageType", "messageType")? {
        Some("DATA_MESSAGE") | None => {}
        Some("CONTROL_MESSAGE") => {
            out.skip(
                at,
                "control_message",
                "CONTROL_MESSAGE: CloudWatch's connectivity check",
            );
            return Ok(());
        }
        Some(other) => {
            return Err(format!(
                "messageType `{}` is not DATA_MESSAGE or CONTROL_MESSAGE",
                shown(other)
            ));
        }
    }
    let cluster = opt_str(m, "logGroup", "logGroup")?.and_then(cluster_of_log_group);
    let stream = opt_str(m, "logStream", "logStream")?;
    let events = match m.get("logEvents") {
        Some(Value::Array(e)) => e,
        None | Some(Value::Null) => return Err("field `logEvents` is missing".into()),
        Some(other) => {
            return Err(format!(
                "field `logEvents` is {}, not an array",
                type_name(other)
            ));
        }
    };
    for (i, e) in events.iter().enumerate() {
        let at = join(at, &format!("logEvents[{i}]"));
        let message = match e.as_object().map(|o| opt_str(o, "message", "message")) {
            Some(Ok(Some(msg))) => msg,
            Some(Ok(None)) => {
                out.reject(&at, "invalid", "log event has no `message`");
                continue;
            }
            Some(Err(reason)) => {
                out.reject(&at, "invalid", reason);
                continue;
            }
            None => {
                out.reject(
                    &at,
                    "invalid",
                    format!("a log event is an object, not {}", type_name(e)),
                );
                continue;
            }
        };
        unwrap_message(
            message,
            cluster.clone(),
            stream.map(is_audit_stream),
            &at,
            out,
        );
    }
    Ok(())
}

fn filter_page_value(
    m: &serde_json::Map<String, Value>,
    at: &str,
    out: &mut Unwrapping,
) -> Result<(), String> {
    let events = match m.get("events") {
        Some(Value::Array(e)) => e,
        Some(Value::Null) => return Ok(()),
        Some(other) => {
            return Err(format!(
                "field `events` is {}, not an array",
                type_name(other)
            ));
        }
        None => unreachable!(),
    };
    for (i, e) in events.iter().enumerate() {
        let at = join(at, &format!("events[{i}]"));
        let Some(o) = e.as_object() else {
            out.reject(
                &at,
                "invalid",
                format!("a log event is an object, not {}", type_name(e)),
            );
            continue;
        };
        let (message, stream) = match (
            opt_str(o, "message", "message"),
            opt_str(o, "logStreamName", "logStreamName"),
        ) {
            (Ok(Some(m)), Ok(s)) => (m, s),
            (Ok(None), _) => {
                out.reject(&at, "invalid", "log event has no `message`");
                continue;
            }
            (Err(r), _) | (_, Err(r)) => {
                out.reject(&at, "invalid", r);
                continue;
            }
        };
        unwrap_message(message, None, stream.map(is_audit_stream), &at, out);
    }
    Ok(())
}

/// One log event's message. `audit_stream`: whether its stream is an audit
/// stream, when the stream is known.
pub(super) fn unwrap_message(
    message: &str,
    cluster: Option<String>,
    audit_stream: Option<bool>,
    at: &str,
    out: &mut Unwrapping,
) {
    let text = message.trim();
    if text.starts_with('{') {
        out.event(at, text.to_string(), cluster);
    } else if audit_stream == Some(false) {
        out.skip(
            at,
            "not_audit_stream",
            "message of a control-plane log that is not the audit log",
        );
    } else {
        out.reject(at, "not_json", "audit log message is not a JSON object");
    }
}

/// `kube-apiserver-audit-<id>`: EKS's audit streams.
fn is_audit_stream(stream: &str) -> bool {
    stream.starts_with("kube-apiserver-audit")
}

/// `/aws/eks/<cluster>/cluster` → `<cluster>`.
pub(crate) fn cluster_of_log_group(group: &str) -> Option<String> {
    let rest = group.strip_prefix("/aws/eks/")?;
    let (name, tail) = rest.split_once('/')?;
    (tail == "cluster" && !name.is_empty()).then(|| name.to_string())
}

/// A line of an S3 export: `2024-01-19T13:47:19.465Z {"kind":"Event",…}`;
/// the message, when the line has that form.
pub(super) fn export_line(line: &str) -> Option<&str> {
    let (stamp, message) = line.split_once(' ')?;
    let b = stamp.as_bytes();
    let looks_like_time = b.len() >= 20
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[10] == b'T'
        && (stamp.ends_with('Z') || stamp.contains('+'));
    (looks_like_time && message.trim_start().starts_with('{')).then_some(message)
}

/// One page of a `FilterLogEvents` answer, for the pull source.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FilterPage {
    #[serde(default)]
    pub events: Vec<FilteredEvent>,
    #[serde(default)]
    pub next_token: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FilteredEvent {
    #[serde(default)]
    pub event_id: String,
    #[serde(default)]
    pub log_stream_name: String,
    #[serde(default)]
    pub timestamp: i64,
    #[serde(default)]
    pub ingestion_time: i64,
    #[serde(default)]
    pub message: String,
}

/// Parses a `FilterLogEvents` answer body.
#[allow(dead_code)]
pub(crate) fn filter_page(body: &[u8]) -> Result<FilterPage, String> {
    serde_json::from_slice(body).map_err(|e| {
        format!(
            "FilterLogEvents answer is not valid: {}",
            super::json_error(&e)
        )
    })
}

#[allow(dead_code)]
impl FilteredEvent {
    /// Unwraps this event's message (for the pull source, which knows the
    /// cluster from its configuration or its log group).
    pub(crate) fn unwrap_into(&self, cluster: Option<String>, at: &str, out: &mut Unwrapping) {
        unwrap_message(
            &self.message,
            cluster,
            Some(is_audit_stream(&self.log_stream_name)),
            at,
            out,
        );
    }
}
