//! A peer's test suite: the Kubernetes audit rules of panther-labs/
//! panther-analysis, with their own test events and expected verdicts
//! (`../shared/peer-suites/panther-k8s/`, not committed: see its README).
//!
//! Each Panther rule is mapped to the Peregrine rule(s) of the same concept
//! (`MAPPING`). Every plain-event case runs through the host with the real
//! `falco_k8s_audit.wasm` and `k8s_threats.wasm`, and Peregrine's verdict
//! (did a mapped rule alert on the case's event?) is compared with Panther's
//! `expected`. Nothing is skipped: a case of a rule without a mapping is a
//! disagreement, and a missing case file fails the test.
//!
//! The events were written as unit tests and are partial: most lack
//! `auditID` and `stage`, some `verb`, which the host's decoder requires
//! (kube-apiserver always sends them). The suite fills them in, counts what
//! it filled, and prints the counts: `auditID` gets the case id, `stage`
//! `ResponseComplete` (a finished request), `verb` `get` (only events
//! without an object to act on lack one).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use peregrine_tests::*;
use serde_json::Value;

/// How a Panther rule's verdict is compared.
#[derive(Clone, Copy, PartialEq)]
enum Scoring {
    /// The case's event alone, against Peregrine's per-event rules.
    Event,
    /// Panther's rule alerts at N matching events: N copies of the event
    /// (distinct auditIDs) are fed to Peregrine's stateful rule, in one
    /// cluster of their own, and the verdict is whether it alerted.
    Copies(usize),
    /// Likewise, each copy naming a different object (`<name>-<i>`): for
    /// thresholds that count distinct objects (Panther's `unique()`).
    DistinctCopies(usize),
}

struct Mapping {
    panther: &'static str,
    /// Peregrine rule ids (either pack); the verdict is "any of them alerted".
    peregrine: &'static [&'static str],
    scoring: Scoring,
}

