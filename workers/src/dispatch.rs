//! From a Kafka record to a reply: decode, authenticate, call the domain handler, publish the
//! deliveries and the reply. What counts as a client error (a typed error frame, offset stored),
//! a transient failure (retried) or a poison record (dead-lettered) is decided here, once.

use crate::{sessions, Error, Role};
use futures::future::BoxFuture;
use runtime::consume::{Failure, Handler, Inbound};
use runtime::kafka::Publisher;
use runtime::metrics::{self, Metrics};
use runtime::redis::{Cluster, Keys};
use runtime::registry::Registry;
use std::sync::Arc;
use topics::bus::{decode_versioned, PresenceRecord};
use topics::{
    Auth, Delivery, EdgeMessage, Envelope, ErrorBody, ErrorCode, Event, Id, Request, Response,
    ServerFrame, SessionGrant, Target, Topics,
};
use tracing::Instrument;

/// What handlers need.
pub struct Deps {
    pub topics: Topics,
    pub publisher: Publisher,
    pub redis: Cluster,
    pub keys: Keys,
    pub registry: Registry,
    pub db: crate::db::Shards,
    pub accounts: crate::accounts::AccountChecks,
    pub ids: crate::ids::IdGen,
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

pub struct Dispatcher {
    pub deps: Arc<Deps>,
    pub role: Role,
}

impl Handler for Dispatcher {
    fn handle<'a>(&'a self, record: &'a Inbound) -> BoxFuture<'a, Result<(), Failure>> {
        Box::pin(self.handle_record(record))
    }
}

/// How an infrastructure error is treated: server errors that retrying cannot fix are poison.
pub fn classify(e: Error) -> Failure {
    match &e {
        Error::Db(mysql_async::Error::Server(s))
            if !matches!(s.code, 1205 | 1213 | 1290 | 1836 | 1040 | 1927) =>
        {
            Failure::Poison(e.to_string())
        }
        _ => Failure::Transient(e.to_string()),
    }
}

impl Dispatcher {
    async fn handle_record(&self, record: &Inbound) -> Result<(), Failure> {
        let env = if self.role == Role::Presence {
            match decode_versioned::<PresenceRecord>(&record.payload) {
                Ok(PresenceRecord::Edge { edge_event, .. }) => {
                    return crate::presence::apply_edge_event(&self.deps, edge_event)
                        .await
                        .map_err(classify);
                }
                Ok(PresenceRecord::Request(env)) => *env,
                Err(e) => return Err(Failure::Poison(e.to_string())),
            }
        } else {
            Envelope::decode(&record.payload).map_err(|e| Failure::Poison(e.to_string()))?
        };
        if env.domain() != self.role.domain() {
            return Err(Failure::Poison(format!(
                "{} does not belong on this topic",
                env.request.kind()
            )));
        }
        let span = tracing::info_span!("request", kind = env.request.kind(), edge = %env.edge, trace_id = record.traceparent.as_deref().and_then(runtime::telemetry::trace_id).unwrap_or(""));
        let result = async {
            let caller = authenticate(&self.deps, &env).await?;
            route(&Ctx {
                env: &env,
                caller,
                deps: &self.deps,
            })
            .await
        }
        .instrument(span)
        .await;
        let kind = env.request.kind();
        match result {
            Ok(outcome) => {
                self.deps
                    .metrics
                    .inc(metrics::REQUESTS_HANDLED_TOTAL, &[("kind", kind)]);
                self.finish(&env, outcome, record).await
            }
            Err(Error::Reply(err)) => {
                self.deps.metrics.inc(
                    metrics::REQUEST_ERRORS_TOTAL,
                    &[("kind", kind), ("code", err.code.as_str())],
                );
                let revoked = revokes(&env, &err);
                self.reply_error(&env, err, record).await?;
                if revoked {
                    // The socket's session is gone: close it.
                    self.send_edge(&env, &close_message(&env), record).await?;
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %e, kind, "request failed");
                let f = classify(e);
                if matches!(f, Failure::Poison(_)) {
                    self.reply_error(
                        &env,
                        ErrorBody::new(ErrorCode::Internal, "the request could not be processed"),
                        record,
                    )
                    .await?;
                }
                Err(f)
            }
        }
    }

