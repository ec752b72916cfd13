//! `peregrine serve`

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::cli::ServeArgs;
use crate::config::PeregrineConfig;
use crate::evaluate::AlertSink;
use crate::evaluate::{Batch, BatchQueue};
use crate::ingest::Dedup;
use crate::ingest::journal::{Journal, JournalEntry};
use crate::oci::{Pollers, Sources};
use crate::pipeline::{Pipeline, rules_dirs};
use crate::reload::{RulesDir, RulesWatcher};
use crate::router::AlertRouter;
use crate::server::{AppState, app, reserve_app};
use crate::store::{AlertStore, Tee};

/// A running webhook server with its pipeline.
pub struct Server {
    addr: SocketAddr,
    pub state: Arc<AppState>,
    pipeline: Option<Pipeline>,
    _watcher: Option<RulesWatcher>,
    _pollers: Pollers,
    file_sources: Vec<crate::ingest::sources::Running>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    /// Loads the modules, starts the workers and binds the listener (port 0
    /// picks a free port; see [`Server::addr`]).
    pub async fn start(
        config: Arc<PeregrineConfig>,
        mut dirs: Vec<RulesDir>,
        sink: Arc<dyn AlertSink>,
        watch: bool,
    ) -> anyhow::Result<Server> {
        crate::prometheus::install();
        // The first pull of every OCI source, so its modules load with the
        // others; a registry that is down leaves the cached version.
        let sources = Arc::new(Sources::from_config(&config)?);
        sources.sync_all().await;
        let pulled: Vec<std::path::PathBuf> = sources.dirs().into_iter().map(|d| d.path).collect();
        for d in sources.dirs() {
            if !dirs.iter().any(|x| x.path == d.path) {
                dirs.push(d);
            }
        }
        let store = match (config.store.enabled, config.store.resolved_path()) {
            (true, Some(path)) => Some(AlertStore::open(&path, config.store.max_alerts)?),
            (true, None) => {
                tracing::warn!(
                    "no place for the alert store (set store.path, HOME or XDG_DATA_HOME); alert history is off"
                );
                None
            }
            (false, _) => None,
        };
        let sink: Arc<dyn AlertSink> = match &store {
            Some(store) => Arc::new(Tee(vec![store.clone(), sink])),
            None => sink,
        };
        // Opened before the modules load, so a second process on the same
        // journal stops here, before it does any work.
        let journal = match (
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
        };
        let cfg = config.clone();
        // Loading compiles modules: seconds of CPU, not for the async threads.
        let pipeline = tokio::task::spawn_blocking(move || Pipeline::start(cfg, dirs, sink, false))
            .await
            .context("module loading panicked")??;
        if let Some(journal) = &journal {
            let (journal, queue) = (journal.clone(), pipeline.queue.clone());
            let tenants = pipeline.tenants.clone();
            let max_event = config.server.max_event_bytes;
            tokio::task::spawn_blocking(move || recover(&journal, &queue, &tenants, max_event))
                .await
                .context("journal recovery panicked")??;
        }
        let watcher = if watch {
            Some(pipeline.rules.watch_except(&pulled)?)
        } else {
            None
        };
        let pollers = sources.spawn_pollers(pipeline.rules.clone());
        let state = Arc::new(AppState {
            config: config.clone(),
            tenants: pipeline.tenants.clone(),
            queue: pipeline.queue.clone(),
            dedup: Dedup::new(config.server.dedup_capacity),
            rules: pipeline.rules.clone(),
            sources,
            started: Instant::now(),
            store,
            journal,
            push: Arc::new(crate::ingest::sources::PushSources::from_config(&config)?),
        });
        let file_sources = crate::ingest::sources::start_pulls(&config, &state)?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let addr = listener.local_addr()?;
        warn_if_exposed(addr, &state.tenants);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let routers = crate::connections::Routers {
            app: app(state.clone()),
            reserve: reserve_app(state.clone()),
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
        Ok(Server {
            addr,
            state,
            pipeline: Some(pipeline),
            _watcher: watcher,
            _pollers: pollers,
            file_sources,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pipeline(&self) -> &Pipeline {
        self.pipeline
            .as_ref()
            .expect("pipeline runs until shutdown")
    }

    /// Stops accepting requests, then evaluates every queued event before
    /// returning, so nothing acknowledged is lost.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.context("server task panicked")??;
        }
        // Sources stop before the queue closes: what they read and did not
        // hand over is read again at the next start.
        let file_sources = std::mem::take(&mut self.file_sources);
        tokio::task::spawn_blocking(move || file_sources.into_iter().for_each(|s| s.stop()))
            .await?;
        if let Some(mut pipeline) = self.pipeline.take() {
            tokio::task::spawn_blocking(move || pipeline.drain()).await?;
        }
        Ok(())
    }
}

/// Beyond loopback, an open API shows every tenant's alerts and an open
/// webhook takes anyone's events: allowed (a NetworkPolicy may guard the
/// port), but never silently.
fn warn_if_exposed(addr: SocketAddr, tenants: &crate::tenants::Tenants) {
    if addr.ip().is_loopback() {
        return;
    }
    if tenants.api_open() {
        tracing::warn!(
            "the API and UI on {addr} are open: anyone who can reach it reads every alert and module; \
             set auth.admin_tokens (or give tenants tokens) to require a token"
        );
    }
    if tenants.default_open() {
        tracing::warn!(
            "the webhook POST /k8s-audit on {addr} takes events without a token: anyone who can reach it \
             can post audit events; give [tenants.default] tokens or set auth.default_tenant_open = false"
        );
    }
}

/// Queues the batches a previous process acknowledged but did not evaluate,
/// before any new request is taken.
fn recover(
    journal: &Arc<Journal>,
    queue: &BatchQueue,
    tenants: &crate::tenants::Tenants,
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn run(config: Arc<PeregrineConfig>, args: ServeArgs) -> anyhow::Result<()> {
    let dirs = rules_dirs(&config, &args.rules.rules)?;
    for d in &dirs {
        tracing::info!(scope = %d.scope, "rules directory {}", d.path.display());
    }
    // Before the outputs start, so the gauges they set at start (what each
    // spool holds) are recorded.
    crate::prometheus::install();
    // Opening the outputs' spools is file I/O: off the async threads.
    let cfg = config.clone();
    let router = Arc::new(
        tokio::task::spawn_blocking(move || AlertRouter::start(&cfg))
            .await
            .context("starting the outputs panicked")??,
    );
    let sink: Arc<dyn AlertSink> = router.clone();
    let server = Server::start(config, dirs, sink, !args.no_watch).await?;
    shutdown_signal().await;
    tracing::info!("shutting down: finishing queued events");
    server.shutdown().await?;
    // Every event is evaluated and its alerts routed: now let the outputs
    // deliver for their grace period.
    tokio::task::spawn_blocking(move || router.shutdown())
        .await
        .context("stopping the outputs panicked")?;
    Ok(())
}
