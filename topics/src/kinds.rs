//! Every request kind, declared once: its wire name, the worker domain that handles it, how its
//! records are keyed on Kafka, who may send it, whether it travels over WebSocket, and its HTTP
//! routes. The edge's HTTP routing ([`from_http`]), the envelope's domain and key
//! ([`crate::Envelope`]) and the workers' dispatch all read this table; adding a request kind is
//! a variant of [`Request`] plus one row here (see docs/architecture.md).

use crate::{Domain, ErrorBody, ErrorCode, Id, Request};
use std::collections::HashMap;

/// One request kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The frame's `type`, also the label of logs and metrics.
    pub name: &'static str,
    pub domain: Domain,
    pub key: KeyBy,
    pub caller: Caller,
    pub via: Via,
    /// Its dedicated HTTP endpoints under `/api/v1` (besides `POST /api/v1/rpc`).
    pub http: &'static [Route],
}

/// What keeps a kind's records in order on Kafka.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyBy {
    /// The request's `conversation_id`: sends of one conversation stay in order whoever sends.
    Conversation,
    /// The caller's user (a socket's session), or the request itself when the caller is not
    /// known yet (a bearer token, no session).
    Caller,
}

/// Who may send a kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caller {
    /// No session needed (`ping`, sign-up, login).
    Anyone,
    /// A live session.
    Session,
}

/// Where a kind may come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// A WebSocket frame, `POST /api/v1/rpc`, or its own HTTP route.
    Any,
    /// Only its own HTTP route (the edge adds what the client must not set, such as a login's
    /// device label).
    Http,
    /// Only the edge itself (the handshake's session check).
    Edge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

/// An HTTP endpoint of a kind. Path segments `{name}` become the request field `name` (a
/// string); declared query parameters become fields too; a JSON body's fields are the request's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// Below `/api/v1`, e.g. `/users/{user_id}`.
    pub path: &'static str,
    /// The success status.
    pub status: u16,
    /// The request's fields come in a JSON object body.
    pub body: bool,
    pub query: &'static [Param],
}

/// A query parameter a route reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    pub name: &'static str,
    /// An unsigned number (otherwise a string).
    pub number: bool,
    pub required: bool,
}

impl Route {
    const fn new(method: Method, path: &'static str) -> Route {
        Route {
            method,
            path,
            status: 200,
            body: false,
            query: &[],
        }
    }

    pub const fn get(path: &'static str) -> Route {
        Route::new(Method::Get, path)
    }

    pub const fn post(path: &'static str) -> Route {
        Route::new(Method::Post, path)
    }

    pub const fn delete(path: &'static str) -> Route {
        Route::new(Method::Delete, path)
    }

    pub const fn status(self, status: u16) -> Route {
        Route { status, ..self }
    }

    pub const fn body(self) -> Route {
        Route { body: true, ..self }
    }

    pub const fn query(self, query: &'static [Param]) -> Route {
        Route { query, ..self }
    }
}

impl Param {
    pub const fn text(name: &'static str) -> Param {
        Param {
            name,
            number: false,
            required: false,
        }
    }

    pub const fn number(name: &'static str) -> Param {
        Param {
            name,
            number: true,
            ..Param::text(name)
        }
    }

    pub const fn required(self) -> Param {
        Param {
            required: true,
            ..self
        }
    }
}

/// The table: one row per variant of [`Request`], in any order. `kinds!` checks at compile time
/// that every variant has exactly one row (the generated `match` is exhaustive and has no
/// duplicate arms).
macro_rules! kinds {
    ($( $variant:ident => $name:literal, $domain:ident, $key:ident, $caller:ident, $via:ident, [$($route:expr),* $(,)?]; )*) => {
        #[allow(clippy::enum_variant_names)]
        #[repr(usize)]
        enum Row { $($variant),* }

        /// Every request kind.
        pub static KINDS: &[Kind] = &[$(
            Kind {
                name: $name,
                domain: Domain::$domain,
                key: KeyBy::$key,
                caller: Caller::$caller,
                via: Via::$via,
                http: &[$($route),*],
            }
        ),*];

        impl Request {
            /// This request's row of the table.
            pub fn spec(&self) -> &'static Kind {
                &KINDS[self.kind_index()]
            }

            /// This request's row of [`KINDS`]: a dense index for per-kind tables (metrics).
            pub fn kind_index(&self) -> usize {
                let row = match self { $(Request::$variant { .. } => Row::$variant),* };
                row as usize
            }
        }
    };
}

