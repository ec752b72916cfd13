//! The application: every stage of one Peregrine process, built from a
//! [`PeregrineConfig`] in flow order (sources/ingest -> queue -> evaluate ->
//! alert -> route -> outputs/store), and one shutdown sequence that stops
//! them in the same order.
//!
//! `serve`, `replay`, `check`, the bench and the tests all build a
//! [`Peregrine`]; the commands only turn arguments into a configuration.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use peregrine_sdk::audit::AuditEvent;

use crate::alert::Alert;
use crate::alert::AlertSink;
use crate::config::PeregrineConfig;
use crate::engine::{EngineOptions, WasmEngine};
use crate::evaluate::{Evaluator, WorkerPool};
use crate::ingest::Dedup;
use crate::ingest::journal::{Journal, JournalEntry};
use crate::oci::{Pollers, Sources};
use crate::queue::{Batch, BatchQueue};
use crate::reload::RulesWatcher;
use crate::router::AlertRouter;
use crate::rules::registry::{RuleManager, RulesDir};
use crate::rules::{ModuleLoader, Scope, StateStore};
use crate::server::state::AppState;
use crate::store::{AlertStore, Tee};
use crate::tenants::Tenants;

/// What to build besides the configuration.
#[derive(Default)]
pub struct Options {
    /// Global rules directories, as `--rules` gives them. Empty: the
    /// configuration's `rules.dirs`, else the default places
    /// ([`crate::paths::default_rules_dir`]). Tenants' directories and the
    /// caches of OCI sources come from the configuration either way.
    pub rules: Vec<PathBuf>,
    /// Where alerts go instead of the configured routes and outputs (and
    /// the alert store): a test's collector, a bench's counter.
    pub alerts: Option<Arc<dyn AlertSink>>,
    /// Reload modules when their files change.
    pub watch: bool,
    /// Refuse to start when a module fails to load (replay, the bench),
    /// instead of reporting it and going on without it (serve, check).
    pub require_all: bool,
}

/// A running Peregrine process: the rules and the evaluation workers, and
/// for serving also the store, the journal, the routes and outputs, and the
/// HTTP surface and pull sources once [`Peregrine::serve`] starts them.
pub struct Peregrine {
    config: Arc<PeregrineConfig>,
    engine: Arc<WasmEngine>,
    rules: Arc<RuleManager>,
    queue: Arc<BatchQueue>,
    evaluator: Arc<Evaluator>,
    tenants: Arc<Tenants>,
    workers: Option<WorkerPool>,
    /// The configured outputs; `None` when [`Options::alerts`] replaces them
    /// or nothing is routed (replay, check).
    router: Option<Arc<AlertRouter>>,
    /// The serving half, built by [`Peregrine::build`] only.
    serving: Option<Serving>,
}

/// What serving adds to evaluation.
struct Serving {
    state: Arc<AppState>,
    /// Directories of OCI sources: their pollers reload them, not the watcher.
    pulled: Vec<PathBuf>,
    watch: bool,
    running: Option<Running>,
}

