//! The fixtures under `tests/fixtures/falco/` cover the rules Falco's own
//! suite never exercises. Their expectations are data, so the host's
//! end-to-end parity test runs the very same cases against the Wasm build.

mod common;

use std::collections::BTreeSet;

use common::{
    Matching, cases, corpus_dir, fixtures_dir, load, read_json, read_trace, read_trace_file,
    run_case,
};
use falco_k8s_audit::FalcoK8sAudit;
use falco_k8s_audit::rules::RULES;
use peregrine_sdk::audit::AuditEvent;
use peregrine_sdk::testing::Harness;
use serde_json::{Value, json};

#[test]
fn fixture_expectations_hold() {
    let dir = fixtures_dir();
    let cases = cases(&dir.join("expectations.json"));
    assert!(
        cases.len() >= 40,
        "expected the full fixture suite, found {} cases",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let events = read_trace_file(&dir.join(&case.trace_file));
        assert!(
            !events.is_empty(),
            "{}: {} holds no event",
            case.case,
            case.trace_file
        );
        failures.extend(run_case(case, &events));
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_file_is_used_and_is_a_v1_audit_event() {
    let dir = fixtures_dir();
    let used: BTreeSet<String> = cases(&dir.join("expectations.json"))
        .into_iter()
        .map(|c| c.trace_file)
        .collect();
    let mut files = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name == "expectations.json" || !name.ends_with(".json") {
            continue;
        }
        let text = std::fs::read_to_string(dir.join(&name)).unwrap();
        for (i, line) in text.lines().enumerate() {
            let v: Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("{name}:{}: {e}", i + 1));
            assert_eq!(v["kind"], "Event", "{name}:{}", i + 1);
            assert_eq!(v["apiVersion"], "audit.k8s.io/v1", "{name}:{}", i + 1);
            for key in [
                "auditID",
                "stage",
                "verb",
                "requestURI",
                "user",
                "objectRef",
                "responseStatus",
                "requestReceivedTimestamp",
                "stageTimestamp",
            ] {
                assert!(v.get(key).is_some(), "{name}:{}: no `{key}`", i + 1);
            }
        }
        assert!(
            read_trace(&text).is_ok(),
            "{name} does not decode as audit events"
        );
        files.insert(name);
    }
    assert_eq!(
        files, used,
        "fixture files and the files named by expectations.json differ"
    );
}

#[test]
fn corpus_and_fixtures_together_fire_every_rule() {
    let mut fired = BTreeSet::new();
    for path in [
        corpus_dir().join("falco-expectations.json"),
        fixtures_dir().join("expectations.json"),
    ] {
        for case in cases(&path) {
            fired.extend(
                case.detect_counts
                    .into_iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, _)| r),
            );
        }
    }
    let missing: Vec<&str> = RULES
        .iter()
        .map(|r| r.name)
        .filter(|n| !fired.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "rules no case expects to fire: {missing:?}"
    );
}

fn only_alert(file: &str, config: Value) -> common::Raised {
    let pack = load(common::PACK_MODULE, &config).unwrap();
    let events = read_trace_file(&fixtures_dir().join(file));
    let mut raised: Vec<_> = events
        .iter()
        .flat_map(|e| pack.alerts(e, Matching::First))
        .collect();
    assert_eq!(raised.len(), 1, "{file}: {raised:?}");
    raised.remove(0)
}

