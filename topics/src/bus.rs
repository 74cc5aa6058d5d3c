//! Records on Kafka: the envelope edges publish, what workers send the router and the edges, and
//! the edges' own lifecycle events. All JSON, all carrying the wire version.

use crate::kinds::KeyBy;
use crate::{Domain, Error, ErrorCode, Id, Request, Result, WIRE_VERSION};
use serde::{Deserialize, Serialize};

/// Who sent a request, as the edge knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Auth {
    None,
    /// An HTTP call or a handshake: the SHA-256 (hex) of the bearer token. The token itself never
    /// leaves the edge.
    Token {
        token_hash: String,
    },
    /// A frame on a WebSocket whose handshake was verified: workers still check that the session
    /// exists (it may have been revoked or expired since).
    Session {
        session_id: String,
        user_id: Id,
    },
}

/// A client request wrapped by the edge that received it. Partitioned by [`Envelope::key`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    /// Edge that holds the client; replies go to its topic.
    pub edge: String,
    /// Connection on that edge (0 for an HTTP call).
    pub conn: u64,
    /// Edge-unique correlation id (answers HTTP calls and handshakes).
    pub req: u64,
    /// The client's own request id, echoed in the reply frame.
    pub rid: Option<String>,
    pub auth: Auth,
    /// Client address as the edge saw it (first `X-Forwarded-For` hop behind nginx).
    pub peer: Option<String>,
    pub sent_at_ms: u64,
    /// When the edge stops waiting for the answer (wall clock, ms since the epoch): by then it has
    /// answered the client `unavailable` itself, so a worker that finds the request still
    /// unhandled at that time may drop it without applying it ([`Envelope::expired`]; workers
    /// drop every kind but `dm.send`). `None`: no deadline (records from before it existed,
    /// requests no client waits for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    pub request: Request,
}

impl Envelope {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialise")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let env: Envelope = serde_json::from_slice(bytes)?;
        if env.v != WIRE_VERSION {
            return Err(Error::Version(env.v));
        }
        Ok(env)
    }

    /// Whether the request's deadline has passed at `now_ms`: its client was told `unavailable`
    /// and retries, so applying it now would only be work whose answer nobody reads.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.deadline_ms.is_some_and(|d| now_ms > d)
    }

    /// The worker domain that handles this request.
    pub fn domain(&self) -> Domain {
        self.request.spec().domain
    }

    /// Kafka key: messages of one conversation share the conversation id so they stay in order;
    /// everything else of one user stays in order by user; anonymous calls spread by request.
    pub fn key(&self) -> String {
        match (
            self.request.spec().key,
            self.request.conversation_id(),
            &self.auth,
        ) {
            (KeyBy::Conversation, Some(c), _) => format!("c{c}"),
            (_, _, Auth::Session { user_id, .. }) => format!("u{user_id}"),
            _ => format!("{}/{}", self.edge, self.req),
        }
    }
}

/// A session handed to an edge: after login (HTTP sets the cookie), after a refresh (rotated
/// token), and after a handshake check (the edge tags the connection with it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    pub session_id: String,
    pub user_id: Id,
    pub username: String,
    /// Present when a new token was minted (login, refresh).
    pub token: Option<String>,
    pub idle_timeout_s: u64,
}

/// Records on an edge's own topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EdgeMessage {
    /// The answer to one request (a WebSocket frame, an HTTP call or a handshake check).
    Reply {
        conn: u64,
        req: u64,
        /// A serialised [`crate::ServerFrame`], written to the socket as is.
        frame: String,
        error: Option<ErrorCode>,
        session: Option<SessionGrant>,
        /// The session ended (logout of the current session): clear the cookie.
        #[serde(default)]
        clear_session: bool,
    },
    /// Write a frame to these connections.
    Deliver {
        conns: Vec<u64>,
        frame: String,
        /// For a new direct message: when it was stored (ms since the epoch, the worker's
        /// clock), for the edge's `sb_dm_delivery_duration_seconds`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        persisted_at_ms: Option<u64>,
    },
    /// Write a frame to every connection of this edge.
    Broadcast { frame: String },
    /// Write the frame, then close these connections (revoked sessions).
    Close {
        conns: Vec<u64>,
        frame: String,
        reason: String,
    },
    /// Several of the above, applied in order: what one worker batch has for this edge (the
    /// replies to its requests and every delivery to this edge's connections), in one record.
    Batch { items: Vec<EdgeMessage> },
    /// One of the above with the trace context of the request it belongs to (W3C
    /// `traceparent`), when the record holds items of several traces (a worker-dms batch) and
    /// tracing is on: the edge's span for the item is a child of that context rather than of the
    /// record's header.
    Traced {
        traceparent: String,
        item: Box<EdgeMessage>,
    },
}

