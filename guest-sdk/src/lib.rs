//! # peregrine-sdk
//!
//! Everything a Rust rule module for Peregrine needs, in one dependency:
//!
//! - the bindings of the `peregrine:rules` WIT contract,
//! - [`Event`], a typed view of a Kubernetes audit event with lazily parsed
//!   request and response objects ([`k8s`]),
//! - builders for rule metadata ([`rule`]) and alerts ([`Alert`]),
//! - [`export_rules!`], which turns a [`RuleModule`] into a component export,
//! - [`state`] and [`log`], the host services a rule may use,
//! - [`testing`], to unit-test a module natively with `cargo test` on fixture
//!   JSON, with the same event conversion and prefilter as the host.
//!
//! ```
//! use peregrine_sdk::{rule, Alert, Event, ModuleInfo, Priority, RuleModule};
//!
//! #[derive(Default)]
//! struct AnonymousAccess;
//!
//! impl RuleModule for AnonymousAccess {
//!     fn metadata(&self) -> ModuleInfo {
//!         peregrine_sdk::module("anonymous-access", "1.0.0")
//!             .rule(rule("anonymous-allowed", "Anonymous Request Allowed", Priority::Warning)
//!                 .stages(["ResponseComplete"]))
//!             .build()
//!     }
//!
//!     fn evaluate(&self, event: &Event) -> Vec<Alert> {
//!         if event.user_name() == "system:anonymous" && event.response_code() == Some(200) {
//!             return vec![Alert::new("anonymous-allowed").output("anonymous request allowed")];
//!         }
//!         Vec::new()
//!     }
//! }
//!
//! peregrine_sdk::export_rules!(AnonymousAccess);
//! ```

pub mod audit;
mod event;
pub mod k8s;
pub mod log;
pub mod rule;
pub mod state;
pub mod testing;

/// Bindings generated from `wit/rules.wit`. Rule authors rarely need these
/// directly: the crate root re-exports the types.
#[allow(missing_docs, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "rule-module",
        pub_export_macro: true,
        export_macro_name: "__peregrine_export_world",
        default_bindings_module: "::peregrine_sdk::bindings",
    });
}

pub use bindings::peregrine::rules::types::{
    Alert, ModuleInfo, ObjectRef, Prefilter, Priority, ResponseStatus, RuleInfo, UserInfo,
};
pub use event::Event;
pub use rule::{module, rule};

/// The raw event record as it crosses the WIT boundary. [`Event`] wraps it.
pub type RawEvent = bindings::peregrine::rules::types::Event;

/// A rule module: a set of rules with shared configuration.
///
/// The host creates a fresh instance of the module for each batch of events,
/// calls [`configure`](RuleModule::configure) with the operator's settings,
/// then [`evaluate`](RuleModule::evaluate) for every event of the batch that
/// passes the module's prefilter.
pub trait RuleModule: Default {
    /// Describes the module and its rules. Called after `configure`, so the
    /// `enabled` flag of each rule can follow the configuration.
    fn metadata(&self) -> ModuleInfo;

    /// Validates and applies the configuration (JSON text, `{}` when none was
    /// given). Return a message that tells the operator what to fix.
    fn configure(&mut self, config: &str) -> Result<(), String> {
        match serde_json::from_str::<serde_json::Value>(config) {
            Ok(serde_json::Value::Object(map)) if map.is_empty() => Ok(()),
            Ok(serde_json::Value::Null) => Ok(()),
            Ok(_) => Err("this module takes no configuration".to_string()),
            Err(e) => Err(format!("configuration is not valid JSON: {e}")),
        }
    }

    /// Evaluates one event.
    fn evaluate(&self, event: &Event) -> Vec<Alert>;
}

/// Parses a module configuration into `T`, with a message that names the
/// offending path. `{}` and `null` become `T::default()`.
pub fn parse_config<T>(config: &str) -> Result<T, String>
where
    T: serde::de::DeserializeOwned + Default,
{
    let trimmed = config.trim();
    if trimmed.is_empty() || trimmed == "null" {
        return Ok(T::default());
    }
    serde_json::from_str(trimmed).map_err(|e| format!("invalid configuration: {e}"))
}

