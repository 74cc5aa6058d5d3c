//! Invites (feature 7): by personal code, told live to every device, accepted or rejected with
//! the inviter told live, removed connections re-invitable, and every error the brief names.

mod common;

use common::{befriend, invite_code, invite_event, rpc};
use e2e::client::{err, ok, Client};
use e2e::{spawn_app, spawn_app_with, Options};
use serde_json::{json, Value};
use topics::frames::{Direction, InviteState};
use topics::{ErrorCode, Event, Response};

fn code_of(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("")
}

/// Ann on edge 0 has invited Bob on edge 1 by his code, and Bob's socket has seen it pending.
struct Invited {
    ann: topics::Id,
    bob: topics::Id,
    bob_code: String,
    a: Client,
    b: Client,
}

async fn ann_invites_bob(app: &e2e::TestApp) -> Invited {
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let bob_code = invite_code(app, &bob_token).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;
    ok(a.request(json!({"type": "invite.send", "code": bob_code}))
        .await);
    invite_event(&mut b, ann, InviteState::Pending).await;
    Invited {
        ann,
        bob,
        bob_code,
        a,
        b,
    }
}

#[tokio::test]
async fn an_invite_reaches_every_device_and_the_answer_reaches_the_inviter() {
    let app = spawn_app().await;
    let (ann, ann_name, ann_token) = app.user(0).await;
    let (bob, bob_name, bob_token) = app.user(1).await;
    let bob_token2 = app.http(0).login(&bob_name, common::PASSWORD).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b0 = Client::connect(&app.ws_url(0), &bob_token2).await;
    let mut b1 = Client::connect(&app.ws_url(1), &bob_token).await;
    let Response::User {
        invite_code: Some(code),
        user,
    } = ok(b1.request(json!({"type": "user.me"})).await)
    else {
        panic!()
    };
    assert_eq!(user.user_id, bob);

    let Response::Link { link } = ok(a
        .request(json!({"type": "invite.send", "code": code}))
        .await)
    else {
        panic!()
    };
    assert_eq!(
        (
            link.user_id,
            link.username.as_str(),
            link.state,
            link.direction
        ),
        (
            bob,
            bob_name.as_str(),
            InviteState::Pending,
            Direction::Outgoing
        )
    );
    for b in [&mut b0, &mut b1] {
        let l = invite_event(b, ann, InviteState::Pending).await;
        assert_eq!(
            (l.username.as_str(), l.direction),
            (ann_name.as_str(), Direction::Incoming)
        );
    }
    let Response::Links { links } = ok(b0.request(json!({"type": "invite.list"})).await) else {
        panic!()
    };
    assert_eq!(links.len(), 1);
    assert_eq!(
        (links[0].user_id, links[0].state, links[0].direction),
        (ann, InviteState::Pending, Direction::Incoming)
    );

    let Response::Link { link } = ok(b1
        .request(json!({"type": "invite.respond", "user_id": ann, "accept": true}))
        .await)
    else {
        panic!()
    };
    assert_eq!((link.user_id, link.state), (ann, InviteState::Accepted));
    let l = invite_event(&mut a, bob, InviteState::Accepted).await;
    assert_eq!(l.direction, Direction::Outgoing);
    let Response::Links { links } = ok(a.request(json!({"type": "invite.list"})).await) else {
        panic!()
    };
    assert_eq!(
        links
            .iter()
            .map(|l| (l.user_id, l.state))
            .collect::<Vec<_>>(),
        vec![(bob, InviteState::Accepted)]
    );

    // Already connected: either way round is a conflict.
    assert_eq!(
        err(a
            .request(json!({"type": "invite.send", "code": code}))
            .await),
        ErrorCode::Conflict
    );
    let ann_code = common::invite_code(&app, &ann_token).await;
    assert_eq!(
        err(b0
            .request(json!({"type": "invite.send", "code": ann_code}))
            .await),
        ErrorCode::Conflict
    );
    // The inviter has no incoming invite to answer.
    assert_eq!(
        err(a
            .request(json!({"type": "invite.respond", "user_id": bob, "accept": false}))
            .await),
        ErrorCode::NotFound
    );
    app.stop().await;
}

