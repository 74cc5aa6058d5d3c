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

/// An account the database has marked deleted while one of its sockets is still open (the
/// socket's frames carry its session, with no account check per frame): `user.me` and a code
/// rotation are `not_found` and leave the row as it was, its invite code (not yet freed) invites
/// nobody, and its username and password no longer log in.
#[tokio::test]
async fn an_account_marked_deleted_is_not_found_behind_a_socket_and_its_code_invites_nobody() {
    let app = spawn_app().await;
    let (dan, dan_name, dan_token) = app.user(0).await;
    let (eve, _, eve_token) = app.user(1).await;
    let dan_code = invite_code(&app, &dan_token).await;
    let mut sock = Client::connect(&app.ws_url(0), &dan_token).await;
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    // Marked deleted, its password hash kept: a refused login below is the deletion's doing.
    workers::db::exec_drop(
        shards.by_id(dan),
        "UPDATE users SET deleted_at_ms = ? WHERE id = ?",
        (runtime::now_ms(), dan.0),
    )
    .await
    .unwrap();
    let row = async || {
        workers::users::store::row(&shards, dan, true)
            .await
            .unwrap()
            .expect("the row stays")
    };
    let before = row().await;
    assert!(before.5.is_some() && !before.2.is_empty(), "{before:?}");

    let me = sock.request(json!({"type": "user.me"})).await;
    assert_eq!(err(me), ErrorCode::NotFound);
    let rotated = sock
        .request(json!({"type": "user.rotate_invite_code"}))
        .await;
    assert_eq!(err(rotated), ErrorCode::NotFound);
    assert_eq!(row().await, before, "the rotation changed nothing");

    let (s, b) = rpc(
        &app,
        1,
        &eve_token,
        json!({"type": "invite.send", "code": dan_code}),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (404, Some("not_found")), "{b}");
    assert_eq!(
        workers::invites::store::link(&shards, eve, dan)
            .await
            .unwrap(),
        None,
        "no invite stored"
    );

    let (s, b) = app
        .http(0)
        .credentials("/api/v1/sessions", &dan_name, PASSWORD)
        .await;
    assert_eq!((s, b["code"].as_str()), (401, Some("unauthorized")), "{b}");
    sock.close().await;
    app.stop().await;
}

/// `user.delete` from a caller whose account has no row at all (a session outliving a row the
/// shard no longer has) is `not_found`, and writes no row.
#[tokio::test]
async fn deleting_an_account_that_has_no_row_is_not_found_and_writes_nothing() {
    let app = spawn_app().await;
    let d = common::deps(&app, Default::default()).await;
    let ghost = d.ids.next();
    let env = common::envelope(topics::Request::UserDelete);
    let ctx = workers::Ctx {
        env: &env,
        caller: Some(workers::Caller {
            user_id: ghost,
            username: "ghost".into(),
            session_id: "s".into(),
        }),
        deps: &d,
    };
    let e = workers::users::handle(&ctx).await.unwrap_err();
    assert!(
        matches!(&e, workers::Error::Reply(b) if b.code == ErrorCode::NotFound),
        "{e}"
    );
    assert_eq!(
        workers::users::store::row(&d.db, ghost, true)
            .await
            .unwrap(),
        None
    );
    app.stop().await;
}

/// Each domain's handler answers a request of another domain with `Unrouted` naming its kind
/// (poison for the dispatcher), never with another domain's effect.
#[tokio::test]
async fn each_domain_refuses_a_request_of_another_as_unrouted() {
    use topics::Request;
    let app = spawn_app().await;
    let d = common::deps(&app, Default::default()).await;
    for (domain, request) in [
        ("auth", Request::DmList),
        ("users", Request::InviteList),
        ("invites", Request::Me),
        ("dms", Request::LogoutAll),
        ("presence", Request::DmList),
    ] {
        let kind = request.kind();
        let env = common::envelope(request);
        let ctx = workers::Ctx {
            env: &env,
            caller: None,
            deps: &d,
        };
        let got = match domain {
            "auth" => workers::auth::handle(&ctx).await,
            "users" => workers::users::handle(&ctx).await,
            "invites" => workers::invites::handle(&ctx).await,
            "dms" => workers::dms::handle(&ctx).await,
            _ => workers::presence::handle(&ctx).await,
        };
        assert!(
            matches!(got, Err(workers::Error::Unrouted(k)) if k == kind),
            "{domain}: {got:?}"
        );
    }
    app.stop().await;
}

/// A drawn invite code that already names someone is not claimed (a rotation then draws
/// another): the claim says so and the code stays its owner's.
#[tokio::test]
async fn an_invite_code_that_names_someone_is_not_claimed_again() {
    use workers::users::store::{claim_invite_code, code_owner};
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, _) = app.user(1).await;
    let code = workers::users::normalise_code(&invite_code(&app, &ann_token).await);
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    assert!(!claim_invite_code(&shards, &code, bob).await.unwrap());
    assert_eq!(code_owner(&shards, &code).await.unwrap(), Some(ann));
    shards.disconnect().await;
    app.stop().await;
}

