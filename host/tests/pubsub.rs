//! `POST /ingest/pubsub[/<tenant>]` as a Pub/Sub push subscription calls
//! it: the push envelope around a GKE LogEntry, and the subscription's OIDC
//! token, a JWT signed RS256 with a locally generated key whose JSON Web
//! Key Set a local server publishes the way Google's certs endpoint does.
//! Expired, mis-addressed, foreign-signed and forged tokens are refused; a
//! poisoned message is acknowledged and counted; a redelivery is dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::*;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const AUDIENCE: &str = "https://peregrine.example.com/ingest/pubsub/team-g";
const PUSHER: &str = "pubsub-push@audit-proj.iam.gserviceaccount.com";
const TOKEN_G: &str = "tenant-g-token-0123456789";

/// An RSA key made with openssl: its PKCS#1 DER (to sign) and its JWK.
struct Key {
    der: Vec<u8>,
    jwk: serde_json::Value,
}

fn rsa_key(dir: &Path, name: &str, kid: &str) -> Key {
    let pem = dir.join(format!("{name}.pem"));
    let der = dir.join(format!("{name}.der"));
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&pem)
        .arg("2048")
        .stderr(std::process::Stdio::null()));
    ok(Command::new("openssl")
        .args(["rsa", "-traditional", "-outform", "DER", "-in"])
        .arg(&pem)
        .arg("-out")
        .arg(&der)
        .stderr(std::process::Stdio::null()));
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let hex = hex.trim().strip_prefix("Modulus=").unwrap();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Key {
        der: std::fs::read(&der).unwrap(),
        jwk: serde_json::json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": url.encode(&n), "e": "AQAB",
        }),
    }
}

/// A JWKS endpoint on 127.0.0.1: answers every GET with the key set, and
/// counts the fetches.
fn jwks_server(set: serde_json::Value) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/oauth2/v3/certs", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let body = set.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\
                 Cache-Control: public, max-age=19569\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.flush();
            let mut rest = [0u8; 1];
            let _ = stream.read(&mut rest);
        }
    });
    (url, hits)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The claims Google puts in a push subscription's token.
fn claims(aud: &str, email: &str, exp: i64) -> serde_json::Value {
    serde_json::json!({
        "aud": aud, "azp": "113774264463038321964", "email": email, "email_verified": true,
        "exp": exp, "iat": exp - 3600, "iss": "https://accounts.google.com",
        "sub": "113774264463038321964",
    })
}

fn sign(key: &Key, kid: &str, claims: &serde_json::Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(&key.der)).unwrap()
}

/// A GKE audit LogEntry as a log sink publishes it.
fn log_entry(id: &str, cluster: &str) -> serde_json::Value {
    serde_json::json!({
        "insertId": format!("{id}-insert"),
        "logName": "projects/audit-proj/logs/cloudaudit.googleapis.com%2Fdata_access",
        "operation": {"id": id, "producer": "k8s.io", "first": true, "last": true},
        "protoPayload": {
            "@type": "type.googleapis.com/google.cloud.audit.AuditLog",
            "authenticationInfo": {"principalEmail": "alice@example.com"},
            "authorizationInfo": [{"granted": true, "permission": "io.k8s.core.v1.secrets.get",
                                   "resource": "core/v1/namespaces/prod/secrets/db"}],
            "methodName": "io.k8s.core.v1.secrets.get",
            "requestMetadata": {"callerIp": "10.0.0.1", "callerSuppliedUserAgent": "kubectl/v1.31.0"},
            "resourceName": "core/v1/namespaces/prod/secrets/db",
            "serviceName": "k8s.io",
            "status": {}
        },
        "receiveTimestamp": "2026-11-27T10:00:01.2Z",
        "resource": {"type": "k8s_cluster", "labels": {"cluster_name": cluster, "location": "europe-west1", "project_id": "audit-proj"}},
        "severity": "INFO",
        "timestamp": "2026-11-27T10:00:00.5Z"
    })
}

