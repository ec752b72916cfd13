//! Falco's `json_pointer_example` test rule as a Peregrine module: one
//! WARNING rule that fires when the audit annotation
//! `authorization.k8s.io/decision` exists.
//!
//! Falco's rule reads it with `jevt.value[/annotations/authorization.k8s.io~1decision]`;
//! the annotation key contains a `/`, which RFC 6901 escapes as `~1`. This
//! module reads it through the same pointer over the event's JSON shape, so
//! a pointer implementation that splits on the escaped `/` fails the test.

use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};
use serde_json::{Map, Value};

const RULE_ID: &str = "json-pointer-example";
const POINTER: &str = "/annotations/authorization.k8s.io~1decision";

#[derive(Default)]
pub struct JsonPointerExample;

impl JsonPointerExample {
    /// The part of the audit event this rule reads, in the event's own JSON
    /// shape, so the pointer is the one Falco's rule uses.
    fn annotations_document(event: &Event) -> Value {
        let annotations: Map<String, Value> = event
            .raw()
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        let mut doc = Map::new();
        doc.insert("annotations".to_string(), Value::Object(annotations));
        Value::Object(doc)
    }
}

impl RuleModule for JsonPointerExample {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("json-pointer-example", env!("CARGO_PKG_VERSION"))
            .rule(
                rule(RULE_ID, "json_pointer_example", Priority::Warning)
                    .description("An example of using a JSON pointer with an escaped slash (~1) to read an annotation")
                    .tags(["k8s"]),
            )
            .build()
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        let doc = Self::annotations_document(event);
        let Some(decision) = doc.pointer(POINTER) else {
            return Vec::new();
        };
        let decision = decision.as_str().unwrap_or_default();
        vec![
            Alert::new(RULE_ID)
                .output(format!(
                    "Found an authorization decision annotation (decision={decision})"
                ))
                .field(format!("jevt.value[{POINTER}]"), decision),
        ]
    }
}

peregrine_sdk::export_rules!(JsonPointerExample);

#[cfg(test)]
mod tests {
    use super::*;
    use peregrine_sdk::testing::Harness;

    fn event(annotations: &str) -> String {
        format!(
            r#"{{"kind":"Event","auditID":"1","stage":"ResponseComplete","verb":"get","requestURI":"/api","user":{{"username":"u"}},"annotations":{annotations}}}"#
        )
    }

    #[test]
    fn fires_only_when_the_annotation_exists() {
        let h = Harness::<JsonPointerExample>::new();
        let alerts = h.evaluate_json(&event(r#"{"authorization.k8s.io/decision":"allow"}"#));
        assert_eq!(h.rule_names(&alerts), ["json_pointer_example"]);
        assert_eq!(
            alerts[0].output,
            "Found an authorization decision annotation (decision=allow)"
        );
        assert!(
            h.evaluate_json(&event(r#"{"authorization.k8s.io/reason":"x"}"#))
                .is_empty()
        );
        // The unescaped path names a nested key, which must not be found.
        assert!(
            h.evaluate_json(&event(r#"{"authorization.k8s.io":"x"}"#))
                .is_empty()
        );
    }

    #[test]
    fn takes_no_configuration() {
        assert!(Harness::<JsonPointerExample>::with_config(r#"{"x":1}"#).is_err());
    }
}
