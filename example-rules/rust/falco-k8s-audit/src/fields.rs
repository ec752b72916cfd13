//! Falco's `ka.*` fields, extracted with the exact semantics of the k8saudit
//! plugin (`plugins/k8saudit/pkg/k8saudit/extract.go`), so that conditions
//! and outputs behave as they do in Falco.
//!
//! The plugin's conventions that matter here:
//! - A field is either a string or a list of strings. Non-string JSON values
//!   become their compact JSON text.
//! - A field the event does not have is *missing*: every comparison on it is
//!   false, and it prints as `<NA>`. An extraction error (a container without
//!   `image`, `subjects` that is not an array) also leaves the field missing.
//! - A list field with no elements counts as missing too: the plugin
//!   framework reports "no value", so `in`, `intersects` and `=` are all false.
//! - `ka.req.pod.containers.*` reads `spec.containers` only; init and
//!   ephemeral containers have their own fields
//!   (`ka.req.pod.initContainers.*`, `ka.req.pod.ephemeralContainers.*`).

use std::cell::OnceCell;

use peregrine_sdk::Event;

use crate::json::Json;

/// A field's value: a string or a non-empty list.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(String),
    List(Vec<String>),
}

impl FieldValue {
    /// The value as Falco prints it: lists as `(a,b)`.
    pub fn render(&self) -> String {
        match self {
            FieldValue::Str(s) => s.clone(),
            FieldValue::List(items) => peregrine_sdk::format_list(items),
        }
    }
}

fn non_empty(list: Vec<String>) -> Option<Vec<String>> {
    (!list.is_empty()).then_some(list)
}

/// `getValuesRecursive`: walks `keys` from `root`; whenever the value at hand
/// is an array, the rest of the path is applied to each element, and an
/// element without the path contributes `None`. Returns `None` when the path
/// is missing outside of any array.
fn values_recursive<'j>(root: &'j Json, keys: &[&str]) -> Option<Vec<Option<&'j Json>>> {
    let mut value = root;
    for (i, key) in keys.iter().enumerate() {
        if let Json::Arr(items) = value {
            let mut out = Vec::new();
            for item in items {
                match values_recursive(item, &keys[i..]) {
                    Some(values) => out.extend(values),
                    None => out.push(None),
                }
            }
            return Some(out);
        }
        value = value.get(key)?;
    }
    Some(vec![Some(value)])
}

/// `arrayAsStringsSkipNil`.
fn strings_skip_missing(values: Vec<Option<&Json>>) -> Vec<String> {
    values
        .into_iter()
        .flatten()
        .map(Json::to_field_string)
        .collect()
}

/// `strings.Split(strings.Split(image, ":")[0], "@")[0]`: everything before
/// the first `:`, then before the first `@`. Unlike a reference parser this
/// also cuts a registry port (`host:5000/app` gives `host`), and Falco's
/// trusted-image lists are written against exactly this value.
pub fn falco_image_repository(image: &str) -> &str {
    let before_colon = image.split(':').next().unwrap_or(image);
    before_colon.split('@').next().unwrap_or(before_colon)
}

/// Go's `url.ParseQuery` followed by `query[name][0]`; `None` when the query
/// does not parse (the plugin then reports no value).
pub fn query_param(uri: &str, name: &str) -> Option<String> {
    let without_fragment = uri.split('#').next().unwrap_or(uri);
    let raw_query = without_fragment.split_once('?').map(|(_, q)| q)?;
    let mut found = None;
    for part in raw_query.split('&') {
        if part.is_empty() {
            continue;
        }
        if part.contains(';') {
            return None;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = query_unescape(k)?;
        let value = query_unescape(v)?;
        if found.is_none() && key == name {
            found = Some(value);
        }
    }
    found
}

fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// The three container lists of a pod spec, each with its own
/// `ka.req.pod.<list>.*` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerList {
    Containers,
    InitContainers,
    EphemeralContainers,
}

impl ContainerList {
    pub const ALL: [ContainerList; 3] = [
        ContainerList::Containers,
        ContainerList::InitContainers,
        ContainerList::EphemeralContainers,
    ];

    /// The key under `spec`, which is also the field name's middle part.
    pub fn key(self) -> &'static str {
        match self {
            ContainerList::Containers => "containers",
            ContainerList::InitContainers => "initContainers",
            ContainerList::EphemeralContainers => "ephemeralContainers",
        }
    }
}

/// What a ConfigMap or Secret holds, wherever an audit event can carry it:
/// the object's data, and `kubectl apply`'s copy of the whole object.
const DATA_KEYS: [&str; 3] = ["data", "stringData", "binaryData"];
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
const REDACTED: &str = "<redacted>";

