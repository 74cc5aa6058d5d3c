//! What a person sees of their sessions: the device each was opened from (a label the edge
//! derives from the login's `User-Agent`, sanitised and bounded) and when it was last used (moved
//! by refresh); and `GET /api/v1/sessions/current`, the start-up check that answers 200 whether
//! or not the request opens a session.

mod common;

use common::{login, signup, PASSWORD};
use e2e::client::{ok, Client};
use e2e::spawn_app;
use serde_json::{json, Value};
use std::time::Duration;
use topics::device::DEVICE_LABEL_MAX;
use topics::{Response, SESSION_COOKIE};

const ANDROID_CHROME: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36";

/// Log in over HTTP with this `User-Agent`: (token, session id).
async fn login_as(app: &e2e::TestApp, username: &str, ua: &str) -> (String, String) {
    let ua = ua.to_string();
    let username = username.to_string();
    let resp = app
        .http(0)
        .raw(move |c, base| {
            c.post(format!("{base}/api/v1/sessions"))
                .header("user-agent", ua)
                .json(&json!({"username": username, "password": PASSWORD}))
        })
        .await;
    assert_eq!(resp.status().as_u16(), 200);
    let b: Value = resp.json().await.unwrap();
    (
        b["token"].as_str().unwrap().to_string(),
        b["session_id"].as_str().unwrap().to_string(),
    )
}

fn find<'a>(list: &'a [Value], sid: &str) -> &'a Value {
    list.iter()
        .find(|s| s["session_id"] == sid)
        .unwrap_or_else(|| panic!("{sid} not in {list:?}"))
}

#[tokio::test]
async fn sessions_are_listed_with_their_device_and_last_use() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (phone, s_phone) = login_as(&app, &name, ANDROID_CHROME).await;
    let hostile = format!(
        "{}<script>alert(1)</script> (Windows NT 10.0) Firefox/1",
        "A".repeat(4000)
    );
    let (_, s_hostile) = login_as(&app, &name, &hostile).await;
    let (_, s_curl) = login_as(&app, &name, "curl/8.5.0").await;
    // reqwest sends no User-Agent of its own
    let (_, s_none) = login(&app, 1, &name).await;

    let (status, body) = app.http(1).get("/api/v1/sessions", Some(&phone)).await;
    assert_eq!(status, 200, "{body}");
    let list = body["sessions"].as_array().unwrap();
    assert_eq!(list.len(), 4, "{body}");
    assert_eq!(find(list, &s_phone)["device"], "Chrome on Android");
    assert_eq!(find(list, &s_curl)["device"], "curl");
    assert_eq!(find(list, &s_none)["device"], Value::Null);
    let odd = find(list, &s_hostile)["device"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(odd.len() <= DEVICE_LABEL_MAX, "{odd}");
    assert!(
        odd.chars()
            .all(|c| c.is_ascii_alphanumeric() || " .-_+()".contains(c)),
        "{odd}"
    );

    // The same over WebSocket, typed.
    let mut c = Client::connect(&app.ws_url(0), &phone).await;
    let Response::Sessions { sessions } = ok(c.request(json!({"type": "session.list"})).await)
    else {
        panic!()
    };
    let me = sessions.iter().find(|s| s.session_id == s_phone).unwrap();
    assert_eq!(me.device.as_deref(), Some("Chrome on Android"));
    assert!(me.current);
    c.close().await;

    // Last use: a refresh moves it (and keeps the device); the other sessions' stay.
    let before = find(list, &s_phone).clone();
    let other_before = find(list, &s_curl)["last_seen_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let t0 = runtime::now_ms();
    let (status, body) = app
        .http(0)
        .post("/api/v1/sessions/refresh", json!({}), Some(&phone))
        .await;
    assert_eq!(status, 200, "{body}");
    let phone = body["token"].as_str().unwrap().to_string();
    let (_, body) = app.http(0).get("/api/v1/sessions", Some(&phone)).await;
    let list = body["sessions"].as_array().unwrap();
    let after = find(list, &s_phone);
    assert!(
        after["last_seen_ms"].as_u64().unwrap() >= t0,
        "{after} vs {t0}"
    );
    assert!(after["last_seen_ms"].as_u64() > before["last_seen_ms"].as_u64());
    assert_eq!(after["created_at_ms"], before["created_at_ms"]);
    assert_eq!(after["device"], "Chrome on Android");
    assert_eq!(
        find(list, &s_curl)["last_seen_ms"].as_u64(),
        Some(other_before)
    );
    app.stop().await;
}

#[tokio::test]
async fn the_current_session_check_answers_200_signed_in_or_not() {
    let app = spawn_app().await;
    let (_, name) = signup(&app, 0).await;
    let (token, _) = login(&app, 0, &name).await;
    let h = app.http(1);
    let get = |cookie: Option<String>, bearer: Option<String>, origin: Option<&'static str>| {
        h.raw(move |c, base| {
            let mut rb = c.get(format!("{base}/api/v1/sessions/current"));
            if let Some(v) = cookie {
                rb = rb.header("cookie", format!("{SESSION_COOKIE}={v}"));
            }
            if let Some(t) = bearer {
                rb = rb.bearer_auth(t);
            }
            if let Some(o) = origin {
                rb = rb.header("origin", o);
            }
            rb
        })
    };
    let cleared = |r: &reqwest::Response| {
        r.headers().get_all("set-cookie").iter().any(|v| {
            v.to_str()
                .unwrap()
                .starts_with(&format!("{SESSION_COOKIE}=;"))
        })
    };

    // No session at all: 200 signed_out, nothing set.
    let r = get(None, None, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"kind": "signed_out"})
    );

    // A dead cookie: signed_out, and the cookie is cleared.
    let r = get(Some("bogus".into()), None, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(cleared(&r));
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "signed_out");
    // A dead bearer token: signed_out, no cookie touched.
    let r = get(None, Some("bogus".into()), None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers().get("set-cookie").is_none());
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "signed_out");

    // A live cookie (from the page's own origin) or token: who it is, as GET /users/me says.
    for (cookie, bearer) in [(Some(token.clone()), None), (None, Some(token.clone()))] {
        let r = get(cookie, bearer, Some("http://allowed.example")).await;
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.headers().get("set-cookie").is_none());
        let b: Value = r.json().await.unwrap();
        assert_eq!(b["kind"], "user", "{b}");
        assert_eq!(b["user"]["username"], name.as_str());
        assert!(b["invite_code"].is_string(), "{b}");
        assert!(!b.to_string().contains(&token), "the token is never echoed");
    }

    // A foreign origin is refused as everywhere else.
    let r = get(Some(token.clone()), None, Some("http://evil.example")).await;
    assert_eq!(r.status().as_u16(), 403);

    // Logged out: signed_out again.
    let (s, _) = app
        .http(0)
        .delete("/api/v1/sessions/current", Some(&token))
        .await;
    assert_eq!(s, 200);
    let r = get(Some(token.clone()), None, None).await;
    assert_eq!(r.status().as_u16(), 200);
    assert!(cleared(&r));
    assert_eq!(r.json::<Value>().await.unwrap()["kind"], "signed_out");
    app.stop().await;
}
