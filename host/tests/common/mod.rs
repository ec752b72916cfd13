//! Runs the real `peregrine serve` binary on 127.0.0.1 and talks to it with
//! curl, as an operator or an apiserver would.
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

pub fn corpus(name: &str) -> PathBuf {
    std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/audit-corpus"))
        .join(name)
}

pub fn cache_dir() -> PathBuf {
    root().join("target/test-compile-cache")
}

/// A configuration's common part: ephemeral port, shared compile cache, no
/// store or journal (tests run in parallel), the given rules directory.
pub fn base_config(rules: &Path) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[server.journal]\nenabled = false\n\
         [engine]\nworkers = 2\ncache_dir = \"{cache}\"\n\
         [rules]\ndirs = [\"{rules}\"]\n[store]\nenabled = false\n",
        cache = cache_dir().display(),
        rules = rules.display(),
    )
}

pub struct Running {
    pub child: Child,
    pub addr: String,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(r: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines().map_while(Result::ok) {
            into.lock().unwrap().push(line);
        }
    });
}

/// Starts `peregrine serve -c <config> <extra>` and waits for its address.
pub fn start(config: &Path, extra: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "-c"])
        .arg(config)
        .args(extra)
        .env("PEREGRINE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    collect(child.stdout.take().unwrap(), stdout.clone());
    collect(child.stderr.take().unwrap(), stderr.clone());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let addr = stderr
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split("listening on http://").nth(1))
            .map(|a| a.split_whitespace().next().unwrap().to_string());
        if let Some(addr) = addr {
            return Running {
                child,
                addr,
                stdout,
                stderr,
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "peregrine serve exited with {status}:\n{}",
                stderr.lock().unwrap().join("\n")
            );
        }
        assert!(Instant::now() < deadline, "the server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `peregrine serve` run to its end (for configurations it must refuse).
pub fn run_to_end(config: &Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "-c"])
        .arg(config)
        .args(extra)
        .env("PEREGRINE_LOG", "info")
        .output()
        .unwrap()
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Alerts printed on stdout so far.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    /// Waits (generously) until `pred` holds for the alerts so far.
    pub fn wait_alerts(
        &self,
        what: &str,
        pred: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let a = self.alerts();
            if pred(&a) {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; rules so far: {:?}",
                a.iter().map(|a| a["rule"].clone()).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid's resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// (status, body) of a curl request; `body` is sent from a file, so bodies
/// of megabytes work.
pub fn curl(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new("curl");
    c.args(["-sS", "-X", method, "-o"])
        .arg(dir.path().join("out"))
        .args(["-w", "%{http_code}"]);
    if let Some(t) = token {
        c.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        let f = dir.path().join("body");
        std::fs::write(&f, b).unwrap();
        c.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(format!("@{}", f.display()));
    }
    let out = c.arg(url).output().expect("curl is installed");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let body = std::fs::read_to_string(dir.path().join("out")).unwrap_or_default();
    (code, body)
}

pub fn get_json(url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (code, body) = curl("GET", url, token, None);
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

pub fn post(url: &str, token: Option<&str>, body: &str) -> (u16, serde_json::Value) {
    let (code, body) = curl("POST", url, token, Some(body));
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

pub fn event_list(events: &[serde_json::Value]) -> String {
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": events})
        .to_string()
}

/// A minimal valid audit event.
pub fn event(audit_id: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
        "auditID": audit_id, "stage": "ResponseComplete", "verb": "get",
        "requestURI": format!("/api/v1/namespaces/{namespace}/pods"),
        "user": {"username": "tester"},
        "objectRef": {"resource": "pods", "namespace": namespace, "apiVersion": "v1"},
        "responseStatus": {"code": 200},
        "stageTimestamp": "2026-11-27T10:00:00.000000Z"
    })
}
