//! `peregrine.cluster` on every alert: from the tenant's `cluster`, or the
//! `/k8s-audit/<tenant>/<cluster>` path segment, with the tenant's token
//! still required and its `clusters` list enforced; routes match on it, the
//! API filters on it, and stateful rules count per cluster.

use crate::support::*;

const TOKEN_A: &str = "team-a-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

/// A GET of the API with the admin token: once tenants have tokens, the API
/// needs one too.
fn api(url: &str) -> serde_json::Value {
    let auth = format!("Bearer {ADMIN}");
    request("GET", url, &[("Authorization", &auth)], None).json()
}

#[test]
fn every_alert_names_its_cluster_and_clusters_route_filter_and_count_apart() {
    let work = tempfile::tempdir().unwrap();
    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let edge_file = work.path().join("edge.jsonl");
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[auth]\nadmin_tokens = [\"{ADMIN}\"]\n\n[tenants.team-a]\ntokens = [\"{TOKEN_A}\"]\ncluster = \"a-main\"\n\
             clusters = [\"a-main\", \"a-edge\"]\n\n\
             [delivery]\nspool_dir = \"{spool}\"\n\n\
             [outputs.edge]\ntype = \"file\"\npath = \"{edge}\"\n\n\
             [[routes]]\nname = \"edge\"\nclusters = [\"a-e*\"]\noutputs = [\"edge\"]\n",
            base = base_config(&rules, Some(work.path())),
            edge = edge_file.display(),
            spool = work.path().join("spool").display(),
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);
    let auth = format!("Bearer {TOKEN_A}");
    let post = |path: &str, token: Option<&str>, ids: &[&str]| {
        let events: Vec<_> = ids
            .iter()
            .map(|id| event(id, "get", "pods", "ns"))
            .collect();
        let headers: Vec<(&str, &str)> = token.map(|t| ("Authorization", t)).into_iter().collect();
        post_json(&srv.url(path), &headers, &event_list(&events))
    };

    assert_eq!(post("/k8s-audit", None, &["d1"]).status, 200);
    assert_eq!(
        post("/k8s-audit/team-a", Some(&auth), &["m1", "m2"]).status,
        200
    );
    assert_eq!(
        post("/k8s-audit/team-a/a-edge", Some(&auth), &["e1", "e2", "e3"]).status,
        200
    );
    // The default tenant lists no clusters: any valid name goes.
    assert_eq!(post("/k8s-audit/default/lab-1", None, &["x1"]).status, 200);

    // The tenant's credentials hold on the cluster path too.
    let r = post("/k8s-audit/team-a/a-edge", None, &["n1"]);
    assert_eq!(r.status, 401, "{r:?}");
    let r = post(
        "/k8s-audit/team-a/a-edge",
        Some("Bearer wrong-token-0123456789"),
        &["n2"],
    );
    assert_eq!(r.status, 401, "{r:?}");
    // A cluster the tenant does not list, and a name that is not one.
    let r = post("/k8s-audit/team-a/b-prod", Some(&auth), &["n3"]);
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.body.contains("b-prod"), "{}", r.body);
    let r = post("/k8s-audit/team-a/a%20edge", Some(&auth), &["n4"]);
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("letters, digits"), "{}", r.body);

    // Alerts of clusters the route does not match go to stdout.
    let alerts = srv.wait_alerts("the alerts of d1, m1, m2 and x1", |a| a.len() >= 4);
    let cluster_of = |id: &str| {
        alerts
            .iter()
            .find(|a| field(a, "ka.auditid") == id)
            .map(|a| field(a, "peregrine.cluster").to_string())
    };
    assert_eq!(cluster_of("d1").as_deref(), Some("default"), "{alerts:?}");
    assert_eq!(cluster_of("m1").as_deref(), Some("a-main"));
    assert_eq!(cluster_of("m2").as_deref(), Some("a-main"));
    assert_eq!(cluster_of("x1").as_deref(), Some("lab-1"));
    assert!(
        alerts
            .iter()
            .all(|a| !field(a, "peregrine.cluster").starts_with("a-e")),
        "the edge route took the edge alerts: {alerts:?}"
    );
    assert!(
        alerts
            .iter()
            .all(|a| !field(a, "ka.auditid").starts_with('n')),
        "refused requests raised nothing"
    );

    // The route on `clusters` sent exactly the edge cluster's alerts to its file.
    wait_until("three alerts in the edge file", || {
        std::fs::read_to_string(&edge_file).is_ok_and(|t| t.lines().count() == 3)
    });
    let edge: Vec<serde_json::Value> = std::fs::read_to_string(&edge_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        edge.iter()
            .all(|a| field(a, "peregrine.cluster") == "a-edge")
    );

    // State is per tenant and cluster: the echo module's counter of events
    // seen reaches 2 for a-main and 3 for a-edge, not 5 for team-a.
    let max_seen = |alerts: &[serde_json::Value]| {
        alerts
            .iter()
            .map(|a| field(a, "seen").parse::<u64>().unwrap())
            .max()
            .unwrap()
    };
    let main: Vec<_> = alerts
        .iter()
        .filter(|a| field(a, "peregrine.cluster") == "a-main")
        .cloned()
        .collect();
    assert_eq!(max_seen(&main), 2);
    assert_eq!(max_seen(&edge), 3);

    // The API filters on the cluster; the summary counts by cluster.
    wait_until("seven alerts stored", || {
        api(&srv.url("/api/v1/alerts/summary"))["total"] == 7
    });
    let stored = api(&srv.url("/api/v1/alerts?cluster=a-edge"));
    let stored = stored["alerts"].as_array().unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(
        stored
            .iter()
            .all(|s| field(&s["alert"], "peregrine.cluster") == "a-edge")
    );
    let both = api(&srv.url("/api/v1/alerts?tenant=team-a&cluster=a-main"));
    assert_eq!(both["alerts"].as_array().unwrap().len(), 2);
    let summary = api(&srv.url("/api/v1/alerts/summary"));
    let by_cluster: std::collections::BTreeMap<String, u64> = summary["by_cluster"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().to_string(), p[1].as_u64().unwrap()))
        .collect();
    assert_eq!(
        by_cluster,
        [("a-edge", 3), ("a-main", 2), ("default", 1), ("lab-1", 1)]
            .map(|(k, v)| (k.to_string(), v))
            .into()
    );
    srv.kill();
}
