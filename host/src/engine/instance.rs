//! One sandboxed instance of a rule module, and the host side of its imports.

use std::sync::{Arc, Mutex};

use peregrine_sdk as sdk;
use wasmtime::component::{ComponentType, Func, Lower, ResourceTable, TypedFunc};
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::{self, RuleModulePre, peregrine::rules as imports, wit};
use super::limits::{Permit, SandboxLimits};

/// Log lines one instance may write; a module that logs in a loop must not
/// flood the host's log.
const LOG_LINES_PER_INSTANCE: u32 = 100;
/// Bytes of guest stderr kept to explain a trap (Rust panics print there).
const STDERR_CAPTURE: usize = 4096;
/// Load-time calls (`metadata`, `configure`) may parse large configurations.
const LOAD_DEADLINE_FACTOR: u32 = 20;

/// Why a call into a module failed. After any of these the instance is
/// poisoned and is dropped.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("timed out: ran past its {0} ms deadline")]
    Timeout(u64),
    #[error("out of memory: tried to grow past its {0} byte cap")]
    OutOfMemory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

impl CallError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory(_) => "out_of_memory",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
        }
    }
}

/// Caps the total linear memory of one store and remembers that it did, so a
/// failed grow can be reported as out-of-memory rather than a bare trap.
struct MemoryCap {
    cap: usize,
    used: usize,
    exceeded: bool,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.cap {
            self.exceeded = true;
            wasmtime::bail!("memory cap of {} bytes reached", self.cap);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables cost a pointer per element; bound them by the same budget.
        Ok(desired.saturating_mul(std::mem::size_of::<usize>()) <= self.cap)
    }
}

/// A clock that never moves: rules have no wall clock, they use event time.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
    fn now(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

pub(crate) struct StoreData {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryCap,
    label: Arc<str>,
    log_budget: u32,
    state: Arc<Mutex<sdk::state::StateTable>>,
}

impl WasiView for StoreData {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl imports::types::Host for StoreData {}

impl imports::log::Host for StoreData {
    fn log(&mut self, level: imports::log::Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        let module = &*self.label;
        let message: String = message.chars().take(2048).collect();
        use imports::log::Level;
        match level {
            Level::Trace => tracing::trace!(target: "peregrine::rule", module, "{message}"),
            Level::Debug => tracing::debug!(target: "peregrine::rule", module, "{message}"),
            Level::Info => tracing::info!(target: "peregrine::rule", module, "{message}"),
            Level::Warn => tracing::warn!(target: "peregrine::rule", module, "{message}"),
            Level::Error => tracing::error!(target: "peregrine::rule", module, "{message}"),
        }
        if self.log_budget == 0 {
            tracing::warn!(target: "peregrine::rule", module, "log limit of {LOG_LINES_PER_INSTANCE} lines per instance reached; further lines are dropped");
        }
    }
}

impl StoreData {
    fn state(&self) -> std::sync::MutexGuard<'_, sdk::state::StateTable> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl imports::state::Host for StoreData {
    fn counter_add(
        &mut self,
        key: String,
        delta: u32,
        window_seconds: u32,
        now_unix_nanos: i64,
    ) -> u64 {
        self.state()
            .counter_add(&key, delta, window_seconds, now_unix_nanos)
    }

    fn distinct_add(
        &mut self,
        key: String,
        member: String,
        window_seconds: u32,
        now_unix_nanos: i64,
    ) -> u64 {
        self.state()
            .distinct_add(&key, &member, window_seconds, now_unix_nanos)
    }

    fn first_seen(&mut self, key: String, ttl_seconds: u32, now_unix_nanos: i64) -> bool {
        self.state().first_seen(&key, ttl_seconds, now_unix_nanos)
    }
}

/// An event ready to cross into modules. The record is lowered straight
/// from the decoded event's own strings into the guest's memory, with no
/// owned copy in between (building one copied every string of every event,
/// which cost as much as the lowering itself). The fields are exactly those
/// `AuditEvent::to_wit` builds for native tests, and the raw request and
/// response objects go only to modules that ask for them.
pub struct PreparedEvent<'a> {
    ev: &'a sdk::audit::AuditEvent,
    tenant: &'a str,
    time_unix_nanos: i64,
    annotations: Vec<(&'a str, &'a str)>,
    extra: Vec<(&'a str, &'a [String])>,
    impersonated_extra: Vec<(&'a str, &'a [String])>,
}

impl<'a> PreparedEvent<'a> {
    pub fn new(ev: &'a sdk::audit::AuditEvent, tenant: &'a str) -> Self {
        let pairs = |m: &'a std::collections::BTreeMap<String, Vec<String>>| {
            m.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect()
        };
        PreparedEvent {
            ev,
            tenant,
            time_unix_nanos: ev.time_unix_nanos().unwrap_or(0),
            annotations: ev
                .annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            extra: pairs(&ev.user.extra),
            impersonated_extra: ev
                .impersonated_user
                .as_ref()
                .map(|u| pairs(&u.extra))
                .unwrap_or_default(),
        }
    }

    fn record(&self, needs_raw: bool) -> EventRecord<'_> {
        let ev = self.ev;
        fn user<'s>(
            u: &'s sdk::audit::AuditUser,
            extra: &'s [(&'s str, &'s [String])],
        ) -> UserRecord<'s> {
            UserRecord {
                username: &u.username,
                uid: u.uid.as_deref(),
                groups: &u.groups,
                extra,
            }
        }
        let raw = |r: &'a Option<Box<serde_json::value::RawValue>>| {
            if needs_raw {
                r.as_deref().map(|r| r.get())
            } else {
                None
            }
        };
        EventRecord {
            tenant: self.tenant,
            audit_id: &ev.audit_id,
            stage: &ev.stage,
            level: &ev.level,
            verb: &ev.verb,
            request_uri: &ev.request_uri,
            user: user(&ev.user, &self.extra),
            impersonated_user: ev
                .impersonated_user
                .as_ref()
                .map(|u| user(u, &self.impersonated_extra)),
            source_ips: &ev.source_ips,
            user_agent: ev.user_agent.as_deref(),
            object_ref: ev.object_ref.as_ref().map(|o| ObjectRefRecord {
                resource: o.resource.as_deref(),
                subresource: o.subresource.as_deref(),
                namespace: o.namespace.as_deref(),
                name: o.name.as_deref(),
                uid: o.uid.as_deref(),
                api_group: o.api_group.as_deref(),
                api_version: o.api_version.as_deref(),
                resource_version: o.resource_version.as_deref(),
            }),
            response_status: ev.response_status.as_ref().map(|s| StatusRecord {
                code: s.code,
                status: s.status.as_deref(),
                reason: s.reason.as_deref(),
                message: s.message.as_deref(),
            }),
            request_received_timestamp: ev.request_received_timestamp.as_deref(),
            stage_timestamp: ev.stage_timestamp.as_deref(),
            time_unix_nanos: self.time_unix_nanos,
            annotations: &self.annotations,
            request_object: raw(&ev.request_object),
            response_object: raw(&ev.response_object),
        }
    }
}

