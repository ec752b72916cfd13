//! GKE: rebuilding a Kubernetes audit Event from a Cloud Audit Logs
//! `LogEntry` (an `AuditLog` in `protoPayload`, `serviceName: k8s.io`).
//!
//! GKE does not export the apiserver's Event; it logs an `AuditLog` built
//! from it. The Event is rebuilt field by field:
//!
//! | Event field | from the LogEntry |
//! |---|---|
//! | `auditID` | `operation.id` (GKE sets it to the apiserver's audit ID), else `insertId`, else `gke-` and the sha256 of the entry's JSON text (so a redelivered entry keeps its ID) |
//! | `stage` | `ResponseStarted` for `exec`, `attach` and `portforward` (the apiserver reports these when the stream starts; GKE logs them once), and when `operation.first` is true and `operation.last` false; else `ResponseComplete` |
//! | `level` | `RequestResponse` with a `response`, `Request` with only a `request`, else `Metadata` |
//! | `verb` | the last segment of `methodName` (`io.k8s.core.v1.pods.create` → `create`); `get` for a non-resource method without one (`io.k8s.readyz`) |
//! | `requestURI` | rebuilt from `resourceName`: `core/v1/…` → `/api/v1/…`, `<group>/<version>/…` → `/apis/<group>/<version>/…`; from `methodName` for non-resource paths (`io.k8s.readyz` → `/readyz`) |
//! | `user.username` | `authenticationInfo.principalEmail` |
//! | `sourceIPs` | `[requestMetadata.callerIp]`, as GKE wrote it (it may be `gce-internal-ip` or `private`) |
//! | `userAgent` | `requestMetadata.callerSuppliedUserAgent` |
//! | `objectRef` | parsed from `resourceName` as the apiserver parses a path (`namespaces/<ns>/<resource>/<name>/<subresource>`, group `core` → the core group); without one, resource, subresource and version from `methodName` and the group from its segments; `name` and `namespace` of a `create` from `request.metadata` when the path has none (as the apiserver does) |
//! | `responseStatus` | `code`, `status`, `reason` and `message` of a `Status` `response` when there is one; else from the gRPC `status.code`: 0 → 200 (201 for `create`, 101 for `exec`/`attach`/`portforward`), 3 → 400, 16 → 401, 7 → 403, 5 → 404, 6 and 10 → 409, 8 → 429, 13 → 500, 12 → 501, 14 → 503, 4 → 504, others → 500; `status.message` as `message` |
//! | `requestObject`, `responseObject` | `request`, `response`, without their `@type` |
//! | `requestReceivedTimestamp`, `stageTimestamp` | `timestamp` (else `receiveTimestamp`), normalised to RFC 3339 |
//! | `annotations` | the entry's `labels` (GKE puts the audit annotations there: `authorization.k8s.io/decision`, `…/reason`, `pod-security.kubernetes.io/…`); without a decision label, `authorization.k8s.io/decision` is `allow` when every `authorizationInfo[].granted` is true and `forbid` when one is false |
//!
//! What cannot be rebuilt, because the LogEntry does not carry it:
//! `user.groups`, `user.uid`, `user.extra`, `impersonatedUser`, the query
//! string of `requestURI` (`?watch=true`, `?limit=500`, the exec command),
//! the time between `requestReceivedTimestamp` and `stageTimestamp`, the
//! exact success code (200 and 201 both log as gRPC 0), and the
//! `RequestReceived` stage. Rules that depend on these see them empty.
//!
//! The entry's `resource.labels.cluster_name` names the cluster.
//! Accepted spellings beyond the documented ones: `callerIP` for
//! `callerIp`, `at_sign_type` for `@type`, and timestamps written
//! `2024-02-13 12:45:06.073905` (UTC), as some log pipelines re-encode them.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{Unwrapping, join, opt_obj, opt_str, shown, type_name};

const AUDIT_LOG_TYPE: &str = "type.googleapis.com/google.cloud.audit.AuditLog";

/// Verbs the apiserver puts in audit events.
const VERBS: [&str; 9] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "proxy",
];

/// Subresources whose request the apiserver audits when the stream starts.
const STREAMING: [&str; 3] = ["exec", "attach", "portforward"];

