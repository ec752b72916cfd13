//! Google Cloud Pub/Sub messages: a log sink publishes each LogEntry, as
//! JSON, as one message's `data`.
//!
//! - A push subscription POSTs `{"message": {"data": <base64>, "attributes",
//!   "messageId", "publishTime"}, "subscription": "projects/…/subscriptions/…"}`
//!   and takes any 2xx as the acknowledgement (102, 200, 201, 202, 204), any
//!   other answer as a reason to redeliver. With "payload unwrapping" on,
//!   the body is the data itself; both are accepted.
//! - `subscriptions.pull` answers `{"receivedMessages": [{"ackId",
//!   "message", "deliveryAttempt"}]}`; each `ackId` is acknowledged once the
//!   events are journalled.
//!
//! A message whose data is not an audit envelope is rejected and, like a
//! good one, acknowledged: redelivering it would never make it better.

use serde_json::Value;

use super::firehose::RequestError;
use super::{Limits, Unwrapping, join, json_error, opt_obj, opt_str, type_name, unwrap_carried};

/// One pushed message.
#[derive(Debug)]
pub(crate) struct PushMessage {
    /// Empty when the push came unwrapped (the id is then in a header).
    pub message_id: String,
    pub subscription: String,
    pub unwrapping: Unwrapping,
}

/// Unwraps a push request body.
pub(crate) fn unwrap_push(body: &[u8], limits: &Limits) -> Result<PushMessage, RequestError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RequestError(format!("body is not JSON: {}", json_error(&e))))?;
    let Some(m) = v.as_object() else {
        return Err(RequestError(format!(
            "body is {}, not a Pub/Sub push request",
            type_name(&v)
        )));
    };
    let mut unwrapping = Unwrapping::default();
    if !m.contains_key("message") {
        // Payload unwrapping: the body is the message data.
        unwrap_carried(body, "", limits, &mut unwrapping);
        return Ok(PushMessage {
            message_id: String::new(),
            subscription: String::new(),
            unwrapping,
        });
    }
    let subscription = opt_str(m, "subscription", "subscription")
        .map_err(RequestError)?
        .unwrap_or_default()
        .to_string();
    let message = opt_obj(m, "message", "message")
        .map_err(RequestError)?
        .ok_or_else(|| RequestError("field `message` is null".into()))?;
    let message_id = message_id(message).map_err(RequestError)?;
    let at = format!("message {message_id}");
    data(message, &at, limits, &mut unwrapping);
    Ok(PushMessage {
        message_id,
        subscription,
        unwrapping,
    })
}

/// One pulled message, with the id that acknowledges it.
#[derive(Debug)]
pub(crate) struct PulledMessage {
    pub ack_id: String,
    pub message_id: String,
    pub delivery_attempt: Option<i64>,
    pub unwrapping: Unwrapping,
}

/// Unwraps a `subscriptions.pull` answer. An empty answer (`{}`) has no
/// messages.
pub(crate) fn unwrap_pull(body: &[u8], limits: &Limits) -> Result<Vec<PulledMessage>, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| format!("pull answer is not JSON: {}", json_error(&e)))?;
    let Some(m) = v.as_object() else {
        return Err(format!("pull answer is {}, not an object", type_name(&v)));
    };
    let received = match m.get("receivedMessages") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(r)) => r,
        Some(other) => {
            return Err(format!(
                "field `receivedMessages` is {}, not an array",
                type_name(other)
            ));
        }
    };
    let mut out = Vec::with_capacity(received.len());
    for (i, r) in received.iter().enumerate() {
        let r = r
            .as_object()
            .ok_or_else(|| format!("receivedMessages[{i}] is {}, not an object", type_name(r)))?;
        // Without its ack id a message cannot be acknowledged: the answer
        // is broken, not the message.
        let ack_id = opt_str(r, "ackId", "ackId")?
            .filter(|a| !a.is_empty())
            .ok_or_else(|| format!("receivedMessages[{i}] has no ackId"))?
            .to_string();
        let mut unwrapping = Unwrapping::default();
        let place = format!("receivedMessages[{i}]");
        let message_id = match opt_obj(r, "message", "message") {
            Ok(Some(message)) => {
                let id = message_id(message).unwrap_or_default();
                data(message, &format!("message {id}"), limits, &mut unwrapping);
                id
            }
            Ok(None) => {
                unwrapping.reject(&place, "invalid", "received message has no `message`");
                String::new()
            }
            Err(reason) => {
                unwrapping.reject(&place, "invalid", reason);
                String::new()
            }
        };
        out.push(PulledMessage {
            ack_id,
            message_id,
            delivery_attempt: r.get("deliveryAttempt").and_then(Value::as_i64),
            unwrapping,
        });
    }
    Ok(out)
}

/// A saved push request or pull answer in a replayed file.
pub(super) fn unwrap_value(v: &Value, at: &str, limits: &Limits, out: &mut Unwrapping) {
    let Some(m) = v.as_object() else {
        return out.reject(
            at,
            "invalid",
            format!("a Pub/Sub message is an object, not {}", type_name(v)),
        );
    };
    if let Some(Value::Array(received)) = m.get("receivedMessages") {
        for (i, r) in received.iter().enumerate() {
            let at = join(at, &format!("receivedMessages[{i}]"));
            match r.get("message").and_then(Value::as_object) {
                Some(message) => data(message, &at, limits, out),
                None => out.reject(&at, "invalid", "received message has no `message`"),
            }
        }
    } else if let Some(Value::Object(message)) = m.get("message") {
        data(message, at, limits, out);
    } else {
        out.reject(at, "invalid", "not a Pub/Sub push request or pull answer");
    }
}

/// `messageId` (or `message_id`, which push requests also carry).
fn message_id(message: &serde_json::Map<String, Value>) -> Result<String, String> {
    Ok(match opt_str(message, "messageId", "message.messageId")? {
        Some(id) => id.to_string(),
        None => opt_str(message, "message_id", "message.message_id")?
            .unwrap_or_default()
            .to_string(),
    })
}

fn data(message: &serde_json::Map<String, Value>, at: &str, limits: &Limits, out: &mut Unwrapping) {
    match message.get("data") {
        Some(Value::String(d)) => match super::base64_decode(d, limits.max_decoded_bytes) {
            Ok(bytes) => unwrap_carried(&bytes, at, limits, out),
            Err(reason) => out.reject(at, "bad_encoding", reason),
        },
        None | Some(Value::Null) => out.reject(at, "invalid", "message has no `data`"),
        Some(other) => out.reject(
            at,
            "invalid",
            format!(
                "field `message.data` is {}, not a base64 string",
                type_name(other)
            ),
        ),
    }
}