// Borrowing mirrors of the WIT records `user-info`, `object-ref`,
// `response-status` and `event`. wasmtime checks them against the
// component's `evaluate` signature when an instance is created.

#[derive(ComponentType, Lower)]
#[component(record)]
struct UserRecord<'a> {
    username: &'a str,
    uid: Option<&'a str>,
    groups: &'a [String],
    extra: &'a [(&'a str, &'a [String])],
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct ObjectRefRecord<'a> {
    resource: Option<&'a str>,
    subresource: Option<&'a str>,
    namespace: Option<&'a str>,
    name: Option<&'a str>,
    uid: Option<&'a str>,
    #[component(name = "api-group")]
    api_group: Option<&'a str>,
    #[component(name = "api-version")]
    api_version: Option<&'a str>,
    #[component(name = "resource-version")]
    resource_version: Option<&'a str>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct StatusRecord<'a> {
    code: Option<i32>,
    status: Option<&'a str>,
    reason: Option<&'a str>,
    message: Option<&'a str>,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct EventRecord<'a> {
    tenant: &'a str,
    #[component(name = "audit-id")]
    audit_id: &'a str,
    stage: &'a str,
    level: &'a str,
    verb: &'a str,
    #[component(name = "request-uri")]
    request_uri: &'a str,
    user: UserRecord<'a>,
    #[component(name = "impersonated-user")]
    impersonated_user: Option<UserRecord<'a>>,
    #[component(name = "source-ips")]
    source_ips: &'a [String],
    #[component(name = "user-agent")]
    user_agent: Option<&'a str>,
    #[component(name = "object-ref")]
    object_ref: Option<ObjectRefRecord<'a>>,
    #[component(name = "response-status")]
    response_status: Option<StatusRecord<'a>>,
    #[component(name = "request-received-timestamp")]
    request_received_timestamp: Option<&'a str>,
    #[component(name = "stage-timestamp")]
    stage_timestamp: Option<&'a str>,
    #[component(name = "time-unix-nanos")]
    time_unix_nanos: i64,
    annotations: &'a [(&'a str, &'a str)],
    #[component(name = "request-object")]
    request_object: Option<&'a str>,
    #[component(name = "response-object")]
    response_object: Option<&'a str>,
}

/// `evaluate` with the borrowing parameter type.
type EvaluateFunc<'a> = TypedFunc<(EventRecord<'a>,), (Vec<wit::Alert>,)>;

