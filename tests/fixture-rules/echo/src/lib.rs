//! Test fixture: one alert per event, carrying what the module saw and a
//! version marker from its configuration, so tests can check exactly which
//! events reached it, through which module version, and with which state.
use peregrine_sdk::{Alert, Event, ModuleInfo, Priority, RuleModule, rule, state};

#[derive(Default)]
pub struct Echo {
    version: String,
}

impl RuleModule for Echo {
    fn metadata(&self) -> ModuleInfo {
        peregrine_sdk::module("fixture-echo", "1")
            .rule(rule("echo", "Echo", Priority::Informational))
            .build()
    }

    fn configure(&mut self, config: &str) -> Result<(), String> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default, deny_unknown_fields)]
        struct Config {
            version: String,
        }
        let c: Config = peregrine_sdk::parse_config(config)?;
        self.version = c.version;
        Ok(())
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        let seen = state::counter_add("events", 1, 3600, event.time_unix_nanos());
        vec![
            Alert::new("echo")
                .output(format!("echo {}", event.audit_id))
                .field("audit_id", event.audit_id.as_str())
                .field("tenant", event.tenant.as_str())
                .field("version", self.version.as_str())
                .field("seen", seen)
                .field("has_request_object", event.request_object.is_some())
                // The host owns this field: whatever a module puts there is
                // replaced by the rule's id.
                .field("peregrine.rule_id", "forged-by-the-module"),
        ]
    }
}

peregrine_sdk::export_rules!(Echo);
