//! The evaluation stage: worker threads take batches of events from the
//! queue and run every module that serves the batch's tenant over them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use arc_swap::ArcSwap;
use peregrine_sdk::audit::AuditEvent;

use crate::alert::{Alert, MODULE_QUARANTINED, Priority, RULE_ERROR, RULE_ID_FIELD};
use crate::config::RuleMatching;
use crate::durable::Durable;
use crate::engine::{CallError, ModuleInstance, PreparedEvent, WasmEngine};
use crate::health::Quarantine;
use crate::rules::{LoadedModule, RuleSet, StateStore};

/// A rule's share of one batch's work.
#[derive(Default)]
struct RuleTally {
    evaluations: u64,
    errors: u64,
    nanos: f64,
}

/// Events of one tenant, evaluated together with one instance per module.
pub struct Batch {
    pub tenant: Arc<str>,
    /// The cluster the events came from (`peregrine.cluster` of their alerts).
    pub cluster: Arc<str>,
    pub events: Vec<AuditEvent>,
    /// Where to send the alerts instead of the sink (replay keeps order this way).
    pub reply: Option<crossbeam_channel::Sender<Vec<Alert>>>,
    /// The batch's entry in the ingest journal, completed once its alerts
    /// are durable in every output they are routed to.
    pub journal: Option<crate::ingest::journal::JournalEntry>,
}

/// Where the alerts of the evaluation stage go.
pub trait AlertSink: Send + Sync {
    fn submit(&self, alerts: Vec<Alert>);

    /// Like [`AlertSink::submit`], with the batch's share of durability:
    /// released once the alerts are stored wherever they must survive a
    /// crash. A sink that keeps nothing past the call releases it at once.
    fn submit_durable(&self, alerts: Vec<Alert>, durable: crate::durable::Durable) {
        self.submit(alerts);
        durable.release();
    }
}

/// The queue between ingest and the workers. Bounded in events, not batches,
/// since that is what the apiserver's retry budget is counted in, and in
/// bytes, since that is what memory is: a few thousand huge events fill
/// memory long before the event bound is reached.
/// Tenants are served round-robin so one tenant's flood queues behind itself,
/// not in front of everyone else, and while others wait no tenant holds more
/// than `workers - 1` workers, so a tenant whose rules are slow cannot occupy
/// every worker.
pub struct BatchQueue {
    inner: Mutex<QueueState>,
    ready: Condvar,
    /// Signalled when batches leave (or the queue closes), for
    /// [`BatchQueue::push_wait`].
    room: Condvar,
    capacity: usize,
    capacity_bytes: usize,
    max_in_flight: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct QueueState {
    /// Each batch with its size in bytes (see [`event_bytes`]).
    per_tenant: HashMap<Arc<str>, VecDeque<(Batch, usize)>>,
    /// Events and bytes each tenant has queued.
    tenant_load: HashMap<Arc<str>, (usize, usize)>,
    /// Tenants with queued batches, in service order.
    ring: VecDeque<Arc<str>>,
    /// Batches each tenant has on the workers now.
    in_flight: HashMap<Arc<str>, usize>,
    events: usize,
    bytes: usize,
    closed: bool,
}

/// Why a batch was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("the event queue is full")]
    Full,
    #[error("the tenant's share of the event queue is full")]
    TenantFull,
    #[error("shutting down")]
    Closed,
}

/// What an event costs the queue in memory, roughly: its decoded struct and
/// the text it owns. Raw objects, the bulk of a large event, are counted
/// byte for byte.
pub fn event_bytes(ev: &AuditEvent) -> usize {
    fn user(u: &peregrine_sdk::audit::AuditUser) -> usize {
        u.username.len()
            + u.uid.as_ref().map_or(0, String::len)
            + u.groups.iter().map(|g| g.len() + 24).sum::<usize>()
            + u.extra
                .iter()
                .map(|(k, v)| k.len() + 48 + v.iter().map(|s| s.len() + 24).sum::<usize>())
                .sum::<usize>()
    }
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    let raw =
        |r: &Option<Box<serde_json::value::RawValue>>| r.as_ref().map_or(0, |r| r.get().len());
    std::mem::size_of::<AuditEvent>()
        + ev.audit_id.len()
        + ev.stage.len()
        + ev.level.len()
        + ev.verb.len()
        + ev.request_uri.len()
        + user(&ev.user)
        + ev.impersonated_user.as_ref().map_or(0, user)
        + ev.source_ips.iter().map(|s| s.len() + 24).sum::<usize>()
        + opt(&ev.user_agent)
        + ev.object_ref.as_ref().map_or(0, |o| {
            std::mem::size_of_val(o)
                + [
                    &o.resource,
                    &o.subresource,
                    &o.namespace,
                    &o.name,
                    &o.uid,
                    &o.api_group,
                    &o.api_version,
                    &o.resource_version,
                ]
                .into_iter()
                .map(opt)
                .sum::<usize>()
        })
        + ev.response_status.as_ref().map_or(0, std::mem::size_of_val)
        + raw(&ev.request_object)
        + raw(&ev.response_object)
        + opt(&ev.request_received_timestamp)
        + opt(&ev.stage_timestamp)
        + opt(&ev.timestamp)
        + ev.annotations
            .iter()
            .map(|(k, v)| k.len() + v.len() + 64)
            .sum::<usize>()
}