/// The alerts of one `evaluate` call, cut to the sandbox's output limits.
#[derive(Debug)]
pub struct Evaluated {
    pub alerts: Vec<sdk::Alert>,
    /// What was cut to fit the limits (nothing, mostly).
    pub cut: super::output::Cut,
}

/// A live instance of a rule module with its own store.
pub struct ModuleInstance {
    store: Store<StoreData>,
    bindings: bindings::RuleModule,
    /// The `evaluate` export, type-checked against [`EventRecord`].
    evaluate: Func,
    limits: SandboxLimits,
    deadline_ticks: u64,
    stderr: MemoryOutputPipe,
    _permit: Permit,
}

impl ModuleInstance {
    pub(super) fn new(
        engine: &wasmtime::Engine,
        pre: &RuleModulePre<StoreData>,
        label: Arc<str>,
        limits: SandboxLimits,
        state: Arc<Mutex<sdk::state::StateTable>>,
        tick_nanos: u64,
        permit: Permit,
    ) -> Result<Self, CallError> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPTURE);
        // No preopens, no environment, no arguments, no network, frozen
        // clocks: the WASI imports exist only so language runtimes link.
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let data = StoreData {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryCap {
                cap: limits.memory_bytes,
                used: 0,
                exceeded: false,
            },
            label,
            log_budget: LOG_LINES_PER_INSTANCE,
            state,
        };
        let mut store = Store::new(engine, data);
        store.limiter(|d| &mut d.memory);
        store.epoch_deadline_trap();
        // The current epoch is already partly over when a call starts, so one
        // tick more: a call then runs at least its deadline, and is stopped
        // within one tick after it.
        let deadline_ticks = (limits.call_deadline.as_nanos() as u64).div_ceil(tick_nanos) + 1;
        store.set_epoch_deadline(deadline_ticks.saturating_mul(u64::from(LOAD_DEADLINE_FACTOR)));
        let instantiated = pre
            .instance_pre()
            .instantiate(&mut store)
            .and_then(|instance| {
                let bindings = bindings::RuleModule::new(&mut store, &instance)?;
                let evaluate = instance
                    .get_func(&mut store, "evaluate")
                    .ok_or_else(|| wasmtime::format_err!("the component exports no `evaluate`"))?;
                evaluate.typed::<(EventRecord<'static>,), (Vec<wit::Alert>,)>(&store)?;
                Ok((bindings, evaluate))
            });
        let (bindings, evaluate) = match instantiated {
            Ok(b) => b,
            Err(e) => {
                let err = classify(&store, &stderr, limits, e);
                return Err(match err {
                    CallError::Trap(msg) => CallError::Instantiate(msg),
                    other => other,
                });
            }
        };
        Ok(ModuleInstance {
            store,
            bindings,
            evaluate,
            limits,
            deadline_ticks,
            stderr,
            _permit: permit,
        })
    }

    pub fn label(&self) -> &str {
        &self.store.data().label
    }

    fn fail(&self, e: wasmtime::Error) -> CallError {
        classify(&self.store, &self.stderr, self.limits, e)
    }

    pub fn metadata(&mut self) -> Result<sdk::ModuleInfo, CallError> {
        self.store.set_epoch_deadline(
            self.deadline_ticks
                .saturating_mul(u64::from(LOAD_DEADLINE_FACTOR)),
        );
        match self.bindings.call_metadata(&mut self.store) {
            Ok(m) => Ok(m.into()),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The module's own verdict on the configuration is the inner result.
    pub fn configure(&mut self, config_json: &str) -> Result<Result<(), String>, CallError> {
        self.store.set_epoch_deadline(
            self.deadline_ticks
                .saturating_mul(u64::from(LOAD_DEADLINE_FACTOR)),
        );
        self.bindings
            .call_configure(&mut self.store, config_json)
            .map_err(|e| self.fail(e))
    }

    pub fn evaluate(
        &mut self,
        event: &PreparedEvent<'_>,
        needs_raw: bool,
    ) -> Result<Evaluated, CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        // SAFETY: `new` type-checked this function against `EvaluateFunc`;
        // the types differ from that check only in their lifetime.
        let func: EvaluateFunc<'_> = unsafe { TypedFunc::new_unchecked(self.evaluate) };
        let (alerts,) = func
            .call(&mut self.store, (event.record(needs_raw),))
            .map_err(|e| self.fail(e))?;
        let mut alerts: Vec<sdk::Alert> = alerts.into_iter().map(Into::into).collect();
        let cut = super::output::cut_to_limits(&mut alerts, &self.limits);
        Ok(Evaluated { alerts, cut })
    }
}

