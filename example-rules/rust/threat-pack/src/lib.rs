//! Peregrine's threat pack: Kubernetes audit detections that Falco's
//! k8s-audit rules do not have. Exec payloads (reverse shells, credential
//! theft, `kubectl cp`), risky workload templates named after the person who
//! asked, RBAC abuse, and detections that count and correlate in event time
//! through the host's `state` interface (bursts, storms, sequences, a
//! per-person baseline of clients).
//!
//! Every rule is described in [`catalog::RULES`] and in
//! `docs/detections.md`. The noise rules every rule follows:
//! - the control plane's own identities (`control_plane_users`,
//!   `control_plane_groups`) are never looked at, except by the one rule
//!   about those identities themselves (`system-principal-from-public-ip`);
//! - a rule whose meaning is "it happened" counts only requests that
//!   succeeded (authorization decision allow, when the annotation is there,
//!   and a response code below 400);
//! - `exceptions` mute a rule for matching users, groups, namespaces, names,
//!   source IPs or user agents, before any state is touched.

pub mod catalog;
pub mod command;
pub mod config;
mod exec;
mod identity;
mod rbac;
mod resources;
mod stateful;
mod workloads;

use peregrine_sdk::{Alert, Event, ModuleInfo, RuleModule, na, rule};

use catalog::{RULES, RuleDef};
use config::{Config, Settings, any_glob};

pub struct ThreatPack {
    config: Config,
    settings: Vec<Settings>,
    /// Per rule, the indices of the exceptions that apply to it.
    exceptions: Vec<Vec<usize>>,
    control_plane: Vec<String>,
}

impl Default for ThreatPack {
    fn default() -> Self {
        ThreatPack::with_config(Config::default())
    }
}

impl ThreatPack {
    fn with_config(config: Config) -> Self {
        let settings = (0..RULES.len()).map(|i| config.settings(i)).collect();
        let exceptions = RULES
            .iter()
            .map(|def| {
                config
                    .exceptions
                    .iter()
                    .enumerate()
                    .filter(|(_, e)| {
                        e.rules
                            .as_ref()
                            .is_none_or(|ids| ids.iter().any(|id| id == def.id))
                    })
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        let mut control_plane = config.control_plane_users.clone();
        control_plane.extend(config.extra_control_plane_users.iter().cloned());
        ThreatPack {
            config,
            settings,
            exceptions,
            control_plane,
        }
    }

    /// The pack configured from JSON text, as `configure` would.
    pub fn from_config_json(text: &str) -> Result<Self, String> {
        Ok(ThreatPack::with_config(Config::parse(text)?))
    }

    fn is_control_plane(&self, event: &Event) -> bool {
        any_glob(&self.control_plane, event.user_name())
            || event
                .user_groups()
                .iter()
                .any(|g| any_glob(&self.config.control_plane_groups, g))
    }

    fn excepted(&self, index: usize, event: &Event) -> bool {
        let matches = |patterns: &Option<Vec<String>>, value: Option<&str>| {
            patterns
                .as_ref()
                .is_none_or(|p| value.is_some_and(|v| any_glob(p, v)))
        };
        self.exceptions[index].iter().any(|&i| {
            let e = &self.config.exceptions[i];
            matches(&e.users, Some(event.user_name()))
                && e.groups
                    .as_ref()
                    .is_none_or(|p| event.user_groups().iter().any(|g| any_glob(p, g)))
                && matches(&e.namespaces, event.namespace())
                && matches(&e.names, event.name())
                && e.source_ips
                    .as_ref()
                    .is_none_or(|p| event.source_ips().iter().any(|ip| any_glob(p, ip)))
                && matches(&e.user_agents, event.user_agent())
        })
    }
}

/// Whether the request succeeded: an authorization decision other than
/// allow, or a response code of 400 or more, means it did not happen.
pub fn succeeded(event: &Event) -> bool {
    event.auth_decision().is_none_or(|d| d == "allow")
        && event.response_code().is_none_or(|c| c < 400)
}

fn admits(def: &RuleDef, event: &Event) -> bool {
    fn one(list: &[&str], value: Option<&str>) -> bool {
        list.is_empty() || value.is_some_and(|v| list.contains(&v))
    }
    one(def.verbs, Some(event.verb()))
        && one(def.resources, event.resource())
        && one(def.subresources, event.subresource())
        && one(def.stages, Some(event.stage()))
}

/// What a rule's check sees: the event, the pack's configuration, the rule's
/// own settings, and the cluster its state is kept for.
pub struct Ctx<'a> {
    pub event: &'a Event,
    pub config: &'a Config,
    pub settings: Settings,
    pub rule_id: &'static str,
    /// Empty when the event names no cluster (state is per tenant then).
    pub cluster: &'a str,
}

impl Ctx<'_> {
    /// A state key for this rule, cluster and the given parts.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut key = format!("{}|{}", self.rule_id, self.cluster);
        for p in parts {
            key.push('|');
            key.push_str(p);
        }
        key
    }

    /// The alert of this rule for this event, with the fields every alert of
    /// the pack carries. The request URI is left out on purpose: an exec's
    /// URI carries its command line, which rules print redacted.
    pub fn alert(&self, what: &str) -> Alert {
        let e = self.event;
        let ip = e.source_ips().first().map(String::as_str);
        let mut alert = Alert::new(self.rule_id)
            .output(format!(
                "{what} (user={} verb={} resource={}{} ns={} name={} sourceip={} useragent={})",
                e.user_name(),
                e.verb(),
                na(e.resource()),
                e.subresource().map(|s| format!("/{s}")).unwrap_or_default(),
                na(e.namespace()),
                na(e.name()),
                na(ip),
                na(e.user_agent()),
            ))
            .field("ka.user.name", e.user_name())
            .field("ka.user.groups", e.user_groups())
            .field("ka.verb", e.verb())
            .field("ka.target.resource", e.resource())
            .field("ka.target.subresource", e.subresource())
            .field("ka.target.namespace", e.namespace())
            .field("ka.target.name", e.name())
            .field("ka.sourceips", e.source_ips())
            .field("ka.useragent", e.user_agent())
            .field("ka.response.code", e.response_code());
        if !self.cluster.is_empty() {
            alert = alert.field("peregrine.cluster", self.cluster);
        }
        alert
    }

    /// For rules that see both stages of a long-running request: true the
    /// first time this rule fires for the request's audit id.
    pub fn first_for_request(&self) -> bool {
        peregrine_sdk::state::first_seen(
            &self.key(&["once", &self.event.audit_id]),
            86_400,
            self.event.time_unix_nanos(),
        )
    }
}

