//! A rules directory may hold anything named `*.wasm`: a FIFO, a symlink to
//! a device or to the host's files. None of them blocks the reload thread,
//! fills memory or shows its content; a valid module dropped in afterwards
//! still loads.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap().success();
    assert!(ok, "mkfifo {}", path.display());
}

fn module<'a>(report: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    report["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == key)
}

/// Waits until the rules API reports `key` with `pred` true.
fn wait_module(
    srv: &Running,
    key: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, report) = get_json(&srv.url("/api/v1/rules"), None);
        if let Some(m) = module(&report, key)
            && pred(m)
        {
            return m.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{key} never as expected: {report}\n{}",
            srv.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_no_passwd_content(text: &str) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let first = passwd.lines().next().unwrap();
    let name = first.split(':').next().unwrap();
    assert!(!text.contains(first), "{text}");
    assert!(!text.contains(&format!("{name}:")), "{text}");
    // wasmtime quotes a bad header as hex bytes.
    let hex: Vec<String> = first.bytes().take(4).map(|b| format!("{b:#x}")).collect();
    assert!(!text.contains(&hex.join(", ")), "{text}");
}

#[test]
fn fifo_device_and_outside_symlinks_are_refused_and_a_valid_module_still_loads() {
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let rules = rules.canonicalize().unwrap();
    let config = work.path().join("peregrine.toml");
    std::fs::write(&config, base_config(&rules, None)).unwrap();
    let srv = start(&config, &[]);
    let rss_start = srv.rss_kib();

    mkfifo(&rules.join("fifo.wasm"));
    symlink("/dev/zero", rules.join("zero.wasm")).unwrap();
    symlink("/etc/passwd", rules.join("passwd.wasm")).unwrap();
    let fifo = wait_module(&srv, "fifo", |m| !m["last_error"].is_null());
    let zero = wait_module(&srv, "zero", |m| !m["last_error"].is_null());
    let passwd = wait_module(&srv, "passwd", |m| !m["last_error"].is_null());
    assert_eq!(fifo["status"], "failed");
    assert!(
        fifo["last_error"].as_str().unwrap().contains("a FIFO"),
        "{fifo}"
    );
    for m in [&zero, &passwd] {
        assert_eq!(m["status"], "failed");
        assert!(
            m["last_error"]
                .as_str()
                .unwrap()
                .contains("outside the rules directory"),
            "{m}"
        );
    }
    assert_no_passwd_content(&passwd.to_string());
    assert_no_passwd_content(&srv.logs());

    // The reload thread is not stuck: a module installed now goes live, and
    // one behind a symlink inside the directory (a ConfigMap's `..data`) too.
    let data = rules.join("..data");
    std::fs::create_dir(&data).unwrap();
    std::fs::copy(fixture_module("fixture_echo"), data.join("linked.wasm")).unwrap();
    symlink("..data/linked.wasm", rules.join("linked.wasm")).unwrap();
    let tmp = rules.join("fixture_echo.wasm.tmp");
    std::fs::copy(fixture_module("fixture_echo"), &tmp).unwrap();
    std::fs::rename(&tmp, rules.join("fixture_echo.wasm")).unwrap();
    wait_module(&srv, "fixture_echo", |m| m["status"] == "live");
    wait_module(&srv, "linked", |m| m["status"] == "live");
    let (code, _) = post(
        &srv.url("/k8s-audit"),
        None,
        &event("after-junk", "get", "pods", "a").to_string(),
    );
    assert_eq!(code, 200);
    srv.wait_alerts("the echo", |a| {
        a.iter()
            .filter(|a| a["rule"] == "Echo" && a["output_fields"]["ka.auditid"] == "after-junk")
            .count()
            == 2
    });

    // Touching the junk again changes nothing, and memory stayed bounded
    // (the /dev/zero symlink was never read).
    let (_, report) = get_json(&srv.url("/api/v1/rules"), None);
    let before = module(&report, "zero").unwrap()["last_attempt"].clone();
    std::fs::remove_file(rules.join("zero.wasm")).unwrap();
    symlink("/dev/zero", rules.join("zero.wasm")).unwrap();
    // Measured once the reload thread has looked at the new link.
    let zero = wait_module(&srv, "zero", |m| {
        m["last_attempt"] != before && !m["last_error"].is_null()
    });
    assert_eq!(zero["status"], "failed", "{zero}");
    let rss_end = srv.rss_kib();
    assert!(
        rss_end < rss_start + 100 * 1024,
        "RSS grew from {rss_start} KiB to {rss_end} KiB"
    );
}

#[test]
fn with_follow_symlinks_only_regular_webassembly_files_load() {
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    let rules = rules.canonicalize().unwrap();
    let outside = work.path().join("shared-modules");
    std::fs::create_dir(&outside).unwrap();
    std::fs::copy(fixture_module("fixture_echo"), outside.join("echo.wasm")).unwrap();
    mkfifo(&rules.join("fifo.wasm"));
    symlink("/dev/zero", rules.join("zero.wasm")).unwrap();
    symlink("/etc/passwd", rules.join("passwd.wasm")).unwrap();
    symlink(outside.join("echo.wasm"), rules.join("echo.wasm")).unwrap();
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        base_config(&rules, None).replace("[rules]\n", "[rules]\nfollow_symlinks = true\n"),
    )
    .unwrap();
    // Loaded at start, before the listener: a FIFO here would hang the start.
    let srv = start(&config, &["--no-watch"]);
    let (_, report) = get_json(&srv.url("/api/v1/rules"), None);
    let err = |key: &str| {
        module(&report, key).unwrap()["last_error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(err("fifo").contains("a FIFO"), "{report}");
    assert!(err("zero").contains("a character device"), "{report}");
    assert!(err("passwd").contains("not a WebAssembly file"), "{report}");
    assert_no_passwd_content(&report.to_string());
    assert_no_passwd_content(&srv.logs());
    assert_eq!(module(&report, "echo").unwrap()["status"], "live");
}