/// Replaces the data of a ConfigMap or Secret (or of each item of a list of
/// them) with `<redacted>`. Falco's `jevt.obj` prints them as they are; an
/// alert must not hand every receiver the credentials the event held.
fn redact_data(object: &mut Json) {
    let Json::Obj(entries) = object else {
        return;
    };
    for (key, value) in entries.iter_mut() {
        match key.as_str() {
            k if DATA_KEYS.contains(&k) => *value = Json::Str(REDACTED.into()),
            "metadata" => {
                if let Some(Json::Obj(annotations)) = value.get_mut("annotations") {
                    for (k, v) in annotations.iter_mut() {
                        if k == LAST_APPLIED {
                            *v = Json::Str(REDACTED.into());
                        }
                    }
                }
            }
            "items" => {
                if let Json::Arr(items) = value {
                    items.iter_mut().for_each(redact_data);
                }
            }
            _ => {}
        }
    }
}

/// One event seen through Falco's fields. Request and response objects are
/// parsed on first use, at most once.
pub struct Ctx<'a> {
    event: &'a Event,
    request: OnceCell<Option<Json>>,
    response: OnceCell<Option<Json>>,
    images: OnceCell<Option<Vec<String>>>,
    repositories: OnceCell<Option<Vec<String>>>,
}

impl<'a> Ctx<'a> {
    pub fn new(event: &'a Event) -> Self {
        Ctx {
            event,
            request: OnceCell::new(),
            response: OnceCell::new(),
            images: OnceCell::new(),
            repositories: OnceCell::new(),
        }
    }

    pub fn request(&self) -> Option<&Json> {
        self.request
            .get_or_init(|| {
                self.event
                    .raw()
                    .request_object
                    .as_deref()
                    .and_then(Json::parse)
            })
            .as_ref()
    }

    pub fn response(&self) -> Option<&Json> {
        self.response
            .get_or_init(|| {
                self.event
                    .raw()
                    .response_object
                    .as_deref()
                    .and_then(Json::parse)
            })
            .as_ref()
    }

    // Common fields. The event record carries required strings as plain
    // strings; an empty one is a field the audit event did not have.

    /// `ka.user.name`
    pub fn user_name(&self) -> Option<&str> {
        Some(self.event.user_name()).filter(|s| !s.is_empty())
    }

    /// `ka.verb`
    pub fn verb(&self) -> Option<&str> {
        Some(self.event.verb()).filter(|s| !s.is_empty())
    }

    /// `ka.uri`
    pub fn uri(&self) -> Option<&str> {
        Some(self.event.uri()).filter(|s| !s.is_empty())
    }

    /// `jevt.value[/stage]`
    pub fn stage(&self) -> Option<&str> {
        Some(self.event.stage()).filter(|s| !s.is_empty())
    }

    /// `ka.target.resource`
    pub fn resource(&self) -> Option<&str> {
        self.event.resource()
    }

    /// `ka.target.subresource`
    pub fn subresource(&self) -> Option<&str> {
        self.event.subresource()
    }

    /// `ka.target.namespace`
    pub fn namespace(&self) -> Option<&str> {
        self.event.namespace()
    }

    /// `ka.target.name` (also `ka.req.configmap.name`)
    pub fn name(&self) -> Option<&str> {
        self.event.name()
    }

    /// `ka.response.code`, as the string Falco compares (`startswith 2`).
    pub fn response_code(&self) -> Option<String> {
        self.event.response_code().map(|c| c.to_string())
    }

    /// `ka.response.reason`
    pub fn response_reason(&self) -> Option<&str> {
        self.event.response_reason()
    }

    /// `ka.auth.decision`
    pub fn auth_decision(&self) -> Option<&str> {
        self.event.auth_decision()
    }

    /// `ka.auth.reason`
    pub fn auth_reason(&self) -> Option<&str> {
        self.event.auth_reason()
    }

    /// `ka.uri.param[name]`
    pub fn uri_param(&self, name: &str) -> Option<String> {
        query_param(self.uri()?, name)
    }

    /// `ka.resp.name`
    pub fn resp_name(&self) -> Option<String> {
        self.response()?
            .get_path(&["metadata", "name"])
            .map(Json::to_field_string)
    }

    /// A scalar field read from `requestObject` (`extractFromKeys`).
    fn request_scalar(&self, keys: &[&str]) -> Option<String> {
        self.request()?.get_path(keys).map(Json::to_field_string)
    }

