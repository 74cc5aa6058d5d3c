//! User create (feature 9), lookup (feature 10) and delete (feature 11).

mod common;

use common::{
    befriend, eventually, id, inside_one_minute_window, invite_code, rpc, signup, PASSWORD,
};
use e2e::client::{err, ok, Client};
use e2e::{spawn_app, spawn_app_with, Options};
use serde_json::{json, Value};
use topics::{ErrorCode, Response};

#[tokio::test]
async fn signup_validates_usernames_and_passwords() {
    let app = spawn_app().await;
    let h = app.http(0);
    let good_password = "pass-word-1";
    for bad in [
        "ab".to_string(),
        "1abc".into(),
        "_abc".into(),
        "al ice".into(),
        "al-ice".into(),
        "élan".into(),
        "a".repeat(33),
        "".into(),
    ] {
        let (s, body) = h
            .post(
                "/api/v1/users",
                json!({"username": bad, "password": good_password}),
                None,
            )
            .await;
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("invalid_input")),
            "username {bad:?}: {body}"
        );
    }
    let name = e2e::unique("v");
    for weak in [
        "short1!".to_string(),
        "abcdefgh".into(),
        "12345678".into(),
        "".into(),
        "x1".repeat(65),
    ] {
        let (s, body) = h
            .post(
                "/api/v1/users",
                json!({"username": name, "password": weak}),
                None,
            )
            .await;
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("invalid_input")),
            "password {weak:?}: {body}"
        );
    }
    for bad in [
        json!({"username": name}),
        json!({"username": 5, "password": good_password}),
        json!([name, good_password]),
    ] {
        let (s, body) = h.post("/api/v1/users", bad.clone(), None).await;
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}"
        );
    }
    // None of the refused sign-ups created the account.
    let (s, _) = h
        .post(
            "/api/v1/sessions",
            json!({"username": name, "password": good_password}),
            None,
        )
        .await;
    assert_eq!(s, 401);

    // A valid name is folded to lower case; the account works and has an invite code.
    let upper = format!("  {}_X.9 ", name.to_uppercase());
    let (s, body) = h
        .post(
            "/api/v1/users",
            json!({"username": upper, "password": "a long passphrase"}),
            None,
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let stored = format!("{name}_x.9");
    assert_eq!(body["user"]["username"], stored.as_str());
    assert!(body["invite_code"].as_str().is_some_and(|c| c.len() >= 8));
    assert!(
        !body.to_string().contains("argon2") && body.get("password_hash").is_none(),
        "{body}"
    );
    let token = h.login(&stored, "a long passphrase").await;
    assert_eq!(h.get("/api/v1/users/me", Some(&token)).await.0, 200);
    app.stop().await;
}

