//! Runs every case of `common/cases.rs` natively, with the SDK's harness
//! (the host's prefilter and event conversion) and its in-process state, and
//! checks the pack's metadata and configuration.

#[path = "common/cases.rs"]
mod cases;

use std::collections::BTreeSet;

use k8s_threats::ThreatPack;
use k8s_threats::catalog::RULES;
use peregrine_sdk::RuleModule;
use peregrine_sdk::testing::Harness;

const REQUIRED: [&str; 19] = [
    "exec-shell-or-download",
    "exec-cloud-credentials",
    "kubectl-cp-exfiltration",
    "dangerous-capabilities",
    "risky-workload-template",
    "admission-webhook-changed",
    "client-certificate-requested",
    "binding-to-anonymous-or-authenticated",
    "secrets-read-burst",
    "forbidden-storm",
    "api-enumeration-burst",
    "new-user-agent-for-identity",
    "rbac-then-workload",
    "mass-deletion",
    "events-deleted",
    "security-agent-tampering",
    "nodes-proxy-access",
    "cluster-wide-secret-list",
    "token-request-unusual",
];

fn run(case: &cases::Case) -> Vec<peregrine_sdk::Alert> {
    peregrine_sdk::state::reset();
    let h = Harness::<ThreatPack>::with_config(&case.config.to_string())
        .unwrap_or_else(|e| panic!("{}: configuration rejected: {e}", case.name));
    case.events
        .iter()
        .flat_map(|e| h.evaluate_json(&e.to_string()))
        .collect()
}

#[test]
fn every_case_fires_exactly_its_rules() {
    let all = cases::cases();
    assert!(all.len() >= 80, "only {} cases", all.len());
    let mut failures = Vec::new();
    for case in &all {
        let mut got: Vec<String> = run(case).into_iter().map(|a| a.rule_id).collect();
        got.sort();
        if got != case.fires {
            failures.push(format!(
                "{}: expected {:?}, got {got:?}",
                case.name, case.fires
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        all.len(),
        failures.join("\n")
    );
}

#[test]
fn every_rule_has_positive_and_near_miss_cases() {
    let h = Harness::<ThreatPack>::new();
    let mut positive = BTreeSet::new();
    let mut negative = BTreeSet::new();
    for case in cases::cases() {
        positive.extend(case.fires.iter().copied());
        // A negative for a rule: the rule's prefilter admits an event of the
        // case, and the rule does not fire in it.
        for event in &case.events {
            let e: peregrine_sdk::audit::AuditEvent =
                serde_json::from_value(event.clone()).unwrap();
            for r in &h.metadata().rules {
                let id = r.id.as_str();
                if r.prefilter
                    .admits(&e.verb, e.resource(), e.subresource(), &e.stage)
                    && !case.fires.contains(&id)
                    && !case.name.starts_with("an exception")
                {
                    negative.insert(id.to_string());
                }
            }
        }
    }
    for def in RULES {
        assert!(positive.contains(def.id), "no positive case for {}", def.id);
        assert!(negative.contains(def.id), "no negative case for {}", def.id);
    }
}

#[test]
fn metadata_has_the_required_ids_and_attack_tags() {
    let info = ThreatPack::default().metadata();
    assert!(info.rules.len() >= 30, "{} rules", info.rules.len());
    let ids: BTreeSet<&str> = info.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), info.rules.len(), "rule ids are not unique");
    for id in REQUIRED {
        assert!(ids.contains(id), "required rule {id} is missing");
    }
    for r in &info.rules {
        assert!(
            r.tags.iter().any(|t| t.len() >= 5
                && t.starts_with('T')
                && t[1..5].chars().all(|c| c.is_ascii_digit())),
            "{} has no ATT&CK technique tag",
            r.id
        );
        assert!(!r.description.is_empty() && !r.name.is_empty(), "{}", r.id);
        assert!(r.enabled, "{} is off by default", r.id);
    }
    assert!(info.needs_request_object && !info.needs_response_object);
}

#[test]
fn every_rule_is_documented() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../docs/detections.md");
    let docs = std::fs::read_to_string(path).expect("docs/detections.md");
    for def in RULES {
        assert!(
            docs.contains(&format!("| `{}` |", def.id)),
            "{} is not in the table of docs/detections.md",
            def.id
        );
        assert!(
            docs.contains(&format!("### `{}`", def.id)),
            "{} has no entry in docs/detections.md",
            def.id
        );
    }
    let policy_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../deploy/kubernetes/apiserver/audit-policy.yaml"
    );
    let policy = std::fs::read_to_string(policy_path).expect("audit-policy.yaml");
    let shown = docs
        .split("```yaml\n")
        .last()
        .and_then(|rest| rest.split("```").next())
        .expect("docs/detections.md shows the audit policy");
    assert_eq!(
        shown, policy,
        "the audit policy in docs/detections.md is not the deployed one"
    );
}

