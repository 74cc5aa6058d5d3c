//! Serving connections: the edge accepts TCP connections itself and runs each with hyper's
//! HTTP/1 connection (upgrades on, HTTP/2 off: an h2c prior-knowledge preface is refused), with
//! bounds hyper does not set on its own through warp:
//!
//! - a new connection must send its first request head within `header_read_timeout_ms`, and on a
//!   kept-alive connection a head must be complete that long after its first byte;
//! - a kept-alive connection with no request in progress is closed after
//!   `keep_alive_timeout_ms` idle;
//! - a request must be answered within `header_read_timeout_ms + request_timeout_ms` of its head
//!   (the worker wait is already bounded by `request_timeout_ms`, so what runs out here is a body
//!   that trickles in): it is answered 400 and the connection closed;
//! - at most `max_handshakes` connections may be waiting for their first answer (head, body and,
//!   for `/ws`, the session check); one more is answered 503 and closed at once.
//!
//! hyper's own `header_read_timeout` cannot give the first two: its timer also runs while a
//! kept-alive connection idles between requests. [`Watched`] keeps both deadlines at the socket
//! and fails the read that outlives one, so hyper drops the connection.

use runtime::metrics::{self, Metrics};
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use warp::filters::BoxedFilter;
use warp::http::{header, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Reply};

/// The time bounds of every connection of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_read: Duration,
    pub keep_alive: Duration,
    /// From a complete request head to its answer.
    pub request: Duration,
}

impl Limits {
    pub fn of(s: &crate::EdgeSettings) -> Limits {
        Limits {
            header_read: Duration::from_millis(s.header_read_timeout_ms),
            keep_alive: Duration::from_millis(s.keep_alive_timeout_ms),
            request: Duration::from_millis(s.header_read_timeout_ms + s.request_timeout_ms),
        }
    }
}

/// The peer address of a connection, in every request's extensions.
#[derive(Clone, Copy, Debug)]
pub struct Remote(pub SocketAddr);

/// The peer address of the connection a request came on (what `warp::addr::remote()` gives
/// under `warp::serve`).
pub fn remote() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<Remote>().map(|r: Option<Remote>| r.map(|Remote(a)| a))
}

/// Why the edge closed a connection (label of `sb_http_connections_closed_total`).
pub const HEADER_TIMEOUT: &str = "header_timeout";
pub const IDLE_TIMEOUT: &str = "idle_timeout";
pub const REQUEST_TIMEOUT: &str = "request_timeout";
pub const HANDSHAKES_FULL: &str = "handshakes_full";

