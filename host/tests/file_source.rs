//! `[[sources]] type = "file"`: the real binary tails an audit log file
//! through what the apiserver's log rotation and an operator do to it: a
//! line written in two parts, a rename and a new file, a truncation, a
//! malformed line, a stop with a rotation while stopped, and a `kill -9`
//! in the middle of a stream, after which nothing is lost. The CloudWatch
//! Logs pull source is tested here too ([`cloudwatch`]).

mod cloudwatch;

use std::io::Write;
use std::path::Path;

use crate::support::*;

fn line(id: &str, namespace: &str) -> String {
    let e = event(id, "get", "pods", namespace);
    e.to_string() + "\n"
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn ids(alerts: &[serde_json::Value], module: &str) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| field(a, "peregrine.module") == module)
        .map(|a| field(a, "ka.auditid").to_string())
        .collect()
}

/// A per-source gauge from `/metrics`.
fn source_gauge(srv: &Running, name: &str, source: &str) -> Option<f64> {
    let m = srv.metrics();
    metric(&m, name, &[("source", source)])
}

fn config(work: &Path, rules: &Path, sources: &str) -> std::path::PathBuf {
    let path = work.join("peregrine.toml");
    std::fs::write(
        &path,
        format!(
            "{base}[tenants.ops]\ntokens = [\"ops-token-0123456789ab\"]\ncluster = \"onprem\"\n\n{sources}",
            base = base_config(rules, Some(work))
        ),
    )
    .unwrap();
    path
}