impl EdgeMessage {
    /// `item` with the trace context `traceparent`, if there is one.
    pub fn traced(item: EdgeMessage, traceparent: Option<String>) -> EdgeMessage {
        match traceparent {
            Some(traceparent) => EdgeMessage::Traced {
                traceparent,
                item: Box::new(item),
            },
            None => item,
        }
    }

    /// The `op` of the record, for span attributes.
    pub fn op(&self) -> &'static str {
        match self {
            EdgeMessage::Reply { .. } => "reply",
            EdgeMessage::Deliver { .. } => "deliver",
            EdgeMessage::Broadcast { .. } => "broadcast",
            EdgeMessage::Close { .. } => "close",
            EdgeMessage::Batch { .. } => "batch",
            EdgeMessage::Traced { .. } => "traced",
        }
    }
}

/// Who a delivery is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// Every connection of these users.
    Users { user_ids: Vec<Id> },
    /// Connections of one user opened with these sessions.
    Sessions {
        user_id: Id,
        session_ids: Vec<String>,
    },
    /// Every connection on every live edge.
    All,
}

/// A worker's request to the router: deliver `frame` to `target`, and close the connections if
/// `close` is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub v: u16,
    pub target: Target,
    pub frame: String,
    #[serde(default)]
    pub close: Option<String>,
    /// For a new direct message: when it was stored (ms since the epoch), passed on to the
    /// edges' `deliver` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persisted_at_ms: Option<u64>,
}

impl Delivery {
    pub fn new(target: Target, frame: String) -> Self {
        Delivery {
            v: WIRE_VERSION,
            target,
            frame,
            close: None,
            persisted_at_ms: None,
        }
    }

    /// The delivery of a message stored at `ms`.
    pub fn persisted_at(self, ms: u64) -> Self {
        Delivery {
            persisted_at_ms: Some(ms),
            ..self
        }
    }

    pub fn key(&self) -> String {
        match &self.target {
            Target::Users { user_ids } => user_ids
                .first()
                .map(|u| format!("u{u}"))
                .unwrap_or_default(),
            Target::Sessions { user_id, .. } => format!("u{user_id}"),
            Target::All => "all".into(),
        }
    }
}

/// What an edge tells the presence workers about itself and its connections. Keyed by edge id
/// (`started`, `heartbeat`) or by connection (the others), so the events of one edge, and those
/// of one connection, are applied in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EdgeEvent {
    /// A new process took this edge id: connections of earlier epochs are gone.
    Started { edge: String, epoch: u64 },
    Heartbeat {
        edge: String,
        epoch: u64,
        connections: u64,
    },
    /// A connection opened. Edges no longer send it: the handshake check (`session.verify`)
    /// registers the connection before the edge answers the upgrade. Still applied, for edges of
    /// an earlier release during a rolling upgrade.
    Connected {
        edge: String,
        conn: u64,
        user_id: Id,
        username: String,
        session_id: String,
    },
    /// A connection whose handshake check succeeded has ended: closed, or never opened (the
    /// upgrade failed, or a per-user cap refused it after the check).
    Disconnected {
        edge: String,
        conn: u64,
        user_id: Id,
    },
    /// The edge gave up on a handshake before its check answered (a timeout, a failed publish):
    /// the check may still register the connection, so it is marked, and taken out if it is in.
    Abandoned { edge: String, conn: u64 },
    /// Of this edge process' connection ids in `from..below`, exactly `conns` are open: a
    /// connection in that range that the registry holds and this list does not is gone (its
    /// `disconnected` was lost), and is taken out. Sent every `edge.registry_sweep_ms`, with
    /// `below` where the edge's id counter stood at its previous sweep, so that every handshake
    /// below it has ended ([`present`]).
    Present {
        edge: String,
        epoch: u64,
        from: u64,
        below: u64,
        conns: Vec<u64>,
    },
}

