//! The pack's configuration: Falco's lists, and the macros that switch rules
//! on and off, as one JSON document. Validation is strict and every error
//! names the offending key, because a typo in a list name would otherwise
//! silently keep the default list.

use std::collections::HashSet;

use serde_json::{Map, Value};

use crate::rules::{DefaultState, RULES};

/// Falco's lists, plus three lists that stand for macros Falco users edit
/// by hand (marked `macro` in the docs). The order is the order in the docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListId {
    K8sAuditStages,
    VerticalPodAutoscalerUsers,
    AllowedK8sUsers,
    EksAllowedK8sUsers,
    SensitiveMountImages,
    PrivilegedImages,
    HostnetworkImages,
    HostpidImages,
    HostipcImages,
    SensitiveVolMountPaths,
    PrivateCredentialKeywords,
    AllowedNamespaces,
    UserTrustedImageList,
    UserAllowedKubeNamespaceImageList,
    K8sImageList,
    AllowedKubeNamespaceImageList,
    UserKnownSaList,
    KnownSaList,
    FullAdminK8sUsers,
    AllowedK8sNodes,
    AllowedK8sContainerImages,
}

pub struct ListDef {
    pub id: ListId,
    pub name: &'static str,
    pub defaults: &'static [&'static str],
}

pub const LISTS: &[ListDef] = &[
    ListDef {
        id: ListId::K8sAuditStages,
        name: "k8s_audit_stages",
        defaults: &["ResponseComplete"],
    },
    ListDef {
        id: ListId::VerticalPodAutoscalerUsers,
        name: "vertical_pod_autoscaler_users",
        defaults: &["vpa-recommender", "vpa-updater"],
    },
    ListDef {
        id: ListId::AllowedK8sUsers,
        name: "allowed_k8s_users",
        defaults: &[
            "minikube",
            "minikube-user",
            "kubelet",
            "kops",
            "admin",
            "kube",
            "kube-proxy",
            "kube-apiserver-healthcheck",
            "kubernetes-admin",
            "cluster-autoscaler",
            "system:addon-manager",
            "cloud-controller-manager",
            "system:kube-controller-manager",
        ],
    },
    ListDef {
        id: ListId::EksAllowedK8sUsers,
        name: "eks_allowed_k8s_users",
        defaults: &[
            "eks:node-manager",
            "eks:certificate-controller",
            "eks:fargate-scheduler",
            "eks:k8s-metrics",
            "eks:authenticator",
            "eks:cluster-event-watcher",
            "eks:nodewatcher",
            "eks:pod-identity-mutating-webhook",
            "eks:cloud-controller-manager",
            "eks:vpc-resource-controller",
            "eks:addon-manager",
        ],
    },
    ListDef {
        id: ListId::SensitiveMountImages,
        name: "k8s_audit_sensitive_mount_images",
        defaults: &[
            "falcosecurity/falco",
            "docker.io/falcosecurity/falco",
            "public.ecr.aws/falcosecurity/falco",
            "docker.io/sysdig/sysdig",
            "sysdig/sysdig",
            "gcr.io/google_containers/hyperkube",
            "gcr.io/google_containers/kube-proxy",
            "docker.io/calico/node",
            "docker.io/rook/toolbox",
            "docker.io/cloudnativelabs/kube-router",
            "docker.io/consul",
            "docker.io/datadog/docker-dd-agent",
            "docker.io/datadog/agent",
            "docker.io/docker/ucp-agent",
            "docker.io/gliderlabs/logspout",
            "docker.io/netdata/netdata",
            "docker.io/google/cadvisor",
            "docker.io/prom/node-exporter",
            "amazon/amazon-ecs-agent",
            "prom/node-exporter",
            "amazon/cloudwatch-agent",
        ],
    },
    ListDef {
        id: ListId::PrivilegedImages,
        name: "k8s_audit_privileged_images",
        defaults: &[
            "falcosecurity/falco",
            "docker.io/falcosecurity/falco",
            "public.ecr.aws/falcosecurity/falco",
            "docker.io/calico/node",
            "calico/node",
            "docker.io/cloudnativelabs/kube-router",
            "docker.io/docker/ucp-agent",
            "docker.io/mesosphere/mesos-slave",
            "docker.io/rook/toolbox",
            "docker.io/sysdig/sysdig",
            "gcr.io/google_containers/kube-proxy",
            "gcr.io/google-containers/startup-script",
            "gcr.io/projectcalico-org/node",
            "gke.gcr.io/kube-proxy",
            "gke.gcr.io/gke-metadata-server",
            "gke.gcr.io/netd-amd64",
            "gke.gcr.io/watcher-daemonset",
            "gcr.io/google-containers/prometheus-to-sd",
            "registry.k8s.io/ip-masq-agent-amd64",
            "registry.k8s.io/kube-proxy",
            "registry.k8s.io/prometheus-to-sd",
            "quay.io/calico/node",
            "sysdig/sysdig",
            "registry.k8s.io/dns/k8s-dns-node-cache",
            "mcr.microsoft.com/oss/kubernetes/kube-proxy",
        ],
    },
    ListDef {
        id: ListId::HostnetworkImages,
        name: "k8s_audit_hostnetwork_images",
        defaults: &[
            "gcr.io/google-containers/prometheus-to-sd",
            "gcr.io/projectcalico-org/typha",
            "gcr.io/projectcalico-org/node",
            "gke.gcr.io/gke-metadata-server",
            "gke.gcr.io/kube-proxy",
            "gke.gcr.io/netd-amd64",
            "registry.k8s.io/ip-masq-agent-amd64",
            "registry.k8s.io/prometheus-to-sd",
        ],
    },
    ListDef {
        id: ListId::HostpidImages,
        name: "k8s_audit_hostpid_images",
        defaults: &[],
    },
    ListDef {
        id: ListId::HostipcImages,
        name: "k8s_audit_hostipc_images",
        defaults: &[],
    },
    ListDef {
        id: ListId::SensitiveVolMountPaths,
        name: "sensitive_vol_mount_paths",
        defaults: &[
            "/proc",
            "/var/run/docker.sock",
            "/",
            "/etc",
            "/root",
            "/var/run/crio/crio.sock",
            "/run/containerd/containerd.sock",
            "/home/admin",
            "/var/lib/kubelet",
            "/var/lib/kubelet/pki",
            "/etc/kubernetes",
            "/etc/kubernetes/manifests",
        ],
    },
    ListDef {
        id: ListId::PrivateCredentialKeywords,
        name: "private_credential_keywords",
        defaults: &[
            "aws_access_key_id",
            "aws-access-key-id",
            "aws_s3_access_key_id",
            "aws-s3-access-key-id",
            "password",
            "passphrase",
        ],
    },
    ListDef {
        id: ListId::AllowedNamespaces,
        name: "allowed_namespaces",
        defaults: &["kube-system", "kube-public", "default"],
    },
    ListDef {
        id: ListId::UserTrustedImageList,
        name: "user_trusted_image_list",
        defaults: &[],
    },
    ListDef {
        id: ListId::UserAllowedKubeNamespaceImageList,
        name: "user_allowed_kube_namespace_image_list",
        defaults: &[],
    },
    ListDef {
        id: ListId::K8sImageList,
        name: "k8s_image_list",
        defaults: &[],
    },
    ListDef {
        id: ListId::AllowedKubeNamespaceImageList,
        name: "allowed_kube_namespace_image_list",
        defaults: &[
            "gcr.io/google-containers/prometheus-to-sd",
            "gcr.io/projectcalico-org/node",
            "gke.gcr.io/addon-resizer",
            "gke.gcr.io/heapster",
            "gke.gcr.io/gke-metadata-server",
            "registry.k8s.io/ip-masq-agent-amd64",
            "registry.k8s.io/kube-apiserver",
            "gke.gcr.io/kube-proxy",
            "gke.gcr.io/netd-amd64",
            "gke.gcr.io/watcher-daemonset",
            "registry.k8s.io/addon-resizer",
            "registry.k8s.io/prometheus-to-sd",
            "registry.k8s.io/k8s-dns-dnsmasq-nanny-amd64",
            "registry.k8s.io/k8s-dns-kube-dns-amd64",
            "registry.k8s.io/k8s-dns-sidecar-amd64",
            "registry.k8s.io/metrics-server-amd64",
            "kope/kube-apiserver-healthcheck",
        ],
    },
    ListDef {
        id: ListId::UserKnownSaList,
        name: "user_known_sa_list",
        defaults: &[],
    },
    ListDef {
        id: ListId::KnownSaList,
        name: "known_sa_list",
        defaults: &[
            "coredns",
            "coredns-autoscaler",
            "cronjob-controller",
            "daemon-set-controller",
            "deployment-controller",
            "disruption-controller",
            "endpoint-controller",
            "endpointslice-controller",
            "endpointslicemirroring-controller",
            "generic-garbage-collector",
            "horizontal-pod-autoscaler",
            "job-controller",
            "namespace-controller",
            "node-controller",
            "persistent-volume-binder",
            "pod-garbage-collector",
            "pv-protection-controller",
            "pvc-protection-controller",
            "replicaset-controller",
            "resourcequota-controller",
            "root-ca-cert-publisher",
            "service-account-controller",
            "statefulset-controller",
        ],
    },
    ListDef {
        id: ListId::FullAdminK8sUsers,
        name: "full_admin_k8s_users",
        defaults: &[
            "admin",
            "kubernetes-admin",
            "kubernetes-admin@kubernetes",
            "kubernetes-admin@cluster.local",
            "minikube-user",
        ],
    },
    ListDef {
        id: ListId::AllowedK8sNodes,
        name: "allowed_k8s_nodes",
        defaults: &[],
    },
    ListDef {
        id: ListId::AllowedK8sContainerImages,
        name: "allowed_k8s_container_images",
        defaults: &[],
    },
];