    /// A list field read from `requestObject` (`extractFromKeys` on a list
    /// field): the value must be an array.
    fn request_list(&self, keys: &[&str]) -> Option<Vec<String>> {
        let items = self.request()?.get_path(keys)?.as_array()?;
        non_empty(items.iter().map(Json::to_field_string).collect())
    }

    /// `ka.req.pod.containers.image`: fails as a whole when one container
    /// has no image (`arrayAsStrings` errors on it).
    pub fn images(&self) -> Option<&[String]> {
        self.images
            .get_or_init(|| self.list_images(ContainerList::Containers))
            .as_deref()
    }

    /// `ka.req.pod.<list>.image`, read as the plugin reads the regular
    /// containers' images.
    pub fn list_images(&self, list: ContainerList) -> Option<Vec<String>> {
        let values = values_recursive(self.request()?, &["spec", list.key(), "image"])?;
        let images: Option<Vec<String>> = values
            .into_iter()
            .map(|v| v.map(Json::to_field_string))
            .collect();
        non_empty(images?)
    }

    /// `ka.req.pod.containers.image.repository`
    pub fn image_repositories(&self) -> Option<&[String]> {
        self.repositories
            .get_or_init(|| {
                self.images().map(|images| {
                    images
                        .iter()
                        .map(|i| falco_image_repository(i).to_string())
                        .collect()
                })
            })
            .as_deref()
    }

    /// `ka.req.pod.<list>.privileged`
    pub fn privileged(&self, list: ContainerList) -> Option<Vec<String>> {
        let values = values_recursive(
            self.request()?,
            &["spec", list.key(), "securityContext", "privileged"],
        )?;
        non_empty(strings_skip_missing(values))
    }

    /// `ka.req.pod.host_network`
    pub fn host_network(&self) -> Option<String> {
        self.request_scalar(&["spec", "hostNetwork"])
    }

    /// `ka.req.pod.host_pid`
    pub fn host_pid(&self) -> Option<String> {
        self.request_scalar(&["spec", "hostPID"])
    }

    /// `ka.req.pod.host_ipc`
    pub fn host_ipc(&self) -> Option<String> {
        self.request_scalar(&["spec", "hostIPC"])
    }

    /// `ka.req.pod.volumes.hostpath`
    pub fn volume_host_paths(&self) -> Option<Vec<String>> {
        let values = values_recursive(self.request()?, &["spec", "volumes", "hostPath", "path"])?;
        non_empty(strings_skip_missing(values))
    }

    /// `ka.req.service.type`
    pub fn service_type(&self) -> Option<String> {
        self.request_scalar(&["spec", "type"])
    }

    /// `ka.req.service.ports`. The path ends at `ports`, so the plugin's walk
    /// returns the whole array as one value: a one-element list holding the
    /// array's JSON.
    pub fn service_ports(&self) -> Option<Vec<String>> {
        let values = values_recursive(self.request()?, &["spec", "ports"])?;
        non_empty(strings_skip_missing(values))
    }

    /// `ka.req.configmap.obj`: the request's `data`, as compact JSON.
    pub fn configmap_obj(&self) -> Option<String> {
        self.request_scalar(&["data"])
    }

    /// `ka.req.binding.role`
    pub fn binding_role(&self) -> Option<String> {
        self.request_scalar(&["roleRef", "name"])
    }

    /// `ka.req.binding.subjects`
    pub fn binding_subjects(&self) -> Option<Vec<String>> {
        self.request_list(&["subjects"])
    }

    /// `ka.req.role.rules`
    pub fn role_rules(&self) -> Option<Vec<String>> {
        self.request_list(&["rules"])
    }

    /// `ka.req.role.rules.<key>` (`extractRulesField`): the elements of every
    /// rule's `key` array, flattened.
    pub fn role_rules_field(&self, key: &str) -> Option<Vec<String>> {
        let values = values_recursive(self.request()?, &["rules", key])?;
        let mut out = Vec::new();
        for value in values.into_iter().flatten() {
            if let Json::Arr(items) = value {
                out.extend(items.iter().map(Json::to_field_string));
            }
        }
        non_empty(out)
    }

    /// `jevt.value[pointer]` for pointers into the request or response object.
    pub fn jevt_value(&self, pointer: &str) -> Option<String> {
        let rest = pointer.strip_prefix('/')?;
        let (head, tail) = rest.split_once('/').map_or((rest, ""), |(h, t)| (h, t));
        let tail = if tail.is_empty() {
            String::new()
        } else {
            format!("/{tail}")
        };
        let root = match head {
            "requestObject" => self.request()?,
            "responseObject" => self.response()?,
            _ => return None,
        };
        root.pointer(&tail).map(Json::to_field_string)
    }

