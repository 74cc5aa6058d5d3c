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

mod clock;

pub use clock::{Clock, Watched};

use runtime::metrics::Metrics;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
                    metrics.http_connections_closed.get(REQUEST_TIMEOUT).inc();
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
                    tracing::warn!(error = %runtime::telemetry::Chain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            metrics.http_connections_closed.get(HANDSHAKES_FULL).inc();
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
        tracing::debug!(error = %runtime::telemetry::Chain(&e), %remote, "connection ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
