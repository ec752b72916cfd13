//! What both integration-test binaries share, written once: where the
//! built rule modules, the audit corpus and the compile cache are, audit
//! events to post, waiting, reading `/metrics`, requests with curl, and the
//! real `peregrine` binary in a child process on an ephemeral port.
//!
//! Compiled into the `peregrine-tests` library (`tests/src/lib.rs`) and into
//! the host's test binary (`host/tests/main.rs`), both with `#[path]`: it
//! needs no type of the `peregrine` library, so the host's tests, which only
//! run the binary, do not link a second copy of it. Cargo says where the
//! binary is to the host's tests only, so only they can start it.

// Each binary uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---- Where things are ----

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A module built by `scripts/build-rules.sh` from `example-rules/`.
pub fn example_module(stem: &str) -> PathBuf {
    built(&root().join("example-rules/build"), stem)
}

/// An optional example module (`example-rules/build/optional/`).
pub fn optional_module(stem: &str) -> PathBuf {
    built(&root().join("example-rules/build/optional"), stem)
}

/// A misbehaving or instrumented module from `tests/fixture-rules/`.
pub fn fixture_module(stem: &str) -> PathBuf {
    built(&root().join("tests/build/fixture-rules"), stem)
}

fn built(dir: &Path, stem: &str) -> PathBuf {
    let p = dir.join(format!("{stem}.wasm"));
    assert!(
        p.is_file(),
        "{} is missing: build the rule modules first (`make rules`, which `make test` runs)",
        p.display()
    );
    p
}

/// The shared audit corpus: `$PEREGRINE_AUDIT_CORPUS`, else
/// `../shared/audit-corpus` next to the checkout.
pub fn corpus() -> PathBuf {
    let p = corpus_location();
    assert!(p.is_dir(), "the audit corpus is missing at {}", p.display());
    p
}

fn corpus_location() -> PathBuf {
    std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/audit-corpus"))
}

/// The Panther peer suite: `$PEREGRINE_PEER_SUITES/panther-k8s`, else
/// `peer-suites/panther-k8s` beside the audit corpus (not committed: see
/// its README).
pub fn peer_suite() -> PathBuf {
    std::env::var_os("PEREGRINE_PEER_SUITES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            corpus_location()
                .parent()
                .map(|p| p.join("peer-suites"))
                .unwrap_or_else(|| PathBuf::from("peer-suites"))
        })
        .join("panther-k8s")
}

/// A file of the corpus's Falco part.
pub fn corpus_file(name: &str) -> PathBuf {
    corpus().join("falco").join(name)
}

/// One compile cache for every test, so Python and JavaScript modules are
/// compiled once per test run, not once per test.
pub fn cache_dir() -> PathBuf {
    let p = root().join("target/test-compile-cache");
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Copies `modules` into the directory `dir` (created if missing).
fn copy_modules(dir: &Path, modules: &[PathBuf]) {
    std::fs::create_dir_all(dir).unwrap();
    for m in modules {
        std::fs::copy(m, dir.join(m.file_name().unwrap())).unwrap();
    }
}

/// A rules directory of its own made of copies of the given modules.
pub fn rules_dir(modules: &[PathBuf]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_modules(dir.path(), modules);
    dir
}

/// The rules directory `work/rules` holding copies of `modules`: beside the
/// journal and store of a server that restarts on the same `work`.
pub fn rules_dir_in(work: &Path, modules: &[PathBuf]) -> PathBuf {
    let dir = work.join("rules");
    copy_modules(&dir, modules);
    dir
}

// ---- Events and alerts ----

/// A minimal valid audit event.
pub fn event(audit_id: &str, verb: &str, resource: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseComplete",
        "verb": verb,
        "requestURI": format!("/api/v1/namespaces/{namespace}/{resource}"),
        "user": {"username": "tester", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": resource, "namespace": namespace, "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-11-27T10:00:00.000000Z",
        "stageTimestamp": "2026-11-27T10:00:00.100000Z"
    })
}

