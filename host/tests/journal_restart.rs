//! Acknowledged events survive a killed `peregrine`: the real binary is
//! SIGKILLed while events it answered 200 for wait in its queue; started
//! again on the same journal, it evaluates every one of them.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn fixture(name: &str) -> PathBuf {
    let p = root().join("tests/build/fixture-rules").join(name);
    assert!(p.is_file(), "{} is missing: run `make rules`", p.display());
    p
}

struct Running {
    child: Child,
    addr: String,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// Starts `peregrine serve`, waits for its address, and collects stdout lines.
fn start(config: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["serve", "--no-watch", "-c"])
        .arg(config)
        .env("PEREGRINE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("server starts");
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let lines = stdout.clone();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    Running {
        child,
        addr,
        stdout,
    }
}

fn event(id: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": id, "stage": "ResponseComplete",
        "verb": "get", "requestURI": "/api/v1/pods", "user": {"username": "u"},
        "objectRef": {"resource": "pods", "namespace": namespace},
        "stageTimestamp": "2026-11-27T10:00:00.000000Z"
    })
}

fn post(addr: &str, body: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .arg(format!("http://{addr}/k8s-audit"))
        .output()
        .expect("curl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn acknowledged_events_are_evaluated_after_a_kill() {
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for m in ["fixture_echo.wasm", "fixture_spin_loop.wasm"] {
        std::fs::copy(fixture(m), rules.join(m)).unwrap();
    }
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = \"{journal}\" }}\n\n\
             [engine]\nworkers = 1\ncache_dir = \"{cache}\"\n\n[sandbox]\ncall_deadline_ms = 300\n\n\
             [rules]\ndirs = [\"{rules}\"]\n\n[store]\nenabled = false\n",
            journal = work.path().join("journal").display(),
            cache = root().join("target/test-compile-cache").display(),
            rules = rules.display(),
        ),
    )
    .unwrap();

    let mut first = start(&config);
    // The first batch keeps the only worker busy (each event spins to its
    // deadline); the next ones are acknowledged and wait in the queue.
    let slow: Vec<_> = (0..8)
        .map(|i| event(&format!("slow-{i}"), "spin"))
        .collect();
    let answer = post(
        &first.addr,
        &serde_json::json!({"kind": "EventList", "items": slow}).to_string(),
    );
    assert!(answer.contains("\"accepted\":8"), "{answer}");
    let mut acknowledged = Vec::new();
    for b in 0..5 {
        let batch: Vec<_> = (0..10)
            .map(|i| event(&format!("q-{b}-{i}"), "calm"))
            .collect();
        let answer = post(
            &first.addr,
            &serde_json::json!({"kind": "EventList", "items": batch}).to_string(),
        );
        assert!(answer.contains("\"accepted\":10"), "{answer}");
        acknowledged.extend((0..10).map(|i| format!("q-{b}-{i}")));
    }
    first.child.kill().unwrap(); // SIGKILL: no drain, no flush
    first.child.wait().unwrap();
    let echoed_before: Vec<String> = first.stdout.lock().unwrap().clone();
    assert!(
        echoed_before.iter().all(|l| !l.contains("q-4-9")),
        "the queue was evaluated before the kill, so the test proves nothing"
    );

    let second = start(&config);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen: String = second.stdout.lock().unwrap().join("\n") + &echoed_before.join("\n");
        let missing: Vec<&String> = acknowledged
            .iter()
            .filter(|id| !seen.contains(&format!("\"{id}\"")))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "acknowledged events never evaluated: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut second = second;
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}
