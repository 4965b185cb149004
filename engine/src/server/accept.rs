//! The accept loop of `sluice serve`: how many connections are served, how
//! long a client may take, and how shutdown ends them.
//!
//! `axum::serve` has no timeouts, so a client that sends half a request, or
//! opens connections and says nothing, could hold the server's sockets for
//! ever. Here every connection has a watchdog with one deadline, from what
//! the connection is doing:
//!
//! - **waiting for a request's headers** (from accept, or from the first
//!   byte of the next request on a kept-alive connection): closed after the
//!   header timeout, whatever it has sent so far;
//! - **idle** between requests on a kept-alive connection: closed (cleanly,
//!   HTTP/2 peers get a GOAWAY) after the idle timeout;
//! - **busy** (a request is being answered, including its response body):
//!   no deadline; slow handlers are bounded where they wait, not here. Its
//!   request body, though, must keep arriving: a wait of more than the
//!   header timeout for the next piece fails the body (the handler answers
//!   400 and the connection closes), so a body sent a byte now and then
//!   cannot hold a slot for ever.
//!
//! What the connection is doing comes from two cheap hooks: the socket
//! notes bytes that arrive while it is idle, and each request holds a guard
//! from the moment its headers are parsed until its response body is done.
//! The deadline is looked at when the connection's one timer fires, at
//! least every quarter of the shorter limit, so a connection closes at most
//! that late; no timer is made or reset per request.
//!
//! At most `max_connections` connections are served at once: each holds a
//! semaphore permit for its life. At the cap the loop holds the one
//! connection it just accepted until a permit frees and stops accepting, so
//! new connections (a load balancer's `/healthz` among them) wait in the
//! kernel's listen backlog rather than being refused; and since someone is
//! waiting, idle kept-alive connections are closed at once to make room. A flood of half-sent
//! requests therefore delays a new connection by at most the header
//! timeout; it cannot keep it out.
//!
//! On shutdown the listener is dropped, every connection is asked to finish
//! (HTTP/1 closes after the response in flight, HTTP/2 sends GOAWAY), and
//! whatever is still open after the grace period is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use futures::task::AtomicWaker;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::{TowerToHyperService, TowerToHyperServiceFuture};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// How `sluice serve` limits its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections served at once; beyond it new ones wait in the listen
    /// backlog (and idle kept-alive ones are closed to make room).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from
    /// accept or from the first byte of a kept-alive connection's next
    /// request; also the longest pause inside a request body.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// How long shutdown lets open connections finish before dropping them.
    pub grace: Duration,
}

/// Serves connections on `listener` until `shutdown` completes, then lets
/// open ones finish for at most `limits.grace`.
pub(super) async fn accept_loop(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(1 << 24));
    let permits = Arc::new(Semaphore::new(max));
    let open = Arc::new(OpenConnections::default());
    let builder = Arc::new(builder(&limits));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors, mostly: back off instead of
                    // spinning, and say so once a minute, not 20 times a second.
                    if last_accept_warning.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                        tracing::warn!(error = %e, "accept failed; retrying every 50 ms (is the open-files limit below --max-connections?)");
                        last_accept_warning = Some(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Accepted before its slot, so the cap is known to be in demand: at
        // most this one connection waits accepted, the rest in the backlog.
        let permit = loop {
            if let Ok(p) = permits.clone().try_acquire_owned() {
                break Some(p);
            }
            // Full: idle connections close to make room. Said again every
            // second, for connections that turn idle meanwhile.
            open.signal(Signal::SHED_IF_IDLE);
            tokio::select! {
                p = permits.clone().acquire_owned() => break p.ok(),
                () = &mut shutdown => break None,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        let Some(permit) = permit else { break };
        let _ = stream.set_nodelay(true);
        let clock = Arc::new(ConnectionClock::new());
        let io = TrackedIo::new(stream, clock.clone());
        let service = TrackedService {
            inner: TowerToHyperService::new(app.clone()),
            clock: clock.clone(),
            body_stall: limits.header_timeout,
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let id = open.add(clock.clone());
        let open = open.clone();
        tokio::spawn(async move {
            watch(conn, &clock, limits).await;
            open.remove(id);
            drop(permit);
        });
    }
    drop(listener);
    open.signal(Signal::FINISH);
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.grace, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            open = max - permits.available_permits(),
            "connections still open after the grace period; closing them"
        );
        open.signal(Signal::CLOSE);
        // Dropping a connection is immediate; this only lets the tasks run.
        let _ = tokio::time::timeout(Duration::from_secs(1), permits.acquire_many(all)).await;
    }
}

/// What the accept loop asks of a connection (bits).
struct Signal;

impl Signal {
    /// The cap is reached: close if idle.
    const SHED_IF_IDLE: u8 = 1;
    /// Shutdown: finish the request in flight, take no more.
    const FINISH: u8 = 2;
    /// The grace period is over: drop the connection now.
    const CLOSE: u8 = 4;
}

