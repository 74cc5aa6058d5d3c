//! List all clients (feature 2): who is online across every edge, paginated with a cursor.

mod common;

use common::{eventually, online_all, online_until};
use e2e::client::{err, Client};
use e2e::spawn_app;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use topics::{ErrorCode, Id};

#[tokio::test]
async fn the_online_list_pages_with_a_cursor_across_edges() {
    let app = spawn_app().await;
    let mut users = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..4 {
        let (id, _, token) = app.user(i % 2).await;
        users.push((id, token.clone()));
        sockets.push(Client::connect(&app.ws_url(i % 2), &token).await);
    }
    // The last user is on both edges at once.
    let (multi, multi_token) = users[3].clone();
    let second = Client::connect(&app.ws_url(0), &multi_token).await;
    assert_ne!(second.edge, sockets[3].edge);
    let everyone: BTreeSet<Id> = users.iter().map(|(id, _)| *id).collect();

    let viewer = &mut sockets[0];
    let all = online_until(viewer, "all four users online", |ids| {
        ids.iter().copied().collect::<BTreeSet<_>>() == everyone
    })
    .await;
    assert_eq!(
        all.len(),
        4,
        "a user with two sockets is listed once: {all:?}"
    );

    // One per page: the cursor walks through everyone exactly once, in a stable order.
    let (walk, pages) = online_all(viewer, 1).await;
    assert_eq!(walk, all, "same users, same order, no duplicates");
    assert_eq!(pages, 4);
    let (walk, pages) = online_all(viewer, 3).await;
    assert_eq!((walk, pages), (all.clone(), 2));
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "ordered by id");

    // Bad cursors are refused.
    for bad in ["abc", "1", "", "-1", &"9".repeat(40)] {
        assert_eq!(
            err(viewer
                .request(json!({"type": "online.list", "cursor": bad, "limit": 1}))
                .await),
            ErrorCode::InvalidInput,
            "{bad:?}"
        );
    }
    assert_eq!(
        err(viewer
            .request(json!({"type": "online.list", "limit": "ten"}))
            .await),
        ErrorCode::InvalidInput
    );

    // One of two sockets closes: still online. Both close: gone; the rest stay.
    second.close().await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (ids, _) = online_all(viewer, 100).await;
    assert!(ids.contains(&multi), "still online on the other edge");
    let last = sockets.pop().unwrap();
    last.close().await;
    let viewer = &mut sockets[0];
    let ids = online_until(viewer, "the user with no socket leaves the list", |ids| {
        !ids.contains(&multi)
    })
    .await;
    assert_eq!(
        ids.into_iter().collect::<BTreeSet<_>>(),
        everyone.iter().copied().filter(|u| *u != multi).collect()
    );
    for s in sockets {
        s.close().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn the_online_list_over_http_needs_a_session() {
    let app = spawn_app().await;
    let (me, _, token) = app.user(0).await;
    let h = app.http(1);
    assert_eq!(h.get("/api/v1/online", None).await.0, 401);
    assert_eq!(h.get("/api/v1/online", Some("forged-token")).await.0, 401);
    // Logged in but not connected: not online.
    let (s, b) = h.get("/api/v1/online", Some(&token)).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["users"].as_array().unwrap().is_empty(), "{b}");
    let c = Client::connect(&app.ws_url(0), &token).await;
    let listed = eventually("online over http", || async {
        let (s, b) = h.get("/api/v1/online?limit=10", Some(&token)).await;
        assert_eq!(s, 200, "{b}");
        (!b["users"].as_array().unwrap().is_empty()).then_some(b)
    })
    .await;
    assert_eq!(common::id(&listed["users"][0]["user_id"]), me);
    assert!(listed["next_cursor"].is_null());
    for bad in ["/api/v1/online?limit=x", "/api/v1/online?cursor=zz"] {
        let (s, b) = h.get(bad, Some(&token)).await;
        assert_eq!(
            (s, b["code"].as_str()),
            (400, Some("invalid_input")),
            "{bad}"
        );
    }
    c.close().await;
    app.stop().await;
}

