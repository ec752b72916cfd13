//! The evaluation stage: worker threads take batches of events from the
//! [queue](crate::queue) and run every module that serves the batch's tenant
//! over them; the [alert stage](crate::alert) turns what the modules return
//! into alerts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use peregrine_sdk::audit::AuditEvent;

use crate::alert::{
    Alert, AlertOrigin, AlertSink, MODULE_QUARANTINED, Priority, RULE_ERROR, RULE_ID_FIELD,
    RuleMatching, accept_alerts, event_time,
};
use crate::durable::Durable;
use crate::engine::{CallError, ModuleInstance, PreparedEvent, WasmEngine};
use crate::health::Quarantine;
use crate::queue::BatchQueue;
use crate::rules::{LoadedModule, RuleSet, StateStore};

/// A rule's share of one batch's work.
#[derive(Default)]
struct RuleTally {
    evaluations: u64,
    errors: u64,
    nanos: f64,
}

/// Runs the live modules over batches.
pub struct Evaluator {
    pub engine: Arc<WasmEngine>,
    pub rules: Arc<ArcSwap<RuleSet>>,
    pub states: Arc<StateStore>,
    pub rule_matching: RuleMatching,
    pub hostname: Arc<str>,
    /// Events evaluated with one instance of each module.
    pub batch_events: usize,
}

impl Evaluator {
    /// [`Evaluator::evaluate_in`] for events that name no cluster: the
    /// tenant's id stands for it, as for a tenant without `cluster`.
    pub fn evaluate_batch(&self, tenant: &Arc<str>, events: &[AuditEvent]) -> Vec<Alert> {
        self.evaluate_in(tenant, tenant, events)
    }

    /// Evaluates a batch of `cluster`'s events and returns its alerts in
    /// event order. Every event of the batch sees the same version of every
    /// module; stateful rules count per tenant and cluster.
    #[tracing::instrument(name = "evaluate", skip_all, fields(tenant = %tenant, cluster = %cluster, events = events.len()))]
    pub fn evaluate_in(
        &self,
        tenant: &Arc<str>,
        cluster: &Arc<str>,
        events: &[AuditEvent],
    ) -> Vec<Alert> {
        let at = Place { tenant, cluster };
        let rules = self.rules.load_full();
        let mut prepared: Vec<Option<PreparedEvent>> = (0..events.len()).map(|_| None).collect();
        let mut per_event: Vec<Vec<Alert>> = vec![Vec::new(); events.len()];
        let now = Instant::now();
        for module in rules.for_tenant(tenant) {
            let (off, lifted) = module.health.is_quarantined(tenant, now);
            if let Some(q) = lifted {
                tracing::warn!(module = %module.label, tenant = %tenant, since = %q.since,
                    "quarantine lifted: the module evaluates this tenant's events again and is judged afresh");
                metrics::gauge!("peregrine_module_quarantined", "module" => module.key.clone(), "tenant" => tenant.to_string())
                    .set(0.0);
            }
            if off {
                metrics::counter!("peregrine_quarantine_skipped_events_total", "module" => module.key.clone())
                    .increment(events.len() as u64);
                continue;
            }
            self.run_module(module, &at, events, &mut prepared, &mut per_event);
        }
        metrics::counter!("peregrine_events_evaluated_total").increment(events.len() as u64);
        per_event.into_iter().flatten().collect()
    }

