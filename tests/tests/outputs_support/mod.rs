//! What the output tests share: a real server whose alerts go through the
//! real router and outputs, HTTP receivers on real ports that record what
//! they get, and reading `/metrics`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use peregrine::app::{Options, Peregrine};
use peregrine::config::PeregrineConfig;
use peregrine_tests::*;

/// How long a test waits for something that should happen: generous, since
/// the machines are shared and slow; a test only waits this long when it is
/// about to fail.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// A configuration from TOML (parsed and validated as a file would be),
/// with an ephemeral port, the shared compile cache and the spool in `spool`.
pub fn config(toml: &str, spool: &Path) -> PeregrineConfig {
    let mut c = PeregrineConfig::parse(toml)
        .unwrap_or_else(|e| panic!("test config does not parse: {e}\n{toml}"))
        .validated()
        .unwrap_or_else(|e| panic!("test config is invalid: {e}\n{toml}"));
    let base = test_config();
    c.server.listen = base.server.listen;
    c.engine.cache_dir = base.engine.cache_dir;
    c.engine.workers = base.engine.workers;
    c.store.enabled = base.store.enabled;
    c.server.journal.enabled = base.server.journal.enabled;
    c.delivery.spool_dir = Some(spool.to_path_buf());
    c
}

/// A server with the router and outputs its configuration describes, built
/// as `serve` builds it.
pub struct RoutedServer {
    pub server: Option<Peregrine>,
    pub base: String,
    pub client: reqwest::Client,
    _rules: tempfile::TempDir,
}

impl RoutedServer {
    pub async fn start(config: PeregrineConfig, modules: &[PathBuf]) -> RoutedServer {
        let dir = rules_dir(modules);
        let listen = config.server.listen;
        let mut server = Peregrine::build(
            Arc::new(config),
            Options {
                rules: vec![dir.path().to_path_buf()],
                ..Options::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("server does not start: {e:#}"));
        let addr = server
            .serve(tokio::net::TcpListener::bind(listen).await.unwrap())
            .await
            .expect("server serves");
        RoutedServer {
            base: format!("http://{addr}"),
            server: Some(server),
            client: peregrine_tests::http_client(),
            _rules: dir,
        }
    }

    pub fn hostname(&self) -> String {
        self.server
            .as_ref()
            .unwrap()
            .evaluator()
            .hostname
            .to_string()
    }

    /// Posts events to `/k8s-audit[/<tenant>]` and checks they were accepted.
    pub async fn post(&self, path: &str, token: Option<&str>, events: &[serde_json::Value]) {
        let mut req = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(event_list(events));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("webhook answers");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert_eq!(status, 200, "POST {path}: {body}");
    }

    /// Plain events with these audit IDs, for the default tenant.
    pub async fn post_ids(&self, ids: &[String]) {
        let events: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| event(id, "get", "pods", "default"))
            .collect();
        self.post("/k8s-audit", None, &events).await;
    }

    pub async fn metrics(&self) -> String {
        let r = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("metrics answer");
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    /// Waits until the metric reaches at least `min`.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], min: f64) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.metrics().await;
            if metric(&text, name, labels).is_some_and(|v| v >= min) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {name}{labels:?} >= {min}; metrics:\n{}",
                text.lines()
                    .filter(
                        |l| l.starts_with("peregrine_output") || l.starts_with("peregrine_alerts")
                    )
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (evaluating what is queued), then the outputs.
    pub async fn shutdown(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await.unwrap();
        }
    }
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// What the receiver answered.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} got a body that is not JSON ({e}): {}",
                self.path,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Decides the answer to a request, given the request and how many
/// requests came before it.
pub type Answer = Arc<dyn Fn(&Received, usize) -> (u16, String) + Send + Sync>;

pub fn always_ok() -> Answer {
    Arc::new(|_, _| (200, "ok".into()))
}

/// A local HTTP receiver recording every request.
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    pub async fn start(answer: Answer) -> Receiver {
        Self::start_on(0, answer).await
    }

    pub async fn start_on(port: u16, answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("receiver cannot listen on port {port}: {e}"));
        Self::serve(listener, answer)
    }

    pub fn serve(listener: tokio::net::TcpListener, answer: Answer) -> Receiver {
        let addr = listener.local_addr().unwrap();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = router(got.clone(), answer);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Receiver {
            addr,
            got,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Requests to `path` that were answered with a 2xx.
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path && (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until `path` accepted at least `n` requests.
    pub async fn wait_accepted(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.accepted(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} requests on {path}; got {}: {:#?}",
                got.len(),
                self.requests()
                    .iter()
                    .map(|r| (&r.path, r.status, String::from_utf8_lossy(&r.body)))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.unwrap();
        }
    }
}

/// The receiver's axum app: records, then answers as `answer` says.
pub fn router(got: Arc<Mutex<Vec<Received>>>, answer: Answer) -> axum::Router {
    axum::Router::new().fallback(
        move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
            let got = got.clone();
            let answer = answer.clone();
            async move {
                let mut r = Received {
                    method,
                    path: uri.path().to_string(),
                    headers,
                    body,
                    status: 0,
                };
                let mut all = got.lock().unwrap();
                let (status, text) = answer(&r, all.len());
                r.status = status;
                all.push(r);
                (StatusCode::from_u16(status).unwrap(), text)
            }
        },
    )
}

/// `n` distinct audit IDs with a prefix.
pub fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:04}")).collect()
}

/// The audit IDs of Falco-shaped alert bodies.
pub fn audit_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            r.json()["output_fields"]["ka.auditid"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}