    /// `jevt.obj`: the whole event as JSON. The event crosses into the
    /// module as a typed record, so this is rebuilt from it; fields the record
    /// does not carry (`apiVersion`, `metadata`) are absent.
    pub fn event_json(&self) -> String {
        let raw = self.event.raw();
        let s = |v: &str| Json::Str(v.to_string());
        let opt = |entries: &mut Vec<(String, Json)>, k: &str, v: Option<&String>| {
            if let Some(v) = v {
                entries.push((k.to_string(), s(v)));
            }
        };
        let user = |u: &peregrine_sdk::UserInfo| {
            let mut e = vec![("username".to_string(), s(&u.username))];
            opt(&mut e, "uid", u.uid.as_ref());
            if !u.groups.is_empty() {
                e.push((
                    "groups".into(),
                    Json::Arr(u.groups.iter().map(|g| s(g)).collect()),
                ));
            }
            if !u.extra.is_empty() {
                let extra = u
                    .extra
                    .iter()
                    .map(|(k, v)| (k.clone(), Json::Arr(v.iter().map(|x| s(x)).collect())))
                    .collect();
                e.push(("extra".into(), Json::Obj(extra)));
            }
            Json::Obj(e)
        };
        let mut e: Vec<(String, Json)> = vec![
            ("kind".into(), s("Event")),
            ("level".into(), s(&raw.level)),
            ("auditID".into(), s(&raw.audit_id)),
            ("stage".into(), s(&raw.stage)),
            ("requestURI".into(), s(&raw.request_uri)),
            ("verb".into(), s(&raw.verb)),
            ("user".into(), user(&raw.user)),
        ];
        if let Some(imp) = &raw.impersonated_user {
            e.push(("impersonatedUser".into(), user(imp)));
        }
        e.push((
            "sourceIPs".into(),
            Json::Arr(raw.source_ips.iter().map(|ip| s(ip)).collect()),
        ));
        opt(&mut e, "userAgent", raw.user_agent.as_ref());
        if let Some(o) = &raw.object_ref {
            let mut r = Vec::new();
            opt(&mut r, "resource", o.resource.as_ref());
            opt(&mut r, "namespace", o.namespace.as_ref());
            opt(&mut r, "name", o.name.as_ref());
            opt(&mut r, "uid", o.uid.as_ref());
            opt(&mut r, "apiGroup", o.api_group.as_ref());
            opt(&mut r, "apiVersion", o.api_version.as_ref());
            opt(&mut r, "resourceVersion", o.resource_version.as_ref());
            opt(&mut r, "subresource", o.subresource.as_ref());
            e.push(("objectRef".into(), Json::Obj(r)));
        }
        if let Some(st) = &raw.response_status {
            let mut r = vec![("metadata".to_string(), Json::Obj(Vec::new()))];
            opt(&mut r, "status", st.status.as_ref());
            opt(&mut r, "message", st.message.as_ref());
            opt(&mut r, "reason", st.reason.as_ref());
            if let Some(code) = st.code {
                r.push(("code".into(), Json::Num(code.to_string())));
            }
            e.push(("responseStatus".into(), Json::Obj(r)));
        }
        let holds_data = matches!(self.resource(), Some("configmaps" | "secrets"));
        let object = |o: &Json| {
            let mut o = o.clone();
            if holds_data {
                redact_data(&mut o);
            }
            o
        };
        if let Some(req) = self.request() {
            e.push(("requestObject".into(), object(req)));
        }
        if let Some(resp) = self.response() {
            e.push(("responseObject".into(), object(resp)));
        }
        opt(
            &mut e,
            "requestReceivedTimestamp",
            raw.request_received_timestamp.as_ref(),
        );
        opt(&mut e, "stageTimestamp", raw.stage_timestamp.as_ref());
        if !raw.annotations.is_empty() {
            let ann = raw
                .annotations
                .iter()
                .map(|(k, v)| (k.clone(), s(v)))
                .collect();
            e.push(("annotations".into(), Json::Obj(ann)));
        }
        Json::Obj(e).to_compact()
    }