    fn run_module<'e>(
        &self,
        module: &LoadedModule,
        at: &Place<'e>,
        events: &'e [AuditEvent],
        prepared: &mut [Option<PreparedEvent<'e>>],
        per_event: &mut [Vec<Alert>],
    ) {
        let tenant = at.tenant;
        let mut instance: Option<ModuleInstance> = None;
        // Per rule over this batch: events admitted, failed calls, and call
        // time. One call evaluates every rule of the module, so a call's time
        // is shared equally among the rules whose prefilter admitted the event.
        let mut tally: HashMap<&str, RuleTally> = HashMap::new();
        let mut admitted: Vec<&str> = Vec::new();
        // Successful calls not yet told to the module's health: it is told
        // at a failure and at the end of the batch, so a healthy batch takes
        // its lock once.
        let mut succeeded = 0u64;
        let (mut calls, mut call_nanos) = (0u64, 0u64);
        for (i, ev) in events.iter().enumerate() {
            admitted.clear();
            admitted.extend(module.admitting_rules(ev).map(|r| r.id.as_str()));
            if admitted.is_empty() {
                continue;
            }
            for id in &admitted {
                tally.entry(id).or_default().evaluations += 1;
            }
            let inst = match &mut instance {
                Some(inst) => inst,
                None => match self.fresh_instance(module, at) {
                    Ok(inst) => instance.insert(inst),
                    Err(e) => {
                        for id in &admitted {
                            tally.entry(id).or_default().errors += 1;
                        }
                        if self.failed(module, at, ev, &e, &mut succeeded, &mut per_event[i]) {
                            break;
                        }
                        continue;
                    }
                },
            };
            let event = prepared[i].get_or_insert_with(|| PreparedEvent::new(ev, tenant));
            let started = Instant::now();
            let result = inst.evaluate(event, module.needs_raw_objects());
            let nanos = started.elapsed().as_nanos() as u64;
            module.stats.evaluations.fetch_add(1, Ordering::Relaxed);
            module.stats.eval_nanos.fetch_add(nanos, Ordering::Relaxed);
            calls += 1;
            call_nanos += nanos;
            metrics::histogram!("peregrine_rule_eval_seconds", "module" => module.key.clone())
                .record(nanos as f64 / 1e9);
            let share = nanos as f64 / admitted.len() as f64;
            for id in &admitted {
                let t = tally.entry(id).or_default();
                t.nanos += share;
                t.errors += u64::from(result.is_err());
            }
            match result {
                Ok(evaluated) => {
                    succeeded += 1;
                    if !evaluated.cut.is_empty() {
                        metrics::counter!("peregrine_alerts_truncated_total", "module" => module.key.clone())
                            .increment(1);
                        tracing::debug!(module = %module.label, audit_id = %ev.audit_id,
                            alerts_cut = evaluated.cut.alerts, bytes_cut = evaluated.cut.bytes,
                            "alert output over the sandbox limits was cut");
                    }
                    self.accept(module, at, ev, evaluated.alerts, &mut per_event[i]);
                }
                Err(e) => {
                    // A failed call poisons the store: start over with a fresh one.
                    instance = None;
                    if self.failed(module, at, ev, &e, &mut succeeded, &mut per_event[i]) {
                        break;
                    }
                }
            }
        }
        module
            .health
            .record_successes(tenant, succeeded, Instant::now());
        if !tally.is_empty() {
            let mut rules = module.stats.rules.lock().unwrap_or_else(|p| p.into_inner());
            let mut tenants = module.stats.tenant();
            let own = tenants.entry(tenant.clone()).or_default();
            own.evaluations += calls;
            own.eval_nanos += call_nanos;
            for (id, t) in tally {
                metrics::counter!("peregrine_rule_evaluations_total", "module" => module.key.clone(), "rule" => id.to_string())
                    .increment(t.evaluations);
                for c in [
                    rules.entry(id.to_string()).or_default(),
                    own.rules.entry(id.to_string()).or_default(),
                ] {
                    c.evaluations += t.evaluations;
                    c.errors += t.errors;
                    c.eval_nanos += t.nanos as u64;
                }
            }
        }
    }

    /// A failed call on `ev`: its rule-error alert, and the module's health
    /// told. Returns whether that quarantined the module for `tenant` (with
    /// the Critical alert that says so added), so the batch stops calling it.
    fn failed(
        &self,
        module: &LoadedModule,
        at: &Place,
        ev: &AuditEvent,
        e: &CallError,
        succeeded: &mut u64,
        out: &mut Vec<Alert>,
    ) -> bool {
        let tenant = at.tenant;
        out.push(self.rule_error(module, at, ev, e));
        let now = Instant::now();
        module
            .health
            .record_successes(tenant, std::mem::take(succeeded), now);
        match module
            .health
            .record_failure(tenant, &ev.audit_id, &e.to_string(), now)
        {
            Some(q) => {
                out.push(self.quarantined(module, at, ev, &q));
                true
            }
            None => false,
        }
    }

