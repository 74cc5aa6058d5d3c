//! The Rust SDK (`client/`) against the real stack, through nginx: typed HTTP calls and errors,
//! a typed socket, and resuming after a dropped socket — reconnect with backoff, then `dm.sync`
//! from the last sequence the old socket saw returns exactly what was missed.

use client::{Backoff, ConnectOptions, Connector, Http, Socket};
use e2e::spawn_app;
use std::time::Duration;
use topics::{ErrorCode, Event, Id, Request, Response};

const PASSWORD: &str = "pass-word-1";
const WAIT: Duration = Duration::from_secs(20);

/// Sign up and log in over the SDK: (user id, invite code, token).
async fn account(http: &Http) -> (Id, String, String) {
    let name = e2e::unique("u");
    let id = client::request_id();
    let Response::User { user, invite_code } =
        http.sign_up(&name, PASSWORD, Some(&id)).await.unwrap()
    else {
        panic!("sign-up did not answer with a user")
    };
    assert_eq!(user.username, name);
    // The same sign-up sent again (its answer lost, say) is answered as the first was.
    let Response::User { user: again, .. } =
        http.sign_up(&name, PASSWORD, Some(&id)).await.unwrap()
    else {
        panic!("a resent sign-up did not answer with the user")
    };
    assert_eq!(again.user_id, user.user_id);
    // Without its id it is another sign-up of a taken name.
    match http.sign_up(&name, PASSWORD, None).await {
        Err(client::Error::Api {
            status: Some(409), ..
        }) => {}
        other => panic!("expected conflict, got {other:?}"),
    }
    let session = http.log_in(&name, PASSWORD).await.unwrap();
    assert_eq!(session.user_id, user.user_id);
    (
        user.user_id,
        invite_code.expect("my own invite code"),
        session.token,
    )
}

async fn send(s: &mut Socket, conv: Id, text: &str) -> u64 {
    match s
        .request(Request::DmSend {
            conversation_id: conv,
            client_msg_id: format!("c-{text}"),
            text: text.into(),
            after_client_msg_id: None,
        })
        .await
        .unwrap()
    {
        Response::Sent { message, .. } => message.seq,
        other => panic!("expected sent, got {other:?}"),
    }
}

