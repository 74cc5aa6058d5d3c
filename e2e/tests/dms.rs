//! Direct messages: DM create (feature 12) and lookup (feature 13), with per-message
//! authorization (feature 4): nobody reads or writes a conversation they are not in.

mod common;

use common::{befriend, chat, eventually, id, invite_code, open_dm, rpc, Chat};
use e2e::client::{err, ok, Client};
use e2e::spawn_app;
use serde_json::{json, Value};
use std::time::Duration;
use topics::{ErrorCode, Event, Id, Response};

fn send(conv: Id, cid: &str, text: &str) -> Value {
    json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": cid, "text": text})
}

fn seqs(body: &Value) -> Vec<u64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_dm_opens_only_between_connections_and_only_once() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, bob_name, bob_token) = app.user(1).await;
    let (cat, _, cat_token) = app.user(0).await;

    // Not connected, only invited, unknown, or myself.
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.open", "user_id": bob}),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (403, Some("forbidden")), "{b}");
    let code = invite_code(&app, &cat_token).await;
    assert_eq!(
        rpc(
            &app,
            0,
            &ann_token,
            json!({"type": "invite.send", "code": code})
        )
        .await
        .0,
        200
    );
    for (who, peer) in [(&ann_token, cat), (&cat_token, ann)] {
        let (s, b) = rpc(&app, 0, who, json!({"type": "dm.open", "user_id": peer})).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (403, Some("forbidden")),
            "pending: {b}"
        );
    }
    let (s, _) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.open", "user_id": "4242"}),
    )
    .await;
    assert_eq!(s, 403);
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.open", "user_id": ann}),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_input")), "{b}");
    let (s, b) = rpc(&app, 0, &ann_token, json!({"type": "dm.list"})).await;
    assert_eq!(s, 200);
    assert!(b["conversations"].as_array().unwrap().is_empty(), "{b}");

    // Connected: one conversation, whoever opens it and however often.
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let Response::Conversation { conversation } =
        ok(a.request(json!({"type": "dm.open", "user_id": bob})).await)
    else {
        panic!()
    };
    assert_eq!(
        (conversation.peer_id, conversation.peer.as_str()),
        (bob, bob_name.as_str())
    );
    assert_eq!((conversation.last_seq, conversation.unread), (0, 0));
    assert!(conversation.last_message.is_none());
    let conv = conversation.conversation_id;
    assert_eq!(open_dm(&app, &ann_token, bob).await, conv);
    assert_eq!(open_dm(&app, &bob_token, ann).await, conv);
    let (_, b) = rpc(&app, 1, &bob_token, json!({"type": "dm.list"})).await;
    assert_eq!(b["conversations"].as_array().unwrap().len(), 1);
    a.close().await;
    app.stop().await;
}

#[tokio::test]
async fn nobody_reads_or_writes_a_conversation_they_are_not_in() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (cat, _, cat_token) = app.user(0).await;
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    // Cat is connected to both, and so is someone they could each talk to, but not in this DM.
    befriend(&app, (cat, &cat_token), (ann, &ann_token)).await;
    let conv = open_dm(&app, &ann_token, bob).await;
    let (s, _) = rpc(&app, 0, &ann_token, send(conv, "a1", "private")).await;
    assert_eq!(s, 200);

    let mut c = Client::connect(&app.ws_url(1), &cat_token).await;
    let attempts = [
        json!({"type": "dm.history", "conversation_id": conv}),
        json!({"type": "dm.history", "conversation_id": conv, "after_seq": 0}),
        json!({"type": "dm.history", "conversation_id": conv, "before_seq": 5}),
        json!({"type": "dm.sync", "since": {conv.to_string(): 0}}),
        send(conv, "c1", "let me in"),
        json!({"type": "dm.read", "conversation_id": conv, "seq": 1}),
    ];
    // More than a page of conversations in one sync is refused before any is read.
    let since: serde_json::Map<String, serde_json::Value> =
        (1..=101).map(|i| (i.to_string(), json!(0))).collect();
    let (s, b) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.sync", "since": since}),
    )
    .await;
    assert_eq!((s, b["code"].as_str()), (400, Some("invalid_input")), "{b}");
    for req in &attempts {
        assert_eq!(
            err(c.request(req.clone()).await),
            ErrorCode::NotFound,
            "{req}"
        );
        let (s, b) = rpc(&app, 0, &cat_token, req.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (404, Some("not_found")),
            "{req}: {b}"
        );
    }
    // A conversation that does not exist looks the same.
    assert_eq!(
        err(c
            .request(json!({"type": "dm.history", "conversation_id": "77"}))
            .await),
        ErrorCode::NotFound
    );
    // Without a session, nothing at all.
    let (s, _) = app
        .http(0)
        .post(
            "/api/v1/rpc",
            json!({"type": "dm.history", "conversation_id": conv}),
            None,
        )
        .await;
    assert_eq!(s, 401);

    // Nothing Cat did changed the conversation, and Cat heard nothing of it.
    let (s, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "dm.history", "conversation_id": conv}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(seqs(&b), vec![1]);
    assert_eq!(b["messages"][0]["text"], "private");
    let (_, b) = rpc(&app, 1, &bob_token, json!({"type": "dm.list"})).await;
    assert_eq!(
        b["conversations"][0]["unread"], 1,
        "Cat's dm.read did not count"
    );
    let (_, b) = rpc(&app, 0, &cat_token, json!({"type": "dm.list"})).await;
    assert!(b["conversations"].as_array().unwrap().is_empty(), "{b}");
    let (s, _) = rpc(&app, 0, &ann_token, send(conv, "a2", "still private")).await;
    assert_eq!(s, 200);
    assert!(
        c.event(Duration::from_millis(700)).await.is_none(),
        "no event reaches a non-member"
    );
    c.close().await;
    app.stop().await;
}