    /// The Critical alert that says a module stopped evaluating a tenant's
    /// events: detection being off must never go unseen.
    fn quarantined(
        &self,
        module: &LoadedModule,
        at: &Place,
        ev: &AuditEvent,
        q: &Quarantine,
    ) -> Alert {
        let until = match &q.retry_at {
            Some(at) => {
                format!("until {at}, when it is tried again, or until a new version is loaded")
            }
            None => "until a new version is loaded".to_string(),
        };
        tracing::error!(
            module = %module.label,
            tenant = %q.tenant,
            failed_events = q.failed_events,
            failed_calls = q.failed_calls,
            calls = q.calls,
            span_secs = q.span_secs,
            "module quarantined for the tenant: its rules do not evaluate the tenant's events {until}; last error: {}",
            q.last_error
        );
        metrics::counter!("peregrine_module_quarantines_total", "module" => module.key.clone())
            .increment(1);
        metrics::gauge!("peregrine_module_quarantined", "module" => module.key.clone(), "tenant" => q.tenant.to_string())
            .set(1.0);
        let rules: Vec<&str> = module.info.rules.iter().map(|r| r.id.as_str()).collect();
        Alert {
            time_unix_nanos: event_time(ev),
            rule: MODULE_QUARANTINED.to_string(),
            rule_id: "module-quarantined".to_string(),
            priority: Priority::Critical,
            output: format!(
                "Rule module {} is quarantined for tenant {}: it failed on {} distinct events over {} s \
                 ({} of {} calls failed), so its rules ({}) do not evaluate this tenant's events {until}. \
                 Last error: {}",
                module.key,
                q.tenant,
                q.failed_events,
                q.span_secs,
                q.failed_calls,
                q.calls,
                rules.join(", "),
                q.last_error
            ),
            tags: vec!["peregrine".into(), "quarantine".into()],
            fields: vec![
                (RULE_ID_FIELD.into(), Some("module-quarantined".into())),
                (
                    "peregrine.failed_events".into(),
                    Some(q.failed_events.to_string()),
                ),
                (
                    "peregrine.failed_calls".into(),
                    Some(q.failed_calls.to_string()),
                ),
                ("peregrine.calls".into(), Some(q.calls.to_string())),
                ("peregrine.error".into(), Some(q.last_error.clone())),
                ("peregrine.retry_at".into(), q.retry_at.clone()),
            ],
            tenant: q.tenant.clone(),
            cluster: at.cluster.clone(),
            module: module.key.clone(),
            module_digest: module.digest.clone(),
            audit_id: ev.audit_id.clone(),
            hostname: self.hostname.clone(),
        }
    }

    fn fresh_instance(
        &self,
        module: &LoadedModule,
        at: &Place,
    ) -> Result<ModuleInstance, CallError> {
        let state = self
            .states
            .table_in(at.tenant, at.cluster, &module.scope, &module.key);
        let mut inst = self.engine.instantiate(
            &module.compiled,
            module.label.clone(),
            module.limits,
            state,
        )?;
        inst.configure(&module.config_json)?.map_err(|msg| {
            CallError::Trap(format!("configure failed on a fresh instance: {msg}"))
        })?;
        Ok(inst)
    }

    /// Turns a module's alerts into host alerts (see [`accept_alerts`]),
    /// counts them, and reports undeclared rule ids as rule errors.
    fn accept(
        &self,
        module: &LoadedModule,
        at: &Place,
        ev: &AuditEvent,
        alerts: Vec<peregrine_sdk::Alert>,
        out: &mut Vec<Alert>,
    ) {
        let origin = AlertOrigin {
            module: &module.key,
            digest: &module.digest,
            tenant: at.tenant,
            cluster: at.cluster,
            hostname: &self.hostname,
        };
        let accepted = accept_alerts(
            |id| module.rule(id),
            self.rule_matching,
            &origin,
            ev,
            alerts,
        );
        for id in &accepted.undeclared {
            let e = CallError::Trap(format!("returned an alert for undeclared rule id `{id}`"));
            out.push(self.rule_error(module, at, ev, &e));
        }
        if accepted.disabled > 0 {
            metrics::counter!("peregrine_alerts_dropped_total", "reason" => "rule_disabled")
                .increment(accepted.disabled as u64);
        }
        if !accepted.alerts.is_empty() {
            let mut rules = module.stats.rules.lock().unwrap_or_else(|p| p.into_inner());
            let mut tenants = module.stats.tenant();
            let own = tenants.entry(at.tenant.clone()).or_default();
            for a in &accepted.alerts {
                rules.entry(a.rule_id.clone()).or_default().alerts += 1;
                own.rules.entry(a.rule_id.clone()).or_default().alerts += 1;
                metrics::counter!("peregrine_alerts_total", "module" => module.key.clone(), "rule" => a.rule_id.clone())
                    .increment(1);
            }
        }
        out.extend(accepted.alerts);
    }

