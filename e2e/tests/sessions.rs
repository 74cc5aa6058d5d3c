//! Session management (feature 6) and session refresh (feature 8): listing my sessions, logging
//! out one of them (its socket is told and closed, the others keep working), refresh over HTTP
//! with token rotation, the cookie, and the grace period of a rotated-out token.

mod common;

use common::{login, signup};
use e2e::client::{err, ok, Client};
use e2e::{spawn_app, spawn_app_with, Options, TestApp};
use serde_json::json;
use std::time::Duration;
use topics::{ErrorCode, Event, Response};

#[tokio::test]
async fn my_sessions_are_listed_with_the_current_one_flagged() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (t1, s1) = login(&app, 0, &name).await;
    let (t2, s2) = login(&app, 1, &name).await;
    assert_ne!(s1, s2);
    // Someone else's sessions are not mine.
    let (_, other) = signup(&app, 1).await;
    let (_, s_other) = login(&app, 1, &other).await;

    let mut c = Client::connect(&app.ws_url(0), &t1).await;
    let Response::Sessions { sessions } = ok(c.request(json!({"type": "session.list"})).await)
    else {
        panic!()
    };
    let ids: Vec<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{sessions:?}");
    assert!(ids.contains(&s1.as_str()) && ids.contains(&s2.as_str()));
    assert!(!ids.contains(&s_other.as_str()));
    for s in &sessions {
        assert_eq!(s.current, s.session_id == s1, "{s:?}");
        assert!(s.created_at_ms > 0 && s.last_seen_ms >= s.created_at_ms);
    }

    // Over HTTP, with the other session, the flag moves.
    let (status, body) = app.http(1).get("/api/v1/sessions", Some(&t2)).await;
    assert_eq!(status, 200, "{body}");
    let listed = body["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    for s in listed {
        assert_eq!(s["current"] == true, s["session_id"] == s2.as_str(), "{s}");
        assert!(s.get("token").is_none() && s.get("token_hash").is_none());
    }
    assert_eq!(app.http(0).get("/api/v1/sessions", None).await.0, 401);
    c.close().await;
    app.stop().await;
}

#[tokio::test]
async fn logging_out_one_session_closes_its_socket_and_only_its_socket() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (t1, s1) = login(&app, 0, &name).await;
    let (t2, _s2) = login(&app, 1, &name).await;
    let (_, other) = signup(&app, 1).await;
    let (t_other, s_other) = login(&app, 1, &other).await;
    let mut c1 = Client::connect(&app.ws_url(0), &t1).await;
    let mut c2 = Client::connect(&app.ws_url(1), &t2).await;

    // Someone else's session, or one that does not exist: not found, nothing ends.
    for sid in [s_other.as_str(), "0123456789abcdef0123456789abcdef", "x"] {
        assert_eq!(
            err(c2
                .request(json!({"type": "session.logout", "session_id": sid}))
                .await),
            ErrorCode::NotFound,
            "{sid}"
        );
    }
    let (s, body) = app
        .http(0)
        .delete(&format!("/api/v1/sessions/{s_other}"), Some(&t2))
        .await;
    assert_eq!(
        (s, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    assert_eq!(
        app.http(0).get("/api/v1/users/me", Some(&t_other)).await.0,
        200,
        "the other user's session survived"
    );

    // Session 2 logs session 1 out: socket 1 (on the other edge) is told and closed with 4001.
    ok(c2
        .request(json!({"type": "session.logout", "session_id": s1}))
        .await);
    let Event::SessionRevoked { reason } = c1
        .event_where(|e| matches!(e, Event::SessionRevoked { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(!reason.is_empty());
    assert_eq!(c1.closed().await, Some(4001));
    assert_eq!(
        ok(c2.request(json!({"type": "ping"})).await),
        Response::Pong
    );
    let Response::Sessions { sessions } = ok(c2.request(json!({"type": "session.list"})).await)
    else {
        panic!()
    };
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].current);
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t1)).await.0, 401);
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t2)).await.0, 200);
    // Logging out the same session again: it is gone.
    assert_eq!(
        err(c2
            .request(json!({"type": "session.logout", "session_id": s1}))
            .await),
        ErrorCode::NotFound
    );

    // Logging out the current session over HTTP clears the cookie and closes its socket.
    let resp = app
        .http(1)
        .raw(|c, base| {
            c.delete(format!("{base}/api/v1/sessions/current"))
                .bearer_auth(&t2)
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let cleared: Vec<String> = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("sb_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    assert_eq!(c2.closed().await, Some(4001));
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t2)).await.0, 401);
    app.stop().await;
}