/// A rule exception: the rule does not match an event when every criterion
/// given here holds. This is what Falco's `user_known_*` macros and rule
/// `exceptions` are used for.
#[derive(Debug, Clone, Default)]
pub struct Exception {
    /// Rule indices into `RULES`; `None` is every rule (`"rule": "*"`).
    pub rules: Option<Vec<usize>>,
    pub users: Option<HashSet<String>>,
    pub namespaces: Option<HashSet<String>>,
    pub names: Option<HashSet<String>>,
    /// Container image repositories (tag and digest stripped as Falco does);
    /// holds when every container's repository is in the set.
    pub images: Option<HashSet<String>>,
}

#[derive(Debug, Clone)]
pub struct Config {
    lists: Vec<HashSet<String>>,
    /// Falco's `consider_activity_events` macro.
    pub activity_rules: bool,
    pub enable: Vec<usize>,
    pub disable: Vec<usize>,
    pub exceptions: Vec<Exception>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lists: LISTS
                .iter()
                .map(|l| l.defaults.iter().map(|s| s.to_string()).collect())
                .collect(),
            activity_rules: true,
            enable: Vec::new(),
            disable: Vec::new(),
            exceptions: Vec::new(),
        }
    }
}

const TOP_KEYS: &[&str] = &["lists", "activity_rules", "enable", "disable", "exceptions"];
const EXCEPTION_KEYS: &[&str] = &["rule", "users", "namespaces", "names", "images"];

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_array(v: &Value, path: &str) -> Result<Vec<String>, String> {
    let items = v
        .as_array()
        .ok_or_else(|| format!("`{path}` must be an array of strings, got {}", type_name(v)))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            item.as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{path}[{i}]` must be a string, got {}", type_name(item)))
        })
        .collect()
}

fn rule_index(id: &str, path: &str) -> Result<usize, String> {
    if let Some(i) = RULES.iter().position(|r| r.id == id) {
        return Ok(i);
    }
    if let Some(r) = RULES.iter().find(|r| r.name == id) {
        return Err(format!(
            "`{path}`: `{id}` is a rule name; use its id `{}`",
            r.id
        ));
    }
    Err(format!(
        "`{path}`: unknown rule id `{id}` (the ids are listed in docs/falco-rules.md)"
    ))
}

fn rule_ids(v: &Value, path: &str) -> Result<Vec<usize>, String> {
    string_array(v, path)?
        .iter()
        .enumerate()
        .map(|(i, id)| rule_index(id, &format!("{path}[{i}]")))
        .collect()
}

impl Config {
    pub fn list(&self, id: ListId) -> &HashSet<String> {
        &self.lists[id as usize]
    }

    /// Parses and validates the JSON configuration. `{}`, `null` and an
    /// empty string give Falco's defaults.
    pub fn parse(text: &str) -> Result<Config, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed == "null" {
            return Ok(Config::default());
        }
        let value: Value = serde_json::from_str(trimmed)
            .map_err(|e| format!("configuration is not valid JSON: {e}"))?;
        let obj = value
            .as_object()
            .ok_or_else(|| format!("configuration must be an object, got {}", type_name(&value)))?;
        Config::from_object(obj)
    }

    fn from_object(obj: &Map<String, Value>) -> Result<Config, String> {
        let mut config = Config::default();
        for key in obj.keys() {
            if !TOP_KEYS.contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{key}` (expected one of: {})",
                    TOP_KEYS.join(", ")
                ));
            }
        }
        if let Some(lists) = obj.get("lists") {
            let lists = lists
                .as_object()
                .ok_or_else(|| format!("`lists` must be an object, got {}", type_name(lists)))?;
            for (name, change) in lists {
                config.apply_list_change(name, change)?;
            }
        }
        if config.list(ListId::K8sAuditStages).is_empty() {
            return Err(
                "`lists.k8s_audit_stages` must not be empty: no rule but port-forward could ever match"
                    .to_string(),
            );
        }
        if let Some(v) = obj.get("activity_rules") {
            config.activity_rules = v.as_bool().ok_or_else(|| {
                format!(
                    "`activity_rules` must be true or false, got {}",
                    type_name(v)
                )
            })?;
        }
        if let Some(v) = obj.get("enable") {
            config.enable = rule_ids(v, "enable")?;
        }
        if let Some(v) = obj.get("disable") {
            config.disable = rule_ids(v, "disable")?;
        }
        if let Some(&both) = config.enable.iter().find(|i| config.disable.contains(i)) {
            return Err(format!(
                "rule `{}` is listed in both `enable` and `disable`",
                RULES[both].id
            ));
        }
        if let Some(v) = obj.get("exceptions") {
            let items = v.as_array().ok_or_else(|| {
                format!(
                    "`exceptions` must be an array of tables, got {}",
                    type_name(v)
                )
            })?;
            for (i, item) in items.iter().enumerate() {
                config
                    .exceptions
                    .push(parse_exception(item, &format!("exceptions[{i}]"))?);
            }
        }
        Ok(config)
    }

    fn apply_list_change(&mut self, name: &str, change: &Value) -> Result<(), String> {
        let Some(def) = LISTS.iter().find(|l| l.name == name) else {
            let names: Vec<&str> = LISTS.iter().map(|l| l.name).collect();
            return Err(format!(
                "unknown list `lists.{name}` (known lists: {})",
                names.join(", ")
            ));
        };
        let path = format!("lists.{name}");
        let ops = change.as_object().ok_or_else(|| {
            format!(
                "`{path}` must be a table with `append`, `remove` or `replace`, got {}",
                type_name(change)
            )
        })?;
        for key in ops.keys() {
            if !["append", "remove", "replace"].contains(&key.as_str()) {
                return Err(format!(
                    "unknown key `{path}.{key}` (expected `append`, `remove` or `replace`)"
                ));
            }
        }
        if ops.is_empty() {
            return Err(format!("`{path}` needs `append`, `remove` or `replace`"));
        }
        let list = &mut self.lists[def.id as usize];
        if let Some(v) = ops.get("replace") {
            if ops.len() > 1 {
                return Err(format!(
                    "`{path}`: `replace` sets the whole list and cannot be combined with `append` or `remove`"
                ));
            }
            *list = string_array(v, &format!("{path}.replace"))?
                .into_iter()
                .collect();
        }
        if let Some(v) = ops.get("remove") {
            for item in string_array(v, &format!("{path}.remove"))? {
                list.remove(&item);
            }
        }
        if let Some(v) = ops.get("append") {
            list.extend(string_array(v, &format!("{path}.append"))?);
        }
        Ok(())
    }

    /// Whether rule `index` runs with this configuration.
    pub fn rule_enabled(&self, index: usize) -> bool {
        if self.disable.contains(&index) {
            return false;
        }
        if self.enable.contains(&index) {
            return true;
        }
        let rule = &RULES[index];
        match rule.default {
            DefaultState::Off { .. } => false,
            DefaultState::On => !rule.activity || self.activity_rules,
        }
    }
}