    fn rule_error(
        &self,
        module: &LoadedModule,
        at: &Place,
        ev: &AuditEvent,
        e: &CallError,
    ) -> Alert {
        let total = module.stats.errors.fetch_add(1, Ordering::Relaxed) + 1;
        module
            .stats
            .tenant()
            .entry(at.tenant.clone())
            .or_default()
            .errors += 1;
        metrics::counter!("peregrine_rule_errors_total", "module" => module.key.clone(), "kind" => e.kind())
            .increment(1);
        tracing::warn!(module = %module.label, audit_id = %ev.audit_id, errors = total, "rule module failed: {e}");
        Alert {
            time_unix_nanos: event_time(ev),
            rule: RULE_ERROR.to_string(),
            rule_id: "rule-error".to_string(),
            priority: Priority::Error,
            output: format!(
                "Rule module {} failed on event {}: {e}",
                module.key, ev.audit_id
            ),
            tags: vec!["peregrine".into(), "rule_error".into()],
            fields: vec![
                (RULE_ID_FIELD.into(), Some("rule-error".into())),
                ("peregrine.error_kind".into(), Some(e.kind().to_string())),
                ("peregrine.error".into(), Some(e.to_string())),
                ("ka.verb".into(), Some(ev.verb.clone())),
                (
                    "ka.target.resource".into(),
                    ev.resource().map(str::to_string),
                ),
            ],
            tenant: at.tenant.clone(),
            cluster: at.cluster.clone(),
            module: module.key.clone(),
            module_digest: module.digest.clone(),
            audit_id: ev.audit_id.clone(),
            hostname: self.hostname.clone(),
        }
    }
}

/// Whose events a batch holds.
struct Place<'a> {
    tenant: &'a Arc<str>,
    cluster: &'a Arc<str>,
}

/// The worker threads. OS threads, not async tasks: a Wasm call is CPU work
/// that must not stall the webhook's runtime.
pub struct WorkerPool {
    handles: Vec<JoinHandle<()>>,
}

impl WorkerPool {
    pub fn start(
        n: usize,
        queue: Arc<BatchQueue>,
        evaluator: Arc<Evaluator>,
        sink: Arc<dyn AlertSink>,
    ) -> Self {
        let handles = (0..n.max(1))
            .map(|i| {
                let queue = queue.clone();
                let evaluator = evaluator.clone();
                let sink = sink.clone();
                std::thread::Builder::new()
                    .name(format!("peregrine-worker-{i}"))
                    .spawn(move || {
                        while let Some(batch) = queue.pop() {
                            let alerts: Vec<Alert> = batch
                                .events
                                .chunks(evaluator.batch_events.max(1))
                                .flat_map(|chunk| {
                                    evaluator.evaluate_in(&batch.tenant, &batch.cluster, chunk)
                                })
                                .collect();
                            queue.done(&batch.tenant);
                            // The journal entry goes once every output the
                            // alerts are routed to has stored them; a sink
                            // that must wait for room makes this worker
                            // wait, so the queue fills and the webhook
                            // answers 429 instead of accepting alerts it
                            // would drop.
                            let durable = match batch.journal {
                                Some(entry) => Durable::new(move || entry.complete()),
                                None => Durable::none(),
                            };
                            match batch.reply {
                                Some(reply) => {
                                    let _ = reply.send(alerts);
                                    durable.release();
                                }
                                None if alerts.is_empty() => durable.release(),
                                None => sink.submit_durable(alerts, durable),
                            }
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect();
        WorkerPool { handles }
    }

    /// Waits for the workers to drain the (closed) queue.
    pub fn join(self) {
        for h in self.handles {
            let _ = h.join();
        }
    }
}
