//! The outputs' lifecycle: which outputs a configuration runs, starting
//! each on the output runtime with its store (on-disk spool or memory
//! queue), the thread that hands timed work (the router's fold windows) to
//! them, and the shutdown that lets them deliver for the grace period.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::delivery::{DeliveryConfig, OutputHandle, Settings};
use super::spool::{DiskSpool, MemoryStore, SpoolError, Store};
use super::stdout::StdoutConfig;
use super::{BuildError, OutputKindConfig};
use crate::config::{AlertFormat, PeregrineConfig};

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("output `{name}` ({kind}): {source}")]
    Build {
        name: String,
        kind: &'static str,
        source: BuildError,
    },
    #[error("output `{name}`: {source}")]
    Spool { name: String, source: SpoolError },
    #[error(
        "output `{name}` keeps a spool but no spool directory is known: set delivery.spool_dir (or PEREGRINE_SPOOL_DIR)"
    )]
    NoSpoolDir { name: String },
    #[error("cannot start the output runtime: {0}")]
    Runtime(std::io::Error),
}

/// The running outputs, on a runtime of their own: delivery never competes
/// with the webhook for threads, and works the same under `serve`, tests
/// and any other caller.
pub struct Outputs {
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handles: Vec<OutputHandle>,
    grace: Duration,
}

impl Outputs {
    /// Starts every output the configuration runs (see [`output_defs`]).
    pub fn start(config: &PeregrineConfig) -> Result<Self, OutputsError> {
        Self::start_defs(&output_defs(config), &config.delivery, config.output.format)
    }

    /// Opens every output's store and starts its tasks.
    fn start_defs(
        defs: &[(String, OutputKindConfig)],
        delivery: &DeliveryConfig,
        stdout_format: AlertFormat,
    ) -> Result<Self, OutputsError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("peregrine-output")
            .enable_all()
            .build()
            .map_err(OutputsError::Runtime)?;
        // Built before the outputs, so that on an error below its Drop
        // (which never blocks) shuts the runtime down, even when called from
        // async code.
        let mut outputs = Outputs {
            runtime: Mutex::new(Some(runtime)),
            handles: Vec::with_capacity(defs.len()),
            grace: Duration::from_millis(delivery.shutdown_grace_ms),
        };
        let handle = outputs
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .expect("runtime just built")
            .handle()
            .clone();
        let spool_dir = delivery.resolved_spool_dir();
        for (name, def) in defs {
            let d = def.delivery();
            let store = if def.spooled() {
                let dir = spool_dir
                    .as_ref()
                    .ok_or_else(|| OutputsError::NoSpoolDir { name: name.clone() })?;
                let spool = DiskSpool::open(&dir.join(format!("{name}.sqlite")), d.spool_max_bytes)
                    .map_err(|source| OutputsError::Spool {
                        name: name.clone(),
                        source,
                    })?;
                Store::Disk(spool)
            } else {
                Store::Memory(MemoryStore::new(d.queue_alerts))
            };
            let settings = Settings {
                name: Arc::from(name.as_str()),
                kind: def.kind(),
                queue_alerts: d.queue_alerts,
                batch_max: d.batch_max,
                retry_initial: Duration::from_millis(d.retry_initial_ms),
                retry_max: Duration::from_millis(d.retry_max_ms),
            };
            let started = def
                .start(&handle, settings, store, stdout_format)
                .map_err(|source| OutputsError::Build {
                    name: name.clone(),
                    kind: def.kind(),
                    source,
                })?;
            outputs.handles.push(started);
        }
        Ok(outputs)
    }

    pub fn handles(&self) -> &[OutputHandle] {
        &self.handles
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.handles.iter().position(|h| &*h.name == name)
    }

    /// Stops taking alerts, delivers for up to the grace period, then stops.
    /// Blocks: call it from a plain thread (or `spawn_blocking`).
    pub fn shutdown(&self) {
        let Some(runtime) = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let deadline = Instant::now() + self.grace;
        for h in &self.handles {
            h.begin_shutdown(deadline);
        }
        // The tasks stop by the deadline; the margin covers a store write
        // that is under way.
        let wait_until = deadline + Duration::from_secs(2);
        for h in &self.handles {
            if !h.wait(wait_until) {
                tracing::warn!(output = %h.name, "output did not stop in time");
            }
        }
        runtime.shutdown_background();
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        // Without an orderly shutdown, stop the tasks where they are: what a
        // durable spool holds is delivered on the next start.
        if let Some(rt) = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            rt.shutdown_background();
        }
    }
}

/// The outputs the configuration runs: every declared one, plus the
/// built-in `stdout` when something names it without declaring it.
fn output_defs(config: &PeregrineConfig) -> Vec<(String, OutputKindConfig)> {
    let mut defs: Vec<(String, OutputKindConfig)> = config
        .outputs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let named = config
        .routing
        .default_outputs
        .iter()
        .chain(config.routes.iter().flat_map(|r| r.outputs.iter()));
    if !config.outputs.contains_key("stdout") && named.into_iter().any(|n| n == "stdout") {
        defs.push((
            "stdout".into(),
            OutputKindConfig::Stdout(StdoutConfig::default()),
        ));
    }
    defs
}

/// A thread that calls `flush` every `tick` until stopped: how alerts that
/// wait on time rather than on an event (the router's fold summaries)
/// reach the outputs.
pub(crate) struct FlushLoop {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl FlushLoop {
    pub(crate) fn spawn(
        name: &str,
        tick: Duration,
        mut flush: impl FnMut() + Send + 'static,
    ) -> FlushLoop {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let (lock, cv) = &*stop;
                    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                    while !*stopped {
                        stopped = cv
                            .wait_timeout(stopped, tick)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                        if *stopped {
                            break;
                        }
                        flush();
                    }
                })
                .unwrap_or_else(|e| panic!("spawning the {name} thread: {e}"))
        };
        FlushLoop {
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Stops the thread and waits for it; a flush under way completes
    /// first. Later calls do nothing.
    pub(crate) fn stop(&self) {
        let (lock, cv) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
        if let Some(h) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for FlushLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_runs_when_named_even_undeclared() {
        let c = PeregrineConfig::parse("").unwrap();
        assert_eq!(output_defs(&c).len(), 1);
        let c = PeregrineConfig::parse("[routing]\ndefault_outputs = []\n").unwrap();
        assert!(output_defs(&c).is_empty());
    }

    #[test]
    fn the_flush_loop_runs_until_stopped() {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = n.clone();
        let l = FlushLoop::spawn("peregrine-test", Duration::from_millis(5), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        while n.load(std::sync::atomic::Ordering::SeqCst) < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        l.stop();
        let after = n.load(std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(n.load(std::sync::atomic::Ordering::SeqCst), after);
        l.stop();
    }
}
