//! Helpers shared by the feature test files: setting up connected users, polling reads that may
//! lag (replicas, the presence registry), and a bare WebSocket for frames the `Client` would
//! skip (error frames without a `rid`, close codes, sockets that never read).

#![allow(dead_code)]

use e2e::client::{ok, Client, Http};
use e2e::TestApp;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::future::Future;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use topics::frames::InviteState;
use topics::{Event, Id, Response, ServerFrame};

pub const PASSWORD: &str = "pass-word-1";

pub fn id(v: &Value) -> Id {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not an id: {v}: {e}"))
}

/// Poll `f` until it yields `Some`, for reads that may lag behind a write (replica reads, the
/// presence registry fed by edge events). Panics with `what` after 15 s.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The app's connection registry in Redis, as its workers see it: the cluster and the key names.
pub fn registry(app: &TestApp) -> (runtime::redis::Cluster, runtime::registry::Registry) {
    let redis = runtime::redis::cluster(&app.redis).expect("redis");
    let registry = runtime::registry::Registry {
        keys: runtime::redis::Keys::new(app.redis.key_prefix.clone()),
        liveness_ms: 10_000,
    };
    (redis, registry)
}

/// Over two connected clients: `b` accepts `a`'s invite (`ann` and `bob` are their users), then
/// `a` opens their DM. The conversation.
pub async fn befriend_over_ws(a: &mut Client, b: &mut Client, ann: Id, bob: Id) -> Id {
    let Response::User {
        invite_code: Some(code),
        ..
    } = ok(b.request(json!({"type": "user.me"})).await)
    else {
        panic!("no invite code")
    };
    ok(a.request(json!({"type": "invite.send", "code": code}))
        .await);
    b.event_where(|e| matches!(e, Event::InviteUpdated { link } if link.user_id == ann))
        .await;
    ok(
        b.request(json!({"type": "invite.respond", "user_id": ann, "accept": true}))
            .await,
    );
    a.event_where(
        |e| matches!(e, Event::InviteUpdated { link } if link.user_id == bob && link.state == InviteState::Accepted),
    )
    .await;
    let Response::Conversation { conversation } =
        ok(a.request(json!({"type": "dm.open", "user_id": bob})).await)
    else {
        panic!("no conversation")
    };
    conversation.conversation_id
}

/// Sign up a fresh user through `http` and log in: (user id, token). A sign-up answered
/// `unavailable` is retried (up to three attempts).
pub async fn signup_and_login(http: &Http) -> (Id, String) {
    let name = e2e::unique("p");
    let mut attempt = 0;
    let (status, body) = loop {
        let (status, body) = http
            .post(
                "/api/v1/users",
                json!({"username": name, "password": "pass-word-1"}),
                None,
            )
            .await;
        // `unavailable` means "retry": a retried sign-up is told 409 only if the first one
        // completed, which this test then treats as done.
        attempt += 1;
        if status != 503 || attempt == 3 {
            break (status, body);
        }
    };
    assert!(status == 201 || (status == 409 && attempt > 1), "{body}");
    let token = http.login(&name, "pass-word-1").await;
    let (_, me) = http.get("/api/v1/users/me", Some(&token)).await;
    let id = serde_json::from_value(me["user"]["user_id"].clone()).unwrap();
    (id, token)
}

/// How many connections of `user` the registry lists.
pub async fn registered(app: &TestApp, user: Id) -> usize {
    use runtime::redis::redis::AsyncCommands;
    let (redis, registry) = registry(app);
    let mut c = redis.get().await.expect("redis");
    c.hlen(registry.conns_key(user)).await.expect("hlen")
}

/// Rate limits count in fixed one-minute windows: start a counting test well inside a window
/// so that it cannot straddle two.
pub async fn inside_one_minute_window(needed: Duration) {
    let into = runtime::now_ms() % 60_000;
    let left = 60_000 - into;
    if left < needed.as_millis() as u64 + 2_000 {
        tokio::time::sleep(Duration::from_millis(left + 200)).await;
    }
}