#[test]
fn the_file_source_follows_rotation_truncation_and_partial_lines_across_restarts() {
    let work = tempfile::tempdir().unwrap();
    let logs = work.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let audit = logs.join("audit.log");
    let other = logs.join("other.log");
    // Before the start: `end` skips what is there, `beginning` reads it.
    append(&audit, &line("old-0", "ns"));
    append(&other, &line("b0", "ns"));
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = config(
        work.path(),
        &rules,
        &format!(
            "[[sources]]\ntype = \"file\"\nname = \"apiserver\"\ntenant = \"ops\"\npath = \"{}\"\npoll_interval_ms = 50\n\n\
             [[sources]]\ntype = \"file\"\npath = \"{}\"\nstart_at = \"beginning\"\ncluster = \"lab\"\npoll_interval_ms = 50\n",
            audit.display(),
            other.display()
        ),
    );
    let srv = start(&config, &["--no-watch"]);
    let echoed = |srv: &Running| ids(&srv.alerts(), "fixture_echo");
    srv.wait_alerts("b0 from the beginning of other.log", |a| {
        ids(a, "fixture_echo").contains(&"b0".to_string())
    });

    append(&audit, &line("l1", "ns"));
    append(&audit, &line("l2", "ns"));
    srv.wait_alerts("l1 and l2", |a| ids(a, "fixture_echo").len() >= 3);

    // A line written in two parts is read once it is whole. The source's
    // lag shows the half line once a poll has seen it; its position stays
    // where the last whole line ended.
    let whole = std::fs::metadata(&audit).unwrap().len() as f64;
    let l3 = line("l3", "ns");
    let (head, tail) = l3.split_at(40);
    append(&audit, head);
    wait_until("a poll to see the half line", || {
        source_gauge(&srv, "peregrine_source_lag_bytes", "apiserver") == Some(40.0)
    });
    assert_eq!(
        source_gauge(&srv, "peregrine_source_position_bytes", "apiserver"),
        Some(whole),
        "half a line was read"
    );
    assert!(
        !echoed(&srv).contains(&"l3".to_string()),
        "half a line was read"
    );
    append(&audit, tail);
    srv.wait_alerts("l3", |a| ids(a, "fixture_echo").contains(&"l3".to_string()));

    // Rotation: the file is renamed, its writer finishes a line in it, and
    // a new file takes the name.
    let rotated = logs.join("audit-2026-11-27T10-00-00.000.log");
    std::fs::rename(&audit, &rotated).unwrap();
    append(&rotated, &line("l4", "ns"));
    append(&audit, &line("l5", "ns"));
    srv.wait_alerts("l4 and l5", |a| {
        let i = ids(a, "fixture_echo");
        i.contains(&"l4".to_string()) && i.contains(&"l5".to_string())
    });

    // Truncation in place (copytruncate), then a malformed line before a good one.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&audit)
        .unwrap();
    // What comes next is written once the source has seen the truncation
    // (had the file grown past the old position first, it could not tell).
    wait_until("the truncation to be seen", || {
        let m = srv.metrics();
        metric(
            &m,
            "peregrine_source_errors_total",
            &[("source", "apiserver"), ("kind", "truncated")],
        )
        .is_some()
    });
    append(&audit, "{\"kind\": \"Event\", \"auditID\": \n");
    append(&audit, &line("l6", "ns"));
    srv.wait_alerts("l6", |a| ids(a, "fixture_echo").contains(&"l6".to_string()));

    let alerts = srv.alerts();
    for a in &alerts {
        let want = if field(a, "ka.auditid") == "b0" {
            "lab"
        } else {
            "onprem"
        };
        assert_eq!(field(a, "peregrine.cluster"), want, "{a}");
    }
    let m = srv.metrics();
    let rec = |o: &str| {
        metric(
            &m,
            "peregrine_source_records_total",
            &[("source", "apiserver"), ("outcome", o)],
        )
    };
    assert_eq!(rec("accepted"), Some(6.0), "{m}");
    assert_eq!(
        rec("rejected"),
        Some(1.0),
        "the malformed line, its neighbour kept"
    );
    let size = std::fs::metadata(&audit).unwrap().len() as f64;
    assert_eq!(
        metric(
            &m,
            "peregrine_source_position_bytes",
            &[("source", "apiserver")]
        ),
        Some(size)
    );
    assert_eq!(
        metric(&m, "peregrine_source_lag_bytes", &[("source", "apiserver")]),
        Some(0.0)
    );
    assert!(
        metric(
            &m,
            "peregrine_source_errors_total",
            &[("source", "apiserver"), ("kind", "truncated")]
        )
        .is_some()
    );
    let first = srv.stop();

    // While stopped: a line, then a rotation, then a line in the new file.
    append(&audit, &line("l7", "ns"));
    std::fs::rename(&audit, logs.join("audit-2026-11-27T11-00-00.000.log")).unwrap();
    append(&audit, &line("l8", "ns"));
    let srv = start(&config, &["--no-watch"]);
    srv.wait_alerts("l7 and l8", |a| {
        let i = ids(a, "fixture_echo");
        i.contains(&"l7".to_string()) && i.contains(&"l8".to_string())
    });
    // Both sources have caught up with their files: what they accepted in
    // this run is all there is to evaluate.
    wait_until("both sources to reach the end of their files", || {
        let m = srv.metrics();
        let lags: Vec<Option<f64>> = m
            .lines()
            .filter(|l| l.starts_with("peregrine_source_lag_bytes{"))
            .map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        lags.len() == 2 && lags.iter().all(|l| *l == Some(0.0))
    });
    let m = srv.metrics();
    let accepted: f64 = m
        .lines()
        .filter(|l| {
            l.starts_with("peregrine_source_records_total{") && l.contains("outcome=\"accepted\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        accepted, 2.0,
        "positions were kept: nothing read twice\n{m}"
    );
    let second = ids(&srv.alerts(), "fixture_echo");
    let mut second_sorted = second.clone();
    second_sorted.sort();
    assert_eq!(
        second_sorted,
        ["l7", "l8"],
        "positions were kept: nothing read twice"
    );
    let mut all: Vec<String> = ids(
        &first
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect::<Vec<_>>(),
        "fixture_echo",
    );
    all.extend(second);
    all.sort();
    assert_eq!(all, ["b0", "l1", "l2", "l3", "l4", "l5", "l6", "l7", "l8"]);
    srv.kill();
}

#[test]
fn a_killed_process_loses_no_line_of_the_file() {
    let work = tempfile::tempdir().unwrap();
    let audit = work.path().join("audit.log");
    // Eight events early in the file spin their rule. In the first run a
    // call may spin for an hour, so the single worker is still on the first
    // batch when the process is killed, after the source has read (and
    // journalled) what it could; in the second, each spins to 250 ms.
    let lines = |range: std::ops::Range<usize>, want: &mut Vec<String>| {
        let mut text = String::new();
        for i in range {
            let id = format!("k{i:04}");
            let ns = if i < 400 && i % 50 == 25 {
                "spin"
            } else {
                "calm"
            };
            text.push_str(&line(&id, ns));
            want.push(id);
        }
        text
    };
    let mut want = Vec::new();
    std::fs::write(&audit, lines(0..1500, &mut want)).unwrap();
    let rules = rules_dir_in(
        work.path(),
        &[
            fixture_module("fixture_echo"),
            fixture_module("fixture_spin_loop"),
        ],
    );
    let config_with = |spin_deadline_ms: u64| {
        config(
            work.path(),
            &rules,
            &format!(
                "[sandbox]\ncall_deadline_ms = 250\n\n\
                 [sandbox.modules.fixture_spin_loop]\ncall_deadline_ms = {spin_deadline_ms}\n\n\
                 [[sources]]\ntype = \"file\"\ntenant = \"ops\"\npath = \"{}\"\nstart_at = \"beginning\"\npoll_interval_ms = 50\n",
                audit.display()
            ),
        )
    };
    let srv = start(&config_with(3_600_000), &["--no-watch"]);
    // The position moves once the journal holds a batch.
    let positions = work.path().join("sources");
    wait_until("the source to save a position past the start", || {
        std::fs::read_dir(&positions).is_ok_and(|d| {
            d.filter_map(Result::ok).any(|e| {
                std::fs::read_to_string(e.path()).is_ok_and(|t| {
                    serde_json::from_str::<serde_json::Value>(&t)
                        .is_ok_and(|p| p["offset"].as_u64().is_some_and(|o| o > 0))
                })
            })
        })
    });
    let before: Vec<serde_json::Value> = srv
        .kill()
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let seen_before = ids(&before, "fixture_echo");
    assert!(
        seen_before.len() < want.len(),
        "everything was evaluated before the kill, so the test proves nothing"
    );
    // Lines written while it was down are read from the saved position.
    append(&audit, &lines(1500..1600, &mut want));

    let srv = start(&config_with(250), &["--no-watch"]);
    let after = srv.wait_alerts("every line evaluated after the restart", |a| {
        let mut seen = ids(a, "fixture_echo");
        seen.extend(seen_before.iter().cloned());
        want.iter().all(|id| seen.contains(id))
    });
    let mut union = ids(&after, "fixture_echo");
    union.extend(seen_before.iter().cloned());
    union.sort();
    union.dedup();
    assert_eq!(union, want, "at least once: no line lost");
    srv.kill();
}
