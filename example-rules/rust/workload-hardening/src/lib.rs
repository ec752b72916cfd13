//! Falco's pod rules only look at Pod objects, so a privileged DaemonSet is
//! only caught when its controller creates the pods, under the controller's
//! service account rather than the person who asked for it. These rules look
//! at the pod template of the workload itself, and so name the real author.

use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, format_list, na, rule};
use serde::Deserialize;

const WORKLOADS: [&str; 6] = [
    "deployments",
    "daemonsets",
    "statefulsets",
    "replicasets",
    "jobs",
    "cronjobs",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct Config {
    /// Namespaces where privileged workloads are expected (CNI, CSI, node agents).
    trusted_namespaces: Vec<String>,
    /// Host paths that are dangerous to mount (prefix match).
    sensitive_host_paths: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            trusted_namespaces: vec!["kube-system".into()],
            sensitive_host_paths: [
                "/",
                "/etc",
                "/proc",
                "/root",
                "/var/run/docker.sock",
                "/run/containerd",
                "/var/lib/kubelet",
                "/home",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

#[derive(Default)]
pub struct WorkloadHardening {
    config: Config,
}

impl WorkloadHardening {
    fn sensitive(&self, path: &str) -> bool {
        let path = path.trim_end_matches('/');
        let path = if path.is_empty() { "/" } else { path };
        self.config.sensitive_host_paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            if p.is_empty() {
                path == "/"
            } else {
                path == p || path.starts_with(&format!("{p}/"))
            }
        })
    }
}

impl RuleModule for WorkloadHardening {
    fn metadata(&self) -> ModuleInfo {
        let on_workloads = |r: peregrine_sdk::rule::RuleBuilder| {
            r.verbs(["create", "update", "patch"])
                .resources(WORKLOADS)
                .stages(["ResponseComplete"])
        };
        peregrine_sdk::module("workload-hardening", env!("CARGO_PKG_VERSION"))
            .rule(on_workloads(rule("privileged-workload", "Privileged Workload Template", Priority::Warning))
                .description("A workload's pod template runs a privileged container outside the trusted namespaces")
                .tags(["k8s", "container", "privilege-escalation", "T1610", "T1611"]))
            .rule(on_workloads(rule("host-mount-workload", "Workload Template Mounts Sensitive Host Path", Priority::Warning))
                .description("A workload's pod template mounts a sensitive host path outside the trusted namespaces")
                .tags(["k8s", "container", "T1611"]))
            .needs_request_object()
            .build()
    }

    fn configure(&mut self, config: &str) -> Result<(), String> {
        self.config = peregrine_sdk::parse_config(config)?;
        Ok(())
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        let mut alerts = Vec::new();
        if event
            .response_code()
            .is_some_and(|c| !(200..300).contains(&c))
        {
            return alerts;
        }
        if event
            .namespace()
            .is_some_and(|ns| self.config.trusted_namespaces.iter().any(|t| t == ns))
        {
            return alerts;
        }
        let Some(spec) = event.request_pod_spec() else {
            return alerts;
        };
        let base = |id: &str, what: &str| {
            Alert::new(id)
                .output(format!(
                    "{what} (user={} verb={} resource={} ns={} name={})",
                    event.user_name(),
                    event.verb(),
                    na(event.resource()),
                    na(event.namespace()),
                    na(event.name()),
                ))
                .field("ka.user.name", event.user_name())
                .field("ka.verb", event.verb())
                .field("ka.target.resource", event.resource())
                .field("ka.target.namespace", event.namespace())
                .field("ka.target.name", event.name())
        };
        let privileged: Vec<&str> = spec
            .all_containers()
            .filter(|c| c.privileged() == Some(true))
            .map(|c| c.image.as_deref().unwrap_or(c.name.as_str()))
            .collect();
        if !privileged.is_empty() {
            alerts.push(
                base(
                    "privileged-workload",
                    &format!(
                        "Workload template with privileged containers {}",
                        format_list(&privileged)
                    ),
                )
                .field("ka.req.pod.containers.image", privileged.as_slice()),
            );
        }
        let mounts: Vec<&str> = spec.host_paths().filter(|p| self.sensitive(p)).collect();
        if !mounts.is_empty() {
            alerts.push(
                base(
                    "host-mount-workload",
                    &format!(
                        "Workload template mounts sensitive host paths {}",
                        format_list(&mounts)
                    ),
                )
                .field("ka.req.pod.volumes.hostpath", mounts.as_slice()),
            );
        }
        alerts
    }
}

peregrine_sdk::export_rules!(WorkloadHardening);

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_sdk::testing::Harness;

    fn daemonset(ns: &str, privileged: bool, host_path: &str) -> String {
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": "a1", "stage": "ResponseComplete",
            "verb": "create", "requestURI": format!("/apis/apps/v1/namespaces/{ns}/daemonsets"),
            "user": {"username": "alice"},
            "objectRef": {"resource": "daemonsets", "namespace": ns, "name": "agent", "apiGroup": "apps"},
            "responseStatus": {"code": 201},
            "requestObject": {"kind": "DaemonSet", "spec": {"template": {"spec": {
                "containers": [{"name": "agent", "image": "evil/agent:1", "securityContext": {"privileged": privileged}}],
                "volumes": [{"name": "h", "hostPath": {"path": host_path}}]
            }}}}
        })
        .to_string()
    }

    #[test]
    fn privileged_daemonset_with_host_root_raises_both_rules() {
        let h = Harness::<WorkloadHardening>::new();
        let alerts = h.evaluate_json(&daemonset("default", true, "/"));
        assert_eq!(
            h.rule_names(&alerts),
            [
                "Privileged Workload Template",
                "Workload Template Mounts Sensitive Host Path"
            ]
        );
        assert_eq!(alerts[0].field_value("ka.user.name"), Some("alice"));
        assert_eq!(
            alerts[0].field_value("ka.req.pod.containers.image"),
            Some("(evil/agent:1)")
        );
    }

    #[test]
    fn harmless_or_trusted_workloads_are_quiet() {
        let h = Harness::<WorkloadHardening>::new();
        assert!(
            h.evaluate_json(&daemonset("default", false, "/data/cache"))
                .is_empty()
        );
        assert!(
            h.evaluate_json(&daemonset("kube-system", true, "/"))
                .is_empty()
        );
        // "/etcd-data" is not under "/etc".
        assert!(
            h.evaluate_json(&daemonset("default", false, "/etcd-data"))
                .is_empty()
        );
    }

    #[test]
    fn configuration_is_validated_and_applied() {
        assert!(Harness::<WorkloadHardening>::with_config(r#"{"trusted_namespace": []}"#).is_err());
        let h = Harness::<WorkloadHardening>::with_config(
            r#"{"trusted_namespaces": [], "sensitive_host_paths": ["/data"]}"#,
        )
        .unwrap();
        assert_eq!(
            h.evaluate_json(&daemonset("kube-system", false, "/data/x"))
                .len(),
            1
        );
    }
}
