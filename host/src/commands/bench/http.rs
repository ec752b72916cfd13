//! HTTP end-to-end: EventList batches of 400 posted to a real server on a
//! loopback port. Saturation: several connections post as fast as they are
//! answered, and the figure is events acknowledged *and evaluated* per
//! second, from the first request until the server has drained its queue.
//! Latency: one POST of 400 events every 100 ms (4,000 events/s, one
//! apiserver's default ceiling), each timed from the moment it was due, so
//! a slow answer also counts against the requests queued behind it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::BenchEnv;
use super::stream::Stream;
use crate::app::Peregrine;

/// Events per POST, the apiserver's default batch size.
const BATCH: usize = 400;
/// Connections posting at once for the saturation figure.
const CONNECTIONS: usize = 8;
/// POSTs per second for the latency figure: 10 × 400 = 4,000 events/s.
const LATENCY_RATE_HZ: u32 = 10;

pub(crate) struct HttpFigures {
    pub saturation_eps: f64,
    pub saturation_events: usize,
    /// 429 answers during saturation (the client retried after 5 ms).
    pub throttled: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub latency_requests: usize,
}

/// A keep-alive HTTP/1.1 client that does just enough: POST a body, read
/// the status line, headers and a Content-Length body.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(addr)
            .await
            .context("cannot connect to the server")?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    async fn post(&mut self, body: &[u8]) -> anyhow::Result<u16> {
        let head = format!(
            "POST /k8s-audit HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.buf.clear();
        let (status, header_end, content_length) = loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head =
                    std::str::from_utf8(&self.buf[..end]).context("response head is not UTF-8")?;
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
                break (status, end + 4, length);
            }
        };
        while self.buf.len() < header_end + content_length {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the server closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        Ok(status)
    }
}

async fn start_server(env: &BenchEnv) -> anyhow::Result<Peregrine> {
    let config = Arc::new(env.config(0));
    let mut app =
        Peregrine::build(config.clone(), super::options(env.measured_dirs.clone())).await?;
    app.serve(tokio::net::TcpListener::bind(config.server.listen).await?)
        .await?;
    Ok(app)
}

/// Runs the client on a thread and runtime of its own, as the apiserver is a
/// process of its own: its wake-ups do not queue behind the server's tasks.
fn on_client_thread<F, R>(client: impl FnOnce() -> F + Send + 'static) -> anyhow::Result<R>
where
    F: std::future::Future<Output = anyhow::Result<R>>,
    R: Send + 'static,
{
    std::thread::Builder::new()
        .name("bench-client".into())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the client's runtime")?
                .block_on(client())
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

async fn saturate(addr: std::net::SocketAddr, bodies: Arc<Vec<Vec<u8>>>) -> anyhow::Result<u64> {
    let next = Arc::new(AtomicUsize::new(0));
    let throttled = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (bodies, next, throttled) = (bodies.clone(), next.clone(), throttled.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                loop {
                    match client.post(body).await? {
                        200 => break,
                        429 => {
                            // The queue is full: back off briefly and resend,
                            // as the apiserver does (it waits longer).
                            throttled.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        s => anyhow::bail!("the webhook answered {s}"),
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await.context("a client task panicked")??;
    }
    Ok(throttled.load(Ordering::Relaxed))
}

/// The latency client: plain blocking I/O on its own thread, so its clock
/// and sleeps are precise to microseconds (an async timer wakes up to a
/// millisecond late, which would count against the server).
fn steady(
    addr: std::net::SocketAddr,
    bodies: &[Vec<u8>],
    seconds: u64,
) -> anyhow::Result<Vec<f64>> {
    let mut conn = std::net::TcpStream::connect(addr).context("cannot connect to the server")?;
    conn.set_nodelay(true)?;
    let mut post = |body: &[u8]| -> anyhow::Result<u16> {
        Ok(super::soak::request(&mut conn, "POST", "/k8s-audit", body)?.0)
    };
    let period = Duration::from_secs(1) / LATENCY_RATE_HZ;
    let warmup = 5usize;
    let total = warmup + (seconds.max(1) as usize) * LATENCY_RATE_HZ as usize;
    let mut latencies = Vec::with_capacity(total);
    let start = Instant::now() + period;
    for k in 0..total {
        let due = start + period * k as u32;
        let now = Instant::now();
        // A request that is late because the previous answer was slow is
        // timed from when it was due; otherwise from when it is sent.
        let sent = if now < due {
            std::thread::sleep(due - now);
            Instant::now()
        } else {
            due
        };
        let status = post(&bodies[k % bodies.len()])?;
        let ms = sent.elapsed().as_secs_f64() * 1000.0;
        anyhow::ensure!(
            status == 200,
            "the webhook answered {status} at 4,000 events/s"
        );
        if k >= warmup {
            latencies.push(ms);
        }
    }
    Ok(latencies)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn run(
    env: &BenchEnv,
    stream: &Stream,
    latency_seconds: u64,
) -> anyhow::Result<HttpFigures> {
    env.progress.step("http: preparing EventList bodies");
    let bodies: Vec<Vec<u8>> = stream.lines.chunks(BATCH).map(Stream::event_list).collect();
    let bodies = Arc::new(bodies);
    // Each server gets fresh audit IDs: the run is also its own dedup check.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("peregrine-http")
        .build()
        .context("cannot start the async runtime")?;
    env.progress.step(format!(
        "http: saturating with {CONNECTIONS} connections, {} events",
        stream.events.len()
    ));
    let server = runtime.block_on(start_server(env))?;
    let (addr, client_bodies) = (server.addr().context("serving")?, bodies.clone());
    let started = Instant::now();
    let throttled = on_client_thread(move || saturate(addr, client_bodies))?;
    // Acknowledged is not evaluated: wait until the queue has drained.
    runtime.block_on(server.shutdown())?;
    let saturation_eps = stream.events.len() as f64 / started.elapsed().as_secs_f64();

    let seconds = if env.quick { 1 } else { latency_seconds };
    env.progress.step(format!(
        "http: acknowledgement latency at 4,000 events/s for {seconds} s"
    ));
    let server = runtime.block_on(start_server(env))?;
    let addr = server.addr().context("serving")?;
    let mut lat = std::thread::scope(|scope| {
        scope
            .spawn(|| steady(addr, &bodies, seconds))
            .join()
            .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    })?;
    runtime.block_on(server.shutdown())?;
    lat.sort_by(f64::total_cmp);
    Ok(HttpFigures {
        saturation_eps,
        saturation_events: stream.events.len(),
        throttled,
        p50_ms: percentile(&lat, 50.0),
        p90_ms: percentile(&lat, 90.0),
        p99_ms: percentile(&lat, 99.0),
        max_ms: lat.last().copied().unwrap_or(f64::NAN),
        latency_requests: lat.len(),
    })
}