kinds! {
    Ping => "ping", Auth, Caller, Anyone, Any, [];
    UserCreate => "user.create", Users, Caller, Anyone, Http,
        [Route::post("/users").body().status(201)];
    Login => "session.login", Auth, Caller, Anyone, Http, [Route::post("/sessions").body()];
    Verify => "session.verify", Auth, Caller, Session, Edge, [];
    Refresh => "session.refresh", Auth, Caller, Session, Any, [Route::post("/sessions/refresh")];
    SessionList => "session.list", Auth, Caller, Session, Any, [Route::get("/sessions")];
    Logout => "session.logout", Auth, Caller, Session, Any,
        [Route::delete("/sessions/current"), Route::delete("/sessions/{session_id}")];
    LogoutAll => "session.logout_all", Auth, Caller, Session, Any, [Route::delete("/sessions")];
    Me => "user.me", Users, Caller, Session, Any, [Route::get("/users/me")];
    UserLookup => "user.lookup", Users, Caller, Session, Any, [
        Route::get("/users/{user_id}"),
        Route::get("/users").query(&[Param::text("username").required()]),
    ];
    UserDelete => "user.delete", Users, Caller, Session, Any, [Route::delete("/users/me")];
    InviteCodeRotate => "user.rotate_invite_code", Users, Caller, Session, Any,
        [Route::post("/users/me/invite_code")];
    OnlineList => "online.list", Presence, Caller, Session, Any,
        [Route::get("/online").query(&[Param::text("cursor"), Param::number("limit")])];
    BroadcastSend => "broadcast.send", Presence, Caller, Session, Any, [];
    InviteSend => "invite.send", Invites, Caller, Session, Any, [];
    InviteRespond => "invite.respond", Invites, Caller, Session, Any, [];
    InviteList => "invite.list", Invites, Caller, Session, Any, [];
    ConnectionRemove => "connection.remove", Invites, Caller, Session, Any, [];
    DmOpen => "dm.open", Dms, Caller, Session, Any, [];
    DmList => "dm.list", Dms, Caller, Session, Any, [];
    DmHistory => "dm.history", Dms, Caller, Session, Any, [];
    DmSend => "dm.send", Dms, Conversation, Session, Any, [];
    DmRead => "dm.read", Dms, Caller, Session, Any, [];
    DmSync => "dm.sync", Dms, Caller, Session, Any, [];
}

impl Request {
    /// The frame's `type`, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        self.spec().name
    }

    /// Requests that need no session.
    pub fn is_anonymous(&self) -> bool {
        self.spec().caller == Caller::Anyone
    }

    /// Requests an edge accepts from a WebSocket client or `/rpc` (the rest are HTTP-only or
    /// internal).
    pub fn allowed_over_ws(&self) -> bool {
        self.spec().via == Via::Any
    }

    /// The conversation a request is about, when it names one.
    pub fn conversation_id(&self) -> Option<Id> {
        match self {
            Request::DmHistory {
                conversation_id, ..
            }
            | Request::DmSend {
                conversation_id, ..
            }
            | Request::DmRead {
                conversation_id, ..
            } => Some(*conversation_id),
            _ => None,
        }
    }
}

