use std::io::Write;
use std::path::PathBuf;

use serde_json::{Value, json};

use super::*;

const MAX_EVENT: usize = 1 << 20;

fn limits() -> Limits {
    Limits::default()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn unwrap_auto(bytes: &[u8]) -> Unwrapping {
    unwrap_input(bytes, InputFormat::Auto, &limits()).unwrap()
}

fn event(id: &str) -> Value {
    json!({"kind": "Event", "apiVersion": "audit.k8s.io/v1", "auditID": id,
           "stage": "ResponseComplete", "verb": "get", "requestURI": "/api/v1/pods",
           "user": {"username": "alice"}})
}

/// The peer suite, beside the audit corpus in the shared directory
/// (`$PEREGRINE_AUDIT_CORPUS/..`, else `../shared` next to the checkout).
fn panther() -> PathBuf {
    std::env::var_os("PEREGRINE_AUDIT_CORPUS")
        .map(|c| PathBuf::from(c).join(".."))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("peer-suites/panther-k8s")
}

fn read_json(p: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

fn without_panther_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Value::Object(m) = &mut v {
        m.retain(|k, _| !k.starts_with("p_"));
    }
    v
}

fn files(dir: &str) -> Vec<PathBuf> {
    let mut f: Vec<PathBuf> = std::fs::read_dir(panther().join("envelope").join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    f.sort();
    f
}

// ---- GKE ----

#[test]
fn every_gke_logentry_of_the_peer_suite_becomes_an_event_or_is_skipped_with_a_reason() {
    let mut events = 0;
    let mut skipped = Vec::new();
    for path in files("gcp") {
        let bytes = std::fs::read(&path).unwrap();
        let u = unwrap_auto(&bytes);
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(u.rejected.is_empty(), "{name}: {:?}", u.rejected);
        assert_eq!(u.events.len() + u.skipped.len(), 1, "{name}");
        if u.skipped.len() == 1 {
            skipped.push((name, u.skipped[0].reason.clone()));
            continue;
        }
        events += 1;
        let d = u.decode(MAX_EVENT);
        assert!(d.rejected.is_empty(), "{name}: {:?}", d.rejected);
        assert_eq!(d.events.len(), 1, "{name}");
        let ev = &d.events[0];
        let entry = read_json(&path);
        let method = entry["protoPayload"]["methodName"].as_str().unwrap();
        assert!(
            method.ends_with(&ev.verb) || ev.verb == "get",
            "{name}: {method} -> {}",
            ev.verb
        );
        assert_eq!(
            ev.user.username,
            entry["protoPayload"]["authenticationInfo"]["principalEmail"]
                .as_str()
                .unwrap_or_default(),
            "{name}"
        );
        if let Some(req) = entry["protoPayload"].get("request") {
            let mut req = req.clone();
            req.as_object_mut().unwrap().remove("@type");
            let got: Value =
                serde_json::from_str(ev.request_object.as_ref().unwrap().get()).unwrap();
            assert_eq!(got, req, "{name}: requestObject");
        }
    }
    // The entries of other Google services and the ones without an
    // AuditLog payload are the suite's negative cases for a GKE adapter.
    let reasons: Vec<_> = skipped.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    assert_eq!(skipped.len(), 8, "{reasons:#?}");
    assert_eq!(events, 51);
    for (n, r) in &skipped {
        assert!(
            r.contains("deploymentmanager.googleapis.com")
                || r.contains("compute.googleapis.com")
                || r.contains("no protoPayload"),
            "{n}: {r}"
        );
    }
}

fn gke_event(file: &str) -> (Value, Option<String>) {
    let bytes = std::fs::read(panther().join("envelope/gcp").join(file)).unwrap();
    let u = unwrap_auto(&bytes);
    assert_eq!(
        u.events.len(),
        1,
        "{file}: {:?} {:?}",
        u.rejected,
        u.skipped
    );
    (
        serde_json::from_str(&u.events[0].json).unwrap(),
        u.events[0].cluster.clone(),
    )
}

#[test]
fn gke_privileged_pod_is_rebuilt_field_by_field() {
    let (ev, cluster) = gke_event("gcp_k8s_privileged_pod_created-01.json");
    assert_eq!(cluster.as_deref(), Some("some-project-cluster"));
    assert_eq!(ev["kind"], "Event");
    assert_eq!(ev["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(ev["verb"], "create");
    assert_eq!(ev["stage"], "ResponseComplete");
    assert_eq!(ev["level"], "RequestResponse");
    assert_eq!(
        ev["requestURI"],
        "/api/v1/namespaces/default/pods/test-privileged-pod"
    );
    assert_eq!(
        ev["objectRef"],
        json!({"resource": "pods", "namespace": "default", "name": "test-privileged-pod", "apiVersion": "v1"})
    );
    assert_eq!(ev["user"], json!({"username": "john.doe@company.com"}));
    assert_eq!(ev["sourceIPs"], json!(["1.2.3.4"]));
    assert_eq!(ev["responseStatus"], json!({"code": 201}));
    assert_eq!(
        ev["requestObject"]["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    assert!(ev["requestObject"].get("@type").is_none());
    assert_eq!(ev["stageTimestamp"], "2024-02-13T12:45:06.073905000Z");
    assert_eq!(ev["requestReceivedTimestamp"], ev["stageTimestamp"]);
    assert_eq!(ev["annotations"]["authorization.k8s.io/decision"], "allow");
    // No operation.id nor insertId in this entry: a content-derived ID.
    assert!(ev["auditID"].as_str().unwrap().starts_with("gke-"));
    let (again, _) = gke_event("gcp_k8s_privileged_pod_created-01.json");
    assert_eq!(again["auditID"], ev["auditID"]);
}

#[test]
fn gke_denied_secret_read_keeps_the_failure() {
    let (ev, cluster) = gke_event("k8s_secret_access_denied-04.json");
    assert_eq!(cluster, None);
    assert_eq!(
        ev["responseStatus"],
        json!({"code": 403, "status": "Failure", "message": "PERMISSION_DENIED"})
    );
    assert_eq!(ev["annotations"]["authorization.k8s.io/decision"], "forbid");
    assert_eq!(
        ev["objectRef"],
        json!({"resource": "secrets", "namespace": "production", "name": "tls-cert", "apiVersion": "v1"})
    );
    assert_eq!(ev["level"], "Metadata");
}

#[test]
fn gke_exec_is_a_started_stream_and_readyz_a_non_resource_get() {
    let (ev, _) = gke_event("gcp_k8s_exec_into_pod-01.json");
    assert_eq!(ev["stage"], "ResponseStarted");
    assert_eq!(ev["objectRef"]["subresource"], "exec");
    assert_eq!(ev["responseStatus"]["code"], 101);
    let (ev, _) = gke_event("k8s_system_principal_public_ip-12.json");
    assert_eq!(ev["verb"], "get");
    assert_eq!(ev["requestURI"], "/readyz");
    assert!(ev.get("objectRef").is_none());
    assert_eq!(ev["userAgent"], "GoogleKubernetesEngineFrontend");
}

#[test]
fn gke_entry_without_resource_name_takes_the_object_from_the_method_and_request() {
    let (ev, _) = gke_event("gcp_k8s_pod_attached_to_node_host_network-01.json");
    assert_eq!(ev["objectRef"]["resource"], "pods");
    assert_eq!(ev["objectRef"]["apiVersion"], "v1");
    assert!(ev["objectRef"].get("apiGroup").is_none());
    assert_eq!(ev["requestObject"]["spec"]["hostNetwork"], true);
}

#[test]
fn gke_real_shape_with_operation_labels_and_status_response() {
    let entry = json!({
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "system:serviceaccount:ci:deployer"},
            "authorizationInfo": [{"granted": true, "permission": "io.k8s.authorization.rbac.v1.clusterrolebindings.create",
                                   "resource": "rbac.authorization.k8s.io/v1/clusterrolebindings/ci-admin"}],
            "methodName": "io.k8s.authorization.rbac.v1.clusterrolebindings.create",
            "request": {"@type": "rbac.authorization.k8s.io/v1.ClusterRoleBinding", "kind": "ClusterRoleBinding",
                        "metadata": {"name": "ci-admin"}, "roleRef": {"name": "cluster-admin"}},
            "requestMetadata": {"callerIp": "10.0.0.7", "callerSuppliedUserAgent": "kubectl/v1.30.0"},
            "resourceName": "rbac.authorization.k8s.io/v1/clusterrolebindings",
            "response": {"@type": "core.k8s.io/v1.Status", "kind": "Status", "code": 409,
                         "reason": "AlreadyExists", "status": "Failure", "message": "exists"},
            "serviceName": "k8s.io",
            "status": {"code": 6, "message": "Conflict"}
        },
        "insertId": "b5a9a1f2-2c1e-4c53-9f8e-0e9c9c8a7d61",
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "prod-eu", "location": "europe-west1", "project_id": "p"}},
        "timestamp": "2026-01-05T10:00:00.123456Z",
        "labels": {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": "RBAC: allowed"},
        "logName": "projects/p/logs/cloudaudit.googleapis.com%2Factivity",
        "operation": {"id": "b5a9a1f2-2c1e-4c53-9f8e-0e9c9c8a7d61", "producer": "k8s.io", "first": true, "last": true},
        "receiveTimestamp": "2026-01-05T10:00:01Z"
    });
    let u = unwrap_auto(entry.to_string().as_bytes());
    assert_eq!(u.events[0].cluster.as_deref(), Some("prod-eu"));
    let ev: Value = serde_json::from_str(&u.events[0].json).unwrap();
    assert_eq!(ev["auditID"], "b5a9a1f2-2c1e-4c53-9f8e-0e9c9c8a7d61");
    assert_eq!(
        ev["requestURI"],
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    );
    assert_eq!(
        ev["objectRef"],
        json!({"resource": "clusterrolebindings", "name": "ci-admin",
               "apiGroup": "rbac.authorization.k8s.io", "apiVersion": "v1"})
    );
    assert_eq!(
        ev["responseStatus"],
        json!({"code": 409, "reason": "AlreadyExists", "status": "Failure", "message": "exists"})
    );
    assert_eq!(
        ev["annotations"]["authorization.k8s.io/reason"],
        "RBAC: allowed"
    );
    assert_eq!(ev["userAgent"], "kubectl/v1.30.0");
    assert_eq!(ev["stageTimestamp"], "2026-01-05T10:00:00.123456Z");
    let d = u.decode(MAX_EVENT);
    assert_eq!(d.events.len(), 1, "{:?}", d.rejected);
    assert_eq!(d.clusters[0].as_deref(), Some("prod-eu"));
}

#[test]
fn resource_names_parse_as_the_apiserver_parses_paths() {
    let p = |s| gke::parse_resource_name(s).unwrap();
    let o = p("core/v1/namespaces/kube-system/pods/coredns-1/exec");
    assert_eq!(
        (
            o.namespace.as_deref(),
            o.resource.as_str(),
            o.name.as_deref(),
            o.subresource.as_deref()
        ),
        (Some("kube-system"), "pods", Some("coredns-1"), Some("exec"))
    );
    let o = p("core/v1/namespaces/dev");
    assert_eq!(
        (
            o.namespace.as_deref(),
            o.resource.as_str(),
            o.name.as_deref()
        ),
        (Some("dev"), "namespaces", Some("dev"))
    );
    let o = p("core/v1/namespaces/dev/finalize");
    assert_eq!(
        (
            o.resource.as_str(),
            o.name.as_deref(),
            o.subresource.as_deref()
        ),
        ("namespaces", Some("dev"), Some("finalize"))
    );
    let o = p("apps/v1/namespaces/prod/deployments");
    assert_eq!(
        (o.group.as_str(), o.resource.as_str(), o.name),
        ("apps", "deployments", None)
    );
    let o = p("core/v1/nodes/n1/proxy/metrics");
    assert_eq!(o.subresource.as_deref(), Some("proxy/metrics"));
    assert!(gke::parse_resource_name("core/v1").is_none());
    assert!(gke::parse_resource_name("core//pods").is_none());
}

#[test]
fn gke_entries_list_answer_and_arrays_keep_siblings_of_a_bad_entry() {
    let good = json!({"protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s.core.v1.pods.list",
                      "resourceName": "core/v1/namespaces/a/pods"}, "insertId": "x1"});
    let bad = json!({"protoPayload": {"serviceName": "k8s.io", "methodName": 7}});
    let other = json!({"protoPayload": {"serviceName": "storage.googleapis.com", "methodName": "storage.objects.get"}});
    let body = json!({"entries": [good, bad, other, good], "nextPageToken": "t"});
    let u = unwrap_auto(body.to_string().as_bytes());
    assert_eq!(u.events.len(), 2);
    assert_eq!(u.events[1].at, "entries[3]");
    assert_eq!(u.rejected.len(), 1);
    assert_eq!(u.rejected[0].at, "entries[1]");
    assert!(
        u.rejected[0].reason.contains("protoPayload.methodName"),
        "{}",
        u.rejected[0].reason
    );
    assert_eq!(u.skipped.len(), 1);
    let arr = json!([good, good]);
    let u = unwrap_auto(arr.to_string().as_bytes());
    assert_eq!(
        u.events.iter().map(|e| e.at.as_str()).collect::<Vec<_>>(),
        ["item 0", "item 1"]
    );
}

// ---- AKS ----

#[test]
fn every_aks_record_of_the_peer_suite_round_trips_to_its_plain_event() {
    let cases: Value = read_json(&panther().join("cases.json"));
    let by_envelope: std::collections::HashMap<String, Option<String>> = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            let env = c.get("envelope_file")?.as_str()?.to_string();
            Some((env, c["file"].as_str().map(str::to_string)))
        })
        .collect();
    let mut compared = 0;
    let aks = files("aks");
    assert_eq!(aks.len(), 34);
    for path in aks {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let u = unwrap_auto(&std::fs::read(&path).unwrap());
        assert!(u.rejected.is_empty() && u.skipped.is_empty(), "{name}");
        assert_eq!(u.events.len(), 1, "{name}");
        let record = read_json(&path);
        let inner: Value =
            serde_json::from_str(record["properties"]["log"].as_str().unwrap()).unwrap();
        let got: Value = serde_json::from_str(&u.events[0].json).unwrap();
        assert_eq!(got, inner, "{name}");
        let key = format!("envelope/aks/{name}");
        if let Some(Some(plain)) = by_envelope.get(&key) {
            let plain = read_json(&panther().join(plain));
            assert_eq!(
                without_panther_fields(&got),
                without_panther_fields(&plain),
                "{name}"
            );
            compared += 1;
        }
    }
    assert_eq!(
        compared, 31,
        "the suite's AKS cases that have a plain event"
    );
    // The Azure activity record is not a kube-audit record.
    for path in files("azure") {
        let u = unwrap_auto(&std::fs::read(&path).unwrap());
        assert!(u.events.is_empty() && u.rejected.is_empty());
        assert_eq!(u.skipped.len(), 1);
        assert!(u.skipped[0].reason.contains("category `Administrative`"));
    }
}