/// An EventList of `events`.
pub fn event_list(events: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})
        .to_string()
}

/// The events of a corpus or fixture file, as JSON values.
pub fn events_of(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    }
}

/// `bytes` gzip-compressed, as a shipper or a CloudWatch subscription
/// sends them.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The output field `key` of a Falco-shaped alert.
pub fn field<'a>(alert: &'a serde_json::Value, key: &str) -> &'a str {
    alert["output_fields"][key].as_str().unwrap_or("")
}

// ---- Waiting, ports, metrics ----

/// How long a test waits for something that should happen. Generous: the
/// machines are shared and slow, and a test only waits this long when it is
/// about to fail.
pub const LONG_WAIT: Duration = Duration::from_secs(120);

/// Polls `pred` until it holds, or fails after [`LONG_WAIT`] naming `what`.
pub fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + LONG_WAIT;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A port for a listener that is down at first, or stops and comes back,
/// on the address a configuration names.
///
/// It is taken below the kernel's ephemeral range (32768-60999 on Linux):
/// a port from that range, freed while the listener is down, can be handed
/// to any other test's `bind(0)` or outgoing connection in the meantime.
/// Below it only an explicit bind takes a port, and each call here moves on
/// to the next candidate (offset by the process id, so test binaries run
/// one after another start in different places).
pub fn reserve_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN)
}

/// The samples in Prometheus text format of `name` carrying every one of
/// `labels`.
fn samples<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(move |l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(move |l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of a sample in Prometheus text format: the line of `name`
/// carrying every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(text, name, labels).next()
}

/// The sum of the samples of `name` carrying every one of `labels`, 0 if
/// there is none (a counter not yet incremented is not exported).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).sum()
}

// ---- HTTP with curl ----

/// An HTTP answer to a curl request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }

    /// The status and the body as JSON (null if it is not JSON).
    pub fn status_json(&self) -> (u16, serde_json::Value) {
        (
            self.status,
            serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A request with curl: method, URL, headers, body bytes (from a file, so
/// binary bodies and bodies of megabytes pass unchanged).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    let dir = tempfile::tempdir().unwrap();
    let head = dir.path().join("head");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-X", method, "-o", "-", "-D"])
        .arg(&head)
        .args(["-w", "\n%{http_code}"]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    if let Some(b) = body {
        let file = dir.path().join("body");
        std::fs::write(&file, b).unwrap();
        cmd.arg("--data-binary").arg(format!("@{}", file.display()));
    }
    let out = cmd.arg(url).output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Response {
        status: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: body.to_string(),
    }
}

/// A POST of a JSON body with extra headers.
pub fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> Response {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request("POST", url, &h, Some(body.as_bytes()))
}

/// (status, JSON) of a GET, with a bearer token if given.
pub fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request("GET", url, &headers, None).status_json()
}

/// (status, JSON) of a POST of a JSON body, with a bearer token if given.
pub fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    post_json(url, &headers, body).status_json()
}

// ---- The `peregrine` binary ----

/// Where Cargo built the `peregrine` binary for the host's tests.
pub fn peregrine_bin() -> &'static str {
    option_env!("CARGO_BIN_EXE_peregrine")
        .expect("only the host's test binary is told where the peregrine binary is")
}

/// `peregrine <args>` as a user runs it, with the shared compile cache and
/// warnings only.
pub fn peregrine(args: &[&str]) -> Command {
    let mut c = Command::new(peregrine_bin());
    c.args(args)
        .env("PEREGRINE_CACHE_DIR", cache_dir())
        .env("PEREGRINE_LOG", "warn");
    c
}