impl BatchQueue {
    /// A queue of at most `capacity` events and `capacity_bytes` bytes.
    pub fn new(capacity: usize, capacity_bytes: usize) -> Self {
        BatchQueue {
            inner: Mutex::new(QueueState::default()),
            ready: Condvar::new(),
            room: Condvar::new(),
            capacity,
            capacity_bytes,
            max_in_flight: std::sync::atomic::AtomicUsize::new(usize::MAX),
        }
    }

    /// Tells the queue how many workers serve it: while other tenants wait,
    /// one tenant gets at most `workers - 1` of them (at least one).
    pub fn set_workers(&self, workers: usize) {
        self.max_in_flight
            .store(workers.saturating_sub(1).max(1), Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a batch unless the queue, or the tenant's `share` of it (a
    /// fraction of both bounds, events and bytes), would overflow. All or
    /// nothing: the apiserver retries whole batches.
    pub fn push(&self, batch: Batch, share: Option<f64>) -> Result<(), QueueError> {
        let bytes = batch.events.iter().map(event_bytes).sum();
        let mut s = self.state();
        self.try_push(&mut s, batch, bytes, share)
            .map_err(|(e, _)| e)?;
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a batch, waiting for room (tenant shares do not apply); for
    /// recovery at start, which must not refuse what was acknowledged.
    /// Fails only once the queue is closed.
    pub fn push_wait(&self, batch: Batch) -> Result<(), QueueError> {
        let bytes = batch.events.iter().map(event_bytes).sum();
        let mut s = self.state();
        let mut batch = batch;
        loop {
            match self.try_push(&mut s, batch, bytes, None) {
                Ok(()) => break,
                Err((QueueError::Full, b)) => {
                    batch = b;
                    s = self.room.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                Err((e, _)) => return Err(e),
            }
        }
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    fn try_push(
        &self,
        s: &mut QueueState,
        batch: Batch,
        bytes: usize,
        share: Option<f64>,
    ) -> Result<(), (QueueError, Batch)> {
        let n = batch.events.len();
        if s.closed {
            return Err((QueueError::Closed, batch));
        }
        // A batch larger than the whole queue (or the tenant's share) still
        // goes in when nothing is queued, or it could never be taken.
        let over = |now: (usize, usize), cap: (usize, usize)| {
            (now.0 > 0 || now.1 > 0) && (now.0 + n > cap.0 || now.1 + bytes > cap.1)
        };
        if over((s.events, s.bytes), (self.capacity, self.capacity_bytes)) {
            return Err((QueueError::Full, batch));
        }
        let tenant_now = s.tenant_load.get(&batch.tenant).copied().unwrap_or((0, 0));
        if let Some(share) = share {
            let part = |cap: usize| ((cap as f64) * share.clamp(0.0, 1.0)).ceil() as usize;
            if over(tenant_now, (part(self.capacity), part(self.capacity_bytes))) {
                return Err((QueueError::TenantFull, batch));
            }
        }
        s.events += n;
        s.bytes += bytes;
        let load = s.tenant_load.entry(batch.tenant.clone()).or_default();
        load.0 += n;
        load.1 += bytes;
        let tenant = batch.tenant.clone();
        let q = s.per_tenant.entry(tenant.clone()).or_default();
        q.push_back((batch, bytes));
        if q.len() == 1 {
            s.ring.push_back(tenant);
        }
        s.publish();
        Ok(())
    }

    /// The next batch, round-robin over tenants; `None` once closed and drained.
    /// A tenant that already holds its share of the workers is passed over
    /// while another tenant has work; with no one else waiting it may use
    /// them all. Call [`BatchQueue::done`] when the batch is evaluated.
    pub fn pop(&self) -> Option<Batch> {
        let cap = self.max_in_flight.load(Ordering::Relaxed);
        let mut s = self.state();
        loop {
            let eligible = s
                .ring
                .iter()
                .position(|t| s.in_flight.get(t).copied().unwrap_or(0) < cap);
            if let Some(tenant) = eligible
                .or((!s.ring.is_empty()).then_some(0))
                .and_then(|i| s.ring.remove(i))
            {
                let q = s
                    .per_tenant
                    .get_mut(&tenant)
                    .expect("ring names a queued tenant");
                let (batch, bytes) = q.pop_front().expect("ring names a non-empty queue");
                if q.is_empty() {
                    s.per_tenant.remove(&tenant);
                } else {
                    s.ring.push_back(tenant.clone());
                }
                let n = batch.events.len();
                s.events -= n;
                s.bytes -= bytes;
                if let Some(load) = s.tenant_load.get_mut(&tenant) {
                    load.0 -= n;
                    load.1 -= bytes;
                    if load.0 == 0 && load.1 == 0 {
                        s.tenant_load.remove(&tenant);
                    }
                }
                *s.in_flight.entry(tenant).or_default() += 1;
                s.publish();
                drop(s);
                self.room.notify_all();
                return Some(batch);
            }
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A batch of `tenant` taken by [`BatchQueue::pop`] is evaluated.
    pub fn done(&self, tenant: &Arc<str>) {
        let mut s = self.state();
        if let Some(n) = s.in_flight.get_mut(tenant) {
            *n -= 1;
            if *n == 0 {
                s.in_flight.remove(tenant);
            }
        }
    }

    /// Events waiting.
    pub fn len(&self) -> usize {
        self.state().events
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes waiting (see [`event_bytes`]).
    pub fn bytes(&self) -> usize {
        self.state().bytes
    }

    /// Events of `tenant` waiting.
    pub fn tenant_len(&self, tenant: &str) -> usize {
        self.state().tenant_load.get(tenant).map_or(0, |l| l.0)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Stops accepting batches; workers finish what is queued, then stop.
    pub fn close(&self) {
        self.state().closed = true;
        self.ready.notify_all();
        self.room.notify_all();
    }
}

impl QueueState {
    fn publish(&self) {
        metrics::gauge!("peregrine_queue_events").set(self.events as f64);
        metrics::gauge!("peregrine_queue_bytes").set(self.bytes as f64);
    }
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

/// Where alerts come from: stamped on each alert.
pub struct AlertOrigin<'a> {
    pub module: &'a str,
    pub digest: &'a str,
    pub tenant: &'a Arc<str>,
    pub cluster: &'a Arc<str>,
    pub hostname: &'a Arc<str>,
}

/// A module's alerts for one event, once checked against its metadata.
#[derive(Debug, Default)]
pub struct Accepted {
    /// In the module's declared rule order, after `rule_matching`.
    pub alerts: Vec<Alert>,
    /// Rule ids the module does not declare (a module bug).
    pub undeclared: Vec<String>,
    /// Alerts of rules the module reports disabled, dropped.
    pub disabled: usize,
}

/// Turns a module's alerts for `ev` into host alerts: names, priorities and
/// tags from the module's metadata (`lookup` finds a rule and its position by
/// id), and `rule_matching` (`first` keeps the alerts of the first matching
/// rule in the module's order). The native side of `peregrine bench` shares
/// it, so both sides do the same work.
pub fn accept_alerts<'r>(
    lookup: impl Fn(&str) -> Option<(usize, &'r peregrine_sdk::RuleInfo)>,
    rule_matching: RuleMatching,
    origin: &AlertOrigin<'_>,
    ev: &AuditEvent,
    alerts: Vec<peregrine_sdk::Alert>,
) -> Accepted {
    let mut out = Accepted::default();
    let mut accepted: Vec<(usize, Alert)> = Vec::with_capacity(alerts.len());
    for a in alerts {
        let Some((index, rule)) = lookup(&a.rule_id) else {
            out.undeclared.push(a.rule_id);
            continue;
        };
        if !rule.enabled {
            out.disabled += 1;
            continue;
        }
        // The rule id comes from the host's view of the rule, never from the
        // module's fields.
        let mut fields: Vec<(String, Option<String>)> = a
            .fields
            .into_iter()
            .filter(|(k, _)| k != RULE_ID_FIELD)
            .collect();
        fields.push((RULE_ID_FIELD.into(), Some(rule.id.clone())));
        let mut tags = rule.tags.clone();
        for t in a.tags {
            if !tags.contains(&t) {
                tags.push(t);
            }
        }
        accepted.push((
            index,
            Alert {
                time_unix_nanos: event_time(ev),
                rule: rule.name.clone(),
                rule_id: rule.id.clone(),
                priority: a.priority.unwrap_or(rule.priority).into(),
                output: a.output,
                tags,
                fields,
                tenant: origin.tenant.clone(),
                cluster: origin.cluster.clone(),
                module: origin.module.to_string(),
                module_digest: origin.digest.to_string(),
                audit_id: ev.audit_id.clone(),
                hostname: origin.hostname.clone(),
            },
        ));
    }
    if rule_matching == RuleMatching::First
        && let Some(first) = accepted.iter().map(|(i, _)| *i).min()
    {
        accepted.retain(|(i, _)| *i == first);
    }
    out.alerts = accepted.into_iter().map(|(_, a)| a).collect();
    out
}

/// Alerts are stamped with the event's time, as Falco does; events without a
/// usable timestamp get the time they were evaluated.
fn event_time(ev: &AuditEvent) -> i64 {
    ev.time_unix_nanos()
        .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(tenant: &str, n: usize) -> Batch {
        let ev: AuditEvent =
            serde_json::from_str(r#"{"auditID":"a","stage":"ResponseComplete","verb":"get"}"#)
                .unwrap();
        Batch {
            tenant: tenant.into(),
            cluster: tenant.into(),
            events: vec![ev; n],
            reply: None,
            journal: None,
        }
    }

    #[test]
    fn queue_is_bounded_in_events_and_per_tenant_share() {
        let q = BatchQueue::new(10, usize::MAX);
        q.push(batch("a", 6), None).unwrap();
        assert_eq!(q.push(batch("b", 5), None), Err(QueueError::Full));
        assert_eq!(
            q.push(batch("a", 2), Some(0.5)),
            Err(QueueError::TenantFull)
        );
        q.push(batch("b", 4), Some(0.5)).unwrap();
        assert_eq!((q.len(), q.tenant_len("a"), q.tenant_len("b")), (10, 6, 4));
        q.close();
        assert_eq!(q.push(batch("b", 1), None), Err(QueueError::Closed));
        assert!(q.pop().is_some() && q.pop().is_some() && q.pop().is_none());
    }

    #[test]
    fn queue_is_bounded_in_bytes_and_per_tenant_share_of_them() {
        let one = event_bytes(&batch("a", 1).events[0]);
        assert!(one > 100, "{one}");
        // Room for 10 events' bytes, and a thousand times as many events.
        let q = BatchQueue::new(10_000, one * 10);
        q.push(batch("a", 6), None).unwrap();
        assert_eq!(q.bytes(), one * 6);
        assert_eq!(q.push(batch("b", 5), None), Err(QueueError::Full));
        assert_eq!(
            q.push(batch("a", 2), Some(0.5)),
            Err(QueueError::TenantFull)
        );
        q.push(batch("b", 4), Some(0.5)).unwrap();
        assert_eq!(q.push(batch("c", 1), None), Err(QueueError::Full));
        assert!(q.pop().is_some());
        assert_eq!(q.bytes(), one * 4);
        assert!(q.pop().is_some());
        assert_eq!((q.len(), q.bytes()), (0, 0));
        // A batch larger than the whole queue goes in when it is empty.
        q.push(batch("c", 30), Some(0.1)).unwrap();
        assert_eq!(q.bytes(), one * 30);
    }

    #[test]
    fn push_wait_waits_for_room_and_gives_up_when_closed() {
        let q = Arc::new(BatchQueue::new(10, usize::MAX));
        q.push(batch("a", 8), None).unwrap();
        let pusher = {
            let q = q.clone();
            std::thread::spawn(move || q.push_wait(batch("a", 5)))
        };
        // The pusher cannot finish before room is made; it goes in after.
        let first = q.pop().unwrap();
        assert_eq!(first.events.len(), 8);
        pusher.join().unwrap().unwrap();
        assert_eq!(q.len(), 5);
        q.push(batch("a", 5), None).unwrap();
        let blocked = {
            let q = q.clone();
            std::thread::spawn(move || q.push_wait(batch("a", 5)))
        };
        q.close();
        assert_eq!(blocked.join().unwrap(), Err(QueueError::Closed));
    }

    #[test]
    fn tenants_take_turns_and_none_holds_every_worker_while_others_wait() {
        let q = BatchQueue::new(1_000, usize::MAX);
        q.set_workers(2);
        for _ in 0..3 {
            q.push(batch("a", 1), None).unwrap();
        }
        // Alone, tenant a may use both workers.
        let first = q.pop().unwrap();
        let second = q.pop().unwrap();
        assert_eq!((&*first.tenant, &*second.tenant), ("a", "a"));
        q.push(batch("b", 1), None).unwrap();
        q.done(&first.tenant);
        // a still holds one worker, its share while b waits: b goes next.
        assert_eq!(&*q.pop().unwrap().tenant, "b");
        // With everyone at their share, work goes on rather than idle.
        assert_eq!(&*q.pop().unwrap().tenant, "a");
    }

    #[test]
    fn tenants_are_served_round_robin() {
        let q = BatchQueue::new(1_000, usize::MAX);
        for t in ["a", "a", "a", "b", "c"] {
            q.push(batch(t, 1), None).unwrap();
        }
        let order: Vec<String> = (0..5)
            .map(|_| {
                let b = q.pop().unwrap();
                q.done(&b.tenant);
                b.tenant.to_string()
            })
            .collect();
        assert_eq!(order, ["a", "b", "c", "a", "a"]);
    }
}