/// Sign up a fresh user without logging in: (user id, username).
pub async fn signup(app: &TestApp, edge: usize) -> (Id, String) {
    let name = e2e::unique("u");
    let (s, b) = app
        .http(edge)
        .post(
            "/api/v1/users",
            json!({"username": name, "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(s, 201, "signup: {b}");
    (id(&b["user"]["user_id"]), name)
}

/// One JSON frame over `POST /api/v1/rpc` with a bearer token.
pub async fn rpc(app: &TestApp, edge: usize, token: &str, frame: Value) -> (u16, Value) {
    app.http(edge).post("/api/v1/rpc", frame, Some(token)).await
}

/// Log in over HTTP: (token, session id).
pub async fn login(app: &TestApp, edge: usize, username: &str) -> (String, String) {
    let (s, b) = app
        .http(edge)
        .post(
            "/api/v1/sessions",
            json!({"username": username, "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(s, 200, "login: {b}");
    (
        b["token"].as_str().unwrap().to_string(),
        b["session_id"].as_str().unwrap().to_string(),
    )
}

/// The caller's personal invite code (`GET /api/v1/users/me`).
pub async fn invite_code(app: &TestApp, token: &str) -> String {
    let (s, b) = app.http(0).get("/api/v1/users/me", Some(token)).await;
    assert_eq!(s, 200, "{b}");
    b["invite_code"].as_str().expect("invite code").to_string()
}

/// Make two users connections over HTTP: `a` invites `b`, `b` accepts.
pub async fn befriend(app: &TestApp, a: (Id, &str), b: (Id, &str)) {
    let code = invite_code(app, b.1).await;
    let (s, body) = rpc(app, 0, a.1, json!({"type": "invite.send", "code": code})).await;
    assert_eq!(s, 200, "invite: {body}");
    let (s, body) = rpc(
        app,
        1,
        b.1,
        json!({"type": "invite.respond", "user_id": a.0, "accept": true}),
    )
    .await;
    assert_eq!(s, 200, "accept: {body}");
    assert_eq!(body["link"]["state"], "accepted");
}

/// Two users, signed up on edges 0 and 1, made connections, and the DM the first one opened.
pub struct Chat {
    pub ann: Id,
    pub ann_token: String,
    pub bob: Id,
    pub bob_name: String,
    pub bob_token: String,
    pub conv: Id,
}

/// A [`Chat`]: two new users, befriended, with their conversation open.
pub async fn chat(app: &TestApp) -> Chat {
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, bob_name, bob_token) = app.user(1).await;
    befriend(app, (ann, &ann_token), (bob, &bob_token)).await;
    let conv = open_dm(app, &ann_token, bob).await;
    Chat {
        ann,
        ann_token,
        bob,
        bob_name,
        bob_token,
        conv,
    }
}

/// Open the DM between two connected users; its conversation id.
pub async fn open_dm(app: &TestApp, a_token: &str, b: Id) -> Id {
    let (s, body) = rpc(app, 0, a_token, json!({"type": "dm.open", "user_id": b})).await;
    assert_eq!(s, 200, "dm.open: {body}");
    id(&body["conversation"]["conversation_id"])
}

/// The online list over a socket, following the cursor to the end with `limit` per page:
/// (users in order, number of pages).
pub async fn online_all(c: &mut Client, limit: u32) -> (Vec<Id>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut req = json!({"type": "online.list", "limit": limit});
        if let Some(cur) = &cursor {
            req["cursor"] = json!(cur);
        }
        let Response::Online { users, next_cursor } = ok(c.request(req).await) else {
            panic!("online.list did not answer with a list")
        };
        pages += 1;
        assert!(users.len() <= limit as usize, "page larger than its limit");
        out.extend(users.iter().map(|u| u.user_id));
        match next_cursor {
            Some(n) => cursor = Some(n),
            None => return (out, pages),
        }
        assert!(pages < 1000, "cursor never ends");
    }
}

/// Poll the online list (100 a page) until `pred` holds; the list.
pub async fn online_until(c: &mut Client, what: &str, pred: impl Fn(&[Id]) -> bool) -> Vec<Id> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (ids, _) = online_all(c, 100).await;
        if pred(&ids) {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what} (online: {ids:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for an `invite_updated` event about `peer`.
pub async fn invite_event(c: &mut Client, peer: Id, state: InviteState) -> topics::frames::Link {
    let Event::InviteUpdated { link } = c
        .event_where(
            |e| matches!(e, Event::InviteUpdated { link } if link.user_id == peer && link.state == state),
        )
        .await
    else {
        unreachable!()
    };
    link
}

/// What a bare socket read (the SDK's own; a transport error reads as `Eof` here).
pub use client::Read;

/// A WebSocket without the `Client`'s conveniences: the SDK's handshake, then the bare stream.
pub struct Raw {
    pub ws: client::Ws,
}

impl Raw {
    pub async fn connect(url: &str, token: &str) -> Raw {
        let ws = client::Socket::connect(url, token)
            .await
            .expect("handshake accepted")
            .into_inner();
        Raw { ws }
    }

    pub async fn send(&mut self, m: Message) {
        self.ws.send(m).await.expect("ws send");
    }

    pub async fn text(&mut self, t: impl Into<String>) {
        self.send(Message::text(t.into())).await;
    }

    /// The next server frame, close or end within `within` (pings and pongs skipped).
    pub async fn read(&mut self, within: Duration) -> Read {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => return Read::Nothing,
                Ok(None) | Ok(Some(Err(_))) => return Read::Eof,
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Read::Frame(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("bad server frame {t}: {e}")),
                    )
                }
                Ok(Some(Ok(Message::Close(c)))) => {
                    return Read::Closed(c.map(|c| u16::from(c.code)))
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// The next server frame; panics on close or silence.
    pub async fn frame(&mut self) -> ServerFrame {
        match self.read(e2e::client::WAIT).await {
            Read::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next error frame: (rid, code).
    pub async fn error(&mut self) -> (Option<String>, topics::ErrorCode) {
        loop {
            match self.frame().await {
                ServerFrame::Error { rid, code, .. } => return (rid, code),
                ServerFrame::Event { .. } => continue,
                other => panic!("expected an error frame, got {other:?}"),
            }
        }
    }

    /// Ping with `rid` and expect the pong: the socket still works.
    pub async fn still_works(&mut self, rid: &str) {
        self.text(json!({"type": "ping", "rid": rid}).to_string())
            .await;
        loop {
            match self.frame().await {
                ServerFrame::Reply {
                    rid: Some(r),
                    data: Response::Pong,
                } if r == rid => return,
                ServerFrame::Event { .. } => continue,
                other => panic!("expected the pong to {rid}, got {other:?}"),
            }
        }
    }
}

/// The dependencies a worker of `app` builds (its topics, Redis key prefix and database), with
/// `limits`: for tests that call handlers and stores directly.
pub async fn deps(app: &TestApp, limits: workers::Limits) -> std::sync::Arc<workers::Deps> {
    let settings = workers::Settings {
        kafka: app.kafka.clone(),
        redis: app.redis.clone(),
        database: app.database.clone(),
        service: runtime::ServiceSettings {
            name: "worker-test".into(),
            health_listen: "127.0.0.1:0".into(),
        },
        limits,
        log: Default::default(),
        trace: Default::default(),
    };
    let metrics =
        runtime::metrics::Metrics::new(runtime::metrics::Role::Worker(workers::Role::Users));
    workers::deps(&settings, metrics).await.expect("deps")
}

/// The envelope a worker gets for `request` (an HTTP call with no credentials).
pub fn envelope(request: topics::Request) -> topics::Envelope {
    topics::Envelope {
        v: topics::WIRE_VERSION,
        edge: "edge-0".into(),
        conn: 0,
        req: 1,
        rid: None,
        auth: topics::Auth::None,
        peer: None,
        sent_at_ms: runtime::now_ms(),
        deadline_ms: None,
        request,
    }
}
