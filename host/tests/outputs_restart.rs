//! The spool across a crash: the real `peregrine` binary is killed with
//! SIGKILL while its alerts wait in the spool for a receiver that is down;
//! after a restart, and once the receiver is up, every alert arrives.
//!
//! (In the host crate because that is where Cargo builds the binary for
//! tests and says where it is.)

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(120);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A running `peregrine serve` and the address it listens on.
struct Peregrine {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Drop for Peregrine {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(config: &Path) -> Peregrine {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "--no-watch", "-c"])
        .arg(config)
        .env("PEREGRINE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peregrine starts");
    let stderr = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    let log = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
            log.lock().unwrap().push_str(&line);
            log.lock().unwrap().push('\n');
        }
    });
    let addr = rx.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!(
            "peregrine did not start listening:\n{}",
            stderr.lock().unwrap()
        )
    });
    Peregrine {
        child,
        addr,
        stderr,
    }
}

/// A minimal HTTP/1.1 exchange: status and body.
fn http(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn metric(p: &Peregrine, name_and_labels: &str) -> Option<f64> {
    let (status, text) = http(&p.addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_metric(p: &Peregrine, name_and_labels: &str, want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !metric(p, name_and_labels).is_some_and(&want) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name_and_labels} (now {:?}); log:\n{}",
            metric(p, name_and_labels),
            p.stderr.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(ids: &[String]) -> String {
    let items: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| {
            serde_json::json!({
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": id,
                "stage": "ResponseComplete",
                "verb": "get",
                "requestURI": "/api/v1/namespaces/default/pods",
                "user": {"username": "tester"},
                "objectRef": {"resource": "pods", "namespace": "default", "apiVersion": "v1"},
                "responseStatus": {"code": 200},
                "stageTimestamp": "2026-11-27T10:00:00.100000Z"
            })
        })
        .collect();
    serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items})
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn spooled_alerts_survive_a_killed_peregrine() {
    let echo = root().join("tests/build/fixture-rules/fixture_echo.wasm");
    assert!(
        echo.is_file(),
        "{} is missing: run `make rules`",
        echo.display()
    );
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::copy(&echo, rules.join("fixture_echo.wasm")).unwrap();
    let cache = root().join("target/test-compile-cache");
    std::fs::create_dir_all(&cache).unwrap();

    // The receiver's address is chosen now; nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
journal = {{ dir = "{journal}" }}

[engine]
workers = 2
cache_dir = "{cache}"

[rules]
dirs = ["{rules}"]

[delivery]
spool_dir = "{spool}"

[store]
enabled = false

[outputs.hook]
type = "webhook"
url = "http://127.0.0.1:{port}/restart"
delivery = {{ retry_initial_ms = 100, retry_max_ms = 300 }}

[routing]
default_outputs = ["hook"]
"#,
            cache = cache.display(),
            rules = rules.display(),
            spool = work.path().join("spool").display(),
            journal = work.path().join("journal").display(),
        ),
    )
    .unwrap();

    // First life: thirty alerts, the receiver down, then SIGKILL.
    let ids: Vec<String> = (0..30).map(|i| format!("restart-{i:02}")).collect();
    let first = start(&config);
    for chunk in ids.chunks(10) {
        let (status, body) = http(&first.addr, "POST", "/k8s-audit", &events(chunk));
        assert_eq!(status, 200, "{body}");
    }
    wait_metric(
        &first,
        "peregrine_output_pending_alerts{output=\"hook\"}",
        |v| v == 30.0,
    );
    wait_metric(
        &first,
        "peregrine_output_failed_total{output=\"hook\"}",
        |v| v >= 1.0,
    );

    // A second process on the same journal and spool is refused, and says why.
    let second = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "--no-watch", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another process"), "{err}");

    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL: no shutdown, no flush
    first.child.wait().unwrap();
    drop(first);

    // The receiver comes up; Peregrine starts again and delivers the spool.
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let g = g.clone();
        async move {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            g.lock().unwrap().push(
                v["output_fields"]["ka.auditid"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let second = tokio::task::spawn_blocking(move || start(&config))
        .await
        .unwrap();
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let have: BTreeSet<String> = got.lock().unwrap().iter().cloned().collect();
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing after the restart: {:?}; log:\n{}",
            want.difference(&have).collect::<Vec<_>>(),
            second.stderr.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = second.stderr.lock().unwrap().clone();
    assert!(
        log.contains("delivering alerts spooled before the last stop"),
        "{log}"
    );
    let s = second;
    tokio::task::spawn_blocking(move || {
        wait_metric(
            &s,
            "peregrine_output_pending_alerts{output=\"hook\"}",
            |v| v == 0.0,
        )
    })
    .await
    .unwrap();
    server.abort();
}
