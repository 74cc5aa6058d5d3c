//! The HTTP API: sign-up, login and every `/api/v1` endpoint, typed or raw.

use crate::{Error, Result};
use reqwest::{Method, RequestBuilder};
use serde::Serialize;
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;
use topics::{ErrorBody, Id, Request, Response};

/// A new sign-up request id: 128 random bits in hex, for [`Http::sign_up`].
pub fn request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An HTTP client of one Switchboard address (`http://host:port`, an nginx or an edge).
#[derive(Clone, Debug)]
pub struct Http {
    base: String,
    client: reqwest::Client,
}

/// A new session, from a login or a refresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The bearer secret: `Authorization: Bearer <token>`, or `auth.<token>` on a WebSocket.
    pub token: String,
    pub session_id: String,
    pub user_id: Id,
    pub username: String,
    pub idle_timeout_s: u64,
}

/// How to build an [`Http`] with more than the defaults.
pub struct HttpBuilder {
    base: String,
    builder: reqwest::ClientBuilder,
}

impl HttpBuilder {
    /// Connect from this local address (e.g. another loopback address, 127.0.0.x: the edges
    /// see it as the client's address).
    pub fn local_address(mut self, ip: IpAddr) -> Self {
        self.builder = self.builder.local_address(ip);
        self
    }

    /// Give up on a call after this long (none by default).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.builder = self.builder.timeout(d);
        self
    }

    /// Idle connections kept open per host.
    pub fn pool_max_idle_per_host(mut self, n: usize) -> Self {
        self.builder = self.builder.pool_max_idle_per_host(n);
        self
    }

    /// The `User-Agent` (the edge makes the session's device label from it at login).
    pub fn user_agent(mut self, ua: &str) -> Self {
        self.builder = self.builder.user_agent(ua.to_string());
        self
    }

    pub fn build(self) -> Result<Http> {
        Ok(Http::from_client(&self.base, self.builder.build()?))
    }
}

impl Http {
    /// A client of `base` (`http://host:port`; a trailing `/` is ignored).
    pub fn new(base: &str) -> Http {
        Http::from_client(base, reqwest::Client::new())
    }

    pub fn builder(base: &str) -> HttpBuilder {
        HttpBuilder {
            base: base.to_string(),
            builder: reqwest::Client::builder(),
        }
    }

    /// Share an existing `reqwest` client (its connection pool) for another base.
    pub fn from_client(base: &str, client: reqwest::Client) -> Http {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying `reqwest` client, for requests this API does not cover.
    pub fn reqwest(&self) -> &reqwest::Client {
        &self.client
    }

    /// A request to `path` (from `/`, e.g. `/api/v1/users/me`) to add headers or a body to;
    /// send it with [`Http::send_raw`] or `reqwest`'s own `send`.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Send a request as it is (with the bearer `token`, if any): the status and the body as
    /// JSON (a body that is not JSON comes back as a JSON string of its text).
    pub async fn send_raw(&self, rb: RequestBuilder, token: Option<&str>) -> Result<(u16, Value)> {
        let rb = match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// One call with an optional JSON body, typed: the reply, or [`Error::Api`] with the status
    /// and error body.
    pub async fn call<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        token: Option<&str>,
    ) -> Result<Response> {
        let mut rb = self.request(method, path);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        decode(status, &bytes)
    }

    /// `POST /api/v1/users`: sign up. The reply is `user` (with the invite code).
    ///
    /// `client_request_id` (1-64 bytes, unguessable: [`request_id`]) makes the sign-up safe to
    /// send again after a lost answer: keep it while the username and password stay the same,
    /// and a resend is answered like the first sign-up (`conflict` only when the account was
    /// made with another password or another id; docs/protocol.md, `user.create`).
    pub async fn sign_up(
        &self,
        username: &str,
        password: &str,
        client_request_id: Option<&str>,
    ) -> Result<Response> {
        let body = serde_json::json!({
            "username": username,
            "password": password,
            "client_request_id": client_request_id,
        });
        self.call(Method::POST, "/api/v1/users", Some(&body), None)
            .await
    }

    /// `POST /api/v1/sessions`: log in.
    pub async fn log_in(&self, username: &str, password: &str) -> Result<Session> {
        let body = serde_json::json!({"username": username, "password": password});
        session(
            self.call(Method::POST, "/api/v1/sessions", Some(&body), None)
                .await?,
        )
    }

    /// `POST /api/v1/sessions/refresh`: extend the session; its token rotates.
    pub async fn refresh(&self, token: &str) -> Result<Session> {
        session(
            self.call::<()>(Method::POST, "/api/v1/sessions/refresh", None, Some(token))
                .await?,
        )
    }

    /// `GET /api/v1/sessions/current`: `user` when `token` opens a live session, else
    /// `signed_out`.
    pub async fn current_session(&self, token: Option<&str>) -> Result<Response> {
        self.call::<()>(Method::GET, "/api/v1/sessions/current", None, token)
            .await
    }

    /// `GET /api/v1/sessions`: my sessions.
    pub async fn sessions(&self, token: &str) -> Result<Response> {
        self.call::<()>(Method::GET, "/api/v1/sessions", None, Some(token))
            .await
    }

    /// `DELETE /api/v1/sessions/current`: log this session out.
    pub async fn log_out(&self, token: &str) -> Result<Response> {
        self.call::<()>(
            Method::DELETE,
            "/api/v1/sessions/current",
            None,
            Some(token),
        )
        .await
    }

    /// `DELETE /api/v1/sessions/{session_id}`: log one of my sessions out.
    pub async fn log_out_session(&self, token: &str, session_id: &str) -> Result<Response> {
        let path = format!("/api/v1/sessions/{session_id}");
        self.call::<()>(Method::DELETE, &path, None, Some(token))
            .await
    }

    /// `DELETE /api/v1/sessions`: log every session of mine out.
    pub async fn log_out_all(&self, token: &str) -> Result<Response> {
        self.call::<()>(Method::DELETE, "/api/v1/sessions", None, Some(token))
            .await
    }

    /// `GET /api/v1/users/me`: my profile and invite code.
    pub async fn me(&self, token: &str) -> Result<Response> {
        self.call::<()>(Method::GET, "/api/v1/users/me", None, Some(token))
            .await
    }

    /// `DELETE /api/v1/users/me`: delete my account.
    pub async fn delete_account(&self, token: &str) -> Result<Response> {
        self.call::<()>(Method::DELETE, "/api/v1/users/me", None, Some(token))
            .await
    }

    /// `POST /api/v1/users/me/invite_code`: a fresh invite code for me (the old one stops
    /// working); answers my profile with the new code.
    pub async fn rotate_invite_code(&self, token: &str) -> Result<Response> {
        self.call::<()>(
            Method::POST,
            "/api/v1/users/me/invite_code",
            None,
            Some(token),
        )
        .await
    }

    /// `GET /api/v1/users/{user_id}`: a public profile.
    pub async fn user(&self, token: &str, user_id: Id) -> Result<Response> {
        let path = format!("/api/v1/users/{user_id}");
        self.call::<()>(Method::GET, &path, None, Some(token)).await
    }

    /// `GET /api/v1/users?username=NAME`: a public profile by name.
    pub async fn user_named(&self, token: &str, username: &str) -> Result<Response> {
        self.get_query(
            "/api/v1/users",
            &[("username", username.to_string())],
            token,
        )
        .await
    }

    /// `GET /api/v1/online`: a page of the online list.
    pub async fn online(
        &self,
        token: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Response> {
        let mut q: Vec<(&str, String)> = Vec::new();
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_string()));
        }
        self.get_query("/api/v1/online", &q, token).await
    }

    /// A `GET` with a query string, decoded like every other answer.
    async fn get_query(
        &self,
        path: &str,
        query: &[(&str, String)],
        token: &str,
    ) -> Result<Response> {
        let resp = self
            .request(Method::GET, path)
            .query(query)
            .bearer_auth(token)
            .send()
            .await?;
        let status = resp.status().as_u16();
        decode(status, &resp.bytes().await?)
    }

    /// `POST /api/v1/rpc`: any request a WebSocket could send (`token` may be `None` only for
    /// `ping`).
    pub async fn rpc(&self, request: &Request, token: Option<&str>) -> Result<Response> {
        self.call(Method::POST, "/api/v1/rpc", Some(request), token)
            .await
    }
}

