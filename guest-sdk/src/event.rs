use std::cell::OnceCell;

use serde::Deserialize;
use serde_json::Value;

use crate::RawEvent;
use crate::k8s::{ConfigMap, Ingress, Object, Pod, PodSpec, Role, RoleBinding, Service, Workload};

/// A Kubernetes audit event as a rule sees it.
///
/// Common fields are available directly (it dereferences to [`RawEvent`]) and
/// through accessors named after Falco's `ka.*` fields. The request and
/// response objects are parsed on first use, at most once, and only if the
/// module's metadata asked the host to send them.
pub struct Event {
    raw: RawEvent,
    request: OnceCell<Option<Value>>,
    response: OnceCell<Option<Value>>,
    request_pod: OnceCell<Option<Pod>>,
    request_workload: OnceCell<Option<Workload>>,
    request_role: OnceCell<Option<Role>>,
    request_binding: OnceCell<Option<RoleBinding>>,
    request_service: OnceCell<Option<Service>>,
    request_configmap: OnceCell<Option<ConfigMap>>,
    request_ingress: OnceCell<Option<Ingress>>,
    response_meta: OnceCell<Option<Object>>,
}

impl std::ops::Deref for Event {
    type Target = RawEvent;
    fn deref(&self) -> &RawEvent {
        &self.raw
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("audit_id", &self.raw.audit_id)
            .field("stage", &self.raw.stage)
            .field("verb", &self.raw.verb)
            .field("uri", &self.raw.request_uri)
            .finish_non_exhaustive()
    }
}

fn parse_json(text: Option<&String>) -> Option<Value> {
    serde_json::from_str(text?).ok()
}

fn typed<T: for<'de> Deserialize<'de>>(value: Option<&Value>) -> Option<T> {
    T::deserialize(value?).ok()
}

impl Event {
    pub fn new(raw: RawEvent) -> Self {
        Event {
            raw,
            request: OnceCell::new(),
            response: OnceCell::new(),
            request_pod: OnceCell::new(),
            request_workload: OnceCell::new(),
            request_role: OnceCell::new(),
            request_binding: OnceCell::new(),
            request_service: OnceCell::new(),
            request_configmap: OnceCell::new(),
            request_ingress: OnceCell::new(),
            response_meta: OnceCell::new(),
        }
    }

    /// The record as it crossed the boundary.
    pub fn raw(&self) -> &RawEvent {
        &self.raw
    }

    /// `ka.user.name`
    pub fn user_name(&self) -> &str {
        &self.raw.user.username
    }

    /// `ka.user.groups`
    pub fn user_groups(&self) -> &[String] {
        &self.raw.user.groups
    }

    /// `ka.impuser.name`
    pub fn impersonated_user_name(&self) -> Option<&str> {
        self.raw
            .impersonated_user
            .as_ref()
            .map(|u| u.username.as_str())
    }

    /// `ka.verb`
    pub fn verb(&self) -> &str {
        &self.raw.verb
    }

    /// `ka.stage`
    pub fn stage(&self) -> &str {
        &self.raw.stage
    }

    /// `ka.uri`
    pub fn uri(&self) -> &str {
        &self.raw.request_uri
    }

    /// `ka.useragent`
    pub fn user_agent(&self) -> Option<&str> {
        self.raw.user_agent.as_deref()
    }

    /// `ka.sourceips`
    pub fn source_ips(&self) -> &[String] {
        &self.raw.source_ips
    }

    /// `ka.target.resource`
    pub fn resource(&self) -> Option<&str> {
        self.raw.object_ref.as_ref()?.resource.as_deref()
    }

    /// `ka.target.subresource`
    pub fn subresource(&self) -> Option<&str> {
        self.raw.object_ref.as_ref()?.subresource.as_deref()
    }

    /// `ka.target.namespace`
    pub fn namespace(&self) -> Option<&str> {
        self.raw.object_ref.as_ref()?.namespace.as_deref()
    }

    /// `ka.target.name`
    pub fn name(&self) -> Option<&str> {
        self.raw.object_ref.as_ref()?.name.as_deref()
    }

    /// `ka.response.code`
    pub fn response_code(&self) -> Option<i32> {
        self.raw.response_status.as_ref()?.code
    }

    /// `ka.response.reason`
    pub fn response_reason(&self) -> Option<&str> {
        self.raw.response_status.as_ref()?.reason.as_deref()
    }

