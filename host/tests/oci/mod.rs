//! Rule modules as OCI artifacts, against a real registry (Debian's
//! docker-registry) started here: `peregrine rule push|pull` in plain HTTP,
//! with basic auth and over TLS, hostile answers, and a running
//! `peregrine serve` following a tag.

mod registry;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use registry::{Options, Registry};
use serde_json::Value;
use sha2::Digest as _;

use crate::cli::stderr;
use crate::support::{fixture_module, peregrine, root};

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `peregrine` with HOME in `home`, so no Docker config of the machine is used.
fn cli(home: &Path, args: &[&str]) -> Output {
    peregrine(args)
        .env("HOME", home)
        .env_remove("DOCKER_CONFIG")
        .output()
        .expect("peregrine runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn failed(out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a failure\nstdout: {}\nstderr: {}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `curl` as a user would check the registry or the API.
fn curl(args: &[&str]) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", stderr(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn manifest(base: &str, repo: &str, reference: &str, extra: &[&str]) -> Value {
    let url = format!("{base}/v2/{repo}/manifests/{reference}");
    let mut args = vec!["-H", "Accept: application/vnd.oci.image.manifest.v1+json"];
    args.extend_from_slice(extra);
    args.push(&url);
    serde_json::from_str(&curl(&args)).unwrap()
}

/// The `REPO@sha256:...` that `rule push` prints last.
fn pushed_digest(out: &str) -> String {
    let line = out.lines().last().unwrap_or_default();
    line.rsplit_once('@')
        .map(|(_, d)| d.to_string())
        .unwrap_or_else(|| panic!("no digest in: {out}"))
}

#[test]
fn rule_help_names_every_option() {
    let home = tempfile::tempdir().unwrap();
    let text = ok(cli(home.path(), &["rule", "push", "--help"]));
    for word in [
        "FILE.wasm|DIR",
        "REGISTRY/REPO:TAG",
        "--docker-config",
        "--ca-file",
        "--plain-http",
        "--config",
        "contract",
    ] {
        assert!(
            text.contains(word),
            "rule push --help lacks {word}:\n{text}"
        );
    }
    let text = ok(cli(home.path(), &["rule", "pull", "--help"]));
    for word in [
        "REF",
        "--output",
        "--docker-config",
        "--ca-file",
        "--plain-http",
        "sha256",
    ] {
        assert!(
            text.contains(word),
            "rule pull --help lacks {word}:\n{text}"
        );
    }
    let text = ok(cli(home.path(), &["--help"]));
    assert!(text.contains("rule"), "{text}");
}

/// (a) Plain HTTP on loopback, no auth: what is pulled is what was pushed,
/// with Peregrine's media types and annotations.
#[test]
fn push_then_pull_round_trips_bytes_and_annotations_over_plain_http() {
    let reg = Registry::start(Options::default());
    let home = tempfile::tempdir().unwrap();
    let echo = fixture_module("fixture_echo");
    let bytes = std::fs::read(&echo).unwrap();
    let reference = format!("{}/rules/echo:1.0", reg.addr());

    let out = ok(cli(
        home.path(),
        &["rule", "push", echo.to_str().unwrap(), &reference],
    ));
    assert!(
        out.contains("fixture_echo.wasm: fixture-echo 1 (contract 0.1.0, "),
        "{out}"
    );
    let digest = pushed_digest(&out);
    assert!(
        out.contains(&format!("as {}/rules/echo@{digest}", reg.addr())),
        "{out}"
    );

    // What the registry holds, as any OCI client sees it.
    let base = format!("http://{}", reg.addr());
    let m = manifest(&base, "rules/echo", "1.0", &[]);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.peregrine.rule.config.v1+json"
    );
    let layer = &m["layers"][0];
    assert_eq!(
        layer["mediaType"],
        "application/vnd.peregrine.rule.module.v1+wasm"
    );
    assert_eq!(layer["digest"], sha256(&bytes));
    assert_eq!(layer["size"], bytes.len());
    let ann = &layer["annotations"];
    assert_eq!(ann["org.opencontainers.image.title"], "fixture_echo.wasm");
    assert_eq!(ann["vnd.peregrine.rule.name"], "fixture-echo");
    assert_eq!(ann["vnd.peregrine.rule.version"], "1");
    assert_eq!(ann["vnd.peregrine.rule.contract"], "0.1.0");
    assert_eq!(ann["vnd.peregrine.rule.digest"], sha256(&bytes));
    assert_eq!(m["annotations"]["vnd.peregrine.rule.name"], "fixture-echo");

    // Pull by tag and by the printed digest: the same bytes.
    for r in [
        reference.clone(),
        format!("{}/rules/echo@{digest}", reg.addr()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = ok(cli(
            home.path(),
            &["rule", "pull", &r, "-o", dir.path().to_str().unwrap()],
        ));
        assert!(out.contains(&format!("pulled {r} ({digest})")), "{out}");
        assert!(out.contains("fixture-echo 1 (contract 0.1.0"), "{out}");
        assert_eq!(
            std::fs::read(dir.path().join("fixture_echo.wasm")).unwrap(),
            bytes
        );
    }

    // A directory becomes one artifact with a layer per module.
    let pack = tempfile::tempdir().unwrap();
    for name in ["fixture_echo", "fixture_trap"] {
        std::fs::copy(
            fixture_module(name),
            pack.path().join(format!("{name}.wasm")),
        )
        .unwrap();
    }
    let pack_ref = format!("{}/rules/pack:2", reg.addr());
    ok(cli(
        home.path(),
        &["rule", "push", pack.path().to_str().unwrap(), &pack_ref],
    ));
    let out_dir = tempfile::tempdir().unwrap();
    let out = ok(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &pack_ref,
            "-o",
            out_dir.path().to_str().unwrap(),
        ],
    ));
    assert!(out.contains("fixture-trap 1"), "{out}");
    for name in ["fixture_echo", "fixture_trap"] {
        assert_eq!(
            std::fs::read(out_dir.path().join(format!("{name}.wasm"))).unwrap(),
            std::fs::read(fixture_module(name)).unwrap()
        );
    }

    // Mistakes get clear errors.
    let other = format!("sha256:{}", "0".repeat(64));
    let err = failed(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &format!("{}/rules/echo@{other}", reg.addr()),
        ],
    ));
    assert!(
        err.contains(&format!("registry {}", reg.addr())) && err.contains("manifest unknown"),
        "{err}"
    );
    let err = failed(cli(home.path(), &["rule", "pull", "rules/echo"]));
    assert!(err.contains("name the registry"), "{err}");
    let garbage = home.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").unwrap();
    let err = failed(cli(
        home.path(),
        &["rule", "push", garbage.to_str().unwrap(), &reference],
    ));
    assert!(
        err.contains("not pushing") && err.contains("garbage.wasm"),
        "{err}"
    );
    let bad = fixture_module("fixture_bad_metadata");
    let err = failed(cli(
        home.path(),
        &["rule", "push", bad.to_str().unwrap(), &reference],
    ));
    assert!(err.contains("declared twice"), "{err}");
    // Nothing listens: the cause is named.
    let reg_down = Registry::start(Options::default());
    let down_ref = format!("{}/rules/echo:1.0", reg_down.addr());
    drop(reg_down);
    let err = failed(cli(home.path(), &["rule", "pull", &down_ref]));
    assert!(err.to_lowercase().contains("connect"), "{err}");
}

