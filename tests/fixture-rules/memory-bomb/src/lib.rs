//! Test fixture: allocates without bound on events of namespace `bomb`.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule};

#[derive(Default)]
pub struct MemoryBomb;

impl RuleModule for MemoryBomb {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-memory-bomb", "1")
            .rule(rule("bomb", "Bomb", Priority::Debug))
            .build()
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        if event.namespace() == Some("bomb") {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        Vec::new()
    }
}

peregrine_sdk::export_rules!(MemoryBomb);