fn parse_exception(item: &Value, path: &str) -> Result<Exception, String> {
    let obj = item
        .as_object()
        .ok_or_else(|| format!("`{path}` must be a table, got {}", type_name(item)))?;
    for key in obj.keys() {
        if !EXCEPTION_KEYS.contains(&key.as_str()) {
            return Err(format!(
                "unknown key `{path}.{key}` (expected one of: {})",
                EXCEPTION_KEYS.join(", ")
            ));
        }
    }
    let rule = obj
        .get("rule")
        .ok_or_else(|| format!("`{path}.rule` is required (a rule id, or \"*\" for every rule)"))?;
    let rule = rule
        .as_str()
        .ok_or_else(|| format!("`{path}.rule` must be a string, got {}", type_name(rule)))?;
    let rules = if rule == "*" {
        None
    } else {
        Some(vec![rule_index(rule, &format!("{path}.rule"))?])
    };
    let set = |key: &str| -> Result<Option<HashSet<String>>, String> {
        obj.get(key)
            .map(|v| {
                let items = string_array(v, &format!("{path}.{key}"))?;
                if items.is_empty() {
                    return Err(format!(
                        "`{path}.{key}` is empty: it could never match; leave it out instead"
                    ));
                }
                Ok(items.into_iter().collect())
            })
            .transpose()
    };
    let exception = Exception {
        rules,
        users: set("users")?,
        namespaces: set("namespaces")?,
        names: set("names")?,
        images: set("images")?,
    };
    if exception.users.is_none()
        && exception.namespaces.is_none()
        && exception.names.is_none()
        && exception.images.is_none()
    {
        return Err(format!(
            "`{path}` has no criteria (users, namespaces, names, images); to turn a rule off use `disable`"
        ));
    }
    Ok(exception)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        Config::parse(json).unwrap_err()
    }

    #[test]
    fn defaults_are_falcos() {
        let c = Config::parse("{}").unwrap();
        assert!(c.list(ListId::AllowedNamespaces).contains("default"));
        assert!(c.activity_rules);
        assert!(Config::parse("").is_ok() && Config::parse("null").is_ok());
    }

    #[test]
    fn lists_append_remove_replace() {
        let c = Config::parse(
            r#"{"lists": {"allowed_namespaces": {"append": ["foo"], "remove": ["default"]},
                          "allowed_k8s_users": {"replace": ["alice"]}}}"#,
        )
        .unwrap();
        let ns = c.list(ListId::AllowedNamespaces);
        assert!(ns.contains("foo") && ns.contains("kube-system") && !ns.contains("default"));
        assert_eq!(c.list(ListId::AllowedK8sUsers).len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err(r#"{"list": {}}"#).contains("unknown key `list`"));
        assert!(
            err(r#"{"lists": {"allowed_namespace": {"append": []}}}"#)
                .contains("unknown list `lists.allowed_namespace`")
        );
        assert!(
            err(r#"{"lists": {"allowed_namespaces": ["x"]}}"#)
                .contains("`lists.allowed_namespaces` must be a table")
        );
        assert!(
            err(r#"{"lists": {"allowed_namespaces": {"add": ["x"]}}}"#)
                .contains("`lists.allowed_namespaces.add`")
        );
        assert!(
            err(r#"{"lists": {"allowed_namespaces": {"append": ["x", 3]}}}"#)
                .contains("`lists.allowed_namespaces.append[1]` must be a string")
        );
        assert!(
            err(r#"{"lists": {"allowed_namespaces": {"replace": [], "append": ["x"]}}}"#)
                .contains("cannot be combined")
        );
        assert!(
            err(r#"{"lists": {"k8s_audit_stages": {"replace": []}}}"#).contains("k8s_audit_stages")
        );
        assert!(
            err(r#"{"activity_rules": "no"}"#).contains("`activity_rules` must be true or false")
        );
        assert!(err(r#"{"enable": ["nope"]}"#).contains("unknown rule id `nope`"));
        assert!(
            err(r#"{"enable": ["Create Disallowed Pod"]}"#)
                .contains("use its id `create-disallowed-pod`")
        );
        assert!(
            err(r#"{"enable": ["port-forward"], "disable": ["port-forward"]}"#).contains("both")
        );
        assert!(err(r#"{"exceptions": [{"rule": "port-forward"}]}"#).contains("no criteria"));
        assert!(
            err(r#"{"exceptions": [{"rule": "port-forward", "user": ["a"]}]}"#)
                .contains("`exceptions[0].user`")
        );
        assert!(
            err(r#"{"exceptions": [{"users": ["a"]}]}"#)
                .contains("`exceptions[0].rule` is required")
        );
        assert!(
            err(r#"{"exceptions": [{"rule": "port-forward", "users": []}]}"#)
                .contains("`exceptions[0].users` is empty")
        );
        assert!(err("[1]").contains("must be an object"));
        assert!(err("{").contains("not valid JSON"));
    }
}