/// Unwraps a LogEntry, an array of them, or an `entries.list` answer
/// (`{"entries": [...]}`).
pub(super) fn unwrap(v: &Value, at: &str, out: &mut Unwrapping) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                entry(item, &join(at, &format!("item {i}")), out);
            }
        }
        Value::Object(m) if m.contains_key("entries") && !m.contains_key("protoPayload") => {
            match m.get("entries") {
                Some(Value::Array(items)) => {
                    for (i, item) in items.iter().enumerate() {
                        entry(item, &join(at, &format!("entries[{i}]")), out);
                    }
                }
                Some(Value::Null) => {}
                Some(other) => out.reject(
                    at,
                    "invalid",
                    format!("field `entries` is {}, not an array", type_name(other)),
                ),
                None => unreachable!(),
            }
        }
        _ => entry(v, at, out),
    }
}

/// What one LogEntry gives.
pub(super) enum Outcome {
    Event {
        event: Value,
        cluster: Option<String>,
    },
    Skip(String),
}

fn entry(v: &Value, at: &str, out: &mut Unwrapping) {
    match to_event(v) {
        Ok(Outcome::Event { event, cluster }) => out.event(at, event.to_string(), cluster),
        Ok(Outcome::Skip(reason)) => out.skip(at, "not_kubernetes", reason),
        Err(reason) => out.reject(at, "invalid", format!("invalid GKE LogEntry: {reason}")),
    }
}

