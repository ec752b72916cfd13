//! The NATS, syslog and Alertmanager outputs against the real servers:
//! Debian's `nats-server`, `rsyslog` and `prometheus-alertmanager`, each
//! started by the test on its own ports with its own configuration in a
//! temporary directory. `.ci/run` installs the packages; a missing binary
//! fails the test and says what to install.

use crate::outputs_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use outputs_support::*;
use peregrine_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// A server process, killed when dropped.
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The path of a binary that the Debian package `package` installs.
fn binary(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run `apt-get install -y {package}` (.ci/run does)")
        })
}

fn spawn(name: &'static str, package: &str, args: &[String], dir: &Path) -> Service {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(binary(name, package))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Service { name, child, log }
}

impl Service {
    /// Waits until the service accepts TCP connections on `port`.
    async fn wait_port(&mut self, port: u16) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening on {port}:\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} does not listen on {port}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------- NATS --

/// A subscriber speaking the NATS protocol, collecting (subject, payload).
struct Subscriber {
    got: Arc<Mutex<Vec<(String, serde_json::Value)>>>,
}

impl Subscriber {
    async fn start(port: u16, user: &str, pass: &str, subject: &str) -> Subscriber {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut s = BufReader::new(tcp);
        let mut line = String::new();
        s.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("INFO "), "{line}");
        let connect = serde_json::json!({"verbose": false, "user": user, "pass": pass});
        s.get_mut()
            .write_all(format!("CONNECT {connect}\r\nSUB {subject} 1\r\nPING\r\n").as_bytes())
            .await
            .unwrap();
        // The PONG says the subscription is in place.
        loop {
            line.clear();
            s.read_line(&mut line).await.unwrap();
            assert!(!line.starts_with("-ERR"), "subscriber refused: {line}");
            if line.starts_with("PONG") {
                break;
            }
        }
        let got: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
        let g = got.clone();
        tokio::spawn(async move {
            let mut line = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line.starts_with("PING") {
                    let _ = s.get_mut().write_all(b"PONG\r\n").await;
                    continue;
                }
                let Some(rest) = line.strip_prefix("MSG ") else {
                    continue;
                };
                let parts: Vec<&str> = rest.split_whitespace().collect();
                let len: usize = parts.last().unwrap().parse().unwrap();
                let mut payload = vec![0u8; len + 2];
                s.read_exact(&mut payload).await.unwrap();
                let json = serde_json::from_slice(&payload[..len]).unwrap();
                g.lock().unwrap().push((parts[0].to_string(), json));
            }
        });
        Subscriber { got }
    }

    async fn wait(&self, n: usize) -> Vec<(String, serde_json::Value)> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} NATS messages, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_publishes_to_a_subject_per_tenant_and_priority() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port();
    let args: Vec<String> = [
        "-a",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "--user",
        "peregrine",
        "--pass",
        "nats-s3cret",
    ]
    .map(String::from)
    .to_vec();
    let mut nats = spawn("nats-server", "nats-server", &args, dir.path());
    nats.wait_port(port).await;
    let sub = Subscriber::start(port, "peregrine", "nats-s3cret", "peregrine.alerts.>").await;

    let token = "team-a-token-0123456789";
    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.nats]
type = "nats"
url = "nats://127.0.0.1:{port}"
subject = "peregrine.alerts.{{tenant}}.{{priority}}"
user = "peregrine"
password = "nats-s3cret"

# Wrong credentials: the server refuses, the output retries and says so.
[outputs.nats_bad_auth]
type = "nats"
url = "nats://peregrine:wrong@127.0.0.1:{port}"
delivery = {{ retry_initial_ms = 100, retry_max_ms = 200 }}

[[routes]]
outputs = ["nats", "nats_bad_auth"]

