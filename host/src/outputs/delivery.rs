//! The delivery machinery every output shares, so that no output kind
//! reimplements queueing, retries or the spool:
//!
//! ```text
//! engine worker --enqueue--> bounded intake queue
//!   --intake task--> store (on-disk spool, or memory when the spool is off)
//!   --sender task--> Deliver::send (the kind's protocol) --ack--> removed from the store
//!                      `-- failure: retry with exponential backoff and jitter
//! ```
//!
//! Two tasks per output, so a send that hangs until its timeout never stops
//! alerts from reaching the spool. Each output has its own tasks and store,
//! so a slow or dead receiver holds up only its own output's deliveries.
//!
//! An output with a spool never drops an alert for lack of room in its
//! intake queue: the worker waits for room (and the webhook, whose queue
//! then fills, answers 429), and the batch's [`Durable`] share is released
//! only once the spool holds the alerts. An output without a spool (the
//! operator's choice, and stdout's default) never makes a worker wait: what
//! does not fit is dropped. Every alert that is not delivered is counted in
//! `peregrine_output_dropped_total{reason}` and logged.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use super::spool::{EntryKey, Store};
use crate::alert::Alert;
use crate::durable::Durable;

/// Delivery settings shared by every output (`[delivery]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Directory of the outputs' spools (one SQLite file per output).
    /// Default: `$PEREGRINE_SPOOL_DIR`, else `$XDG_STATE_HOME/peregrine/spool`,
    /// else `~/.local/state/peregrine/spool`.
    pub spool_dir: Option<PathBuf>,
    /// On shutdown, how long outputs keep delivering what they hold, in
    /// milliseconds. Spooled alerts left after it are delivered on the next
    /// start.
    pub shutdown_grace_ms: u64,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            spool_dir: None,
            shutdown_grace_ms: 5_000,
        }
    }
}

impl DeliveryConfig {
    pub fn resolved_spool_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.spool_dir {
            return Some(dir.clone());
        }
        if let Some(dir) = std::env::var_os("PEREGRINE_SPOOL_DIR") {
            return Some(PathBuf::from(dir));
        }
        Some(crate::paths::xdg_dir("XDG_STATE_HOME", ".local/state")?.join("peregrine/spool"))
    }
}

/// Delivery settings of one output (`[outputs.<name>.delivery]`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputDeliveryConfig {
    /// Alerts held in memory between the engine and the output's store.
    /// Beyond this, the engine waits for room when the output has a spool;
    /// without one, new alerts are dropped (`reason="queue_full"`).
    pub queue_alerts: usize,
    /// Keep alerts in an on-disk spool until the receiver acknowledges them.
    /// Default: on for every kind except `stdout`.
    pub spool: Option<bool>,
    /// Size bound of the on-disk spool (serialised alerts). Beyond this, new
    /// alerts are dropped (`reason="spool_full"`).
    pub spool_max_bytes: u64,
    /// Most alerts handed to the receiver in one send.
    pub batch_max: usize,
    /// Delay before the first retry, in milliseconds; it doubles with every
    /// failed attempt.
    pub retry_initial_ms: u64,
    /// Longest delay between two attempts, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for OutputDeliveryConfig {
    fn default() -> Self {
        OutputDeliveryConfig {
            queue_alerts: 10_000,
            spool: None,
            spool_max_bytes: 256 << 20,
            batch_max: 100,
            retry_initial_ms: 500,
            retry_max_ms: 60_000,
        }
    }
}

impl OutputDeliveryConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.queue_alerts == 0 || self.batch_max == 0 {
            return Err("delivery.queue_alerts and delivery.batch_max must be positive".into());
        }
        if self.spool_max_bytes == 0 {
            return Err("delivery.spool_max_bytes must be positive".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            return Err(
                "delivery.retry_initial_ms must be positive and at most delivery.retry_max_ms"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again: the receiver is down, slow, overloaded, or
    /// refuses us for a reason an operator can fix (credentials, address).
    #[error("{message}")]
    Retry {
        message: String,
        /// What the receiver asked for (HTTP `Retry-After`).
        retry_after: Option<Duration>,
    },
    /// The receiver refused the alert itself (for example HTTP 400): sending
    /// it again cannot succeed.
    #[error("{0}")]
    Rejected(String),
}

impl SendError {
    pub fn retry(message: impl Into<String>) -> Self {
        SendError::Retry {
            message: message.into(),
            retry_after: None,
        }
    }
}

/// A send that did not deliver everything: the first `delivered` alerts were
/// acknowledged, the next one failed with `error`.
#[derive(Debug)]
pub struct SendFailure {
    pub delivered: usize,
    pub error: SendError,
}

impl From<SendError> for SendFailure {
    fn from(error: SendError) -> Self {
        SendFailure {
            delivered: 0,
            error,
        }
    }
}

/// The protocol half of an output kind.
pub trait Deliver: Send + 'static {
    /// Sends `alerts` in order. `Ok` means the receiver acknowledged all of
    /// them; only then are they removed from the store.
    fn send(&mut self, alerts: &[Alert]) -> impl Future<Output = Result<(), SendFailure>> + Send;
}

/// Resolved delivery settings of one output.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: Arc<str>,
    pub kind: &'static str,
    pub queue_alerts: usize,
    pub batch_max: usize,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

/// Whether the sender runs normally or drains until a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Draining(tokio::time::Instant),
}