#[test]
fn outputs_follow_falco_field_semantics() {
    // spec.containers feeds ka.req.pod.containers.*; init and ephemeral
    // containers have their own fields, which v0.18.0 prints too.
    assert_eq!(
        only_alert(
            "create_pod_privileged_main_with_init_container.json",
            json!({})
        )
        .output,
        "Pod started with privileged container (user=kubernetes-admin pod=vpn-gateway resource=pods ns=default images=(nginx:1.25.4) init_images=(busybox:1.36) ephemeral_images=<NA>)"
    );
    assert_eq!(
        only_alert("create_pod_privileged_init_container.json", json!({})).output,
        "Pod started with privileged container (user=kubernetes-admin pod=sysctl-tuner resource=pods ns=default images=(nginx:1.25.4) init_images=(busybox:1.36) ephemeral_images=<NA>)"
    );
    // Refused by the apiserver (422): the response is a Status, without a name.
    assert_eq!(
        only_alert("create_pod_privileged_ephemeral_container.json", json!({})).output,
        "Pod started with privileged container (user=kubernetes-admin pod=<NA> resource=pods ns=shop images=(registry.example.com/shop/web:2.4.1) init_images=<NA> ephemeral_images=(nicolaka/netshoot:v0.13))"
    );
    // kubectl's WebSocket exec is a `get`; the command is the first
    // `command` parameter, URL-decoded.
    assert_eq!(
        only_alert("exec_pod_websocket_get.json", json!({})).output,
        "Attach/Exec to pod (user=kubernetes-admin pod=cart-7d9f8-xk2lp resource=pods ns=shop action=exec command=sh)"
    );
    // v0.18.0 no longer prints the ConfigMap's data.
    let configmap = only_alert("create_configmap_with_password.json", json!({}));
    assert_eq!(
        configmap.output,
        "K8s configmap with private credential (user=kubernetes-admin verb=create resource=configmaps configmap=billing-settings)"
    );
    // The rule reads /requestObject/ephemeralContainers/0, the pre-1.23
    // EphemeralContainers body; a current `kubectl debug` patch has them under
    // spec, so Falco prints <NA> there too.
    assert_eq!(
        only_alert("ephemeral_container_debug.json", json!({})).output,
        "Ephemeral container is created in pod (user=kubernetes-admin pod=web-0 resource=pods ns=default ephemeral_container_name=<NA> ephemeral_container_image=<NA>)"
    );
    assert_eq!(
        only_alert("create_rolebinding.json", json!({})).output,
        r#"K8s RoleBinding Created (user=kubernetes-admin binding=jane-view ns=dev resource=rolebindings subjects=({"kind":"User","apiGroup":"rbac.authorization.k8s.io","name":"jane"}) role=view resp=201 decision=allow reason=RBAC: allowed by ClusterRoleBinding "kubeadm:cluster-admins" of ClusterRole "cluster-admin" to Group "kubeadm:cluster-admins")"#
    );
    assert_eq!(
        only_alert(
            "create_node_forbidden.json",
            json!({"enable": ["untrusted-node-unsuccessfully-tried-to-join"]})
        )
        .output,
        "Node not in allowed list tried unsuccessfully to join the cluster  (user=system:node:worker-4 node=worker-5 reason=Forbidden resource=nodes)"
    );
    let all = only_alert(
        "get_namespace.json",
        json!({"enable": ["all-k8s-audit-events"]}),
    )
    .output;
    assert!(
        all.starts_with(r#"K8s Audit Event received (user=kubernetes-admin verb=get uri=/api/v1/namespaces/shop obj={"kind":"Event","level":"Metadata","auditID":""#),
        "{all}"
    );
}

#[test]
fn overrides_file_defines_every_override_the_cases_use() {
    let table = read_json(&common::manifest_dir().join("tests/overrides.json"));
    let table = table.as_object().unwrap();
    let mut used = BTreeSet::new();
    for path in [
        corpus_dir().join("falco-expectations.json"),
        fixtures_dir().join("expectations.json"),
    ] {
        for case in cases(&path) {
            used.extend(case.overrides);
        }
    }
    for name in &used {
        assert!(
            table.contains_key(name),
            "override `{name}` is used but not defined"
        );
    }
    for (name, entry) in table {
        assert!(
            used.contains(name),
            "override `{name}` is defined but no case uses it"
        );
        let keys: BTreeSet<&str> = entry
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert!(
            keys.contains("config") && keys.iter().all(|k| ["config", "module"].contains(k)),
            "{name}: {keys:?}"
        );
    }
}

/// Every ConfigMap and Secret value an event holds: `data`, `stringData`,
/// `binaryData` (of the object, or of each item of a list) and kubectl's
/// last-applied copy of the object.
fn held_data(event: &AuditEvent) -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        for key in ["data", "stringData", "binaryData"] {
            if let Some(map) = v.get(key).and_then(Value::as_object) {
                out.push(Value::Object(map.clone()).to_string());
                out.extend(map.values().filter_map(Value::as_str).map(str::to_string));
            }
        }
        if let Some(last) = v
            .pointer("/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration")
            .and_then(Value::as_str)
        {
            out.push(last.trim().to_string());
        }
        for item in v
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(item, out);
        }
    }
    if !matches!(event.resource(), Some("configmaps" | "secrets")) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for raw in [&event.request_object, &event.response_object]
        .into_iter()
        .flatten()
    {
        walk(&serde_json::from_str(raw.get()).unwrap(), &mut out);
    }
    out
}

#[test]
fn no_alert_carries_a_configmaps_or_secrets_data() {
    let mut events = Vec::new();
    for entry in std::fs::read_dir(corpus_dir().join("falco")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        events.extend(read_trace(&text).unwrap_or_default());
    }
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() != "expectations.json" {
            events.extend(read_trace_file(&path));
        }
    }
    for log in ["demo.log", "at-501d132/demo.log"] {
        events.extend(read_trace_file(
            &corpus_dir().join("public/liggitt__audit2rbac").join(log),
        ));
    }
    // Every rule on, `All K8s Audit Events` (which prints the whole event)
    // included, and every match kept.
    let all_on: Vec<&str> = RULES.iter().map(|r| r.id).collect();
    let harness =
        Harness::<FalcoK8sAudit>::with_config(&json!({"enable": all_on}).to_string()).unwrap();
    let (mut holding, mut alerts) = (0, 0);
    for event in &events {
        let secrets: Vec<String> = held_data(event)
            .into_iter()
            .filter(|s| s.len() >= 8)
            .collect();
        let raised = harness.evaluate(event);
        if !secrets.is_empty() {
            holding += 1;
            alerts += raised.len();
        }
        for alert in raised {
            let texts = std::iter::once(&alert.output)
                .chain(alert.fields.iter().filter_map(|(_, v)| v.as_ref()));
            for text in texts {
                for secret in &secrets {
                    assert!(
                        !text.contains(secret.as_str()),
                        "`{}` on event {} carries {secret:?}:\n{text}",
                        alert.rule_id,
                        event.audit_id
                    );
                }
            }
        }
    }
    // The corpus and fixtures hold ConfigMaps and Secrets with data, and the
    // rules do alert on them.
    assert!(holding >= 9, "only {holding} events hold data");
    assert!(alerts >= 2 * holding, "only {alerts} alerts on them");
}
