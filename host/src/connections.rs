//! The HTTP(S) listener: connections taken within a limit, each under
//! deadlines, so that idle, slow or stalled clients cannot hold the
//! process's file descriptors, and `/healthz` with them.
//!
//! **The limit.** At most `server.max_connections` are open at once. The
//! last `server.reserved_connections` of them are a reserve: a connection
//! accepted while all the others are taken is answered for `/healthz` and
//! `/metrics` only (503 for any other path), once, and closed. When the
//! reserve is full too, the newcomer evicts the oldest reserve connection
//! that has not yet sent a request (a probe sends its request at once, a
//! connection that holds a slot silently is what a flood looks like); when
//! every reserve connection has a request in progress, the newcomer is
//! closed at once, before a byte is read.
//! Outside the reserve the newcomer is refused rather than the oldest idle
//! connection evicted: a flood of new connections would otherwise evict the
//! apiserver's kept-alive ones, whereas the connections already open have to
//! keep within the deadlines below to stay, and each idle one is closed
//! within `idle_timeout_secs` anyway.
//!
//! **The deadlines,** HTTP/1.1 and HTTP/2 (h2 over TLS by ALPN, h2c by
//! prior knowledge) alike:
//! - *headers*: hyper's own `header_read_timeout` for HTTP/1.1, which runs
//!   whenever the connection waits for a request's head once its first
//!   bytes came: on a new connection, and on one kept alive between
//!   requests (so for HTTP/1.1 it is also the keep-alive timeout). The TLS
//!   handshake gets the same deadline.
//! - *idle*: a connection with no request in progress (one that sends
//!   nothing at all; HTTP/2: no open stream) is shut down gracefully after
//!   `idle_timeout_secs`, and dropped if it has not closed a second later.
//!   hyper has no idle timeout of its own; this watchdog counts requests in
//!   progress from the service and the life of their response bodies.
//! - *body*: `server.body_read_timeout_secs` for a whole request body,
//!   held by the ingest handlers that read one (`crate::ingest::body`).
//! - *write*: a connection whose writes make no progress for
//!   `write_timeout_secs` (a client that stopped reading) is dropped, by a
//!   wrapper around the socket ([`WriteDeadline`]).
//!
//! What the deadlines do not bound: a client that keeps completing
//! requests (each within its deadlines) holds its connection for as long as
//! it likes, and one client may open many connections (no per-address
//! limit); the connection limit is what keeps either from exhausting the
//! process.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::ServerConfig;

/// How long a connection shut down gracefully with no request in progress
/// has to close: time for its GOAWAY (and the HTTP/2 ping that follows it)
/// to make a round trip. A client that does not answer is dropped then.
const IDLE_GRACE: Duration = Duration::from_secs(1);