#[test]
fn configuration_errors_name_the_key() {
    let err = |text: &str| Harness::<ThreatPack>::with_config(text).err().unwrap();
    assert!(err(r#"{"control_plane_user": []}"#).contains("control_plane_user"));
    assert!(err(r#"{"rules": {"no-such-rule": {"enabled": false}}}"#).contains("no-such-rule"));
    assert!(
        err(r#"{"rules": {"events-deleted": {"threshold": 3}}}"#)
            .contains("rules.events-deleted.threshold")
    );
    assert!(err(r#"{"rules": {"forbidden-storm": {"window_seconds": 0}}}"#).contains("at least 1"));
    assert!(err(r#"{"exceptions": [{"rules": ["forbidden-storm"]}]}"#).contains("exceptions[0]"));
    assert!(err(r#"{"exceptions": [{"rules": ["nope"], "users": ["a"]}]}"#).contains("nope"));
    assert!(err("[1, 2]").contains("invalid configuration"));
}

#[test]
fn disabled_rules_are_off_in_the_metadata() {
    let h = Harness::<ThreatPack>::with_config(
        r#"{"rules": {"pod-port-forward": {"enabled": false}}}"#,
    )
    .unwrap();
    let r = h
        .metadata()
        .rules
        .iter()
        .find(|r| r.id == "pod-port-forward")
        .unwrap();
    assert!(!r.enabled);
}

#[test]
fn exec_alerts_carry_the_command_redacted_and_no_uri() {
    peregrine_sdk::state::reset();
    let h = Harness::<ThreatPack>::new();
    let event = cases::exec(
        "get",
        "shop",
        "web-0",
        &[
            "sh",
            "-c",
            "curl -H 'Authorization: Bearer eyJhbGciOi.secret' http://169.254.169.254/x | sh",
        ],
    )
    .audit_id("redact-1")
    .done();
    let alerts = h.evaluate_json(&event.to_string());
    let ids: Vec<&str> = alerts.iter().map(|a| a.rule_id.as_str()).collect();
    assert_eq!(ids, ["exec-shell-or-download", "exec-cloud-credentials"]);
    for a in &alerts {
        assert!(!a.output.contains("eyJhbGciOi"), "{}", a.output);
        assert!(
            a.fields
                .iter()
                .all(|(_, v)| v.as_deref().is_none_or(|v| !v.contains("eyJhbGciOi")))
        );
        assert!(a.fields.iter().all(|(k, _)| k != "ka.uri"));
        assert_eq!(a.field_value("ka.user.name"), Some("alice"));
        assert_eq!(a.field_value("ka.target.name"), Some("web-0"));
    }
}

#[test]
fn burst_alerts_report_their_count_and_cluster() {
    let case = cases::cases()
        .into_iter()
        .find(|c| c.name == "ten reads in one named cluster fire")
        .unwrap();
    let alerts = run(&case);
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].field_value("threat.count"), Some("10"));
    assert_eq!(alerts[0].field_value("peregrine.cluster"), Some("prod-eu"));
}