#[test]
fn aks_event_hub_message_and_storage_archive_lines() {
    let rec = |cat: &str, log: &Value| {
        json!({"time": "2026-01-05T10:00:00Z", "category": cat,
               "resourceId": "/SUBSCRIPTIONS/S/RESOURCEGROUPS/RG/PROVIDERS/MICROSOFT.CONTAINERSERVICE/MANAGEDCLUSTERS/PROD-AKS",
               "operationName": "Microsoft.ContainerService/managedClusters/diagnosticLogs/Read",
               "properties": {"log": log.to_string(), "stream": "stdout", "pod": "kube-apiserver-1"}})
    };
    let hub = json!({"records": [
        rec("kube-audit", &event("a1")),
        rec("kube-apiserver", &json!("I0105 started")),
        rec("kube-audit-admin", &event("a2")),
        json!({"category": "kube-audit", "properties": {"log": 5}}),
        json!({"category": "kube-audit"}),
    ]});
    let u = unwrap_auto(hub.to_string().as_bytes());
    assert_eq!(u.events.len(), 2);
    assert_eq!(u.events[0].cluster.as_deref(), Some("prod-aks"));
    assert_eq!(u.events[1].at, "records[2]");
    assert_eq!(u.skipped.len(), 1);
    assert_eq!(u.skipped[0].at, "records[1]");
    let places: Vec<_> = u.rejected.iter().map(|r| r.at.as_str()).collect();
    assert_eq!(places, ["records[3]", "records[4]"]);
    // The archive: one record per line (PT1H.json).
    let lines = format!(
        "{}\n{}\n",
        rec("kube-audit", &event("b1")),
        rec("kube-audit", &event("b2"))
    );
    let d = unwrap_auto(lines.as_bytes()).decode(MAX_EVENT);
    assert_eq!(d.events.len(), 2);
    assert_eq!(d.events[1].audit_id, "b2");
    // `properties` written as JSON text by some exporters.
    let odd = json!({"category": "kube-audit", "properties": json!({"log": event("c1").to_string()}).to_string()});
    assert_eq!(unwrap_auto(odd.to_string().as_bytes()).events.len(), 1);
}