/// A sign-up resent with its `client_request_id` (its answer lost, say) is the same sign-up: it
/// completes what the first left undone, or is answered as the first was; with another password
/// or without the id, the name is taken. A bad id is refused and claims nothing.
#[tokio::test]
async fn a_signup_resent_with_its_request_id_is_the_same_signup() {
    let app = spawn_app().await;
    let h = app.http(0);
    let signup = |name: &str, password: &str, id: Option<&str>| {
        let mut body = json!({"username": name, "password": password});
        if let Some(id) = id {
            body["client_request_id"] = json!(id);
        }
        h.post("/api/v1/users", body, None)
    };
    let name = e2e::unique("r");
    let (s, first) = signup(&name, PASSWORD, Some("k-1")).await;
    assert_eq!(s, 201, "{first}");
    let (s, again) = signup(&name, PASSWORD, Some("k-1")).await;
    assert_eq!((s, &again), (201, &first), "answered as the first was");
    for (password, id) in [
        ("another-pass-1", Some("k-1")),
        (PASSWORD, Some("k-2")),
        (PASSWORD, None),
    ] {
        let (s, body) = signup(&name, password, id).await;
        assert_eq!(
            (s, body["code"].as_str()),
            (409, Some("conflict")),
            "{password} {id:?}: {body}"
        );
    }

    // The first attempt claimed the name and was cut before the account: the resend completes it,
    // with the id the claim holds; another sign-up of the name is refused.
    let name = e2e::unique("r");
    let owner = topics::Id(runtime::now_ms() * 1_000 + 7);
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    let key = workers::users::create::client_key("k-3");
    let claim = workers::users::store::claim_username(&shards, &name, owner, &key)
        .await
        .unwrap();
    assert!(matches!(claim, workers::users::store::Claim::Claimed));
    let (s, body) = signup(&name, PASSWORD, None).await;
    assert_eq!(s, 409, "{body}");
    let (s, body) = signup(&name, PASSWORD, Some("k-3")).await;
    assert_eq!(s, 201, "{body}");
    assert_eq!(id(&body["user"]["user_id"]), owner);
    let token = h.login(&name, PASSWORD).await;
    let (s, me) = h.get("/api/v1/users/me", Some(&token)).await;
    assert_eq!((s, &me["invite_code"]), (200, &body["invite_code"]), "{me}");

    // Bad ids are refused before anything is claimed.
    let name = e2e::unique("r");
    for bad in [json!(""), json!("x".repeat(65)), json!(5)] {
        let (s, body) = h
            .post(
                "/api/v1/users",
                json!({"username": name, "password": PASSWORD, "client_request_id": bad}),
                None,
            )
            .await;
        assert_eq!(
            (s, body["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}: {body}"
        );
    }
    let (s, body) = signup(&name, PASSWORD, None).await;
    assert_eq!(s, 201, "the name is still free: {body}");
    shards.disconnect().await;
    app.stop().await;
}

#[tokio::test]
async fn usernames_are_unique_whatever_their_case() {
    let app = spawn_app().await;
    let (first, name) = signup(&app, 0).await;
    for (edge, taken) in [(1, name.to_uppercase()), (0, format!(" {name} "))] {
        let (s, body) = app
            .http(edge)
            .post(
                "/api/v1/users",
                json!({"username": taken, "password": "other-pass-2"}),
                None,
            )
            .await;
        assert_eq!(
            (s, body["code"].as_str()),
            (409, Some("conflict")),
            "{body}"
        );
    }
    // The original account is untouched: its password still works.
    let token = app.http(1).login(&name, PASSWORD).await;
    let (_, me) = app.http(1).get("/api/v1/users/me", Some(&token)).await;
    assert_eq!(id(&me["user"]["user_id"]), first);
    app.stop().await;
}

/// A profile is `{user_id, username, created_at_ms}` and nothing else.
fn assert_public(body: &Value, user: topics::Id, name: &str) {
    assert_eq!(body["kind"], "user", "{body}");
    let top: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(top, vec!["kind", "user"], "only the profile: {body}");
    let mut keys: Vec<&String> = body["user"].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        vec!["created_at_ms", "user_id", "username"],
        "public fields only: {body}"
    );
    assert_eq!(id(&body["user"]["user_id"]), user);
    assert_eq!(body["user"]["username"], name);
    assert!(!body.to_string().contains("argon2"));
}

#[tokio::test]
async fn lookup_by_username_or_id_returns_only_the_public_profile() {
    let app = spawn_app().await;
    let (ann, ann_name, ann_token) = app.user(0).await;
    let (_, _, bob_token) = app.user(1).await;
    let ann_code = invite_code(&app, &ann_token).await;
    let h = app.http(1);

    // By username (any case) and by id; lookups read replicas, so allow them to catch up.
    let by_name = eventually("ann is visible by username", || async {
        let (s, b) = h
            .get(
                &format!("/api/v1/users?username={}", ann_name.to_uppercase()),
                Some(&bob_token),
            )
            .await;
        (s == 200).then_some(b)
    })
    .await;
    assert_public(&by_name, ann, &ann_name);
    assert!(!by_name.to_string().contains(&ann_code), "no invite code");
    let by_id = eventually("ann is visible by id", || async {
        let (s, b) = h
            .get(&format!("/api/v1/users/{ann}"), Some(&bob_token))
            .await;
        (s == 200).then_some(b)
    })
    .await;
    assert_eq!(by_id, by_name);

    // The same over a socket.
    let mut c = Client::connect(&app.ws_url(1), &bob_token).await;
    for req in [
        json!({"type": "user.lookup", "username": ann_name}),
        json!({"type": "user.lookup", "user_id": ann}),
    ] {
        let Response::User { user, invite_code } = ok(c.request(req).await) else {
            panic!()
        };
        assert_eq!(
            (user.user_id, user.username.as_str()),
            (ann, ann_name.as_str())
        );
        assert_eq!(invite_code, None);
    }

    // Unknown users: 404.
    let (s, b) = h
        .get(
            "/api/v1/users?username=nobody_here_at_all",
            Some(&bob_token),
        )
        .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")));
    let (s, _) = h.get("/api/v1/users/12345", Some(&bob_token)).await;
    assert_eq!(s, 404);
    assert_eq!(
        err(c
            .request(json!({"type": "user.lookup", "user_id": "999999999"}))
            .await),
        ErrorCode::NotFound
    );

    // Both or neither parameter, or a malformed id: 400.
    for bad in [
        json!({"type": "user.lookup", "username": ann_name, "user_id": ann}),
        json!({"type": "user.lookup"}),
    ] {
        let (s, b) = rpc(&app, 0, &bob_token, bad.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}"
        );
        assert_eq!(err(c.request(bad).await), ErrorCode::InvalidInput);
    }
    assert_eq!(h.get("/api/v1/users", Some(&bob_token)).await.0, 400);
    assert_eq!(
        h.get("/api/v1/users/not-a-number", Some(&bob_token))
            .await
            .0,
        400
    );

    // Lookups need a session.
    assert_eq!(h.get(&format!("/api/v1/users/{ann}"), None).await.0, 401);
    assert_eq!(
        h.get(&format!("/api/v1/users?username={ann_name}"), Some("bogus"))
            .await
            .0,
        401
    );
    c.close().await;
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_user_removes_their_links_and_frees_the_username() {
    let app = spawn_app().await;
    let (ann, ann_name, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (_, _, cat_token) = app.user(0).await;
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    // Ann also has an invite pending towards Cat.
    let cat_code = invite_code(&app, &cat_token).await;
    let (s, _) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": cat_code}),
    )
    .await;
    assert_eq!(s, 200);
    let ann_code = invite_code(&app, &ann_token).await;
    // Ann and Bob talked.
    let conv = common::open_dm(&app, &ann_token, bob).await;
    for (who, cid) in [(&ann_token, "a1"), (&bob_token, "b1")] {
        let (s, b) = rpc(
            &app,
            0,
            who,
            json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cid, "text": cid}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    let links_of = |token: String| {
        let app = &app;
        async move {
            let (s, b) = rpc(app, 1, &token, json!({"type": "invite.list"})).await;
            assert_eq!(s, 200, "{b}");
            b["links"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| id(&l["user_id"]))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(links_of(bob_token.clone()).await, vec![ann]);
    assert_eq!(links_of(cat_token.clone()).await, vec![ann]);

    let mut ann_socket = Client::connect(&app.ws_url(1), &ann_token).await;
    let (s, b) = app
        .http(0)
        .delete("/api/v1/users/me", Some(&ann_token))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(ann_socket.closed().await, Some(4001), "sessions revoked");
    assert_eq!(
        app.http(0)
            .get("/api/v1/users/me", Some(&ann_token))
            .await
            .0,
        401
    );

    // The conversation keeps its history, with her shown as deleted (names come from
    // replicas: let them catch up).
    let history = eventually("the author is shown as deleted", || async {
        let (s, b) = rpc(
            &app,
            1,
            &bob_token,
            json!({"type": "dm.history", "conversation_id": conv}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
        (b["messages"][0]["author"] == "[deleted]").then_some(b)
    })
    .await;
    let authors: Vec<(String, Value)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["author"].as_str().unwrap().to_string(),
                m["author_id"].clone(),
            )
        })
        .collect();
    assert_eq!(authors.len(), 2, "{history}");
    assert_eq!(authors[0], ("[deleted]".to_string(), Value::Null));
    assert_eq!(id(&authors[1].1), bob);
    assert_eq!(history["messages"][0]["text"], "a1", "the text is kept");
    eventually("the peer is shown as deleted", || async {
        let (_, b) = rpc(&app, 1, &bob_token, json!({"type": "dm.list"})).await;
        (b["conversations"][0]["peer"] == "[deleted]").then_some(())
    })
    .await;

    // The peers' link lists no longer show her, accepted or pending.
    assert!(links_of(bob_token.clone()).await.is_empty());
    assert!(links_of(cat_token.clone()).await.is_empty());
    // So Bob can no longer send into their conversation (it stays readable, above).
    let (s, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": "b-late", "text": "hello?"}),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    // Her invite code is gone, her profile too.
    let (s, _) = rpc(
        &app,
        0,
        &bob_token,
        json!({"type": "invite.send", "code": ann_code}),
    )
    .await;
    assert_eq!(s, 404);
    eventually("the deleted profile disappears", || async {
        let (s, _) = app
            .http(1)
            .get(&format!("/api/v1/users/{ann}"), Some(&bob_token))
            .await;
        (s == 404).then_some(())
    })
    .await;

    // The username is free again: a new account (a new id) takes it.
    let (s, body) = app
        .http(1)
        .post(
            "/api/v1/users",
            json!({"username": ann_name, "password": "new-pass-word-2"}),
            None,
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let again = id(&body["user"]["user_id"]);
    assert_ne!(again, ann);
    assert_eq!(
        app.http(0)
            .post(
                "/api/v1/sessions",
                json!({"username": ann_name, "password": PASSWORD}),
                None
            )
            .await
            .0,
        401,
        "the old password does not open the new account"
    );
    app.http(0).login(&ann_name, "new-pass-word-2").await;
    app.stop().await;
}

#[tokio::test]
async fn sign_ups_are_rate_limited_per_address() {
    let mut opts = Options::default();
    opts.limits.signups_per_address_per_minute = 2;
    let app = spawn_app_with(opts).await;
    inside_one_minute_window(std::time::Duration::from_secs(15)).await;
    let sign_up = |edge: usize, host: u8| {
        let h = app.http_from(edge, host);
        async move {
            let name = e2e::unique("r");
            let (s, b) = h.credentials("/api/v1/users", &name, PASSWORD).await;
            (s, b["code"].as_str().unwrap_or("").to_string(), name)
        }
    };
    assert_eq!(sign_up(0, 23).await.0, 201);
    assert_eq!(sign_up(1, 23).await.0, 201);
    let (s, code, refused) = sign_up(0, 23).await;
    assert_eq!((s, code.as_str()), (429, "rate_limited"));
    // The refused sign-up made nothing: its name is free.
    let (s, _) = app
        .http(1)
        .credentials("/api/v1/users", &refused, PASSWORD)
        .await;
    assert_eq!(s, 201);
    // Another address is not held back by it.
    assert_eq!(sign_up(1, 24).await.0, 201);
    app.stop().await;
}
