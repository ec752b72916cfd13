//! The one `bindgen!` of the host, and the conversions between its generated
//! types and the SDK's plain types, which the rest of the host uses.

use peregrine_sdk as sdk;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "rule-module",
});

pub(crate) use self::peregrine::rules::types as wit;

impl From<wit::Priority> for sdk::Priority {
    fn from(p: wit::Priority) -> Self {
        match p {
            wit::Priority::Emergency => sdk::Priority::Emergency,
            wit::Priority::Alert => sdk::Priority::Alert,
            wit::Priority::Critical => sdk::Priority::Critical,
            wit::Priority::Error => sdk::Priority::Error,
            wit::Priority::Warning => sdk::Priority::Warning,
            wit::Priority::Notice => sdk::Priority::Notice,
            wit::Priority::Informational => sdk::Priority::Informational,
            wit::Priority::Debug => sdk::Priority::Debug,
        }
    }
}

impl From<wit::ModuleInfo> for sdk::ModuleInfo {
    fn from(m: wit::ModuleInfo) -> Self {
        sdk::ModuleInfo {
            name: m.name,
            version: m.version,
            rules: m
                .rules
                .into_iter()
                .map(|r| sdk::RuleInfo {
                    id: r.id,
                    name: r.name,
                    description: r.description,
                    priority: r.priority.into(),
                    tags: r.tags,
                    prefilter: sdk::Prefilter {
                        verbs: r.prefilter.verbs,
                        resources: r.prefilter.resources,
                        subresources: r.prefilter.subresources,
                        stages: r.prefilter.stages,
                    },
                    enabled: r.enabled,
                })
                .collect(),
            needs_request_object: m.needs_request_object,
            needs_response_object: m.needs_response_object,
        }
    }
}

impl From<wit::Alert> for sdk::Alert {
    fn from(a: wit::Alert) -> Self {
        sdk::Alert {
            rule_id: a.rule_id,
            priority: a.priority.map(Into::into),
            output: a.output,
            fields: a.fields,
            tags: a.tags,
        }
    }
}

/// The SDK's record (built by `AuditEvent::to_wit`, which native rule tests
/// use too) moved into the host's generated type, so a rule sees exactly the
/// same event natively and in the sandbox.
impl From<sdk::RawEvent> for wit::Event {
    fn from(e: sdk::RawEvent) -> Self {
        let user = |u: sdk::UserInfo| wit::UserInfo {
            username: u.username,
            uid: u.uid,
            groups: u.groups,
            extra: u.extra,
        };
        wit::Event {
            tenant: e.tenant,
            audit_id: e.audit_id,
            stage: e.stage,
            level: e.level,
            verb: e.verb,
            request_uri: e.request_uri,
            user: user(e.user),
            impersonated_user: e.impersonated_user.map(user),
            source_ips: e.source_ips,
            user_agent: e.user_agent,
            object_ref: e.object_ref.map(|o| wit::ObjectRef {
                resource: o.resource,
                subresource: o.subresource,
                namespace: o.namespace,
                name: o.name,
                uid: o.uid,
                api_group: o.api_group,
                api_version: o.api_version,
                resource_version: o.resource_version,
            }),
            response_status: e.response_status.map(|s| wit::ResponseStatus {
                code: s.code,
                status: s.status,
                reason: s.reason,
                message: s.message,
            }),
            request_received_timestamp: e.request_received_timestamp,
            stage_timestamp: e.stage_timestamp,
            time_unix_nanos: e.time_unix_nanos,
            annotations: e.annotations,
            request_object: e.request_object,
            response_object: e.response_object,
        }
    }
}