/// What a connection refused for `max_handshakes` gets before it is closed.
pub const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
content-length: 74\r\nconnection: close\r\n\r\n\
{\"code\":\"unavailable\",\"message\":\"too many connections are opening; retry\"}";

/// One connection's progress, shared by its socket ([`Watched`]) and its service.
#[derive(Debug)]
pub struct Clock {
    limits: Limits,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Requests whose answer is not ready yet.
    serving: usize,
    /// Answered with 101: the socket is a WebSocket now and none of these bounds apply.
    upgraded: bool,
    /// Accepted (before the first answer), or the last answer (after it).
    idle_since: Instant,
    /// First byte of a request head that is not complete yet (between requests).
    head_since: Option<Instant>,
    /// Held until the first answer: counts towards `max_handshakes`.
    permit: Option<OwnedSemaphorePermit>,
    answered: bool,
    /// The task waiting on the socket: woken when an answer sets a deadline, as hyper may have
    /// polled the read (with no deadline then) before the answer was ready.
    reader: Option<Waker>,
}

impl Clock {
    pub fn new(limits: Limits, permit: Option<OwnedSemaphorePermit>) -> Clock {
        Clock {
            limits,
            state: Mutex::new(State {
                serving: 0,
                upgraded: false,
                idle_since: Instant::now(),
                head_since: None,
                permit,
                answered: false,
                reader: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived from the client.
    pub fn on_bytes(&self) {
        let mut s = self.state();
        if s.serving == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
        }
    }

    /// A request head is complete.
    pub fn request_started(&self) {
        let mut s = self.state();
        s.serving += 1;
        s.head_since = None;
    }

    /// A request's answer is ready; `upgraded` when it switches protocols.
    pub fn request_done(&self, upgraded: bool) {
        let reader = {
            let mut s = self.state();
            s.serving = s.serving.saturating_sub(1);
            s.permit = None;
            s.answered = true;
            s.upgraded |= upgraded;
            if s.serving == 0 {
                s.idle_since = Instant::now();
            }
            s.reader.take()
        };
        if let Some(w) = reader {
            w.wake();
        }
    }

    /// The socket's reader waits for bytes.
    fn park(&self, waker: &Waker) {
        let mut s = self.state();
        if !s.reader.as_ref().is_some_and(|w| w.will_wake(waker)) {
            s.reader = Some(waker.clone());
        }
    }

    /// Whether this connection still counts towards `max_handshakes`.
    pub fn holds_permit(&self) -> bool {
        self.state().permit.is_some()
    }

    /// When the connection is to be closed if no request head completes first, and why.
    pub fn deadline(&self) -> Option<(Instant, &'static str)> {
        let s = self.state();
        if s.upgraded || s.serving > 0 {
            None
        } else if !s.answered {
            Some((s.idle_since + self.limits.header_read, HEADER_TIMEOUT))
        } else if let Some(h) = s.head_since {
            Some((h + self.limits.header_read, HEADER_TIMEOUT))
        } else {
            Some((s.idle_since + self.limits.keep_alive, IDLE_TIMEOUT))
        }
    }
}

/// A socket that fails its read once the connection's [`Clock`] deadline passes, so hyper drops
/// the connection. Writes pass through.
pub struct Watched<T> {
    io: T,
    clock: Arc<Clock>,
    metrics: Metrics,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> Watched<T> {
    pub fn new(io: T, clock: Arc<Clock>, metrics: Metrics) -> Watched<T> {
        Watched {
            io,
            clock,
            metrics,
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.clock.on_bytes();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.clock.park(cx.waker());
                let Some((at, why)) = this.clock.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(at) {
                    this.sleep.as_mut().reset(at);
                    this.armed = Some(at);
                }
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.metrics
                    .inc(metrics::HTTP_CONNECTIONS_CLOSED_TOTAL, &[("reason", why)]);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

type Routes = BoxedFilter<(Response,)>;

/// The routes as hyper's service: puts the peer address into each request, tells the
/// connection's [`Clock`] when a head is complete and when its answer is ready, and answers a
/// request that outlives `Limits::request` with 400 and `Connection: close`.
struct Service<H> {
    inner: H,
    clock: Arc<Clock>,
    metrics: Metrics,
    remote: SocketAddr,
    limit: Duration,
}

type Request = hyper::Request<hyper::body::Incoming>;

impl<H> hyper::service::Service<Request> for Service<H>
where
    H: hyper::service::Service<Request, Response = Response, Error = Infallible>,
    H::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request) -> Self::Future {
        req.extensions_mut().insert(Remote(self.remote));
        self.clock.request_started();
        let answer = self.inner.call(req);
        let (clock, metrics, limit) = (self.clock.clone(), self.metrics.clone(), self.limit);
        Box::pin(async move {
            let resp = match tokio::time::timeout(limit, answer).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    metrics.inc(
                        metrics::HTTP_CONNECTIONS_CLOSED_TOTAL,
                        &[("reason", REQUEST_TIMEOUT)],
                    );
                    too_slow()
                }
            };
            clock.request_done(resp.status() == StatusCode::SWITCHING_PROTOCOLS);
            Ok(resp)
        })
    }
}

/// The answer to a request that did not arrive (its body) in time.
pub fn too_slow() -> Response {
    let body = warp::reply::json(&serde_json::json!({
        "code": topics::ErrorCode::InvalidInput,
        "message": "the request did not arrive in time",
    }));
    let mut r = warp::reply::with_status(body, StatusCode::BAD_REQUEST).into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Accept on `listener` until `stop`, serving each connection with `routes` in `tracker`.
/// At `stop`, a connection with a request in progress finishes it and closes; any other is
/// closed at once.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: Limits,
    max_handshakes: usize,
    metrics: Metrics,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(max_handshakes));
    loop {
        let (stream, remote) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // out of descriptors, say: let some close before trying again
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            metrics.inc(
                metrics::HTTP_CONNECTIONS_CLOSED_TOTAL,
                &[("reason", HANDSHAKES_FULL)],
            );
            // one non-blocking write into an empty send buffer; then closed
            let _ = stream.try_write(BUSY);
            continue;
        };
        let svc = hyper_util::service::TowerToHyperService::new(warp::service(routes.clone()));
        tracker.spawn(connection(
            stream,
            remote,
            svc,
            limits,
            permit,
            metrics.clone(),
            stop.clone(),
        ));
    }
}

async fn connection<H>(
    stream: TcpStream,
    remote: SocketAddr,
    svc: H,
    limits: Limits,
    permit: OwnedSemaphorePermit,
    metrics: Metrics,
    stop: CancellationToken,
) where
    H: hyper::service::Service<Request, Response = Response, Error = Infallible>,
    H::Future: Send + 'static,
{
    let clock = Arc::new(Clock::new(limits, Some(permit)));
    let io = hyper_util::rt::TokioIo::new(Watched::new(stream, clock.clone(), metrics.clone()));
    let service = Service {
        inner: svc,
        clock: clock.clone(),
        metrics,
        remote,
        limit: limits.request,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = stop.cancelled() => {
            if clock.deadline().is_some() {
                // no request in progress: idle, or a head still arriving; nothing to finish
                return;
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, %remote, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        keep_alive: Duration::from_secs(75),
        request: Duration::from_secs(15),
    };

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let sem = Arc::new(Semaphore::new(1));
        let clock = Clock::new(LIMITS, Some(sem.clone().try_acquire_owned().unwrap()));
        let t0 = Instant::now();
        assert!(clock.holds_permit());
        assert_eq!(sem.available_permits(), 0);
        // a new connection: the first head is due header_read after accept, bytes or not
        assert_eq!(
            clock.deadline(),
            Some((t0 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        clock.on_bytes();
        assert_eq!(
            clock.deadline(),
            Some((t0 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        // while a request is served nothing is due
        clock.request_started();
        assert_eq!(clock.deadline(), None);
        clock.on_bytes(); // its body
        tokio::time::advance(Duration::from_secs(1)).await;
        clock.request_done(false);
        assert!(!clock.holds_permit());
        assert_eq!(
            sem.available_permits(),
            1,
            "the first answer frees the permit"
        );
        let t1 = Instant::now();
        // kept alive: idle until keep_alive, then a head has header_read from its first byte
        assert_eq!(
            clock.deadline(),
            Some((t1 + LIMITS.keep_alive, IDLE_TIMEOUT))
        );
        tokio::time::advance(Duration::from_secs(30)).await;
        clock.on_bytes();
        let t2 = Instant::now();
        assert_eq!(
            clock.deadline(),
            Some((t2 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        clock.on_bytes();
        assert_eq!(
            clock.deadline(),
            Some((t2 + LIMITS.header_read, HEADER_TIMEOUT))
        );
        clock.request_started();
        clock.request_done(true);
        assert_eq!(
            clock.deadline(),
            None,
            "a WebSocket has its own idle timeout"
        );
        clock.on_bytes();
        assert_eq!(clock.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_fails_its_read_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let clock = Arc::new(Clock::new(LIMITS, None));
        let metrics = Metrics::default();
        let mut w = Watched::new(server, clock.clone(), metrics.clone());
        let (mut cr, mut cw) = tokio::io::split(client);
        cw.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        let n = w.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n");
        let t0 = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(t0.elapsed(), LIMITS.header_read);
        assert!(metrics.render().contains("reason=\"header_timeout\"} 1"));
        // writes pass through
        w.write_all(b"bye").await.unwrap();
        w.flush().await.unwrap();
        assert_eq!(w.is_write_vectored(), w.io.is_write_vectored());
        let n = w.write_vectored(&[io::IoSlice::new(b"!")]).await.unwrap();
        assert_eq!(n, 1);
        w.shutdown().await.unwrap();
        let mut got = Vec::new();
        cr.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye!");
        // the deadline moves with the connection: an answered request re-arms it
        clock.request_started();
        clock.request_done(false);
        let t1 = Instant::now();
        let e = w.read(&mut buf).await.unwrap_err();
        assert_eq!(e.to_string(), IDLE_TIMEOUT);
        assert_eq!(t1.elapsed(), LIMITS.keep_alive);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_arms_the_idle_deadline_of_a_waiting_read() {
        let (_client, server) = tokio::io::duplex(64);
        let clock = Arc::new(Clock::new(LIMITS, None));
        let mut w = Watched::new(server, clock.clone(), Metrics::default());
        clock.request_started();
        let mut buf = [0u8; 8];
        let mut read = std::pin::pin!(w.read(&mut buf));
        // hyper polls the read while the request is served (no deadline yet), and may not poll it
        // again once the answer is written: the answer must wake it
        struct Flag(std::sync::atomic::AtomicBool);
        impl futures::task::ArcWake for Flag {
            fn wake_by_ref(me: &Arc<Self>) {
                me.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = Arc::new(Flag(false.into()));
        let waker = futures::task::waker(flag.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(read.as_mut().poll(&mut cx).is_pending());
        let t0 = Instant::now();
        clock.request_done(false);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        let e = tokio::time::timeout(LIMITS.keep_alive * 2, read)
            .await
            .expect("the answer woke the read")
            .unwrap_err();
        assert_eq!(e.to_string(), IDLE_TIMEOUT);
        assert_eq!(t0.elapsed(), LIMITS.keep_alive);
    }

    #[test]
    fn limits_and_the_busy_answer() {
        let s = crate::EdgeSettings::default();
        let l = Limits::of(&s);
        assert_eq!(l.header_read, Duration::from_secs(10));
        assert_eq!(l.keep_alive, Duration::from_secs(75));
        assert_eq!(
            l.request,
            Duration::from_millis(10_000 + s.request_timeout_ms)
        );
        let text = std::str::from_utf8(BUSY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "unavailable");
        let r = too_slow();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }
}
