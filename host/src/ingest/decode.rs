//! Decoding of audit payloads: one `Event`, an `EventList`, or a JSON array
//! of either; `audit.k8s.io/v1` or `v1beta1`, `apiVersion` optional (the
//! payload is recognised by `kind`). Each event is decoded on its own, so a
//! bad item is rejected with its reason while its siblings are kept.

use serde::Deserialize;
use serde_json::value::RawValue;

use peregrine_sdk::audit::AuditEvent;

/// Why a whole payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The message always starts "data not recognized as a k8s audit event",
    /// the words Falco uses, so tooling that greps for them keeps working.
    #[error("{0}")]
    NotAudit(String),
}

/// Why one event of a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    /// Where in the payload: `item N` (0-based, in a list or array), `line N`
    /// (1-based, in JSON lines), or empty for a single event.
    pub at: String,
    pub reason: String,
    /// Metric label: `not_an_event`, `invalid`, `too_large`, `unsupported_version`.
    #[serde(skip)]
    pub kind: &'static str,
}

/// The outcome of decoding one payload.
#[derive(Debug, Default)]
pub struct Decoded {
    pub events: Vec<AuditEvent>,
    pub rejected: Vec<Rejection>,
}

const API_VERSIONS: [&str; 3] = [
    "audit.k8s.io/v1",
    "audit.k8s.io/v1beta1",
    "audit.k8s.io/v1alpha1",
];

#[derive(Deserialize)]
struct Kind<'a> {
    #[serde(borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "apiVersion")]
    api_version: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct List<'a> {
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// Counts rejected items in `peregrine_events_rejected_total`, and logs
/// the ones over the per-event size limit: such an event is most likely a
/// real object too big to evaluate, which an operator should hear of, but a
/// sender can post thousands a second, so at most one line a second is
/// written, with the number left out since.
pub(crate) fn count_rejected(rejected: &[Rejection], tenant: &str, input: &str) {
    static OVERSIZE: crate::telemetry::RateLimited =
        crate::telemetry::RateLimited::new(std::time::Duration::from_secs(1));
    for r in rejected {
        metrics::counter!("peregrine_events_rejected_total", "reason" => r.kind).increment(1);
        if r.kind == "too_large"
            && let Some(suppressed) = OVERSIZE.check()
        {
            tracing::warn!(
                tenant,
                input,
                at = %r.at,
                suppressed,
                "audit event rejected: {}",
                r.reason
            );
        }
    }
}

/// Decodes a payload. `max_event_bytes` caps each event's JSON text.
pub fn decode_payload(body: &[u8], max_event_bytes: usize) -> Result<Decoded, PayloadError> {
    let text =
        std::str::from_utf8(body).map_err(|e| PayloadError::NotJson(format!("not UTF-8: {e}")))?;
    let root: &RawValue =
        serde_json::from_str(text).map_err(|e| PayloadError::NotJson(e.to_string()))?;
    let mut out = Decoded::default();
    match root.get().as_bytes().first() {
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(root.get())
                .map_err(|e| PayloadError::NotJson(e.to_string()))?;
            for (i, item) in items.into_iter().enumerate() {
                decode_item(item, i, max_event_bytes, true, &mut out);
            }
        }
        Some(b'{') => decode_item(root, usize::MAX, max_event_bytes, true, &mut out),
        _ => {
            return Err(PayloadError::NotAudit(
                "data not recognized as a k8s audit event: expected a JSON object (Event or EventList) or an array of them"
                    .into(),
            ));
        }
    }
    // A payload in which nothing at all was an audit event is refused whole,
    // so a misconfigured sender gets a 400 it can see, not a 200.
    if out.events.is_empty()
        && !out.rejected.is_empty()
        && out.rejected.iter().all(|r| r.kind == "not_an_event")
    {
        return Err(PayloadError::NotAudit(out.rejected[0].reason.clone()));
    }
    Ok(out)
}

/// `index` is `usize::MAX` for a payload that is a single object.
/// `list_allowed`: an EventList may stand here (at the root, or as an item
/// of a root array), but not inside another list.
fn decode_item(
    item: &RawValue,
    index: usize,
    max_event_bytes: usize,
    list_allowed: bool,
    out: &mut Decoded,
) {
    let reject = |out: &mut Decoded, kind: &'static str, reason: String| {
        let at = if index == usize::MAX {
            String::new()
        } else {
            format!("item {index}")
        };
        out.rejected.push(Rejection { at, reason, kind });
    };
    let head: Kind = match serde_json::from_str(item.get()) {
        Ok(h) => h,
        Err(_) => return reject(out, "not_an_event", "item is not a JSON object".into()),
    };
    let kind = head
        .kind
        .and_then(|k| serde_json::from_str::<String>(k.get()).ok());
    let is_audit_kind = matches!(kind.as_deref(), Some("Event") | Some("EventList"));
    if let (true, Some(v)) = (is_audit_kind, head.api_version) {
        match serde_json::from_str::<String>(v.get()) {
            Ok(v) if API_VERSIONS.contains(&v.as_str()) => {}
            Ok(v) => {
                return reject(
                    out,
                    "unsupported_version",
                    format!("apiVersion `{v}` is not audit.k8s.io/v1 or v1beta1"),
                );
            }
            Err(_) => return reject(out, "invalid", "apiVersion is not a string".into()),
        }
    }
    match kind.as_deref() {
        Some("Event") => {
            if item.get().len() > max_event_bytes {
                return reject(
                    out,
                    "too_large",
                    format!(
                        "event is {} bytes, over the per-event limit of {max_event_bytes}",
                        item.get().len()
                    ),
                );
            }
            // The plain decoder first: tracking the path costs about a third
            // of the decoding time, and is only needed to explain a failure.
            if let Ok(ev) = serde_json::from_str::<AuditEvent>(item.get()) {
                out.events.push(ev);
                return;
            }
            let mut de = serde_json::Deserializer::from_str(item.get());
            match serde_path_to_error::deserialize::<_, AuditEvent>(&mut de) {
                Ok(ev) => out.events.push(ev),
                Err(e) if e.path().to_string() == "." => reject(
                    out,
                    "invalid",
                    format!("invalid audit event: {}", e.inner()),
                ),
                Err(e) => reject(
                    out,
                    "invalid",
                    format!("invalid audit event: field `{}`: {}", e.path(), e.inner()),
                ),
            }
        }
        Some("EventList") if list_allowed => {
            let list: List = match serde_json::from_str(item.get()) {
                Ok(l) => l,
                Err(e) => return reject(out, "invalid", format!("invalid EventList: {e}")),
            };
            for (i, ev) in list.items.unwrap_or_default().into_iter().enumerate() {
                decode_item(ev, i, max_event_bytes, false, out);
            }
        }
        Some(other) => reject(
            out,
            "not_an_event",
            format!("data not recognized as a k8s audit event: kind `{other}`"),
        ),
        None => reject(
            out,
            "not_an_event",
            "data not recognized as a k8s audit event: no string `kind`".into(),
        ),
    }
}

