//! What the parity suites share: locating the data, turning a case's override
//! names into module configuration, and driving a module the way the host
//! does, with `rule_matching: first` or `all`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use falco_k8s_audit::FalcoK8sAudit;
use json_pointer_example::JsonPointerExample;
use peregrine_sdk::audit::AuditEvent;
use peregrine_sdk::testing::Harness;
use peregrine_sdk::{Priority, RuleModule};
use serde::Deserialize;
use serde_json::Value;

pub fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shared audit corpus: `$PEREGRINE_AUDIT_CORPUS`, else `shared/audit-corpus`
/// next to the checkout.
pub fn corpus_dir() -> PathBuf {
    let dir = std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join("../../../../shared/audit-corpus"));
    assert!(
        dir.join("falco-expectations.json").is_file(),
        "the audit corpus is missing: expected {} (the shared audit-corpus checkout next to the repository)",
        dir.join("falco-expectations.json").display()
    );
    dir
}

/// `tests/fixtures/falco` at the repository root.
pub fn fixtures_dir() -> PathBuf {
    let dir = manifest_dir().join("../../../tests/fixtures/falco");
    assert!(
        dir.join("expectations.json").is_file(),
        "missing {}",
        dir.join("expectations.json").display()
    );
    dir
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Decodes a trace file: one event per JSON document (one document, or one
/// per line). Each event is decoded straight from its text, as the host's
/// ingest does, so `requestObject` keeps its key order; the SDK's
/// `testing::read_events` goes through `serde_json::Value` for a
/// single-document file, which sorts the keys and would change outputs such
/// as `ka.req.binding.subjects`.
pub fn read_trace(text: &str) -> Result<Vec<AuditEvent>, String> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<AuditEvent>()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect()
}

pub fn read_trace_file(path: &Path) -> Vec<AuditEvent> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    read_trace(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Deserialize)]
pub struct Case {
    pub case: String,
    pub trace_file: String,
    pub overrides: Vec<String>,
    pub detect: bool,
    pub detect_level: Option<String>,
    pub detect_counts: BTreeMap<String, usize>,
}

pub fn cases(expectations: &Path) -> Vec<Case> {
    let doc = read_json(expectations);
    serde_json::from_value(doc["cases"].clone())
        .unwrap_or_else(|e| panic!("{}: bad `cases`: {e}", expectations.display()))
}

/// Deep merge: objects merge key by key, arrays concatenate, anything else
/// is replaced. This is how override fragments combine (documented in
/// docs/falco-rules.md, and the host's end-to-end parity test does the same).
pub fn merge(into: &mut Value, from: &Value) {
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

/// The module file stem the pack is loaded under by default.
pub const PACK_MODULE: &str = "falco_k8s_audit";

/// `tests/overrides.json`: override name -> `{"module"?: stem, "config": fragment}`.
pub fn module_and_config(overrides: &[String]) -> (String, Value) {
    let table = read_json(&manifest_dir().join("tests/overrides.json"));
    let mut module: Option<String> = None;
    let mut config = Value::Object(Default::default());
    for name in overrides {
        let entry = table
            .get(name)
            .unwrap_or_else(|| panic!("override `{name}` is not defined in tests/overrides.json"));
        let this_module = entry
            .get("module")
            .and_then(Value::as_str)
            .unwrap_or(PACK_MODULE)
            .to_string();
        if let Some(m) = &module {
            assert_eq!(
                m, &this_module,
                "overrides {overrides:?} ask for different modules"
            );
        }
        module = Some(this_module);
        merge(&mut config, entry.get("config").unwrap_or(&Value::Null));
    }
    (module.unwrap_or_else(|| PACK_MODULE.to_string()), config)
}

/// One alert as the host would record it: the rule's position in the
/// module's metadata, its display name and priority.
#[derive(Debug, Clone)]
pub struct Raised {
    pub position: usize,
    pub rule: String,
    pub priority: Priority,
    pub output: String,
}

type EvaluateFn = Box<dyn Fn(&AuditEvent) -> Vec<Raised>>;

pub struct Loaded {
    evaluate: EvaluateFn,
}

fn load_module<M: RuleModule + 'static>(config: &str) -> Result<Loaded, String> {
    let harness = Harness::<M>::with_config(config)?;
    Ok(Loaded {
        evaluate: Box::new(move |event| {
            let info = harness.metadata();
            harness
                .evaluate(event)
                .into_iter()
                .map(|alert| {
                    let position = info
                        .rules
                        .iter()
                        .position(|r| r.id == alert.rule_id)
                        .unwrap();
                    let rule = &info.rules[position];
                    Raised {
                        position,
                        rule: rule.name.clone(),
                        priority: alert.priority.unwrap_or(rule.priority),
                        output: alert.output,
                    }
                })
                .collect()
        }),
    })
}

