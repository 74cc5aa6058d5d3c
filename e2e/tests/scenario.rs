//! The scenario of issue 3, end to end through two edges, Kafka, every worker, the router,
//! MariaDB shards and Redis Cluster. Written up in docs/protocol.md.

use e2e::client::{ok, Client};
use e2e::{spawn_app_with, Options};
use serde_json::json;
use std::time::Duration;
use topics::frames::{Direction, InviteState};
use topics::{Event, Id, Response};

fn id(v: &serde_json::Value) -> Id {
    serde_json::from_value(v.clone()).unwrap()
}

async fn keepalive(c: &mut Client) {
    assert!(matches!(
        ok(c.request(json!({"type": "session.refresh"})).await),
        Response::Session { .. }
    ));
}

#[tokio::test]
async fn two_users_chat_through_the_whole_platform() {
    let mut opts = Options::default();
    opts.limits.session_idle_timeout_s = 6;
    let app = spawn_app_with(opts).await;

    // Sign up and log in over HTTP.
    let (ann_id, _ann, ann_token) = app.user(0).await;
    let (bob_id, bob, bob_token) = app.user(1).await;

    // Connect by WebSocket to different edges.
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;
    assert_ne!(a.edge, b.edge);

    // Both appear in the online list.
    let mut seen = false;
    for _ in 0..50 {
        let Response::Online { users, .. } = ok(a
            .request(json!({"type": "online.list", "limit": 100}))
            .await)
        else {
            panic!()
        };
        if users.iter().any(|u| u.user_id == ann_id)
            && users
                .iter()
                .any(|u| u.user_id == bob_id && u.username == bob)
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "both users online");

    // A invites B by B's code; B sees it live and accepts; A sees that live.
    let Response::User {
        invite_code: Some(code),
        ..
    } = ok(b.request(json!({"type": "user.me"})).await)
    else {
        panic!()
    };
    let Response::Link { link } = ok(a
        .request(json!({"type": "invite.send", "code": code}))
        .await)
    else {
        panic!()
    };
    assert_eq!(
        (link.user_id, link.state, link.direction),
        (bob_id, InviteState::Pending, Direction::Outgoing)
    );
    let Event::InviteUpdated { link } = b
        .event_where(|e| matches!(e, Event::InviteUpdated { .. }))
        .await
    else {
        panic!()
    };
    assert_eq!(
        (link.user_id, link.state, link.direction),
        (ann_id, InviteState::Pending, Direction::Incoming)
    );
    ok(
        b.request(json!({"type": "invite.respond", "user_id": ann_id, "accept": true}))
            .await,
    );
    // (A's own devices also saw its pending invite; wait for B's answer.)
    let Event::InviteUpdated { link } = a
        .event_where(
            |e| matches!(e, Event::InviteUpdated { link } if link.state == InviteState::Accepted),
        )
        .await
    else {
        panic!()
    };
    assert_eq!((link.user_id, link.state), (bob_id, InviteState::Accepted));
    keepalive(&mut a).await;
    keepalive(&mut b).await;

    // A opens the DM (idempotently) and they exchange messages both ways.
    let Response::Conversation { conversation } = ok(a
        .request(json!({"type": "dm.open", "user_id": bob_id}))
        .await)
    else {
        panic!()
    };
    let conv = conversation.conversation_id;
    let Response::Conversation {
        conversation: again,
    } = ok(b
        .request(json!({"type": "dm.open", "user_id": ann_id}))
        .await)
    else {
        panic!()
    };
    assert_eq!(again.conversation_id, conv, "one conversation per pair");
    let send = |cid: &str, text: &str| json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cid, "text": text});
    let Response::Sent { message, duplicate } = ok(a.request(send("a1", "hello bob")).await) else {
        panic!()
    };
    assert_eq!((message.seq, duplicate), (1, false));
    let Event::DmMessage { message } = b
        .event_where(|e| matches!(e, Event::DmMessage { .. }))
        .await
    else {
        panic!()
    };
    assert_eq!(
        (message.seq, message.text.as_str(), message.author_id),
        (1, "hello bob", Some(ann_id))
    );
    let Response::Sent { message, .. } = ok(b.request(send("b1", "hi ann")).await) else {
        panic!()
    };
    assert_eq!(message.seq, 2);
    let Event::DmMessage { message } = a
        .event_where(|e| matches!(e, Event::DmMessage { message } if message.seq == 2))
        .await
    else {
        panic!()
    };
    assert_eq!(message.text, "hi ann");

    // B's socket drops; A sends three more; B reconnects with its last sequence and gets
    // exactly those three, in order, once.
    b.close().await;
    for i in 0..3 {
        ok(
            a.request(send(&format!("a-missed-{i}"), &format!("missed {i}")))
                .await,
        );
    }
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;
    let Response::Synced { conversations } = ok(b
        .request(json!({"type": "dm.sync", "since": {conv.to_string(): 2}}))
        .await)
    else {
        panic!()
    };
    assert_eq!(conversations.len(), 1);
    let got: Vec<(u64, String)> = conversations[0]
        .messages
        .iter()
        .map(|m| (m.seq, m.text.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            (3, "missed 0".into()),
            (4, "missed 1".into()),
            (5, "missed 2".into())
        ]
    );
    assert!(!conversations[0].more);

    // A retries a send with the same client message id: no duplicate.
    let Response::Sent { message, duplicate } = ok(a.request(send("a-missed-2", "missed 2")).await)
    else {
        panic!()
    };
    assert_eq!((message.seq, duplicate), (5, true));
    let Response::History { messages, more, .. } = ok(b
        .request(json!({"type": "dm.history", "conversation_id": conv, "limit": 50}))
        .await)
    else {
        panic!()
    };
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert!(!more);
    keepalive(&mut a).await;
    keepalive(&mut b).await;

    // A broadcast reaches both.
    ok(
        a.request(json!({"type": "broadcast.send", "text": "lobby: hello everyone"}))
            .await,
    );
    for c in [&mut a, &mut b] {
        let Event::Broadcast {
            text, from_user_id, ..
        } = c
            .event_where(|e| matches!(e, Event::Broadcast { .. }))
            .await
        else {
            panic!()
        };
        assert_eq!(
            (text.as_str(), from_user_id),
            ("lobby: hello everyone", ann_id)
        );
    }

    // Keep-alive keeps B's session alive past the idle timeout (6 s here); a session nobody
    // refreshes (B's HTTP token) expires.
    let (_, spare) = (0, app.http(1).login(&bob, "pass-word-1").await);
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        keepalive(&mut b).await;
        keepalive(&mut a).await;
    }
    assert_eq!(ok(b.request(json!({"type": "ping"})).await), Response::Pong);
    let (status, _) = app.http(0).get("/api/v1/users/me", Some(&spare)).await;
    assert_eq!(status, 401, "unrefreshed session expired");

    // A logs out everywhere: A's socket is told and closed.
    ok(a.request(json!({"type": "session.logout_all"})).await);
    let Event::SessionRevoked { .. } = a
        .event_where(|e| matches!(e, Event::SessionRevoked { .. }))
        .await
    else {
        panic!()
    };
    assert_eq!(a.closed().await, Some(4001));
    let (status, _) = app.http(0).get("/api/v1/users/me", Some(&ann_token)).await;
    assert_eq!(status, 401);

    // B deletes the account: B's socket closes, and A's history shows the author as deleted.
    ok(b.request(json!({"type": "user.delete"})).await);
    assert_eq!(b.closed().await, Some(4001));
    let ann_again = app.http(0).login(&_ann, "pass-word-1").await;
    let (status, body) = app
        .http(0)
        .post(
            "/api/v1/rpc",
            json!({"type": "dm.history", "conversation_id": conv}),
            Some(&ann_again),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 5);
    for m in msgs {
        if m["client_msg_id"] == "b1" {
            assert_eq!(m["author"], "[deleted]");
            assert!(m["author_id"].is_null());
        } else {
            assert_eq!(id(&m["author_id"]), ann_id);
        }
    }
    let (status, _) = app
        .http(0)
        .get(&format!("/api/v1/users/{bob_id}"), Some(&ann_again))
        .await;
    assert_eq!(status, 404, "deleted users have no public profile");
    let (status, _) = app
        .http(1)
        .post(
            "/api/v1/sessions",
            json!({"username": bob, "password": "pass-word-1"}),
            None,
        )
        .await;
    assert_eq!(status, 401, "deleted users cannot log in");
    app.stop().await;
}