/// Rebuilds the audit Event of one LogEntry (see the module's table).
pub(super) fn to_event(v: &Value) -> Result<Outcome, String> {
    let Some(entry) = v.as_object() else {
        return Err(format!("a LogEntry is an object, not {}", type_name(v)));
    };
    let payload = match entry.get("protoPayload") {
        None | Some(Value::Null) => {
            return Ok(Outcome::Skip(
                "LogEntry has no protoPayload: not a Cloud Audit Logs entry".into(),
            ));
        }
        Some(Value::Object(p)) => p,
        Some(other) => {
            return Err(format!(
                "field `protoPayload` is {}, not an object",
                type_name(other)
            ));
        }
    };
    let ty = match opt_str(payload, "@type", "protoPayload.@type")? {
        Some(t) => Some(t),
        None => opt_str(payload, "at_sign_type", "protoPayload.at_sign_type")?,
    };
    if let Some(t) = ty
        && t != AUDIT_LOG_TYPE
    {
        return Ok(Outcome::Skip(format!(
            "protoPayload is a `{}`, not an AuditLog",
            shown(t)
        )));
    }
    let service = opt_str(payload, "serviceName", "protoPayload.serviceName")?;
    let method = opt_str(payload, "methodName", "protoPayload.methodName")?;
    let resource = opt_obj(entry, "resource", "resource")?;
    let resource_type = match resource {
        Some(r) => opt_str(r, "type", "resource.type")?,
        None => None,
    };
    let kubernetes = match service {
        Some(s) => s == "k8s.io",
        None => {
            method.is_some_and(|m| m.starts_with("io.k8s.")) || resource_type == Some("k8s_cluster")
        }
    };
    if !kubernetes {
        return Ok(Outcome::Skip(match service {
            Some(s) => format!("serviceName `{}` is not k8s.io", shown(s)),
            None => "LogEntry is not from the Kubernetes API (no serviceName k8s.io)".into(),
        }));
    }
    let Some(method) = method else {
        return Err("field `protoPayload.methodName` is missing".into());
    };

    let segments: Vec<&str> = method.split('.').collect();
    let (verb, verb_in_method) = match segments.last() {
        Some(last) if VERBS.contains(last) => (*last, true),
        _ => ("get", false),
    };

    let resource_name = opt_str(payload, "resourceName", "protoPayload.resourceName")?;
    let request = opt_obj(payload, "request", "protoPayload.request")?;
    let response = opt_obj(payload, "response", "protoPayload.response")?;

    let mut object = match resource_name {
        Some(rn) if !rn.is_empty() => parse_resource_name(rn),
        _ => None,
    };
    if object.is_none() {
        object = object_from_method(&segments, verb_in_method);
    }
    // A create names its object in the body, not in the path: the
    // namespace is part of the path, the name is not.
    let created = match (&object, request) {
        (Some(_), Some(r)) if verb == "create" => r.get("metadata").and_then(Value::as_object),
        _ => None,
    };
    if let (Some(o), Some(meta)) = (&mut object, created)
        && o.namespace.is_none()
        && o.resource != "namespaces"
    {
        o.namespace = meta
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    let request_uri = match opt_str(payload, "requestURI", "protoPayload.requestURI")? {
        Some(u) => u.to_string(),
        None => match (resource_name.filter(|rn| !rn.is_empty()), &object) {
            (Some(rn), Some(o)) => o.uri(rn),
            (Some(rn), None) => format!("/{}", rn.trim_start_matches('/')),
            (None, Some(o)) => o.path(),
            (None, None) => non_resource_path(&segments, verb_in_method),
        },
    };
    if let (Some(o), Some(meta)) = (&mut object, created)
        && o.name.is_none()
    {
        o.name = meta.get("name").and_then(Value::as_str).map(str::to_string);
    }
    let streaming = object
        .as_ref()
        .and_then(|o| o.subresource.as_deref())
        .is_some_and(|s| STREAMING.contains(&s));

    let operation = opt_obj(entry, "operation", "operation")?;
    let op_bool = |k: &str| {
        operation
            .and_then(|o| o.get(k))
            .and_then(|b| b.as_bool().or_else(|| b.as_str().map(|s| s == "true")))
    };
    let stage = if streaming || (op_bool("first") == Some(true) && op_bool("last") == Some(false)) {
        "ResponseStarted"
    } else {
        "ResponseComplete"
    };

    let audit_id = match operation
        .map(|o| opt_str(o, "id", "operation.id"))
        .transpose()?
    {
        Some(Some(id)) if !id.is_empty() => id.to_string(),
        _ => match opt_str(entry, "insertId", "insertId")? {
            Some(id) if !id.is_empty() => id.to_string(),
            // Content-derived, so that a redelivered entry is recognised
            // as a duplicate.
            _ => format!(
                "gke-{}",
                hex::encode(Sha256::digest(v.to_string().as_bytes()))
            ),
        },
    };

    let level = match (request.is_some(), response.is_some()) {
        (_, true) => "RequestResponse",
        (true, false) => "Request",
        _ => "Metadata",
    };

    let mut event = Map::new();
    event.insert("kind".into(), json!("Event"));
    event.insert("apiVersion".into(), json!("audit.k8s.io/v1"));
    event.insert("level".into(), json!(level));
    event.insert("auditID".into(), json!(audit_id));
    event.insert("stage".into(), json!(stage));
    event.insert("requestURI".into(), json!(request_uri));
    event.insert("verb".into(), json!(verb));

    let authn = opt_obj(
        payload,
        "authenticationInfo",
        "protoPayload.authenticationInfo",
    )?;
    let username = match authn {
        Some(a) => opt_str(
            a,
            "principalEmail",
            "protoPayload.authenticationInfo.principalEmail",
        )?,
        None => None,
    };
    event.insert(
        "user".into(),
        json!({ "username": username.unwrap_or_default() }),
    );

    if let Some(meta) = opt_obj(payload, "requestMetadata", "protoPayload.requestMetadata")? {
        let ip = match opt_str(meta, "callerIp", "protoPayload.requestMetadata.callerIp")? {
            Some(ip) => Some(ip),
            None => opt_str(meta, "callerIP", "protoPayload.requestMetadata.callerIP")?,
        };
        if let Some(ip) = ip {
            event.insert("sourceIPs".into(), json!([ip]));
        }
        if let Some(ua) = opt_str(
            meta,
            "callerSuppliedUserAgent",
            "protoPayload.requestMetadata.callerSuppliedUserAgent",
        )? {
            event.insert("userAgent".into(), json!(ua));
        }
    }

    if let Some(o) = &object {
        event.insert("objectRef".into(), o.to_json());
    }

    event.insert(
        "responseStatus".into(),
        response_status(payload, response, verb, streaming)?,
    );
    if let Some(r) = request {
        event.insert("requestObject".into(), without_type(r));
    }
    if let Some(r) = response {
        event.insert("responseObject".into(), without_type(r));
    }

    let time = match opt_str(entry, "timestamp", "timestamp")? {
        Some(t) => Some(t),
        None => match opt_str(entry, "receiveTimestamp", "receiveTimestamp")? {
            Some(t) => Some(t),
            None => opt_str(payload, "timestamp", "protoPayload.timestamp")?,
        },
    };
    if let Some(t) = time {
        let Some(t) = rfc3339(t) else {
            return Err("field `timestamp` is not an RFC 3339 time".into());
        };
        event.insert("requestReceivedTimestamp".into(), json!(t));
        event.insert("stageTimestamp".into(), json!(t));
    }

    let mut annotations = Map::new();
    if let Some(labels) = opt_obj(entry, "labels", "labels")? {
        for (k, v) in labels {
            // Some pipelines nest dotted keys; the flat ones are GKE's.
            if let Value::String(s) = v {
                annotations.insert(k.clone(), json!(s));
            }
        }
    }
    if !annotations.contains_key("authorization.k8s.io/decision")
        && let Some(Value::Array(infos)) = payload.get("authorizationInfo")
    {
        let granted: Vec<Option<bool>> = infos
            .iter()
            .map(|i| i.get("granted").and_then(Value::as_bool))
            .collect();
        if granted.contains(&Some(false)) {
            annotations.insert("authorization.k8s.io/decision".into(), json!("forbid"));
        } else if !granted.is_empty() && granted.iter().all(|g| *g == Some(true)) {
            annotations.insert("authorization.k8s.io/decision".into(), json!("allow"));
        }
    }
    if !annotations.is_empty() {
        event.insert("annotations".into(), Value::Object(annotations));
    }

    let cluster = match resource
        .and_then(|r| r.get("labels"))
        .and_then(Value::as_object)
    {
        Some(labels) => labels
            .get("cluster_name")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        None => None,
    };
    Ok(Outcome::Event {
        event: Value::Object(event),
        cluster,
    })
}

/// An objectRef being rebuilt.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct ObjectRef {
    /// Empty for the core group.
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl ObjectRef {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert("resource".into(), json!(self.resource));
        if let Some(ns) = &self.namespace {
            o.insert("namespace".into(), json!(ns));
        }
        if let Some(n) = &self.name {
            o.insert("name".into(), json!(n));
        }
        if !self.group.is_empty() {
            o.insert("apiGroup".into(), json!(self.group));
        }
        if !self.version.is_empty() {
            o.insert("apiVersion".into(), json!(self.version));
        }
        if let Some(s) = &self.subresource {
            o.insert("subresource".into(), json!(s));
        }
        Value::Object(o)
    }

    fn prefix(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// The request path of `resource_name` (`core/v1/namespaces/x/pods`).
    fn uri(&self, resource_name: &str) -> String {
        let rest: Vec<&str> = resource_name.trim_matches('/').split('/').skip(2).collect();
        format!("{}/{}", self.prefix(), rest.join("/"))
    }

    /// The request path of the fields (for one rebuilt from `methodName`).
    fn path(&self) -> String {
        let mut p = self.prefix();
        if let Some(ns) = &self.namespace {
            p.push_str(&format!("/namespaces/{ns}"));
        }
        p.push('/');
        p.push_str(&self.resource);
        for part in [&self.name, &self.subresource].into_iter().flatten() {
            p.push('/');
            p.push_str(part);
        }
        p
    }
}

/// Parses `<group>/<version>/[namespaces/<ns>/]<resource>[/<name>[/<sub>]]`
/// the way the apiserver parses a request path.
pub(super) fn parse_resource_name(rn: &str) -> Option<ObjectRef> {
    let parts: Vec<&str> = rn.trim_matches('/').split('/').collect();
    if parts.len() < 3 || parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    let group = if parts[0] == "core" { "" } else { parts[0] };
    let mut rest = &parts[2..];
    let mut namespace = None;
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = Some(rest[1].to_string());
        // `namespaces/<ns>/status` is the namespace's own subresource.
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    Some(ObjectRef {
        group: group.to_string(),
        version: parts[1].to_string(),
        namespace,
        resource: rest[0].to_string(),
        name: rest.get(1).map(|s| s.to_string()),
        subresource: (rest.len() > 2).then(|| rest[2..].join("/")),
    })
}

fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || ["alpha", "beta"].iter().any(|p| {
            tail.strip_prefix(p)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// The groups whose name has no `.k8s.io` suffix.
const LEGACY_GROUPS: [&str; 5] = ["apps", "batch", "autoscaling", "policy", "extensions"];

/// `io.k8s.<group…>.<version>.<resource>[.<subresource>].<verb>`: GKE writes
/// the group reversed and without `.k8s.io` (`io.k8s.authorization.rbac.v1`
/// for `rbac.authorization.k8s.io`).
fn object_from_method(segments: &[&str], verb_in_method: bool) -> Option<ObjectRef> {
    if segments.len() < 4 || segments[0] != "io" || segments[1] != "k8s" {
        return None;
    }
    let end = if verb_in_method {
        segments.len() - 1
    } else {
        segments.len()
    };
    let vi = (2..end).find(|&i| is_version(segments[i]))?;
    let resource = *segments.get(vi + 1).filter(|_| vi + 1 < end)?;
    let group_parts = &segments[2..vi];
    let group = match group_parts {
        [] | ["core"] => String::new(),
        [one] if LEGACY_GROUPS.contains(one) => one.to_string(),
        parts => {
            let mut p: Vec<&str> = parts.to_vec();
            p.reverse();
            format!("{}.k8s.io", p.join("."))
        }
    };
    Some(ObjectRef {
        group,
        version: segments[vi].to_string(),
        namespace: None,
        resource: resource.to_string(),
        name: None,
        subresource: (vi + 2 < end).then(|| segments[vi + 2..end].join("/")),
    })
}

/// `io.k8s.readyz` → `/readyz`; `io.k8s.healthz.get` → `/healthz`.
fn non_resource_path(segments: &[&str], verb_in_method: bool) -> String {
    let end = if verb_in_method {
        segments.len().saturating_sub(1)
    } else {
        segments.len()
    };
    let start = if segments.len() >= 2 && segments[0] == "io" && segments[1] == "k8s" {
        2
    } else {
        0
    };
    format!(
        "/{}",
        segments.get(start..end).unwrap_or_default().join("/")
    )
}

fn response_status(
    payload: &Map<String, Value>,
    response: Option<&Map<String, Value>>,
    verb: &str,
    streaming: bool,
) -> Result<Value, String> {
    // A failed request's response is the apiserver's own Status, with the
    // HTTP code: better than the gRPC code it was mapped to.
    if let Some(r) = response {
        let is_status = r.get("kind").and_then(Value::as_str) == Some("Status")
            || r.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(".Status"));
        if is_status && let Some(code) = r.get("code").and_then(Value::as_i64) {
            let mut s = Map::new();
            s.insert("code".into(), json!(code));
            for k in ["status", "reason", "message"] {
                if let Some(v) = r.get(k).and_then(Value::as_str) {
                    s.insert(k.into(), json!(v));
                }
            }
            return Ok(Value::Object(s));
        }
    }
    let status = opt_obj(payload, "status", "protoPayload.status")?;
    let grpc = match status.and_then(|s| s.get("code")) {
        None | Some(Value::Null) => 0,
        Some(c) => c.as_i64().ok_or_else(|| {
            format!(
                "field `protoPayload.status.code` is {}, not a number",
                type_name(c)
            )
        })?,
    };
    let code = match grpc {
        0 if streaming => 101,
        0 if verb == "create" => 201,
        0 => 200,
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        6 | 10 => 409,
        8 => 429,
        12 => 501,
        14 => 503,
        4 => 504,
        _ => 500,
    };
    let mut s = Map::new();
    s.insert("code".into(), json!(code));
    if code >= 400 {
        s.insert("status".into(), json!("Failure"));
    }
    if let Some(m) = status
        .and_then(|s| s.get("message"))
        .and_then(Value::as_str)
        && !m.is_empty()
    {
        s.insert("message".into(), json!(m));
    }
    Ok(Value::Object(s))
}

fn without_type(o: &Map<String, Value>) -> Value {
    let mut o = o.clone();
    o.remove("@type");
    Value::Object(o)
}

/// RFC 3339 as it is, or `YYYY-MM-DD HH:MM:SS[.frac]` (UTC) made RFC 3339.
pub(super) fn rfc3339(t: &str) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(t, &Rfc3339).is_ok() {
        return Some(t.to_string());
    }
    let candidate = format!("{}Z", t.trim().replacen(' ', "T", 1));
    time::OffsetDateTime::parse(&candidate, &Rfc3339)
        .ok()
        .map(|_| candidate)
}
