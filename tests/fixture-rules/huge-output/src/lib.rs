//! Test fixture: on events of namespace `huge`, returns thousands of alerts
//! with megabytes of output, and an alert for a rule it never declared.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct HugeOutput;

impl RuleModule for HugeOutput {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-huge-output", "1")
            .rule(rule("huge", "Huge", Priority::Debug))
            .build()
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        match event.namespace() {
            Some("huge") => (0..5_000)
                .map(|i| Alert::new("huge").output("x".repeat(2_000)).field("i", i))
                .collect(),
            Some("undeclared") => vec![Alert::new("not-a-rule").output("undeclared rule id")],
            _ => Vec::new(),
        }
    }
}

peregrine_sdk::export_rules!(HugeOutput);
