//! The `peregrine` binary as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The shared audit corpus: `$PEREGRINE_AUDIT_CORPUS`, else
/// `../shared/audit-corpus` next to the checkout.
fn corpus(name: &str) -> PathBuf {
    std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/audit-corpus"))
        .join(name)
}

fn peregrine(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_peregrine"));
    c.args(args)
        .env(
            "PEREGRINE_CACHE_DIR",
            root().join("target/test-compile-cache"),
        )
        .env("PEREGRINE_LOG", "warn");
    c
}

fn run(args: &[&str]) -> Output {
    peregrine(args).output().expect("peregrine runs")
}

fn stdout_alerts(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON alert: {l}: {e}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_describes_every_command_and_option() {
    let out = run(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["serve", "replay", "--log"] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let out = run(&["replay", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--rules",
        "--config",
        "--rule-matching",
        "--format",
        "--tenant",
        "first",
        "all",
        "stdin",
    ] {
        assert!(text.contains(word), "replay --help lacks {word}:\n{text}");
    }
    let out = run(&["serve", "--help"]);
    let text = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--listen",
        "--rules",
        "--config",
        "127.0.0.1:8765",
        "--no-watch",
    ] {
        assert!(text.contains(word), "serve --help lacks {word}:\n{text}");
    }
}

#[test]
fn replay_prints_what_falco_prints_for_a_corpus_file() {
    let file = corpus("falco/anonymous_creates_namespace_foo.json");
    let out = run(&["replay", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let alerts = stdout_alerts(&out);
    assert_eq!(alerts.len(), 1, "rule_matching first, as Falco by default");
    let a = &alerts[0];
    assert_eq!(a["rule"], "Anonymous Request Allowed");
    assert_eq!(a["priority"], "Warning");
    assert_eq!(a["source"], "k8s_audit");
    assert_eq!(a["output_fields"]["ka.user.name"], "system:anonymous");
    assert!(
        stderr(&out).contains("replayed 1 events"),
        "{}",
        stderr(&out)
    );

    let out = run(&["replay", "--rule-matching", "all", file.to_str().unwrap()]);
    let mut rules: Vec<String> = stdout_alerts(&out)
        .iter()
        .map(|a| a["rule"].as_str().unwrap().to_string())
        .collect();
    rules.sort();
    assert_eq!(
        rules,
        [
            "Anonymous Request Allowed",
            "Create Disallowed Namespace",
            "K8s Namespace Created"
        ]
    );
}

#[test]
fn replay_reads_directories_and_reports_bad_inputs_without_stopping() {
    let out = run(&["replay", corpus("falco").to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "fal_01_003.json is not audit data"
    );
    let err = stderr(&out);
    assert!(
        err.contains("fal_01_003.json: data not recognized as a k8s audit event"),
        "{err}"
    );
    assert!(err.contains("replayed 51 events from 47 input(s)"), "{err}");
    let alerts = stdout_alerts(&out);
    assert!(alerts.len() >= 40, "{} alerts", alerts.len());
    assert!(
        alerts
            .iter()
            .any(|a| a["rule"] == "Create/Modify Configmap With Private Credentials")
    );
}

#[test]
fn replay_reads_stdin_and_writes_text() {
    let mut child = peregrine(&["replay", "--format", "text", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let event = std::fs::read(corpus("falco/create_nginx_pod_privileged.json")).unwrap();
    child.stdin.take().unwrap().write_all(&event).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(
        text.contains("Warning") && text.contains("Create Privileged Pod"),
        "{text}"
    );
}

#[test]
fn replay_of_a_real_v1beta1_cluster_log_raises_the_rbac_activity_alerts() {
    let log = corpus("public/liggitt__audit2rbac/at-501d132/demo.log");
    let out = run(&["replay", log.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for a in stdout_alerts(&out) {
        *counts
            .entry(a["rule"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let want: std::collections::BTreeMap<String, usize> = [
        ("K8s ClusterRole Created", 11),
        ("K8s ClusterRole Deleted", 9),
        ("K8s ClusterRoleBinding Created", 11),
        ("K8s ClusterRoleBinding Deleted", 9),
        ("K8s Role Created", 29),
        ("K8s Role Deleted", 28),
        ("K8s RoleBinding Created", 29),
        ("K8s RoleBinding Deleted", 28),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, want);

    let v1 = corpus("public/liggitt__audit2rbac/demo.log");
    let out = run(&["replay", v1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout_alerts(&out).is_empty());
    assert!(
        stderr(&out).contains("replayed 37 events"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn module_configuration_comes_from_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("peregrine.toml");
    std::fs::write(
        &config,
        "[rules]\nrule_matching = \"all\"\n\n[modules.falco_k8s_audit]\nactivity_rules = false\n\n\
         [modules.falco_k8s_audit.lists.allowed_namespaces]\nappend = [\"foo\"]\n",
    )
    .unwrap();
    let file = corpus("falco/anonymous_creates_namespace_foo.json");
    let out = run(&[
        "replay",
        "-c",
        config.to_str().unwrap(),
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rules: Vec<String> = stdout_alerts(&out)
        .iter()
        .map(|a| a["rule"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(rules, ["Anonymous Request Allowed"]);
}

#[test]
fn bad_configuration_and_paths_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisten = 8765\n").unwrap();
    let out = run(&["replay", "-c", config.to_str().unwrap(), "-"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("invalid config file") && err.contains("listen"),
        "{err}"
    );

    std::fs::write(
        &config,
        "[modules.falco_k8s_audit]\nactivity_rulez = false\n",
    )
    .unwrap();
    let out = run(&["replay", "-c", config.to_str().unwrap(), "-"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("falco_k8s_audit") && err.contains("activity_rulez"),
        "{err}"
    );

    let out = run(&["replay", "/no/such/file.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/no/such/file.json"),
        "{}",
        stderr(&out)
    );

    let out = run(&["replay", "--rules", "/no/such/dir", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/no/such/dir"), "{}", stderr(&out));

    // The default rules directory is looked for at run time, not where the
    // binary was built: a copy elsewhere, run elsewhere, finds none and says
    // where it looked.
    let elsewhere = tempfile::tempdir_in(root().join("target")).unwrap();
    let bin = elsewhere.path().join("bin/peregrine");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::hard_link(env!("CARGO_BIN_EXE_peregrine"), &bin)
        .or_else(|_| std::fs::copy(env!("CARGO_BIN_EXE_peregrine"), &bin).map(|_| ()))
        .unwrap();
    let out = Command::new(&bin)
        .args(["check"])
        .current_dir(elsewhere.path())
        .env("PEREGRINE_LOG", "warn")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for place in [
        elsewhere.path().join("example-rules/build"),
        elsewhere.path().join("bin/rules"),
        elsewhere.path().join("share/peregrine/rules"),
        PathBuf::from("/usr/share/peregrine/rules"),
    ] {
        assert!(
            err.contains(&place.display().to_string()),
            "{} not named in: {err}",
            place.display()
        );
    }
    assert!(err.contains("--rules DIR"), "{err}");
}

#[test]
fn check_reports_each_module_and_fails_on_a_bad_one() {
    let out = run(&["check", "--rules-detail"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("config: embedded defaults: ok"), "{text}");
    assert!(
        text.contains("module falco_k8s_audit (global): ok: falco-k8s-audit")
            && text.contains("43/48 rules enabled"),
        "{text}"
    );
    assert!(
        text.contains("off      Warning       Create Disallowed Pod (create-disallowed-pod)"),
        "{text}"
    );

    let fixtures = root().join("tests/build/fixture-rules");
    let out = run(&["check", "--rules", fixtures.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("module fixture_bad_metadata (global): FAILED: invalid metadata: rule id `dup` is declared twice"),
        "{text}"
    );
    assert!(text.contains("module fixture_echo (global): ok"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("routes.toml");
    std::fs::write(&config, "[[routes]]\noutputs = [\"nowhere\"]\n").unwrap();
    let out = run(&["check", "-c", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("nowhere"), "{}", stderr(&out));
}