/// The engine-facing half of a running output.
pub struct OutputHandle {
    pub name: Arc<str>,
    pub kind: &'static str,
    shared: Arc<Shared>,
    control: watch::Sender<Phase>,
    done: crossbeam_channel::Receiver<()>,
}

/// What the tasks of one output share.
struct Shared {
    settings: Settings,
    intake: Mutex<IntakeState>,
    intake_ready: Notify,
    /// Signalled when the intake task takes alerts (or the output closes),
    /// for workers waiting for room.
    intake_room: std::sync::Condvar,
    intake_finished: AtomicBool,
    store: Arc<Mutex<Store>>,
    /// Whether the store is the on-disk spool (fixed for the output's life).
    durable: bool,
    store_ready: Notify,
    drops: DropLog,
}

#[derive(Default)]
struct IntakeState {
    alerts: Vec<Alert>,
    /// Shares of the batches whose alerts are in `alerts`, released once
    /// the store holds them.
    shares: Vec<Durable>,
    closed: bool,
}

impl Shared {
    fn intake(&self) -> std::sync::MutexGuard<'_, IntakeState> {
        self.intake.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update_store_gauges(&self, len: u64, bytes: u64) {
        let name = self.settings.name.to_string();
        metrics::gauge!("peregrine_output_pending_alerts", "output" => name.clone())
            .set(len as f64);
        metrics::gauge!("peregrine_output_spool_bytes", "output" => name).set(bytes as f64);
    }

    /// Runs `f` on the store off the async threads: SQLite calls block.
    async fn with_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> R + Send + 'static,
    ) -> Option<R> {
        let store = self.store.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut s = store.lock().unwrap_or_else(|p| p.into_inner());
            let r = f(&mut s);
            (r, s.len(), s.bytes())
        })
        .await;
        match r {
            Ok((r, len, bytes)) => {
                self.update_store_gauges(len, bytes);
                Some(r)
            }
            Err(e) => {
                tracing::error!(output = %self.settings.name, "store operation failed: {e}");
                None
            }
        }
    }
}

impl OutputHandle {
    /// Starts the intake and sender tasks of one output on `runtime`.
    pub fn start<D: Deliver>(
        runtime: &tokio::runtime::Handle,
        settings: Settings,
        store: Store,
        deliver: D,
    ) -> Self {
        let name = settings.name.clone();
        let kind = settings.kind;
        let durable = store.is_durable();
        let (len, bytes) = (store.len(), store.bytes());
        let shared = Arc::new(Shared {
            drops: DropLog::new(name.clone()),
            settings,
            intake: Mutex::new(IntakeState::default()),
            intake_ready: Notify::new(),
            intake_room: std::sync::Condvar::new(),
            intake_finished: AtomicBool::new(false),
            store: Arc::new(Mutex::new(store)),
            durable,
            store_ready: Notify::new(),
        });
        shared.update_store_gauges(len, bytes);
        metrics::gauge!("peregrine_output_queued_alerts", "output" => name.to_string()).set(0.0);
        if len > 0 {
            tracing::info!(output = %name, alerts = len, "delivering alerts spooled before the last stop");
        } else {
            tracing::debug!(output = %name, kind, durable, "output started");
        }
        let (control, control_rx) = watch::channel(Phase::Running);
        let (done_tx, done) = crossbeam_channel::unbounded();
        let s = shared.clone();
        let d = done_tx.clone();
        runtime.spawn(async move {
            run_intake(&s).await;
            drop(d);
        });
        let s = shared.clone();
        runtime.spawn(async move {
            run_sender(&s, deliver, control_rx).await;
            drop(done_tx);
        });
        OutputHandle {
            name,
            kind,
            shared,
            control,
            done,
        }
    }

