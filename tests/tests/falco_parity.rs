//! Falco's own k8s-audit regression suite, and the fixtures for the rules it
//! never exercises, run through the host with the Wasm rule pack: the same
//! expectations the pack's native tests check, now end to end. The threat
//! pack's cases run here too (`threat_pack/engine.rs`), in the same binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use peregrine::config::RuleMatching;
use peregrine_tests::*;
use serde_json::Value;

#[path = "threat_pack/engine.rs"]
mod threat_pack;

/// Merges configuration fragments: objects key by key, arrays appended,
/// anything else replaced (the rule the pack's overrides file documents).
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (slot, v) => *slot = v.clone(),
    }
}

fn overrides() -> BTreeMap<String, Value> {
    let path = root().join("example-rules/rust/falco-k8s-audit/tests/overrides.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs one case and checks it; returns a description of any mismatch.
fn run_case(case: &Value, trace_dir: &Path, overrides: &BTreeMap<String, Value>) -> Option<String> {
    let name = case["case"].as_str().unwrap();
    let mut module = "falco_k8s_audit".to_string();
    let mut module_config = serde_json::json!({});
    for o in case["overrides"].as_array().unwrap() {
        let o = &overrides[o.as_str().unwrap()];
        if let Some(m) = o["module"].as_str() {
            module = m.to_string();
        }
        merge(&mut module_config, &o["config"]);
    }
    let mut config = test_config();
    config.rules.rule_matching = RuleMatching::First;
    config
        .modules
        .insert(module.clone(), toml_table(&module_config));
    let module_path: PathBuf = if module == "falco_k8s_audit" {
        example_module(&module)
    } else {
        optional_module(&module)
    };
    let trace = trace_dir.join(case["trace_file"].as_str().unwrap());
    let (alerts, rejected) = evaluate_file(config, &[module_path], &trace);

    if case["trace_file"] == "fal_01_003.json" {
        let ok = alerts.is_empty()
            && rejected.len() == 1
            && rejected[0]
                .reason
                .starts_with("data not recognized as a k8s audit event");
        return (!ok).then(|| format!("{name}: expected a clear rejection, got {rejected:?}"));
    }
    if !rejected.is_empty() {
        return Some(format!("{name}: events rejected: {rejected:?}"));
    }
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for a in &alerts {
        *got.entry(a.rule.as_str()).or_default() += 1;
    }
    if case["detect"] == false {
        return (!alerts.is_empty()).then(|| format!("{name}: expected no alert, got {got:?}"));
    }
    for (rule, want) in case["detect_counts"].as_object().unwrap() {
        let n = got.get(rule.as_str()).copied().unwrap_or(0);
        if n as u64 != want.as_u64().unwrap() {
            return Some(format!(
                "{name}: {rule} x{n}, expected x{want}; all alerts: {got:?}"
            ));
        }
    }
    if let Some(level) = case["detect_level"].as_str() {
        // Falco's rule files spell Informational as INFO.
        let level = if level == "INFO" {
            "Informational"
        } else {
            level
        };
        let detected: Vec<_> = alerts
            .iter()
            .filter(|a| {
                case["detect_counts"]
                    .get(&a.rule)
                    .is_some_and(|n| n.as_u64() > Some(0))
            })
            .collect();
        if detected
            .iter()
            .any(|a| !a.priority.as_str().eq_ignore_ascii_case(level))
        {
            return Some(format!("{name}: expected priority {level}"));
        }
    }
    None
}

fn run_suite(expectations: &Path, trace_dir: &Path, expected_cases: usize) {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(expectations).unwrap()).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), expected_cases);
    let overrides = overrides();
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| run_case(c, trace_dir, &overrides))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn falcos_66_regression_cases_pass_through_the_host() {
    run_suite(
        &corpus().join("falco-expectations.json"),
        &corpus().join("falco"),
        66,
    );
}

#[test]
fn fixtures_for_rules_the_corpus_never_exercises_pass_through_the_host() {
    let dir = root().join("tests/fixtures/falco");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expectations.json")).unwrap())
            .unwrap();
    let n = doc["cases"].as_array().unwrap().len();
    assert!(n >= 40, "only {n} fixture cases");
    run_suite(&dir.join("expectations.json"), &dir, n);
}