[tenants.team-a]
tokens = ["{token}"]
"#
    );
    let srv = RoutedServer::start(
        config(&toml, spool.path()),
        &[fixture_module("fixture_echo")],
    )
    .await;
    srv.post_ids(&["nats-1".into(), "nats-2".into()]).await;
    srv.post(
        "/k8s-audit/team-a",
        Some(token),
        &[event("nats-a", "get", "pods", "x")],
    )
    .await;

    let mut got: Vec<(String, String, String)> = sub
        .wait(3)
        .await
        .into_iter()
        .map(|(subject, json)| {
            assert_eq!(json["rule"], "Echo");
            assert_eq!(json["source"], "k8s_audit");
            (
                subject,
                json["output_fields"]["ka.auditid"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                json["output_fields"]["peregrine.tenant"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    got.sort();
    let t = |s: &str, id: &str, tenant: &str| (s.to_string(), id.to_string(), tenant.to_string());
    assert_eq!(
        got,
        vec![
            t(
                "peregrine.alerts.default.informational",
                "nats-1",
                "default"
            ),
            t(
                "peregrine.alerts.default.informational",
                "nats-2",
                "default"
            ),
            t("peregrine.alerts.team-a.informational", "nats-a", "team-a"),
        ]
    );
    let m = srv
        .wait_metric("peregrine_output_sent_total", &[("output", "nats")], 3.0)
        .await;
    let m2 = srv
        .wait_metric(
            "peregrine_output_failed_total",
            &[("output", "nats_bad_auth")],
            2.0,
        )
        .await;
    assert_eq!(
        metric(&m, "peregrine_output_pending_alerts", &[("output", "nats")]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &m2,
            "peregrine_output_sent_total",
            &[("output", "nats_bad_auth")]
        ),
        None
    );
    assert_eq!(
        metric(&m2, "peregrine_output_up", &[("output", "nats_bad_auth")]),
        Some(0.0)
    );
    srv.shutdown().await;
}

// -------------------------------------------------------------- syslog --

fn rsyslog_config(dir: &Path, tcp: u16, udp: u16) -> PathBuf {
    let conf = dir.join("rsyslog.conf");
    let text = format!(
        r#"global(workDirectory="{dir}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" address="127.0.0.1" port="{tcp}")
input(type="imudp" address="127.0.0.1" port="{udp}")
template(name="fields" type="string" string="%inputname%|%pri%|%protocol-version%|%timereported:::date-rfc3339%|%hostname%|%app-name%|%procid%|%msgid%|%structured-data%|%msg%\n")
*.* action(type="omfile" file="{dir}/received.log" template="fields")
"#,
        dir = dir.display()
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

fn start_rsyslog(dir: &Path, conf: &Path) -> Service {
    let args = vec![
        "-n".to_string(),
        "-f".into(),
        conf.display().to_string(),
        "-i".into(),
        dir.join("rsyslogd.pid").display().to_string(),
    ];
    spawn("rsyslogd", "rsyslog", &args, dir)
}

/// The lines rsyslog wrote, split into their fields.
fn syslog_lines(dir: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(dir.join("received.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.splitn(10, '|').map(str::to_string).collect())
        .collect()
}

async fn wait_syslog(
    dir: &Path,
    what: &str,
    pred: impl Fn(&[Vec<String>]) -> bool,
) -> Vec<Vec<String>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let lines = syslog_lines(dir);
        if pred(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; rsyslog got {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn syslog_over_tcp_and_udp_reaches_rsyslog_as_rfc5424() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp) = (reserve_port(), reserve_port());
    let conf = rsyslog_config(dir.path(), tcp, udp);
    let mut rsyslog = start_rsyslog(dir.path(), &conf);
    rsyslog.wait_port(tcp).await;
    // UDP has no handshake: probe until rsyslog shows it listens.
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !syslog_lines(dir.path()).iter().any(|l| l[0] == "imudp") {
        probe
            .send_to(
                b"<14>1 2026-11-27T10:00:00Z probe test - probe - ready",
                ("127.0.0.1", udp),
            )
            .unwrap();
        assert!(
            Instant::now() < deadline,
            "rsyslog does not receive UDP on {udp}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.syslog_tcp]
type = "syslog"
address = "127.0.0.1:{tcp}"
protocol = "tcp"
facility = "local3"
app_name = "peregrine-test"

[outputs.syslog_udp]
type = "syslog"
address = "127.0.0.1:{udp}"
protocol = "udp"
facility = "authpriv"
format = "text"

[[routes]]
outputs = ["syslog_tcp", "syslog_udp"]
"#
    );
    let srv = RoutedServer::start(
        config(&toml, spool.path()),
        &[fixture_module("fixture_echo")],
    )
    .await;
    srv.post_ids(&["syslog-1".into(), "syslog-2".into()]).await;
    let lines = wait_syslog(dir.path(), "two messages per transport", |l| {
        l.iter().filter(|f| f[7] == "echo").count() >= 4
    })
    .await;
    let host = srv.hostname();
    let pid = std::process::id().to_string();
    let ours: Vec<&Vec<String>> = lines.iter().filter(|f| f[7] == "echo").collect();
    let tcp_lines: Vec<&&Vec<String>> = ours.iter().filter(|f| f[0] == "imtcp").collect();
    let udp_lines: Vec<&&Vec<String>> = ours.iter().filter(|f| f[0] == "imudp").collect();
    assert_eq!((tcp_lines.len(), udp_lines.len()), (2, 2), "{ours:#?}");
    for (f, id) in tcp_lines.iter().zip(["syslog-1", "syslog-2"]) {
        // local3 (19) * 8 + Informational (6) = 158.
        assert_eq!(f[1], "158");
        assert_eq!(f[2], "1");
        assert_eq!(f[3], "2026-11-27T10:00:00.100000Z");
        assert_eq!(f[4], host);
        assert_eq!(f[5], "peregrine-test");
        assert_eq!(f[6], pid);
        assert_eq!(f[8], "-");
        let json: serde_json::Value = serde_json::from_str(&f[9]).unwrap();
        assert_eq!(json["rule"], "Echo");
        assert_eq!(json["output_fields"]["ka.auditid"], id);
    }
    for f in &udp_lines {
        // authpriv (10) * 8 + 6 = 86; the text format.
        assert_eq!(f[1], "86");
        assert_eq!(f[5], "peregrine");
        assert!(
            f[9].contains("Informational Echo [] echo syslog-"),
            "{}",
            f[9]
        );
    }

    // rsyslog restarts: the TCP output notices the closed connection and
    // reconnects instead of writing into it.
    drop(rsyslog);
    let mut rsyslog = start_rsyslog(dir.path(), &conf);
    rsyslog.wait_port(tcp).await;
    srv.post_ids(&["syslog-3".into(), "syslog-4".into()]).await;
    wait_syslog(dir.path(), "the messages after the restart", |l| {
        ["syslog-3", "syslog-4"].iter().all(|id| {
            l.iter()
                .any(|f| f[0] == "imtcp" && f[9].contains(&format!("\"ka.auditid\":\"{id}\"")))
        })
    })
    .await;
    srv.shutdown().await;
}

// -------------------------------------------------------- Alertmanager --

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_receives_alerts_with_labels_from_rule_priority_tenant_and_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let port = reserve_port();
    std::fs::write(
        dir.path().join("alertmanager.yml"),
        "route:\n  receiver: \"null\"\nreceivers:\n  - name: \"null\"\n",
    )
    .unwrap();
    let args: Vec<String> = vec![
        "--config.file=alertmanager.yml".into(),
        format!("--storage.path={}", dir.path().join("data").display()),
        format!("--web.listen-address=127.0.0.1:{port}"),
        // No cluster: no gossip port to collide with.
        "--cluster.listen-address=".into(),
    ];
    let mut am = spawn(
        "prometheus-alertmanager",
        "prometheus-alertmanager",
        &args,
        dir.path(),
    );
    am.wait_port(port).await;
    let client = peregrine_tests::http_client();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = client
            .get(format!("http://127.0.0.1:{port}/-/ready"))
            .send()
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "alertmanager is not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let spool = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"
[outputs.am]
type = "alertmanager"
url = "http://127.0.0.1:{port}"
labels = {{ cluster = "test-cluster" }}
field_labels = {{ "ka.user.name" = "user" }}
expire_after_secs = 3600
generator_url = "http://peregrine.example/alerts"

[[routes]]
outputs = ["am"]
"#
    );
    let srv = RoutedServer::start(
        config(&toml, spool.path()),
        &[example_module("falco_k8s_audit")],
    )
    .await;
    let hostpid = events_of(&root().join("tests/fixtures/falco/create_pod_hostpid.json"));
    let audit_id = hostpid[0]["auditID"].as_str().unwrap().to_string();
    let user = hostpid[0]["user"]["username"].as_str().unwrap().to_string();
    srv.post("/k8s-audit", None, &hostpid).await;
    srv.wait_metric("peregrine_output_sent_total", &[("output", "am")], 1.0)
        .await;

    // Ask Alertmanager what it holds.
    let alerts: serde_json::Value = client
        // filter=alertname="Create HostPid Pod"
        .get(format!(
            "http://127.0.0.1:{port}/api/v2/alerts?filter=alertname%3D%22Create%20HostPid%20Pod%22"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alerts = alerts.as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    let a = &alerts[0];
    assert_eq!(
        a["labels"],
        serde_json::json!({
            "alertname": "Create HostPid Pod",
            "rule_id": "create-hostpid-pod",
            "priority": "Warning",
            "severity": "warning",
            "tenant": "default",
            "namespace": "default",
            "module": "falco_k8s_audit",
            "source": "k8s_audit",
            "cluster": "test-cluster",
            "user": user,
        })
    );
    assert_eq!(a["status"]["state"], "active");
    assert_eq!(a["startsAt"], "2024-05-14T09:12:01.131Z");
    assert_eq!(a["generatorURL"], "http://peregrine.example/alerts");
    assert_eq!(a["annotations"]["audit_id"], audit_id.as_str());
    let summary = a["annotations"]["summary"].as_str().unwrap();
    assert!(
        summary.starts_with("Pod started using host pid namespace (user="),
        "{summary}"
    );
    assert!(
        a["annotations"]["tags"]
            .as_str()
            .unwrap()
            .split(',')
            .any(|t| t == "k8s")
    );
    srv.shutdown().await;
}