/// A server that answers every request with the same garbage, as a broken
/// or hostile registry might.
fn garbage_registry(
    body: &'static str,
    content_type: &'static str,
) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = std::thread::spawn(move || {
        listener.set_nonblocking(false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { break };
            let mut buf = [0u8; 8192];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let request = String::from_utf8_lossy(&buf);
            let (status, body) = if request.starts_with("GET /v2/ ") {
                ("200 OK", "{}")
            } else {
                ("200 OK", body)
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            if Instant::now() > deadline || request.contains("x-stop") {
                break;
            }
        }
    });
    (addr, handle)
}

#[test]
fn garbage_from_a_registry_is_a_clear_error_not_a_panic() {
    let home = tempfile::tempdir().unwrap();
    let cases = [
        (
            "<html>proxy error</html>",
            "text/html",
            "not an OCI image manifest",
        ),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}"#,
            "application/vnd.oci.image.manifest.v1+json",
            "not a Peregrine rule artifact",
        ),
        (
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.peregrine.rule.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[{"mediaType":"application/vnd.peregrine.rule.module.v1+wasm","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":99999999999,"annotations":{"org.opencontainers.image.title":"x.wasm"}}]}"#,
            "application/vnd.oci.image.manifest.v1+json",
            "a module is 1 to",
        ),
    ];
    for (body, content_type, want) in cases {
        let (addr, server) = garbage_registry(body, content_type);
        let out_dir = home.path().join("out");
        let err = failed(cli(
            home.path(),
            &[
                "rule",
                "pull",
                &format!("{addr}/rules/x:1"),
                "-o",
                out_dir.to_str().unwrap(),
            ],
        ));
        assert!(err.contains(want), "{want}: {err}");
        assert!(!out_dir.join("x.wasm").exists());
        let _ = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            use std::io::Write;
            s.write_all(b"GET /x-stop HTTP/1.1\r\n\r\n")
        });
        server.join().unwrap();
    }
}