async fn publish(app: &e2e::TestApp, producer: &FutureProducer, ev: topics::EdgeEvent) {
    let topic = app.kafka.topics().requests(topics::Domain::Presence);
    producer
        .send(
            FutureRecord::to(&topic)
                .key(&ev.key())
                .payload(&ev.encode()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("edge event published");
}

/// Edge events arrive at least once: a `connected` that arrives twice (redelivered, or retried
/// after a failure half-way through its writes) is counted once, so one `disconnected` takes
/// the user offline.
#[tokio::test]
async fn a_redelivered_connected_event_is_counted_once() {
    use topics::EdgeEvent;
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    let mut viewer = Client::connect(&app.ws_url(0), &token).await;
    let (ghost, _, _) = app.user(1).await;
    // An edge process that exists only through its events.
    let (edge, epoch) = ("edge-9".to_string(), 77);
    let conn = topics::bus::conn_id(epoch, 1);
    let producer = runtime::kafka::producer(&app.kafka).expect("producer");
    publish(
        &app,
        &producer,
        EdgeEvent::Started {
            edge: edge.clone(),
            epoch,
        },
    )
    .await;
    let heartbeat = EdgeEvent::Heartbeat {
        edge: edge.clone(),
        epoch,
        connections: 1,
    };
    publish(&app, &producer, heartbeat.clone()).await;
    let connected = EdgeEvent::Connected {
        edge: edge.clone(),
        conn,
        user_id: ghost,
        username: "ghost".into(),
        session_id: "s".into(),
    };
    publish(&app, &producer, connected.clone()).await;
    publish(&app, &producer, connected).await;
    online_until(&mut viewer, "the ghost online", |ids| ids.contains(&ghost)).await;

    // The edge stays live for `edge_liveness_ms` (10 s) after a heartbeat: the check below
    // must end well within that, or it could pass because the edge died.
    let live_since = tokio::time::Instant::now();
    publish(&app, &producer, heartbeat).await;
    publish(
        &app,
        &producer,
        EdgeEvent::Disconnected {
            edge,
            conn,
            user_id: ghost,
        },
    )
    .await;
    online_until(
        &mut viewer,
        "the ghost offline after one disconnect",
        |ids| !ids.contains(&ghost),
    )
    .await;
    assert!(
        live_since.elapsed() < Duration::from_secs(8),
        "edge-9 must still have been live when the ghost went offline"
    );
    app.stop().await;
}

/// The handshake check (`session.verify`) puts the connection in the registry itself. A
/// handshake its edge gave up on (`abandoned`: the check did not answer in time) is never left
/// there: not when the mark comes first, not when the check did, and not when the check waited
/// in Kafka too long.
#[tokio::test]
async fn a_handshake_its_edge_abandoned_is_never_registered() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    use runtime::redis::redis::AsyncCommands;
    use topics::{Auth, EdgeEvent, EdgeMessage, Envelope, Request, WIRE_VERSION};
    let app = spawn_app().await;
    let (_, _, token) = app.user(0).await;
    let mut viewer = Client::connect(&app.ws_url(0), &token).await;
    let (ghost, _, ghost_token) = app.user(1).await;
    // An edge process that exists only through its records: its topic, its events.
    let (edge, epoch) = ("edge-8".to_string(), 91);
    let topics = app.kafka.topics();
    runtime::kafka::ensure_topics(&app.kafka, &[topics.edge(&edge)], 1, None)
        .await
        .expect("edge topic");
    let replies: StreamConsumer =
        runtime::kafka::consumer(&app.kafka, &e2e::unique("edge-8-"), false).expect("consumer");
    replies.subscribe(&[&topics.edge(&edge)]).unwrap();
    let producer = runtime::kafka::producer(&app.kafka).expect("producer");
    let started = EdgeEvent::Started {
        edge: edge.clone(),
        epoch,
    };
    publish(&app, &producer, started).await;
    let heartbeat = EdgeEvent::Heartbeat {
        edge: edge.clone(),
        epoch,
        connections: 1,
    };
    let (redis, registry) = common::registry(&app);
    let listed = |conn: u64| {
        let (redis, key, field) = (
            &redis,
            registry.conns_key(ghost),
            runtime::registry::conn_field(&edge, conn),
        );
        async move {
            let mut c = redis.get().await.expect("redis");
            let v: Option<String> = c.hget(key, field).await.expect("hget");
            v.is_some()
        }
    };
    // A handshake check as edge-8 publishes it, and its answer.
    let check = |conn: u64, req: u64, age_ms: u64| {
        let env = Envelope {
            v: WIRE_VERSION,
            edge: edge.clone(),
            conn,
            req,
            rid: None,
            auth: Auth::Token {
                token_hash: edge_ws::http::token_hash(&ghost_token),
            },
            peer: None,
            sent_at_ms: runtime::now_ms() - age_ms,
            deadline_ms: None,
            request: Request::Verify,
        };
        let (producer, replies, topic) =
            (&producer, &replies, topics.requests(topics::Domain::Auth));
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&env.key())
                        .payload(&env.encode()),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("check published");
            loop {
                let m = tokio::time::timeout(Duration::from_secs(30), replies.recv())
                    .await
                    .expect("an answer to the check")
                    .expect("edge record");
                let msg: EdgeMessage = serde_json::from_slice(m.payload().unwrap()).unwrap();
                if let EdgeMessage::Reply {
                    req: r,
                    error,
                    session,
                    ..
                } = msg
                {
                    if r == req {
                        return (error, session.map(|s| s.user_id));
                    }
                }
            }
        }
    };

    // Marked first: the check that comes after it is refused, and registers nothing.
    let first = topics::bus::conn_id(epoch, 1);
    publish(
        &app,
        &producer,
        EdgeEvent::Abandoned {
            edge: edge.clone(),
            conn: first,
        },
    )
    .await;
    let mark = registry.abandoned_key(&edge, first);
    eventually("the abandon applied", || {
        let (redis, mark) = (&redis, mark.clone());
        async move {
            let mut c = redis.get().await.expect("redis");
            let ttl: i64 = c.ttl(mark).await.expect("ttl");
            (ttl > 0).then_some(())
        }
    })
    .await;
    assert_eq!(
        check(first, 1, 0).await,
        (Some(ErrorCode::Unavailable), None)
    );
    assert!(
        !listed(first).await,
        "an abandoned connection is not listed"
    );

    // Checked first: the connection is registered (online, listed), then the mark takes it out.
    let second = topics::bus::conn_id(epoch, 2);
    assert_eq!(check(second, 2, 0).await, (None, Some(ghost)));
    assert!(listed(second).await);
    publish(&app, &producer, heartbeat.clone()).await;
    online_until(&mut viewer, "the ghost online", |ids| ids.contains(&ghost)).await;
    publish(
        &app,
        &producer,
        EdgeEvent::Abandoned {
            edge: edge.clone(),
            conn: second,
        },
    )
    .await;
    publish(&app, &producer, heartbeat.clone()).await;
    online_until(&mut viewer, "the ghost offline once abandoned", |ids| {
        !ids.contains(&ghost)
    })
    .await;
    eventually("the abandoned connection unlisted", || async {
        (!listed(second).await).then_some(())
    })
    .await;

    // A check that waited in Kafka longer than any edge waits is refused, and registers nothing.
    let late = topics::bus::conn_id(epoch, 3);
    let age = workers::presence::edge_events::VERIFY_MAX_AGE_MS + 1_000;
    assert_eq!(
        check(late, 3, age).await,
        (Some(ErrorCode::Unavailable), None)
    );
    assert!(!listed(late).await);
    app.stop().await;
}