#[tokio::test]
async fn invite_errors_are_clear() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (_, _, cat_token) = app.user(0).await;
    let ann_code = invite_code(&app, &ann_token).await;
    let bob_code = invite_code(&app, &bob_token).await;

    // Self-invite.
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": ann_code}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (400, "invalid_input"), "{b}");
    // Unknown and malformed codes.
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": "ZZZZZZZZZZ"}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (404, "not_found"), "{b}");
    for bad in ["", "   ", &"A".repeat(40)] {
        let (s, b) = rpc(
            &app,
            0,
            &ann_token,
            json!({"type": "invite.send", "code": bad}),
        )
        .await;
        assert_eq!((s, code_of(&b)), (400, "invalid_input"), "{bad:?}: {b}");
    }
    // Answering an invite nobody sent.
    let (s, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "invite.respond", "user_id": ann, "accept": true}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (404, "not_found"), "{b}");

    // Pending: again, and the other way round.
    let (s, _) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": bob_code}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": bob_code}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (409, "conflict"), "already pending: {b}");
    let (s, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "invite.send", "code": ann_code}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (409, "conflict"), "reverse pending: {b}");
    // A third user cannot answer an invite meant for someone else.
    let (s, b) = rpc(
        &app,
        0,
        &cat_token,
        json!({"type": "invite.respond", "user_id": ann, "accept": true}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (404, "not_found"), "{b}");
    // The inviter cannot accept their own invite.
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.respond", "user_id": bob, "accept": true}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (404, "not_found"), "{b}");
    // Removing a connection that does not exist.
    let (s, b) = rpc(
        &app,
        0,
        &cat_token,
        json!({"type": "connection.remove", "user_id": bob}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (404, "not_found"), "{b}");
    // Still pending, and only for the two of them.
    let (_, b) = rpc(&app, 0, &ann_token, json!({"type": "invite.list"})).await;
    assert_eq!(b["links"].as_array().unwrap().len(), 1);
    assert_eq!(b["links"][0]["state"], "pending");
    let (_, b) = rpc(&app, 0, &cat_token, json!({"type": "invite.list"})).await;
    assert!(b["links"].as_array().unwrap().is_empty());
    // Invites need a session.
    let (s, _) = app
        .http(0)
        .post(
            "/api/v1/rpc",
            json!({"type": "invite.send", "code": bob_code}),
            None,
        )
        .await;
    assert_eq!(s, 401);
    app.stop().await;
}

#[tokio::test]
async fn rejection_is_told_live_and_removed_connections_can_be_reinvited() {
    let app = spawn_app().await;
    let Invited {
        ann,
        bob,
        bob_code,
        mut a,
        mut b,
    } = ann_invites_bob(&app).await;
    let Response::Link { link } = ok(b
        .request(json!({"type": "invite.respond", "user_id": ann, "accept": false}))
        .await)
    else {
        panic!()
    };
    assert_eq!(link.state, InviteState::Rejected);
    let l = invite_event(&mut a, bob, InviteState::Rejected).await;
    assert_eq!(l.direction, Direction::Outgoing);
    // A rejected invite opens no conversation.
    assert_eq!(
        err(a.request(json!({"type": "dm.open", "user_id": bob})).await),
        ErrorCode::Forbidden
    );

    // Ann forgets the rejected invite and invites again; this time Bob accepts.
    ok(
        a.request(json!({"type": "connection.remove", "user_id": bob}))
            .await,
    );
    ok(a.request(json!({"type": "invite.send", "code": bob_code}))
        .await);
    invite_event(&mut b, ann, InviteState::Pending).await;
    ok(
        b.request(json!({"type": "invite.respond", "user_id": ann, "accept": true}))
            .await,
    );
    invite_event(&mut a, bob, InviteState::Accepted).await;
    ok(a.request(json!({"type": "dm.open", "user_id": bob})).await);

    // Bob removes the connection: both sides forget it, and messaging stops.
    ok(
        b.request(json!({"type": "connection.remove", "user_id": ann}))
            .await,
    );
    for c in [&mut a, &mut b] {
        let Response::Links { links } = ok(c.request(json!({"type": "invite.list"})).await) else {
            panic!()
        };
        assert!(links.is_empty(), "{links:?}");
    }
    assert_eq!(
        err(a.request(json!({"type": "dm.open", "user_id": bob})).await),
        ErrorCode::Forbidden
    );
    // And the connection can be made again.
    ok(a.request(json!({"type": "invite.send", "code": bob_code}))
        .await);
    let l = invite_event(&mut b, ann, InviteState::Pending).await;
    assert_eq!(l.direction, Direction::Incoming);
    ok(
        b.request(json!({"type": "invite.respond", "user_id": ann, "accept": true}))
            .await,
    );
    ok(a.request(json!({"type": "dm.open", "user_id": bob})).await);
    app.stop().await;
}

#[tokio::test]
async fn pending_invites_are_limited_per_user() {
    let mut opts = Options::default();
    opts.limits.pending_invites_max = 1;
    let app = spawn_app_with(opts).await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (_, _, cat_token) = app.user(0).await;
    let bob_code = invite_code(&app, &bob_token).await;
    let cat_code = invite_code(&app, &cat_token).await;
    let (s, _) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": bob_code}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": cat_code}),
    )
    .await;
    assert_eq!((s, code_of(&b)), (429, "rate_limited"), "{b}");
    // The limit is per inviter: Bob can still invite Cat.
    let (s, _) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "invite.send", "code": cat_code}),
    )
    .await;
    assert_eq!(s, 200);
    // Once answered, the invite is no longer pending and Ann may invite again.
    let (s, _) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "invite.respond", "user_id": ann, "accept": true}),
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": cat_code}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let _ = bob;
    app.stop().await;
}

