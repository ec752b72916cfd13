//! The pack's metadata, its prefilters, and how configuration changes what
//! runs and what matches.

mod common;

use std::collections::BTreeSet;

use common::{Matching, corpus_dir, fixtures_dir, load, read_trace, read_trace_file};
use falco_k8s_audit::FalcoK8sAudit;
use falco_k8s_audit::rules::RULES;
use peregrine_sdk::audit::AuditEvent;
use peregrine_sdk::testing::Harness;
use peregrine_sdk::{Event, Priority, RuleModule};
use serde_json::json;

/// Falco's `k8s_audit_rules.yaml`, in file order.
const FALCO_ORDER: [&str; 48] = [
    "Disallowed K8s User",
    "Create Disallowed Pod",
    "Create Privileged Pod",
    "Create Sensitive Mount Pod",
    "Create HostNetwork Pod",
    "Create HostPid Pod",
    "Create HostIPC Pod",
    "Create NodePort Service",
    "Create/Modify Configmap With Private Credentials",
    "Anonymous Request Allowed",
    "Attach/Exec Pod",
    "port-forward",
    "EphemeralContainers Created",
    "Create Disallowed Namespace",
    "Pod Created in Kube Namespace",
    "Service Account Created in Kube Namespace",
    "System ClusterRole Modified/Deleted",
    "Attach to cluster-admin Role",
    "ClusterRole With Wildcard Created",
    "ClusterRole With Write Privileges Created",
    "ClusterRole With Pod Exec Created",
    "K8s Deployment Created",
    "K8s Deployment Deleted",
    "K8s Service Created",
    "K8s Service Deleted",
    "K8s ConfigMap Created",
    "K8s ConfigMap Deleted",
    "K8s Namespace Created",
    "K8s Namespace Deleted",
    "K8s Serviceaccount Created",
    "K8s Serviceaccount Deleted",
    "K8s Role Created",
    "K8s Role Deleted",
    "K8s ClusterRole Created",
    "K8s ClusterRole Deleted",
    "K8s RoleBinding Created",
    "K8s RoleBinding Deleted",
    "K8s ClusterRoleBinding Created",
    "K8s ClusterRoleBinding Deleted",
    "K8s Secret Created",
    "K8s Secret Deleted",
    "K8s Secret Get Successfully",
    "K8s Secret Get Unsuccessfully Tried",
    "All K8s Audit Events",
    "Full K8s Administrative Access",
    "Ingress Object without TLS Certificate Created",
    "Untrusted Node Successfully Joined the Cluster",
    "Untrusted Node Unsuccessfully Tried to Join the Cluster",
];

const DEFAULT_OFF: [&str; 5] = [
    "create-disallowed-pod",
    "all-k8s-audit-events",
    "full-k8s-administrative-access",
    "untrusted-node-successfully-joined",
    "untrusted-node-unsuccessfully-tried-to-join",
];

fn enabled_ids(config: serde_json::Value) -> BTreeSet<String> {
    let h = Harness::<FalcoK8sAudit>::with_config(&config.to_string()).unwrap();
    h.metadata()
        .rules
        .iter()
        .filter(|r| r.enabled)
        .map(|r| r.id.clone())
        .collect()
}

#[test]
fn metadata_lists_falcos_rules_in_file_order() {
    let h = Harness::<FalcoK8sAudit>::new();
    let info = h.metadata();
    let names: Vec<&str> = info.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, FALCO_ORDER);
    assert!(info.needs_request_object && info.needs_response_object);
    let ids: BTreeSet<&str> = info.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 48, "rule ids must be unique");
    for r in &info.rules {
        assert!(
            !r.id.is_empty()
                && r.id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "`{}` is not kebab-case",
            r.id
        );
        assert!(
            !r.description.is_empty() && r.tags.contains(&"k8s".to_string()),
            "{}",
            r.id
        );
    }
    let off: BTreeSet<&str> = info
        .rules
        .iter()
        .filter(|r| !r.enabled)
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(off, DEFAULT_OFF.into_iter().collect());
    let count = |p: Priority| info.rules.iter().filter(|r| r.priority == p).count();
    assert_eq!(
        (
            count(Priority::Error),
            count(Priority::Warning),
            count(Priority::Notice),
            count(Priority::Informational),
            count(Priority::Debug)
        ),
        (2, 21, 4, 20, 1)
    );
}