/// The open connections, for the accept loop to signal.
#[derive(Default)]
struct OpenConnections {
    next: AtomicU64,
    clocks: std::sync::Mutex<HashMap<u64, Arc<ConnectionClock>>>,
}

impl OpenConnections {
    fn add(&self, clock: Arc<ConnectionClock>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, clock);
        id
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    fn signal(&self, signal: u8) {
        for clock in self.lock().values() {
            if signal != Signal::SHED_IF_IDLE || clock.is_idle() {
                clock.raise(signal);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnectionClock>>> {
        // A panic while holding it cannot leave the map inconsistent.
        self.clocks.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn builder(limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog enforces both limits. hyper's own header timeout
        // (which starts when a connection turns idle, so it cannot tell idle
        // from slow) would make and drop a timer per request: off.
        .header_read_timeout(None)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    builder
}

/// How long an idle connection asked to close may take to do so (an
/// HTTP/2 peer must answer the GOAWAY's ping) before it is dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// What one connection is doing, shared by its socket, its requests, its
/// watchdog and the accept loop.
struct ConnectionClock {
    started: Instant,
    /// Requests whose response is not finished.
    in_flight: AtomicU32,
    /// When (ms after `started`) the current wait began.
    since_ms: AtomicU64,
    /// The current wait is for a request's headers (else: idle).
    awaiting_headers: AtomicBool,
    /// [`Signal`] bits raised by the accept loop, not yet handled.
    signals: AtomicU8,
    /// Wakes the connection's task when a signal is raised.
    waker: AtomicWaker,
}

/// What a connection without a request in flight waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Headers,
    Idle,
}

impl ConnectionClock {
    fn new() -> ConnectionClock {
        ConnectionClock {
            started: Instant::now(),
            in_flight: AtomicU32::new(0),
            since_ms: AtomicU64::new(0),
            // A new connection owes its first request's headers.
            awaiting_headers: AtomicBool::new(true),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        }
    }

    fn raise(&self, signal: u8) {
        self.signals.fetch_or(signal, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The signals raised since the last call; pending until there is one.
    fn poll_signals(&self, cx: &mut Context<'_>) -> Poll<u8> {
        self.waker.register(cx.waker());
        match self.signals.swap(0, Ordering::AcqRel) {
            0 => Poll::Pending,
            bits => Poll::Ready(bits),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn start_waiting(&self, headers: bool) {
        self.since_ms.store(self.now_ms(), Ordering::Relaxed);
        self.awaiting_headers.store(headers, Ordering::Release);
    }

    /// Bytes arrived: on an idle HTTP/1 connection they start a request.
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && !self.awaiting_headers.load(Ordering::Acquire)
        {
            self.start_waiting(true);
        }
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn request_finished(&self) {
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.start_waiting(false);
        }
    }

    /// What the connection waits for and until when; `None` while a request
    /// is in flight.
    fn deadline(&self, limits: &ConnectionLimits) -> Option<(Instant, Wait)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let wait = if self.awaiting_headers.load(Ordering::Acquire) {
            Wait::Headers
        } else {
            Wait::Idle
        };
        let limit = match wait {
            Wait::Headers => limits.header_timeout,
            Wait::Idle => limits.idle_timeout,
        };
        let since = Duration::from_millis(self.since_ms.load(Ordering::Relaxed));
        Some((self.started + since + limit, wait))
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && !self.awaiting_headers.load(Ordering::Acquire)
    }
}

/// Serves `conn`, and ends it when its deadline passes, when the cap is
/// reached while it is idle, or at shutdown.
///
/// Only three things are polled when the connection wakes: the connection,
/// its timer and an atomic; the deadline is looked at when the timer fires.
async fn watch(conn: Connection, clock: &ConnectionClock, limits: ConnectionLimits) {
    let mut conn = std::pin::pin!(conn);
    // The deadline is looked at lazily, at least this often, so a
    // connection closes at most a quarter of a limit late.
    let slack = (limits.header_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(10));
    let sleep = tokio::time::sleep(slack);
    let mut sleep = std::pin::pin!(sleep);
    // Asked to finish (idle timeout, cap reached or shutdown).
    let mut finishing = false;
    // After an idle close was asked for: drop it if it lingers.
    let mut hard_stop: Option<Instant> = None;
    loop {
        tokio::select! {
            // The connection first: it is what wakes the task nearly always.
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = sleep.as_mut() => {
                let now = Instant::now();
                if hard_stop.is_some_and(|t| t <= now) {
                    return;
                }
                match clock.deadline(&limits) {
                    None => sleep.as_mut().reset((now + slack).into()),
                    Some((at, _)) if at > now => sleep.as_mut().reset(at.min(now + slack).into()),
                    Some((_, Wait::Headers)) => {
                        tracing::debug!("request headers not received within the header timeout; closing the connection");
                        return;
                    }
                    Some((_, Wait::Idle)) => {
                        if !finishing {
                            finishing = true;
                            finish(conn.as_mut());
                        }
                        let stop = now + CLOSE_WAIT.min(limits.header_timeout);
                        hard_stop = Some(stop);
                        sleep.as_mut().reset(stop.into());
                    }
                }
            }
            signals = std::future::poll_fn(|cx| clock.poll_signals(cx)) => {
                if signals & Signal::CLOSE != 0 {
                    return;
                }
                if signals & Signal::FINISH != 0 && !finishing {
                    finishing = true;
                    finish(conn.as_mut());
                }
                if signals & Signal::SHED_IF_IDLE != 0 && !finishing && clock.is_idle() {
                    finishing = true;
                    finish(conn.as_mut());
                    let stop = Instant::now() + CLOSE_WAIT.min(limits.header_timeout);
                    hard_stop = Some(stop);
                    sleep.as_mut().reset(stop.into());
                }
            }
        }
    }
}

/// One served connection.
type Connection = hyper_util::server::conn::auto::UpgradeableConnection<
    'static,
    TokioIo<TrackedIo>,
    TrackedService,
    TokioExecutor,
>;

/// Asks `conn` to finish cleanly: HTTP/1 closes after the response in
/// flight (at once when idle), HTTP/2 sends GOAWAY and closes when its
/// open streams end.
fn finish(conn: Pin<&mut Connection>) {
    conn.graceful_shutdown();
}

/// The socket, noting bytes that arrive while the connection is idle.
struct TrackedIo {
    stream: TcpStream,
    clock: Arc<ConnectionClock>,
    /// The first bytes were looked at (an HTTP/2 preface or not).
    first_read: bool,
    /// HTTP/2: frames (pings, settings) arrive while idle; only streams count.
    http2: bool,
}

impl TrackedIo {
    fn new(stream: TcpStream, clock: Arc<ConnectionClock>) -> TrackedIo {
        TrackedIo {
            stream,
            clock,
            first_read: false,
            http2: false,
        }
    }

    fn arrived(&mut self, bytes: &[u8]) {
        if !self.first_read {
            self.first_read = true;
            if bytes.starts_with(b"PRI ") {
                // The HTTP/2 preface: the connection waits for streams, idle.
                self.http2 = true;
                self.clock.start_waiting(false);
            }
        } else if !self.http2 {
            self.clock.bytes_arrived();
        }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.stream).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.arrived(&buf.filled()[before..]);
        }
        r
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The router, with each request counted in flight until its response
/// body is done, and its body cut when it stalls.
struct TrackedService {
    inner: TowerToHyperService<axum::Router>,
    clock: Arc<ConnectionClock>,
    /// Longest wait for the next piece of a request body.
    body_stall: Duration,
}

impl hyper::service::Service<Request<Incoming>> for TrackedService {
    type Response = Response<TrackedBody>;
    type Error = std::convert::Infallible;
    type Future = TrackedFuture;

    fn call(&self, req: Request<Incoming>) -> TrackedFuture {
        self.clock.request_started();
        let limit = self.body_stall;
        TrackedFuture {
            inner: self
                .inner
                .call(req.map(|body| StallingBody::new(body, limit))),
            guard: Some(InFlight(self.clock.clone())),
        }
    }
}

/// A request body that fails when no piece of it arrives for `limit`, so a
/// client sending its body a byte now and then cannot hold a connection
/// (and its slot under the cap) for ever. The timer is made only when the
/// body first has to wait.
struct StallingBody {
    body: Incoming,
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer runs for the current wait.
    armed: bool,
}

impl StallingBody {
    fn new(body: Incoming, limit: Duration) -> StallingBody {
        StallingBody {
            body,
            limit,
            timer: None,
            armed: false,
        }
    }
}

/// A request body stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: nothing arrived for {0:?}")]
struct BodyStalled(Duration);

impl HttpBody for StallingBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.armed {
                    this.armed = true;
                    let deadline = tokio::time::Instant::now() + this.limit;
                    match &mut this.timer {
                        Some(timer) => timer.as_mut().reset(deadline),
                        None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                }
                let timer = this.timer.as_mut().expect("armed just above");
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(this.limit).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Counts one request in flight while it lives.
struct InFlight(Arc<ConnectionClock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A request being answered; its guard moves into the response body.
struct TrackedFuture {
    inner: TowerToHyperServiceFuture<axum::Router, Request<StallingBody>>,
    guard: Option<InFlight>,
}

impl Future for TrackedFuture {
    type Output = Result<Response<TrackedBody>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(resp)) => {
                let guard = this.guard.take();
                Poll::Ready(Ok(resp.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                })))
            }
            Poll::Ready(Err(never)) => match never {},
        }
    }
}

/// A response body that keeps its request counted until it is done.
struct TrackedBody {
    body: Body,
    _guard: Option<InFlight>,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