// ---- CloudWatch Logs ----

fn subscription_payload(stream: &str, messages: &[String]) -> Value {
    json!({
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/aws/eks/prod-us/cluster",
        "logStream": stream,
        "subscriptionFilters": ["audit-to-firehose"],
        "logEvents": messages.iter().enumerate().map(|(i, m)| json!({
            "id": format!("3710{i}"), "timestamp": 1767607200000i64 + i as i64, "message": m
        })).collect::<Vec<_>>()
    })
}

#[test]
fn cloudwatch_subscription_payload_gzip_with_control_message_and_other_streams() {
    let payload = subscription_payload(
        "kube-apiserver-audit-0a1b2c",
        &[
            event("e1").to_string(),
            "not json".into(),
            event("e2").to_string(),
        ],
    );
    let u = unwrap_auto(&gzip(payload.to_string().as_bytes()));
    assert_eq!(u.events.len(), 2);
    assert_eq!(u.events[0].cluster.as_deref(), Some("prod-us"));
    assert_eq!(u.rejected.len(), 1);
    assert_eq!(u.rejected[0].at, "logEvents[1]");
    let other = subscription_payload("authenticator-0a1b2c", &["time=\"…\" level=info".into()]);
    let u = unwrap_auto(other.to_string().as_bytes());
    assert_eq!(
        (u.events.len(), u.rejected.len(), u.skipped.len()),
        (0, 0, 1)
    );
    let control = json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "",
                         "logStream": "", "subscriptionFilters": [], "logEvents": [
                            {"id": "", "timestamp": 1, "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]});
    let u = unwrap_auto(&gzip(control.to_string().as_bytes()));
    assert_eq!(u.skipped.len(), 1);
    assert_eq!(u.skipped[0].kind, "control_message");
    assert!(u.events.is_empty() && u.rejected.is_empty());
}

#[test]
fn cloudwatch_filter_log_events_answer_and_s3_export() {
    let page = json!({"events": [
        {"logStreamName": "kube-apiserver-audit-1", "timestamp": 1, "message": event("f1").to_string(),
         "ingestionTime": 2, "eventId": "1"},
        {"logStreamName": "kube-apiserver-audit-1", "timestamp": 1, "message": event("f2").to_string(),
         "ingestionTime": 2, "eventId": "2"}],
        "searchedLogStreams": [], "nextToken": "abc"});
    let u = unwrap_auto(page.to_string().as_bytes());
    assert_eq!(u.events.len(), 2);
    assert_eq!(u.events[1].at, "events[1]");
    let parsed = cloudwatch::filter_page(page.to_string().as_bytes()).unwrap();
    assert_eq!(parsed.next_token.as_deref(), Some("abc"));
    assert_eq!(parsed.events[0].log_stream_name, "kube-apiserver-audit-1");
    // CreateExportTask writes `<time> <message>` lines, gzip-compressed.
    let export = format!(
        "2026-01-05T10:00:00.000Z {}\n2026-01-05T10:00:01.000Z {}\n2026-01-05T10:00:02.000Z oops\n",
        event("s1"),
        event("s2")
    );
    let u = unwrap_auto(&gzip(export.as_bytes()));
    assert_eq!(u.events.len(), 2, "{:?}", u.rejected);
    assert_eq!(u.rejected.len(), 1);
    assert_eq!(u.rejected[0].at, "line 3");
    let d = u.decode(MAX_EVENT);
    assert_eq!(d.events[0].audit_id, "s1");
}

// ---- Firehose ----

#[test]
fn firehose_request_as_the_service_sends_it() {
    let cw = subscription_payload(
        "kube-apiserver-audit-9",
        &[event("h1").to_string(), event("h2").to_string()],
    );
    let body = json!({
        "requestId": "ed4acda5-034f-9f42-bba1-f29aea6d7d8f",
        "timestamp": 1578090901599i64,
        "records": [
            {"data": b64(&gzip(cw.to_string().as_bytes()))},
            {"data": "%%% not base64"},
            {"data": b64(event("h3").to_string().as_bytes())},
            {"data": b64(format!("{}\n{}\n", event("h4"), event("h5")).as_bytes())},
            {"nodata": 1}
        ]
    });
    let r = firehose::unwrap_request(body.to_string().as_bytes(), &limits()).unwrap();
    assert_eq!(r.request_id, "ed4acda5-034f-9f42-bba1-f29aea6d7d8f");
    let ids: Vec<_> = r.unwrapping.events.iter().map(|e| e.at.clone()).collect();
    assert_eq!(
        ids,
        [
            "records[0] logEvents[0]",
            "records[0] logEvents[1]",
            "records[2]",
            "records[3] line 1",
            "records[3] line 2"
        ]
    );
    let places: Vec<_> = r
        .unwrapping
        .rejected
        .iter()
        .map(|r| r.at.as_str())
        .collect();
    assert_eq!(places, ["records[1]", "records[4]"]);
    assert_eq!(r.unwrapping.events[0].cluster.as_deref(), Some("prod-us"));
    let d = r.unwrapping.decode(MAX_EVENT);
    assert_eq!(d.events.len(), 5);
    let ok: Value =
        serde_json::from_str(&firehose::response_body("ed4", 1578090903599, None)).unwrap();
    assert_eq!(
        ok,
        json!({"requestId": "ed4", "timestamp": 1578090903599i64})
    );
    let err: Value =
        serde_json::from_str(&firehose::response_body("ed4", 1, Some("queue full"))).unwrap();
    assert_eq!(err["errorMessage"], "queue full");
    for bad in [
        &b"{"[..],
        b"[]",
        br#"{"records": []}"#,
        br#"{"requestId": "x"}"#,
    ] {
        assert!(firehose::unwrap_request(bad, &limits()).is_err());
    }
}

// ---- Pub/Sub ----

fn gke_entry(id: &str) -> Value {
    json!({"protoPayload": {"@type": "type.googleapis.com/google.cloud.audit.AuditLog",
           "serviceName": "k8s.io", "methodName": "io.k8s.core.v1.secrets.get",
           "resourceName": "core/v1/namespaces/prod/secrets/db",
           "authenticationInfo": {"principalEmail": "mallory@example.com"}},
           "insertId": id, "resource": {"type": "k8s_cluster", "labels": {"cluster_name": "gke-1"}},
           "timestamp": "2026-01-05T10:00:00Z"})
}

#[test]
fn pubsub_push_request_as_the_service_sends_it() {
    let body = json!({
        "message": {
            "attributes": {"logging.googleapis.com/timestamp": "2026-01-05T10:00:00Z"},
            "data": b64(gke_entry("p1").to_string().as_bytes()),
            "messageId": "2070443601311540",
            "message_id": "2070443601311540",
            "publishTime": "2026-01-05T10:00:01.5Z",
            "publish_time": "2026-01-05T10:00:01.5Z"
        },
        "subscription": "projects/myproject/subscriptions/peregrine-push"
    });
    let m = pubsub::unwrap_push(body.to_string().as_bytes(), &limits()).unwrap();
    assert_eq!(m.message_id, "2070443601311540");
    assert_eq!(
        m.subscription,
        "projects/myproject/subscriptions/peregrine-push"
    );
    assert_eq!(m.unwrapping.events.len(), 1);
    assert_eq!(m.unwrapping.events[0].at, "message 2070443601311540");
    assert_eq!(m.unwrapping.events[0].cluster.as_deref(), Some("gke-1"));
    // Payload unwrapping on: the body is the LogEntry.
    let m = pubsub::unwrap_push(gke_entry("p2").to_string().as_bytes(), &limits()).unwrap();
    assert_eq!(m.unwrapping.events.len(), 1);
    // A poisoned message is rejected, not an error of the request.
    let poisoned = json!({"message": {"data": b64(b"\x00\x01garbage"), "messageId": "9"},
                          "subscription": "projects/p/subscriptions/s"});
    let m = pubsub::unwrap_push(poisoned.to_string().as_bytes(), &limits()).unwrap();
    assert_eq!(m.unwrapping.rejected.len(), 1);
    assert!(pubsub::unwrap_push(b"[1]", &limits()).is_err());
}

#[test]
fn pubsub_pull_answer_gives_each_message_with_its_ack_id() {
    let answer = json!({"receivedMessages": [
        {"ackId": "ack-1", "message": {"data": b64(gke_entry("q1").to_string().as_bytes()), "messageId": "1"}},
        {"ackId": "ack-2", "message": {"data": "!!!", "messageId": "2"}, "deliveryAttempt": 5},
        {"ackId": "ack-3", "message": {"data": b64(gke_entry("q3").to_string().as_bytes()), "messageId": "3"}}
    ]});
    let msgs = pubsub::unwrap_pull(answer.to_string().as_bytes(), &limits()).unwrap();
    assert_eq!(
        msgs.iter().map(|m| m.ack_id.as_str()).collect::<Vec<_>>(),
        ["ack-1", "ack-2", "ack-3"]
    );
    assert_eq!(msgs[1].unwrapping.rejected.len(), 1);
    assert_eq!(msgs[1].delivery_attempt, Some(5));
    assert_eq!(msgs[2].unwrapping.events.len(), 1);
    assert!(pubsub::unwrap_pull(b"{}", &limits()).unwrap().is_empty());
    let no_ack = json!({"receivedMessages": [{"message": {"data": ""}}]});
    assert!(pubsub::unwrap_pull(no_ack.to_string().as_bytes(), &limits()).is_err());
    // Saved to a file, the same answer replays.
    assert_eq!(unwrap_auto(answer.to_string().as_bytes()).events.len(), 2);
}

// ---- detection, formats, hostile input ----

#[test]
fn detects_each_shape_and_a_mixed_file_is_an_error_naming_the_line() {
    let cases = [
        (event("x"), Shape::Audit),
        (gke_entry("x"), Shape::Gke),
        (json!({"records": []}), Shape::Aks),
        (subscription_payload("s", &[]), Shape::CloudWatch),
        (json!({"requestId": "r", "records": []}), Shape::Firehose),
        (json!({"message": {}, "subscription": "s"}), Shape::PubSub),
        (json!({"receivedMessages": []}), Shape::PubSub),
        (json!([gke_entry("x")]), Shape::Gke),
    ];
    for (v, shape) in cases {
        assert_eq!(detect(&v), Some(shape), "{v}");
    }
    assert_eq!(detect(&json!({"kind": "Pod"})), None);
    let mixed = format!("{}\n{}\n{}\n", event("1"), event("2"), gke_entry("3"));
    let e = unwrap_input(mixed.as_bytes(), InputFormat::Auto, &limits()).unwrap_err();
    assert_eq!(
        e,
        InputError::Mixed {
            line: 3,
            found: Shape::Gke,
            first_line: 1,
            first: Shape::Audit
        }
    );
    assert!(
        e.to_string()
            .starts_with("line 3 is a GKE LogEntry but line 1 is a plain audit event"),
        "{e}"
    );
    // Forced, the odd line is rejected and its siblings kept.
    let u = unwrap_input(mixed.as_bytes(), "audit".parse().unwrap(), &limits()).unwrap();
    let d = u.decode(MAX_EVENT);
    assert_eq!(d.events.len(), 2);
    assert_eq!(d.rejected.len(), 1);
    assert_eq!(d.rejected[0].at, "line 3");
    let u = unwrap_input(
        event("1").to_string().as_bytes(),
        "gke".parse().unwrap(),
        &limits(),
    )
    .unwrap();
    assert!(u.events.is_empty());
    assert_eq!(
        u.skipped.len(),
        1,
        "an Event is not a LogEntry: {:?}",
        u.rejected
    );
    assert!(
        "csv"
            .parse::<InputFormat>()
            .unwrap_err()
            .contains("auto, audit, gke")
    );
}

#[test]
fn plain_audit_input_keeps_working_as_before() {
    let list = json!({"kind": "EventList", "items": [event("1"), event("2")]});
    let d = unwrap_auto(list.to_string().as_bytes()).decode(MAX_EVENT);
    assert_eq!(d.events.len(), 2);
    let lines = format!("{}\n\nnot json\n{}\n", event("1"), json!({"kind": "Pod"}));
    let d = unwrap_auto(lines.as_bytes()).decode(MAX_EVENT);
    assert_eq!(d.events.len(), 1);
    let places: Vec<_> = d.rejected.iter().map(|r| r.at.as_str()).collect();
    assert_eq!(places, ["line 3", "line 4"]);
    assert!(
        d.rejected[1]
            .reason
            .starts_with("data not recognized as a k8s audit event")
    );
}

#[test]
fn a_gzip_bomb_is_refused_not_expanded() {
    let bomb = gzip(&vec![b' '; 8 << 20]);
    let small = Limits {
        max_decoded_bytes: 1 << 20,
    };
    let u = unwrap_input(&bomb, InputFormat::Auto, &small).unwrap();
    assert!(u.events.is_empty());
    assert_eq!(u.rejected.len(), 1);
    assert!(
        u.rejected[0].reason.contains("limit"),
        "{}",
        u.rejected[0].reason
    );
    let record = json!({"requestId": "r", "records": [{"data": b64(&bomb)}]});
    let r = firehose::unwrap_request(record.to_string().as_bytes(), &small).unwrap();
    assert_eq!(r.unwrapping.rejected.len(), 1);
    assert!(gunzip(b"\x1f\x8b\x08garbage", 100).is_err());
    assert!(base64_decode(&"A".repeat(4000), 100).is_err());
}

#[test]
fn errors_never_quote_what_the_event_carried() {
    let secret = "AKIAIOSFODNN7EXAMPLE-wJalrXUtnFEMI";
    let log = format!(
        r#"{{"kind":"Event","auditID":"a","stage":"ResponseComplete","verb":"get","responseStatus":{{"code":"{secret}"}}}}"#
    );
    let rec = json!({"category": "kube-audit", "properties": {"log": log}});
    let d = unwrap_auto(rec.to_string().as_bytes()).decode(MAX_EVENT);
    assert_eq!(d.rejected.len(), 1);
    assert!(
        !d.rejected[0].reason.contains(secret),
        "{}",
        d.rejected[0].reason
    );
    assert!(
        d.rejected[0].reason.contains("responseStatus.code"),
        "{}",
        d.rejected[0].reason
    );
    let entry = json!({"protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s.core.v1.pods.get",
                        "requestMetadata": {"callerIp": [secret]}}});
    let u = unwrap_auto(entry.to_string().as_bytes());
    assert!(
        !u.rejected[0].reason.contains(secret),
        "{}",
        u.rejected[0].reason
    );
    let firehose = json!({"requestId": "r", "records": [{"data": format!("{secret}!")}]});
    let r = firehose::unwrap_request(firehose.to_string().as_bytes(), &limits()).unwrap();
    assert!(!r.unwrapping.rejected[0].reason.contains(secret));
    let line = format!("{{\"kind\": \"Event\", \"x\": \"{secret}\"");
    let u = unwrap_auto(line.as_bytes());
    assert!(!u.rejected[0].reason.contains(secret));
}

#[test]
fn hostile_shapes_are_rejected_without_panicking() {
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"str\"".to_vec(),
        br#"{"records": 5}"#.to_vec(),
        br#"{"records": [1, null, "x", {"category": null}]}"#.to_vec(),
        br#"{"entries": {"a": 1}}"#.to_vec(),
        br#"{"protoPayload": []}"#.to_vec(),
        br#"{"protoPayload": {"serviceName": "k8s.io", "methodName": "io.k8s", "status": {"code": "x"}}}"#.to_vec(),
        br#"{"protoPayload": {"serviceName": "k8s.io", "methodName": "..."}, "timestamp": "yesterday"}"#.to_vec(),
        br#"{"messageType": "DATA_MESSAGE", "logEvents": [1, {"message": 2}, {}]}"#.to_vec(),
        br#"{"messageType": "OTHER"}"#.to_vec(),
        br#"{"events": [null]}"#.to_vec(),
        br#"{"requestId": "r", "records": [{"data": ""}]}"#.to_vec(),
        br#"{"receivedMessages": [{"ackId": "a"}]}"#.to_vec(),
        br#"{"message": 3, "subscription": "s"}"#.to_vec(),
        format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        b"\xff\xfe\n\x00".to_vec(),
        vec![0x1f, 0x8b],
    ];
    for b in bodies {
        for f in INPUT_FORMATS {
            let _ = unwrap_input(&b, f.parse().unwrap(), &limits()).map(|u| u.decode(MAX_EVENT));
        }
        let _ = firehose::unwrap_request(&b, &limits());
        let _ = pubsub::unwrap_push(&b, &limits());
        let _ = pubsub::unwrap_pull(&b, &limits());
    }
}