#[tokio::test]
async fn http_logout_everywhere_ends_every_session() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (t1, _) = login(&app, 0, &name).await;
    let (t2, _) = login(&app, 1, &name).await;
    let (t3, _) = login(&app, 0, &name).await;
    let mut c = Client::connect(&app.ws_url(1), &t2).await;
    // Logging out the current session over a socket: told, then closed.
    let mut c3 = Client::connect(&app.ws_url(0), &t3).await;
    assert_eq!(
        ok(c3.request(json!({"type": "session.logout"})).await),
        Response::Ok
    );
    assert_eq!(c3.closed().await, Some(4001));
    assert_eq!(app.http(1).get("/api/v1/users/me", Some(&t3)).await.0, 401);
    assert!(
        matches!(
            ok(c.request(json!({"type": "user.me"})).await),
            Response::User { .. }
        ),
        "other sessions are untouched"
    );
    let (s, _) = app.http(0).delete("/api/v1/sessions", Some(&t1)).await;
    assert_eq!(s, 200);
    assert_eq!(c.closed().await, Some(4001));
    for t in [&t1, &t2] {
        assert_eq!(app.http(1).get("/api/v1/users/me", Some(t)).await.0, 401);
    }
    app.stop().await;
}

fn set_cookies(resp: &reqwest::Response) -> Vec<String> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

fn cookie_token(cookies: &[String]) -> String {
    let c = cookies
        .iter()
        .find(|c| c.starts_with("sb_session="))
        .unwrap_or_else(|| panic!("no session cookie in {cookies:?}"));
    c.trim_start_matches("sb_session=")
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn http_refresh_rotates_the_token_sets_the_cookie_and_honours_the_grace_period() {
    let mut opts = Options::default();
    opts.limits.token_grace_s = 1;
    let app = spawn_app_with(opts).await;
    let (user, name) = signup(&app, 0).await;
    let (t0, sid) = login(&app, 0, &name).await;
    let h = app.http(1);

    let resp = h
        .raw(|c, base| {
            // No body and no Content-Length, as `curl -X POST` sends it.
            c.post(format!("{base}/api/v1/sessions/refresh"))
                .bearer_auth(&t0)
        })
        .await;
    let status = resp.status().as_u16();
    let cookies = set_cookies(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    let t1 = body["token"].as_str().unwrap().to_string();
    // The old token keeps working within the grace period (1 s here).
    assert_eq!(
        h.get("/api/v1/users/me", Some(&t0)).await.0,
        200,
        "rotated-out token works within its grace period"
    );
    assert_ne!(t1, t0, "the token is rotated");
    assert!(t1.len() >= 22);
    assert_eq!(body["session_id"], sid.as_str(), "same session");
    assert_eq!(common::id(&body["user_id"]), user);
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("sb_session="))
        .unwrap_or_else(|| panic!("{cookies:?}"));
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert_eq!(cookie_token(&cookies), t1);

    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        h.get("/api/v1/users/me", Some(&t0)).await.0,
        401,
        "rotated-out token expired after its grace period"
    );
    assert_eq!(h.get("/api/v1/users/me", Some(&t1)).await.0, 200);
    assert_eq!(
        h.post("/api/v1/sessions/refresh", json!({}), Some(&t0))
            .await
            .0,
        401,
        "an expired token cannot refresh"
    );

    // Cookie mode: the token never appears in the body, only in the HttpOnly cookie, and the
    // cookie alone authenticates.
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions/refresh"))
                .header("cookie", format!("sb_session={t1}"))
                .header("x-session-mode", "cookie")
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let cookies = set_cookies(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["kind"], "session");
    assert_eq!(body["token"], "", "token blanked in cookie mode: {body}");
    let t2 = cookie_token(&cookies);
    assert!(!t2.is_empty() && t2 != t1);
    let resp = h
        .raw(|c, base| {
            c.get(format!("{base}/api/v1/users/me"))
                .header("cookie", format!("sb_session={t2}"))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);

    // Logging in in cookie mode also keeps the token out of the body.
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions"))
                .header("x-session-mode", "cookie")
                .json(&json!({"username": name, "password": common::PASSWORD}))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let cookies = set_cookies(&resp);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["token"], "");
    assert!(!cookie_token(&cookies).is_empty());
    app.stop().await;
}