/// What [`Peregrine::serve`] started.
struct Running {
    addr: SocketAddr,
    _watcher: Option<RulesWatcher>,
    _pollers: Pollers,
    file_sources: Vec<crate::ingest::sources::Running>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Peregrine {
    /// Builds the whole process for serving: pulls the OCI sources once,
    /// opens the alert store and the journal, starts the outputs, loads the
    /// modules and starts the workers, then queues what the journal holds
    /// from the last run. Nothing listens until [`Peregrine::serve`].
    pub async fn build(config: Arc<PeregrineConfig>, options: Options) -> anyhow::Result<Self> {
        // Before the outputs start, so the gauges they set at start (what
        // each spool holds) are recorded.
        crate::prometheus::install();
        // Includes the cache directory of every OCI source.
        let dirs = rules_dirs(&config, &options.rules)?;
        // The first pull of every OCI source, so its modules load with the
        // others; a registry that is down leaves the cached version.
        let sources = Arc::new(Sources::from_config(&config)?);
        sources.sync_all().await;
        let pulled: Vec<PathBuf> = sources.dirs().into_iter().map(|d| d.path).collect();
        let store = open_store(&config)?;
        // Opened before the modules load, so a second process on the same
        // journal stops here, before it does any work.
        let journal = open_journal(&config)?;
        let (router, sink): (Option<Arc<AlertRouter>>, Arc<dyn AlertSink>) = match options.alerts {
            Some(sink) => (None, sink),
            None => {
                // Opening the outputs' spools is file I/O: off the async threads.
                let cfg = config.clone();
                let router = Arc::new(
                    tokio::task::spawn_blocking(move || AlertRouter::start(&cfg))
                        .await
                        .context("starting the outputs panicked")??,
                );
                (Some(router.clone()), router)
            }
        };
        let sink: Arc<dyn AlertSink> = match &store {
            Some(store) => Arc::new(Tee(vec![store.clone(), sink])),
            None => sink,
        };
        let cfg = config.clone();
        let require_all = options.require_all;
        // Loading compiles modules: seconds of CPU, not for the async threads.
        let mut app = tokio::task::spawn_blocking(move || {
            Self::evaluation(cfg, dirs, sink, router, require_all)
        })
        .await
        .context("module loading panicked")??;
        if let Some(journal) = &journal {
            let (journal, queue) = (journal.clone(), app.queue.clone());
            let tenants = app.tenants.clone();
            let max_event = config.server.max_event_bytes;
            tokio::task::spawn_blocking(move || recover(&journal, &queue, &tenants, max_event))
                .await
                .context("journal recovery panicked")??;
        }
        let state = Arc::new(AppState {
            server: config.server.clone(),
            tenants: app.tenants.clone(),
            queue: app.queue.clone(),
            dedup: Dedup::new(config.server.dedup_capacity),
            rules: app.rules.clone(),
            sources,
            started: Instant::now(),
            store,
            journal,
            push: Arc::new(crate::ingest::sources::PushSources::from_config(
                &config.sources,
            )?),
        });
        app.serving = Some(Serving {
            state,
            pulled,
            watch: options.watch,
            running: None,
        });
        Ok(app)
    }

    /// Builds the evaluation stages only, for `replay` and `check`: the
    /// rules, the queue and the workers, with no store, journal, outputs or
    /// HTTP. Alerts come back through [`Peregrine::in_order`].
    pub fn evaluate_only(config: Arc<PeregrineConfig>, options: Options) -> anyhow::Result<Self> {
        let dirs = rules_dirs(&config, &options.rules)?;
        let sink = options.alerts.unwrap_or_else(|| Arc::new(Unrouted));
        Self::evaluation(config, dirs, sink, None, options.require_all)
    }

    /// Loads the modules and starts the workers. Modules that fail to load
    /// are reported and skipped; `require_all` turns that into an error.
    fn evaluation(
        config: Arc<PeregrineConfig>,
        dirs: Vec<RulesDir>,
        sink: Arc<dyn AlertSink>,
        router: Option<Arc<AlertRouter>>,
        require_all: bool,
    ) -> anyhow::Result<Self> {
        for d in &dirs {
            tracing::info!(scope = %d.scope, "rules directory {}", d.path.display());
        }
        let workers = config.engine.worker_count();
        let engine = WasmEngine::new(EngineOptions {
            epoch_tick: std::time::Duration::from_millis(config.engine.epoch_tick_ms),
            // Each worker holds one instance at a time; loads and reloads
            // need a few more.
            max_instances: (workers + 4) as u32,
            max_memory_bytes: config.sandbox.max_memory_bytes(),
            cache_dir: config.engine.resolved_cache_dir(),
        })?;
        let tenants = Arc::new(Tenants::from_config(&config.auth, &config.tenants)?);
        let states = Arc::new(StateStore::new(peregrine_sdk::state::StateLimits {
            max_keys: config.engine.state_max_keys,
            max_members: config.engine.state_max_members,
        }));
        {
            let states = Arc::downgrade(&states);
            crate::prometheus::on_scrape(move || states.upgrade().map(|s| s.report()).is_some());
        }
        let loader = ModuleLoader::new(engine.clone(), config.clone(), states.clone());
        let rules = RuleManager::new(loader, dirs, tenants.clone());
        let (live, failed) = rules.load_all();
        for (path, err) in &failed {
            tracing::error!(module = %path.display(), "{err}");
        }
        if require_all && !failed.is_empty() {
            let list: Vec<String> = failed
                .iter()
                .map(|(p, e)| format!("{}: {e}", p.display()))
                .collect();
            anyhow::bail!(
                "{} module(s) failed to load:\n  {}",
                failed.len(),
                list.join("\n  ")
            );
        }
        warn_unknown_module_tables(&config, &rules);
        if live == 0 {
            tracing::warn!(
                "no rule module is live: events will be accepted but nothing evaluates them"
            );
        }
        let queue = Arc::new(BatchQueue::new(
            config.server.queue_events,
            config.server.queue_bytes,
        ));
        queue.set_workers(workers);
        let evaluator = Arc::new(Evaluator {
            engine: engine.clone(),
            rules: rules.current().clone(),
            states,
            rule_matching: config.rules.rule_matching,
            hostname: hostname::get()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unknown".into())
                .into(),
            batch_events: config.engine.batch_events,
        });
        let pool = WorkerPool::start(workers, queue.clone(), evaluator.clone(), sink);
        Ok(Peregrine {
            config,
            engine,
            rules,
            queue,
            evaluator,
            tenants,
            workers: Some(pool),
            router,
            serving: None,
        })
    }

    /// Serves the HTTP surface on `listener` and starts the rules watcher,
    /// the OCI pollers and the pull sources; returns the address served.
    /// The server runs until [`Peregrine::shutdown`].
    pub async fn serve(&mut self, listener: tokio::net::TcpListener) -> anyhow::Result<SocketAddr> {
        let serving = self.serving.as_mut().context(
            "this Peregrine was built for evaluation only; build it with Peregrine::build to serve",
        )?;
        anyhow::ensure!(serving.running.is_none(), "already serving");
        let state = serving.state.clone();
        let config = &self.config;
        let watcher = if serving.watch {
            Some(self.rules.watch_except(&serving.pulled)?)
        } else {
            None
        };
        let pollers = state.sources.spawn_pollers(self.rules.clone());
        let file_sources = crate::ingest::sources::start_pulls(&config.sources, &state)?;
        let addr = listener.local_addr()?;
        state.tenants.warn_if_exposed(addr);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let routers = crate::connections::Routers {
            app: crate::server::app(state.clone()),
            reserve: crate::server::reserve_app(state.clone()),
        };
        let stopped = async {
            let _ = stopped.await;
        };
        let scheme = if config.server.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let tls = config
            .server
            .tls
            .as_ref()
            .map(|t| t.acceptor())
            .transpose()?;
        crate::connections::fit_file_limit(config.server.max_connections);
        let server_config = config.server.clone();
        let task = tokio::spawn(async move {
            crate::connections::serve(listener, tls, routers, &server_config, stopped).await
        });
        tracing::info!("listening on {scheme}://{addr} (POST /k8s-audit)");
        serving.running = Some(Running {
            addr,
            _watcher: watcher,
            _pollers: pollers,
            file_sources,
            stop,
            task,
        });
        Ok(addr)
    }

    /// Serves on `listener` until `shutdown` completes, then stops.
    pub async fn run(
        mut self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.serve(listener).await?;
        shutdown.await;
        tracing::info!("shutting down: finishing queued events");
        self.shutdown().await
    }

    /// The one shutdown sequence, in flow order: stop taking requests, stop
    /// the sources (what they read and did not hand over is read again at
    /// the next start), evaluate every queued event, and then let the
    /// outputs deliver for their grace period. Nothing acknowledged is lost.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(running) = self.serving.as_mut().and_then(|s| s.running.take()) {
            let _ = running.stop.send(());
            running.task.await.context("server task panicked")??;
            let file_sources = running.file_sources;
            tokio::task::spawn_blocking(move || file_sources.into_iter().for_each(|s| s.stop()))
                .await?;
        }
        tokio::task::spawn_blocking(move || self.stop())
            .await
            .context("stopping the pipeline panicked")?;
        Ok(())
    }

    /// Evaluates what is queued, then stops the outputs (blocking).
    fn stop(&mut self) {
        self.queue.close();
        if let Some(w) = self.workers.take() {
            w.join();
        }
        if let Some(router) = self.router.take() {
            router.shutdown();
        }
    }

    /// Evaluation in input order, with the workers in parallel: see [`InOrder`].
    pub fn in_order(&self, tenant: &str) -> InOrder<'_> {
        InOrder {
            queue: &self.queue,
            tenant: tenant.into(),
            pending: VecDeque::new(),
            window: self.config.engine.worker_count() * 2,
        }
    }

    /// Evaluates one batch of a tenant's cluster and returns its alerts.
    pub fn evaluate(
        &self,
        tenant: &str,
        cluster: &str,
        events: Vec<AuditEvent>,
    ) -> anyhow::Result<Vec<Alert>> {
        let mut out = Vec::new();
        let mut keep = |done: Done| {
            out = done.alerts;
            Ok(())
        };
        let mut order = self.in_order(tenant);
        order.submit(cluster.into(), events, &mut keep)?;
        order.finish(&mut keep)?;
        Ok(out)
    }

    /// The address [`Peregrine::serve`] listens on.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.serving.as_ref()?.running.as_ref().map(|r| r.addr)
    }

    pub fn config(&self) -> &Arc<PeregrineConfig> {
        &self.config
    }

    pub fn engine(&self) -> &Arc<WasmEngine> {
        &self.engine
    }

    pub fn rules(&self) -> &Arc<RuleManager> {
        &self.rules
    }

    pub fn queue(&self) -> &Arc<BatchQueue> {
        &self.queue
    }

    pub fn evaluator(&self) -> &Arc<Evaluator> {
        &self.evaluator
    }

    pub fn tenants(&self) -> &Arc<Tenants> {
        &self.tenants
    }

    /// What the HTTP handlers share; `None` for an evaluation-only build.
    pub fn state(&self) -> Option<&Arc<AppState>> {
        self.serving.as_ref().map(|s| &s.state)
    }
}