#[tokio::test]
async fn typed_http_calls_answer_replies_or_error_bodies_with_their_status() {
    let app = spawn_app().await;
    let http = Http::new(&format!("http://{}", app.nginx[0].addr));
    assert_eq!(
        http.rpc(&Request::Ping, None).await.unwrap(),
        Response::Pong
    );
    let (ann, _, token) = account(&http).await;
    let Response::User { user, .. } = http.me(&token).await.unwrap() else {
        panic!("me did not answer with a user")
    };
    assert_eq!(user.user_id, ann);
    match http.me("not-a-token").await {
        Err(client::Error::Api {
            status: Some(401),
            error,
        }) => assert_eq!(error.code, ErrorCode::Unauthorized),
        other => panic!("expected 401 unauthorized, got {other:?}"),
    }
    match http.user(&token, Id(999_999_999)).await {
        Err(e) => assert_eq!(e.api().map(|b| b.code), Some(ErrorCode::NotFound), "{e}"),
        Ok(r) => panic!("expected not_found, got {r:?}"),
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dropped_socket_reconnects_and_syncs_exactly_what_it_missed() {
    let app = spawn_app().await;
    let base = |i: usize| format!("http://{}", app.nginx[i].addr);
    let http = Http::new(&base(0));
    let (ann, _, ann_token) = account(&http).await;
    let (bob, bob_code, bob_token) = account(&Http::new(&base(1))).await;
    http.rpc(&Request::InviteSend { code: bob_code }, Some(&ann_token))
        .await
        .unwrap();
    let accepted = http
        .rpc(
            &Request::InviteRespond {
                user_id: ann,
                accept: true,
            },
            Some(&bob_token),
        )
        .await
        .unwrap();
    assert!(matches!(accepted, Response::Link { .. }), "{accepted:?}");

    let mut a = Socket::connect(&base(0), &ann_token).await.unwrap();
    let options = ConnectOptions {
        reply_timeout: WAIT,
        ..ConnectOptions::with_token(&bob_token)
    };
    let bob_edge = Connector::new(&base(1), options).unwrap();
    let mut b = bob_edge.connect().await.unwrap();
    assert_eq!(b.edge(), Some("edge-1"));
    let Response::Conversation { conversation } =
        a.request(Request::DmOpen { user_id: bob }).await.unwrap()
    else {
        panic!("dm.open did not answer with a conversation")
    };
    let conv = conversation.conversation_id;
    // An error frame comes back typed, without a status.
    match a
        .request(Request::DmHistory {
            conversation_id: Id(1),
            before_seq: None,
            after_seq: None,
            limit: None,
        })
        .await
    {
        Err(client::Error::Api {
            status: None,
            error,
        }) => assert_eq!(error.code, ErrorCode::NotFound),
        other => panic!("expected not_found, got {other:?}"),
    }

    // Bob sees the first message live; his socket remembers its sequence.
    assert_eq!(send(&mut a, conv, "seen").await, 1);
    loop {
        match b.next_event(WAIT).await.unwrap() {
            Some(Event::DmMessage { message }) if message.conversation_id == conv => break,
            Some(_) => continue,
            None => panic!("the first message never arrived"),
        }
    }
    assert_eq!(b.seqs().last(conv), Some(1));

    // His socket drops (no close frame); three messages go out meanwhile.
    let seqs = b.seqs().clone();
    drop(b);
    for i in 0..3 {
        send(&mut a, conv, &format!("missed-{i}")).await;
    }

    let (mut b, missed) = bob_edge.resume(&Backoff::default(), seqs).await.unwrap();
    let got: Vec<(u64, &str)> = missed
        .get(&conv)
        .expect("the conversation is synced")
        .iter()
        .map(|m| (m.seq, m.text.as_str()))
        .collect();
    assert_eq!(got, [(2, "missed-0"), (3, "missed-1"), (4, "missed-2")]);
    assert_eq!(b.seqs().last(conv), Some(4));
    // Synced up: asking again brings nothing.
    let again = b.sync().await.unwrap();
    assert!(again.values().all(|m| m.is_empty()), "{again:?}");

    // A refused session is not retried: the reconnect gives up at once instead of waiting
    // out a first delay of 30 s.
    let dead = Connector::new(&base(0), ConnectOptions::with_token("not-a-token")).unwrap();
    let slow = Backoff {
        initial: Duration::from_secs(30),
        jitter: 0.0,
        ..Backoff::default()
    };
    let started = tokio::time::Instant::now();
    match dead.reconnect(&slow).await {
        Err(client::Error::Refused { status: 401, body }) => {
            assert_eq!(body.map(|b| b.code), Some(ErrorCode::Unauthorized))
        }
        Err(e) => panic!("expected a 401 refusal, got {e}"),
        Ok(_) => panic!("expected a 401 refusal, got a socket"),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    a.close().await;
    b.close().await;
    app.stop().await;
}

#[tokio::test]
async fn every_typed_http_call_reaches_its_endpoint() {
    let app = spawn_app().await;
    let base = format!("http://{}", app.nginx[0].addr);
    let http = Http::builder(&base)
        .user_agent("Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0")
        .timeout(WAIT)
        .pool_max_idle_per_host(2)
        .local_address("127.0.0.1".parse().unwrap())
        .build()
        .unwrap();
    assert_eq!(http.base(), base);
    assert_eq!(
        http.current_session(None).await.unwrap(),
        Response::SignedOut
    );
    let (ann, code, token) = account(&http).await;
    let Response::User { user, .. } = http.current_session(Some(&token)).await.unwrap() else {
        panic!("a live token's current session is its user")
    };
    assert_eq!(user.user_id, ann);

    // refresh rotates the token; the sessions list shows the device the login came from
    let fresh = http.refresh(&token).await.unwrap();
    assert_ne!(fresh.token, token);
    let token = fresh.token;
    let Response::Sessions { sessions } = http.sessions(&token).await.unwrap() else {
        panic!("sessions")
    };
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].device.as_deref(), Some("Firefox on Linux"));

    // profiles by name and by id, the online list, a new invite code
    let Response::User { user, .. } = http.user_named(&token, &user.username).await.unwrap() else {
        panic!("user by name")
    };
    assert_eq!(user.user_id, ann);
    assert!(matches!(
        http.user(&token, ann).await.unwrap(),
        Response::User { .. }
    ));
    assert!(matches!(
        http.online(&token, Some(10), None).await.unwrap(),
        Response::Online { .. }
    ));
    let bad_cursor = http.online(&token, None, Some("x")).await.unwrap_err();
    assert_eq!(
        bad_cursor.api().map(|b| b.code),
        Some(ErrorCode::InvalidInput)
    );
    let Response::User {
        invite_code: Some(new_code),
        ..
    } = http.rotate_invite_code(&token).await.unwrap()
    else {
        panic!("a rotated code")
    };
    assert_ne!(new_code, code);

    // logging out one session, this session, every session; then the account goes
    let name = user.username.clone();
    let second = http.log_in(&name, PASSWORD).await.unwrap();
    assert_eq!(
        http.log_out_session(&token, &second.session_id)
            .await
            .unwrap(),
        Response::Ok
    );
    assert!(http.me(&second.token).await.is_err());
    let third = http.log_in(&name, PASSWORD).await.unwrap();
    assert_eq!(http.log_out(&third.token).await.unwrap(), Response::Ok);
    assert_eq!(http.log_out_all(&token).await.unwrap(), Response::Ok);
    assert!(http.me(&token).await.is_err());
    let last = http.log_in(&name, PASSWORD).await.unwrap();
    assert_eq!(
        http.delete_account(&last.token).await.unwrap(),
        Response::Ok
    );
    assert!(http.log_in(&name, PASSWORD).await.is_err());
    app.stop().await;
}