/// Most connection ids in one `present` event (about 21 bytes each in JSON, so ≤ ~220 KB a
/// record, well under Kafka's 1 MB default).
pub const PRESENT_CHUNK: usize = 10_000;

/// The `present` events that tell, for edge process `epoch`, that of its ids below `below`
/// exactly `open` are open connections: `open` sorted and cut into chunks of at most `chunk`,
/// each covering the range from its first id (the first from the epoch's first id) to the next
/// chunk's first (the last up to `below`), so the ranges tile `conn_id(epoch, 0)..below`. Ids of
/// `open` outside that range are left out.
pub fn present(
    edge: &str,
    epoch: u64,
    below: u64,
    mut open: Vec<u64>,
    chunk: usize,
) -> Vec<EdgeEvent> {
    let first = conn_id(epoch, 0);
    open.retain(|c| (first..below).contains(c));
    open.sort_unstable();
    open.dedup();
    let chunks: Vec<&[u64]> = if open.is_empty() {
        vec![&[]]
    } else {
        open.chunks(chunk.max(1)).collect()
    };
    let starts: Vec<u64> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| if i == 0 { first } else { c[0] })
        .collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, c)| EdgeEvent::Present {
            edge: edge.to_string(),
            epoch,
            from: starts[i],
            below: starts.get(i + 1).copied().unwrap_or(below),
            conns: c.to_vec(),
        })
        .collect()
}

/// Record of the presence topic: either an edge event or a client request envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PresenceRecord {
    Edge { v: u16, edge_event: EdgeEvent },
    Request(Box<Envelope>),
}

impl EdgeEvent {
    pub fn edge(&self) -> &str {
        match self {
            EdgeEvent::Started { edge, .. }
            | EdgeEvent::Heartbeat { edge, .. }
            | EdgeEvent::Connected { edge, .. }
            | EdgeEvent::Disconnected { edge, .. }
            | EdgeEvent::Abandoned { edge, .. }
            | EdgeEvent::Present { edge, .. } => edge,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&PresenceRecord::Edge {
            v: WIRE_VERSION,
            edge_event: self.clone(),
        })
        .expect("edge events always serialise")
    }
}

/// The epoch (boot time) an edge puts in the top 24 bits of its connection ids, so a connection
/// id of an earlier process of the same edge id can be told from a live one.
pub fn conn_epoch(conn: u64) -> u64 {
    conn >> 40
}

/// The epoch as connection ids carry it (24 bits): names one process' share of the registry.
pub fn epoch_tag(epoch: u64) -> u64 {
    epoch & 0xff_ffff
}

/// How a connection is named in the registry and in Kafka keys: `edge/conn`.
pub fn conn_key(edge: &str, conn: u64) -> String {
    format!("{edge}/{conn}")
}

impl EdgeEvent {
    /// The Kafka key of this event. What must stay in order is per connection (its `connected`
    /// before its `disconnected`) and per edge process (`started` before its heartbeats), so
    /// connection events are keyed by connection and spread over every partition and lane: one
    /// edge's 19,000 reconnecting clients are registered in parallel, not one by one. `present`
    /// goes with its edge's `started`, after it.
    pub fn key(&self) -> String {
        match self {
            EdgeEvent::Started { edge, .. }
            | EdgeEvent::Heartbeat { edge, .. }
            | EdgeEvent::Present { edge, .. } => edge.clone(),
            EdgeEvent::Connected { edge, conn, .. }
            | EdgeEvent::Disconnected { edge, conn, .. }
            | EdgeEvent::Abandoned { edge, conn } => conn_key(edge, *conn),
        }
    }
}

/// A connection id: `epoch` (24 bits) then a per-process counter (40 bits).
pub fn conn_id(epoch: u64, counter: u64) -> u64 {
    (epoch_tag(epoch) << 40) | (counter & 0xff_ffff_ffff)
}