/// Turns the RuleModule implementation `$t` into the component's exports.
///
/// Only emitted for `wasm32` targets, so the same crate also builds as an
/// ordinary library for native tests and benchmarks without two modules'
/// export symbols clashing.
#[macro_export]
macro_rules! export_rules {
    ($t:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use ::std::cell::RefCell;

            ::std::thread_local! {
                static MODULE: RefCell<$t> = RefCell::new(<$t as ::core::default::Default>::default());
            }

            struct PeregrineExport;

            impl $crate::bindings::Guest for PeregrineExport {
                fn metadata() -> $crate::ModuleInfo {
                    MODULE.with(|m| $crate::RuleModule::metadata(&*m.borrow()))
                }

                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    MODULE.with(|m| $crate::RuleModule::configure(&mut *m.borrow_mut(), &config))
                }

                fn evaluate(event: $crate::RawEvent) -> ::std::vec::Vec<$crate::Alert> {
                    let event = $crate::Event::new(event);
                    MODULE.with(|m| $crate::RuleModule::evaluate(&*m.borrow(), &event))
                }
            }

            $crate::bindings::__peregrine_export_world!(PeregrineExport);
        };
    };
}

impl Priority {
    /// Falco's spelling of the priority, as it appears in alerts.
    pub fn as_falco_str(self) -> &'static str {
        match self {
            Priority::Emergency => "Emergency",
            Priority::Alert => "Alert",
            Priority::Critical => "Critical",
            Priority::Error => "Error",
            Priority::Warning => "Warning",
            Priority::Notice => "Notice",
            Priority::Informational => "Informational",
            Priority::Debug => "Debug",
        }
    }
}

impl Alert {
    /// Starts an alert for the rule with id `rule_id`.
    pub fn new(rule_id: impl Into<String>) -> Self {
        Alert {
            rule_id: rule_id.into(),
            priority: None,
            output: String::new(),
            fields: Vec::new(),
            tags: Vec::new(),
        }
    }

    /// Sets the human-readable output line.
    pub fn output(mut self, output: impl Into<String>) -> Self {
        self.output = output.into();
        self
    }

    /// Adds an output field. `None` records a field the event does not have
    /// (Falco prints it as `<NA>`).
    pub fn field<V: Into<FieldValue>>(mut self, key: impl Into<String>, value: V) -> Self {
        self.fields.push((key.into(), value.into().0));
        self
    }

    /// Adds a tag on top of the rule's own tags.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Overrides the rule's priority for this alert.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = Some(priority);
        self
    }

    /// The value of the output field `key`, if it was set and not `None`.
    pub fn field_value(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }
}

/// A value for [`Alert::field`]: strings, optional strings, numbers, booleans
/// and string lists (rendered as Falco renders lists: `(a,b)`).
pub struct FieldValue(Option<String>);

impl From<&str> for FieldValue {
    fn from(v: &str) -> Self {
        FieldValue(Some(v.to_string()))
    }
}
impl From<String> for FieldValue {
    fn from(v: String) -> Self {
        FieldValue(Some(v))
    }
}
impl From<&String> for FieldValue {
    fn from(v: &String) -> Self {
        FieldValue(Some(v.clone()))
    }
}
impl From<Option<&str>> for FieldValue {
    fn from(v: Option<&str>) -> Self {
        FieldValue(v.map(str::to_string))
    }
}
impl From<Option<String>> for FieldValue {
    fn from(v: Option<String>) -> Self {
        FieldValue(v)
    }
}
impl From<Option<&String>> for FieldValue {
    fn from(v: Option<&String>) -> Self {
        FieldValue(v.cloned())
    }
}
impl From<bool> for FieldValue {
    fn from(v: bool) -> Self {
        FieldValue(Some(v.to_string()))
    }
}
impl From<Option<bool>> for FieldValue {
    fn from(v: Option<bool>) -> Self {
        FieldValue(v.map(|b| b.to_string()))
    }
}
impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue(Some(v.to_string()))
    }
}
impl From<Option<i32>> for FieldValue {
    fn from(v: Option<i32>) -> Self {
        FieldValue(v.map(|n| n.to_string()))
    }
}
impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue(Some(v.to_string()))
    }
}
impl From<u64> for FieldValue {
    fn from(v: u64) -> Self {
        FieldValue(Some(v.to_string()))
    }
}
impl<S: AsRef<str>> From<&[S]> for FieldValue {
    fn from(v: &[S]) -> Self {
        FieldValue(Some(format_list(v)))
    }
}
impl<S: AsRef<str>> From<Vec<S>> for FieldValue {
    fn from(v: Vec<S>) -> Self {
        FieldValue(Some(format_list(&v)))
    }
}

/// Renders a list the way Falco renders list-valued fields: `(a,b,c)`.
pub fn format_list<S: AsRef<str>>(items: &[S]) -> String {
    let mut out = String::from("(");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out.push(')');
    out
}

/// Falco prints a missing field as `<NA>`; use this in output lines.
pub fn na(value: Option<&str>) -> &str {
    value.unwrap_or("<NA>")
}