pub fn load(module: &str, config: &Value) -> Result<Loaded, String> {
    let text = config.to_string();
    match module {
        PACK_MODULE => load_module::<FalcoK8sAudit>(&text),
        "json_pointer_example" => load_module::<JsonPointerExample>(&text),
        other => panic!("no module `{other}` in this suite"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matching {
    First,
    All,
}

impl Loaded {
    /// The alerts kept for one event. `First` keeps, as the host does, only
    /// the alert whose rule comes first in the metadata.
    pub fn alerts(&self, event: &AuditEvent, matching: Matching) -> Vec<Raised> {
        let mut raised = (self.evaluate)(event);
        if matching == Matching::First
            && let Some(first) = raised.iter().min_by_key(|r| r.position).cloned()
        {
            raised = vec![first];
        }
        raised
    }

    pub fn counts(&self, events: &[AuditEvent], matching: Matching) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for event in events {
            for r in self.alerts(event, matching) {
                *counts.entry(r.rule).or_insert(0) += 1;
            }
        }
        counts
    }
}

pub fn falco_priority(level: &str) -> Priority {
    match level {
        "EMERGENCY" => Priority::Emergency,
        "ALERT" => Priority::Alert,
        "CRITICAL" => Priority::Critical,
        "ERROR" => Priority::Error,
        "WARNING" => Priority::Warning,
        "NOTICE" => Priority::Notice,
        "INFO" | "INFORMATIONAL" => Priority::Informational,
        "DEBUG" => Priority::Debug,
        other => panic!("unknown Falco priority `{other}`"),
    }
}

/// Runs one case and returns a description of every way it failed.
pub fn run_case(case: &Case, events: &[AuditEvent]) -> Vec<String> {
    let mut failures = Vec::new();
    let (module, config) = module_and_config(&case.overrides);
    let loaded = match load(&module, &config) {
        Ok(l) => l,
        Err(e) => {
            return vec![format!(
                "{}: configuration {config} rejected: {e}",
                case.case
            )];
        }
    };
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut priorities: BTreeMap<String, Priority> = BTreeMap::new();
    for event in events {
        for r in loaded.alerts(event, Matching::First) {
            *counts.entry(r.rule.clone()).or_insert(0) += 1;
            priorities.insert(r.rule, r.priority);
        }
    }
    if !case.detect && !counts.is_empty() {
        failures.push(format!("{}: expected no alert, got {counts:?}", case.case));
    }
    for (rule, want) in &case.detect_counts {
        let got = counts.get(rule).copied().unwrap_or(0);
        if got != *want {
            failures.push(format!(
                "{}: `{rule}` x{got}, expected x{want} (all kept alerts: {counts:?})",
                case.case
            ));
        }
        if case.detect
            && let Some(level) = &case.detect_level
            && let Some(p) = priorities.get(rule)
            && *p != falco_priority(level)
        {
            failures.push(format!(
                "{}: `{rule}` has priority {p:?}, expected {level}",
                case.case
            ));
        }
    }
    if case.detect && case.detect_counts.is_empty() {
        failures.push(format!(
            "{}: detect=true but no detect_counts to check",
            case.case
        ));
    }
    failures
}