#[tokio::test]
async fn the_list_shows_last_message_and_unread_count_and_reading_lowers_it() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    let (cat, cat_name, cat_token) = app.user(0).await;
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    befriend(&app, (cat, &cat_token), (bob, &bob_token)).await;
    let with_ann = open_dm(&app, &ann_token, bob).await;
    for (i, t) in ["one", "two", "three"].iter().enumerate() {
        let (s, _) = rpc(&app, 0, &ann_token, send(with_ann, &format!("a{i}"), t)).await;
        assert_eq!(s, 200);
    }
    let list = |token: String| {
        let app = &app;
        async move {
            let (s, b) = rpc(app, 1, &token, json!({"type": "dm.list"})).await;
            assert_eq!(s, 200, "{b}");
            b["conversations"].as_array().unwrap().clone()
        }
    };
    let l = list(bob_token.clone()).await;
    assert_eq!(l.len(), 1);
    assert_eq!(common::id(&l[0]["conversation_id"]), with_ann);
    assert_eq!(common::id(&l[0]["peer_id"]), ann);
    assert_eq!(l[0]["last_seq"], 3);
    assert_eq!(l[0]["last_message"]["text"], "three");
    assert_eq!(common::id(&l[0]["last_message"]["author_id"]), ann);
    assert_eq!(l[0]["unread"], 3);
    let l = list(ann_token.clone()).await;
    assert_eq!(
        (
            l[0]["unread"].as_u64(),
            l[0]["last_message"]["text"].as_str()
        ),
        (Some(0), Some("three")),
        "my own messages are not unread"
    );

    // Reading lowers the count; it never moves backwards; reading past the end is the end.
    let mut b = Client::connect(&app.ws_url(1), &bob_token).await;
    let read = |seq: u64| json!({"type": "dm.read", "conversation_id": with_ann, "seq": seq});
    assert_eq!(ok(b.request(read(2)).await), Response::Ok);
    assert_eq!(list(bob_token.clone()).await[0]["unread"], 1);
    assert_eq!(ok(b.request(read(1)).await), Response::Ok);
    assert_eq!(list(bob_token.clone()).await[0]["unread"], 1);
    assert_eq!(ok(b.request(read(99)).await), Response::Ok);
    assert_eq!(list(bob_token.clone()).await[0]["unread"], 0);
    let (s, _) = rpc(&app, 0, &ann_token, send(with_ann, "a3", "four")).await;
    assert_eq!(s, 200);
    assert_eq!(list(bob_token.clone()).await[0]["unread"], 1);

    // A second conversation: the most recently active comes first.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let with_cat = open_dm(&app, &cat_token, bob).await;
    let (s, _) = rpc(&app, 0, &cat_token, send(with_cat, "c0", "hi from cat")).await;
    assert_eq!(s, 200);
    let Response::Conversations { conversations } = ok(b.request(json!({"type": "dm.list"})).await)
    else {
        panic!()
    };
    assert_eq!(
        conversations
            .iter()
            .map(|c| (c.conversation_id, c.unread))
            .collect::<Vec<_>>(),
        vec![(with_cat, 1), (with_ann, 1)]
    );
    assert_eq!(conversations[0].peer, cat_name);
    assert_eq!(
        conversations[0]
            .last_message
            .as_ref()
            .map(|m| m.text.as_str()),
        Some("hi from cat")
    );
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn history_pages_by_sequence_number() {
    let app = spawn_app().await;
    let Chat {
        ann_token,
        bob,
        bob_token,
        conv,
        ..
    } = chat(&app).await;
    for i in 1..=5 {
        let token = if i % 2 == 0 { &bob_token } else { &ann_token };
        let (s, b) = rpc(
            &app,
            0,
            token,
            send(conv, &format!("m{i}"), &format!("msg {i}")),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(b["message"]["seq"], i);
    }
    let page = |extra: Value| {
        let app = &app;
        let token = ann_token.clone();
        async move {
            let mut req = json!({"type": "dm.history", "conversation_id": conv});
            for (k, v) in extra.as_object().unwrap() {
                req[k] = v.clone();
            }
            let (s, b) = rpc(app, 1, &token, req).await;
            assert_eq!(s, 200, "{extra}: {b}");
            (seqs(&b), b["more"].as_bool().unwrap())
        }
    };
    assert_eq!(page(json!({})).await, (vec![1, 2, 3, 4, 5], false));
    assert_eq!(page(json!({"limit": 2})).await, (vec![4, 5], true));
    assert_eq!(
        page(json!({"limit": 0})).await,
        (vec![5], true),
        "limit clamps to 1"
    );
    assert_eq!(
        page(json!({"after_seq": 0, "limit": 2})).await,
        (vec![1, 2], true)
    );
    assert_eq!(
        page(json!({"after_seq": 2, "limit": 2})).await,
        (vec![3, 4], true)
    );
    assert_eq!(
        page(json!({"after_seq": 3, "limit": 2})).await,
        (vec![4, 5], false)
    );
    assert_eq!(page(json!({"after_seq": 5})).await, (vec![], false));
    // Older pages may come from a replica: let it catch up.
    let want = [
        (json!({"before_seq": 4, "limit": 2}), (vec![2, 3], true)),
        (json!({"before_seq": 2, "limit": 2}), (vec![1], false)),
        (
            json!({"before_seq": 6, "limit": 10}),
            (vec![1, 2, 3, 4, 5], false),
        ),
        (json!({"before_seq": 1}), (vec![], false)),
    ];
    for (extra, expected) in want {
        eventually(&format!("history page {extra}"), || {
            let p = page(extra.clone());
            let expected = expected.clone();
            async move { (p.await == expected).then_some(()) }
        })
        .await;
    }
    // Messages come whole: author, text, ids.
    let (_, b) = rpc(
        &app,
        1,
        &bob_token,
        json!({"type": "dm.history", "conversation_id": conv, "after_seq": 1, "limit": 1}),
    )
    .await;
    let m = &b["messages"][0];
    assert_eq!(
        (m["text"].as_str(), m["client_msg_id"].as_str()),
        (Some("msg 2"), Some("m2"))
    );
    assert_eq!(common::id(&m["author_id"]), bob);

    // Both directions at once, and mistyped bounds, are bad input.
    for bad in [
        json!({"type": "dm.history", "conversation_id": conv, "before_seq": 4, "after_seq": 1}),
        json!({"type": "dm.history", "conversation_id": conv, "before_seq": "4"}),
        json!({"type": "dm.history", "conversation_id": conv, "limit": -1}),
        json!({"type": "dm.history"}),
    ] {
        let (s, b) = rpc(&app, 0, &ann_token, bad.clone()).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}: {b}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_sends_are_refused_and_store_nothing() {
    let app = spawn_app().await;
    let Chat {
        ann_token,
        bob_token,
        conv,
        ..
    } = chat(&app).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let cases = [
        (send(conv, "e1", ""), ErrorCode::InvalidInput),
        (send(conv, "e2", "   \n "), ErrorCode::InvalidInput),
        (send(conv, "e3", "a\u{0}b"), ErrorCode::InvalidInput),
        (
            send(conv, "e4", &"x".repeat(4001)),
            ErrorCode::PayloadTooLarge,
        ),
        (send(conv, "", "hello"), ErrorCode::InvalidInput),
        (
            send(conv, &"c".repeat(65), "hello"),
            ErrorCode::InvalidInput,
        ),
        (
            json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": 7, "text": "hi"}),
            ErrorCode::InvalidInput,
        ),
        (
            json!({"type": "dm.send", "conversation_id": conv, "text": "hi"}),
            ErrorCode::InvalidInput,
        ),
    ];
    for (req, code) in &cases {
        assert_eq!(err(a.request(req.clone()).await), *code, "{req}");
    }
    let (s, b) = rpc(&app, 1, &ann_token, send(conv, "e5", &"y".repeat(4001))).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    // Nothing was stored; the limits themselves are fine.
    let (_, b) = rpc(
        &app,
        0,
        &bob_token,
        json!({"type": "dm.history", "conversation_id": conv}),
    )
    .await;
    assert_eq!(seqs(&b), Vec::<u64>::new());
    let Response::Sent { message, .. } = ok(a
        .request(send(conv, &"c".repeat(64), &"é".repeat(2000)))
        .await)
    else {
        panic!()
    };
    assert_eq!((message.seq, message.text.len()), (1, 4000));
    a.close().await;
    app.stop().await;
}

#[tokio::test]
async fn new_messages_reach_every_device_of_both_users() {
    let app = spawn_app().await;
    let (ann, ann_name, ann_token) = app.user(0).await;
    let (bob, bob_name, bob_token) = app.user(1).await;
    let (_, _, cat_token) = app.user(1).await;
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    let conv = open_dm(&app, &ann_token, bob).await;
    let ann2 = app.http(1).login(&ann_name, common::PASSWORD).await;
    let bob2 = app.http(0).login(&bob_name, common::PASSWORD).await;
    let mut a0 = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut a1 = Client::connect(&app.ws_url(1), &ann2).await;
    let mut b0 = Client::connect(&app.ws_url(0), &bob2).await;
    let mut b1 = Client::connect(&app.ws_url(1), &bob_token).await;
    let mut c = Client::connect(&app.ws_url(0), &cat_token).await;
    assert_eq!((a0.edge.as_str(), a1.edge.as_str()), ("edge-0", "edge-1"));

    let Response::Sent { message, duplicate } = ok(a0.request(send(conv, "x1", "from ann")).await)
    else {
        panic!()
    };
    assert!(!duplicate);
    for (who, dev) in [
        ("ann@0", &mut a0),
        ("ann@1", &mut a1),
        ("bob@0", &mut b0),
        ("bob@1", &mut b1),
    ] {
        let Event::DmMessage { message: got } = dev
            .event_where(|e| matches!(e, Event::DmMessage { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!(got, message, "{who}");
    }
    let Response::Sent { message, .. } = ok(b1.request(send(conv, "y1", "from bob")).await) else {
        panic!()
    };
    assert_eq!((message.seq, message.author_id), (2, Some(bob)));
    for dev in [&mut a0, &mut a1, &mut b0, &mut b1] {
        let Event::DmMessage { message: got } = dev
            .event_where(|e| matches!(e, Event::DmMessage { .. }))
            .await
        else {
            unreachable!()
        };
        assert_eq!((got.seq, got.text.as_str()), (2, "from bob"));
    }
    // A retried send is acknowledged again but delivered as the same message.
    let Response::Sent { message, duplicate } = ok(a1.request(send(conv, "x1", "from ann")).await)
    else {
        panic!()
    };
    assert_eq!((message.seq, duplicate), (1, true));
    assert!(
        c.event(Duration::from_millis(500)).await.is_none(),
        "not for Cat"
    );
    for dev in [a0, a1, b0, b1, c] {
        dev.close().await;
    }
    app.stop().await;
}

fn removed(from: Id) -> impl Fn(&Event) -> bool {
    move |e| matches!(e, Event::ConnectionRemoved { user_id } if *user_id == from)
}

#[tokio::test]
async fn a_removed_contact_can_no_longer_send_but_both_keep_the_history() {
    let app = spawn_app().await;
    let Chat {
        ann,
        ann_token,
        bob,
        bob_name,
        bob_token,
        conv,
    } = chat(&app).await;
    let bob2 = app.http(0).login(&bob_name, common::PASSWORD).await;
    let mut a = Client::connect(&app.ws_url(0), &ann_token).await;
    let mut b0 = Client::connect(&app.ws_url(0), &bob2).await;
    let mut b1 = Client::connect(&app.ws_url(1), &bob_token).await;
    ok(a.request(send(conv, "a1", "hi bob")).await);
    ok(b1.request(send(conv, "b1", "hi ann")).await);

    // Ann removes Bob: every device of Bob is told, and Ann's own.
    ok(
        a.request(json!({"type": "connection.remove", "user_id": bob}))
            .await,
    );
    b0.event_where(removed(ann)).await;
    b1.event_where(removed(ann)).await;
    a.event_where(removed(bob)).await;

    // Neither can send a new message, over WebSocket or HTTP; nothing is stored.
    assert_eq!(
        err(b1.request(send(conv, "b2", "still there?")).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        err(a.request(send(conv, "a2", "bye")).await),
        ErrorCode::Forbidden
    );
    let (s, body) = rpc(&app, 1, &bob_token, send(conv, "b3", "hello?")).await;
    assert_eq!(
        (s, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // A retry of a message stored while connected still gets that message back.
    let Response::Sent { message, duplicate } = ok(b0.request(send(conv, "b1", "hi ann")).await)
    else {
        panic!()
    };
    assert_eq!((message.seq, duplicate), (2, true));
    // Both keep the conversation and its history.
    for token in [&ann_token, &bob_token] {
        let (s, body) = rpc(
            &app,
            0,
            token,
            json!({"type": "dm.history", "conversation_id": conv}),
        )
        .await;
        assert_eq!((s, seqs(&body)), (200, vec![1, 2]), "{body}");
        let (_, body) = rpc(&app, 1, token, json!({"type": "dm.list"})).await;
        let convs = body["conversations"].as_array().unwrap();
        assert_eq!(convs.len(), 1, "{body}");
        assert_eq!(id(&convs[0]["conversation_id"]), conv);
        assert_eq!(convs[0]["last_seq"], 2, "{body}");
    }

    // Connected again (Ann invites, Bob accepts): the same conversation, its sequence continues.
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    let Response::Sent { message, duplicate } =
        ok(b1.request(send(conv, "b2", "back again")).await)
    else {
        panic!()
    };
    assert_eq!((message.seq, duplicate), (3, false));
    let Event::DmMessage { message: got } = a
        .event_where(|e| matches!(e, Event::DmMessage { message } if message.seq == 3))
        .await
    else {
        unreachable!()
    };
    assert_eq!(got.text, "back again");
    assert_eq!(open_dm(&app, &ann_token, bob).await, conv);
    for c in [a, b0, b1] {
        c.close().await;
    }
    app.stop().await;
}

/// Sends racing a removal: each one is either acknowledged and stored, or refused and not
/// stored; once one is refused every later one is; and every send made after the removal's
/// reply is refused.
#[tokio::test]
async fn sends_racing_a_removal_are_stored_exactly_when_acknowledged() {
    let app = spawn_app().await;
    let (ann, _, ann_token) = app.user(0).await;
    let (bob, _, bob_token) = app.user(1).await;
    befriend(&app, (ann, &ann_token), (bob, &bob_token)).await;
    let conv = open_dm(&app, &bob_token, ann).await;
    let mut b = common::Raw::connect(&app.ws_url(1), &bob_token).await;
    let frame = |i: usize| {
        let mut f = send(conv, &format!("r{i}"), &format!("race {i}"));
        f["rid"] = json!(format!("s{i}"));
        f.to_string()
    };
    const DURING: usize = 40;
    let sends = async {
        for i in 0..DURING {
            b.text(frame(i)).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let removal = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (s, body) = rpc(
            &app,
            0,
            &ann_token,
            json!({"type": "connection.remove", "user_id": bob}),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    };
    tokio::join!(sends, removal);
    // After the removal's reply (and after the sends above).
    for i in DURING..DURING + 3 {
        b.text(frame(i)).await;
    }
    let mut answers: Vec<Option<Result<u64, ErrorCode>>> = vec![None; DURING + 3];
    while answers.iter().any(Option::is_none) {
        let (rid, answer) = match b.frame().await {
            topics::ServerFrame::Reply {
                rid: Some(rid),
                data: Response::Sent { message, duplicate },
            } => {
                assert!(!duplicate);
                (rid, Ok(message.seq))
            }
            topics::ServerFrame::Error {
                rid: Some(rid),
                code,
                ..
            } => (rid, Err(code)),
            topics::ServerFrame::Event { .. } => continue,
            other => panic!("unexpected {other:?}"),
        };
        let i: usize = rid[1..].parse().unwrap();
        answers[i] = Some(answer);
    }
    let answers: Vec<Result<u64, ErrorCode>> = answers.into_iter().map(Option::unwrap).collect();
    let acknowledged = answers.iter().take_while(|a| a.is_ok()).count();
    assert!(
        answers[acknowledged..]
            .iter()
            .all(|a| *a == Err(ErrorCode::Forbidden)),
        "{answers:?}"
    );
    assert!(acknowledged <= DURING, "{answers:?}");
    let expected: Vec<u64> = (1..=acknowledged as u64).collect();
    let acked: Vec<u64> = answers[..acknowledged]
        .iter()
        .map(|a| *a.as_ref().unwrap())
        .collect();
    assert_eq!(acked, expected);
    let (_, body) = rpc(
        &app,
        0,
        &ann_token,
        json!({"type": "dm.history", "conversation_id": conv, "limit": 100}),
    )
    .await;
    assert_eq!(seqs(&body), expected, "{body}");
    app.stop().await;
}

/// `Com_select` of each session the shards' pools hold (one connection each): statements the
/// worker code ran through them.
async fn selects(shards: &workers::db::Shards, with_replicas: bool) -> u64 {
    use mysql_async::prelude::Queryable;
    let mut total = 0;
    for shard in shards.all() {
        let pools = if with_replicas {
            vec![&shard.primary, &shard.replica]
        } else {
            vec![&shard.primary]
        };
        for pool in pools {
            let mut c = pool.get_conn().await.unwrap();
            let (_, n): (String, u64) = c
                .query_first("SHOW SESSION STATUS LIKE 'Com_select'")
                .await
                .unwrap()
                .unwrap();
            total += n;
        }
    }
    total
}

/// A list of 30 conversations: each with its peer (a deleted one shown as deleted), last message,
/// last sequence number and unread count (messages of the peer after my read position), the most
/// recently active first and those without messages last; answered with a fixed number of
/// queries per shard, not a few per conversation.
#[tokio::test]
async fn a_long_list_is_answered_with_a_fixed_number_of_queries() {
    let mut opts = e2e::Options::default();
    opts.limits.signups_per_address_per_minute = 100;
    opts.limits.login_attempts_per_address_per_minute = 100;
    let app = e2e::spawn_app_with(opts).await;
    let (me, my_name, my_token) = app.user(0).await;
    const PEERS: usize = 30;
    const GONE: usize = 7;
    // Per conversation: the peer, its token, and what the list must show.
    struct Expect {
        conv: Id,
        peer: Id,
        peer_name: String,
        peer_token: String,
        last_seq: u64,
        last: Option<(String, Id, u64)>,
        unread: u64,
    }
    let mut expected = Vec::new();
    for i in 0..PEERS {
        let (peer, peer_name, peer_token) = app.user(i % 2).await;
        // The invite's target is read from a replica, where a new account may not be yet.
        let code = invite_code(&app, &peer_token).await;
        eventually("the new account on the replica", || {
            let (app, token, code) = (&app, &my_token, &code);
            async move {
                let frame = json!({"type": "invite.send", "code": code});
                let (s, b) = rpc(app, 0, token, frame).await;
                assert!(s == 200 || s == 404, "{b}");
                (s == 200).then_some(())
            }
        })
        .await;
        let accept = json!({"type": "invite.respond", "user_id": me, "accept": true});
        let (s, b) = rpc(&app, 1, &peer_token, accept).await;
        assert_eq!(s, 200, "{b}");
        let conv = open_dm(&app, &peer_token, me).await;
        let mut e = Expect {
            conv,
            peer,
            peer_name,
            peer_token,
            last_seq: 0,
            last: None,
            unread: 0,
        };
        let mut sent = |who: Id, body: &Value| {
            let m = &body["message"];
            e.last_seq = m["seq"].as_u64().unwrap();
            let text = m["text"].as_str().unwrap().to_string();
            e.last = Some((text, who, m["sent_at_ms"].as_u64().unwrap()));
        };
        // 0 to 3 messages from the peer; every fifth conversation answered by me.
        for k in 0..i % 4 {
            let frame = send(conv, &format!("p{k}"), &format!("from {i}: {k}"));
            let (s, b) = rpc(&app, i % 2, &e.peer_token, frame).await;
            assert_eq!(s, 200, "{b}");
            sent(peer, &b);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if i % 5 == 0 {
            let (s, b) = rpc(&app, 0, &my_token, send(conv, "m", &format!("to {i}"))).await;
            assert_eq!(s, 200, "{b}");
            sent(me, &b);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // Every third conversation read up to its first message.
        let read_to = if i % 3 == 0 { 1 } else { 0 };
        if read_to > 0 {
            let read = json!({"type": "dm.read", "conversation_id": conv, "seq": read_to});
            let (s, b) = rpc(&app, 0, &my_token, read).await;
            assert_eq!(s, 200, "{b}");
        }
        e.unread = (i % 4) as u64 - ((i % 4) as u64).min(read_to);
        expected.push(e);
    }
    let (s, b) = app
        .http(0)
        .delete("/api/v1/users/me", Some(&expected[GONE].peer_token))
        .await;
    assert_eq!(s, 200, "{b}");

    let (s, b) = rpc(&app, 1, &my_token, json!({"type": "dm.list"})).await;
    assert_eq!(s, 200, "{b}");
    let listed: Vec<topics::frames::ConversationSummary> =
        serde_json::from_value(b["conversations"].clone()).unwrap();
    assert_eq!(listed.len(), PEERS);
    for (i, e) in expected.iter().enumerate() {
        let c = listed
            .iter()
            .find(|c| c.conversation_id == e.conv)
            .unwrap_or_else(|| panic!("conversation {i} is missing"));
        let gone = i == GONE;
        let name = if gone {
            "[deleted]"
        } else {
            e.peer_name.as_str()
        };
        assert_eq!(
            (c.peer_id, c.peer.as_str(), c.last_seq, c.unread),
            (e.peer, name, e.last_seq, e.unread),
            "conversation {i}"
        );
        let last = c
            .last_message
            .as_ref()
            .map(|m| (m.text.clone(), m.author_id, m.author.clone(), m.seq));
        let want = e.last.as_ref().map(|(text, who, _)| {
            let (id, author) = match who {
                w if *w == me => (Some(me), my_name.clone()),
                _ if gone => (None, "[deleted]".to_string()),
                _ => (Some(e.peer), e.peer_name.clone()),
            };
            (text.clone(), id, author, e.last_seq)
        });
        assert_eq!(last, want, "conversation {i}");
    }
    // The most recently active first (every message was sent in its own millisecond), then
    // those without messages.
    let mut order: Vec<(u64, Id)> = expected
        .iter()
        .filter_map(|e| e.last.as_ref().map(|l| (l.2, e.conv)))
        .collect();
    order.sort_by_key(|o| std::cmp::Reverse(o.0));
    let active: Vec<Id> = order.into_iter().map(|(_, c)| c).collect();
    let shown: Vec<Id> = listed.iter().map(|c| c.conversation_id).collect();
    assert_eq!(shown[..active.len()], active[..]);
    assert!(listed[active.len()..]
        .iter()
        .all(|c| c.last_message.is_none()));

    // The same list read through the worker's code on pools of one connection per server:
    // a fixed number of SELECTs, whatever the number of conversations (memberships, then per
    // shard the conversations with their last messages, the unread counts and the names).
    let mut database = app.database.clone();
    database.pool_max = 1;
    let with_replicas = database.shards.iter().all(|s| s.replica.is_some());
    let shards = workers::db::Shards::connect(&database).unwrap();
    let before = selects(&shards, with_replicas).await;
    let again = workers::dms::list::conversations(&shards, me)
        .await
        .unwrap();
    let used = selects(&shards, with_replicas).await - before;
    assert_eq!(again, listed);
    let n = shards.all().len() as u64;
    assert!(
        (1..=1 + 3 * n).contains(&used),
        "{used} SELECTs for {PEERS} conversations on {n} shards"
    );
    app.stop().await;
}
