//! Test fixture: metadata the host must refuse (duplicate and empty rule ids).
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct BadMetadata;

impl RuleModule for BadMetadata {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-bad-metadata", "1")
            .rule(rule("dup", "First", Priority::Debug))
            .rule(rule("dup", "Second", Priority::Debug))
            .rule(rule("", "Nameless", Priority::Debug))
            .build()
    }

    fn evaluate(&self, _event: &Event) -> Vec<Alert> {
        vec![Alert::new("dup").output("should never be seen")]
    }
}

peregrine_sdk::export_rules!(BadMetadata);