    async fn publish(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        record: &Inbound,
    ) -> Result<(), Failure> {
        self.deps
            .publisher
            .send(topic, key, payload, record.traceparent.as_deref())
            .await
            .map_err(|e| Failure::Transient(e.to_string()))
    }

    async fn finish(
        &self,
        env: &Envelope,
        outcome: Outcome,
        record: &Inbound,
    ) -> Result<(), Failure> {
        // The reply is acknowledged by the broker before any delivery is published. Deliveries
        // reach the requesting edge through the router, on the same single-partition edge topic,
        // so they land after the reply: a request that closes its own socket (logout, account
        // deletion) is always answered before `session_revoked` and the close.
        if let Some(response) = outcome.response {
            let msg = reply_message(env, response, outcome.session, outcome.clear_session);
            self.send_edge(env, &msg, record).await?;
        }
        let deliver_topic = self.deps.topics.deliver();
        for d in &outcome.deliveries {
            let payload = serde_json::to_vec(d).expect("deliveries serialise");
            self.publish(&deliver_topic, &d.key(), &payload, record)
                .await?;
        }
        Ok(())
    }

    async fn send_edge(
        &self,
        env: &Envelope,
        msg: &EdgeMessage,
        record: &Inbound,
    ) -> Result<(), Failure> {
        let payload = serde_json::to_vec(msg).expect("edge messages serialise");
        self.publish(
            &self.deps.topics.edge(&env.edge),
            &env.conn.to_string(),
            &payload,
            record,
        )
        .await
    }