/// The push request Pub/Sub sends for one message.
fn push_body(message_id: &str, data: &[u8]) -> String {
    serde_json::json!({
        "message": {
            "attributes": {"logging.googleapis.com/timestamp": "2026-11-27T10:00:00.5Z"},
            "data": base64::engine::general_purpose::STANDARD.encode(data),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": "2026-11-27T10:00:02.1Z",
            "publish_time": "2026-11-27T10:00:02.1Z"
        },
        "subscription": "projects/audit-proj/subscriptions/peregrine-push"
    })
    .to_string()
}

fn push(url: &str, token: Option<&str>, body: &str) -> Response {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![(
        "User-Agent",
        "APIs-Google; (+https://developers.google.com/webmasters/APIs-Google.html)",
    )];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b));
    }
    post_json(url, &headers, body)
}

#[test]
fn pubsub_pushes_are_verified_unwrapped_and_acknowledged() {
    let work = tempfile::tempdir().unwrap();
    let good = rsa_key(work.path(), "google", "kid-2026-11");
    let other = rsa_key(work.path(), "attacker", "kid-2026-11");
    let (jwks_url, fetches) = jwks_server(serde_json::json!({ "keys": [good.jwk] }));
    let jwks_file = work.path().join("jwks.json");
    std::fs::write(
        &jwks_file,
        serde_json::json!({ "keys": [good.jwk] }).to_string(),
    )
    .unwrap();

    let rules = rules_dir_in(work.path(), &[fixture_module("fixture_echo")]);
    let config = work.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "{base}[tenants.team-g]\ntokens = [\"{TOKEN_G}\"]\n\n\
             [tenants.team-f]\ntokens = [\"tenant-f-token-0123456789\"]\ncluster = \"f-main\"\n\n\
             [[sources]]\ntype = \"pubsub_push\"\ntenant = \"team-g\"\naudience = \"{AUDIENCE}\"\n\
             jwks_url = \"{jwks_url}\"\nservice_account_email = \"{PUSHER}\"\n\n\
             [[sources]]\ntype = \"pubsub_push\"\nname = \"gke-f\"\ntenant = \"team-f\"\ncluster = \"f-main\"\n\
             audience = \"f-audience\"\njwks_file = \"{file}\"\n",
            base = base_config(&rules, Some(work.path())),
            file = jwks_file.display(),
        ),
    )
    .unwrap();
    let srv = start(&config, &["--no-watch"]);
    let url = srv.url("/ingest/pubsub/team-g");
    let token = sign(
        &good,
        "kid-2026-11",
        &claims(AUDIENCE, PUSHER, now() + 3600),
    );

    // A good push: 200, and the event, rebuilt from the LogEntry, carries
    // the cluster the entry names.
    let body = push_body(
        "2070443601311540",
        log_entry("g1", "gke-prod").to_string().as_bytes(),
    );
    let a = push(&url, Some(&token), &body);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json()["accepted"], 1);
    assert_eq!(a.json()["messageId"], "2070443601311540");
    // Redelivered (Pub/Sub delivers at least once): acknowledged, dropped.
    let a = push(&url, Some(&token), &body);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        (
            a.json()["accepted"].as_u64(),
            a.json()["duplicates"].as_u64()
        ),
        (Some(0), Some(1))
    );
    // A poisoned message: acknowledged (redelivery would not mend it), reported.
    let poisoned = push_body("2070443601311541", b"{\"not\": \"a log entry\"");
    let a = push(&url, Some(&token), &poisoned);
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(
        a.json()["rejected"].as_array().unwrap().len(),
        1,
        "{}",
        a.body
    );

    // Tokens that must not pass.
    let refused = [
        ("no token", None),
        (
            "expired",
            Some(sign(
                &good,
                "kid-2026-11",
                &claims(AUDIENCE, PUSHER, now() - 600),
            )),
        ),
        (
            "another audience",
            Some(sign(
                &good,
                "kid-2026-11",
                &claims("https://elsewhere", PUSHER, now() + 3600),
            )),
        ),
        (
            "another service account",
            Some(sign(
                &good,
                "kid-2026-11",
                &claims(AUDIENCE, "evil@x.iam.gserviceaccount.com", now() + 3600),
            )),
        ),
        (
            "signed by another key",
            Some(sign(
                &other,
                "kid-2026-11",
                &claims(AUDIENCE, PUSHER, now() + 3600),
            )),
        ),
        (
            "an unknown key id",
            Some(sign(
                &good,
                "kid-unknown",
                &claims(AUDIENCE, PUSHER, now() + 3600),
            )),
        ),
        ("the tenant's own token", Some(TOKEN_G.to_string())),
        (
            "HS256 with the public key",
            Some(
                jsonwebtoken::encode(
                    &Header {
                        kid: Some("kid-2026-11".into()),
                        ..Header::new(Algorithm::HS256)
                    },
                    &claims(AUDIENCE, PUSHER, now() + 3600),
                    &EncodingKey::from_secret(good.jwk["n"].as_str().unwrap().as_bytes()),
                )
                .unwrap(),
            ),
        ),
    ];
    for (what, t) in &refused {
        let b = push_body(
            &format!("msg-{what}"),
            log_entry(&format!("bad-{}", what.len()), "gke-prod")
                .to_string()
                .as_bytes(),
        );
        let a = push(&url, t.as_deref(), &b);
        assert_eq!(a.status, 401, "{what}: {a:?}");
        assert!(
            a.headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{what}"
        );
        if let Some(t) = t {
            assert!(
                !a.body.contains(t.as_str()),
                "{what}: the token is never echoed"
            );
        }
    }
    // The key set was fetched once. Tokens naming unknown key ids (forged,
    // here) do not make it fetch again within 30 s of the last fetch.
    let again = sign(&good, "kid-forged", &claims(AUDIENCE, PUSHER, now() + 3600));
    let a = push(&url, Some(&again), &body);
    assert_eq!(a.status, 401, "{a:?}");
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // A key set from a file; the source's `cluster` wins over the entry's.
    let token_f = sign(
        &good,
        "kid-2026-11",
        &claims("f-audience", PUSHER, now() + 3600),
    );
    let a = push(
        &srv.url("/ingest/pubsub/team-f"),
        Some(&token_f),
        &push_body("f-1", log_entry("f1", "gke-other").to_string().as_bytes()),
    );
    assert_eq!(a.status, 200, "{a:?}");
    // The open default tenant takes pushes without a token.
    let a = push(
        &srv.url("/ingest/pubsub"),
        None,
        &push_body("d-1", log_entry("d1", "gke-dev").to_string().as_bytes()),
    );
    assert_eq!(a.status, 200, "{a:?}");

    let alerts = srv.wait_alerts("alerts of g1, f1 and d1", |a| a.len() >= 3);
    let mut got: Vec<(String, String, String)> = alerts
        .iter()
        .map(|a| {
            (
                field(a, "ka.auditid").to_string(),
                field(a, "peregrine.tenant").to_string(),
                field(a, "peregrine.cluster").to_string(),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("d1", "default", "gke-dev"),
        ("f1", "team-f", "f-main"),
        ("g1", "team-g", "gke-prod"),
    ]
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(
        got, want,
        "each accepted event once, nothing refused evaluated"
    );

    let m = srv.metrics();
    let rec = |s: &str, o: &str| {
        metric(
            &m,
            "peregrine_source_records_total",
            &[("source", s), ("outcome", o)],
        )
    };
    assert_eq!(rec("pubsub/team-g", "accepted"), Some(1.0), "{m}");
    assert_eq!(rec("pubsub/team-g", "duplicate"), Some(1.0));
    assert_eq!(rec("pubsub/team-g", "rejected"), Some(1.0));
    assert_eq!(rec("gke-f", "accepted"), Some(1.0));
    assert_eq!(
        metric(
            &m,
            "peregrine_source_errors_total",
            &[("source", "pubsub/team-g"), ("kind", "unauthorized")]
        ),
        Some(refused.len() as f64 + 1.0)
    );
    srv.kill();
}