impl Drop for Peregrine {
    /// A Peregrine dropped without [`Peregrine::shutdown`] (replay, check, a
    /// failed start) still evaluates what it queued and stops its outputs.
    fn drop(&mut self) {
        self.stop();
    }
}

/// The sink of an evaluation-only build: every batch there is queued with
/// its own reply (see [`InOrder`]), so nothing reaches it.
struct Unrouted;

impl AlertSink for Unrouted {
    fn submit(&self, _alerts: Vec<Alert>) {}
}

/// A batch evaluated by [`InOrder`], handed back in submission order.
pub struct Done {
    pub cluster: Arc<str>,
    pub events: usize,
    pub alerts: Vec<Alert>,
}

/// Evaluation in input order, as `replay`, the bench and the tests need it.
/// Stateful rules (sequences, first-seen) need a cluster's events in order,
/// so a batch waits until its cluster's previous batch is evaluated; batches
/// of different clusters evaluate in parallel. Results come back oldest
/// first, and at most a window of batches (two per worker) is in flight.
pub struct InOrder<'a> {
    queue: &'a BatchQueue,
    tenant: Arc<str>,
    pending: VecDeque<Pending>,
    window: usize,
}

struct Pending {
    rx: crossbeam_channel::Receiver<Vec<Alert>>,
    events: usize,
    cluster: Arc<str>,
}