    /// One annotation of the event, e.g. `authorization.k8s.io/decision`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.raw
            .annotations
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `ka.auth.decision`
    pub fn auth_decision(&self) -> Option<&str> {
        self.annotation("authorization.k8s.io/decision")
    }

    /// `ka.auth.reason`
    pub fn auth_reason(&self) -> Option<&str> {
        self.annotation("authorization.k8s.io/reason")
    }

    /// The event time in nanoseconds since the Unix epoch (0 if unknown).
    pub fn time_unix_nanos(&self) -> i64 {
        self.raw.time_unix_nanos
    }

    /// `requestObject`, parsed. `None` if the event has none, it is not JSON,
    /// or the module did not declare that it needs it.
    pub fn request_json(&self) -> Option<&Value> {
        self.request
            .get_or_init(|| parse_json(self.raw.request_object.as_ref()))
            .as_ref()
    }

    /// `responseObject`, parsed.
    pub fn response_json(&self) -> Option<&Value> {
        self.response
            .get_or_init(|| parse_json(self.raw.response_object.as_ref()))
            .as_ref()
    }

    /// A value inside `requestObject` by RFC 6901 JSON pointer (`~1` is `/`).
    pub fn request_pointer(&self, pointer: &str) -> Option<&Value> {
        self.request_json()?.pointer(pointer)
    }

    /// A value inside `responseObject` by RFC 6901 JSON pointer.
    pub fn response_pointer(&self, pointer: &str) -> Option<&Value> {
        self.response_json()?.pointer(pointer)
    }

    /// `requestObject` as `T`; `None` if it is absent or does not fit `T`.
    pub fn request_as<T: for<'de> Deserialize<'de>>(&self) -> Option<T> {
        typed(self.request_json())
    }

    /// `responseObject` as `T`.
    pub fn response_as<T: for<'de> Deserialize<'de>>(&self) -> Option<T> {
        typed(self.response_json())
    }

    /// The pod in `requestObject` (`ka.req.pod.*`), when the target is a pod.
    pub fn request_pod(&self) -> Option<&Pod> {
        self.request_pod
            .get_or_init(|| {
                if self.resource() == Some("pods") {
                    typed(self.request_json())
                } else {
                    None
                }
            })
            .as_ref()
    }

    /// The pod spec of a pod, or of the pod template of a workload
    /// (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob).
    pub fn request_pod_spec(&self) -> Option<&PodSpec> {
        if let Some(pod) = self.request_pod() {
            return Some(&pod.spec);
        }
        self.request_workload
            .get_or_init(|| typed(self.request_json()))
            .as_ref()?
            .pod_spec()
    }

    /// The Role or ClusterRole in `requestObject` (`ka.req.role.rules*`).
    pub fn request_role(&self) -> Option<&Role> {
        self.request_role
            .get_or_init(|| typed(self.request_json()))
            .as_ref()
    }

    /// The RoleBinding or ClusterRoleBinding in `requestObject` (`ka.req.binding.*`).
    pub fn request_binding(&self) -> Option<&RoleBinding> {
        self.request_binding
            .get_or_init(|| typed(self.request_json()))
            .as_ref()
    }

    /// The Service in `requestObject` (`ka.req.service.*`).
    pub fn request_service(&self) -> Option<&Service> {
        self.request_service
            .get_or_init(|| typed(self.request_json()))
            .as_ref()
    }

    /// The ConfigMap in `requestObject` (`ka.req.configmap.*`).
    pub fn request_configmap(&self) -> Option<&ConfigMap> {
        self.request_configmap
            .get_or_init(|| typed(self.request_json()))
            .as_ref()
    }

    /// The Ingress in `requestObject`.
    pub fn request_ingress(&self) -> Option<&Ingress> {
        self.request_ingress
            .get_or_init(|| typed(self.request_json()))
            .as_ref()
    }

    /// `kind`, `apiVersion` and `metadata` of `responseObject` (`ka.resp.name`).
    pub fn response_object_meta(&self) -> Option<&Object> {
        self.response_meta
            .get_or_init(|| typed(self.response_json()))
            .as_ref()
    }

    /// `ka.resp.name`
    pub fn response_name(&self) -> Option<&str> {
        self.response_object_meta()?.metadata.name.as_deref()
    }
}