/// A connection whose `disconnected` never reached the registry (a failed publish, say) does not
/// stay there for the life of its edge process: the edge's periodic `present` lists its open
/// connections, and the registry entry of any other one it handed out earlier is taken out. Live
/// connections stay.
#[tokio::test]
async fn a_lost_disconnect_is_repaired_by_the_edges_next_sweep() {
    use runtime::redis::redis::AsyncCommands;
    use topics::EdgeEvent;
    let mut opts = e2e::Options::default();
    opts.edge.request_timeout_ms = 1_000;
    opts.edge.registry_sweep_ms = 1_000;
    let app = e2e::spawn_app_with(opts).await;
    let (me, _, token) = app.user(0).await;
    let mut viewer = Client::connect(&app.ws_url(0), &token).await;
    let (ghost, _, _) = app.user(1).await;
    let (redis, registry) = common::registry(&app);
    let conns_of = |user: Id| {
        let (redis, key) = (&redis, registry.conns_key(user));
        async move {
            let mut c = redis.get().await.expect("redis");
            let all: std::collections::HashMap<String, String> =
                c.hgetall(key).await.expect("hgetall");
            all.into_keys()
                .filter_map(|f| runtime::registry::parse_conn_field(&f))
                .collect::<Vec<_>>()
        }
    };
    let mine = eventually("the viewer registered", || async {
        conns_of(me).await.into_iter().next()
    })
    .await;
    // A connection of the viewer's edge process that is not open (the process' first id) is put
    // in the registry as its handshake would, and its `disconnected` never comes.
    let (edge, epoch) = (mine.0.clone(), topics::bus::conn_epoch(mine.1));
    let closed = topics::bus::conn_id(epoch, 0);
    assert_ne!(closed, mine.1);
    let producer = runtime::kafka::producer(&app.kafka).expect("producer");
    publish(
        &app,
        &producer,
        EdgeEvent::Connected {
            edge: edge.clone(),
            conn: closed,
            user_id: ghost,
            username: "ghost".into(),
            session_id: "lost".into(),
        },
    )
    .await;
    // Applied (registering also records the username, which nothing takes out), then taken out
    // by the edge's sweep (every 2 s here): no longer listed, no longer online.
    eventually("the ghost registered", || {
        let (redis, key) = (&redis, registry.unames_key());
        async move {
            let mut c = redis.get().await.expect("redis");
            let name: Option<String> = c.hget(key, ghost.to_string()).await.expect("hget");
            (name.as_deref() == Some("ghost")).then_some(())
        }
    })
    .await;
    eventually("the ghost's entry swept", || async {
        conns_of(ghost).await.is_empty().then_some(())
    })
    .await;
    online_until(&mut viewer, "the ghost offline", |ids| {
        !ids.contains(&ghost)
    })
    .await;
    assert_eq!(conns_of(me).await, vec![mine], "the open connection stays");
    let ids = online_until(&mut viewer, "the viewer still online", |ids| {
        ids.contains(&me)
    })
    .await;
    assert!(!ids.contains(&ghost));
    viewer.close().await;
    app.stop().await;
}