impl InOrder<'_> {
    /// Queues a batch of `cluster`, first handing `done` every earlier batch
    /// it must wait for.
    pub fn submit(
        &mut self,
        cluster: Arc<str>,
        events: Vec<AuditEvent>,
        done: &mut dyn FnMut(Done) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while self.pending.iter().any(|p| p.cluster == cluster) {
            self.finish_one(done)?;
        }
        let n = events.len();
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.queue
            .push_wait(Batch {
                tenant: self.tenant.clone(),
                cluster: cluster.clone(),
                events,
                reply: Some(tx),
                journal: None,
            })
            .map_err(|e| anyhow::anyhow!("cannot queue events: {e}"))?;
        self.pending.push_back(Pending {
            rx,
            events: n,
            cluster,
        });
        while self.pending.len() >= self.window.max(1) {
            self.finish_one(done)?;
        }
        Ok(())
    }

    /// Waits for every batch still in flight.
    pub fn finish(
        mut self,
        done: &mut dyn FnMut(Done) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        while !self.pending.is_empty() {
            self.finish_one(done)?;
        }
        Ok(())
    }

    fn finish_one(
        &mut self,
        done: &mut dyn FnMut(Done) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(p) = self.pending.pop_front() {
            let alerts =
                p.rx.recv()
                    .map_err(|_| anyhow::anyhow!("an evaluation worker stopped"))?;
            done(Done {
                cluster: p.cluster,
                events: p.events,
                alerts,
            })?;
        }
        Ok(())
    }
}

fn open_store(config: &PeregrineConfig) -> anyhow::Result<Option<Arc<AlertStore>>> {
    Ok(match (config.store.enabled, config.store.resolved_path()) {
        (true, Some(path)) => Some(AlertStore::open(&path, config.store.max_alerts)?),
        (true, None) => {
            tracing::warn!(
                "no place for the alert store (set store.path, HOME or XDG_DATA_HOME); alert history is off"
            );
            None
        }
        (false, _) => None,
    })
}

fn open_journal(config: &PeregrineConfig) -> anyhow::Result<Option<Arc<Journal>>> {
    Ok(
        match (
            config.server.journal.enabled,
            config.server.journal.resolved_dir(),
        ) {
            (true, Some(path)) => Some(Journal::open(&path)?),
            (true, None) => {
                tracing::warn!(
                    "no place for the ingest journal (set server.journal.dir, HOME or XDG_DATA_HOME); \
                     events queued at a crash would be lost"
                );
                None
            }
            (false, _) => None,
        },
    )
}

