//! Memory under steady load: `peregrine serve` in a child process with the
//! default rules directory (every example module), its journal and alert
//! store as `serve` keeps them by default, and EventLists of 400 events
//! posted as fast as they are accepted, every event with an auditID of its
//! own. At each checkpoint the client pauses until the server's queue is
//! empty (`/healthz`, which unlike `/metrics` changes nothing in the
//! server) and reads the child's resident set (`VmRSS`) from `/proc`.
//! What keeps growing here grows for as long as a cluster sends events.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::BenchEnv;
use super::stream::Stream;

/// Events per POST, the apiserver's default batch size.
const BATCH: usize = 400;
/// Connections posting at once.
const CONNECTIONS: usize = 4;

pub(crate) struct SoakFigures {
    /// Events posted and evaluated, and the server's RSS then, in MB.
    pub points: Vec<(usize, f64)>,
    /// RSS once the modules are loaded, before the first event.
    pub start_mb: f64,
    pub modules: usize,
    /// Events per second over the whole run (pauses included).
    pub eps: f64,
    pub throttled: u64,
}

/// The child server; killed if the figure stops early.
struct SoakServer {
    child: Child,
    addr: std::net::SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for SoakServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SoakServer {
    fn rss_mb(&self) -> anyhow::Result<f64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .context("cannot read the server's /proc status")?;
        let kib: f64 = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in the server's /proc status")?;
        Ok(kib / 1024.0)
    }

    fn logs(&self) -> String {
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        logs[logs.len().saturating_sub(20)..].join("\n")
    }
}

fn start(env: &BenchEnv, rules: &Path) -> anyhow::Result<SoakServer> {
    let work = env.scratch_dir("soak")?;
    let config = work.join("peregrine.toml");
    let cache = env.cache_dir.clone();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\njournal = {{ dir = {journal:?} }}\n\n\
             [engine]\ncache_dir = {cache:?}\n\n[rules]\ndirs = [{rules:?}]\n\n\
             [store]\npath = {store:?}\n",
            journal = work.join("journal").display().to_string(),
            cache = cache.display().to_string(),
            rules = rules.display().to_string(),
            store = work.join("alerts.sqlite").display().to_string(),
        ),
    )?;
    let exe = std::env::current_exe().context("cannot find the peregrine executable")?;
    let mut child = Command::new(exe)
        .args(["--log", "info", "serve", "--no-watch", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        // The default `stdout` output: alerts are written, then discarded.
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start peregrine serve")?;
    let stderr = BufReader::new(child.stderr.take().context("no stderr")?);
    let logs = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let logs = logs.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1)
                    && let Some(addr) = addr.split_whitespace().next()
                {
                    let _ = tx.send(addr.to_string());
                }
                let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
                logs.push(line);
                if logs.len() > 200 {
                    logs.drain(..100);
                }
            }
        });
    }
    let mut server = SoakServer {
        child,
        addr: ([127, 0, 0, 1], 0).into(),
        logs,
    };
    let addr = rx
        .recv_timeout(Duration::from_secs(300))
        .map_err(|_| anyhow::anyhow!("peregrine serve did not start:\n{}", server.logs()))?;
    server.addr = addr.parse().context("the server logged a bad address")?;
    Ok(server)
}

/// The body of POST number `k`: the stream's events in turn, each with an
/// auditID of its own, so the webhook's deduplication keeps every one.
fn body(lines: &[String], k: usize) -> Vec<u8> {
    const ID: &str = r#""auditID":""#;
    let batch: Vec<String> = (k * BATCH..(k + 1) * BATCH)
        .map(|i| {
            let line = &lines[i % lines.len()];
            let id = format!("soak-{i:010}");
            // The stream's lines are compact JSON with a plain auditID:
            // splice the new one in rather than parse every event again.
            let value_at = line.find(ID).map(|at| at + ID.len());
            match value_at.and_then(|at| Some((at, at + line[at..].find('"')?))) {
                Some((from, to)) => format!("{}{id}{}", &line[..from], &line[to..]),
                None => {
                    let mut v: serde_json::Value =
                        serde_json::from_str(line).unwrap_or(serde_json::Value::Null);
                    v["auditID"] = serde_json::Value::String(id);
                    v.to_string()
                }
            }
        })
        .collect();
    Stream::event_list(&batch)
}

