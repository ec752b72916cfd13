//! The Falco pack compiled natively into this binary, driven exactly as the
//! evaluation stage drives its Wasm build, so the two can be compared.
//!
//! Per batch: one fresh, configured module value (the Wasm side: one fresh,
//! configured instance). Per event: the rules' prefilters (the same
//! `Prefilter::admits` on the same metadata, counted per rule), the event
//! record built with `AuditEvent::to_wit` (raw objects included, as the pack
//! asks for them), `evaluate`, then the alerts checked against the metadata,
//! filtered by `rule_matching` and turned into host alerts. What only the
//! Wasm side does is what the sandbox costs: instantiation, lowering and
//! lifting across the component boundary, epoch deadlines and output caps,
//! and the per-module metrics and counters of the evaluation stage.

use std::collections::HashMap;
use std::sync::Arc;

use falco_k8s_audit::FalcoK8sAudit;
use peregrine_sdk::audit::AuditEvent;
use peregrine_sdk::{Event, ModuleInfo, RuleModule};

use crate::alert::Alert;
use crate::alert::{AlertOrigin, accept_alerts};
use crate::config::{PeregrineConfig, RuleMatching};

/// The pack's file name as `make rules` builds it.
pub(crate) const PACK_FILE: &str = "falco_k8s_audit.wasm";
/// Its module key (configuration section).
pub(crate) const PACK_KEY: &str = "falco_k8s_audit";

pub(crate) struct NativePack {
    info: ModuleInfo,
    rule_index: HashMap<String, usize>,
    config_json: String,
    rule_matching: RuleMatching,
    hostname: Arc<str>,
    module_key: String,
    digest: String,
}

impl NativePack {
    /// The pack with the module configuration `config` gives `falco_k8s_audit`.
    pub fn new(config: &PeregrineConfig, digest: &str) -> anyhow::Result<Self> {
        let config_json = config.module_config_json(PACK_KEY);
        let mut probe = FalcoK8sAudit::default();
        probe
            .configure(&config_json)
            .map_err(|e| anyhow::anyhow!("the Falco pack rejects its configuration: {e}"))?;
        let info = probe.metadata();
        let rule_index = info
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        Ok(NativePack {
            info,
            rule_index,
            config_json,
            rule_matching: config.rules.rule_matching,
            hostname: "bench".into(),
            module_key: PACK_KEY.to_string(),
            digest: digest.to_string(),
        })
    }

    fn fresh(&self) -> FalcoK8sAudit {
        let mut m = FalcoK8sAudit::default();
        m.configure(&self.config_json)
            .expect("the configuration was accepted when the pack was set up");
        m
    }

    /// Evaluates a batch; returns its alerts in event order.
    pub fn evaluate_batch(&self, tenant: &Arc<str>, events: &[AuditEvent]) -> Vec<Alert> {
        let mut module: Option<FalcoK8sAudit> = None;
        let mut admitted_per_rule: HashMap<&str, u64> = HashMap::new();
        let mut out = Vec::new();
        let (req, resp) = (
            self.info.needs_request_object,
            self.info.needs_response_object,
        );
        for ev in events {
            let mut admitted = false;
            for r in self.info.rules.iter().filter(|r| {
                r.enabled
                    && r.prefilter
                        .admits(&ev.verb, ev.resource(), ev.subresource(), &ev.stage)
            }) {
                admitted = true;
                *admitted_per_rule.entry(r.id.as_str()).or_default() += 1;
            }
            if !admitted {
                continue;
            }
            let m = module.get_or_insert_with(|| self.fresh());
            let event = Event::new(ev.to_wit(tenant, req, resp));
            let alerts = m.evaluate(&event);
            self.accept(tenant, ev, alerts, &mut out);
        }
        std::hint::black_box(&admitted_per_rule);
        out
    }

    fn accept(
        &self,
        tenant: &Arc<str>,
        ev: &AuditEvent,
        alerts: Vec<peregrine_sdk::Alert>,
        out: &mut Vec<Alert>,
    ) {
        let origin = AlertOrigin {
            module: &self.module_key,
            digest: &self.digest,
            tenant,
            cluster: tenant,
            hostname: &self.hostname,
        };
        let lookup = |id: &str| self.rule_index.get(id).map(|&i| (i, &self.info.rules[i]));
        out.extend(accept_alerts(lookup, self.rule_matching, &origin, ev, alerts).alerts);
    }
}
