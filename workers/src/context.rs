//! What every request handler sees: the shared dependencies ([`Deps`]), the request being handled
//! and its caller ([`Ctx`]), and what a handler produces ([`Outcome`]). Handlers import this
//! module; [`crate::dispatch`] builds a [`Ctx`] per record and calls the handler of its domain.

use runtime::kafka::Publisher;
use runtime::metrics::Metrics;
use runtime::redis::{Cluster, Keys};
use runtime::registry::Registry;
use topics::{
    Delivery, Envelope, ErrorCode, Event, Id, Response, ServerFrame, SessionGrant, Target, Topics,
};

/// What handlers need.
pub struct Deps {
    pub topics: Topics,
    pub publisher: Publisher,
    pub redis: Cluster,
    /// A second cluster connection, for revocations only: they wait on it for replicas (`WAIT`
    /// blocks the connection it is sent on), so the shared one never waits behind them.
    pub revocations: Cluster,
    pub keys: Keys,
    pub registry: Registry,
    pub db: crate::db::Shards,
    pub accounts: crate::accounts::AccountChecks,
    pub ids: crate::ids::IdGen,
    /// The lease of `ids`' node, renewed while the worker runs.
    pub id_lease: crate::ids::Lease,
    pub limits: crate::Limits,
    pub metrics: Metrics,
}

/// The authenticated sender of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub user_id: Id,
    pub username: String,
    pub session_id: String,
}

/// One request being handled.
pub struct Ctx<'a> {
    pub env: &'a Envelope,
    pub caller: Option<Caller>,
    pub deps: &'a Deps,
}

impl Ctx<'_> {
    /// The caller, for requests that need one (every request but ping, sign-up and login).
    pub fn caller(&self) -> crate::Result<&Caller> {
        self.caller
            .as_ref()
            .ok_or_else(|| crate::refuse(ErrorCode::Unauthorized, "no session"))
    }

    /// A key for idempotent retries of this very request.
    pub fn request_key(&self) -> String {
        format!("{}/{}", self.env.edge, self.env.req)
    }
}

/// What a handled request produces.
#[derive(Debug, Default)]
pub struct Outcome {
    pub response: Option<Response>,
    pub session: Option<SessionGrant>,
    pub clear_session: bool,
    pub deliveries: Vec<Delivery>,
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Self {
        Outcome {
            response: Some(r),
            ..Default::default()
        }
    }
}

impl Outcome {
    pub fn deliver(mut self, d: Delivery) -> Self {
        self.deliveries.push(d);
        self
    }
}

/// A delivery of one event to every device of these users.
pub fn event_to(users: Vec<Id>, event: Event) -> Delivery {
    Delivery::new(
        Target::Users { user_ids: users },
        ServerFrame::Event { data: event }.to_json(),
    )
}
