//! The Rust client of the Switchboard protocol — the Rust SDK (guide: `client/README.md`).
//!
//! - [`Http`]: sign up, log in, every `/api/v1` endpoint and `POST /api/v1/rpc` with a typed
//!   [`topics::Request`]; answers come back as [`topics::Response`] or [`Error::Api`] carrying the
//!   [`topics::ErrorBody`] and the status. Raw calls (`(status, JSON)`) stay available for callers
//!   that check exact bodies.
//! - [`Socket`]: a WebSocket opened with the `switchboard.v1` and `auth.<token>` subprotocols,
//!   typed [`topics::ClientFrame`]s out (each with a generated `rid`), typed
//!   [`topics::ServerFrame`]s in; [`Socket::request`] matches the reply by `rid` and queues the
//!   events that arrive meanwhile (a bounded queue, see [`WhenFull`]).
//! - Reconnecting: [`Backoff`] (bounded exponential, with jitter) and [`Connector::reconnect`];
//!   [`Seqs`] remembers the highest sequence number seen per conversation, and
//!   [`Socket::sync`] asks `dm.sync` for everything after it.
//!
//! Plain `ws://` / `http://` only: TLS is left to a proxy in front (the platform's nginx
//! terminates it).

mod backoff;
mod connect;
mod http;
mod seqs;
mod socket;

pub use backoff::{retry, Backoff};
pub use connect::{ws_url, ConnectOptions, Connector};
pub use http::{decode, request_id, Http, HttpBuilder, Session};
pub use seqs::{Seqs, SyncPlan, SYNC_MAX_CONVERSATIONS};
pub use socket::{Read, Socket, WhenFull, Ws};

/// The WebSocket library this client speaks through (for [`tungstenite::Message`] and
/// [`tungstenite::protocol::WebSocketConfig`]).
pub use tokio_tungstenite::tungstenite;

use topics::ErrorBody;

/// What can go wrong talking to Switchboard.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The base URL cannot be used.
    #[error("bad url {url}: {why}")]
    Url { url: String, why: String },
    /// The token holds characters a header cannot carry.
    #[error("the token cannot travel in a header")]
    BadToken,
    /// Binding the chosen local address failed.
    #[error("binding the local address: {0}")]
    Bind(#[source] std::io::Error),
    /// The TCP connection could not be made.
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    /// The server answered the WebSocket handshake with an HTTP error.
    #[error("the handshake was refused with {status}")]
    Refused {
        status: u16,
        /// The JSON error body, when there was one.
        body: Option<ErrorBody>,
    },
    /// The WebSocket failed (handshake or later).
    #[error("websocket: {0}")]
    WebSocket(#[source] Box<tungstenite::Error>),
    /// The HTTP request failed before an answer came.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server answered with an error: over HTTP with its status, over WebSocket without.
    #[error("{}: {}", error.code.as_str(), error.message)]
    Api {
        status: Option<u16>,
        error: ErrorBody,
    },
    /// An HTTP answer that is neither a reply nor an error body (a proxy's page, say).
    #[error("unexpected answer {status}: {body}")]
    Unexpected { status: u16, body: String },
    /// A reply of another kind than the request calls for.
    #[error("unexpected reply {0}")]
    UnexpectedReply(String),
    /// A text frame from the server that is not a server frame.
    #[error("bad server frame {text}: {source}")]
    BadFrame {
        text: String,
        #[source]
        source: serde_json::Error,
    },
    /// Nothing came in time.
    #[error("timed out")]
    Timeout,
    /// The socket closed (with the close code, when there was a close frame).
    #[error("the socket closed (code {code:?})")]
    Closed { code: Option<u16> },
    /// [`WhenFull::Fail`]: this many events were waiting unread when another arrived.
    #[error("{0} events are queued unread")]
    Backlog(usize),
}

impl From<tungstenite::Error> for Error {
    fn from(e: tungstenite::Error) -> Self {
        Error::WebSocket(Box::new(e))
    }
}

impl Error {
    /// Whether trying again later can help: transport failures, timeouts, closed sockets and
    /// the statuses that mean "busy" (429, 502, 503, 504). A refused session (401), a foreign
    /// origin (403) or bad input will not change by retrying.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Bind(_)
            | Error::Connect(_)
            | Error::WebSocket(_)
            | Error::Http(_)
            | Error::Timeout
            | Error::Closed { .. } => true,
            Error::Refused { status, .. }
            | Error::Unexpected { status, .. }
            | Error::Api {
                status: Some(status),
                ..
            } => matches!(status, 429 | 502 | 503 | 504),
            Error::Api {
                status: None,
                error,
            } => matches!(
                error.code,
                topics::ErrorCode::RateLimited | topics::ErrorCode::Unavailable
            ),
            Error::Url { .. }
            | Error::BadToken
            | Error::UnexpectedReply(_)
            | Error::BadFrame { .. }
            | Error::Backlog(_) => false,
        }
    }

    /// The error body the server sent, if this is one.
    pub fn api(&self) -> Option<&ErrorBody> {
        match self {
            Error::Api { error, .. } => Some(error),
            Error::Refused { body, .. } => body.as_ref(),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The README's example compiles (`cargo test -p switchboard-client --doc`).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct Readme;

#[cfg(test)]
mod tests {
    use super::*;
    use topics::ErrorCode;

    #[test]
    fn retries_what_can_change_and_nothing_else() {
        let refused = |status| Error::Refused { status, body: None };
        assert!(refused(503).is_retryable());
        assert!(refused(429).is_retryable());
        assert!(!refused(401).is_retryable());
        assert!(!refused(403).is_retryable());
        assert!(Error::Timeout.is_retryable());
        assert!(Error::Closed { code: Some(1001) }.is_retryable());
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(Error::Connect(io()).is_retryable());
        assert!(Error::Bind(io()).is_retryable());
        let api = |status, code| Error::Api {
            status,
            error: ErrorBody::new(code, "x"),
        };
        assert!(api(None, ErrorCode::Unavailable).is_retryable());
        assert!(api(None, ErrorCode::RateLimited).is_retryable());
        assert!(!api(None, ErrorCode::NotFound).is_retryable());
        assert!(api(Some(502), ErrorCode::Internal).is_retryable());
        assert!(!api(Some(400), ErrorCode::InvalidInput).is_retryable());
        assert!(!Error::BadToken.is_retryable());
        assert!(!Error::Backlog(3).is_retryable());
        assert!(Error::Unexpected {
            status: 502,
            body: String::new()
        }
        .is_retryable());
    }

    #[test]
    fn names_the_server_error() {
        let e = Error::Api {
            status: Some(404),
            error: ErrorBody::new(ErrorCode::NotFound, "no such user"),
        };
        assert_eq!(e.to_string(), "not_found: no such user");
        assert_eq!(e.api().map(|b| b.code), Some(ErrorCode::NotFound));
        assert!(Error::Timeout.api().is_none());
    }
}