fn session(r: Response) -> Result<Session> {
    match r {
        Response::Session {
            token,
            session_id,
            user_id,
            username,
            idle_timeout_s,
        } => Ok(Session {
            token,
            session_id,
            user_id,
            username,
            idle_timeout_s,
        }),
        other => Err(Error::UnexpectedReply(format!("{other:?}"))),
    }
}

/// An HTTP answer, typed: a 2xx body is a reply, anything else an error body with its status.
/// A body that is neither is [`Error::Unexpected`].
pub fn decode(status: u16, body: &[u8]) -> Result<Response> {
    let unexpected = || Error::Unexpected {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    };
    if (200..300).contains(&status) {
        serde_json::from_slice(body).map_err(|_| unexpected())
    } else {
        let error: ErrorBody = serde_json::from_slice(body).map_err(|_| unexpected())?;
        Err(Error::Api {
            status: Some(status),
            error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use topics::ErrorCode;

    #[test]
    fn request_ids_are_valid_and_new_each_time() {
        let (a, b) = (request_id(), request_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(topics::validate::client_request_id(&a).is_ok());
    }

    #[test]
    fn decodes_replies_and_error_bodies() {
        assert_eq!(decode(200, br#"{"kind":"pong"}"#).unwrap(), Response::Pong);
        match decode(404, br#"{"code":"not_found","message":"no such user"}"#) {
            Err(Error::Api {
                status: Some(404),
                error,
            }) => assert_eq!(error, ErrorBody::new(ErrorCode::NotFound, "no such user")),
            other => panic!("{other:?}"),
        }
        match decode(502, b"<html>bad gateway</html>") {
            Err(Error::Unexpected { status: 502, body }) => assert!(body.contains("gateway")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(200, b"{\"kind\":\"nope\"}"),
            Err(Error::Unexpected { status: 200, .. })
        ));
    }

    #[test]
    fn a_session_reply_becomes_a_session() {
        let r = Response::Session {
            token: "t".into(),
            session_id: "s".into(),
            user_id: Id(3),
            username: "ann".into(),
            idle_timeout_s: 60,
        };
        assert_eq!(session(r).unwrap().token, "t");
        assert!(matches!(
            session(Response::Ok),
            Err(Error::UnexpectedReply(_))
        ));
    }

    #[test]
    fn trims_the_base() {
        assert_eq!(
            Http::new("http://127.0.0.1:8080/").base(),
            "http://127.0.0.1:8080"
        );
    }
}