/// The kind by wire name.
pub fn by_name(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

fn invalid(message: impl Into<String>) -> ErrorBody {
    ErrorBody::new(ErrorCode::InvalidInput, message)
}

/// Map a call to a dedicated endpoint (method, path below `/api/v1`, query, body) to its request
/// and success status. Pure; the edge adds what it knows (the device label of a login).
pub fn from_http(
    method: Method,
    path: &str,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Request, u16), ErrorBody> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // The matching route with the most literal segments wins: `/users/me` before `/users/{id}`.
    let (kind, route) = KINDS
        .iter()
        .flat_map(|k| k.http.iter().map(move |r| (k, r)))
        .filter(|(_, r)| r.method == method)
        .filter_map(|(k, r)| {
            let tpl: Vec<&str> = r.path.split('/').filter(|s| !s.is_empty()).collect();
            let fits = tpl.len() == segs.len()
                && tpl
                    .iter()
                    .zip(&segs)
                    .all(|(t, s)| t.starts_with('{') || t == s);
            fits.then(|| (k, r, tpl.iter().filter(|t| !t.starts_with('{')).count()))
        })
        .max_by_key(|(_, _, literals)| *literals)
        .map(|(k, r, _)| (k, r))
        .ok_or_else(|| ErrorBody::new(ErrorCode::NotFound, "no such endpoint"))?;
    let mut fields = if route.body {
        match serde_json::from_slice(body) {
            Ok(serde_json::Value::Object(m)) => m,
            Ok(_) => return Err(invalid("body must be a JSON object")),
            Err(e) => return Err(invalid(format!("body must be JSON: {e}"))),
        }
    } else {
        serde_json::Map::new()
    };
    for (t, s) in route.path.split('/').filter(|s| !s.is_empty()).zip(&segs) {
        if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            fields.insert(name.into(), (*s).into());
        }
    }
    for p in route.query {
        match query.get(p.name) {
            Some(v) if p.number => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| invalid(format!("{} must be a number", p.name)))?;
                fields.insert(p.name.into(), n.into());
            }
            Some(v) => {
                fields.insert(p.name.into(), v.clone().into());
            }
            None if p.required => return Err(invalid(format!("?{}= is required", p.name))),
            None => {}
        }
    }
    fields.insert("type".into(), kind.name.into());
    let request = serde_json::from_value(fields.into()).map_err(|e| invalid(format!("{e}")))?;
    Ok((request, route.status))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        method: Method,
        path: &str,
        q: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Request, ErrorBody> {
        let q = q
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_http(method, path, &q, body).map(|(r, _)| r)
    }

    #[test]
    fn every_kind_has_one_row_with_its_wire_name() {
        let mut names: Vec<_> = KINDS.iter().map(|k| k.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), KINDS.len(), "wire names are unique");
        for k in KINDS {
            // the row's name is the name serde reads: a frame of that type parses to a request
            // whose row is this one (or fails on a missing field, never on an unknown type)
            let frame = format!(r#"{{"type":"{}"}}"#, k.name);
            match serde_json::from_str::<Request>(&frame) {
                Ok(r) => assert_eq!(r.spec(), k),
                Err(e) => assert!(e.to_string().contains("missing field"), "{}: {e}", k.name),
            }
            assert_eq!(by_name(k.name), Some(k));
        }
        assert_eq!(by_name("nope"), None);
        assert_eq!(KINDS[Request::Ping.kind_index()].name, "ping");
    }

    #[test]
    fn the_rows_say_who_may_send_what_and_where_it_goes() {
        assert!(Request::Ping.is_anonymous());
        assert!(!Request::DmList.is_anonymous());
        assert!(!Request::Verify.is_anonymous());
        assert!(!Request::Verify.allowed_over_ws());
        assert!(Request::DmList.allowed_over_ws());
        assert_eq!(Request::Verify.spec().via, Via::Edge);
        assert_eq!(by_name("session.login").unwrap().via, Via::Http);
        assert_eq!(Request::DmList.spec().domain, Domain::Dms);
        assert_eq!(Request::DmList.kind(), "dm.list");
        let send = Request::DmSend {
            conversation_id: Id(3),
            client_msg_id: "c".into(),
            text: "t".into(),
            after_client_msg_id: None,
        };
        assert_eq!(send.spec().key, KeyBy::Conversation);
        assert_eq!(send.conversation_id(), Some(Id(3)));
        assert_eq!(
            Request::DmRead {
                conversation_id: Id(4),
                seq: 1
            }
            .conversation_id(),
            Some(Id(4))
        );
        assert_eq!(Request::DmList.conversation_id(), None);
    }

    #[test]
    fn routes_and_params_are_built_as_written() {
        assert_eq!(
            Route::post("/users").body().status(201),
            Route {
                method: Method::Post,
                path: "/users",
                status: 201,
                body: true,
                query: &[],
            }
        );
        assert_eq!(Route::delete("/x").method, Method::Delete);
        // built at run time (the table's rows are built at compile time)
        let params: &'static [Param] = Box::leak(Box::new([
            Param::number("limit"),
            Param::text("c").required(),
        ]));
        let q = Route::get("/online").query(params);
        assert_eq!((q.method, q.status, q.body), (Method::Get, 200, false));
        assert_eq!(
            q.query,
            &[
                Param {
                    name: "limit",
                    number: true,
                    required: false
                },
                Param {
                    name: "c",
                    number: false,
                    required: true
                }
            ]
        );
        // the table's own rows, as the edge reads them
        let lookup = by_name("user.lookup").unwrap();
        assert_eq!(lookup.http[1].query[0], Param::text("username").required());
        assert_eq!(by_name("user.create").unwrap().http[0].status, 201);
    }

    #[test]
    fn routes_map_calls_to_requests() {
        let creds = br#"{"username":"ann","password":"pw123456!","type":"dm.list"}"#;
        let q = HashMap::new();
        let (r, s) = from_http(Method::Post, "/users", &q, creds).unwrap();
        assert_eq!(s, 201);
        assert_eq!(
            r,
            Request::UserCreate {
                username: "ann".into(),
                password: "pw123456!".into(),
                client_request_id: None,
            }
        );
        let resend = br#"{"username":"ann","password":"pw123456!","client_request_id":"k1"}"#;
        assert!(matches!(
            from_http(Method::Post, "/users", &q, resend).unwrap().0,
            Request::UserCreate { client_request_id: Some(ref k), .. } if k == "k1"
        ));
        assert_eq!(
            call(Method::Delete, "/sessions/current", &[], b"").unwrap(),
            Request::Logout { session_id: None }
        );
        assert_eq!(
            call(Method::Delete, "/sessions/abc", &[], b"").unwrap(),
            Request::Logout {
                session_id: Some("abc".into())
            }
        );
        assert_eq!(
            call(Method::Get, "/users/me", &[], b"").unwrap(),
            Request::Me
        );
        assert_eq!(
            call(Method::Get, "/users/7/", &[], b"").unwrap(),
            Request::UserLookup {
                username: None,
                user_id: Some(Id(7))
            }
        );
        assert_eq!(
            call(Method::Get, "/online", &[("limit", "5"), ("x", "y")], b"").unwrap(),
            Request::OnlineList {
                cursor: None,
                limit: Some(5)
            }
        );
    }

    #[test]
    fn bad_calls_are_refused_with_a_reason() {
        let refused = |m, p, q: &[(&str, &str)], b: &[u8]| call(m, p, q, b).unwrap_err();
        let e = refused(Method::Get, "/nope", &[], b"");
        assert_eq!(
            (e.code, e.message.as_str()),
            (ErrorCode::NotFound, "no such endpoint")
        );
        // a known path with another method is not an endpoint either
        assert_eq!(
            refused(Method::Post, "/users/me", &[], b"").code,
            ErrorCode::NotFound
        );
        for (m, p, q, b, why) in [
            (
                Method::Post,
                "/sessions",
                &[][..],
                &b"nope"[..],
                "body must be JSON",
            ),
            (
                Method::Post,
                "/sessions",
                &[],
                b"[1]",
                "body must be a JSON object",
            ),
            (Method::Post, "/sessions", &[], b"{}", "missing field"),
            (
                Method::Post,
                "/users",
                &[],
                br#"{"username":1,"password":"p"}"#,
                "invalid type",
            ),
            (Method::Get, "/users/x", &[], b"", "id"),
            (Method::Get, "/users", &[], b"", "?username= is required"),
            (
                Method::Get,
                "/online",
                &[("limit", "x")],
                b"",
                "limit must be a number",
            ),
            (
                Method::Get,
                "/online",
                &[("limit", "-1")],
                b"",
                "limit must be a number",
            ),
        ] {
            let e = refused(m, p, q, b);
            assert_eq!(e.code, ErrorCode::InvalidInput, "{p}");
            assert!(e.message.contains(why), "{p}: {}", e.message);
        }
    }
}