const fn event(panther: &'static str, peregrine: &'static [&'static str]) -> Mapping {
    Mapping {
        panther,
        peregrine,
        scoring: Scoring::Event,
    }
}

/// Every Panther rule that has plain-event cases. Rules are mapped by
/// concept, not tuned per case: where the packs disagree with Panther on
/// purpose, docs/detections.md ("Peer suite") says why.
const MAPPING: &[Mapping] = &[
    event(
        "Amazon.EKS.AnonymousAPIAccess",
        &[
            "anonymous-request-allowed",
            "unauthenticated-request-succeeded",
        ],
    ),
    Mapping {
        panther: "Amazon.EKS.Audit.Multiple403",
        peregrine: &["forbidden-storm"],
        scoring: Scoring::Copies(10),
    },
    event(
        "Amazon.EKS.Audit.SystemNamespaceFromPublicIP",
        &["system-principal-from-public-ip"],
    ),
    event(
        "Kubernetes.AdmissionController.Created",
        &["admission-webhook-changed"],
    ),
    event(
        "Kubernetes.API.AnonymousAccess",
        &[
            "anonymous-request-allowed",
            "unauthenticated-request-succeeded",
        ],
    ),
    event(
        "Kubernetes.ClientCertificate.Created",
        &["client-certificate-requested"],
    ),
    event(
        "Kubernetes.ClusterRoleBinding.Privileged",
        &["cluster-admin-binding"],
    ),
    event(
        "Kubernetes.CronJob.CreatedOrModified",
        &["cronjob-created-or-modified"],
    ),
    event("Kubernetes.DaemonSet.Created", &["daemonset-created"]),
    event("Kubernetes.Pod.Exec", &["attach-exec-pod"]),
    event(
        "Kubernetes.Ingress.NoTLS",
        &["ingress-object-without-tls-certificate-created"],
    ),
    // Tor exit nodes: Peregrine has no threat-intelligence feed.
    event("Kubernetes.API.IOC.Activity", &[]),
    event(
        "Kubernetes.Kubectl.CP.Operation",
        &["kubectl-cp-exfiltration"],
    ),
    Mapping {
        panther: "Kubernetes.API.Multiple403.PublicIP",
        peregrine: &["forbidden-storm"],
        scoring: Scoring::Copies(10),
    },
    event(
        "Kubernetes.Pod.SystemNamespace",
        &["pod-created-in-kube-namespace"],
    ),
    event(
        "Kubernetes.Pod.Dangerous.Capabilities",
        &["dangerous-capabilities"],
    ),
    event("Kubernetes.Pod.Host.IPC", &["create-hostipc-pod"]),
    event("Kubernetes.Pod.Host.Network", &["create-hostnetwork-pod"]),
    event("Kubernetes.Pod.Host.PID", &["create-hostpid-pod"]),
    event(
        "Kubernetes.Pod.HostPath.Volume",
        &[
            "create-sensitive-mount-pod",
            "host-root-or-runtime-socket-mount",
        ],
    ),
    event(
        "Kubernetes.Pod.Privileged.Created",
        &["create-privileged-pod"],
    ),
    event(
        "Kubernetes.Role.NodeProxyPermissions",
        &["nodes-proxy-access"],
    ),
    event(
        "Kubernetes.Role.PodExec",
        &["clusterrole-with-pod-exec-created"],
    ),
    event(
        "Kubernetes.Role.Wildcard",
        &["clusterrole-with-wildcard-created"],
    ),
    event(
        "Kubernetes.Role.WritePermissions",
        &["clusterrole-with-write-privileges-created"],
    ),
    // The per-event predicate (a failed secret get) is Falco's rule; the
    // threshold of 20 is Panther's alerting policy on top of it.
    event(
        "Kubernetes.Secret.AccessDenied",
        &["k8s-secret-get-unsuccessfully-tried"],
    ),
    Mapping {
        panther: "Kubernetes.BulkSecretAccess",
        peregrine: &["secrets-read-burst"],
        scoring: Scoring::DistinctCopies(15),
    },
    event(
        "Kubernetes.Secrets.DumpAllNamespaces",
        &["cluster-wide-secret-list"],
    ),
    event(
        "Kubernetes.Service.NodePort.Deployed",
        &["create-nodeport-service", "service-exposed-externally"],
    ),
    event(
        "Kubernetes.ServiceAccount.TokenCreated",
        &["token-request-unusual"],
    ),
    event(
        "Kubernetes.Pod.StealServiceAccountToken",
        &["exec-cloud-credentials"],
    ),
    event(
        "Kubernetes.System.Principal.PublicIP",
        &["system-principal-from-public-ip"],
    ),
    event(
        "Kubernetes.SystemRole.Modified",
        &["system-clusterrole-modified-deleted"],
    ),
];

/// Agreement on the 215 self-contained plain cases must not fall below this
/// (a floor against regressions; the goal is 205, 95%).
const FLOOR_SELF_CONTAINED: usize = 174;

/// The peer suite ([`peer_suite`]), which must be there.
fn suite_dir() -> PathBuf {
    let dir = peer_suite();
    assert!(
        dir.join("cases.json").is_file(),
        "the peer suite is missing: no {}. It is not committed (see its README); \
         put it there, or point PEREGRINE_PEER_SUITES at the directory holding panther-k8s/",
        dir.join("cases.json").display()
    );
    dir
}

/// What the suite filled in, per field.
#[derive(Default)]
struct Filled(BTreeMap<&'static str, usize>);

/// Requests the apiserver reports twice, at ResponseStarted (when the
/// stream opens) and at ResponseComplete (when it ends).
fn long_running(event: &Value) -> bool {
    let sub = event["objectRef"]["subresource"].as_str();
    event["verb"] == "watch" || matches!(sub, Some("exec" | "attach" | "portforward" | "proxy"))
}

/// The event as the apiserver would have sent it: the required fields the
/// unit-test event lacks, filled in (and counted). Without a `stage`, a
/// long-running request is sent at both of its stages, anything else at
/// ResponseComplete.
fn complete(mut event: Value, id: &str, filled: &mut Filled) -> Vec<Value> {
    let obj = event
        .as_object_mut()
        .expect("a case event is a JSON object");
    let defaults = [
        ("auditID", Value::from(format!("peer-{id}"))),
        ("verb", Value::from("get")),
    ];
    for (key, value) in defaults {
        if !obj.contains_key(key) {
            obj.insert(key.to_string(), value);
            *filled.0.entry(key).or_default() += 1;
        }
    }
    if obj.contains_key("stage") {
        return vec![event];
    }
    let stages: &[&str] = if long_running(&event) {
        *filled
            .0
            .entry("stage (ResponseStarted, then ResponseComplete)")
            .or_default() += 1;
        &["ResponseStarted", "ResponseComplete"]
    } else {
        *filled.0.entry("stage (ResponseComplete)").or_default() += 1;
        &["ResponseComplete"]
    };
    stages
        .iter()
        .map(|stage| {
            let mut e = event.clone();
            e["stage"] = Value::from(*stage);
            e
        })
        .collect()
}

struct Outcome {
    id: String,
    rule: String,
    expected: bool,
    got: bool,
    self_contained: bool,
    beyond_falco: bool,
    mapped: bool,
    /// Every rule that alerted, mapped or not (for the disagreement list).
    fired: Vec<String>,
}

fn run_case(
    case: &Value,
    mapping: Option<&Mapping>,
    dir: &Path,
    tmp: &Path,
    filled: &mut Filled,
) -> Outcome {
    let id = case["id"].as_str().unwrap().to_string();
    let file = dir.join(case["file"].as_str().unwrap());
    assert!(
        file.is_file(),
        "case {id}: its event file {} is missing",
        file.display()
    );
    let event: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("case {id}: {} is not JSON: {e}", file.display()));
    let event = complete(event, &id, filled);
    let (copies, distinct) = match mapping.map(|m| m.scoring) {
        Some(Scoring::Copies(n)) => (n, false),
        Some(Scoring::DistinctCopies(n)) => (n, true),
        _ => (1, false),
    };
    let mut events = Vec::new();
    for i in 0..copies {
        for stage in &event {
            let mut e = stage.clone();
            if copies > 1 {
                let audit_id = format!("{}-{i}", e["auditID"].as_str().unwrap_or(""));
                e["auditID"] = Value::from(audit_id);
                if let Some(name) = e["objectRef"]["name"].as_str().filter(|_| distinct) {
                    let name = format!("{name}-{i}");
                    e["objectRef"]["name"] = Value::from(name);
                }
            }
            events.push(e);
        }
    }
    let input = tmp.join(format!("{id}.json"));
    std::fs::write(&input, serde_json::to_string(&events).unwrap()).unwrap();
    let (alerts, rejected) = evaluate_file(
        test_config(),
        &[
            example_module("falco_k8s_audit"),
            example_module("k8s_threats"),
        ],
        &input,
    );
    assert!(
        rejected.is_empty(),
        "case {id}: events rejected: {rejected:?}"
    );
    let mut fired: Vec<String> = alerts.iter().map(|a| a.rule_id.clone()).collect();
    fired.sort();
    fired.dedup();
    let got = mapping.is_some_and(|m| fired.iter().any(|f| m.peregrine.contains(&f.as_str())));
    Outcome {
        id,
        rule: case["rule_id"].as_str().unwrap().to_string(),
        expected: case["expected"].as_bool().unwrap(),
        got,
        self_contained: case["self_contained"].as_bool().unwrap(),
        beyond_falco: case["beyond_falco"].as_bool().unwrap(),
        mapped: mapping.is_some_and(|m| !m.peregrine.is_empty()),
        fired,
    }
}

fn ratio(a: usize, n: usize) -> String {
    if n == 0 {
        "-".to_string()
    } else {
        format!("{a}/{n}")
    }
}

#[test]
fn panthers_kubernetes_cases_agree_with_peregrines_rules() {
    let dir = suite_dir();
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    let mut envelope_only: BTreeMap<&str, usize> = BTreeMap::new();
    for c in doc["cases"].as_array().unwrap() {
        if !c["file"].is_string() {
            let format = c["format"].as_str().unwrap_or("?");
            let format = format.split(" (").next().unwrap_or(format);
            *envelope_only.entry(format).or_default() += 1;
        }
    }
    let cases: Vec<&Value> = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["file"].is_string())
        .collect();
    assert_eq!(cases.len(), 219, "plain-event cases in cases.json");

    let tmp = tempfile::tempdir().unwrap();
    let mut filled = Filled::default();
    let outcomes: Vec<Outcome> = cases
        .iter()
        .map(|c| {
            let rule = c["rule_id"].as_str().unwrap();
            let mapping = MAPPING.iter().find(|m| m.panther == rule);
            run_case(c, mapping, &dir, tmp.path(), &mut filled)
        })
        .collect();

    println!(
        "\nPeer suite: panther-labs/panther-analysis Kubernetes rules, {} plain-event cases",
        outcomes.len()
    );
    println!(
        "Filled in (required by the decoder, absent from the unit-test events): {:?}",
        filled.0
    );
    println!(
        "\n| Panther rule | beyond Falco | Peregrine rule(s) | scoring | positives | negatives |"
    );
    println!("|---|---|---|---|---|---|");
    let mut rules: Vec<&str> = Vec::new();
    for o in &outcomes {
        if !rules.contains(&o.rule.as_str()) {
            rules.push(&o.rule);
        }
    }
    let mut rows = Vec::new();
    for rule in &rules {
        let of: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.rule == *rule && o.self_contained)
            .collect();
        let pos = of.iter().filter(|o| o.expected).count();
        // An unmapped rule agrees with nothing, like in the totals.
        let pos_ok = of
            .iter()
            .filter(|o| o.mapped && o.expected && o.got)
            .count();
        let neg = of.len() - pos;
        let neg_ok = of
            .iter()
            .filter(|o| o.mapped && !o.expected && !o.got)
            .count();
        let m = MAPPING.iter().find(|m| m.panther == *rule);
        let peregrine = m
            .filter(|m| !m.peregrine.is_empty())
            .map(|m| {
                m.peregrine
                    .iter()
                    .map(|p| format!("`{p}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_else(|| "(none)".to_string());
        let scoring = match m.map(|m| m.scoring) {
            Some(Scoring::Copies(n)) => format!("{n} copies"),
            Some(Scoring::DistinctCopies(n)) => format!("{n} distinct"),
            _ => "per event".to_string(),
        };
        let beyond = if of.first().is_some_and(|o| o.beyond_falco) {
            "yes"
        } else {
            "no"
        };
        let row = format!(
            "| {rule} | {beyond} | {peregrine} | {scoring} | {} | {} |",
            ratio(pos_ok, pos),
            ratio(neg_ok, neg)
        );
        println!("{row}");
        rows.push(row);
    }

    let agree = |o: &Outcome| o.mapped && o.got == o.expected;
    let tally = |filter: &dyn Fn(&&Outcome) -> bool| {
        let of: Vec<&Outcome> = outcomes.iter().filter(filter).collect();
        (of.iter().filter(|o| agree(o)).count(), of.len())
    };
    let (sc_agree, sc_n) = tally(&|o| o.self_contained);
    let (pos_agree, pos_n) = tally(&|o| o.self_contained && o.expected);
    let (neg_agree, neg_n) = tally(&|o| o.self_contained && !o.expected);
    let (bf_agree, bf_n) = tally(&|o| o.self_contained && o.beyond_falco);
    let (fe_agree, fe_n) = tally(&|o| o.self_contained && !o.beyond_falco);
    let (en_agree, en_n) = tally(&|o| !o.self_contained);
    let summary = format!(
        "peer suite (panther-k8s): {sc_agree}/{sc_n} self-contained plain cases agree ({:.1}%)\n  \
         positives {pos_agree}/{pos_n}, negatives {neg_agree}/{neg_n}; \
         rules beyond Falco {bf_agree}/{bf_n}, rules with a Falco equivalent {fe_agree}/{fe_n}\n  \
         enrichment-dependent cases (Panther's p_enrichment; scored apart, not in the total): {en_agree}/{en_n}\n  \
         not run: {} envelope-only cases {envelope_only:?}, which need the managed-cluster (GKE, AKS) inputs\n",
        100.0 * sc_agree as f64 / sc_n as f64,
        envelope_only.values().sum::<usize>()
    );
    // Straight to the process's stderr, which the test harness does not
    // capture: `make test` shows the agreement even when the test passes.
    // The table and the disagreements above and below show with --nocapture.
    let _ = std::io::stderr().write_all(summary.as_bytes());
    println!("\nDisagreements:");
    for o in outcomes
        .iter()
        .filter(|o| !(o.mapped && o.got == o.expected))
    {
        println!(
            "- {}{} ({}): expected {}, Peregrine {}{}; alerts: {:?}",
            o.id,
            if o.self_contained {
                ""
            } else {
                " [enrichment]"
            },
            o.rule,
            o.expected,
            o.got,
            if o.mapped {
                ""
            } else {
                " (no Peregrine rule mapped)"
            },
            o.fired
        );
    }

    assert_eq!(sc_n, 215, "self-contained plain cases");
    let docs = std::fs::read_to_string(root().join("docs/detections.md")).unwrap();
    let section = docs
        .split("\n## Peer suite\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("docs/detections.md has a Peer suite section");
    let documented: BTreeSet<&str> = section
        .lines()
        .filter_map(|l| l.strip_prefix("- `")?.split('`').next())
        .collect();
    let found: BTreeSet<&str> = outcomes
        .iter()
        .filter(|o| !(o.mapped && o.got == o.expected))
        .map(|o| o.id.as_str())
        .collect();
    for row in &rows {
        assert!(
            section.contains(row.as_str()),
            "the Peer suite table of docs/detections.md lacks or differs from:\n{row}"
        );
    }
    let result = format!("**Result: {sc_agree} of the 215 self-contained cases agree");
    assert!(
        section.contains(&result),
        "docs/detections.md (Peer suite) must state the result: {result}"
    );
    let undocumented: Vec<&&str> = found.difference(&documented).collect();
    let stale: Vec<&&str> = documented.difference(&found).collect();
    assert!(
        undocumented.is_empty() && stale.is_empty(),
        "docs/detections.md (Peer suite) must list exactly the disagreements: \
         missing {undocumented:?}, no longer disagreeing {stale:?}"
    );
    // A mapping to a rule id no pack has would silently score "no alert".
    for id in MAPPING.iter().flat_map(|m| m.peregrine.iter()) {
        assert!(
            docs.contains(&format!("| `{id}` |")),
            "MAPPING names `{id}`, which is not a detection in docs/detections.md"
        );
    }
    assert!(
        sc_agree >= FLOOR_SELF_CONTAINED,
        "agreement on the self-contained cases fell to {sc_agree}/{sc_n}, below the floor of {FLOOR_SELF_CONTAINED}"
    );
}