fn classify(
    store: &Store<StoreData>,
    stderr: &MemoryOutputPipe,
    limits: SandboxLimits,
    e: wasmtime::Error,
) -> CallError {
    if store.data().memory.exceeded {
        return CallError::OutOfMemory(limits.memory_bytes);
    }
    if let Some(Trap::Interrupt) = e.downcast_ref::<Trap>() {
        return CallError::Timeout(limits.call_deadline.as_millis() as u64);
    }
    let mut msg = format!("{e:#}");
    let captured = stderr.contents();
    let captured = String::from_utf8_lossy(&captured);
    let captured = captured.trim();
    if !captured.is_empty() {
        msg.push_str("; stderr: ");
        msg.push_str(captured);
    }
    CallError::Trap(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"RequestResponse",
        "auditID":"a-1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/ns/pods?x=1",
        "verb":"create","user":{"username":"alice","uid":"u1","groups":["g1","g2"],"extra":{"k":["v1","v2"],"a":["b"]}},
        "impersonatedUser":{"username":"bob","groups":["g3"],"extra":{"z":["y"]}},
        "sourceIPs":["10.0.0.1"],"userAgent":"kubectl",
        "objectRef":{"resource":"pods","subresource":"exec","namespace":"ns","name":"p","uid":"o1",
            "apiGroup":"","apiVersion":"v1","resourceVersion":"7"},
        "responseStatus":{"metadata":{},"code":201,"status":"Success","reason":"r","message":"m"},
        "requestObject":{"spec":{"containers":[{"image":"nginx"}]}},"responseObject":{"metadata":{"name":"p"}},
        "requestReceivedTimestamp":"2024-01-01T00:00:00.000001Z","stageTimestamp":"2024-01-01T00:00:01.5Z",
        "annotations":{"authorization.k8s.io/decision":"allow","b":"c"}}"#;

    /// The borrowed record carries exactly what `AuditEvent::to_wit` builds
    /// for native tests, so a rule sees the same event in both places.
    #[test]
    fn borrowed_record_matches_to_wit() {
        let ev: sdk::audit::AuditEvent = serde_json::from_str(EVENT).unwrap();
        let prepared = PreparedEvent::new(&ev, "tenant-a");
        for raw in [false, true] {
            let r = prepared.record(raw);
            let w = ev.to_wit("tenant-a", raw, raw);
            assert_eq!(r.tenant, w.tenant);
            assert_eq!(r.audit_id, w.audit_id);
            assert_eq!(r.stage, w.stage);
            assert_eq!(r.level, w.level);
            assert_eq!(r.verb, w.verb);
            assert_eq!(r.request_uri, w.request_uri);
            let same_user = |r: &UserRecord<'_>, w: &sdk::UserInfo| {
                assert_eq!(r.username, w.username);
                assert_eq!(r.uid, w.uid.as_deref());
                assert_eq!(r.groups, w.groups.as_slice());
                let extra: Vec<(String, Vec<String>)> = r
                    .extra
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_vec()))
                    .collect();
                assert_eq!(extra, w.extra);
            };
            same_user(&r.user, &w.user);
            same_user(
                r.impersonated_user.as_ref().unwrap(),
                w.impersonated_user.as_ref().unwrap(),
            );
            assert_eq!(r.source_ips, w.source_ips.as_slice());
            assert_eq!(r.user_agent, w.user_agent.as_deref());
            let (o, wo) = (
                r.object_ref.as_ref().unwrap(),
                w.object_ref.as_ref().unwrap(),
            );
            assert_eq!(
                [
                    o.resource,
                    o.subresource,
                    o.namespace,
                    o.name,
                    o.uid,
                    o.api_group,
                    o.api_version,
                    o.resource_version
                ],
                [
                    wo.resource.as_deref(),
                    wo.subresource.as_deref(),
                    wo.namespace.as_deref(),
                    wo.name.as_deref(),
                    wo.uid.as_deref(),
                    wo.api_group.as_deref(),
                    wo.api_version.as_deref(),
                    wo.resource_version.as_deref()
                ]
            );
            let (s, ws) = (
                r.response_status.as_ref().unwrap(),
                w.response_status.as_ref().unwrap(),
            );
            assert_eq!(s.code, ws.code);
            assert_eq!(
                [s.status, s.reason, s.message],
                [
                    ws.status.as_deref(),
                    ws.reason.as_deref(),
                    ws.message.as_deref()
                ]
            );
            assert_eq!(
                r.request_received_timestamp,
                w.request_received_timestamp.as_deref()
            );
            assert_eq!(r.stage_timestamp, w.stage_timestamp.as_deref());
            assert_eq!(r.time_unix_nanos, w.time_unix_nanos);
            let annotations: Vec<(String, String)> = r
                .annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            assert_eq!(annotations, w.annotations);
            assert_eq!(r.request_object, w.request_object.as_deref());
            assert_eq!(r.response_object, w.response_object.as_deref());
            assert_eq!(r.request_object.is_some(), raw);
        }
    }
}