/// The keep-alive frame: a rotated session with the configured idle lifetime.
async fn keepalive(c: &mut Client, idle_timeout: u64) {
    let Response::Session {
        token,
        idle_timeout_s,
        ..
    } = ok(c.request(json!({"type": "session.refresh"})).await)
    else {
        panic!("session.refresh did not answer with a session")
    };
    assert!(!token.is_empty());
    assert_eq!(idle_timeout_s, idle_timeout);
}

#[tokio::test]
async fn refreshing_keeps_a_session_alive_past_its_idle_timeout() {
    let mut opts = Options::default();
    opts.limits.session_idle_timeout_s = 4;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    // Logins are slow (Argon2): each session is refreshed as soon as it exists.
    let (idle, _) = login(&app, 1, &name).await;
    let mut quiet = Client::connect(&app.ws_url(0), &idle).await;
    let (ws_token, _) = login(&app, 1, &name).await;
    let mut c = Client::connect(&app.ws_url(1), &ws_token).await;
    keepalive(&mut c, 4).await;
    let (mut kept, _) = login(&app, 0, &name).await;
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        keepalive(&mut c, 4).await;
        let (s, body) = app
            .http(0)
            .post("/api/v1/sessions/refresh", json!({}), Some(&kept))
            .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(body["idle_timeout_s"], 4);
        kept = body["token"].as_str().unwrap().to_string();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
    }
    assert_eq!(
        app.http(1).get("/api/v1/users/me", Some(&kept)).await.0,
        200
    );
    assert!(
        matches!(
            ok(c.request(json!({"type": "user.me"})).await),
            Response::User { .. }
        ),
        "the socket's session is alive"
    );
    assert_eq!(
        app.http(1).get("/api/v1/users/me", Some(&idle)).await.0,
        401,
        "the session nobody refreshed expired"
    );
    // Its socket is refused even a ping (which needs no session over HTTP), and closed.
    assert_eq!(
        err(quiet.request(json!({"type": "ping"})).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(quiet.closed().await, Some(4001));
    c.close().await;
    app.stop().await;
}

/// A request that ends its own session is answered before the socket hears `session_revoked`
/// and closes: reply with its rid, then the event, then close 4001 — every time, for each of
/// the three requests that do it.
#[tokio::test]
async fn a_request_that_ends_its_own_session_is_answered_before_the_close() {
    use common::{Raw, Read};
    use topics::ServerFrame;
    let app = spawn_app().await;
    for round in 0..6 {
        for kind in ["session.logout", "session.logout_all", "user.delete"] {
            let (_, _, token) = app.user(round % 2).await;
            let mut ws = Raw::connect(&app.ws_url(round % 2), &token).await;
            ws.text(json!({"type": kind, "rid": "end"}).to_string())
                .await;
            let mut seen = Vec::new();
            loop {
                match ws.read(Duration::from_secs(10)).await {
                    Read::Frame(ServerFrame::Reply { rid, .. }) => {
                        seen.push(format!("reply {rid:?}"))
                    }
                    Read::Frame(ServerFrame::Event {
                        data: Event::SessionRevoked { .. },
                    }) => seen.push("revoked".into()),
                    Read::Frame(other) => panic!("{kind}: unexpected {other:?}"),
                    Read::Closed(code) => {
                        seen.push(format!("close {code:?}"));
                        break;
                    }
                    Read::Eof | Read::Nothing => {
                        seen.push("end".into());
                        break;
                    }
                }
            }
            assert_eq!(
                seen,
                [r#"reply Some("end")"#, "revoked", "close Some(4001)"],
                "{kind}, round {round}"
            );
        }
    }
    app.stop().await;
}

async fn refresh_with(app: &TestApp, token: &str) -> (u16, serde_json::Value) {
    app.http(0)
        .post("/api/v1/sessions/refresh", json!({}), Some(token))
        .await
}

fn token_of(body: &serde_json::Value) -> String {
    body["token"].as_str().expect("a token").to_string()
}

/// Refresh-token reuse detection: refreshing with a token that was already rotated out means
/// two parties hold the session, so the whole session (every token of it) is revoked and its
/// sockets are closed with the revocation code, as by a logout — even within the grace period
/// in which the old token still authenticates other requests. Kept: one retry with the token
/// just rotated out (a refresh whose answer was lost).
#[tokio::test]
async fn reusing_a_rotated_out_token_revokes_the_session_and_closes_its_socket() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (t0, _) = login(&app, 0, &name).await;
    let mut c = Client::connect(&app.ws_url(1), &t0).await;
    let (s, b) = refresh_with(&app, &t0).await;
    assert_eq!(s, 200, "{b}");
    let t1 = token_of(&b);
    let (s, b) = refresh_with(&app, &t1).await;
    assert_eq!(s, 200, "{b}");
    let t2 = token_of(&b);
    // Within the grace period t0 still authenticates a request in flight…
    assert_eq!(app.http(1).get("/api/v1/users/me", Some(&t0)).await.0, 200);
    // …but refreshing with it (two rotations old) is reuse.
    let (s, b) = refresh_with(&app, &t0).await;
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")), "{b}");
    let Event::SessionRevoked { reason } = c
        .event_where(|e| matches!(e, Event::SessionRevoked { .. }))
        .await
    else {
        unreachable!()
    };
    assert!(reason.contains("reused"), "{reason}");
    assert_eq!(c.closed().await, Some(4001), "its socket is closed");
    for t in [&t0, &t1, &t2] {
        assert_eq!(
            app.http(1).get("/api/v1/users/me", Some(t)).await.0,
            401,
            "every token of the session is dead"
        );
    }

    // The one retry kept: the token just rotated out refreshes once more (the first answer was
    // lost); a second time is reuse.
    let (u0, _) = login(&app, 1, &name).await;
    let (s, b) = refresh_with(&app, &u0).await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = refresh_with(&app, &u0).await;
    assert_eq!(s, 200, "a retry with the token just rotated out: {b}");
    let u2 = token_of(&b);
    assert_eq!(app.http(1).get("/api/v1/users/me", Some(&u2)).await.0, 200);
    let (s, _) = refresh_with(&app, &u0).await;
    assert_eq!(s, 401, "a second retry is reuse");
    assert_eq!(app.http(1).get("/api/v1/users/me", Some(&u2)).await.0, 401);

    // Refreshing over a socket (which holds its session, not a token) is unaffected.
    let (v0, _) = login(&app, 0, &name).await;
    let mut c = Client::connect(&app.ws_url(0), &v0).await;
    for _ in 0..3 {
        keepalive(&mut c, 600).await;
    }
    c.close().await;
    app.stop().await;
}

/// `limits.session_max_lifetime_s`: a session ends that long after its login even while it is
/// refreshed; refreshing never extends it past that.
#[tokio::test]
async fn a_session_ends_at_its_absolute_lifetime_however_active() {
    let mut opts = Options::default();
    opts.limits.session_max_lifetime_s = 4;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let started = tokio::time::Instant::now();
    // One session refreshed over HTTP, one over its socket.
    let (mut token, _) = login(&app, 0, &name).await;
    let (ws_token, _) = login(&app, 1, &name).await;
    let logged_in = tokio::time::Instant::now();
    let mut c = Client::connect(&app.ws_url(1), &ws_token).await;
    while started.elapsed() < Duration::from_millis(2_500) {
        let (s, b) = refresh_with(&app, &token).await;
        assert_eq!(s, 200, "{b}");
        token = token_of(&b);
        keepalive(&mut c, 600).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep_until(logged_in + Duration::from_millis(4_500)).await;
    assert_eq!(
        app.http(1).get("/api/v1/users/me", Some(&token)).await.0,
        401,
        "past its absolute lifetime"
    );
    assert_eq!(refresh_with(&app, &token).await.0, 401);
    assert_eq!(
        err(c.request(json!({"type": "session.refresh"})).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(c.closed().await, Some(4001));
    // A new login starts a new lifetime.
    let (t, _) = login(&app, 1, &name).await;
    assert_eq!(app.http(0).get("/api/v1/users/me", Some(&t)).await.0, 200);
    app.stop().await;
}

/// Every answer that carries a token is marked `Cache-Control: no-store` (and `Pragma:
/// no-cache`), in token and in cookie mode.
#[tokio::test]
async fn answers_with_a_token_are_not_cached() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let h = app.http(0);
    let check = |resp: &reqwest::Response, what: &str| {
        assert_eq!(resp.status().as_u16(), 200, "{what}");
        let header = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        assert_eq!(
            header("cache-control").as_deref(),
            Some("no-store"),
            "{what}"
        );
        assert_eq!(header("pragma").as_deref(), Some("no-cache"), "{what}");
    };
    let creds = json!({"username": name, "password": common::PASSWORD});
    let resp = h
        .raw(|c, base| c.post(format!("{base}/api/v1/sessions")).json(&creds))
        .await;
    check(&resp, "login");
    let token = token_of(&resp.json().await.unwrap());
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions/refresh"))
                .bearer_auth(&token)
        })
        .await;
    check(&resp, "refresh");
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions"))
                .header("x-session-mode", "cookie")
                .json(&creds)
        })
        .await;
    check(&resp, "login, cookie mode");
    let cookie = cookie_token(&set_cookies(&resp));
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions/refresh"))
                .header("cookie", format!("sb_session={cookie}"))
                .header("x-session-mode", "cookie")
        })
        .await;
    check(&resp, "refresh, cookie mode");
    app.stop().await;
}

