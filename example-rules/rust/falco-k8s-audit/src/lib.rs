//! Falco's k8s-audit ruleset as a Peregrine rule pack.
//!
//! The 48 rules of `k8s_audit_rules.yaml` as released with the k8saudit
//! plugin v0.18.0 (falcosecurity/plugins, tag `plugins/k8saudit/v0.18.0`)
//! keep Falco's names, priorities, tags, descriptions and output formats,
//! and their conditions follow the plugin's field semantics exactly
//! (see [`fields`]). Falco's lists, and the macros users edit to turn rules
//! on or off, are the pack's configuration (see [`config`] and
//! `docs/falco-rules.md`).
//!
//! `evaluate` returns the alert of every matching rule, in Falco's file
//! order. With Falco's `rule_matching: first` the host keeps the alert whose
//! rule comes first in the metadata.

pub mod config;
pub mod fields;
pub mod json;
pub mod rules;

use peregrine_sdk::{Alert, Event, ModuleInfo, RuleModule, rule};

use config::{Config, ListId};
use fields::Ctx;
use rules::{RULES, Stage};

pub use config::LISTS;
pub use rules::RuleDef;

pub struct FalcoK8sAudit {
    config: Config,
    /// Per rule of `RULES`, whether the configuration runs it.
    enabled: Vec<bool>,
}

impl Default for FalcoK8sAudit {
    fn default() -> Self {
        FalcoK8sAudit::with_config(Config::default())
    }
}

impl FalcoK8sAudit {
    fn with_config(config: Config) -> Self {
        let enabled = (0..RULES.len()).map(|i| config.rule_enabled(i)).collect();
        FalcoK8sAudit { config, enabled }
    }

    /// The pack configured from JSON text, as `configure` would.
    pub fn from_config_json(text: &str) -> Result<Self, String> {
        Ok(FalcoK8sAudit::with_config(Config::parse(text)?))
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn excepted(&self, index: usize, x: &Ctx) -> bool {
        self.config.exceptions.iter().any(|e| {
            e.rules.as_ref().is_none_or(|r| r.contains(&index))
                && e.users
                    .as_ref()
                    .is_none_or(|s| x.user_name().is_some_and(|u| s.contains(u)))
                && e.namespaces
                    .as_ref()
                    .is_none_or(|s| x.namespace().is_some_and(|n| s.contains(n)))
                && e.names
                    .as_ref()
                    .is_none_or(|s| x.name().is_some_and(|n| s.contains(n)))
                && e.images.as_ref().is_none_or(|s| {
                    x.image_repositories()
                        .is_some_and(|repos| repos.iter().all(|r| s.contains(r)))
                })
        })
    }
}

impl RuleModule for FalcoK8sAudit {
    fn metadata(&self) -> ModuleInfo {
        let stages: Vec<String> = {
            let mut s: Vec<String> = self
                .config
                .list(ListId::K8sAuditStages)
                .iter()
                .cloned()
                .collect();
            s.sort();
            s
        };
        let mut module = peregrine_sdk::module("falco-k8s-audit", env!("CARGO_PKG_VERSION"));
        for (def, &enabled) in RULES.iter().zip(&self.enabled) {
            let mut r = rule(def.id, def.name, def.priority)
                .description(def.desc)
                .tags(def.tags.iter().copied())
                .verbs(def.verbs.iter().copied())
                .resources(def.resources.iter().copied())
                .subresources(def.subresources.iter().copied())
                .enabled(enabled);
            r = match def.stage {
                Stage::Kevt => r.stages(stages.iter().cloned()),
                Stage::Started => r.stages(["ResponseStarted"]),
                Stage::Any => r,
            };
            module = module.rule(r);
        }
        module
            .needs_request_object()
            .needs_response_object()
            .build()
    }

    fn configure(&mut self, config: &str) -> Result<(), String> {
        *self = FalcoK8sAudit::from_config_json(config)?;
        Ok(())
    }

    fn evaluate(&self, event: &Event) -> Vec<Alert> {
        let x = Ctx::new(event);
        let mut alerts = Vec::new();
        for (index, def) in RULES.iter().enumerate() {
            if !self.enabled[index]
                || !(def.condition)(&self.config, &x)
                || self.excepted(index, &x)
            {
                continue;
            }
            let (output, fields) = fields::render_output(def.output, &x);
            let mut alert = Alert::new(def.id).output(output);
            for (key, value) in fields {
                alert = alert.field(key, value);
            }
            alerts.push(alert);
        }
        alerts
    }
}

peregrine_sdk::export_rules!(FalcoK8sAudit);
