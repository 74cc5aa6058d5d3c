//! From a Kafka record to a reply: decode, authenticate, call the domain handler, publish the
//! deliveries and the reply. What counts as a client error (a typed error frame, offset stored),
//! a transient failure (retried) or a poison record (dead-lettered) is decided here, once.

use crate::context::{Caller, Ctx, Deps, Outcome};
use crate::{mysql, sessions, Error, Role};
use futures::future::BoxFuture;
use runtime::consume::{Failure, Handler, Inbound};
use runtime::metrics;
use std::sync::Arc;
use topics::bus::{decode_versioned, PresenceRecord};
use topics::{
    Auth, Domain, EdgeMessage, Envelope, ErrorBody, ErrorCode, Event, Request, Response,
    ServerFrame, SessionGrant,
};
use tracing::Instrument;

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
    let reason = runtime::telemetry::Chain(&e).to_string();
    match &e {
        Error::Db(mysql_async::Error::Server(s)) if !mysql::retry_may_fix(s.code) => {
            Failure::Poison(reason)
        }
        _ => Failure::Transient(reason),
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
        if env.domain() != self.role {
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
                tracing::warn!(error = %runtime::telemetry::Chain(&e), kind, "request failed");
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

/// Call the handler of the request's domain, which calls the handler of its kind.
pub async fn route(ctx: &Ctx<'_>) -> crate::Result<Outcome> {
    let req = &ctx.env.request;
    if !req.is_anonymous() {
        ctx.caller()?;
    }
    match req.spec().domain {
        Domain::Auth => crate::auth::handle(ctx).await,
        Domain::Users => crate::users::handle(ctx).await,
        Domain::Invites => crate::invites::handle(ctx).await,
        Domain::Dms => crate::dms::handle(ctx).await,
        Domain::Presence => crate::presence::handle(ctx).await,
    }
}
