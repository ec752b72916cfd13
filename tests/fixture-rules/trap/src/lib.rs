//! Test fixture: panics (a trap in the sandbox) on events of namespace `trap`.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct Trap;

impl RuleModule for Trap {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-trap", "1")
            .rule(rule("trap", "Trap", Priority::Debug))
            .build()
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        if event.namespace() == Some("trap") {
            panic!("fixture trap on event {}", event.audit_id);
        }
        Vec::new()
    }
}

peregrine_sdk::export_rules!(Trap);
