//! Shared helpers of the integration tests: where the built rule modules and
//! the audit corpus are, a real server on an ephemeral port, and a sink that
//! collects the alerts it raises. What needs no type of the `peregrine`
//! library is in `tests/support/`, shared with the host's test binary.

#[path = "../support/mod.rs"]
mod support;
pub use support::*;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use peregrine::alert::Alert;
use peregrine::alert::AlertSink;
use peregrine::app::{Options, Peregrine};
use peregrine::config::PeregrineConfig;
use peregrine::rules::Scope;

/// An HTTP client for the tests. reqwest shares the host's rustls build,
/// which has no crypto provider of its own: the host's must be installed first.
pub fn http_client() -> reqwest::Client {
    peregrine::tls::install_crypto_provider();
    reqwest::Client::new()
}

/// A configuration for tests: ephemeral port, shared compile cache, two
/// workers, `rule_matching` at its default (`all`) unless a test says otherwise.
pub fn test_config() -> PeregrineConfig {
    let mut c = PeregrineConfig::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.engine.cache_dir = Some(cache_dir());
    c.engine.workers = 2;
    // Tests that read alert history enable it with a path of their own.
    c.store.enabled = false;
    // Likewise the ingest journal: tests run in parallel, and one journal
    // file admits one process.
    c.server.journal.enabled = false;
    c
}

/// Collects every alert the pipeline raises.
#[derive(Default, Clone)]
pub struct Collector {
    alerts: Arc<Mutex<Vec<Alert>>>,
    gate: Arc<Gate>,
}

/// Lets a test hold the workers: while it is closed, a worker handing its
/// batch's alerts to the sink waits there (as it would behind a slow output),
/// so what is posted meanwhile stays queued.
#[derive(Default)]
struct Gate {
    state: Mutex<GateState>,
    opened: Condvar,
}

#[derive(Default)]
struct GateState {
    closed: bool,
    /// Workers waiting at the closed gate.
    waiting: usize,
}

impl AlertSink for Collector {
    fn submit(&self, alerts: Vec<Alert>) {
        let mut g = self.gate.state.lock().unwrap();
        g.waiting += 1;
        while g.closed {
            g = self.gate.opened.wait(g).unwrap();
        }
        g.waiting -= 1;
        drop(g);
        self.alerts.lock().unwrap().extend(alerts);
    }
}

/// Holds the workers at the sink until released or dropped (so a failing
/// test never leaves them waiting).
pub struct Hold(Arc<Gate>);

impl Hold {
    pub fn release(self) {}
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.state.lock().unwrap().closed = false;
        self.0.opened.notify_all();
    }
}

impl Collector {
    pub fn alerts(&self) -> Vec<Alert> {
        self.alerts.lock().unwrap().clone()
    }

    /// Closes the gate: the next workers to finish a batch wait with its
    /// alerts until the returned hold is released.
    pub fn hold(&self) -> Hold {
        self.gate.state.lock().unwrap().closed = true;
        Hold(self.gate.clone())
    }

