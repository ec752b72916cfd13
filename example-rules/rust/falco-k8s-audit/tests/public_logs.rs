//! Real cluster audit logs (liggitt/audit2rbac's demo logs: `audit.k8s.io/v1`
//! and the older `v1beta1` with the legacy `timestamp` field) with the pack at
//! its default configuration.
//!
//! The expected alerts were checked by hand against Falco's conditions:
//! - `demo.log`: every request is made by `system:admin` (impersonating
//!   other users, but Falco's `ka.user.name` is the authenticated user), so
//!   `Disallowed K8s User` does not apply, and the requests are `get`/`list`,
//!   which no other rule looks at (`K8s Secret Get ...` needs `get`, the log
//!   only lists secrets). No alert.
//! - `at-501d132/demo.log`: 437 `ResponseComplete` events by `system:admin`
//!   at level Metadata (no request objects, so the RBAC-content rules cannot
//!   match, and no role name starts with `system:`). Only the activity rules
//!   fire, for the successful (2xx) creates and deletes: 29 Roles and 29
//!   RoleBindings created, 28 of each deleted (2 deletes of each got 404),
//!   11 ClusterRoles and 11 ClusterRoleBindings created, 9 of each deleted.
//!   Each of those events matches one rule only, so `first` and `all` agree.
//!   The 320 `RequestReceived` events match nothing (`kevt` is
//!   ResponseComplete only, and none is a port-forward).

mod common;

use std::collections::BTreeMap;

use common::{Matching, corpus_dir, load, read_trace_file};
use serde_json::json;

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn audit2rbac_demo_log_v1_raises_nothing() {
    let events = read_trace_file(&corpus_dir().join("public/liggitt__audit2rbac/demo.log"));
    assert_eq!(events.len(), 37);
    let pack = load(common::PACK_MODULE, &json!({})).unwrap();
    assert_eq!(pack.counts(&events, Matching::First), BTreeMap::new());
    assert_eq!(pack.counts(&events, Matching::All), BTreeMap::new());
}

#[test]
fn audit2rbac_demo_log_v1beta1_raises_the_rbac_activity_alerts() {
    let events =
        read_trace_file(&corpus_dir().join("public/liggitt__audit2rbac/at-501d132/demo.log"));
    assert_eq!(events.len(), 757);
    let pack = load(common::PACK_MODULE, &json!({})).unwrap();
    let want = counts(&[
        ("K8s ClusterRole Created", 11),
        ("K8s ClusterRole Deleted", 9),
        ("K8s ClusterRoleBinding Created", 11),
        ("K8s ClusterRoleBinding Deleted", 9),
        ("K8s Role Created", 29),
        ("K8s Role Deleted", 28),
        ("K8s RoleBinding Created", 29),
        ("K8s RoleBinding Deleted", 28),
    ]);
    assert_eq!(pack.counts(&events, Matching::First), want);
    assert_eq!(pack.counts(&events, Matching::All), want);
    // Switching the activity rules off leaves nothing.
    let quiet = load(common::PACK_MODULE, &json!({"activity_rules": false})).unwrap();
    assert_eq!(quiet.counts(&events, Matching::All), BTreeMap::new());
}
