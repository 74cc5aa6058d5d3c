//! The Switchboard contract: topic names, the envelope, every request / reply / event schema and
//! the error codes. Pure data and validation, no I/O — edges, workers, the router, the load
//! generator and the tests all speak through these types.

pub mod bus;
pub mod device;
pub mod error;
pub mod frames;
pub mod id;
pub mod kinds;
pub mod names;
#[cfg(feature = "schema")]
pub mod schema;
pub mod validate;

pub use bus::{Auth, Delivery, EdgeEvent, EdgeMessage, Envelope, SessionGrant, Target};
pub use error::{ErrorBody, ErrorCode};
pub use frames::{ClientFrame, Event, Request, Response, ServerFrame};
pub use id::Id;
pub use kinds::{Kind, KINDS};
pub use names::{Domain, Topics};

/// Version of the envelope and frame wire format. Bumped on incompatible change; readers reject
/// records whose version they do not know (they go to the dead-letter topic).
pub const WIRE_VERSION: u16 = 1;

/// WebSocket subprotocol a client must offer (and the edge echoes).
pub const WS_PROTOCOL: &str = "switchboard.v1";
/// Prefix of the second subprotocol entry that carries the session token: `auth.<token>`.
pub const WS_AUTH_PROTOCOL_PREFIX: &str = "auth.";
/// Name of the HttpOnly session cookie the web page uses.
pub const SESSION_COOKIE: &str = "sb_session";
/// Its name when the edge sets `Secure` cookies: the `__Host-` prefix makes browsers accept it
/// only from a secure origin, with `Path=/` and no `Domain`, so a sibling subdomain or a plain
/// HTTP page cannot plant or shadow it.
pub const SECURE_SESSION_COOKIE: &str = "__Host-sb_session";

/// Errors of decoding or validating contract data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported wire version {0}")]
    Version(u16),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