    async fn reply_error(
        &self,
        env: &Envelope,
        err: ErrorBody,
        record: &Inbound,
    ) -> Result<(), Failure> {
        self.send_edge(env, &error_message(env, err), record).await
    }
}

/// The record that answers `env` with `response` on its edge.
pub fn reply_message(
    env: &Envelope,
    response: Response,
    session: Option<SessionGrant>,
    clear_session: bool,
) -> EdgeMessage {
    EdgeMessage::Reply {
        conn: env.conn,
        req: env.req,
        frame: ServerFrame::Reply {
            rid: env.rid.clone(),
            data: response,
        }
        .to_json(),
        error: None,
        session,
        clear_session,
    }
}

/// The record that answers `env` with an error frame.
pub fn error_message(env: &Envelope, err: ErrorBody) -> EdgeMessage {
    EdgeMessage::Reply {
        conn: env.conn,
        req: env.req,
        error: Some(err.code),
        frame: ServerFrame::error(env.rid.clone(), err).to_json(),
        session: None,
        clear_session: false,
    }
}

/// Why a socket whose session is gone is closed.
const SESSION_GONE: &str = "session expired or revoked";

/// The record that closes the socket `env` came from, its session being gone.
pub fn close_message(env: &Envelope) -> EdgeMessage {
    EdgeMessage::Close {
        conns: vec![env.conn],
        frame: ServerFrame::Event {
            data: Event::SessionRevoked {
                reason: SESSION_GONE.into(),
            },
        }
        .to_json(),
        reason: SESSION_GONE.into(),
    }
}

/// Whether a refusal means the socket's session is gone (then the socket is closed after the
/// error frame).
pub fn revokes(env: &Envelope, err: &ErrorBody) -> bool {
    err.code == ErrorCode::Unauthorized && matches!(env.auth, Auth::Session { .. })
}

/// Who sent the request. Anonymous requests need no session; the rest need a live one. A frame
/// on an open socket always names its session: if that session is gone, even an anonymous
/// request (a `ping`) is refused, so the socket is closed rather than kept alive by pings.
pub async fn authenticate(deps: &Deps, env: &Envelope) -> crate::Result<Option<Caller>> {
    let anonymous = env.request.is_anonymous() && !matches!(env.auth, Auth::Session { .. });
    let found = match &env.auth {
        Auth::None => None,
        Auth::Token { token_hash } => sessions::resolve_token(deps, token_hash).await?,
        Auth::Session {
            session_id,
            user_id,
        } => sessions::load(deps, session_id)
            .await?
            .filter(|s| s.user_id == *user_id)
            .map(|s| (session_id.clone(), s)),
    };
    let Some((session_id, rec)) = found else {
        return if anonymous {
            Ok(None)
        } else {
            Err(crate::refuse(
                ErrorCode::Unauthorized,
                "invalid or expired session",
            ))
        };
    };
    // A bearer token (HTTP call or handshake) must also belong to an account that still exists
    // in the database: a session write lost in a Redis failover must never let a deleted user
    // back in. Deleting twice stays possible, so a retried delete completes.
    if matches!(env.auth, Auth::Token { .. })
        && !matches!(env.request, Request::UserDelete)
        && !crate::users::exists(deps, rec.user_id).await?
    {
        sessions::revoke(deps, &session_id, &rec).await?;
        return Err(crate::refuse(
            ErrorCode::Unauthorized,
            "invalid or expired session",
        ));
    }
    Ok(Some(Caller {
        user_id: rec.user_id,
        username: rec.username,
        session_id,
    }))
}

/// Call the handler of the request's kind.
pub async fn route(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    let req = &ctx.env.request;
    if !req.is_anonymous() {
        ctx.caller()?;
    }
    match req {
        Request::Ping => Ok(Response::Pong.into()),
        Request::Login {
            username,
            password,
            device,
        } => crate::auth::login(ctx, username, password, device.as_deref()).await,
        Request::Verify => crate::auth::verify(ctx).await,
        Request::Refresh => crate::auth::refresh(ctx).await,
        Request::SessionList => crate::auth::list(ctx).await,
        Request::Logout { session_id } => crate::auth::logout(ctx, session_id.as_deref()).await,
        Request::LogoutAll => crate::auth::logout_all(ctx).await,
        Request::UserCreate { username, password } => {
            crate::users::create(ctx, username, password).await
        }
        Request::Me => crate::users::me(ctx).await,
        Request::UserLookup { username, user_id } => {
            crate::users::lookup(ctx, username.as_deref(), *user_id).await
        }
        Request::UserDelete => crate::users::delete(ctx).await,
        Request::InviteSend { code } => crate::invites::send(ctx, code).await,
        Request::InviteRespond { user_id, accept } => {
            crate::invites::respond(ctx, *user_id, *accept).await
        }
        Request::InviteList => crate::invites::list(ctx).await,
        Request::ConnectionRemove { user_id } => crate::invites::remove(ctx, *user_id).await,
        Request::DmOpen { user_id } => crate::dms::open(ctx, *user_id).await,
        Request::DmList => crate::dms::list(ctx).await,
        Request::DmHistory {
            conversation_id,
            before_seq,
            after_seq,
            limit,
        } => crate::dms::history(ctx, *conversation_id, *before_seq, *after_seq, *limit).await,
        Request::DmSend {
            conversation_id,
            client_msg_id,
            text,
        } => crate::dms::send(ctx, *conversation_id, client_msg_id, text).await,
        Request::DmRead {
            conversation_id,
            seq,
        } => crate::dms::read(ctx, *conversation_id, *seq).await,
        Request::DmSync { since } => crate::dms::sync(ctx, since).await,
        Request::OnlineList { cursor, limit } => {
            crate::presence::online(ctx, cursor.as_deref(), *limit).await
        }
        Request::BroadcastSend { text } => crate::presence::broadcast(ctx, text).await,
    }
}
