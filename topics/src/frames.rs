//! What clients send and receive. A WebSocket text frame is one JSON object; HTTP bodies use the
//! same request and response shapes (see docs/protocol.md).

use crate::{ErrorBody, ErrorCode, Id};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A client frame: an optional request id the reply echoes, and the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct ClientFrame {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rid: Option<String>,
    #[serde(flatten)]
    pub request: Request,
}

/// Every request a client can make, over WebSocket or (mapped by the edge) over HTTP.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS), ts(optional_fields = nullable))]
#[serde(tag = "type")]
pub enum Request {
    #[serde(rename = "ping")]
    Ping,
    /// Sign up (HTTP `POST /api/v1/users`).
    #[serde(rename = "user.create")]
    UserCreate {
        username: String,
        password: String,
        /// Chosen by the client, unguessable (a random UUID), the same for every resend of this
        /// sign-up: a resend then completes what the first left undone, or is answered as the
        /// first was (with the same password), instead of `conflict` "username is taken".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_request_id: Option<String>,
    },
    /// Log in (HTTP `POST /api/v1/sessions`).
    #[serde(rename = "session.login")]
    Login {
        username: String,
        password: String,
        /// Set by the edge from the `User-Agent` ([`crate::device::label`]), never by clients.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// Edge-internal: check the session of a WebSocket handshake and register the connection.
    #[serde(rename = "session.verify")]
    Verify,
    /// Keep-alive: extends the session's idle lifetime and rotates its token.
    #[serde(rename = "session.refresh")]
    Refresh,
    #[serde(rename = "session.list")]
    SessionList,
    /// Log out one session (the current one when `session_id` is absent).
    #[serde(rename = "session.logout")]
    Logout {
        #[serde(default)]
        session_id: Option<String>,
    },
    #[serde(rename = "session.logout_all")]
    LogoutAll,
    #[serde(rename = "user.me")]
    Me,
    #[serde(rename = "user.lookup")]
    UserLookup {
        #[serde(default)]
        username: Option<String>,
        #[serde(default)]
        user_id: Option<Id>,
    },
    #[serde(rename = "user.delete")]
    UserDelete,
    /// Replace my invite code with a fresh one; the old one stops working (a code that leaked).
    #[serde(rename = "user.rotate_invite_code")]
    InviteCodeRotate,
    #[serde(rename = "online.list")]
    OnlineList {
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename = "broadcast.send")]
    BroadcastSend { text: String },
    #[serde(rename = "invite.send")]
    InviteSend { code: String },
    #[serde(rename = "invite.respond")]
    InviteRespond { user_id: Id, accept: bool },
    #[serde(rename = "invite.list")]
    InviteList,
    #[serde(rename = "connection.remove")]
    ConnectionRemove { user_id: Id },
    #[serde(rename = "dm.open")]
    DmOpen { user_id: Id },
    #[serde(rename = "dm.list")]
    DmList,
    #[serde(rename = "dm.history")]
    DmHistory {
        conversation_id: Id,
        #[serde(default)]
        before_seq: Option<u64>,
        #[serde(default)]
        after_seq: Option<u64>,
        #[serde(default)]
        limit: Option<u32>,
    },
    #[serde(rename = "dm.send")]
    DmSend {
        conversation_id: Id,
        client_msg_id: String,
        text: String,
        /// The `client_msg_id` of the message this device typed just before this one in this
        /// conversation, while that one is not acknowledged yet: this one is stored only after
        /// it (else `out_of_order`), so a resent earlier message never lands behind a later one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_client_msg_id: Option<String>,
    },
    #[serde(rename = "dm.read")]
    DmRead { conversation_id: Id, seq: u64 },
    /// After a reconnect: the last sequence seen per conversation; the reply holds what was missed.
    #[serde(rename = "dm.sync")]
    DmSync { since: BTreeMap<Id, u64> },
}