#[test]
fn activity_rules_switch_enable_and_disable() {
    let all = enabled_ids(json!({}));
    let quiet = enabled_ids(json!({"activity_rules": false}));
    let silenced: Vec<&String> = all.difference(&quiet).collect();
    // The 22 `K8s ... Created/Deleted/Get` rules and the Ingress rule use `kactivity`.
    assert_eq!(silenced.len(), 23, "{silenced:?}");
    assert!(
        silenced
            .iter()
            .all(|id| id.starts_with("k8s-") || id.starts_with("ingress-"))
    );
    // `enable` beats the group switch for the rules it names.
    let some =
        enabled_ids(json!({"activity_rules": false, "enable": ["k8s-secret-get-successfully"]}));
    assert!(some.contains("k8s-secret-get-successfully") && !some.contains("k8s-secret-created"));
    let turned_on = enabled_ids(json!({"enable": DEFAULT_OFF}));
    assert_eq!(turned_on.len(), 48);
    let turned_off = enabled_ids(json!({"disable": ["disallowed-k8s-user", "port-forward"]}));
    assert_eq!(turned_off.len(), 41);
}

#[test]
fn configuration_errors_reach_the_operator() {
    let err = |c: serde_json::Value| {
        Harness::<FalcoK8sAudit>::with_config(&c.to_string())
            .err()
            .unwrap()
    };
    assert!(
        err(json!({"lists": {"allowed_users": {"append": ["x"]}}}))
            .contains("unknown list `lists.allowed_users`")
    );
    assert!(
        err(json!({"exceptions": [{"rule": "port-forward", "namespaces": "dev"}]}))
            .contains("`exceptions[0].namespaces` must be an array")
    );
    assert!(err(json!({"activity_rules": 0})).contains("`activity_rules`"));
}

fn trace(dir: &std::path::Path, file: &str) -> Vec<AuditEvent> {
    read_trace_file(&dir.join(file))
}

#[test]
fn stages_list_drives_conditions_and_prefilters() {
    let h = Harness::<FalcoK8sAudit>::with_config(
        &json!({"lists": {"k8s_audit_stages": {"append": ["ResponseStarted"]}}}).to_string(),
    )
    .unwrap();
    let user_rule = h
        .metadata()
        .rules
        .iter()
        .find(|r| r.id == "disallowed-k8s-user")
        .unwrap();
    assert_eq!(
        user_rule.prefilter.stages,
        ["ResponseComplete", "ResponseStarted"]
    );
    // With ResponseStarted in `kevt`, the port-forward's ResponseStarted
    // event by a user who is no longer allowed matches Disallowed K8s User
    // as well.
    let pf = trace(&fixtures_dir(), "portforward_pod.json");
    let pack = load(common::PACK_MODULE, &json!({"lists": {"k8s_audit_stages": {"append": ["ResponseStarted"]}, "allowed_k8s_users": {"remove": ["kubernetes-admin"]}}})).unwrap();
    let rules: Vec<String> = pack
        .alerts(&pf[0], Matching::All)
        .into_iter()
        .map(|r| r.rule)
        .collect();
    assert_eq!(rules, ["Disallowed K8s User", "port-forward"]);
}

#[test]
fn exceptions_need_every_criterion_and_images_use_falcos_in() {
    let events = trace(
        &corpus_dir().join("falco"),
        "create_nginx_pod_privileged.json",
    );
    let first = |config: serde_json::Value| -> Vec<String> {
        load(common::PACK_MODULE, &config)
            .unwrap()
            .alerts(&events[0], Matching::First)
            .into_iter()
            .map(|r| r.rule)
            .collect()
    };
    assert_eq!(first(json!({})), ["Create Privileged Pod"]);
    // Image `nginx` (tag-less) is excepted by repository.
    assert!(
        first(json!({"exceptions": [{"rule": "create-privileged-pod", "images": ["nginx"]}]}))
            .is_empty()
    );
    // Both criteria must hold: the namespace does not.
    assert_eq!(
        first(
            json!({"exceptions": [{"rule": "create-privileged-pod", "images": ["nginx"], "namespaces": ["kube-system"]}]})
        ),
        ["Create Privileged Pod"]
    );
    // "*" covers every rule; users is the authenticated user name.
    assert!(first(json!({"exceptions": [{"rule": "*", "users": ["system:serviceaccount:kube-system:replicaset-controller"]}]})).is_empty());
    // An exception on an earlier rule lets a later rule be the first match.
    let anon = trace(
        &corpus_dir().join("falco"),
        "anonymous_creates_namespace_foo.json",
    );
    let pack = load(common::PACK_MODULE, &json!({"exceptions": [{"rule": "anonymous-request-allowed", "users": ["system:anonymous"]}]})).unwrap();
    let rules: Vec<String> = pack
        .alerts(&anon[0], Matching::First)
        .into_iter()
        .map(|r| r.rule)
        .collect();
    assert_eq!(rules, ["Create Disallowed Namespace"]);
}