    /// Hands alerts to the output with nothing waiting for them (fold
    /// summaries); see [`OutputHandle::enqueue_durable`].
    pub fn enqueue(&self, alerts: Vec<Alert>) {
        self.enqueue_durable(alerts, Durable::none());
    }

    /// Hands alerts to the output, with their batch's share of durability.
    /// With a spool, waits while the intake queue is full, and the share is
    /// released once the spool holds the alerts. Without one, never waits:
    /// the share is released at once and what does not fit is dropped and
    /// counted. Blocking: call it from a worker thread, not async code.
    pub fn enqueue_durable(&self, alerts: Vec<Alert>, share: Durable) {
        if alerts.is_empty() {
            share.release();
            return;
        }
        let shared = &self.shared;
        let cap = shared.settings.queue_alerts;
        let mut s = shared.intake();
        if shared.durable {
            // A batch larger than the whole queue goes in once it is empty.
            while !s.closed && !s.alerts.is_empty() && s.alerts.len() + alerts.len() > cap {
                metrics::counter!("peregrine_output_waits_total", "output" => self.name.to_string())
                    .increment(1);
                s = shared
                    .intake_room
                    .wait(s)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        if s.closed {
            drop(s);
            // Kept in the journal: evaluated again after the next start.
            share.keep();
            shared
                .drops
                .dropped("shutdown", alerts.len(), "the output is shutting down");
            return;
        }
        let mut alerts = alerts;
        let mut excess = 0;
        if shared.durable {
            s.shares.push(share);
        } else {
            // Memory-only: nothing here survives a crash anyway.
            share.release();
            let room = cap.saturating_sub(s.alerts.len());
            excess = alerts.len().saturating_sub(room);
            alerts.truncate(room);
        }
        s.alerts.extend(alerts);
        let queued = s.alerts.len();
        drop(s);
        metrics::gauge!("peregrine_output_queued_alerts", "output" => self.name.to_string())
            .set(queued as f64);
        if excess > 0 {
            shared.drops.dropped(
                "queue_full",
                excess,
                format_args!(
                    "its queue holds {cap} alerts, the store does not take them fast enough, \
                     and the output has no spool (delivery.spool = false), so it does not hold the engine back"
                ),
            );
        }
        shared.intake_ready.notify_one();
    }

    /// Stops taking alerts and lets the sender deliver until `deadline`.
    pub(crate) fn begin_shutdown(&self, deadline: Instant) {
        self.shared.intake().closed = true;
        self.shared.intake_ready.notify_one();
        self.shared.intake_room.notify_all();
        let _ = self
            .control
            .send(Phase::Draining(tokio::time::Instant::from_std(deadline)));
    }

    /// Waits (blocking) until both tasks ended or `deadline` passed. The
    /// tasks hold the channel's senders, so it disconnects when both ended.
    pub(crate) fn wait(&self, deadline: Instant) -> bool {
        let stopped = matches!(
            self.done.recv_deadline(deadline),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected)
        );
        if stopped {
            // Close the spool now rather than when the last handle is
            // dropped, so a process starting next on the same directory
            // finds it free.
            *self.shared.store.lock().unwrap_or_else(|p| p.into_inner()) =
                Store::Memory(super::spool::MemoryStore::new(1));
        }
        stopped
    }
}

/// Moves alerts from the intake queue to the store.
async fn run_intake(shared: &Shared) {
    let name = shared.settings.name.to_string();
    loop {
        let (batch, shares, closed) = {
            let mut s = shared.intake();
            let taken = (
                std::mem::take(&mut s.alerts),
                std::mem::take(&mut s.shares),
                s.closed,
            );
            shared.intake_room.notify_all();
            taken
        };
        if batch.is_empty() {
            shares.into_iter().for_each(Durable::release);
            if closed {
                break;
            }
            shared.intake_ready.notified().await;
            continue;
        }
        metrics::gauge!("peregrine_output_queued_alerts", "output" => name.clone()).set(0.0);
        let n = batch.len();
        let durable = shared.durable;
        // The shares are released (and the journal files of batches now
        // complete removed) on the store's blocking thread, off the async
        // threads. On an error the batches stay in the ingest journal and
        // are evaluated again after the next start; a store task that
        // panics drops its shares unreleased, which keeps them too.
        let result = shared
            .with_store(move |s| {
                let r = s.append(batch);
                match &r {
                    // Stored, or dropped for a reason counted below that a
                    // second evaluation would not mend.
                    Ok(_) => shares.into_iter().for_each(Durable::release),
                    Err(_) => shares.into_iter().for_each(Durable::keep),
                }
                r
            })
            .await;
        match result {
            Some(Ok(a)) => {
                if durable {
                    metrics::counter!("peregrine_output_spooled_total", "output" => name.clone())
                        .increment(a.stored as u64);
                }
                if a.full > 0 {
                    let (reason, why) = if durable {
                        ("spool_full", "the spool reached delivery.spool_max_bytes")
                    } else {
                        (
                            "buffer_full",
                            "the in-memory buffer reached delivery.queue_alerts",
                        )
                    };
                    shared.drops.dropped(reason, a.full, why);
                }
                if a.unencodable > 0 {
                    shared.drops.dropped(
                        "encode_error",
                        a.unencodable,
                        "the alert could not be serialised",
                    );
                }
            }
            Some(Err(e)) => {
                // A spool that cannot be written (disk full, I/O error)
                // loses these alerts for now: count them, say why, and keep
                // going, since the next write may work again. Their batches
                // stay in the ingest journal.
                shared.drops.dropped("spool_error", n, &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            None => shared
                .drops
                .dropped("spool_error", n, "the store task failed"),
        }
        shared.store_ready.notify_one();
    }
    shared.intake_finished.store(true, Ordering::SeqCst);
    shared.store_ready.notify_one();
}

/// Delivers stored alerts, oldest first, retrying failures.
async fn run_sender<D: Deliver>(
    shared: &Shared,
    mut deliver: D,
    mut control: watch::Receiver<Phase>,
) {
    let s = &shared.settings;
    let name = s.name.to_string();
    // Consecutive failed attempts.
    let mut failures: u32 = 0;
    // After a receiver refused a batch: alerts still to send one by one, to
    // find the one it refuses without dropping its neighbours.
    let mut isolate: usize = 0;
    loop {
        let phase = *control.borrow();
        let deadline = match phase {
            Phase::Running => None,
            Phase::Draining(d) => Some(d),
        };
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            break;
        }
        let limit = if isolate > 0 { 1 } else { s.batch_max };
        let Some(peeked) = shared.with_store(move |st| st.peek(limit)).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let peeked = match peeked {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(output = %name, "cannot read the spool: {e}");
                if wait(&mut control, Duration::from_secs(1), deadline).await {
                    continue;
                }
                break;
            }
        };
        if peeked.corrupt > 0 {
            shared.drops.dropped(
                "corrupt",
                peeked.corrupt,
                "a spooled alert could not be decoded",
            );
        }
        if peeked.entries.is_empty() {
            if deadline.is_some() && shared.intake_finished.load(Ordering::SeqCst) {
                break;
            }
            tokio::select! {
                _ = shared.store_ready.notified() => {}
                _ = control.changed() => {}
            }
            continue;
        }
        let (keys, alerts): (Vec<EntryKey>, Vec<Alert>) =
            peeked.entries.into_iter().map(|e| (e.key, e.alert)).unzip();
        let n = alerts.len();
        if failures > 0 {
            metrics::counter!("peregrine_output_retried_total", "output" => name.clone())
                .increment(1);
        }
        let started = Instant::now();
        let span = tracing::debug_span!("deliver", output = %name, kind = s.kind, alerts = n);
        let send = tracing::Instrument::instrument(deliver.send(&alerts), span);
        let result = match deadline {
            None => Some(send.await),
            Some(d) => tokio::select! {
                r = send => Some(r),
                _ = tokio::time::sleep_until(d) => None,
            },
        };
        metrics::histogram!("peregrine_output_send_seconds", "output" => name.clone())
            .record(started.elapsed().as_secs_f64());
        let Some(result) = result else {
            // Shutdown deadline in the middle of a send: nothing is removed,
            // so a durable spool sends these again on the next start.
            break;
        };
        let (delivered, error) = match result {
            Ok(()) => (n, None),
            Err(f) => (f.delivered.min(n), Some(f.error)),
        };
        if delivered > 0 {
            let done: Vec<EntryKey> = keys[..delivered].to_vec();
            if let Some(Err(e)) = shared.with_store(move |st| st.remove(&done)).await {
                // Delivered but still stored: they will be sent again, which
                // at-least-once allows.
                tracing::error!(output = %name, "cannot remove delivered alerts from the spool: {e}");
            }
            metrics::counter!("peregrine_output_sent_total", "output" => name.clone())
                .increment(delivered as u64);
            isolate = isolate.saturating_sub(delivered);
        }
        match error {
            None => {
                if failures > 0 {
                    tracing::info!(output = %name, failed_attempts = failures, "output delivers again");
                }
                failures = 0;
                metrics::gauge!("peregrine_output_up", "output" => name.clone()).set(1.0);
            }
            Some(SendError::Rejected(why)) => {
                failures = 0;
                metrics::gauge!("peregrine_output_up", "output" => name.clone()).set(1.0);
                let left = n - delivered;
                if left > 1 && isolate == 0 {
                    tracing::warn!(output = %name, "the receiver refused a batch of {left} alerts ({why}); sending them one by one");
                    isolate = left;
                    continue;
                }
                let refused = &alerts[delivered];
                let key = keys[delivered];
                if let Some(Err(e)) = shared.with_store(move |st| st.remove(&[key])).await {
                    tracing::error!(output = %name, "cannot remove a refused alert from the spool: {e}");
                }
                isolate = isolate.saturating_sub(1);
                shared.drops.dropped(
                    "rejected",
                    1,
                    format_args!(
                        "the receiver refused the alert (rule `{}`, audit ID {}): {why}",
                        refused.rule, refused.audit_id
                    ),
                );
            }
            Some(SendError::Retry {
                message,
                retry_after,
            }) => {
                failures = failures.saturating_add(1);
                metrics::counter!("peregrine_output_failed_total", "output" => name.clone())
                    .increment(1);
                metrics::gauge!("peregrine_output_up", "output" => name.clone()).set(0.0);
                let mut delay = backoff(failures, s.retry_initial, s.retry_max);
                if let Some(after) = retry_after {
                    delay = delay.max(after.min(MAX_RETRY_AFTER));
                }
                // Loud on the first failure, then on every doubling, so an
                // outage of hours logs a few dozen lines, not thousands.
                if failures.is_power_of_two() {
                    tracing::warn!(
                        output = %name,
                        attempt = failures,
                        pending = n,
                        "send failed, retrying in {:.1}s: {message}",
                        delay.as_secs_f64()
                    );
                } else {
                    tracing::debug!(output = %name, attempt = failures, "send failed: {message}");
                }
                if !wait(&mut control, delay, deadline).await {
                    break;
                }
            }
        }
    }
    let left = shared.store.lock().unwrap_or_else(|p| p.into_inner()).len();
    let durable = shared
        .store
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .is_durable();
    if left > 0 {
        if durable {
            tracing::info!(output = %name, alerts = left, "alerts stay in the spool and are delivered after the next start");
        } else {
            shared.drops.dropped(
                "shutdown",
                left as usize,
                "they were not delivered before the shutdown deadline and the output has no spool",
            );
        }
    }
    shared.drops.flush();
}

/// Longest `Retry-After` honoured: a receiver cannot park an output for hours.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(900);

/// Sleeps `delay`; returns early when the phase changes. False once the
/// shutdown deadline has passed.
async fn wait(
    control: &mut watch::Receiver<Phase>,
    delay: Duration,
    deadline: Option<tokio::time::Instant>,
) -> bool {
    let until = tokio::time::Instant::now() + delay;
    let until = deadline.map_or(until, |d| until.min(d));
    tokio::select! {
        _ = tokio::time::sleep_until(until) => {}
        _ = control.changed() => {}
    }
    deadline.is_none_or(|d| tokio::time::Instant::now() < d)
}

/// Exponential backoff with "equal jitter": at least half of the exponential
/// delay, plus a random part, so outputs failing together spread their
/// retries without ever retrying in a tight loop.
pub(crate) fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(max);
    let half = exp / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Counts dropped alerts and logs them, at most every ten seconds per
/// reason, so a flood of drops is visible without flooding the log.
pub(crate) struct DropLog {
    output: Arc<str>,
    state: Mutex<HashMap<&'static str, (usize, Option<Instant>)>>,
}

const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl DropLog {
    pub(crate) fn new(output: Arc<str>) -> Self {
        DropLog {
            output,
            state: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn dropped(&self, reason: &'static str, n: usize, why: impl std::fmt::Display) {
        if n == 0 {
            return;
        }
        metrics::counter!("peregrine_output_dropped_total", "output" => self.output.to_string(), "reason" => reason)
            .increment(n as u64);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (pending, last) = state.entry(reason).or_insert((0, None));
        *pending += n;
        if last.is_none_or(|t| t.elapsed() >= DROP_LOG_EVERY) {
            tracing::error!(output = %self.output, reason, dropped = *pending, "dropped {} alert(s): {why}", *pending);
            *pending = 0;
            *last = Some(Instant::now());
        }
    }

    /// Logs drops not yet logged.
    pub(crate) fn flush(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (reason, (pending, _)) in state.iter_mut() {
            if *pending > 0 {
                tracing::error!(output = %self.output, reason, dropped = *pending, "dropped {} more alert(s)", *pending);
                *pending = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outputs::spool::{DiskSpool, MemoryStore};
    use std::sync::atomic::AtomicUsize;

    /// A receiver that never answers: what is stored stays stored.
    struct Never;

    impl Deliver for Never {
        async fn send(&mut self, _alerts: &[Alert]) -> Result<(), SendFailure> {
            std::future::pending().await
        }
    }

    fn alert(n: usize) -> Alert {
        Alert {
            time_unix_nanos: 0,
            rule: "R".into(),
            rule_id: "r".into(),
            priority: crate::alert::Priority::Warning,
            output: format!("alert {n}"),
            tags: vec![],
            fields: vec![],
            tenant: "t".into(),
            cluster: "t".into(),
            module: "m".into(),
            module_digest: "d".into(),
            audit_id: format!("id-{n}"),
            hostname: "h".into(),
        }
    }

    fn start(rt: &tokio::runtime::Runtime, store: Store) -> Arc<OutputHandle> {
        let settings = Settings {
            name: "o".into(),
            kind: "test",
            queue_alerts: 4,
            batch_max: 100,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
        };
        Arc::new(OutputHandle::start(rt.handle(), settings, store, Never))
    }

    /// Five batches of three alerts, each with a share that counts its
    /// release in `done`, from another thread.
    fn push_batches(h: &Arc<OutputHandle>, done: &Arc<AtomicUsize>) -> std::thread::JoinHandle<()> {
        let (h, done) = (h.clone(), done.clone());
        std::thread::spawn(move || {
            for b in 0..5 {
                let done = done.clone();
                let share = Durable::new(move || {
                    done.fetch_add(1, Ordering::SeqCst);
                });
                h.enqueue_durable((0..3).map(|i| alert(b * 3 + i)).collect(), share);
            }
        })
    }

    #[test]
    fn a_spooled_output_makes_the_engine_wait_instead_of_dropping() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let spool = DiskSpool::open(&dir.path().join("o.sqlite"), 1 << 30).unwrap();
        let h = start(&rt, Store::Disk(spool));
        let store = h.shared.store.clone();
        // While the spool cannot be written, fifteen alerts cannot all fit
        // in a queue of four.
        let locked = store.lock().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let pusher = push_batches(&h, &done);
        let deadline = Instant::now() + Duration::from_secs(60);
        while h.shared.intake().alerts.len() < 3 {
            assert!(
                Instant::now() < deadline,
                "nothing reached the intake queue"
            );
            std::thread::yield_now();
        }
        assert_eq!(
            done.load(Ordering::SeqCst),
            0,
            "no batch is durable before the spool holds its alerts"
        );
        drop(locked);
        pusher.join().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::SeqCst) < 5 {
            assert!(Instant::now() < deadline, "shares were not all released");
            std::thread::yield_now();
        }
        assert_eq!(store.lock().unwrap().len(), 15, "nothing was dropped");
        rt.shutdown_background();
    }

    #[test]
    fn a_memory_only_output_never_makes_the_engine_wait() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let h = start(&rt, Store::Memory(MemoryStore::new(4)));
        let store = h.shared.store.clone();
        let locked = store.lock().unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        // Returns while the store is still locked: it drops what does not
        // fit rather than wait, and its shares are released at once.
        push_batches(&h, &done).join().unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 5);
        drop(locked);
        rt.shutdown_background();
    }

    #[test]
    fn backoff_grows_to_its_cap_and_stays_jittered() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        for failures in 1..40 {
            let exp = (initial * 2u32.pow((failures - 1).min(20))).min(max);
            let d = backoff(failures, initial, max);
            assert!(
                d >= exp / 2 && d <= exp,
                "attempt {failures}: {d:?} outside [{:?}, {exp:?}]",
                exp / 2
            );
        }
    }
}
