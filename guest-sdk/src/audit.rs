//! The `audit.k8s.io` Event as the kube-apiserver writes it, and its
//! conversion to the event record that crosses into rule modules.
//!
//! The host decodes webhook bodies with these types, and [`crate::testing`]
//! uses the same conversion, so a rule sees the same event natively as in
//! the sandbox.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::bindings::peregrine::rules::types as wit;

/// One audit event. `audit.k8s.io/v1` and `v1beta1` share this shape; the
/// legacy `timestamp` field only exists in `v1beta1`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    #[serde(rename = "auditID")]
    pub audit_id: String,
    pub stage: String,
    #[serde(default)]
    pub level: String,
    pub verb: String,
    #[serde(rename = "requestURI", default)]
    pub request_uri: String,
    #[serde(default)]
    pub user: AuditUser,
    #[serde(default)]
    pub impersonated_user: Option<AuditUser>,
    #[serde(rename = "sourceIPs", default)]
    pub source_ips: Vec<String>,
    #[serde(default)]
    pub user_agent: Option<String>,
    #[serde(default)]
    pub object_ref: Option<AuditObjectRef>,
    #[serde(default)]
    pub response_status: Option<AuditStatus>,
    #[serde(default)]
    pub request_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub response_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub request_received_timestamp: Option<String>,
    #[serde(default)]
    pub stage_timestamp: Option<String>,
    /// `v1beta1` only.
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditUser {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub extra: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditObjectRef {
    pub resource: Option<String>,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub uid: Option<String>,
    pub api_group: Option<String>,
    pub api_version: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditStatus {
    pub code: Option<i32>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// Parses an RFC 3339 timestamp into nanoseconds since the Unix epoch.
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

impl AuditEvent {
    /// The event's time: `stageTimestamp`, else `requestReceivedTimestamp`,
    /// else the legacy `timestamp`, in nanoseconds since the Unix epoch.
    pub fn time_unix_nanos(&self) -> Option<i64> {
        [
            &self.stage_timestamp,
            &self.request_received_timestamp,
            &self.timestamp,
        ]
        .into_iter()
        .flatten()
        .find_map(|s| parse_rfc3339_nanos(s))
    }

    /// Builds the record a rule module receives. The raw request and response
    /// objects are included only when asked for, since they can be large.
    pub fn to_wit(&self, tenant: &str, with_request: bool, with_response: bool) -> wit::Event {
        wit::Event {
            tenant: tenant.to_string(),
            audit_id: self.audit_id.clone(),
            stage: self.stage.clone(),
            level: self.level.clone(),
            verb: self.verb.clone(),
            request_uri: self.request_uri.clone(),
            user: self.user.to_wit(),
            impersonated_user: self.impersonated_user.as_ref().map(AuditUser::to_wit),
            source_ips: self.source_ips.clone(),
            user_agent: self.user_agent.clone(),
            object_ref: self.object_ref.as_ref().map(|o| wit::ObjectRef {
                resource: o.resource.clone(),
                subresource: o.subresource.clone(),
                namespace: o.namespace.clone(),
                name: o.name.clone(),
                uid: o.uid.clone(),
                api_group: o.api_group.clone(),
                api_version: o.api_version.clone(),
                resource_version: o.resource_version.clone(),
            }),
            response_status: self.response_status.as_ref().map(|s| wit::ResponseStatus {
                code: s.code,
                status: s.status.clone(),
                reason: s.reason.clone(),
                message: s.message.clone(),
            }),
            request_received_timestamp: self.request_received_timestamp.clone(),
            stage_timestamp: self.stage_timestamp.clone(),
            time_unix_nanos: self.time_unix_nanos().unwrap_or(0),
            annotations: self
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            request_object: with_request
                .then(|| self.request_object.as_ref().map(|r| r.get().to_string()))
                .flatten(),
            response_object: with_response
                .then(|| self.response_object.as_ref().map(|r| r.get().to_string()))
                .flatten(),
        }
    }

    pub fn resource(&self) -> Option<&str> {
        self.object_ref.as_ref()?.resource.as_deref()
    }

    pub fn subresource(&self) -> Option<&str> {
        self.object_ref.as_ref()?.subresource.as_deref()
    }
}

impl AuditUser {
    fn to_wit(&self) -> wit::UserInfo {
        wit::UserInfo {
            username: self.username.clone(),
            uid: self.uid.clone(),
            groups: self.groups.clone(),
            extra: self
                .extra
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fractional_rfc3339() {
        assert_eq!(
            parse_rfc3339_nanos("2018-10-25T13:58:49.730588Z"),
            Some(1_540_475_929_730_588_000)
        );
        assert_eq!(parse_rfc3339_nanos("not a time"), None);
    }

    #[test]
    fn event_time_prefers_stage_timestamp_and_falls_back_to_legacy() {
        let legacy: AuditEvent = serde_json::from_str(
            r#"{"auditID":"a","stage":"ResponseComplete","verb":"get","timestamp":"2017-09-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(legacy.time_unix_nanos(), Some(1_504_224_000_000_000_000));
        let both: AuditEvent = serde_json::from_str(
            r#"{"auditID":"a","stage":"ResponseComplete","verb":"get","requestReceivedTimestamp":"2017-09-01T00:00:00Z","stageTimestamp":"2017-09-01T00:00:01Z"}"#,
        )
        .unwrap();
        assert_eq!(both.time_unix_nanos(), Some(1_504_224_001_000_000_000));
    }

    #[test]
    fn raw_objects_cross_only_when_asked() {
        let ev: AuditEvent = serde_json::from_str(
            r#"{"auditID":"a","stage":"ResponseComplete","verb":"create","requestObject":{"kind":"Pod"},"responseObject":{"kind":"Pod","x":1}}"#,
        )
        .unwrap();
        let without = ev.to_wit("default", false, false);
        assert!(without.request_object.is_none() && without.response_object.is_none());
        let with = ev.to_wit("t1", true, true);
        assert_eq!(with.request_object.as_deref(), Some(r#"{"kind":"Pod"}"#));
        assert_eq!(
            with.response_object.as_deref(),
            Some(r#"{"kind":"Pod","x":1}"#)
        );
        assert_eq!(with.tenant, "t1");
    }
}
