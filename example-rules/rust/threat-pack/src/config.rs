//! The pack's configuration (the module's JSON `configure` text, written as
//! `[modules.k8s_threats]` in `peregrine.toml`). Every list has a default
//! that suits a plain cluster; validation is strict and names the offending
//! key, because a typo would otherwise silently keep a default.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::catalog::{Param, RULES};

/// Identities of the control plane: kubelets, controllers, the scheduler,
/// the apiserver itself. Their requests are the cluster running, not
/// someone acting, so no rule of the pack looks at them.
const CONTROL_PLANE_USERS: &[&str] = &[
    "system:node:*",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:kube-proxy",
    "system:apiserver",
    "system:volume-scheduler",
    "system:cloud-controller-manager",
    "cloud-controller-manager",
    "system:addon-manager",
    "system:konnectivity-server",
    "kube-apiserver-healthcheck",
    "cluster-autoscaler",
    // kube-controller-manager with --use-service-account-credentials.
    "system:serviceaccount:kube-system:*-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:persistent-volume-binder",
    "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
    "system:serviceaccount:kube-system:root-ca-cert-publisher",
    "system:serviceaccount:kube-system:legacy-service-account-token-cleaner",
    "system:serviceaccount:kube-system:service-account-controller",
    "system:serviceaccount:kube-system:cloud-provider",
    "system:serviceaccount:kube-system:cluster-autoscaler",
    "system:serviceaccount:kube-system:kube-proxy",
    // Managed control planes.
    "eks:*",
    "aksService",
    "system:gke-*",
];

const CONTROL_PLANE_GROUPS: &[&str] = &["system:nodes"];

/// Users that are never a person: the new-user-agent rule learns only humans.
const NON_HUMAN_USERS: &[&str] = &["system:*", "eks:*", "aksService"];

/// The cluster's own identities, which run inside the cluster or its
/// managed control plane: a request by one of them from only public
/// addresses suggests its credential is used from outside.
const SYSTEM_PRINCIPALS: &[&str] = &[
    "system:serviceaccount:*",
    "system:node:*",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:kube-proxy",
    "system:apiserver",
    "eks:*",
    "aks:*",
    "aksService",
];

/// Managed control-plane identities that do call from public addresses
/// (EKS runs these from AWS Lambda).
const PUBLIC_IP_MANAGED_PRINCIPALS: &[&str] = &["eks:addon-manager", "eks:node-manager"];

const SECURITY_AGENTS: &[&str] = &[
    "falco",
    "falco-*",
    "peregrine",
    "peregrine-*",
    "datadog-agent",
    "datadog-agent-*",
    "datadog",
    "sysdig-agent",
    "sysdig-agent-*",
    "tetragon",
    "tetragon-*",
];

/// Identities that legitimately rewrite admission webhooks all day (they
/// inject the CA bundle into their own configurations).
const WEBHOOK_MANAGERS: &[&str] = &[
    "system:serviceaccount:cert-manager:cert-manager-cainjector",
    "system:serviceaccount:istio-system:istiod*",
    "system:serviceaccount:gatekeeper-system:gatekeeper-*",
    "system:serviceaccount:kyverno:kyverno-admission-controller",
];

const SENSITIVE_HOST_PATHS: &[&str] = &[
    "/",
    "/etc",
    "/proc",
    "/root",
    "/home",
    "/var/run",
    "/run",
    "/var/lib/kubelet",
    "/var/lib/docker",
    "/var/lib/containerd",
    "/etc/kubernetes",
];

/// Host paths that hand over the node outright: its root, or the socket of
/// its container runtime.
const HOST_TAKEOVER_PATHS: &[&str] = &[
    "/",
    "/var/run",
    "/run",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/run/containerd",
    "/run/containerd",
    "/var/run/crio",
    "/run/crio",
    "/var/run/cri-dockerd.sock",
];

const DANGEROUS_CAPABILITIES: &[&str] = &[
    "SYS_ADMIN",
    "SYS_PTRACE",
    "SYS_MODULE",
    "SYS_RAWIO",
    "NET_ADMIN",
    "BPF",
    "PERFMON",
    "DAC_READ_SEARCH",
    "ALL",
];