fn docker_config(dir: &Path, registry: &str, user: &str, pass: &str) -> PathBuf {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let path = dir.join(format!("docker-config-{user}-{}.json", pass.len()));
    std::fs::write(
        &path,
        serde_json::json!({"auths": {registry: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    path
}

/// (b) Basic auth (htpasswd, bcrypt), credentials from a Docker config file.
#[test]
fn basic_auth_takes_credentials_from_a_docker_config_file() {
    let reg = Registry::start(Options {
        users: vec![("alice", "s3cret-pass")],
        ..Default::default()
    });
    let home = tempfile::tempdir().unwrap();
    let good = docker_config(home.path(), &reg.addr(), "alice", "s3cret-pass");
    let wrong = docker_config(home.path(), &reg.addr(), "alice", "wrong");
    let echo = fixture_module("fixture_echo");
    let reference = format!("{}/team/echo:1", reg.addr());

    let out = ok(cli(
        home.path(),
        &[
            "rule",
            "push",
            echo.to_str().unwrap(),
            &reference,
            "--docker-config",
            good.to_str().unwrap(),
        ],
    ));
    let digest = pushed_digest(&out);
    let out_dir = tempfile::tempdir().unwrap();
    ok(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &reference,
            "-o",
            out_dir.path().to_str().unwrap(),
            "--docker-config",
            good.to_str().unwrap(),
        ],
    ));
    assert_eq!(
        std::fs::read(out_dir.path().join("fixture_echo.wasm")).unwrap(),
        std::fs::read(&echo).unwrap()
    );
    // Docker's default place for the file works too.
    std::fs::create_dir_all(home.path().join(".docker")).unwrap();
    std::fs::copy(&good, home.path().join(".docker/config.json")).unwrap();
    let out = ok(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &reference,
            "-o",
            out_dir.path().to_str().unwrap(),
        ],
    ));
    assert!(out.contains(&digest), "{out}");
    std::fs::remove_file(home.path().join(".docker/config.json")).unwrap();

    let err = failed(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &reference,
            "--docker-config",
            wrong.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("refused the credentials of user `alice`"),
        "{err}"
    );
    assert!(!err.contains("wrong"), "the password is not printed: {err}");
    let err = failed(cli(home.path(), &["rule", "pull", &reference]));
    assert!(err.contains("authentication required"), "{err}");
    let err = failed(cli(
        home.path(),
        &[
            "rule",
            "push",
            echo.to_str().unwrap(),
            &reference,
            "--docker-config",
            wrong.to_str().unwrap(),
        ],
    ));
    assert!(err.contains("refused the credentials"), "{err}");
}

/// A CA and a certificate for 127.0.0.1 signed by it.
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "peregrine test registry CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &issuer).unwrap();
    let (ca, crt, k) = (
        dir.join("ca.pem"),
        dir.join("registry.crt"),
        dir.join("registry.key"),
    );
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (ca, crt, k)
}

/// (c) TLS with a CA of its own: trusted with --ca-file, refused without.
#[test]
fn tls_registry_is_trusted_through_the_ca_file() {
    let home = tempfile::tempdir().unwrap();
    let (ca, crt, key) = tls_files(home.path());
    let reg = Registry::start(Options {
        tls: Some((crt, key)),
        ..Default::default()
    });
    let echo = fixture_module("fixture_echo");
    let reference = format!("{}/rules/echo:tls", reg.addr());
    let ca = ca.to_str().unwrap();
    ok(cli(
        home.path(),
        &[
            "rule",
            "push",
            echo.to_str().unwrap(),
            &reference,
            "--ca-file",
            ca,
        ],
    ));
    let out_dir = tempfile::tempdir().unwrap();
    ok(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &reference,
            "-o",
            out_dir.path().to_str().unwrap(),
            "--ca-file",
            ca,
        ],
    ));
    assert_eq!(
        std::fs::read(out_dir.path().join("fixture_echo.wasm")).unwrap(),
        std::fs::read(&echo).unwrap()
    );
    // The registry really speaks TLS, with that CA.
    let m = manifest(
        &format!("https://{}", reg.addr()),
        "rules/echo",
        "tls",
        &["--cacert", ca],
    );
    assert_eq!(
        m["layers"][0]["annotations"]["vnd.peregrine.rule.name"],
        "fixture-echo"
    );

    // Loopback without a CA file means plain HTTP, which a TLS port refuses;
    // a CA file that does not hold the registry's CA fails verification.
    let err = failed(cli(home.path(), &["rule", "pull", &reference]));
    assert!(err.contains(&format!("registry {}", reg.addr())), "{err}");
    let other_dir = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = tls_files(other_dir.path());
    let err = failed(cli(
        home.path(),
        &[
            "rule",
            "pull",
            &reference,
            "--ca-file",
            other_ca.to_str().unwrap(),
        ],
    ));
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(err.contains("CA file"), "{err}");
    let err = failed(cli(
        home.path(),
        &["rule", "pull", &reference, "--ca-file", "/no/such/ca.pem"],
    ));
    assert!(err.contains("/no/such/ca.pem"), "{err}");
}

