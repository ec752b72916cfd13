//! `peregrine bench --quick` keeps working: it runs every figure with tiny
//! counts, prints the table and one JSON summary line with every key. No
//! speed is asserted: figures belong in the benchmark's output, not in tests.

use std::path::Path;
use std::process::Command;

#[test]
fn bench_quick_prints_the_table_and_a_json_summary() {
    let examples =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../example-rules/build/falco_k8s_audit.wasm");
    assert!(
        examples.is_file(),
        "{} is missing: run `make rules` (make test does)",
        examples.display()
    );
    let out = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args(["--log", "warn", "bench", "--quick", "--no-progress"])
        // Six POSTs of 400: the soak figure runs, in seconds.
        .args(["--soak-events", "2400"])
        .output()
        .expect("run peregrine bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );

    assert!(stdout.contains("| Figure"), "no table:\n{stdout}");
    for figure in [
        "Engine, Wasm",
        "Wasm / native",
        "HTTP",
        "Reload",
        "Cold start",
        "Peak RSS",
        "Soak: serve RSS after 2,400 events",
        "regorus",
        "Cost per event, Falco pack (falco_k8s_audit)",
    ] {
        assert!(
            stdout.contains(figure),
            "the table has no `{figure}` row:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("Per-rule cost"),
        "no per-rule breakdown:\n{stdout}"
    );

    let last = stdout.lines().last().expect("some output");
    let summary: serde_json::Value = serde_json::from_str(last).expect("the last line is JSON");
    let s = &summary["bench"];
    for key in [
        "engine_wasm_eps",
        "engine_native_eps",
        "engine_wasm_native_ratio",
        "engine_wasm_all_cores_eps",
        "http_eps",
        "http_ack_p50_ms",
        "http_ack_p99_ms",
        "reload_rust_ms",
        "reload_python_miss_ms",
        "reload_python_hit_ms",
        "reload_js_miss_ms",
        "reload_js_hit_ms",
        "cold_start_ms",
        "peak_rss_mb",
        "soak_rss_mb",
        "peer_regorus_eps",
        "peer_peregrine_eps",
        "peer_ratio",
        "pack_cost",
        "machine",
    ] {
        assert!(s.get(key).is_some(), "the summary has no `{key}`: {last}");
    }
    // Every figure ran (none was skipped), and produced a number.
    assert!(
        s.get("skipped").is_none(),
        "some figure was skipped: {last}"
    );
    for key in [
        "engine_wasm_eps",
        "engine_wasm_native_ratio",
        "http_eps",
        "cold_start_ms",
        "peak_rss_mb",
        "peer_ratio",
    ] {
        assert!(
            s[key].as_f64().is_some_and(|v| v > 0.0),
            "`{key}` is not a positive number: {last}"
        );
    }
    // The soak figure read the server's RSS at each third of the events.
    let soak = s["soak_rss_mb"].as_array().expect("soak_rss_mb is a list");
    assert_eq!(
        soak.iter()
            .map(|p| p["events"].as_u64().unwrap_or(0))
            .collect::<Vec<_>>(),
        [800, 1600, 2400],
        "{last}"
    );
    assert!(
        soak.iter()
            .all(|p| p["rss_mb"].as_f64().is_some_and(|mb| mb > 0.0)),
        "{last}"
    );
    // Each default pack that is built is measured alone, and all of them
    // together when there are several.
    let cost = &s["pack_cost"];
    assert!(
        cost["falco_k8s_audit"]["us_per_event"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "no cost per event for the Falco pack: {last}"
    );
    let built = ["falco_k8s_audit.wasm", "k8s_threats.wasm"]
        .iter()
        .filter(|m| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../example-rules/build")
                .join(m)
                .is_file()
        })
        .count();
    assert_eq!(cost.get("together").is_some(), built > 1, "{last}");
    assert_eq!(
        s["pack_cost_missing"].as_array().map(Vec::len),
        Some(2 - built),
        "{last}"
    );
    assert_eq!(s["quick"], true);
    assert_eq!(
        s["alerts_agree"], true,
        "Wasm, native and Rego disagree on the alerts: {last}"
    );
}

#[test]
fn bench_measures_user_rules_and_events() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Two Rust modules (Python and JavaScript ones take seconds to compile).
    let rules = tempfile::tempdir().unwrap();
    for m in ["falco_k8s_audit.wasm", "workload_hardening.wasm"] {
        std::fs::copy(
            root.join("example-rules/build").join(m),
            rules.path().join(m),
        )
        .unwrap();
    }
    let events = root.join("tests/fixtures/falco");
    let out = Command::new(env!("CARGO_BIN_EXE_peregrine"))
        .args([
            "--log",
            "warn",
            "bench",
            "--quick",
            "--no-progress",
            "--only",
            "engine,breakdown",
        ])
        .arg("--rules")
        .arg(rules.path())
        .arg("--events")
        .arg(&events)
        .output()
        .expect("run peregrine bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // Several modules: no native comparison, but a breakdown per module.
    assert!(stdout.contains("Per-module cost"), "{stdout}");
    assert!(stdout.contains("workload_hardening"), "{stdout}");
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["bench"]["user_rules"], true);
    assert!(summary["bench"]["engine_native_eps"].is_null());
    assert!(summary["bench"]["engine_wasm_eps"].as_f64().is_some());
}