/// A public profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct UserProfile {
    pub user_id: Id,
    pub username: String,
    pub created_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct SessionInfo {
    pub session_id: String,
    pub created_at_ms: u64,
    /// The login or the latest refresh of the session, whichever is later.
    pub last_seen_ms: u64,
    pub current: bool,
    /// What the session was opened from ("Chrome on Android"), from the login's `User-Agent`;
    /// `None` when it sent none usable.
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct OnlineUser {
    pub user_id: Id,
    pub username: String,
}

/// State of the link between me and another user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum InviteState {
    Pending,
    Accepted,
    Rejected,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Outgoing,
    Incoming,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct Link {
    pub user_id: Id,
    pub username: String,
    pub state: InviteState,
    pub direction: Direction,
    pub updated_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct Message {
    pub conversation_id: Id,
    pub seq: u64,
    pub message_id: Id,
    /// `None` once the author's account is deleted.
    pub author_id: Option<Id>,
    /// `"[deleted]"` once the author's account is deleted.
    pub author: String,
    pub client_msg_id: String,
    pub text: String,
    pub sent_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct ConversationSummary {
    pub conversation_id: Id,
    pub peer_id: Id,
    pub peer: String,
    pub last_seq: u64,
    pub last_message: Option<Message>,
    pub unread: u64,
}

/// Successful replies, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Response {
    Pong,
    Ok,
    /// A new or rotated session. `token` is the bearer secret; it is shown once.
    Session {
        token: String,
        session_id: String,
        user_id: Id,
        username: String,
        idle_timeout_s: u64,
    },
    Sessions {
        sessions: Vec<SessionInfo>,
    },
    /// HTTP only, from `GET /api/v1/sessions/current`: the request opens no live session.
    SignedOut,
    User {
        user: UserProfile,
        /// Only in replies about the caller themself.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        invite_code: Option<String>,
    },
    Online {
        users: Vec<OnlineUser>,
        next_cursor: Option<String>,
    },
    Links {
        links: Vec<Link>,
    },
    Link {
        link: Link,
    },
    Conversation {
        conversation: ConversationSummary,
    },
    Conversations {
        conversations: Vec<ConversationSummary>,
    },
    History {
        conversation_id: Id,
        messages: Vec<Message>,
        /// More messages exist past this page in the direction asked for.
        more: bool,
    },
    Sent {
        message: Message,
        /// True when this client_msg_id was already stored: the original is returned.
        duplicate: bool,
    },
    Synced {
        conversations: Vec<SyncedConversation>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
pub struct SyncedConversation {
    pub conversation_id: Id,
    pub messages: Vec<Message>,
    pub more: bool,
}

/// Events pushed to clients without a request, tagged by `event`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Someone invited me, or answered my invite (also to my other devices for my own answers).
    InviteUpdated { link: Link },
    /// The link with `user_id` is gone (`connection.remove` by either of us: a connection ended,
    /// an invite withdrawn or forgotten). We cannot message each other until a new invite is
    /// accepted; the conversation and its history stay.
    ConnectionRemoved { user_id: Id },
    /// A new message in one of my conversations (also to my other devices for my own sends).
    DmMessage { message: Message },
    Broadcast {
        from_user_id: Id,
        from: String,
        text: String,
        sent_at_ms: u64,
    },
    /// My session ended (logout elsewhere, account deleted, expiry); the socket closes next.
    SessionRevoked { reason: String },
}

/// Everything the server writes to a WebSocket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, ts_rs::TS))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Reply {
        #[serde(default)]
        rid: Option<String>,
        data: Response,
    },
    Error {
        #[serde(default)]
        rid: Option<String>,
        code: ErrorCode,
        message: String,
    },
    Event {
        data: Event,
    },
}

impl ServerFrame {
    pub fn error(rid: Option<String>, err: ErrorBody) -> Self {
        ServerFrame::Error {
            rid,
            code: err.code,
            message: err.message,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}

/// Just the `type` of a client frame, which must be a string when present.
#[derive(Deserialize)]
struct TypeTag<'a> {
    #[serde(rename = "type", borrow, default)]
    _kind: Option<std::borrow::Cow<'a, str>>,
}

/// Parse a client's text frame. Unknown types, missing or mistyped fields are `InvalidInput`.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, ErrorBody> {
    let bad =
        |e: serde_json::Error| ErrorBody::new(ErrorCode::InvalidInput, format!("bad frame: {e}"));
    // serde takes a number as the index of a variant (`{"type":7}` would be the eighth request
    // kind, `session.logout_all`): only a string names a request.
    serde_json::from_str::<TypeTag<'_>>(text).map_err(bad)?;
    let frame: ClientFrame = serde_json::from_str(text).map_err(bad)?;
    if let Some(rid) = &frame.rid {
        if rid.len() > 64 {
            return Err(ErrorBody::new(
                ErrorCode::InvalidInput,
                "rid is longer than 64 bytes",
            ));
        }
    }
    Ok(frame)
}

/// The request id of a frame that failed to parse, when one can be found, so the error can
/// still be matched to the request by the client.
pub fn salvage_rid(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let rid = v.get("rid")?.as_str()?;
    (rid.len() <= 64).then(|| rid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_dm_send() {
        let f = parse_client_frame(
            r#"{"type":"dm.send","rid":"r1","conversation_id":"42","client_msg_id":"c1","text":"hi"}"#,
        )
        .unwrap();
        assert_eq!(f.rid.as_deref(), Some("r1"));
        assert_eq!(
            f.request,
            Request::DmSend {
                conversation_id: Id(42),
                client_msg_id: "c1".into(),
                text: "hi".into(),
                after_client_msg_id: None,
            }
        );
        assert_eq!(f.request.kind(), "dm.send");
        let f = parse_client_frame(
            r#"{"type":"dm.send","conversation_id":"42","client_msg_id":"c2","text":"yo","after_client_msg_id":"c1"}"#,
        )
        .unwrap();
        assert!(matches!(
            f.request,
            Request::DmSend { after_client_msg_id: Some(ref a), .. } if a == "c1"
        ));
        let json = serde_json::to_string(&Request::DmSend {
            conversation_id: Id(42),
            client_msg_id: "c1".into(),
            text: "hi".into(),
            after_client_msg_id: None,
        })
        .unwrap();
        assert!(!json.contains("after"), "absent, not null: {json}");
    }

    #[test]
    fn rejects_bad_frames_with_invalid_input() {
        for bad in [
            "not json",
            r#"{"type":"nope"}"#,
            r#"{"type":"dm.send","conversation_id":42,"client_msg_id":"c","text":"x"}"#,
            r#"{"rid":"x"}"#,
            r#"[1,2]"#,
            r#"{"type":7}"#,
            r#"{"type":0,"rid":"r"}"#,
            r#"{"rid":"r","type":22,"since":{}}"#,
        ] {
            let err = parse_client_frame(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidInput, "{bad}");
        }
        let long = format!(r#"{{"type":"ping","rid":"{}"}}"#, "x".repeat(65));
        assert_eq!(
            parse_client_frame(&long).unwrap_err().code,
            ErrorCode::InvalidInput
        );
    }

    #[test]
    fn salvages_the_rid_of_a_bad_frame() {
        assert_eq!(
            salvage_rid(r#"{"type":"nope","rid":"r9"}"#).as_deref(),
            Some("r9")
        );
        assert_eq!(salvage_rid("garbage"), None);
        assert_eq!(
            salvage_rid(&format!(r#"{{"rid":"{}"}}"#, "x".repeat(65))),
            None
        );
    }

    #[test]
    fn session_replies_have_the_documented_shape() {
        assert_eq!(
            serde_json::to_string(&Response::SignedOut).unwrap(),
            r#"{"kind":"signed_out"}"#
        );
        let info = SessionInfo {
            session_id: "s".into(),
            created_at_ms: 1,
            last_seen_ms: 2,
            current: true,
            device: Some("Chrome on Linux".into()),
        };
        assert_eq!(
            serde_json::to_string(&info).unwrap(),
            r#"{"session_id":"s","created_at_ms":1,"last_seen_ms":2,"current":true,"device":"Chrome on Linux"}"#
        );
        // a reply from before the field existed still reads
        let old: SessionInfo = serde_json::from_str(
            r#"{"session_id":"s","created_at_ms":1,"last_seen_ms":2,"current":false}"#,
        )
        .unwrap();
        assert_eq!(old.device, None);
        // the edge's label travels in the envelope; without one the field is left out
        let login = Request::Login {
            username: "ann".into(),
            password: "pw".into(),
            device: None,
        };
        assert_eq!(
            serde_json::to_string(&login).unwrap(),
            r#"{"type":"session.login","username":"ann","password":"pw"}"#
        );
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let f = ServerFrame::Reply {
            rid: Some("r1".into()),
            data: Response::Pong,
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"reply","rid":"r1","data":{"kind":"pong"}}"#
        );
        let e = ServerFrame::error(None, ErrorBody::new(ErrorCode::NotFound, "no such user"));
        assert_eq!(
            e.to_json(),
            r#"{"type":"error","rid":null,"code":"not_found","message":"no such user"}"#
        );
        let ev = ServerFrame::Event {
            data: Event::SessionRevoked {
                reason: "logout".into(),
            },
        };
        assert_eq!(
            ev.to_json(),
            r#"{"type":"event","data":{"event":"session_revoked","reason":"logout"}}"#
        );
        let ev = ServerFrame::Event {
            data: Event::ConnectionRemoved { user_id: Id(7) },
        };
        assert_eq!(
            ev.to_json(),
            r#"{"type":"event","data":{"event":"connection_removed","user_id":"7"}}"#
        );
    }
}