/// Queues the batches a previous process acknowledged but did not evaluate,
/// before any new request is taken.
fn recover(
    journal: &Arc<Journal>,
    queue: &BatchQueue,
    tenants: &Tenants,
    max_event_bytes: usize,
) -> anyhow::Result<()> {
    let pending = journal.pending(max_event_bytes)?;
    if pending.is_empty() {
        return Ok(());
    }
    let events: usize = pending.iter().map(|p| p.events.len()).sum();
    tracing::warn!(
        batches = pending.len(),
        events,
        "evaluating events acknowledged before the last stop but not evaluated"
    );
    metrics::counter!("peregrine_journal_recovered_total").increment(events as u64);
    for p in pending {
        // Written before clusters were recorded: the tenant's own.
        let cluster = p.cluster.unwrap_or_else(|| {
            tenants
                .get(&p.tenant)
                .map_or_else(|| p.tenant.clone(), |t| t.cluster.clone())
        });
        let batch = Batch {
            tenant: p.tenant,
            cluster,
            events: p.events,
            reply: None,
            journal: Some(JournalEntry::new(journal.clone(), p.id)),
        };
        // The queue may be smaller than what the journal holds: wait for the
        // workers to make room. They never wait for this thread (outputs
        // store what they take whatever their receivers do), so the wait
        // ends.
        queue
            .push_wait(batch)
            .context("the queue closed during journal recovery")?;
    }
    Ok(())
}

/// The rules directories to load: `cli_dirs` if given, else the config's
/// `rules.dirs`, else the first default place that exists
/// ([`crate::paths::default_rules_dir`]) unless `rules.sources` bring the
/// modules; plus the cache directory of every source, and every tenant's own
/// directories.
pub fn rules_dirs(config: &PeregrineConfig, cli_dirs: &[PathBuf]) -> anyhow::Result<Vec<RulesDir>> {
    let global: Vec<PathBuf> = if !cli_dirs.is_empty() {
        cli_dirs.to_vec()
    } else if !config.rules.dirs.is_empty() {
        config.rules.dirs.clone()
    } else if !config.rules.sources.is_empty() {
        Vec::new()
    } else {
        vec![crate::paths::default_rules_dir()?]
    };
    let mut dirs = Vec::new();
    for path in global {
        dirs.push(RulesDir {
            scope: Scope::Global,
            path: canonical_dir(&path)?,
        });
    }
    dirs.extend(Sources::from_config(config)?.dirs());
    for (id, tenant) in &config.tenants {
        for path in &tenant.rules_dirs {
            dirs.push(RulesDir {
                scope: Scope::Tenant(id.as_str().into()),
                path: canonical_dir(path).with_context(|| format!("tenant `{id}`"))?,
            });
        }
    }
    Ok(dirs)
}

fn canonical_dir(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    let p = path
        .canonicalize()
        .with_context(|| format!("rules directory {} does not exist", path.display()))?;
    if !p.is_dir() {
        anyhow::bail!("rules directory {} is not a directory", path.display());
    }
    Ok(p)
}

/// A `[modules.<name>]` or `[sandbox.modules.<name>]` that names no module
/// in the directories is most likely a typo, and the module it meant runs
/// with its defaults: say so. A warning, not an error, since the module may
/// be installed after the start.
fn warn_unknown_module_tables(config: &PeregrineConfig, rules: &RuleManager) {
    let report = rules.report(None);
    let known = |scope: &str, key: &str| report.iter().any(|m| m.scope == scope && m.key == key);
    let any = |key: &str| report.iter().any(|m| m.key == key);
    for key in config.modules.keys() {
        if !known("global", key) {
            tracing::warn!(
                "[modules.{key}] names no module in the global rules directories (no {key}.wasm): its settings apply to nothing"
            );
        }
    }
    for key in config.sandbox.modules.keys() {
        if !any(key) {
            tracing::warn!(
                "[sandbox.modules.{key}] names no module in the rules directories (no {key}.wasm): its limits apply to nothing"
            );
        }
    }
    for (id, tenant) in &config.tenants {
        for key in tenant.modules.keys() {
            if !known(&format!("tenant:{id}"), key) {
                tracing::warn!(
                    "[tenants.{id}.modules.{key}] names no module in tenant `{id}`'s rules directories: its settings apply to nothing"
                );
            }
        }
    }
}