struct Serve {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Serve {
    fn rules(&self) -> Value {
        serde_json::from_str(&curl(&[&format!("{}/api/v1/rules", self.base)])).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `pred` holds for the rules API, or fails with the last answer.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited with {status}:\n{}", self.log());
            }
            let ok = std::process::Command::new("curl")
                .args([
                    "-sf",
                    "--max-time",
                    "5",
                    &format!("{}/api/v1/rules", self.base),
                ])
                .output()
                .unwrap();
            if ok.status.success() {
                let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
                if pred(&v) {
                    return v;
                }
                if Instant::now() > deadline {
                    panic!(
                        "timed out waiting for {what}; rules API: {v:#}\nlog:\n{}",
                        self.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; no API answer\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn module<'a>(rules: &'a Value, key: &str) -> &'a Value {
    rules["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["key"] == key)
        .unwrap_or(&Value::Null)
}

/// (d) A running `serve` follows a tag: the module goes live, a new version
/// pushed under the same tag swaps in without a restart, and when the
/// registry goes down or serves a corrupted blob the live version stays.
#[test]
fn serve_follows_a_tag_and_keeps_the_live_version_when_pulls_fail() {
    let mut reg = Registry::start(Options::default());
    let home = tempfile::tempdir().unwrap();
    let reference = format!("{}/rules/live:prod", reg.addr());
    // Two different modules under the same file name: versions of `rule`.
    let v1 = home.path().join("v1");
    let v2 = home.path().join("v2");
    for (dir, name) in [(&v1, "fixture_echo"), (&v2, "fixture_trap")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::copy(fixture_module(name), dir.join("rule.wasm")).unwrap();
    }
    let v1_bytes = std::fs::read(v1.join("rule.wasm")).unwrap();
    let v2_bytes = std::fs::read(v2.join("rule.wasm")).unwrap();
    let out = ok(cli(
        home.path(),
        &[
            "rule",
            "push",
            v1.join("rule.wasm").to_str().unwrap(),
            &reference,
        ],
    ));
    let v1_manifest = pushed_digest(&out);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = home.path().join("state");
    let config = home.path().join("peregrine.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.journal]\ndir = \"{s}/journal\"\n\
             [engine]\ncache_dir = \"{s}/cache\"\n[store]\npath = \"{s}/alerts.sqlite\"\n\
             [delivery]\nspool_dir = \"{s}/spool\"\n\n\
             [[rules.sources]]\ntype = \"oci\"\nreference = \"{reference}\"\npoll_interval_secs = 1\n",
            s = state.display()
        ),
    )
    .unwrap();
    let log = home.path().join("serve.log");
    let child = peregrine(&["serve", "-c", config.to_str().unwrap(), "--log", "info"])
        .env("HOME", home.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut serve = Serve {
        child,
        base: format!("http://127.0.0.1:{port}"),
        log,
    };
    let pid = serve.child.id();

    let rules = serve.wait_for("v1 live", |r| module(r, "rule")["status"] == "live");
    let m = module(&rules, "rule");
    assert_eq!(m["name"], "fixture-echo");
    assert_eq!(
        format!("sha256:{}", m["digest"].as_str().unwrap()),
        sha256(&v1_bytes)
    );
    let source = &rules["sources"][0];
    assert_eq!(source["reference"], reference.as_str());
    assert_eq!(source["digest"], v1_manifest.as_str());
    assert_eq!(source["modules"][0], "rule.wasm");
    assert!(source["last_error"].is_null(), "{source}");

    // A new version under the same tag swaps in.
    ok(cli(
        home.path(),
        &[
            "rule",
            "push",
            v2.join("rule.wasm").to_str().unwrap(),
            &reference,
        ],
    ));
    let rules = serve.wait_for("v2 live", |r| module(r, "rule")["name"] == "fixture-trap");
    let m = module(&rules, "rule");
    assert_eq!(m["status"], "live");
    assert_eq!(
        format!("sha256:{}", m["digest"].as_str().unwrap()),
        sha256(&v2_bytes)
    );
    assert_eq!(serve.child.id(), pid);
    assert!(serve.child.try_wait().unwrap().is_none(), "serve restarted");
    let v2_manifest = rules["sources"][0]["digest"].as_str().unwrap().to_string();
    assert_ne!(v2_manifest, v1_manifest);

    // The registry goes down: failures are counted and shown, v2 stays.
    reg.stop();
    let rules = serve.wait_for("a failed pull", |r| {
        r["sources"][0]["failures"].as_u64() >= Some(2) && !r["sources"][0]["last_error"].is_null()
    });
    assert_eq!(module(&rules, "rule")["name"], "fixture-trap");
    assert_eq!(module(&rules, "rule")["status"], "live");
    let err = rules["sources"][0]["last_error"].as_str().unwrap();
    assert!(err.contains(&format!("registry {}", reg.addr())), "{err}");
    let metrics = curl(&[&format!("{}/metrics", serve.base)]);
    assert!(
        metrics.contains("peregrine_oci_pulls_total{result=\"failed\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("peregrine_oci_pulls_total{result=\"updated\"}"),
        "{metrics}"
    );

    // While it is down, the tag is moved back to v1, whose layer blob is
    // then corrupted on the registry's disk (same length, other bytes).
    let tag_link = reg.storage("repositories/rules/live/_manifests/tags/prod/current/link");
    std::fs::write(&tag_link, &v1_manifest).unwrap();
    let v1_layer = sha256(&v1_bytes);
    let hex = v1_layer.trim_start_matches("sha256:");
    let blob = reg.storage(&format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut corrupted = std::fs::read(&blob).unwrap();
    for b in corrupted.iter_mut().take(64) {
        *b = !*b;
    }
    std::fs::write(&blob, &corrupted).unwrap();
    let failures_before = serve.rules()["sources"][0]["failures"].as_u64().unwrap();
    reg.resume();
    let rules = serve.wait_for("the corrupted blob refused", |r| {
        r["sources"][0]["failures"].as_u64() > Some(failures_before)
            && r["sources"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("digest") && e.contains(&v1_layer))
    });
    let m = module(&rules, "rule");
    assert_eq!(m["name"], "fixture-trap", "the live version stays");
    assert_eq!(m["status"], "live");
    assert_eq!(rules["sources"][0]["digest"], v2_manifest.as_str());
    assert_eq!(
        std::fs::read(Path::new(rules["sources"][0]["dir"].as_str().unwrap()).join("rule.wasm"))
            .unwrap(),
        v2_bytes,
        "the cache keeps the verified version"
    );
    assert!(!serve.log().contains("panicked"), "{}", serve.log());
}

/// The `peregrine rule` commands of docs/operations.md and
/// docs/quickstart-kubernetes.md, run as written against a local registry
/// in place of `registry.example:5000`.
#[test]
fn the_documented_rule_commands_work() {
    let reg = Registry::start(Options::default());
    let home = tempfile::tempdir().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let mut ran = Vec::new();
    for doc in ["docs/operations.md", "docs/quickstart-kubernetes.md"] {
        let text = std::fs::read_to_string(root().join(doc)).unwrap();
        for line in text.lines().filter(|l| l.starts_with("peregrine rule ")) {
            let line = line.replace("registry.example:5000", &reg.addr());
            let mut args: Vec<String> = line
                .split_whitespace()
                .skip(1)
                .map(str::to_string)
                .collect();
            if let Some(i) = args.iter().position(|a| a == "-o") {
                args[i + 1] = out_dir.path().to_str().unwrap().to_string();
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = peregrine(&argv)
                .current_dir(root())
                .env("HOME", home.path())
                .env_remove("DOCKER_CONFIG")
                .output()
                .unwrap();
            ok(out);
            ran.push(format!("{doc}: {line}"));
        }
    }
    assert!(
        ran.iter().any(|l| l.contains("rule push")) && ran.iter().any(|l| l.contains("rule pull")),
        "{ran:?}"
    );
    assert_eq!(
        std::fs::read(out_dir.path().join("falco_k8s_audit.wasm")).unwrap(),
        std::fs::read(root().join("example-rules/build/falco_k8s_audit.wasm")).unwrap()
    );
}