/// Decodes the bytes of one input: one document, else JSON lines (a
/// webhook body sent as JSON lines, a journal entry, a file, a page of
/// CloudWatch events).
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

    const EV: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","auditID":"a","stage":"ResponseComplete","verb":"get"}"#;

    #[test]
    fn accepts_event_list_and_array_with_or_without_api_version() {
        let d = decode_payload(EV.as_bytes(), 1 << 20).unwrap();
        assert_eq!(d.events.len(), 1);
        let list = format!(r#"{{"kind":"EventList","items":[{EV},{EV}]}}"#);
        assert_eq!(
            decode_payload(list.as_bytes(), 1 << 20)
                .unwrap()
                .events
                .len(),
            2
        );
        let arr = format!(
            r#"[{EV},{}]"#,
            EV.replace(r#""apiVersion":"audit.k8s.io/v1","#, "")
        );
        assert_eq!(
            decode_payload(arr.as_bytes(), 1 << 20)
                .unwrap()
                .events
                .len(),
            2
        );
        let beta = EV.replace("audit.k8s.io/v1", "audit.k8s.io/v1beta1");
        assert_eq!(
            decode_payload(beta.as_bytes(), 1 << 20)
                .unwrap()
                .events
                .len(),
            1
        );
    }

    #[test]
    fn falco_fal_01_003_is_refused_clearly() {
        let e = decode_payload(br#"{"kind": 0}"#, 1 << 20).unwrap_err();
        assert!(
            e.to_string()
                .contains("data not recognized as a k8s audit event"),
            "{e}"
        );
    }

    #[test]
    fn bad_items_are_rejected_with_reasons_and_siblings_kept() {
        let big = EV.replace(
            r#""verb":"get""#,
            &format!(r#""verb":"get","userAgent":"{}""#, "x".repeat(500)),
        );
        let body = format!(
            r#"{{"kind":"EventList","items":[{EV},{{"kind":"Event","auditID":7}},42,{big},{{"kind":"Event","apiVersion":"v2"}},{{"kind":"Pod","apiVersion":"v1"}}]}}"#
        );
        let d = decode_payload(body.as_bytes(), 300).unwrap();
        assert_eq!(d.events.len(), 1);
        let kinds: Vec<_> = d.rejected.iter().map(|r| (r.at.as_str(), r.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("item 1", "invalid"),
                ("item 2", "not_an_event"),
                ("item 3", "too_large"),
                ("item 4", "unsupported_version"),
                ("item 5", "not_an_event")
            ]
        );
        assert!(
            d.rejected[0].reason.contains("auditID"),
            "{}",
            d.rejected[0].reason
        );
    }

    #[test]
    fn garbage_is_not_json() {
        for body in [&b"{not json"[..], b"", b"\xff\xfe", b"[1,2"] {
            assert!(matches!(
                decode_payload(body, 1 << 20),
                Err(PayloadError::NotJson(_))
            ));
        }
        assert!(matches!(
            decode_payload(b"\"str\"", 1 << 20),
            Err(PayloadError::NotAudit(_))
        ));
        assert!(matches!(
            decode_payload(b"[1, 2]", 1 << 20),
            Err(PayloadError::NotAudit(_))
        ));
    }

    #[test]
    fn deep_nesting_does_not_overflow_the_stack() {
        let body = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode_payload(body.as_bytes(), 1 << 20).is_err());
    }

    /// An event without `apiVersion`, as audit log files hold them.
    const LINE_EV: &str =
        r#"{"kind":"Event","auditID":"a","stage":"ResponseComplete","verb":"get"}"#;

    #[test]
    fn reads_documents_and_json_lines() {
        assert_eq!(decode_input(LINE_EV.as_bytes(), 1 << 20).events.len(), 1);
        let pretty = serde_json::to_string_pretty(
            &serde_json::from_str::<serde_json::Value>(LINE_EV).unwrap(),
        )
        .unwrap();
        assert_eq!(decode_input(pretty.as_bytes(), 1 << 20).events.len(), 1);
        let lines = format!("{LINE_EV}\n\n{LINE_EV}\nnot json\n{{\"kind\":\"Pod\"}}\n{LINE_EV}\n");
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