/// Disconnecting one handle of shards that others share leaves the pools open for them: only
/// the last handle closes them.
#[tokio::test]
async fn disconnecting_shared_shards_leaves_them_open_for_the_other_handles() {
    let app = spawn_app().await;
    let (ann, name, _) = app.user(0).await;
    let shards = workers::db::Shards::connect(&app.database).unwrap();
    let other = shards.clone();
    let read = async |db: &workers::db::Shards| {
        workers::users::store::row(db, ann, true)
            .await
            .unwrap()
            .map(|r| r.1)
    };
    assert_eq!(read(&shards).await.as_deref(), Some(name.as_str()));
    shards.disconnect().await;
    assert_eq!(read(&other).await.as_deref(), Some(name.as_str()));
    other.disconnect().await;
    app.stop().await;
}

/// The stack's Redis Cluster under a key prefix of one test's own: id node leases there touch
/// no running worker's.
fn lease_space() -> (runtime::redis::Cluster, runtime::redis::Keys) {
    let settings = runtime::RedisSettings {
        nodes: e2e::stack().redis.nodes,
        key_prefix: e2e::unique("ids"),
    };
    let redis = runtime::redis::cluster(&settings).expect("redis");
    (redis, runtime::redis::Keys::new(settings.key_prefix))
}

/// Id nodes (the node part of every id a worker mints) are leased once each: 1024 leases get
/// the 1024 nodes, and one more is refused with a configuration error rather than handed a node
/// another worker holds (two workers on one node could mint the same id).
#[tokio::test]
async fn every_id_node_is_leased_once_and_a_lease_more_is_refused() {
    let (redis, keys) = lease_space();
    let mut nodes = std::collections::BTreeSet::new();
    for _ in 0..1024 {
        let lease = workers::ids::lease_node(&redis, &keys).await.unwrap();
        assert!(nodes.insert(lease.node), "node {} leased twice", lease.node);
    }
    assert_eq!(nodes.last(), Some(&1023));
    let e = workers::ids::lease_node(&redis, &keys).await.unwrap_err();
    assert!(
        matches!(&e, workers::Error::Config(why) if why.contains("no free id node")),
        "{e}"
    );
}

/// Only the process holding an id node's lease renews or releases it. Once its lease ran out and
/// another process took the node (a worker stalled past 60 s), renewing and releasing leave the
/// other's lease as it is, and the renewal loop stops the worker with the reason instead of going
/// on minting ids on a node that is no longer its own. A lease still held is given back at stop.
#[tokio::test]
async fn an_id_node_lease_taken_by_another_is_neither_renewed_nor_released() {
    use runtime::redis::redis::AsyncCommands;
    use workers::ids::{lease_node, release, renew, renew_node};
    let (redis, keys) = lease_space();
    let mut con = redis.get().await.unwrap();
    let lease = lease_node(&redis, &keys).await.unwrap();
    let key = keys.key(format!("node:{}", lease.node));
    assert!(renew(&redis, &keys, &lease).await.unwrap());
    let ttl: i64 = con.pttl(&key).await.unwrap();
    assert!(ttl > 55_000, "renewed to 60 s: {ttl}");

    // the lease ran out and another process took the node
    let _: () = con.pset_ex(&key, "another", 60_000).await.unwrap();
    let _: () = con.pexpire(&key, 30_000).await.unwrap();
    assert!(!renew(&redis, &keys, &lease).await.unwrap());
    assert!(!release(&redis, &keys, &lease).await.unwrap());
    let held: Option<String> = con.get(&key).await.unwrap();
    assert_eq!(held.as_deref(), Some("another"));
    let ttl: i64 = con.pttl(&key).await.unwrap();
    assert!(ttl <= 30_000, "the other's lease is not extended: {ttl}");
    let stop = tokio_util::sync::CancellationToken::new();
    let lost = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        renew_node(
            redis.clone(),
            keys.clone(),
            lease.clone(),
            stop.clone(),
            std::time::Duration::from_millis(50),
        ),
    )
    .await
    .expect("the renewal loop ends");
    assert!(
        matches!(&lost, Err(workers::Error::LeaseLost(n)) if *n == lease.node),
        "{lost:?}"
    );
    assert!(stop.is_cancelled(), "the worker is told to stop");
    let held: Option<String> = con.get(&key).await.unwrap();
    assert_eq!(held.as_deref(), Some("another"));

    // a lease still held is renewed until stop, then given back
    let mine = lease_node(&redis, &keys).await.unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let kept = tokio::spawn(renew_node(
        redis.clone(),
        keys.clone(),
        mine.clone(),
        stop.clone(),
        std::time::Duration::from_millis(50),
    ));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.cancel();
    assert!(kept.await.unwrap().is_ok());
    let gone: Option<String> = con
        .get(keys.key(format!("node:{}", mine.node)))
        .await
        .unwrap();
    assert_eq!(gone, None, "released at stop");
}