    /// Waits until `n` workers wait at the closed gate.
    pub async fn wait_held(&self, n: usize) {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            let waiting = self.gate.state.lock().unwrap().waiting;
            if waiting >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} workers to be held; {waiting} are"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `pred` holds for the alerts so far (or fails after a
    /// generous deadline, naming what it waited for).
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Alert]) -> bool) -> Vec<Alert> {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            {
                // Tested in place: the tests that swap modules under load
                // collect thousands of alerts.
                let alerts = self.alerts.lock().unwrap();
                if pred(&alerts) {
                    return alerts.clone();
                }
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}; alerts so far: {:#?}",
                    alerts
                        .iter()
                        .map(|a| (&a.rule, &a.audit_id, &a.tenant))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn rules(&self) -> Vec<String> {
        self.alerts().into_iter().map(|a| a.rule).collect()
    }
}

/// A real server on 127.0.0.1, an ephemeral port, with its alerts collected.
pub struct TestServer {
    pub server: Option<Peregrine>,
    pub alerts: Collector,
    pub base: String,
    pub client: reqwest::Client,
    /// Keeps temporary rules directories alive.
    pub _dirs: Vec<tempfile::TempDir>,
}

impl TestServer {
    /// Serves the global rules directory `dir` (plus tenant directories
    /// named in `config`), watching for changes.
    pub async fn start(config: PeregrineConfig, dir: tempfile::TempDir) -> TestServer {
        Self::start_with(config, vec![(Scope::Global, dir)]).await
    }

    pub async fn start_with(
        mut config: PeregrineConfig,
        dirs: Vec<(Scope, tempfile::TempDir)>,
    ) -> TestServer {
        let alerts = Collector::default();
        // As an operator would: global directories on the command line, a
        // tenant's in its configuration.
        let mut global = Vec::new();
        for (scope, d) in &dirs {
            match scope {
                Scope::Global => global.push(d.path().to_path_buf()),
                Scope::Tenant(id) => config
                    .tenants
                    .get_mut(id.as_ref())
                    .unwrap_or_else(|| panic!("[tenants.{id}] must be configured for its rules"))
                    .rules_dirs
                    .push(d.path().to_path_buf()),
            }
        }
        let listen = config.server.listen;
        let mut server = Peregrine::build(
            Arc::new(config),
            Options {
                rules: global,
                alerts: Some(Arc::new(alerts.clone())),
                watch: true,
                require_all: false,
            },
        )
        .await
        .expect("server starts");
        let addr = server
            .serve(tokio::net::TcpListener::bind(listen).await.expect("listen"))
            .await
            .expect("server serves");
        let base = format!("http://{addr}");
        TestServer {
            server: Some(server),
            alerts,
            base,
            client: http_client(),
            _dirs: dirs.into_iter().map(|(_, d)| d).collect(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Posts a JSON body to the webhook path and returns status and JSON answer.
    pub async fn post(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, serde_json::Value) {
        let r = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let json = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request sent")
            .json()
            .await
            .expect("JSON answer")
    }

    /// Stops the server after evaluating everything queued.
    pub async fn shutdown(mut self) -> Vec<Alert> {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
        self.alerts.alerts()
    }
}

/// A copy of a component with a custom section appended: still valid, but
/// with another digest, so it stands for a new version of the module.
pub fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"peregrine-test-variant";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend_from_slice(&payload);
    out
}

/// Writes `bytes` to `path` the way deployment tools do: to a temporary
/// name, then renamed into place.
pub fn install(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Evaluates the events of `path` with the given modules and configuration
/// through the host's pipeline (the engine `serve` and `replay` use), and
/// returns the alerts in event order and the rejections.
pub fn evaluate_file(
    config: PeregrineConfig,
    modules: &[PathBuf],
    path: &Path,
) -> (Vec<Alert>, Vec<peregrine::ingest::Rejection>) {
    let dir = rules_dir(modules);
    let app = Peregrine::evaluate_only(
        Arc::new(config),
        Options {
            rules: vec![dir.path().to_path_buf()],
            require_all: true,
            ..Options::default()
        },
    )
    .expect("modules load");
    let decoded = peregrine::ingest::replay::read_input(
        &peregrine::ingest::replay::Input::File(path.to_path_buf()),
        3 << 20,
    )
    .expect("input readable");
    if decoded.events.is_empty() {
        return (Vec::new(), decoded.rejected);
    }
    let alerts = app
        .evaluate("default", "default", decoded.events)
        .expect("evaluated");
    (alerts, decoded.rejected)
}

/// Converts a JSON object into the TOML table a module's configuration is
/// written as.
pub fn toml_table(json: &serde_json::Value) -> toml::Table {
    serde::Deserialize::deserialize(json).expect("module configuration is a JSON object")
}