    /// Any field that appears in the pack's output lines, by Falco name.
    pub fn field(&self, name: &str) -> Option<FieldValue> {
        let s = |v: Option<&str>| v.map(|v| FieldValue::Str(v.to_string()));
        let owned = |v: Option<String>| v.map(FieldValue::Str);
        let list = |v: Option<Vec<String>>| v.map(FieldValue::List);
        if let Some(arg) = name
            .strip_prefix("ka.uri.param[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return owned(self.uri_param(arg));
        }
        if let Some(ptr) = name
            .strip_prefix("jevt.value[")
            .and_then(|r| r.strip_suffix(']'))
        {
            return owned(self.jevt_value(ptr));
        }
        match name {
            "ka.user.name" => s(self.user_name()),
            "ka.verb" => s(self.verb()),
            "ka.uri" => s(self.uri()),
            "ka.stage" => s(self.stage()),
            "ka.target.resource" => s(self.resource()),
            "ka.target.subresource" => s(self.subresource()),
            "ka.target.namespace" => s(self.namespace()),
            "ka.target.name" | "ka.req.configmap.name" => s(self.name()),
            "ka.response.code" => owned(self.response_code()),
            "ka.response.reason" => s(self.response_reason()),
            "ka.auth.decision" => s(self.auth_decision()),
            "ka.auth.reason" => s(self.auth_reason()),
            "ka.resp.name" => owned(self.resp_name()),
            "ka.req.pod.containers.image" => list(self.images().map(<[String]>::to_vec)),
            "ka.req.pod.initContainers.image" => {
                list(self.list_images(ContainerList::InitContainers))
            }
            "ka.req.pod.ephemeralContainers.image" => {
                list(self.list_images(ContainerList::EphemeralContainers))
            }
            "ka.req.pod.containers.image.repository" => {
                list(self.image_repositories().map(<[String]>::to_vec))
            }
            "ka.req.service.ports" => list(self.service_ports()),
            "ka.req.configmap.obj" => owned(self.configmap_obj()),
            "ka.req.binding.subjects" => list(self.binding_subjects()),
            "ka.req.binding.role" => owned(self.binding_role()),
            "ka.req.role.rules" => list(self.role_rules()),
            "jevt.obj" => Some(FieldValue::Str(self.event_json())),
            _ => None,
        }
    }
}

/// Renders a Falco output format: every `%field` (with an optional `[arg]`)
/// is replaced by the field's value, or `<NA>` when missing. Returns the line
/// and the fields in order of first appearance.
pub fn render_output(format: &str, ctx: &Ctx) -> (String, Vec<(String, Option<String>)>) {
    let mut out = String::with_capacity(format.len() + 64);
    let mut fields: Vec<(String, Option<String>)> = Vec::new();
    let mut rest = format;
    while let Some(pos) = rest.find('%') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
            .unwrap_or(after.len());
        if after[end..].starts_with('[')
            && let Some(close) = after[end..].find(']')
        {
            end += close + 1;
        }
        let name = &after[..end];
        if name.is_empty() {
            out.push('%');
        } else {
            let value = ctx.field(name).map(|v| v.render());
            out.push_str(value.as_deref().unwrap_or("<NA>"));
            if !fields.iter().any(|(k, _)| k == name) {
                fields.push((name.to_string(), value));
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_repository_is_falcos_naive_split() {
        assert_eq!(falco_image_repository("nginx"), "nginx");
        assert_eq!(falco_image_repository("nginx:1.25"), "nginx");
        assert_eq!(
            falco_image_repository("docker.io/library/nginx@sha256:0a1b"),
            "docker.io/library/nginx"
        );
        assert_eq!(
            falco_image_repository("quay.io/calico/node:v3.26.1@sha256:0a1b"),
            "quay.io/calico/node"
        );
        // Falco cuts at the registry port; kept on purpose, see the doc comment.
        assert_eq!(
            falco_image_repository("registry.local:5000/team/app:v1"),
            "registry.local"
        );
    }

    #[test]
    fn query_params_decode_like_go() {
        let uri = "/api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&command=echo+a%2Fb&container=c";
        assert_eq!(query_param(uri, "command").as_deref(), Some("sh"));
        assert_eq!(query_param(uri, "container").as_deref(), Some("c"));
        assert_eq!(query_param(uri, "tty"), None);
        assert_eq!(
            query_param("/x?command=echo+a%2Fb", "command").as_deref(),
            Some("echo a/b")
        );
        assert_eq!(query_param("/x?command=%zz", "command"), None);
        assert_eq!(query_param("/x?a=1;b=2&command=ls", "command"), None);
        assert_eq!(query_param("/x", "command"), None);
    }

    #[test]
    fn recursive_walk_marks_elements_without_the_path() {
        let v = Json::parse(r#"{"spec":{"containers":[{"securityContext":{"privileged":true}},{"name":"b"},{"securityContext":{}}]}}"#).unwrap();
        let values =
            values_recursive(&v, &["spec", "containers", "securityContext", "privileged"]).unwrap();
        assert_eq!(values.len(), 3);
        assert_eq!(strings_skip_missing(values), ["true"]);
        assert!(values_recursive(&v, &["spec", "volumes", "hostPath", "path"]).is_none());
    }
}
