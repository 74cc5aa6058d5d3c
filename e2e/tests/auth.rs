//! Login (feature 5) and the authenticated handshake (feature 1): one uniform error for bad
//! credentials, per-user rate limiting, and sessions carried by cookie as well as by header.

mod common;

use common::{inside_one_minute_window, signup, PASSWORD};
use e2e::client::{ok, Client, Http};
use e2e::{spawn_app, spawn_app_with, Options};
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use topics::Response;

#[tokio::test]
async fn wrong_password_and_unknown_user_get_the_same_answer() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let h = app.http(1);
    let (s_wrong, wrong) = h
        .post(
            "/api/v1/sessions",
            json!({"username": name, "password": "not-the-password-1"}),
            None,
        )
        .await;
    let (s_unknown, unknown) = h
        .post(
            "/api/v1/sessions",
            json!({"username": e2e::unique("nobody"), "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!((s_wrong, s_unknown), (401, 401));
    assert_eq!(wrong["code"], "unauthorized");
    assert_eq!(wrong, unknown, "one uniform error, whatever the cause");
    assert!(wrong["token"].is_null());

    // The right password works, whatever the case of the username.
    let (s, body) = h
        .post(
            "/api/v1/sessions",
            json!({"username": name.to_uppercase(), "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["kind"], "session");
    assert_eq!(body["username"], name.as_str());
    let token = body["token"].as_str().unwrap();
    assert!(token.len() >= 22, "at least 128 bits of token: {token}");
    assert_eq!(
        h.get("/api/v1/users/me", Some(token)).await.0,
        200,
        "the new session works"
    );

    // Missing or mistyped credentials are bad input, not a login failure.
    for bad in [
        json!({"username": name}),
        json!({"password": PASSWORD}),
        json!({"username": name, "password": 12345678}),
    ] {
        let (s, body) = h.post("/api/v1/sessions", bad.clone(), None).await;
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_user() {
    let mut opts = Options::default();
    opts.limits.login_failures_per_user_per_address_per_minute = 3;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let (_, other) = signup(&app, 1).await;
    inside_one_minute_window(Duration::from_secs(15)).await;
    let h = app.http(0);
    let attempt = |username: String, password: &'static str| {
        let h = &h;
        async move {
            let (s, b) = h
                .post(
                    "/api/v1/sessions",
                    json!({"username": username, "password": password}),
                    None,
                )
                .await;
            (s, b["code"].as_str().unwrap_or("").to_string())
        }
    };
    for _ in 0..3 {
        assert_eq!(
            attempt(name.clone(), "wrong-password-1").await,
            (401, "unauthorized".into())
        );
    }
    // Over the limit even the right password is refused, from either edge.
    assert_eq!(
        attempt(name.clone(), PASSWORD).await,
        (429, "rate_limited".into())
    );
    let (s, b) = app
        .http(1)
        .post(
            "/api/v1/sessions",
            json!({"username": name.to_uppercase(), "password": PASSWORD}),
            None,
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (429, Some("rate_limited")), "{b}");
    // The limit is per user: someone else from the same address still gets in.
    assert_eq!(attempt(other.clone(), PASSWORD).await.0, 200);
    // Unknown usernames are limited the same way (no way to tell them apart).
    let ghost = e2e::unique("ghost");
    for _ in 0..3 {
        assert_eq!(attempt(ghost.clone(), PASSWORD).await.0, 401);
    }
    assert_eq!(attempt(ghost, PASSWORD).await.0, 429);
    app.stop().await;
}

#[tokio::test]
async fn the_handshake_accepts_the_session_cookie_and_refuses_dead_sessions() {
    let app = spawn_app().await;
    let (_, name, token) = app.user(0).await;

    // A browser sends the session as the HttpOnly cookie instead of a subprotocol.
    let mut req = app.ws_url(1).into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("theme=dark; sb_session={token}")).unwrap(),
    );
    req.headers_mut()
        .insert("origin", HeaderValue::from_static("http://allowed.example"));
    let (ws, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("cookie handshake accepted");
    assert_eq!(
        resp.headers()
            .get("x-switchboard-edge")
            .and_then(|v| v.to_str().ok()),
        Some("edge-1")
    );
    drop(ws);

    // A refused handshake never upgrades: a logged-out session's token no longer connects.
    let mut c = Client::connect(&app.ws_url(0), &token).await;
    let Response::User { user, .. } = ok(c.request(json!({"type": "user.me"})).await) else {
        panic!()
    };
    assert_eq!(user.username, name);
    let (s, _) = app
        .http(0)
        .delete("/api/v1/sessions/current", Some(&token))
        .await;
    assert_eq!(s, 200);
    assert_eq!(c.closed().await, Some(4001), "its socket is closed");
    assert_eq!(
        e2e::client::connect(&app.ws_url(0), Some(&token), None)
            .await
            .err(),
        Some(401)
    );
    let mut req = app.ws_url(0).into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("sb_session={token}")).unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
    app.stop().await;
}

/// A username is what the sign-up rules allow (ASCII): a fullwidth or accented variant of a real
/// name names no account. It neither logs in with the right password nor escapes the account's
/// lock-out, and a lookup by it finds nobody.
#[tokio::test]
async fn unicode_variants_of_a_username_name_no_account() {
    let mut opts = Options::default();
    opts.limits.login_failures_per_user_per_address_per_minute = 3;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let token = app.http(1).login(&name, PASSWORD).await;
    assert!(name.starts_with('u'), "{name}");
    let rest = &name[1..];
    let variants = [
        format!("\u{ff55}{rest}"), // fullwidth u
        format!("\u{ff35}{rest}"), // fullwidth U
        format!("\u{fa}{rest}"),   // u with acute
        format!("{name}\u{301}"),  // a combining acute accent after it
    ];
    inside_one_minute_window(Duration::from_secs(15)).await;
    let h = app.http(0);
    let login = |username: &str, password: &str| {
        h.post(
            "/api/v1/sessions",
            json!({"username": username, "password": password}),
            None,
        )
    };
    for v in &variants {
        let (s, b) = login(v, PASSWORD).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (401, Some("unauthorized")),
            "{v}: {b}"
        );
        let lookup = format!("/api/v1/users?username={}", urlencode(v));
        assert_eq!(h.get(&lookup, Some(&token)).await.0, 404, "lookup by {v}");
    }
    // Locked out under its real name, the account stays locked out under every variant.
    // (only failures count, so the login above does not: three failures reach the limit of 3)
    for _ in 0..3 {
        assert_eq!(login(&name, "wrong-password-1").await.0, 401);
    }
    assert_eq!(
        login(&name, PASSWORD).await.0,
        429,
        "the account is locked out"
    );
    for v in &variants {
        let (s, b) = login(v, PASSWORD).await;
        assert_ne!(s, 200, "{v} logged in past the lock-out: {b}");
    }
    app.stop().await;
}

/// One login attempt: (status, error code or "").
async fn attempt(h: &Http, username: &str, password: &str) -> (u16, String) {
    let (s, b) = h
        .post(
            "/api/v1/sessions",
            json!({"username": username, "password": password}),
            None,
        )
        .await;
    (s, b["code"].as_str().unwrap_or("").to_string())
}

fn failed() -> (u16, String) {
    (401, "unauthorized".into())
}

fn refused() -> (u16, String) {
    (429, "rate_limited".into())
}

/// Failures are counted per account *and* address: a stranger guessing from one address is
/// stopped there, and the owner still logs in from theirs (clients bound to different loopback
/// addresses, which nginx forwards as the client address).
#[tokio::test]
async fn a_strangers_failures_do_not_lock_the_owner_out() {
    let mut opts = Options::default();
    opts.limits.login_failures_per_user_per_address_per_minute = 3;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let owner = app.http_from(0, 11);
    let stranger = app.http_from(1, 12);
    for _ in 0..3 {
        assert_eq!(
            attempt(&stranger, &name, "wrong-password-1").await,
            failed()
        );
    }
    // The stranger's address is stopped, whatever it sends next.
    assert_eq!(
        attempt(&stranger, &name, "wrong-password-1").await,
        refused()
    );
    assert_eq!(attempt(&stranger, &name, PASSWORD).await, refused());
    // The owner, elsewhere, is not locked out — and never logged in from here before.
    assert_eq!(attempt(&owner, &name, PASSWORD).await.0, 200);
    // The owner's own failures are counted for the owner's address alone, and successes are
    // not failures.
    for _ in 0..3 {
        assert_eq!(attempt(&owner, &name, "wrong-password-1").await, failed());
    }
    assert_eq!(attempt(&owner, &name, PASSWORD).await, refused());
    assert_eq!(attempt(&app.http_from(0, 13), &name, PASSWORD).await.0, 200);
    // An account nobody has: the same limit, the same answers.
    let ghost = e2e::unique("ghost");
    for _ in 0..3 {
        assert_eq!(attempt(&stranger, &ghost, PASSWORD).await, failed());
    }
    assert_eq!(attempt(&stranger, &ghost, PASSWORD).await, refused());
    app.stop().await;
}

/// OWASP ASVS 2.2.1: an account sees at most `login_failures_per_user_per_hour` failures an
/// hour, from however many addresses. Addresses that never logged in to it stop a tenth short,
/// so the owner's address still gets in once strangers have used their share.
#[tokio::test]
async fn failures_per_account_are_capped_per_hour_and_the_owner_keeps_a_share() {
    let mut opts = Options::default();
    opts.limits.login_failures_per_user_per_address_per_minute = 3;
    opts.limits.login_failures_per_user_per_hour = 10;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let owner = app.http_from(0, 21);
    assert_eq!(attempt(&owner, &name, PASSWORD).await.0, 200);
    let mut failures = 0;
    // Three strangers, three failures each: 9, the share of unknown addresses.
    for host in 22..25 {
        let h = app.http_from(host as usize % 2, host);
        for _ in 0..3 {
            assert_eq!(attempt(&h, &name, "wrong-password-1").await, failed());
            failures += 1;
        }
    }
    // A fourth address, with no failures of its own, is refused: the account's share for
    // unknown addresses is used up, even for the right password.
    let fresh = app.http_from(1, 25);
    assert_eq!(attempt(&fresh, &name, "wrong-password-1").await, refused());
    assert_eq!(attempt(&fresh, &name, PASSWORD).await, refused());
    // The owner's address still gets in.
    assert_eq!(attempt(&owner, &name, PASSWORD).await.0, 200);
    // The last failure of the hour is the owner's; after it the account is closed to every
    // address, the owner's too: never more than 10 failures.
    assert_eq!(attempt(&owner, &name, "wrong-password-1").await, failed());
    failures += 1;
    assert_eq!(attempt(&owner, &name, PASSWORD).await, refused());
    assert_eq!(attempt(&fresh, &name, PASSWORD).await, refused());
    assert_eq!(failures, 10);
    // Another account is not affected.
    let (_, other) = signup(&app, 1).await;
    assert_eq!(attempt(&fresh, &other, PASSWORD).await.0, 200);
    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

/// Every bearer token needs "does the account still exist?" from a shard's primary. Checks made
/// at once are answered together, one query per shard, each with its own answer: a live account,
/// a deleted one, an id that never existed.
#[tokio::test]
async fn account_checks_made_at_once_share_one_query_per_shard() {
    let app = spawn_app().await;
    let (live, _, _) = app.user(0).await;
    let (deleted, _, token) = app.user(0).await;
    let (status, body) = app.http(0).delete("/api/v1/users/me", Some(&token)).await;
    assert_eq!(status, 200, "{body}");
    let never = topics::Id(7);

    let shards = workers::db::Shards::connect(&app.database).unwrap();
    let metrics = runtime::metrics::Metrics::default();
    let checks = workers::accounts::AccountChecks::new(&shards, &metrics);
    let asked: Vec<topics::Id> = [live, deleted, never].repeat(20);
    let answers = futures::future::join_all(asked.iter().map(|&u| checks.exists(u))).await;
    for (u, a) in asked.iter().zip(answers) {
        assert_eq!(a.unwrap(), *u == live, "account {u:?}");
    }
    let used: std::collections::BTreeSet<usize> =
        asked.iter().map(|&u| shards.by_id(u).index).collect();
    assert_eq!(
        checks.queries(),
        used.len() as i64,
        "60 checks, one query per shard"
    );

    // Alone, a check is one query of its own.
    assert!(checks.exists(live).await.unwrap());
    assert_eq!(checks.queries(), used.len() as i64 + 1);
    let shown = metrics.render();
    assert!(shown.contains("sb_account_checks_total 61"), "{shown}");
    assert!(
        shown.contains(&format!(
            "sb_account_check_queries_total {}",
            used.len() + 1
        )),
        "{shown}"
    );

    // A shard that cannot be reached fails the checks waiting for it (retried with their records).
    let mut down = app.database.clone();
    down.shards.truncate(1);
    down.shards[0].primary = "127.0.0.1:9".into();
    let shards = workers::db::Shards::connect(&down).unwrap();
    let checks = workers::accounts::AccountChecks::new(&shards, &metrics);
    let err = checks.exists(live).await.unwrap_err();
    assert!(matches!(err, workers::Error::AccountCheck(_)), "{err}");
    app.stop().await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_address() {
    let mut opts = Options::default();
    opts.limits.login_attempts_per_address_per_minute = 3;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    inside_one_minute_window(Duration::from_secs(15)).await;
    let login = |h: Http, username: String| async move {
        let (s, b) = h.credentials("/api/v1/sessions", &username, PASSWORD).await;
        (s, b["code"].as_str().unwrap_or("").to_string())
    };
    // Every attempt from one address counts, right or wrong, whoever it names.
    assert_eq!(login(app.http_from(0, 21), name.clone()).await.0, 200);
    let ghost = e2e::unique("ghost");
    assert_eq!(login(app.http_from(1, 21), ghost).await.0, 401);
    assert_eq!(login(app.http_from(0, 21), name.clone()).await.0, 200);
    assert_eq!(
        login(app.http_from(1, 21), name.clone()).await,
        (429, "rate_limited".into())
    );
    // Another address is not held back by it.
    assert_eq!(login(app.http_from(0, 22), name).await.0, 200);
    app.stop().await;
}
