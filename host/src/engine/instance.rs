//! One sandboxed instance of a rule module, and the host side of its imports.

use std::sync::{Arc, Mutex};

use peregrine_sdk as sdk;
use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{
    HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
};

use super::bindings::{self, RuleModulePre, peregrine::rules as imports, wit};
use super::{Permit, SandboxLimits};

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
    #[error("returned too much output: {0}")]
    OutputTooLarge(String),
}

impl CallError {
    /// A short, stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::OutOfMemory(_) => "out_of_memory",
            CallError::Trap(_) => "trap",
            CallError::Instantiate(_) => "instantiate",
            CallError::OutputTooLarge(_) => "output_too_large",
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

/// An event converted once into the record that crosses the boundary, in the
/// two shapes modules may ask for.
pub struct PreparedEvent {
    lite: wit::Event,
    full: Option<wit::Event>,
}

impl PreparedEvent {
    /// `with_raw` builds the variant carrying the request and response
    /// objects too; do so only when some module needs them.
    pub fn new(ev: &sdk::audit::AuditEvent, tenant: &str, with_raw: bool) -> Self {
        PreparedEvent {
            lite: ev.to_wit(tenant, false, false).into(),
            full: with_raw.then(|| ev.to_wit(tenant, true, true).into()),
        }
    }

    fn record(&self, needs_raw: bool) -> &wit::Event {
        if needs_raw {
            self.full.as_ref().unwrap_or(&self.lite)
        } else {
            &self.lite
        }
    }
}

/// A live instance of a rule module with its own store.
pub struct ModuleInstance {
    store: Store<StoreData>,
    bindings: bindings::RuleModule,
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
        let bindings = match pre.instantiate(&mut store) {
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
        event: &PreparedEvent,
        needs_raw: bool,
    ) -> Result<Vec<sdk::Alert>, CallError> {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let alerts = self
            .bindings
            .call_evaluate(&mut self.store, event.record(needs_raw))
            .map_err(|e| self.fail(e))?;
        if alerts.len() > self.limits.max_alerts_per_event {
            return Err(CallError::OutputTooLarge(format!(
                "{} alerts for one event, over the limit of {}",
                alerts.len(),
                self.limits.max_alerts_per_event
            )));
        }
        let bytes: usize = alerts
            .iter()
            .map(|a| {
                a.output.len()
                    + a.rule_id.len()
                    + a.fields
                        .iter()
                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len))
                        .sum::<usize>()
                    + a.tags.iter().map(String::len).sum::<usize>()
            })
            .sum();
        if bytes > self.limits.max_output_bytes {
            return Err(CallError::OutputTooLarge(format!(
                "{bytes} bytes of alert output for one event, over the limit of {}",
                self.limits.max_output_bytes
            )));
        }
        Ok(alerts.into_iter().map(Into::into).collect())
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
