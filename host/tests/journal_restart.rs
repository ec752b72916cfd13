//! Acknowledged events survive a killed `peregrine`: the real binary is
//! SIGKILLed while events it answered 200 for wait in its queue; started
//! again on the same journal, it evaluates every one of them.

mod support;

use std::path::Path;

use support::*;

/// A configuration whose spin-loop module may run `spin_deadline_ms` on a
/// call (every other module 300 ms), with the journal in `work`.
fn write_config(work: &Path, rules: &Path, spin_deadline_ms: u64) -> std::path::PathBuf {
    let config = work.join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = \"{journal}\" }}\n\n\
             [engine]\nworkers = 1\ncache_dir = \"{cache}\"\n\n\
             [sandbox]\ncall_deadline_ms = 300\n\n\
             [sandbox.modules.fixture_spin_loop]\ncall_deadline_ms = {spin_deadline_ms}\n\n\
             [rules]\ndirs = [\"{rules}\"]\n\n[store]\nenabled = false\n",
            journal = work.join("journal").display(),
            cache = root().join("target/test-compile-cache").display(),
            rules = rules.display(),
        ),
    )
    .unwrap();
    config
}

fn post_events(srv: &Running, events: &[serde_json::Value]) -> serde_json::Value {
    let answer = post_json(&srv.url("/k8s-audit"), &[], &event_list(events));
    assert_eq!(answer.status, 200, "{}", answer.body);
    answer.json()
}

#[test]
fn acknowledged_events_are_evaluated_after_a_kill() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir(
        work.path(),
        &[
            fixture("fixture_echo.wasm"),
            fixture("fixture_spin_loop.wasm"),
        ],
    );

    // First run: the spin loop may run for an hour, so the first batch holds
    // the only worker for longer than the test lasts, and every later batch
    // is acknowledged and waits in the queue until the kill, however slowly
    // this machine runs the test.
    let first = start(&write_config(work.path(), &rules, 3_600_000));
    let slow: Vec<_> = (0..2)
        .map(|i| event(&format!("slow-{i}"), "get", "pods"))
        .map(|mut e| {
            e["objectRef"]["namespace"] = "spin".into();
            e
        })
        .collect();
    assert_eq!(post_events(&first, &slow)["accepted"], 2);
    let mut acknowledged = Vec::new();
    for b in 0..5 {
        let batch: Vec<_> = (0..10)
            .map(|i| event(&format!("q-{b}-{i}"), "get", "pods"))
            .collect();
        assert_eq!(post_events(&first, &batch)["accepted"], 10);
        acknowledged.extend((0..10).map(|i| format!("q-{b}-{i}")));
    }
    let echoed_before = first.kill(); // SIGKILL: no drain, no flush
    assert!(
        echoed_before.iter().all(|l| !l.contains("\"q-")),
        "events were evaluated behind the spinning call, so the test proves nothing"
    );

    // Second run, on the same journal: the loop is stopped at 300 ms now,
    // and everything acknowledged is evaluated.
    let second = start(&write_config(work.path(), &rules, 300));
    wait_until("every acknowledged event evaluated", || {
        let seen = second.stdout.lock().unwrap().join("\n");
        acknowledged
            .iter()
            .all(|id| seen.contains(&format!("\"{id}\"")))
    });
    // The spinning events were acknowledged too: evaluated, each stopped at
    // its deadline.
    let alerts = second.wait_alerts("the slow events' timeouts", |a| {
        a.iter()
            .filter(|a| field(a, "peregrine.error_kind") == "timeout")
            .count()
            == 2
    });
    for id in ["slow-0", "slow-1"] {
        assert!(
            alerts
                .iter()
                .any(|a| a["output_fields"]["ka.auditid"] == id && a["rule"] == "Echo"),
            "{id} was not evaluated after the restart"
        );
    }
    second.kill();
}
