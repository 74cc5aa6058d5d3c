//! From a Kafka record to a reply: decode, authenticate, call the domain handler, publish the
//! deliveries and the reply. What counts as a client error (a typed error frame, offset stored),
//! a transient failure (retried) or a poison record (dead-lettered) is decided here, once.

use crate::context::{Caller, Ctx, Deps, Outcome};
use crate::sessions::SessionRecord;
use crate::{mysql, sessions, Error, Role};
use futures::future::BoxFuture;
use runtime::consume::{Failure, Handler, Inbound};
use std::sync::Arc;
use topics::bus::{decode_versioned, PresenceRecord};
use topics::{
    Auth, Domain, EdgeMessage, Envelope, ErrorBody, ErrorCode, Event, Id, Request, Response,
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

/// The answer to a request that needs a shard known down ([`Error::ShardDown`]): `unavailable`,
/// counted by reason in `sb_requests_unavailable_total`. The request is not applied; its offset
/// moves on, and the client resends (idempotent: a `dm.send`'s `client_msg_id`).
pub fn shard_down(metrics: &runtime::metrics::Metrics, e: &Error) -> ErrorBody {
    let reason = match e {
        Error::ShardDown { tried: true, .. } => "shard_failed",
        _ => "breaker_open",
    };
    metrics.requests_unavailable.get(reason).inc();
    ErrorBody::new(
        ErrorCode::Unavailable,
        "a database shard this request needs is unavailable; retry",
    )
}

/// How an infrastructure error is treated: server errors that retrying cannot fix are poison.
pub fn classify(e: Error) -> Failure {
    let reason = runtime::telemetry::Chain(&e).to_string();
    match &e {
        Error::Db(mysql_async::Error::Server(s)) if !mysql::retry_may_fix(s.code) => {
            Failure::Poison(reason)
        }
        // A kind its domain has no arm for: no retry can route it.
        Error::Unrouted(_) => Failure::Poison(reason),
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
        let span = runtime::hop_span!(
            record.trace.sampled(),
            "request",
            otel.kind = "consumer",
            kind = env.request.kind(),
            edge = %env.edge,
            trace_id = tracing::field::Empty,
        );
        runtime::trace::set_parent(&span, &record.trace);
        if let Some(id) = runtime::trace::trace_id_of(&span) {
            span.record("trace_id", id.as_str());
        }
        // the replies and deliveries are published inside the span: their records carry it
        self.handle_envelope(env).instrument(span).await
    }

    /// True if `env`'s deadline has passed: it is dropped, unapplied and unanswered (its edge has
    /// answered the client `unavailable`, and the client retries), and counted in
    /// `sb_requests_expired_total`. Under overload this sheds what nobody waits for any more
    /// instead of doing it late, so the queue drains back to requests that can still be answered.
    ///
    /// A `dm.send` is never dropped. Its author's later sends name it while it is unanswered
    /// (`after_client_msg_id`), so dropping it would not reorder them — they would be refused
    /// `out_of_order` until its resend is stored — but under overload every send in flight
    /// behind a dropped one is refused with it, and resent: measured, shedding late sends cut
    /// the DMs delivered at twice the platform's capacity to a fifth (docs/benchmarks.md). A
    /// late send is stored in its place instead, and its resend answered as a duplicate.
    pub fn expired(&self, env: &Envelope) -> bool {
        if matches!(env.request, Request::DmSend { .. }) || !env.expired(runtime::now_ms()) {
            return false;
        }
        let kind = env.request.kind_index();
        self.deps.metrics.requests_expired.at(kind).inc();
        tracing::debug!(kind = env.request.kind(), edge = %env.edge, "request expired unapplied");
        true
    }

    async fn handle_envelope(&self, env: Envelope) -> Result<(), Failure> {
        if self.expired(&env) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result = async {
            let caller = authenticate(&*self.deps, &env).await?;
            route(&Ctx {
                env: &env,
                caller,
                deps: &self.deps,
            })
            .await
        }
        .await;
        let kind = env.request.kind();
        let m = &self.deps.metrics;
        // a request that needs a shard known down is answered, not retried
        let result = result.map_err(|e| match e {
            Error::ShardDown { .. } => Error::Reply(shard_down(m, &e)),
            e => e,
        });
        m.handler_seconds
            .at(env.request.kind_index())
            .observe(runtime::metrics::since(started));
        match result {
            Ok(outcome) => {
                m.requests_handled.at(env.request.kind_index()).inc();
                self.finish(&env, outcome).await
            }
            Err(Error::Reply(err)) => {
                m.request_errors
                    .get(env.request.kind_index(), err.code)
                    .inc();
                let revoked = revokes(&env, &err);
                self.reply_error(&env, err).await?;
                if revoked {
                    // The socket's session is gone: close it.
                    self.send_edge(&env, &close_message(&env)).await?;
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
                    )
                    .await?;
                }
                Err(f)
            }
        }
    }

    async fn publish(&self, topic: &str, key: &str, payload: &[u8]) -> Result<(), Failure> {
        self.deps
            .publisher
            .send(topic, key, payload)
            .await
            .map_err(|e| Failure::Transient(e.to_string()))
    }

    async fn finish(&self, env: &Envelope, outcome: Outcome) -> Result<(), Failure> {
        // The reply is acknowledged by the broker before any delivery is published. Deliveries
        // reach the requesting edge through the router, on the same single-partition edge topic,
        // so they land after the reply: a request that closes its own socket (logout, account
        // deletion) is always answered before `session_revoked` and the close.
        if let Some(response) = outcome.response {
            let msg = reply_message(env, response, outcome.session, outcome.clear_session);
            self.send_edge(env, &msg).await?;
        }
        let deliver_topic = self.deps.topics.deliver();
        for d in &outcome.deliveries {
            let payload = serde_json::to_vec(d).expect("deliveries serialise");
            self.publish(&deliver_topic, &d.key(), &payload).await?;
        }
        Ok(())
    }

    async fn send_edge(&self, env: &Envelope, msg: &EdgeMessage) -> Result<(), Failure> {
        let payload = serde_json::to_vec(msg).expect("edge messages serialise");
        self.publish(
            &self.deps.topics.edge(&env.edge),
            &env.conn.to_string(),
            &payload,
        )
        .await
    }

    async fn reply_error(&self, env: &Envelope, err: ErrorBody) -> Result<(), Failure> {
        self.send_edge(env, &error_message(env, err)).await
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

/// What [`authenticate`] asks about sessions and accounts: Redis and MariaDB in the workers
/// ([`Deps`]), a map in the unit tests.
pub trait Identity: Send + Sync {
    /// The session a bearer token (its hash) opens, with its id.
    fn by_token<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, crate::Result<Option<(String, SessionRecord)>>>;
    fn session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, crate::Result<Option<SessionRecord>>>;
    /// Does the account exist and is it not deleted (asked of the shard's primary)?
    fn account_exists(&self, user: Id) -> BoxFuture<'_, crate::Result<bool>>;
    fn revoke<'a>(
        &'a self,
        session_id: &'a str,
        rec: &'a SessionRecord,
    ) -> BoxFuture<'a, crate::Result<()>>;
    /// Make sure the absence of a token or session is on the replicas too
    /// ([`sessions::confirm_gone`]).
    fn confirm_gone<'a>(&'a self, what: sessions::Gone<'a>) -> BoxFuture<'a, crate::Result<()>>;
}

impl Identity for Deps {
    fn by_token<'a>(
        &'a self,
        token_hash: &'a str,
    ) -> BoxFuture<'a, crate::Result<Option<(String, SessionRecord)>>> {
        Box::pin(sessions::resolve_token(self, token_hash))
    }

    fn session<'a>(
        &'a self,
        session_id: &'a str,
    ) -> BoxFuture<'a, crate::Result<Option<SessionRecord>>> {
        Box::pin(sessions::load(self, session_id))
    }

    fn account_exists(&self, user: Id) -> BoxFuture<'_, crate::Result<bool>> {
        Box::pin(crate::users::exists(self, user))
    }

    fn revoke<'a>(
        &'a self,
        session_id: &'a str,
        rec: &'a SessionRecord,
    ) -> BoxFuture<'a, crate::Result<()>> {
        Box::pin(sessions::revoke(self, session_id, rec))
    }

    fn confirm_gone<'a>(&'a self, what: sessions::Gone<'a>) -> BoxFuture<'a, crate::Result<()>> {
        Box::pin(sessions::confirm_gone(self, what))
    }
}

