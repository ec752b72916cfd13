//! Security defaults of the API and webhook as the real binary applies them:
//! with tenants configured the API wants a token even without an admin
//! token, a tenant sees only its own counters, an exposed open server says
//! so at start, and a shared token or a settings table for no module is
//! reported at start. Connection deadlines and limits, and hostile bodies,
//! are in `limits/`.

use crate::support::*;

const TOKEN_A: &str = "team-a-token-0123456789";
const TOKEN_B: &str = "team-b-token-0123456789";

fn tenants_config(rules: &std::path::Path) -> String {
    format!(
        "{}[tenants.team-a]\ntokens = [\"{TOKEN_A}\"]\n[tenants.team-b]\ntokens = [\"{TOKEN_B}\"]\n",
        base_config(rules, None)
    )
}

#[test]
fn with_tenant_tokens_the_api_needs_a_token_and_tenants_see_their_own_counters() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = work.path().join("peregrine.toml");
    // No admin token: tenant tokens alone close the API.
    std::fs::write(
        &config,
        tenants_config(&rules).replace(
            "[store]\nenabled = false\n",
            &format!(
                "[store]\nenabled = true\npath = \"{}\"\n",
                work.path().join("alerts.sqlite").display()
            ),
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);

    let b_events: Vec<_> = (0..3)
        .map(|i| event(&format!("b-{i}"), "get", "pods", "b"))
        .collect();
    let (code, _) = post(
        &srv.url("/k8s-audit/team-b"),
        Some(TOKEN_B),
        &event_list(&b_events),
    );
    assert_eq!(code, 200);
    let (code, _) = post(
        &srv.url("/k8s-audit/team-a"),
        Some(TOKEN_A),
        &event("a-0", "get", "pods", "a").to_string(),
    );
    assert_eq!(code, 200);
    srv.wait_alerts("four echoes", |a| {
        a.iter().filter(|a| a["rule"] == "Echo").count() == 4
    });

    for path in ["/api/v1/alerts", "/api/v1/alerts/summary", "/api/v1/rules"] {
        let (code, _) = get_json(&srv.url(path), None);
        assert_eq!(code, 401, "{path} without a token");
        let (code, _) = get_json(&srv.url(path), Some("some-other-token-0123456789"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    // The scheme is case-insensitive.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: BEARER {TOKEN_A}"))
        .arg(srv.url("/api/v1/rules"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");

    // Team A's view of the global module counts team A's event only.
    let (code, a) = get_json(&srv.url("/api/v1/rules"), Some(TOKEN_A));
    assert_eq!(code, 200);
    let echo = &a["modules"][0];
    assert_eq!(echo["key"], "fixture_echo");
    assert_eq!(echo["evaluations"], 1, "{echo}");
    assert_eq!(echo["rules"][0]["evaluations"], 1, "{echo}");
    assert_eq!(echo["rules"][0]["alerts"], 1, "{echo}");
    let (_, b) = get_json(&srv.url("/api/v1/rules"), Some(TOKEN_B));
    assert_eq!(b["modules"][0]["evaluations"], 3);
    assert_eq!(b["modules"][0]["rules"][0]["alerts"], 3);

    // And its own alerts only.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, alerts) = get_json(&srv.url("/api/v1/alerts"), Some(TOKEN_A));
        assert_eq!(code, 200);
        let list = alerts["alerts"].as_array().unwrap();
        if !list.is_empty() {
            assert_eq!(list.len(), 1, "{alerts}");
            assert_eq!(
                list[0]["alert"]["output_fields"]["peregrine.tenant"],
                "team-a"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stored");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (_, summary) = get_json(&srv.url("/api/v1/alerts/summary"), Some(TOKEN_A));
    assert_eq!(summary["total"], 1, "{summary}");
    // Health and metrics stay open for probes and Prometheus.
    assert_eq!(get_json(&srv.url("/healthz"), None).0, 200);
    srv.metrics();
}

#[test]
fn an_open_server_beyond_loopback_warns_at_start() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        base_config(&rules, None).replace("127.0.0.1:0", "0.0.0.0:0"),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);
    let log = srv.logs();
    assert!(log.contains("the API and UI on 0.0.0.0:"), "{log}");
    assert!(log.contains("are open"), "{log}");
    assert!(log.contains("takes events without a token"), "{log}");
    drop(srv);

    // On loopback (the default), nothing to warn about.
    std::fs::write(&config, base_config(&rules, None)).unwrap();
    let srv = start(&config, &["--no-watch"]);
    assert!(!srv.logs().contains("are open"), "{}", srv.logs());
}

#[test]
fn a_token_shared_by_two_tenants_is_refused_and_stray_module_tables_are_reported() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = work.path().join("peregrine.toml");
    std::fs::write(&config, tenants_config(&rules).replace(TOKEN_B, TOKEN_A)).unwrap();
    let out = run_to_end(&config, &["--no-watch"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tenant `team-b` and tenant `team-a` share a token"),
        "{err}"
    );
    assert!(
        !err.contains(TOKEN_A),
        "the token itself is not printed: {err}"
    );

    std::fs::write(
        &config,
        format!(
            "{}[modules.fixture_ecko]\nx = 1\n[sandbox.modules.nothing_here]\nmemory_mib = 32\n",
            tenants_config(&rules)
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);
    let log = srv.logs();
    assert!(
        log.contains("[modules.fixture_ecko] names no module"),
        "{log}"
    );
    assert!(
        log.contains("[sandbox.modules.nothing_here] names no module"),
        "{log}"
    );
}
