//! Audit events to post, and reading the alerts they raise.

use std::path::Path;

/// A minimal valid audit event.
pub fn event(audit_id: &str, verb: &str, resource: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "verb": verb,
        "requestURI": format!("/api/v1/namespaces/{namespace}/{resource}"),
        "user": {"username": "tester", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-11-27T10:00:00.000000Z",
        "stageTimestamp": "2026-11-27T10:00:00.100000Z"
    })
}

/// An EventList of `events`.
pub fn event_list(events: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})
        .to_string()
}

/// The events of a corpus or fixture file, as JSON values.
pub fn events_of(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    }
}

/// `bytes` gzip-compressed, as a shipper or a CloudWatch subscription
/// sends them.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The output field `key` of a Falco-shaped alert.
pub fn field<'a>(alert: &'a serde_json::Value, key: &str) -> &'a str {
    alert["output_fields"][key].as_str().unwrap_or("")
}