/// One blocking HTTP/1.1 request on a keep-alive connection; the status
/// and the body.
pub(super) fn request(
    conn: &mut std::net::TcpStream,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk)?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).context("response head is not UTF-8")?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status in the response")?;
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .context("response without Content-Length")?;
        while buf.len() < end + 4 + length {
            let n = conn.read(&mut chunk)?;
            anyhow::ensure!(n > 0, "the server closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
        return Ok((status, buf[end + 4..end + 4 + length].to_vec()));
    }
}

/// Waits until the server's queue is empty, and returns `/healthz`.
fn drained(addr: std::net::SocketAddr) -> anyhow::Result<serde_json::Value> {
    let mut conn = std::net::TcpStream::connect(addr)?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (status, body) = request(&mut conn, "GET", "/healthz", b"")?;
        let health: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("/healthz answered {status} with no JSON"))?;
        if health["queue_events"].as_u64() == Some(0) {
            return Ok(health);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the queue did not drain: {health}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Posts bodies `from..to` over [`CONNECTIONS`] connections, resending a
/// batch refused with 429 after a short pause as the apiserver does.
fn post_range(
    addr: std::net::SocketAddr,
    lines: &Arc<Vec<String>>,
    from: usize,
    to: usize,
) -> anyhow::Result<u64> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let throttled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    std::thread::scope(|scope| {
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let (next, throttled, lines) = (next.clone(), throttled.clone(), lines.clone());
            clients.push(scope.spawn(move || -> anyhow::Result<()> {
                let mut conn = std::net::TcpStream::connect(addr)?;
                conn.set_nodelay(true)?;
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k >= to {
                        return Ok(());
                    }
                    let body = body(&lines, k);
                    loop {
                        match request(&mut conn, "POST", "/k8s-audit", &body)?.0 {
                            200 => break,
                            429 => {
                                throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            s => anyhow::bail!("the webhook answered {s}"),
                        }
                    }
                }
            }));
        }
        for c in clients {
            c.join()
                .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        }
        anyhow::Ok(())
    })?;
    Ok(throttled.load(std::sync::atomic::Ordering::Relaxed))
}

/// Runs `events` events (rounded up to whole POSTs) through a fresh server
/// and reads its RSS at a third, two thirds and all of them: with the
/// default three million, after 1M, 2M and 3M events.
pub(crate) fn run(env: &BenchEnv, stream: &Stream, events: usize) -> anyhow::Result<SoakFigures> {
    anyhow::ensure!(!stream.lines.is_empty(), "the stream has no events");
    let rules = env.examples.clone();
    // A first start fills the compile cache, then stops: the measured
    // server loads every module from the cache, as a restarted one does,
    // so compiling the Python and JavaScript modules does not count.
    env.progress
        .step("soak: compiling the default modules into the cache");
    drop(start(env, &rules)?);
    env.progress
        .step("soak: starting peregrine serve with the default modules");
    let server = start(env, &rules)?;
    let health = drained(server.addr)?;
    let modules = health["modules_live"].as_u64().unwrap_or(0) as usize;
    let start_mb = server.rss_mb()?;
    let posts = events.div_ceil(BATCH).max(1);
    let lines = Arc::new(stream.lines.clone());
    let mut points = Vec::new();
    let mut throttled = 0;
    let started = Instant::now();
    let mut done = 0;
    for part in 1..=3 {
        let to = posts * part / 3;
        if to == done {
            continue;
        }
        env.progress.step(format!(
            "soak: posting events {}..{} to peregrine serve",
            done * BATCH,
            to * BATCH
        ));
        throttled += post_range(server.addr, &lines, done, to).with_context(|| {
            format!("posting to the server failed; its log:\n{}", server.logs())
        })?;
        drained(server.addr)?;
        done = to;
        points.push((done * BATCH, server.rss_mb()?));
    }
    Ok(SoakFigures {
        eps: (done * BATCH) as f64 / started.elapsed().as_secs_f64(),
        points,
        start_mb,
        modules,
        throttled,
    })
}
