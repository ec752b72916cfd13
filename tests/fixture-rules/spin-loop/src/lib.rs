//! Test fixture: loops forever on events of namespace `spin`.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct SpinLoop;

impl RuleModule for SpinLoop {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-spin-loop", "1")
            .rule(rule("spin", "Spin", Priority::Debug))
            .build()
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        if event.namespace() == Some("spin") {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Vec::new()
    }
}

peregrine_sdk::export_rules!(SpinLoop);