/// The two services a connection may get.
pub struct Routers {
    /// Every route.
    pub app: Router,
    /// What a connection from the reserve gets ([`crate::server::reserve_app`]).
    pub reserve: Router,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pool {
    General,
    Reserve,
}

impl Pool {
    fn label(self) -> &'static str {
        match self {
            Pool::General => "general",
            Pool::Reserve => "reserve",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Deadlines {
    header_read: Duration,
    body_read: Duration,
    idle: Duration,
    write: Duration,
}

/// Accepts and serves connections until `stop` completes; then stops
/// accepting, shuts every connection down gracefully and returns once all
/// have closed (their deadlines bound how long that takes).
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routers: Routers,
    config: &ServerConfig,
    stop: impl Future<Output = ()>,
) -> io::Result<()> {
    static ACCEPT_ERRORS: crate::telemetry::RateLimited =
        crate::telemetry::RateLimited::new(Duration::from_secs(1));
    let deadlines = Deadlines {
        header_read: config.header_read_timeout(),
        body_read: config.body_read_timeout(),
        idle: config.idle_timeout(),
        write: config.write_timeout(),
    };
    // Validated: reserved < max <= MAX_CONNECTIONS, so both fit a u32.
    let general_slots = config.max_connections - config.reserved_connections;
    let general = Arc::new(Semaphore::new(general_slots));
    let reserve = Arc::new(Reserve {
        open: AtomicUsize::new(0),
        size: config.reserved_connections,
        waiting: Mutex::new(VecDeque::new()),
        released: Notify::new(),
    });
    let tls = tls.map(Arc::new);
    let (closing, closing_rx) = watch::channel(false);
    let mut stop = std::pin::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (EMFILE), or a connection
                    // reset before it was taken: wait rather than spin.
                    if let Some(suppressed) = ACCEPT_ERRORS.check() {
                        tracing::warn!(suppressed, "accepting a connection failed: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        let activity = Activity::new();
        let (slot, pool, router) = match general.clone().try_acquire_owned() {
            Ok(slot) => (Slot::General(slot), Pool::General, routers.app.clone()),
            Err(_) => match reserve.admit(&activity) {
                Some(slot) => (Slot::Reserve(slot), Pool::Reserve, routers.reserve.clone()),
                None => {
                    metrics::counter!("peregrine_connections_refused_total").increment(1);
                    drop(tcp);
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            Accepted {
                tcp,
                peer,
                pool,
                slot,
                activity,
            },
            tls.clone(),
            router,
            deadlines,
            closing_rx.clone(),
        ));
    }
    drop(listener);
    let _ = closing.send(true);
    // Each connection holds its slot until it has closed.
    let _ = general.acquire_many(general_slots as u32).await;
    reserve.drained().await;
    Ok(())
}

/// The reserve: how many of its slots are taken, and its connections that
/// have not sent a request yet, oldest first: the ones a newcomer may evict.
struct Reserve {
    open: AtomicUsize,
    size: usize,
    waiting: Mutex<VecDeque<Weak<Activity>>>,
    released: Notify,
}

/// Where a reserve connection's slot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Held,
    /// Handed to the connection that evicted this one.
    Handed,
    Released,
}

impl Reserve {
    /// A reserve slot for a new connection: a free one, or the one of the
    /// oldest reserve connection without a request, which is told to close
    /// and hands its slot over at once (so the newcomer does not wait behind
    /// others for it). `None` when every reserve connection has a request.
    fn admit(self: &Arc<Self>, activity: &Arc<Activity>) -> Option<ReserveSlot> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        let free = self
            .open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.size).then_some(n + 1)
            })
            .is_ok();
        if !free {
            let handed = std::iter::from_fn(|| waiting.pop_front())
                .filter_map(|w| w.upgrade())
                .any(|victim| {
                    let mut state = victim.slot.lock().unwrap_or_else(|e| e.into_inner());
                    if *state != SlotState::Held || !victim.evictable() {
                        return false;
                    }
                    *state = SlotState::Handed;
                    victim.evict.notify_one();
                    true
                });
            if !handed {
                return None;
            }
            metrics::counter!("peregrine_connections_evicted_total").increment(1);
        }
        *activity.slot.lock().unwrap_or_else(|e| e.into_inner()) = SlotState::Held;
        waiting.push_back(Arc::downgrade(activity));
        // Entries of closed or answered connections are dropped on the way;
        // this keeps the queue near the reserve's size.
        if waiting.len() > 2 * self.size + 16 {
            waiting.retain(|w| w.upgrade().is_some_and(|a| a.evictable()));
        }
        Some(ReserveSlot {
            reserve: self.clone(),
            activity: activity.clone(),
        })
    }

    /// Once no reserve slot is held.
    async fn drained(&self) {
        loop {
            let released = self.released.notified();
            if self.open.load(Ordering::SeqCst) == 0 {
                return;
            }
            released.await;
        }
    }
}

/// A reserve slot, given back when the connection closes, unless it was
/// handed to the connection that evicted this one.
struct ReserveSlot {
    reserve: Arc<Reserve>,
    activity: Arc<Activity>,
}

impl Drop for ReserveSlot {
    fn drop(&mut self) {
        let mut state = self.activity.slot.lock().unwrap_or_else(|e| e.into_inner());
        if *state == SlotState::Held {
            *state = SlotState::Released;
            self.reserve.open.fetch_sub(1, Ordering::SeqCst);
            self.reserve.released.notify_waiters();
        }
    }
}

/// A connection's place in the limit, for as long as it is open.
enum Slot {
    General(#[allow(dead_code)] OwnedSemaphorePermit),
    Reserve(#[allow(dead_code)] ReserveSlot),
}

struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    pool: Pool,
    slot: Slot,
    activity: Arc<Activity>,
}

/// `peregrine_connections_open{pool}` for as long as it lives.
struct Open(Pool);

impl Open {
    fn new(pool: Pool) -> Self {
        metrics::gauge!("peregrine_connections_open", "pool" => pool.label()).increment(1.0);
        Open(pool)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        metrics::gauge!("peregrine_connections_open", "pool" => self.0.label()).decrement(1.0);
    }
}

async fn connection(
    accepted: Accepted,
    tls: Option<Arc<TlsAcceptor>>,
    router: Router,
    deadlines: Deadlines,
    closing: watch::Receiver<bool>,
) {
    let Accepted {
        tcp,
        peer,
        pool,
        slot,
        activity,
    } = accepted;
    let _slot = slot;
    let _open = Open::new(pool);
    let _ = tcp.set_nodelay(true);
    match tls {
        None => serve_io(tcp, router, pool, deadlines, closing, activity).await,
        Some(acceptor) => {
            let handshake = crate::tls::handshake(&acceptor, tcp, peer, deadlines.header_read);
            let tls = tokio::select! {
                tls = handshake => tls,
                () = activity.evict.notified() => None,
            };
            if let Some(tls) = tls {
                serve_io(tls, router, pool, deadlines, closing, activity).await;
            }
        }
    }
}

/// Requests in progress on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    /// Whether a request ever began: a reserve connection without one may
    /// be evicted.
    started: AtomicBool,
    idle_since: Mutex<Instant>,
    changed: Notify,
    evict: Notify,
    /// A reserve connection's slot.
    slot: Mutex<SlotState>,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            idle_since: Mutex::new(Instant::now()),
            changed: Notify::new(),
            evict: Notify::new(),
            slot: Mutex::new(SlotState::Released),
        })
    }

    fn evictable(&self) -> bool {
        !self.started.load(Ordering::SeqCst)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.started.store(true, Ordering::SeqCst);
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self.clone())
    }

    /// When the connection is due to be closed for idleness, if it is idle.
    fn idle_deadline(&self, d: &Deadlines) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|e| e.into_inner());
        Some(since + d.idle)
    }
}