#[tokio::test]
async fn codes_are_accepted_in_lower_case_and_with_spaces() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (cat, _, cat_token) = app.user(1).await;
    let bob_code = invite_code(&app, &bob_token).await;
    let cat_code = invite_code(&app, &cat_token).await;
    assert_eq!(bob_code, bob_code.to_uppercase());
    let lower = format!("  {} ", bob_code.to_lowercase());
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "invite.send", "code": lower}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(common::id(&b["link"]["user_id"]), bob);
    let (head, tail) = cat_code.split_at(5);
    let spaced = format!("{} {}", head.to_lowercase(), tail);
    let (s, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "invite.send", "code": spaced}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(common::id(&b["link"]["user_id"]), cat);
    // And an accepted invite made that way connects them.
    befriend(&app, (ann, &ann_token), (cat, &cat_token)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_withdrawn_invite_is_told_live_to_the_invitee() {
    let app = spawn_app().await;
    let Invited {
        ann,
        bob,
        mut a,
        mut b,
        ..
    } = ann_invites_bob(&app).await;
    ok(
        a.request(json!({"type": "connection.remove", "user_id": bob}))
            .await,
    );
    let gone = |peer| move |e: &Event| matches!(e, Event::ConnectionRemoved { user_id } if *user_id == peer);
    b.event_where(gone(ann)).await;
    a.event_where(gone(bob)).await;
    let Response::Links { links } = ok(b.request(json!({"type": "invite.list"})).await) else {
        panic!()
    };
    assert!(links.is_empty(), "{links:?}");
    // Nothing left to answer or to remove.
    assert_eq!(
        err(b
            .request(json!({"type": "invite.respond", "user_id": ann, "accept": true}))
            .await),
        ErrorCode::NotFound
    );
    assert_eq!(
        err(b
            .request(json!({"type": "connection.remove", "user_id": ann}))
            .await),
        ErrorCode::NotFound
    );
    a.close().await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn a_rotated_invite_code_replaces_the_old_one() {
    let app = spawn_app().await;
    let (_, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let old = invite_code(&app, &bob_token).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;

    // over WebSocket: a new code, shown by user.me from then on
    let Response::User {
        invite_code: Some(new),
        user,
    } = ok(b.request(json!({"type": "user.rotate_invite_code"})).await)
    else {
        panic!()
    };
    assert_eq!(user.user_id, bob);
    assert_ne!(new, old);
    assert_eq!(invite_code(&app, &bob_token).await, new);

    // the old code names nobody; the new one invites Bob
    assert_eq!(
        err(a.request(json!({"type": "invite.send", "code": old})).await),
        ErrorCode::NotFound
    );
    let Response::Link { link } = ok(a.request(json!({"type": "invite.send", "code": new})).await)
    else {
        panic!()
    };
    assert_eq!(link.user_id, bob);

    // over HTTP, through its own route: the code Ann holds stops working too
    let (status, body) = app
        .http(1)
        .post("/api/v1/users/me/invite_code", json!({}), Some(&bob_token))
        .await;
    assert_eq!(status, 200, "{body}");
    let newer = body["invite_code"].as_str().unwrap().to_string();
    assert_ne!(newer, new);
    assert_eq!(invite_code(&app, &bob_token).await, newer);
    let (_, _, carl_token) = app.user(0).await;
    let mut c = Client::connect(&app.ws_url(0), &carl_token).await;
    assert_eq!(
        err(c.request(json!({"type": "invite.send", "code": new})).await),
        ErrorCode::NotFound
    );
    ok(c.request(json!({"type": "invite.send", "code": newer}))
        .await);

    // without a session: refused, nothing rotated
    let (status, _) = app
        .http(1)
        .post("/api/v1/users/me/invite_code", json!({}), None)
        .await;
    assert_eq!(status, 401);
    assert_eq!(invite_code(&app, &bob_token).await, newer);
}

#[tokio::test]
async fn rotations_at_the_same_moment_leave_one_code_that_works() {
    let app = spawn_app().await;
    let (bob, _, bob_token) = app.user(1).await;
    let old = invite_code(&app, &bob_token).await;
    // HTTP calls with a bearer token are keyed by request, so they may run side by side.
    let calls = (0..8).map(|i| {
        let http = app.http(i % 2);
        let token = bob_token.clone();
        async move {
            http.post("/api/v1/users/me/invite_code", json!({}), Some(&token))
                .await
        }
    });
    let answers = futures::future::join_all(calls).await;
    let current = invite_code(&app, &bob_token).await;
    assert_ne!(current, old);
    let (_, _, ann_token) = app.user(0).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    // every code an answer showed is the current one or names nobody; the old one names nobody
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        let shown = body["invite_code"].as_str().unwrap();
        if shown != current {
            assert_eq!(
                err(a
                    .request(json!({"type": "invite.send", "code": shown}))
                    .await),
                ErrorCode::NotFound,
                "a code shown by a losing rotation still works"
            );
        }
    }
    assert_eq!(
        err(a.request(json!({"type": "invite.send", "code": old})).await),
        ErrorCode::NotFound
    );
    let Response::Link { link } = ok(a
        .request(json!({"type": "invite.send", "code": current}))
        .await)
    else {
        panic!()
    };
    assert_eq!(link.user_id, bob);
}