#[test]
fn empty_containers_and_missing_images_follow_falco() {
    let pod = |containers: serde_json::Value, ns: &str| {
        json!({"kind": "Event", "auditID": "x", "stage": "ResponseComplete", "verb": "create",
               "requestURI": format!("/api/v1/namespaces/{ns}/pods"),
               "user": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
               "objectRef": {"resource": "pods", "namespace": ns}, "responseStatus": {"code": 201},
               "requestObject": {"spec": {"containers": containers, "hostPID": true}}})
        .to_string()
    };
    let pack = load(
        common::PACK_MODULE,
        &json!({"lists": {"k8s_audit_hostpid_images": {"append": ["busybox"]}}}),
    )
    .unwrap();
    let rules = |text: String| -> Vec<String> {
        let events = read_trace(&text).unwrap();
        pack.alerts(&events[0], Matching::All)
            .into_iter()
            .map(|r| r.rule)
            .collect()
    };
    assert!(
        rules(pod(
            json!([{"name": "a", "image": "busybox:1.36"}]),
            "default"
        ))
        .is_empty()
    );
    // No containers: `image.repository in (...)` has no value, so it is false
    // and the trusted-image exemption does not apply.
    assert_eq!(rules(pod(json!([]), "default")), ["Create HostPid Pod"]);
    // A container without an image makes the whole image field fail to
    // extract, with the same effect.
    assert_eq!(
        rules(pod(
            json!([{"name": "a", "image": "busybox"}, {"name": "b"}]),
            "default"
        )),
        ["Create HostPid Pod"]
    );
    assert_eq!(
        rules(pod(json!([{"name": "a"}]), "kube-system")),
        ["Create HostPid Pod", "Pod Created in Kube Namespace"]
    );
}

/// Every event this suite knows, under every stage and a range of verbs.
fn all_known_events() -> Vec<AuditEvent> {
    let mut base = Vec::new();
    for entry in std::fs::read_dir(corpus_dir().join("falco")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        base.extend(read_trace(&text).unwrap_or_default());
    }
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "expectations.json" {
            base.extend(read_trace_file(&path));
        }
    }
    base.extend(read_trace_file(
        &corpus_dir().join("public/liggitt__audit2rbac/at-501d132/demo.log"),
    ));
    let mut all = Vec::new();
    for event in base {
        for stage in [
            "RequestReceived",
            "ResponseStarted",
            "ResponseComplete",
            "Panic",
        ] {
            for verb in [
                "create", "update", "patch", "delete", "get", "list", "watch",
            ] {
                let mut e = event.clone();
                e.stage = stage.to_string();
                e.verb = verb.to_string();
                all.push(e);
            }
        }
    }
    all
}

#[test]
fn prefilters_admit_every_event_their_rule_matches() {
    // All rules on, anonymous and every user counted as unknown, so as many
    // conditions as possible can match.
    let config = json!({
        "enable": DEFAULT_OFF,
        "lists": {"allowed_k8s_users": {"replace": []}, "allowed_namespaces": {"replace": []}}
    });
    let mut module = FalcoK8sAudit::default();
    module.configure(&config.to_string()).unwrap();
    let info = module.metadata();
    let mut matched = BTreeSet::new();
    let mut checked = 0;
    for event in all_known_events() {
        let ev = Event::new(event.to_wit("default", true, true));
        for alert in module.evaluate(&ev) {
            let rule = info.rules.iter().find(|r| r.id == alert.rule_id).unwrap();
            assert!(
                rule.prefilter.admits(
                    &event.verb,
                    event.resource(),
                    event.subresource(),
                    &event.stage
                ),
                "rule `{}` matched {} {:?}/{:?} at {} but its prefilter {:?} rejects it",
                rule.id,
                event.verb,
                event.resource(),
                event.subresource(),
                event.stage,
                rule.prefilter
            );
            matched.insert(rule.id.clone());
            checked += 1;
        }
    }
    assert!(
        checked > 1000,
        "too few matches to mean anything: {checked}"
    );
    assert_eq!(
        matched.len(),
        RULES.len(),
        "rules never matched: {:?}",
        RULES
            .iter()
            .map(|r| r.id)
            .filter(|id| !matched.contains(*id))
            .collect::<Vec<_>>()
    );
}

#[test]
fn docs_list_every_rule_and_list_as_the_code_has_them() {
    let doc_path = common::manifest_dir().join("../../../docs/falco-rules.md");
    let doc = std::fs::read_to_string(&doc_path)
        .unwrap_or_else(|e| panic!("{}: {e}", doc_path.display()));
    for (i, r) in RULES.iter().enumerate() {
        let default = match r.default {
            falco_k8s_audit::rules::DefaultState::On => "on".to_string(),
            falco_k8s_audit::rules::DefaultState::Off { falco_macro } => {
                format!("off (`{falco_macro}`)")
            }
        };
        let row = format!(
            "| {} | `{}` | {} | {} | {} | {} |",
            i + 1,
            r.id,
            r.name,
            r.priority.as_falco_str(),
            default,
            if r.activity { "yes" } else { "" }
        );
        assert!(
            doc.contains(&row),
            "docs/falco-rules.md lacks the row\n{row}"
        );
    }
    for list in falco_k8s_audit::LISTS {
        assert!(
            doc.contains(&format!("| `{}` |", list.name)),
            "docs/falco-rules.md does not document list `{}`",
            list.name
        );
    }
}