const CREDENTIAL_INDICATORS: &[&str] = &[
    "169.254.169.254",
    "metadata.google.internal",
    "169.254.170.2",
    "fd00:ec2::254",
    "100.100.100.200",
    "/var/run/secrets/kubernetes.io/serviceaccount",
    "/run/secrets/kubernetes.io/serviceaccount",
    "/var/run/secrets/eks.amazonaws.com/serviceaccount",
    "/var/run/secrets/azure/tokens",
    "/var/run/secrets/tokens",
    ".aws/credentials",
    ".kube/config",
    ".docker/config.json",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/azure.json",
    "/var/lib/kubelet/kubeconfig",
];

const ANONYMOUS_ALLOWED_PATHS: &[&str] = &[
    "/healthz*",
    "/livez*",
    "/readyz*",
    "/version",
    "/version/",
    "/.well-known/openid-configuration",
    "/openid/v1/jwks",
];

const PRIVILEGED_IDENTITIES: &[&str] = &[
    "system:admin",
    "kubernetes-admin",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:node:*",
    "system:serviceaccount:kube-system:*",
];

const PRIVILEGED_GROUPS: &[&str] = &["system:masters", "system:nodes", "kubeadm:cluster-admins"];

/// Roles a binding to which hands over the cluster: cluster-admin, and the
/// roles of the controller manager and the scheduler (every secret, token
/// minting, every pod), which only their own bootstrap bindings name.
const ADMIN_ROLES: &[&str] = &[
    "cluster-admin",
    "system:kube-controller-manager",
    "system:kube-scheduler",
];

/// Service accounts that list and watch secrets in every namespace by
/// design: kube-state-metrics (its default `secrets` collector), cert-manager
/// (the secrets of its certificates), istiod (gateway credentials) and the
/// External Secrets operator.
const CLUSTER_SECRET_READERS: &[&str] = &[
    "system:serviceaccount:*:kube-state-metrics",
    "system:serviceaccount:cert-manager:cert-manager",
    "system:serviceaccount:istio-system:istiod*",
    "system:serviceaccount:external-secrets:external-secrets*",
];

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// One exception: an event matching every field that is given is not
/// alerted on by the rules it names (all rules if `rules` is absent).
/// Values are glob patterns (`*` matches any run of characters).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Exception {
    pub rules: Option<Vec<String>>,
    pub users: Option<Vec<String>>,
    pub groups: Option<Vec<String>>,
    pub namespaces: Option<Vec<String>>,
    pub names: Option<Vec<String>>,
    pub source_ips: Option<Vec<String>>,
    pub user_agents: Option<Vec<String>>,
}

/// Per-rule settings under `rules.<id>`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuleSettings {
    pub enabled: Option<bool>,
    pub threshold: Option<u32>,
    pub window_seconds: Option<u32>,
    pub learning_seconds: Option<u32>,
    pub retention_seconds: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub control_plane_users: Vec<String>,
    pub control_plane_groups: Vec<String>,
    /// Added to `control_plane_users`, so a cluster's own controllers can be
    /// listed without repeating the defaults.
    pub extra_control_plane_users: Vec<String>,
    pub non_human_users: Vec<String>,
    pub system_principals: Vec<String>,
    pub public_ip_managed_principals: Vec<String>,
    /// Audit annotation naming the cluster; state is kept per value.
    pub cluster_annotation: Option<String>,
    pub security_agents: Vec<String>,
    pub webhook_managers: Vec<String>,
    pub sensitive_host_paths: Vec<String>,
    pub host_takeover_paths: Vec<String>,
    pub dangerous_capabilities: Vec<String>,
    pub credential_indicators: Vec<String>,
    pub anonymous_allowed_paths: Vec<String>,
    pub privileged_identities: Vec<String>,
    pub privileged_groups: Vec<String>,
    pub admin_roles: Vec<String>,
    pub cluster_secret_readers: Vec<String>,
    pub allowed_registries: Vec<String>,
    pub rules: BTreeMap<String, RuleSettings>,
    pub exceptions: Vec<Exception>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            control_plane_users: owned(CONTROL_PLANE_USERS),
            control_plane_groups: owned(CONTROL_PLANE_GROUPS),
            extra_control_plane_users: Vec::new(),
            non_human_users: owned(NON_HUMAN_USERS),
            system_principals: owned(SYSTEM_PRINCIPALS),
            public_ip_managed_principals: owned(PUBLIC_IP_MANAGED_PRINCIPALS),
            cluster_annotation: Some("peregrine.dev/cluster".to_string()),
            security_agents: owned(SECURITY_AGENTS),
            webhook_managers: owned(WEBHOOK_MANAGERS),
            sensitive_host_paths: owned(SENSITIVE_HOST_PATHS),
            host_takeover_paths: owned(HOST_TAKEOVER_PATHS),
            dangerous_capabilities: owned(DANGEROUS_CAPABILITIES),
            credential_indicators: owned(CREDENTIAL_INDICATORS),
            anonymous_allowed_paths: owned(ANONYMOUS_ALLOWED_PATHS),
            privileged_identities: owned(PRIVILEGED_IDENTITIES),
            privileged_groups: owned(PRIVILEGED_GROUPS),
            admin_roles: owned(ADMIN_ROLES),
            cluster_secret_readers: owned(CLUSTER_SECRET_READERS),
            allowed_registries: Vec::new(),
            rules: BTreeMap::new(),
            exceptions: Vec::new(),
        }
    }
}