/// The `[server]`, `[engine]`, `[rules]` and `[store]` of a test server, for
/// the rules directory `rules`; a test appends its own sections.
///
/// With `state`, the ingest journal and the alert store live there and one
/// worker evaluates: for a server that restarts on the same state. Without,
/// neither is kept (tests run in parallel, and one journal file admits one
/// process) and two workers evaluate.
pub fn base_config(rules: &Path, state: Option<&Path>) -> String {
    match state {
        Some(work) => format!(
            "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = \"{journal}\" }}\n\n\
             [engine]\nworkers = 1\ncache_dir = \"{cache}\"\n\n\
             [rules]\ndirs = [\"{rules}\"]\n\n[store]\npath = \"{store}\"\n\n",
            journal = work.join("journal").display(),
            cache = cache_dir().display(),
            rules = rules.display(),
            store = work.join("alerts.sqlite").display(),
        ),
        None => format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.journal]\nenabled = false\n\
             [engine]\nworkers = 2\ncache_dir = \"{cache}\"\n\
             [rules]\ndirs = [\"{rules}\"]\n[store]\nenabled = false\n",
            cache = cache_dir().display(),
            rules = rules.display(),
        ),
    }
}

/// `peregrine serve -c <config> <extra>`, logging at info, without the
/// runner's AWS credentials: the credential chain reads these first, and
/// the runner's own must not stand in for the ones a test gives.
fn serve_command(config: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(peregrine_bin());
    c.args(["serve", "-c"])
        .arg(config)
        .args(extra)
        .env("PEREGRINE_LOG", "info");
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
    ] {
        c.env_remove(var);
    }
    c
}

/// `peregrine serve` run to its end (for configurations it must refuse).
pub fn run_to_end(config: &Path, extra: &[&str]) -> std::process::Output {
    serve_command(config, extra).output().unwrap()
}

/// A `peregrine serve` in a child process, its stdout (alerts) and stderr
/// (logs) collected line by line.
pub struct Running {
    pub child: Child,
    pub addr: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr; they end once the pipes close.
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Whatever way a test ends, a failed assertion included, the server it
/// started does not outlive it.
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `peregrine serve -c <config> <extra>` and waits for its address.
pub fn start(config: &Path, extra: &[&str]) -> Running {
    start_with_env(config, extra, &[])
}

/// [`start`] with extra environment variables for the child (credentials
/// of a source).
pub fn start_with_env(config: &Path, extra: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = serve_command(config, extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = Arc::new(Mutex::new(Vec::new()));
    let log_lines = logs.clone();
    let err_reader = std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_string());
            }
            log_lines.lock().unwrap().push(line);
        }
    });
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = stdout.clone();
    let out = BufReader::new(child.stdout.take().unwrap());
    let out_reader = std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    // From here on the server is killed on every path out of the test.
    let mut running = Running {
        child,
        addr: String::new(),
        stdout,
        stderr: logs,
        readers: vec![err_reader, out_reader],
    };
    // The reader's sender is dropped when stderr closes: the process ended
    // before it listened.
    match rx.recv_timeout(LONG_WAIT) {
        Ok(a) => running.addr = a,
        Err(_) => {
            let status = running.child.try_wait().ok().flatten();
            let _ = running.child.kill();
            let _ = running.child.wait();
            running.drain_output();
            panic!(
                "peregrine serve did not start (exit: {status:?}):\n{}",
                running.logs()
            )
        }
    }
    running
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The alerts printed so far, parsed.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `pred` holds for the alerts printed so far.
    pub fn wait_alerts(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + LONG_WAIT;
        loop {
            let alerts = self.alerts();
            if pred(&alerts) {
                return alerts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; alerts so far:\n{}\nlogs:\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything it logged so far.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Its `/metrics` text.
    pub fn metrics(&self) -> String {
        let a = request("GET", &self.url("/metrics"), &[], None);
        assert_eq!(a.status, 200, "/metrics: {}", a.body);
        a.body
    }

    /// Its resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// SIGKILL: no drain, no flush. Returns every line it printed.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.drain_output()
    }

    /// SIGTERM, then waits for a clean exit. Returns every line it printed.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "peregrine exited with {status}");
        self.drain_output()
    }

    /// Once the process is gone: waits for the readers to reach the end of
    /// its pipes, so no line it printed is missed.
    fn drain_output(&mut self) -> Vec<String> {
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        self.stdout.lock().unwrap().clone()
    }
}
