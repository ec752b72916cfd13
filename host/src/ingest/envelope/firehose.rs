//! Amazon Data Firehose's HTTP endpoint delivery (protocol version 1.0).
//!
//! Firehose POSTs `{"requestId", "timestamp", "records": [{"data": <base64>}]}`
//! (the body gzip-compressed when the stream is set to, with
//! `Content-Encoding: gzip`) and expects `{"requestId", "timestamp"}` back
//! with a 200, or `{"requestId", "timestamp", "errorMessage"}` with an error
//! status, after which it retries the whole request. With a CloudWatch Logs
//! subscription as the stream's source, each record's data is a
//! gzip-compressed subscription payload; with decompression or message
//! extraction turned on, it is the payload or the messages in plain text.
//! All of these are unwrapped.
//!
//! Firehose has no per-record answer: a malformed record is rejected and
//! counted, and the request is still acknowledged, since a retry would
//! bring the same record back and hold the stream up for nothing.

use serde_json::{Value, json};

use super::{Limits, Unwrapping, join, json_error, type_name, unwrap_carried};

/// Why a whole request is refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RequestError(pub String);

/// A request's id and what its records held.
#[derive(Debug)]
pub(crate) struct FirehoseRequest {
    pub request_id: String,
    pub unwrapping: Unwrapping,
}

/// Unwraps the (already decompressed) body of a delivery request.
pub(crate) fn unwrap_request(
    body: &[u8],
    limits: &Limits,
) -> Result<FirehoseRequest, RequestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError(format!("body is not JSON: {}", json_error(&e))))?;
    let Some(m) = v.as_object() else {
        return Err(RequestError(format!(
            "body is {}, not a Firehose request object",
            type_name(&v)
        )));
    };
    let request_id = match m.get("requestId") {
        Some(Value::String(s)) => s.clone(),
        _ => {
            return Err(RequestError(
                "field `requestId` is missing or not a string".into(),
            ));
        }
    };
    if !matches!(m.get("records"), Some(Value::Array(_))) {
        return Err(RequestError(
            "field `records` is missing or not an array".into(),
        ));
    }
    let mut unwrapping = Unwrapping::default();
    records(m, "", limits, &mut unwrapping);
    Ok(FirehoseRequest {
        request_id,
        unwrapping,
    })
}

/// A saved request in a replayed file.
pub(super) fn unwrap_request_value(v: &Value, at: &str, limits: &Limits, out: &mut Unwrapping) {
    match v {
        Value::Object(m) if matches!(m.get("records"), Some(Value::Array(_))) => {
            records(m, at, limits, out)
        }
        _ => out.reject(at, "invalid", "not a Firehose request: no `records` array"),
    }
}

fn records(m: &serde_json::Map<String, Value>, at: &str, limits: &Limits, out: &mut Unwrapping) {
    let Some(Value::Array(records)) = m.get("records") else {
        return;
    };
    for (i, r) in records.iter().enumerate() {
        let at = join(at, &format!("records[{i}]"));
        let data = match r.get("data") {
            Some(Value::String(d)) => d,
            Some(other) => {
                out.reject(
                    &at,
                    "invalid",
                    format!("field `data` is {}, not a base64 string", type_name(other)),
                );
                continue;
            }
            None => {
                out.reject(&at, "invalid", "record has no `data`");
                continue;
            }
        };
        match super::base64_decode(data, limits.max_decoded_bytes) {
            Ok(bytes) => unwrap_carried(&bytes, &at, limits, out),
            Err(reason) => out.reject(&at, "bad_encoding", reason),
        }
    }
}

/// The answer body Firehose expects. `timestamp_ms`: now, in milliseconds
/// since the Unix epoch.
pub(crate) fn response_body(request_id: &str, timestamp_ms: i64, error: Option<&str>) -> String {
    match error {
        None => json!({ "requestId": request_id, "timestamp": timestamp_ms }).to_string(),
        Some(e) => json!({
            "requestId": request_id,
            "timestamp": timestamp_ms,
            "errorMessage": e,
        })
        .to_string(),
    }
}