/// Decode any record with a version field, rejecting unknown versions.
pub fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    #[derive(Deserialize)]
    struct V {
        v: u16,
    }
    let v: V = serde_json::from_slice(bytes)?;
    if v.v != WIRE_VERSION {
        return Err(Error::Version(v.v));
    }
    Ok(serde_json::from_slice(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_traced_item_carries_its_traceparent_on_the_wire() {
        let item = EdgeMessage::Broadcast { frame: "f".into() };
        assert_eq!(EdgeMessage::traced(item.clone(), None), item);
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let traced = EdgeMessage::traced(item.clone(), Some(tp.into()));
        let json = serde_json::to_value(&traced).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"op": "traced", "traceparent": tp, "item": {"op": "broadcast", "frame": "f"}})
        );
        assert_eq!(serde_json::from_value::<EdgeMessage>(json).unwrap(), traced);
        let ops: Vec<&str> = [
            traced,
            item,
            EdgeMessage::Batch { items: vec![] },
            EdgeMessage::Deliver {
                conns: vec![],
                frame: String::new(),
                persisted_at_ms: None,
            },
            EdgeMessage::Close {
                conns: vec![],
                frame: String::new(),
                reason: String::new(),
            },
            EdgeMessage::Reply {
                conn: 0,
                req: 0,
                frame: String::new(),
                error: None,
                session: None,
                clear_session: false,
            },
        ]
        .iter()
        .map(EdgeMessage::op)
        .collect();
        assert_eq!(
            ops,
            ["traced", "broadcast", "batch", "deliver", "close", "reply"]
        );
    }

    fn env(request: Request, auth: Auth) -> Envelope {
        Envelope {
            v: WIRE_VERSION,
            edge: "edge-0".into(),
            conn: 7,
            req: 9,
            rid: Some("r".into()),
            auth,
            peer: None,
            sent_at_ms: 1,
            deadline_ms: None,
            request,
        }
    }

    fn arb_request() -> impl Strategy<Value = Request> {
        let s = "[a-zA-Z0-9 _<>\"\\\\]{0,20}";
        prop_oneof![
            Just(Request::Ping),
            Just(Request::Verify),
            Just(Request::Refresh),
            Just(Request::SessionList),
            Just(Request::LogoutAll),
            Just(Request::Me),
            Just(Request::UserDelete),
            Just(Request::InviteCodeRotate),
            Just(Request::InviteList),
            Just(Request::DmList),
            (s, s, proptest::option::of(s)).prop_map(|(u, p, id)| Request::UserCreate {
                username: u,
                password: p,
                client_request_id: id,
            }),
            (s, s, proptest::option::of(s)).prop_map(|(u, p, device)| Request::Login {
                username: u,
                password: p,
                device
            }),
            proptest::option::of(s).prop_map(|session_id| Request::Logout { session_id }),
            (proptest::option::of(s), proptest::option::of(any::<u64>())).prop_map(
                |(username, id)| Request::UserLookup {
                    username,
                    user_id: id.map(Id)
                }
            ),
            (proptest::option::of(s), proptest::option::of(any::<u32>()))
                .prop_map(|(cursor, limit)| Request::OnlineList { cursor, limit }),
            s.prop_map(|text| Request::BroadcastSend { text }),
            s.prop_map(|code| Request::InviteSend { code }),
            (any::<u64>(), any::<bool>()).prop_map(|(u, accept)| Request::InviteRespond {
                user_id: Id(u),
                accept
            }),
            any::<u64>().prop_map(|u| Request::ConnectionRemove { user_id: Id(u) }),
            any::<u64>().prop_map(|u| Request::DmOpen { user_id: Id(u) }),
            (
                any::<u64>(),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u64>()),
                proptest::option::of(any::<u32>())
            )
                .prop_map(|(c, before_seq, after_seq, limit)| Request::DmHistory {
                    conversation_id: Id(c),
                    before_seq,
                    after_seq,
                    limit
                }),
            (any::<u64>(), s, s, proptest::option::of(s)).prop_map(|(c, m, text, after)| {
                Request::DmSend {
                    conversation_id: Id(c),
                    client_msg_id: m,
                    text,
                    after_client_msg_id: after,
                }
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(c, seq)| Request::DmRead {
                conversation_id: Id(c),
                seq
            }),
            proptest::collection::btree_map(any::<u64>().prop_map(Id), any::<u64>(), 0..4)
                .prop_map(|since: BTreeMap<Id, u64>| Request::DmSync { since }),
        ]
    }

    fn arb_auth() -> impl Strategy<Value = Auth> {
        prop_oneof![
            Just(Auth::None),
            "[0-9a-f]{64}".prop_map(|token_hash| Auth::Token { token_hash }),
            ("[0-9a-f]{32}", any::<u64>()).prop_map(|(session_id, u)| Auth::Session {
                session_id,
                user_id: Id(u)
            }),
        ]
    }

    /// A deadline is optional on the wire both ways: an envelope without one (an edge from
    /// before deadlines) decodes and never expires, and one without a deadline writes no field,
    /// so workers from before deadlines read what a new edge writes for internal requests alike.
    #[test]
    fn a_deadline_is_optional_and_expires_only_once_passed() {
        let mut e = env(Request::Ping, Auth::None);
        let text = String::from_utf8(e.encode()).unwrap();
        assert!(!text.contains("deadline"), "{text}");
        let old = Envelope::decode(text.as_bytes()).unwrap();
        assert_eq!(old.deadline_ms, None);
        assert!(!old.expired(u64::MAX));

        e.deadline_ms = Some(1_000);
        let back = Envelope::decode(&e.encode()).unwrap();
        assert_eq!(back.deadline_ms, Some(1_000));
        assert!(!back.expired(999));
        assert!(!back.expired(1_000), "not before the deadline has passed");
        assert!(back.expired(1_001));
    }

    proptest! {
        #[test]
        fn envelopes_round_trip(request in arb_request(), auth in arb_auth(), conn in any::<u64>(), req in any::<u64>(), deadline_ms in proptest::option::of(any::<u64>())) {
            let mut e = env(request, auth);
            e.conn = conn;
            e.req = req;
            e.deadline_ms = deadline_ms;
            let back = Envelope::decode(&e.encode()).unwrap();
            prop_assert_eq!(&back, &e);
            prop_assert_eq!(back.key(), e.key());
            // every request also round-trips as a client frame
            let frame = crate::ClientFrame { rid: e.rid.clone(), request: e.request.clone() };
            let text = serde_json::to_string(&frame).unwrap();
            prop_assert_eq!(crate::frames::parse_client_frame(&text).unwrap(), frame);
        }

        #[test]
        fn conn_ids_keep_their_epoch(epoch in 0u64..(1 << 24), counter in 0u64..(1 << 40)) {
            prop_assert_eq!(conn_epoch(conn_id(epoch, counter)), epoch);
        }

        #[test]
        fn connection_events_are_keyed_by_connection_and_edge_events_by_edge(conn in any::<u64>(), u in any::<u64>()) {
            let (edge, user_id) = ("edge-1".to_string(), Id(u));
            let connected = EdgeEvent::Connected { edge: edge.clone(), conn, user_id, username: "ann".into(), session_id: "s".into() };
            let gone = EdgeEvent::Disconnected { edge: edge.clone(), conn, user_id };
            prop_assert_eq!(connected.key(), format!("edge-1/{conn}"));
            prop_assert_eq!(gone.key(), connected.key());
            prop_assert_eq!(EdgeEvent::Abandoned { edge: edge.clone(), conn }.key(), connected.key());
            prop_assert_eq!(EdgeEvent::Started { edge: edge.clone(), epoch: conn }.key(), "edge-1");
            prop_assert_eq!(EdgeEvent::Heartbeat { edge: edge.clone(), epoch: conn, connections: u }.key(), "edge-1");
            prop_assert_eq!(EdgeEvent::Present { edge, epoch: 1, from: 0, below: conn, conns: vec![] }.key(), "edge-1");
        }

        #[test]
        fn present_events_tile_the_range_and_list_every_open_id_once(
            counters in proptest::collection::vec(0u64..5_000, 0..300),
            below in 0u64..6_000,
            chunk in 1usize..50,
        ) {
            let epoch = 7;
            let (first, below) = (conn_id(epoch, 0), conn_id(epoch, below));
            let open: Vec<u64> = counters.iter().map(|c| conn_id(epoch, *c)).collect();
            let events = present("e", epoch, below, open.clone(), chunk);
            let mut at = first;
            let mut listed = Vec::new();
            for ev in &events {
                let EdgeEvent::Present { edge, epoch: e, from, below: b, conns } = ev else {
                    panic!("{ev:?}");
                };
                prop_assert_eq!((edge.as_str(), *e), ("e", epoch));
                prop_assert_eq!(*from, at, "ranges are contiguous");
                prop_assert!(conns.len() <= chunk);
                prop_assert!(conns.iter().all(|c| (*from..*b).contains(c)));
                listed.extend(conns.iter().copied());
                at = *b;
            }
            prop_assert_eq!(at, below.max(first), "the last range ends at below");
            let mut want: Vec<u64> = open.into_iter().filter(|c| *c < below).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(listed, want);
        }

        #[test]
        fn edge_events_round_trip(conn in any::<u64>(), u in any::<u64>()) {
            for ev in [
                EdgeEvent::Started { edge: "e".into(), epoch: conn },
                EdgeEvent::Heartbeat { edge: "e".into(), epoch: 1, connections: conn },
                EdgeEvent::Connected { edge: "e".into(), conn, user_id: Id(u), username: "n".into(), session_id: "s".into() },
                EdgeEvent::Disconnected { edge: "e".into(), conn, user_id: Id(u) },
                EdgeEvent::Abandoned { edge: "e".into(), conn },
                EdgeEvent::Present { edge: "e".into(), epoch: 1, from: conn_id(1, 0), below: conn, conns: vec![conn, u] },
            ] {
                let rec: PresenceRecord = decode_versioned(&ev.encode()).unwrap();
                prop_assert_eq!(rec, PresenceRecord::Edge { v: WIRE_VERSION, edge_event: ev.clone() });
                prop_assert_eq!(ev.edge(), "e");
            }
        }
    }

    #[test]
    fn rejects_unknown_versions_and_garbage() {
        let mut e = env(Request::Ping, Auth::None);
        e.v = 99;
        assert!(matches!(
            Envelope::decode(&e.encode()),
            Err(Error::Version(99))
        ));
        assert!(matches!(Envelope::decode(b"{"), Err(Error::Json(_))));
        assert!(decode_versioned::<Delivery>(br#"{"v":2}"#).is_err());
    }

    #[test]
    fn keys_keep_a_conversation_in_order() {
        let send = |c| {
            env(
                Request::DmSend {
                    conversation_id: Id(c),
                    client_msg_id: "m".into(),
                    text: "t".into(),
                    after_client_msg_id: None,
                },
                Auth::Session {
                    session_id: "s".into(),
                    user_id: Id(5),
                },
            )
        };
        assert_eq!(send(3).key(), "c3");
        assert_eq!(send(3).domain(), Domain::Dms);
        let me = env(
            Request::Me,
            Auth::Session {
                session_id: "s".into(),
                user_id: Id(5),
            },
        );
        assert_eq!(me.key(), "u5");
        assert_eq!(env(Request::Ping, Auth::None).key(), "edge-0/9");
    }

    #[test]
    fn every_request_has_a_domain() {
        let cases = [
            (Request::Ping, Domain::Auth),
            (Request::Refresh, Domain::Auth),
            (Request::UserDelete, Domain::Users),
            (Request::InviteList, Domain::Invites),
            (Request::DmList, Domain::Dms),
            (
                Request::BroadcastSend { text: "x".into() },
                Domain::Presence,
            ),
        ];
        for (r, d) in cases {
            assert_eq!(env(r, Auth::None).domain(), d);
        }
    }

    #[test]
    fn delivery_keys() {
        let d = Delivery::new(
            Target::Users {
                user_ids: vec![Id(4)],
            },
            "{}".into(),
        );
        assert_eq!(d.key(), "u4");
        assert_eq!(Delivery::new(Target::All, "{}".into()).key(), "all");
        assert_eq!(
            Delivery::new(
                Target::Sessions {
                    user_id: Id(2),
                    session_ids: vec![]
                },
                "{}".into()
            )
            .key(),
            "u2"
        );
        assert_eq!(
            Delivery::new(Target::Users { user_ids: vec![] }, "{}".into()).key(),
            ""
        );
    }
}
