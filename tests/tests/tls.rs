//! The webhook over TLS, with client certificates, driven by curl as a
//! real client.

use std::path::Path;
use std::process::Command;

use peregrine::tls::TlsConfig;
use peregrine_tests::*;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A CA, a server certificate for 127.0.0.1 signed by it, a client
    /// certificate signed by it, and a client certificate nobody signed.
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "peregrine test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        write("ca.pem", &ca.pem());

        let server_key = KeyPair::generate().unwrap();
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca)
            .unwrap();
        write("server.pem", &server.pem());
        write("server.key", &server_key.serialize_pem());

        let mut client_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        client_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let client_key = KeyPair::generate().unwrap();
        let client = client_params.signed_by(&client_key, &ca).unwrap();
        write("client.pem", &client.pem());
        write("client.key", &client_key.serialize_pem());

        let rogue_key = KeyPair::generate().unwrap();
        let rogue = CertificateParams::new(vec!["rogue".to_string()])
            .unwrap()
            .self_signed(&rogue_key)
            .unwrap();
        write("rogue.pem", &rogue.pem());
        write("rogue.key", &rogue_key.serialize_pem());
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }
}

/// Posts an event with curl; returns curl's exit code and the body.
fn curl(url: &str, args: &[&str], body: &str) -> (i32, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            body,
        ])
        .args(args)
        .arg(url)
        .output()
        .expect("curl is installed");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_over_mutual_tls_accepts_only_trusted_clients() {
    let pki = Pki::new();
    let mut config = test_config();
    config.server.tls = Some(TlsConfig {
        cert_file: pki.path("server.pem").into(),
        key_file: pki.path("server.key").into(),
        client_ca_file: Some(pki.path("ca.pem").into()),
    });
    let srv = TestServer::start(config, rules_dir(&[fixture_module("fixture_echo")])).await;
    let url = srv.url("/k8s-audit").replace("http://", "https://");
    let body = event("tls-1", "get", "pods", "a").to_string();

    let (code, answer) = tokio::task::spawn_blocking({
        let (url, body, ca, cert, key) = (
            url.clone(),
            body.clone(),
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key"),
        );
        move || {
            curl(
                &url,
                &["--cacert", &ca, "--cert", &cert, "--key", &key],
                &body,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "trusted client refused: {answer}");
    assert!(answer.contains("\"accepted\":1"), "{answer}");

    for args in [
        vec!["--cacert".to_string(), pki.path("ca.pem")],
        vec![
            "--cacert".to_string(),
            pki.path("ca.pem"),
            "--cert".to_string(),
            pki.path("rogue.pem"),
            "--key".to_string(),
            pki.path("rogue.key"),
        ],
    ] {
        let (url, body) = (url.clone(), body.clone());
        let (code, answer) = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&url, &args, &body)
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "an untrusted client got through: {answer}");
    }

    // Plain HTTP to the TLS port gets nowhere, and the server still serves.
    let plain = srv.url("/k8s-audit");
    let (code, _) = tokio::task::spawn_blocking(move || curl(&plain, &[], "{}"))
        .await
        .unwrap();
    assert_ne!(code, 0);

    let alerts = srv.shutdown().await;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].audit_id, "tls-1");
}

#[test]
fn unreadable_or_mismatched_tls_files_are_clear_errors() {
    let pki = Pki::new();
    let missing = TlsConfig {
        cert_file: "/no/such/cert.pem".into(),
        key_file: pki.path("server.key").into(),
        client_ca_file: None,
    };
    let err = missing
        .acceptor()
        .err()
        .expect("missing file fails")
        .to_string();
    assert!(err.contains("/no/such/cert.pem"), "{err}");

    let mismatched = TlsConfig {
        cert_file: pki.path("server.pem").into(),
        key_file: pki.path("client.key").into(),
        client_ca_file: None,
    };
    let err = mismatched
        .acceptor()
        .err()
        .expect("mismatched key fails")
        .to_string();
    assert!(err.contains("do not match"), "{err}");

    let not_pem = pki.dir.path().join("garbage.pem");
    std::fs::write(&not_pem, "garbage").unwrap();
    let garbage = TlsConfig {
        cert_file: not_pem.clone(),
        key_file: pki.path("server.key").into(),
        client_ca_file: None,
    };
    assert!(garbage.acceptor().is_err());
    assert!(Path::new(&pki.path("ca.pem")).exists());
}