/// Who sent the request. Anonymous requests need no session; the rest need a live one. A frame
/// on an open socket always names its session: if that session is gone, even an anonymous
/// request (a `ping`) is refused, so the socket is closed rather than kept alive by pings.
pub async fn authenticate<I: Identity + ?Sized>(
    ids: &I,
    env: &Envelope,
) -> crate::Result<Option<Caller>> {
    let anonymous = env.request.is_anonymous() && !matches!(env.auth, Auth::Session { .. });
    let found = match &env.auth {
        Auth::None => None,
        Auth::Token { token_hash } => ids.by_token(token_hash).await?,
        Auth::Session {
            session_id,
            user_id,
        } => ids
            .session(session_id)
            .await?
            .filter(|s| s.user_id == *user_id)
            .map(|s| (session_id.clone(), s)),
    };
    let Some((session_id, rec)) = found else {
        if anonymous {
            return Ok(None);
        }
        // A revocation retried after `unavailable` finds its session gone from the master: it
        // is answered as done (refused, the session being gone) only once a replica has that.
        if matches!(
            env.request,
            Request::Logout { .. } | Request::LogoutAll | Request::UserDelete
        ) {
            let what = match &env.auth {
                Auth::Token { token_hash } => Some(sessions::Gone::Token(token_hash)),
                Auth::Session { session_id, .. } => Some(sessions::Gone::Session(session_id)),
                Auth::None => None,
            };
            if let Some(what) = what {
                ids.confirm_gone(what).await?;
            }
        }
        return Err(crate::refuse(
            ErrorCode::Unauthorized,
            "invalid or expired session",
        ));
    };
    // A bearer token (HTTP call or handshake) must also belong to an account that still exists
    // in the database: a session write lost in a Redis failover must never let a deleted user
    // back in. Deleting twice stays possible, so a retried delete completes.
    if matches!(env.auth, Auth::Token { .. })
        && !matches!(env.request, Request::UserDelete)
        && !ids.account_exists(rec.user_id).await?
    {
        ids.revoke(&session_id, &rec).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use topics::WIRE_VERSION;

    /// Sessions and accounts in maps; revocations recorded.
    #[derive(Default)]
    struct Fake {
        tokens: HashMap<String, String>,
        sessions: HashMap<String, SessionRecord>,
        accounts: HashSet<Id>,
        revoked: Mutex<Vec<String>>,
        confirmed: Mutex<Vec<String>>,
    }

    impl Fake {
        fn with_session(mut self, sid: &str, token_hash: &str, user: u64, live: bool) -> Self {
            self.tokens.insert(token_hash.into(), sid.into());
            self.sessions.insert(
                sid.into(),
                SessionRecord {
                    user_id: Id(user),
                    username: format!("user{user}"),
                    created_ms: 1,
                    last_seen_ms: 1,
                    token_hash: token_hash.into(),
                    device: None,
                },
            );
            if live {
                self.accounts.insert(Id(user));
            }
            self
        }
    }

    impl Identity for Fake {
        fn by_token<'a>(
            &'a self,
            token_hash: &'a str,
        ) -> BoxFuture<'a, crate::Result<Option<(String, SessionRecord)>>> {
            let found = self
                .tokens
                .get(token_hash)
                .and_then(|sid| Some((sid.clone(), self.sessions.get(sid)?.clone())));
            Box::pin(async move { Ok(found) })
        }

        fn session<'a>(
            &'a self,
            session_id: &'a str,
        ) -> BoxFuture<'a, crate::Result<Option<SessionRecord>>> {
            Box::pin(async move { Ok(self.sessions.get(session_id).cloned()) })
        }

        fn account_exists(&self, user: Id) -> BoxFuture<'_, crate::Result<bool>> {
            Box::pin(async move { Ok(self.accounts.contains(&user)) })
        }

        fn revoke<'a>(
            &'a self,
            session_id: &'a str,
            _rec: &'a SessionRecord,
        ) -> BoxFuture<'a, crate::Result<()>> {
            self.revoked.lock().unwrap().push(session_id.into());
            Box::pin(async { Ok(()) })
        }

        fn confirm_gone<'a>(
            &'a self,
            what: sessions::Gone<'a>,
        ) -> BoxFuture<'a, crate::Result<()>> {
            self.confirmed.lock().unwrap().push(format!("{what:?}"));
            Box::pin(async { Ok(()) })
        }
    }

    fn env(request: Request, auth: Auth) -> Envelope {
        Envelope {
            v: WIRE_VERSION,
            edge: "edge-0".into(),
            conn: 1,
            req: 2,
            rid: None,
            auth,
            peer: None,
            sent_at_ms: 0,
            deadline_ms: None,
            request,
        }
    }

    fn token(hash: &str) -> Auth {
        Auth::Token {
            token_hash: hash.into(),
        }
    }

    fn socket(sid: &str, user: u64) -> Auth {
        Auth::Session {
            session_id: sid.into(),
            user_id: Id(user),
        }
    }

    fn refused(r: crate::Result<Option<Caller>>) -> bool {
        matches!(r, Err(Error::Reply(e)) if e.code == ErrorCode::Unauthorized)
    }

    #[tokio::test]
    async fn a_revocation_finding_its_session_gone_confirms_that_before_refusing() {
        let ids = Fake::default();
        for (request, auth) in [
            (Request::Logout { session_id: None }, token("h1")),
            (Request::LogoutAll, socket("s1", 5)),
            (Request::UserDelete, token("h2")),
        ] {
            assert!(refused(authenticate(&ids, &env(request, auth)).await));
        }
        assert_eq!(
            *ids.confirmed.lock().unwrap(),
            ["Token(\"h1\")", "Session(\"s1\")", "Token(\"h2\")"]
        );
        // Other requests, and no credentials at all, confirm nothing.
        assert!(refused(
            authenticate(&ids, &env(Request::DmList, token("h3"))).await
        ));
        assert!(refused(
            authenticate(&ids, &env(Request::LogoutAll, Auth::None)).await
        ));
        assert_eq!(ids.confirmed.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn anonymous_requests_need_no_session_and_the_rest_do() {
        let ids = Fake::default();
        assert_eq!(
            authenticate(&ids, &env(Request::Ping, Auth::None))
                .await
                .unwrap(),
            None
        );
        // an unknown token on an anonymous request is no caller, not a refusal
        assert_eq!(
            authenticate(&ids, &env(Request::Ping, token("nope")))
                .await
                .unwrap(),
            None
        );
        assert!(refused(
            authenticate(&ids, &env(Request::DmList, Auth::None)).await
        ));
        assert!(refused(
            authenticate(&ids, &env(Request::DmList, token("nope"))).await
        ));
    }

    #[tokio::test]
    async fn a_token_names_its_session_while_the_account_lives() {
        let ids = Fake::default().with_session("s1", "h1", 7, true);
        let caller = authenticate(&ids, &env(Request::Me, token("h1")))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            caller,
            Caller {
                user_id: Id(7),
                username: "user7".into(),
                session_id: "s1".into()
            }
        );
        assert!(ids.revoked.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_token_of_a_deleted_account_is_revoked_and_refused_but_may_finish_a_delete() {
        let ids = Fake::default().with_session("s1", "h1", 7, false);
        assert!(refused(
            authenticate(&ids, &env(Request::Me, token("h1"))).await
        ));
        assert_eq!(*ids.revoked.lock().unwrap(), vec!["s1".to_string()]);
        // a retried delete completes
        let caller = authenticate(&ids, &env(Request::UserDelete, token("h1")))
            .await
            .unwrap();
        assert_eq!(caller.map(|c| c.user_id), Some(Id(7)));
    }

    #[tokio::test]
    async fn a_socket_frame_needs_its_own_live_session_even_for_a_ping() {
        let ids = Fake::default().with_session("s1", "h1", 7, false);
        // the socket's session is enough (no account check per frame)
        let caller = authenticate(&ids, &env(Request::DmList, socket("s1", 7)))
            .await
            .unwrap();
        assert_eq!(caller.map(|c| c.session_id), Some("s1".into()));
        // another user's session id, or a session that is gone: refused, pings included
        assert!(refused(
            authenticate(&ids, &env(Request::DmList, socket("s1", 8))).await
        ));
        assert!(refused(
            authenticate(&ids, &env(Request::Ping, socket("gone", 7))).await
        ));
        assert!(ids.revoked.lock().unwrap().is_empty());
    }

    #[test]
    fn a_refusal_closes_a_socket_but_not_an_http_call() {
        let unauthorized = ErrorBody::new(ErrorCode::Unauthorized, "x");
        assert!(revokes(&env(Request::Ping, socket("s", 1)), &unauthorized));
        assert!(!revokes(&env(Request::Ping, token("h")), &unauthorized));
        let other = ErrorBody::new(ErrorCode::NotFound, "x");
        assert!(!revokes(&env(Request::Ping, socket("s", 1)), &other));
    }

    #[test]
    fn server_errors_retrying_cannot_fix_are_poison() {
        let server = |code| {
            Error::Db(mysql_async::Error::Server(mysql_async::ServerError {
                code,
                message: "m".into(),
                state: "HY000".into(),
            }))
        };
        assert!(matches!(
            classify(server(mysql::ER_LOCK_DEADLOCK)),
            Failure::Transient(_)
        ));
        assert!(matches!(classify(server(1064)), Failure::Poison(_)));
        assert!(matches!(
            classify(Error::Config("x".into())),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(Error::Unrouted("dm.send")),
            Failure::Poison(_)
        ));
        // a record with no requester to answer keeps retrying while its shard is down
        let down = Error::ShardDown {
            shard: 1,
            tried: false,
        };
        assert!(matches!(classify(down), Failure::Transient(_)));
        assert!(matches!(
            classify(Error::ShardTimeout(1)),
            Failure::Transient(_)
        ));
    }

    /// A request that needs a shard known down is answered `unavailable`, counted by reason.
    #[test]
    fn a_request_for_a_down_shard_is_answered_unavailable_by_reason() {
        let m = runtime::metrics::Metrics::new(runtime::metrics::Role::Worker(Role::Dms));
        let tried = Error::ShardDown {
            shard: 1,
            tried: true,
        };
        let refused = Error::ShardDown {
            shard: 1,
            tried: false,
        };
        assert_eq!(shard_down(&m, &tried).code, ErrorCode::Unavailable);
        assert_eq!(shard_down(&m, &refused).code, ErrorCode::Unavailable);
        assert_eq!(shard_down(&m, &refused).code, ErrorCode::Unavailable);
        assert_eq!(m.requests_unavailable.get("shard_failed").get(), 1);
        assert_eq!(m.requests_unavailable.get("breaker_open").get(), 2);
    }
}