/// One request in progress, until its response body is done with.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        *self.0.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in progress.
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn serve_io<I>(
    io: I,
    router: Router,
    pool: Pool,
    deadlines: Deadlines,
    mut closing: watch::Receiver<bool>,
    activity: Arc<Activity>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let busy = activity.begin();
            let router = router.clone();
            async move {
                let Ok(response) = router.oneshot(request).await;
                Ok::<_, Infallible>(response.map(|inner| Tracked { inner, _busy: busy }))
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(deadlines.header_read)
        // A reserve connection is answered once.
        .keep_alive(pool == Pool::General);
    builder.http2().timer(TokioTimer::new());
    let io = TokioIo::new(WriteDeadline::new(io, deadlines.write));
    let mut conn = std::pin::pin!(builder.serve_connection(io, service));
    // Once shut down gracefully, the connection has this long to close.
    let mut hard_close: Option<Instant> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);
    loop {
        let idle_at = activity.idle_deadline(&deadlines);
        let changed = activity.changed.notified();
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    let reason = close_reason(&*e);
                    if let Some(reason) = reason {
                        metrics::counter!("peregrine_connections_closed_total", "reason" => reason)
                            .increment(1);
                    }
                    tracing::debug!("connection closed: {e}");
                }
                break;
            }
            () = tokio::time::sleep_until(idle_at.unwrap_or_else(far)),
                if hard_close.is_none() && idle_at.is_some() =>
            {
                if activity.idle_deadline(&deadlines).is_some_and(|at| at <= Instant::now()) {
                    metrics::counter!("peregrine_connections_closed_total", "reason" => "idle")
                        .increment(1);
                    conn.as_mut().graceful_shutdown();
                    hard_close = Some(Instant::now() + IDLE_GRACE);
                }
            }
            () = activity.evict.notified(), if pool == Pool::Reserve && activity.evictable() => {
                break;
            }
            () = changed => {
                // A request ended: a reserve connection has had its answer.
                if pool == Pool::Reserve && hard_close.is_none()
                    && activity.in_flight.load(Ordering::SeqCst) == 0
                {
                    conn.as_mut().graceful_shutdown();
                    hard_close = Some(Instant::now() + IDLE_GRACE);
                }
            }
            _ = closing.wait_for(|c| *c), if hard_close.is_none() => {
                conn.as_mut().graceful_shutdown();
                // A request in progress may still be sending its body.
                hard_close = Some(Instant::now() + deadlines.body_read + deadlines.write);
            }
            () = tokio::time::sleep_until(hard_close.unwrap_or_else(far)), if hard_close.is_some() => {
                break;
            }
        }
    }
}

/// The `reason` label of a connection that ended in an error, for the
/// deadlines'.
fn close_reason(e: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut source = Some(e);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && h.is_timeout()
        {
            return Some("header_timeout");
        }
        if let Some(io) = e.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            return Some("write_timeout");
        }
        source = e.source();
    }
    None
}

/// A socket whose writes fail with `TimedOut` once one has made no progress
/// for the timeout: tokio and hyper have no write deadline of their own.
pub(crate) struct WriteDeadline<I> {
    io: I,
    timeout: Duration,
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> WriteDeadline<I> {
    pub(crate) fn new(io: I, timeout: Duration) -> Self {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
        }
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let timeout = self.timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_ready() {
            self.stalled = None;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no write progress for {} s", timeout.as_secs()),
            )));
        }
        Poll::Pending
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, r)
    }
}

/// Raises the soft limit on open files towards `wanted` (as far as the hard
/// limit allows, as Go's runtime does at start), and warns when
/// `server.max_connections` may still not fit: accepting then fails with
/// EMFILE instead of the limit refusing cleanly.
pub fn fit_file_limit(max_connections: usize) {
    // Spools, the journal, the store, module files and the runtime's own.
    let wanted = max_connections as u64 + 512;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < wanted && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: wanted.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    if lim.rlim_cur < wanted {
        tracing::warn!(
            "the open-file limit is {}, too low for server.max_connections = {max_connections} \
             (about {wanted} wanted): raise it (ulimit -n) or lower server.max_connections",
            lim.rlim_cur
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        // A pipe with a small buffer that nobody reads.
        let (a, _b) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(a, Duration::from_millis(50));
        let e = w.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_write_that_progresses_does_not() {
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = WriteDeadline::new(a, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut out)
                .await
                .unwrap();
            out.len()
        });
        w.write_all(&[1u8; 4096]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap(), 4096);
    }
}
