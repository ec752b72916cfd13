//! Falco's own k8s-audit regression suite (66 cases over the 47 trace files
//! of `audit-corpus/falco/`), and the corpus README's per-file table of what
//! the default ruleset raises with `rule_matching: first` and `all`.

mod common;

use std::collections::BTreeMap;

use common::{Matching, cases, corpus_dir, load, read_trace, run_case};
use peregrine_sdk::testing::read_events;
use serde_json::json;

fn trace_text(name: &str) -> String {
    let path = corpus_dir().join("falco").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn falco_regression_suite_passes() {
    let cases = cases(&corpus_dir().join("falco-expectations.json"));
    assert_eq!(
        cases.len(),
        66,
        "falco-expectations.json should hold Falco's 66 cases"
    );
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in &cases {
        let text = trace_text(&case.trace_file);
        let events = match read_trace(&text) {
            Ok(events) => events,
            Err(e) => {
                // Only the FAL-01-003 payload is not an audit event; the host
                // rejects it at ingest, so nothing reaches the rules.
                if case.trace_file != "fal_01_003.json" {
                    failures.push(format!(
                        "{}: {} does not parse: {e}",
                        case.case, case.trace_file
                    ));
                }
                Vec::new()
            }
        };
        failures.extend(run_case(case, &events));
        ran += 1;
    }
    assert_eq!(ran, 66);
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn fal_01_003_is_not_an_audit_event() {
    let text = trace_text("fal_01_003.json");
    assert_eq!(text.trim(), r#"{"kind": 0}"#);
    for err in [
        read_events(&text).expect_err("`{\"kind\": 0}` must not parse as an audit event"),
        read_trace(&text).expect_err("`{\"kind\": 0}` must not parse as an audit event"),
    ] {
        assert!(err.contains("auditID"), "unexpected parse error: {err}");
    }
}

type Counts = BTreeMap<String, usize>;

/// `file -> (first, all)` from the corpus README table, as rule -> count.
fn readme_table() -> BTreeMap<String, (Counts, Counts)> {
    fn parse_counts(cell: &str) -> Counts {
        let cell = cell.trim();
        if cell == "none" {
            return BTreeMap::new();
        }
        cell.split("; ")
            .map(|item| {
                let (rule, n) = item
                    .rsplit_once(" x")
                    .unwrap_or_else(|| panic!("bad table cell item `{item}`"));
                (
                    rule.to_string(),
                    n.parse()
                        .unwrap_or_else(|_| panic!("bad count in `{item}`")),
                )
            })
            .collect()
    }
    let readme = std::fs::read_to_string(corpus_dir().join("README.md")).unwrap();
    let mut table = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| file | content | expectation | first | all |`
        if cells.len() != 7 || !cells[1].ends_with(".json`") {
            continue;
        }
        let file = cells[1].trim_matches('`').to_string();
        table.insert(file, (parse_counts(cells[4]), parse_counts(cells[5])));
    }
    table
}

#[test]
fn default_ruleset_matches_the_corpus_table_first_and_all() {
    let table = readme_table();
    assert_eq!(
        table.len(),
        47,
        "the README table should list the 47 trace files"
    );
    let pack = load(common::PACK_MODULE, &json!({})).unwrap();
    let mut failures = Vec::new();
    for (file, (want_first, want_all)) in &table {
        let events = read_trace(&trace_text(file)).unwrap_or_default();
        let first = pack.counts(&events, Matching::First);
        let all = pack.counts(&events, Matching::All);
        if &first != want_first {
            failures.push(format!(
                "{file} (first): got {first:?}, table says {want_first:?}"
            ));
        }
        if &all != want_all {
            failures.push(format!(
                "{file} (all): got {all:?}, table says {want_all:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn outputs_match_falcos_format() {
    let pack = load(common::PACK_MODULE, &json!({})).unwrap();
    let one = |file: &str| {
        let events = read_trace(&trace_text(file)).unwrap();
        pack.alerts(&events[0], Matching::First).remove(0).output
    };
    assert_eq!(
        one("create_nginx_pod_privileged.json"),
        "Pod started with privileged container (user=system:serviceaccount:kube-system:replicaset-controller pod=nginx-deployment-5cdcc99dbf-rgw6z resource=pods ns=default images=(nginx) init_images=<NA> ephemeral_images=<NA>)"
    );
    // v0.18.0 prints the ConfigMap's name, not the credential it found.
    assert_eq!(
        one("create_configmap_sensitive_values.json"),
        "K8s configmap with private credential (user=minikube-user verb=create resource=configmaps configmap=my-config)"
    );
    assert_eq!(
        one("exec_pod.json"),
        "Attach/Exec to pod (user=minikube-user pod=nginx-deployment-7998647bdf-phvq7 resource=pods ns=default action=exec command=bash)"
    );
    assert_eq!(
        one("attach_pod.json"),
        "Attach/Exec to pod (user=minikube-user pod=nginx-deployment-7998647bdf-phvq7 resource=pods ns=default action=attach command=<NA>)"
    );
    assert_eq!(
        one("attach_cluster_admin_role.json"),
        r#"Cluster Role Binding to cluster-admin role (user=minikube-user subject=({"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"minikube"}))"#
    );
    assert_eq!(
        one("anonymous_creates_namespace_foo.json"),
        "Request by anonymous user allowed (user=system:anonymous verb=create uri=/api/v1/namespaces reason=))"
    );
}
