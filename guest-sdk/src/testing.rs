//! Unit-test a rule module natively, with plain `cargo test`.
//!
//! [`Harness`] does what the host does around a module: it configures it,
//! reads its metadata, sends an event only if the prefilter of an enabled rule
//! admits it, includes the request and response objects only if the module
//! asked for them, and checks that every alert names a rule the module
//! declared.
//!
//! ```
//! use peregrine_sdk::testing::Harness;
//! # use peregrine_sdk::{rule, Alert, Event, ModuleInfo, Priority, RuleModule};
//! # #[derive(Default)] struct Exec;
//! # impl RuleModule for Exec {
//! #     fn metadata(&self) -> ModuleInfo {
//! #         peregrine_sdk::module("exec", "1").rule(rule("exec", "Exec", Priority::Notice).subresources(["exec"])).build()
//! #     }
//! #     fn evaluate(&self, _: &Event) -> Vec<Alert> { vec![Alert::new("exec")] }
//! # }
//! let harness = Harness::<Exec>::new();
//! let alerts = harness.evaluate_json(r#"{"kind":"Event","auditID":"1","stage":"ResponseStarted",
//!     "verb":"create","objectRef":{"resource":"pods","subresource":"exec"}}"#);
//! assert_eq!(harness.rule_names(&alerts), ["Exec"]);
//! ```

use std::path::Path;

use crate::audit::AuditEvent;
use crate::{Alert, Event, ModuleInfo, RuleModule};

/// A configured module, driven as the host drives it.
pub struct Harness<M: RuleModule> {
    module: M,
    info: ModuleInfo,
    tenant: String,
}

impl<M: RuleModule> Default for Harness<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: RuleModule> Harness<M> {
    /// The module with its default configuration (`{}`).
    pub fn new() -> Self {
        Self::with_config("{}").expect("the module rejects its default configuration `{}`")
    }

    /// The module configured with `config` (JSON text).
    pub fn with_config(config: &str) -> Result<Self, String> {
        let mut module = M::default();
        module.configure(config)?;
        let info = module.metadata();
        Ok(Harness {
            module,
            info,
            tenant: "default".to_string(),
        })
    }

    /// Events are evaluated as if posted for `tenant`.
    pub fn tenant(mut self, tenant: &str) -> Self {
        self.tenant = tenant.to_string();
        self
    }

    pub fn metadata(&self) -> &ModuleInfo {
        &self.info
    }

    pub fn module(&self) -> &M {
        &self.module
    }

    /// Evaluates one decoded event.
    pub fn evaluate(&self, event: &AuditEvent) -> Vec<Alert> {
        let admitted = self.info.rules.iter().any(|r| {
            r.enabled
                && r.prefilter.admits(
                    &event.verb,
                    event.resource(),
                    event.subresource(),
                    &event.stage,
                )
        });
        if !admitted {
            return Vec::new();
        }
        let wit = event.to_wit(
            &self.tenant,
            self.info.needs_request_object,
            self.info.needs_response_object,
        );
        let alerts = self.module.evaluate(&Event::new(wit));
        for alert in &alerts {
            assert!(
                self.info.rules.iter().any(|r| r.id == alert.rule_id),
                "module `{}` raised an alert for rule id `{}`, which its metadata does not declare",
                self.info.name,
                alert.rule_id
            );
        }
        alerts
    }

    /// Evaluates one event given as JSON text.
    pub fn evaluate_json(&self, json: &str) -> Vec<Alert> {
        let event: AuditEvent = serde_json::from_str(json).expect("fixture is not an audit event");
        self.evaluate(&event)
    }

    /// Evaluates every event of a fixture file (Event, EventList, array or
    /// JSON lines) and returns all alerts in order.
    pub fn evaluate_file(&self, path: impl AsRef<Path>) -> Vec<Alert> {
        read_events_file(path)
            .iter()
            .flat_map(|e| self.evaluate(e))
            .collect()
    }

    /// The display name of the rule each alert is for, as Falco prints it.
    pub fn rule_names(&self, alerts: &[Alert]) -> Vec<String> {
        alerts
            .iter()
            .map(|a| {
                self.info
                    .rules
                    .iter()
                    .find(|r| r.id == a.rule_id)
                    .map_or_else(|| a.rule_id.clone(), |r| r.name.clone())
            })
            .collect()
    }
}

/// Builds the [`Event`] a module would receive, with both raw objects.
pub fn event_from_json(json: &str) -> Event {
    let event: AuditEvent = serde_json::from_str(json).expect("fixture is not an audit event");
    Event::new(event.to_wit("default", true, true))
}

/// Reads the audit events of a fixture file: one Event, an EventList, a JSON
/// array of events, or one event per line.
pub fn read_events_file(path: impl AsRef<Path>) -> Vec<AuditEvent> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    read_events(&text).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Parses audit events from text: one Event, an EventList, a JSON array of
/// events, or one event per line.
pub fn read_events(text: &str) -> Result<Vec<AuditEvent>, String> {
    #[derive(serde::Deserialize)]
    struct List {
        items: Vec<AuditEvent>,
    }
    if let Ok(value) = serde_json::from_str::<serde_json::Value>(text) {
        return match &value {
            serde_json::Value::Array(_) => serde_json::from_value(value).map_err(|e| e.to_string()),
            serde_json::Value::Object(o)
                if o.get("kind").and_then(|k| k.as_str()) == Some("EventList") =>
            {
                serde_json::from_value::<List>(value)
                    .map(|l| l.items)
                    .map_err(|e| e.to_string())
            }
            _ => serde_json::from_value(value)
                .map(|e| vec![e])
                .map_err(|e| e.to_string()),
        };
    }
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}
