//! The real `peregrine serve` in a child process on an ephemeral port, and
//! requests to it with curl, for the tests of clusters, push endpoints and
//! sources.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn fixture(name: &str) -> PathBuf {
    let p = root().join("tests/build/fixture-rules").join(name);
    assert!(p.is_file(), "{} is missing: run `make rules`", p.display());
    p
}

pub fn example(name: &str) -> PathBuf {
    let p = root().join("example-rules/build").join(name);
    assert!(p.is_file(), "{} is missing: run `make rules`", p.display());
    p
}

/// A file of the shared audit corpus (`$PEREGRINE_AUDIT_CORPUS`, else
/// `../shared/audit-corpus` next to the checkout).
pub fn corpus_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/audit-corpus"));
    let p = dir.join("falco").join(name);
    assert!(
        p.is_file(),
        "{} is missing: the audit corpus is needed",
        p.display()
    );
    p
}

/// A rules directory in `work` holding copies of `modules`.
pub fn rules_dir(work: &Path, modules: &[PathBuf]) -> PathBuf {
    let dir = work.join("rules");
    std::fs::create_dir_all(&dir).unwrap();
    for m in modules {
        std::fs::copy(m, dir.join(m.file_name().unwrap())).unwrap();
    }
    dir
}

/// The `[server]`, `[engine]` and `[rules]` a test server needs, with its
/// journal and alert store in `work`; a test appends its own sections.
pub fn base_config(work: &Path, rules: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = \"{journal}\" }}\n\n\
         [engine]\nworkers = 1\ncache_dir = \"{cache}\"\n\n\
         [rules]\ndirs = [\"{rules}\"]\n\n[store]\npath = \"{store}\"\n\n",
        journal = work.join("journal").display(),
        cache = root().join("target/test-compile-cache").display(),
        rules = rules.display(),
        store = work.join("alerts.sqlite").display(),
    )
}

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

/// Starts `peregrine serve -c <config>`, waits for its address, and
/// collects its stdout (alerts) and stderr (logs) lines.
pub fn start(config: &Path) -> Running {
    start_with_env(config, &[])
}

/// [`start`] with extra environment variables (credentials of a source).
pub fn start_with_env(config: &Path, env: &[(&str, &str)]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "--no-watch", "-c"])
        .arg(config)
        .env("PEREGRINE_LOG", "info")
        // The AWS credential chain reads these first: the runner's own must
        // not stand in for the ones a test gives.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_ROLE_SESSION_NAME")
        .envs(env.iter().copied())
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
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(a) => running.addr = a,
        Err(_) => panic!("server did not start:\n{}", running.logs()),
    }
    running
}

impl Running {
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let alerts = self.alerts();
            if pred(&alerts) {
                return alerts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; alerts so far:\n{}\nlogs:\n{}",
                self.stdout.lock().unwrap().join("\n"),
                self.stderr.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.body))
    }
}

/// A request with curl: method, URL, headers, body bytes (from a file, so
/// binary bodies pass unchanged).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Answer {
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
    Answer {
        status: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&head).unwrap_or_default(),
        body: body.to_string(),
    }
}

pub fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut h = vec![("Content-Type", "application/json")];
    h.extend_from_slice(headers);
    request("POST", url, &h, Some(body.as_bytes()))
}

pub fn get_json(url: &str) -> serde_json::Value {
    request("GET", url, &[], None).json()
}

/// An audit event with a time, so alerts carry it.
pub fn event(id: &str, verb: &str, resource: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Request",
        "auditID": id, "stage": "ResponseComplete", "verb": verb,
        "requestURI": format!("/api/v1/namespaces/ns/{resource}"),
        "user": {"username": "alice", "groups": ["system:authenticated"]},
        "sourceIPs": ["10.0.0.1"],
        "objectRef": {"resource": resource, "namespace": "ns", "name": "x", "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "requestReceivedTimestamp": "2026-11-27T10:00:00.000000Z",
        "stageTimestamp": "2026-11-27T10:00:00.100000Z"
    })
}

pub fn event_list(events: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})
        .to_string()
}

/// The alert's output field `key`.
pub fn field<'a>(alert: &'a serde_json::Value, key: &str) -> &'a str {
    alert["output_fields"][key].as_str().unwrap_or("")
}

/// Polls `pred` until it holds or `what` times out.
pub fn wait_until(what: &str, pred: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Prometheus sample's value, if the metric with these labels is there.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next().is_some_and(|n| n == name))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}