/// With `edge.secure_cookies` the session cookie is `__Host-sb_session` (Secure, Path=/, no
/// Domain); it is the only cookie read, and it is cleared under that name.
#[tokio::test]
async fn secure_cookies_use_the_host_prefix() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut opts = Options::default();
    opts.edge.secure_cookies = true;
    let app = spawn_app_with(opts).await;
    let (_, name) = signup(&app, 0).await;
    let h = app.http(1);
    let resp = h
        .raw(|c, base| {
            c.post(format!("{base}/api/v1/sessions"))
                .header("x-session-mode", "cookie")
                .json(&json!({"username": name, "password": common::PASSWORD}))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let cookies = set_cookies(&resp);
    let cookie = cookies
        .iter()
        .find(|c| c.starts_with("__Host-sb_session="))
        .unwrap_or_else(|| panic!("no __Host- cookie in {cookies:?}"));
    let attrs: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for a in ["Secure", "Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(attrs.contains(&a), "{a} missing: {cookie}");
    }
    assert!(
        !attrs
            .iter()
            .any(|a| a.to_ascii_lowercase().starts_with("domain")),
        "{cookie}"
    );
    let token = cookie["__Host-sb_session=".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let me = |cookie: String| {
        let h = &h;
        async move {
            h.raw(|c, base| {
                c.get(format!("{base}/api/v1/users/me"))
                    .header("cookie", cookie)
            })
            .await
            .status()
            .as_u16()
        }
    };
    assert_eq!(me(format!("__Host-sb_session={token}")).await, 200);
    assert_eq!(
        me(format!("sb_session={token}")).await,
        401,
        "the unprefixed name is not read"
    );
    // The WebSocket handshake reads the same cookie.
    let mut req = app.ws_url(0).into_client_request().unwrap();
    req.headers_mut().insert(
        "cookie",
        HeaderValue::from_str(&format!("__Host-sb_session={token}")).unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("cookie handshake accepted");
    drop(ws);
    // Logging out clears it under its name.
    let resp = h
        .raw(|c, base| {
            c.delete(format!("{base}/api/v1/sessions/current"))
                .header("cookie", format!("__Host-sb_session={token}"))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let cleared = set_cookies(&resp);
    assert!(
        cleared
            .iter()
            .any(|c| c.starts_with("__Host-sb_session=;") && c.contains("Max-Age=0")),
        "{cleared:?}"
    );
    app.stop().await;
}

/// A worker's dependencies, and the same with a session lifetime of 0: every session is past
/// its end for the second.
async fn live_and_ended(
    app: &e2e::TestApp,
) -> (std::sync::Arc<workers::Deps>, std::sync::Arc<workers::Deps>) {
    let ended = workers::Limits {
        session_max_lifetime_s: 0,
        ..Default::default()
    };
    (
        common::deps(app, Default::default()).await,
        common::deps(app, ended).await,
    )
}

/// A refresh past the session's absolute end (the setting lowered after the session was loaded)
/// or of a session gone meanwhile is `Gone` and rotates nothing: the session keeps its token.
#[tokio::test]
async fn a_refresh_past_the_end_or_of_a_gone_session_rotates_nothing() {
    use workers::sessions::{self, Rotation};
    let app = spawn_app().await;
    let (d, ended) = live_and_ended(&app).await;
    let user = d.ids.next();
    let (token, sid) = sessions::create(&d, user, "ann", None).await.unwrap();
    let rec = sessions::load(&d, &sid).await.unwrap().expect("live");

    let r = sessions::refresh(&ended, &sid, &rec, None).await.unwrap();
    assert!(matches!(r, Rotation::Gone), "{r:?}");
    let hash = sessions::hash_token(&token);
    let now = sessions::load(&d, &sid).await.unwrap().expect("still live");
    assert_eq!(now.token_hash, hash, "not rotated");
    let resolved = sessions::resolve_token(&d, &hash).await.unwrap();
    assert_eq!(resolved.map(|(s, _)| s), Some(sid.clone()));

    let r = sessions::refresh(&d, "no-such-session", &rec, None)
        .await
        .unwrap();
    assert!(matches!(r, Rotation::Gone), "{r:?}");
    assert!(sessions::load(&d, "no-such-session")
        .await
        .unwrap()
        .is_none());
    app.stop().await;
}

/// Listing a user's sessions drops from their index the ones past their end (here: the
/// lifetime lowered since they were made), so they are not listed again even where they last.
#[tokio::test]
async fn listing_sessions_drops_the_ones_past_their_end_from_the_index() {
    use workers::sessions;
    let app = spawn_app().await;
    let (d, ended) = live_and_ended(&app).await;
    let user = d.ids.next();
    let (_, s1) = sessions::create(&d, user, "ann", None).await.unwrap();
    let (_, s2) = sessions::create(&d, user, "ann", None).await.unwrap();
    async fn listed(d: &workers::Deps, user: topics::Id) -> Vec<String> {
        let mut ids: Vec<String> = workers::sessions::list(d, user)
            .await
            .unwrap()
            .into_iter()
            .map(|(sid, _)| sid)
            .collect();
        ids.sort();
        ids
    }
    let mut both = vec![s1.clone(), s2];
    both.sort();
    assert_eq!(listed(&d, user).await, both);

    assert!(listed(&ended, user).await.is_empty());
    assert!(
        sessions::load(&d, &s1).await.unwrap().is_some(),
        "the record itself is still there"
    );
    assert!(listed(&d, user).await.is_empty(), "dropped from the index");
    app.stop().await;
}

/// Only hashes of the shape of the tokens this service makes (64 hex digits) are looked up or
/// written: a token key of another shape, planted here naming a live session, resolves to no
/// session, and confirming such a token gone leaves the key alone.
#[tokio::test]
async fn token_hashes_of_another_shape_are_neither_resolved_nor_confirmed_gone() {
    use runtime::redis::redis::AsyncCommands;
    use workers::sessions::{self, Gone};
    let app = spawn_app().await;
    let d = common::deps(&app, Default::default()).await;
    let (token, sid) = sessions::create(&d, d.ids.next(), "ann", None)
        .await
        .unwrap();
    let odd = "not-a-token-hash";
    let planted = d.keys.key(format!("tok:{odd}"));
    let mut c = d.redis.get().await.unwrap();
    let () = c.set(&planted, &sid).await.unwrap();
    let real = sessions::resolve_token(&d, &sessions::hash_token(&token))
        .await
        .unwrap();
    assert_eq!(real.map(|(s, _)| s), Some(sid.clone()));

    assert!(sessions::resolve_token(&d, odd).await.unwrap().is_none());
    sessions::confirm_gone(&d, Gone::Token(odd)).await.unwrap();
    let still: Option<String> = c.get(&planted).await.unwrap();
    assert_eq!(still, Some(sid), "the key was not written");
    app.stop().await;
}