/// The settings of one rule after defaults were applied.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub enabled: bool,
    pub threshold: u32,
    pub window_seconds: u32,
    pub learning_seconds: u32,
    pub retention_seconds: u32,
}

impl Config {
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = peregrine_sdk::parse_config(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let known = |id: &str| RULES.iter().position(|r| r.id == id);
        for (id, s) in &self.rules {
            let index = known(id).ok_or_else(|| format!("rules.{id}: no rule has this id"))?;
            let params = RULES[index].params;
            let checks = [
                (s.threshold, Param::Threshold, "threshold"),
                (s.window_seconds, Param::Window, "window_seconds"),
                (s.learning_seconds, Param::Learning, "learning_seconds"),
                (s.retention_seconds, Param::Retention, "retention_seconds"),
            ];
            for (value, param, key) in checks {
                match value {
                    Some(_) if !params.contains(&param) => {
                        return Err(format!("rules.{id}.{key}: this rule takes no {key}"));
                    }
                    Some(0) => return Err(format!("rules.{id}.{key}: must be at least 1")),
                    _ => {}
                }
            }
        }
        for (i, e) in self.exceptions.iter().enumerate() {
            for id in e.rules.iter().flatten() {
                if known(id).is_none() {
                    return Err(format!("exceptions[{i}].rules: no rule has the id `{id}`"));
                }
            }
            let fields = [
                &e.users,
                &e.groups,
                &e.namespaces,
                &e.names,
                &e.source_ips,
                &e.user_agents,
            ];
            if fields.iter().all(|f| f.is_none()) {
                return Err(format!(
                    "exceptions[{i}]: give at least one of users, groups, namespaces, names, source_ips, user_agents"
                ));
            }
        }
        Ok(())
    }

    /// The settings of rule `index` with this configuration.
    pub fn settings(&self, index: usize) -> Settings {
        let def = &RULES[index];
        let s = self.rules.get(def.id).cloned().unwrap_or_default();
        Settings {
            enabled: s.enabled.unwrap_or(true),
            threshold: s.threshold.unwrap_or(def.defaults.threshold),
            window_seconds: s.window_seconds.unwrap_or(def.defaults.window_seconds),
            learning_seconds: s.learning_seconds.unwrap_or(def.defaults.learning_seconds),
            retention_seconds: s
                .retention_seconds
                .unwrap_or(def.defaults.retention_seconds),
        }
    }
}

/// Matches `value` against a glob pattern in which `*` stands for any run of
/// characters (including none). Everything else matches literally.
pub fn glob(pattern: &str, value: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == value;
    };
    let Some(mut remaining) = value.strip_prefix(head) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let tail = parts.pop().unwrap_or("");
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= tail.len() && remaining.ends_with(tail)
}

/// Whether any pattern of `patterns` matches `value`.
pub fn any_glob(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| glob(p, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_runs_and_anchors_both_ends() {
        assert!(glob("system:node:*", "system:node:ip-10-0-0-1"));
        assert!(!glob("system:node:*", "system:nodes"));
        assert!(glob(
            "system:serviceaccount:kube-system:*-controller",
            "system:serviceaccount:kube-system:job-controller"
        ));
        assert!(!glob(
            "system:serviceaccount:kube-system:*-controller",
            "system:serviceaccount:kube-system:job-controller-x"
        ));
        assert!(glob("a*b*c", "abc"));
        assert!(glob("a*b*c", "a-b-b-c"));
        assert!(!glob("a*b*c", "a-c"));
        assert!(glob("*", ""));
        assert!(glob("exact", "exact"));
        assert!(!glob("exact", "exactly"));
        // The tail may not overlap the part already consumed.
        assert!(!glob("ab*ab", "ab"));
    }
}