impl RuleModule for ThreatPack {
    fn metadata(&self) -> ModuleInfo {
        let mut module = peregrine_sdk::module("k8s-threats", env!("CARGO_PKG_VERSION"));
        for (def, s) in RULES.iter().zip(&self.settings) {
            module = module.rule(
                rule(def.id, def.name, def.priority)
                    .description(def.desc)
                    .tags(def.tags.iter().copied())
                    .verbs(def.verbs.iter().copied())
                    .resources(def.resources.iter().copied())
                    .subresources(def.subresources.iter().copied())
                    .stages(def.stages.iter().copied())
                    .enabled(s.enabled),
            );
        }
        module.needs_request_object().build()
    }

    fn configure(&mut self, config: &str) -> Result<(), String> {
        *self = ThreatPack::from_config_json(config)?;
        Ok(())
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        let mut alerts = Vec::new();
        // Computed once per event, on the first rule that admits it.
        let mut control_plane: Option<bool> = None;
        let success = succeeded(event);
        let cluster = self
            .config
            .cluster_annotation
            .as_deref()
            .and_then(|a| event.annotation(a))
            .unwrap_or("");
        for (index, def) in RULES.iter().enumerate() {
            let settings = self.settings[index];
            if !settings.enabled || !admits(def, event) || (def.success_only && !success) {
                continue;
            }
            if (!def.sees_control_plane
                && *control_plane.get_or_insert_with(|| self.is_control_plane(event)))
                || self.excepted(index, event)
            {
                continue;
            }
            let ctx = Ctx {
                event,
                config: &self.config,
                settings,
                rule_id: def.id,
                cluster,
            };
            if let Some(alert) = (def.check)(&ctx) {
                alerts.push(alert);
            }
        }
        alerts
    }
}

peregrine_sdk::export_rules!(ThreatPack);
