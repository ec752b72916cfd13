//! The spool across a crash: the real `peregrine` binary is killed with
//! SIGKILL while its alerts wait in the spool for a receiver that is down;
//! after a restart, and once the receiver is up, every alert arrives.
//!
//! (In the host crate because that is where Cargo builds the binary for
//! tests and says where it is.)

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::*;

fn wait_metric(p: &Running, name: &str, labels: &[(&str, &str)], want: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + LONG_WAIT;
    while !metric(&p.metrics(), name, labels).is_some_and(&want) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {name}{labels:?} (now {:?}); log:\n{}",
            metric(&p.metrics(), name, labels),
            p.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn events(ids: &[String]) -> String {
    let items: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| event(id, "get", "pods", "default"))
        .collect();
    event_list(&items)
}

#[tokio::test(flavor = "multi_thread")]
async fn spooled_alerts_survive_a_killed_peregrine() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);

    // The receiver's address is chosen now; nothing listens there yet.
    let port = reserve_port();
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
            cache = cache_dir().display(),
            rules = rules.display(),
            spool = work.path().join("spool").display(),
            journal = work.path().join("journal").display(),
        ),
    )
    .unwrap();

    // First life: thirty alerts, the receiver down, then SIGKILL.
    let ids: Vec<String> = (0..30).map(|i| format!("restart-{i:02}")).collect();
    let first = start(&config, &["--no-watch"]);
    for chunk in ids.chunks(10) {
        let a = post_json(&first.url("/k8s-audit"), &[], &events(chunk));
        assert_eq!(a.status, 200, "{}", a.body);
    }
    wait_metric(
        &first,
        "peregrine_output_pending_alerts",
        &[("output", "hook")],
        |v| v == 30.0,
    );
    wait_metric(
        &first,
        "peregrine_output_failed_total",
        &[("output", "hook")],
        |v| v >= 1.0,
    );

    // A second process on the same journal and spool is refused, and says why.
    let second = run_to_end(&config, &["--no-watch"]);
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another process"), "{err}");

    first.kill(); // SIGKILL: no shutdown, no flush

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

    let second = tokio::task::spawn_blocking(move || start(&config, &["--no-watch"]))
        .await
        .unwrap();
    let want: BTreeSet<String> = ids.iter().cloned().collect();
    let deadline = Instant::now() + LONG_WAIT;
    loop {
        let have: BTreeSet<String> = got.lock().unwrap().iter().cloned().collect();
        if have == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing after the restart: {:?}; log:\n{}",
            want.difference(&have).collect::<Vec<_>>(),
            second.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = second.logs();
    assert!(
        log.contains("delivering alerts spooled before the last stop"),
        "{log}"
    );
    let s = second;
    tokio::task::spawn_blocking(move || {
        wait_metric(
            &s,
            "peregrine_output_pending_alerts",
            &[("output", "hook")],
            |v| v == 0.0,
        )
    })
    .await
    .unwrap();
    server.abort();
}
