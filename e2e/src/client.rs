//! The tests' view of the Rust SDK (`client/`): the same calls, with a 20 s wait and panics
//! instead of errors, and `serde_json::Value` bodies so tests can send and check exact JSON.

use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use topics::{Event, ServerFrame};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Http {
    inner: client::Http,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Http {
            inner: client::Http::new(base),
        }
    }

    /// A client whose connections come from `local` (another loopback address, 127.0.0.x): nginx
    /// sees it as `$remote_addr` and forwards it as the client's address.
    pub fn from_address(base: &str, local: std::net::IpAddr) -> Self {
        Http {
            inner: client::Http::builder(base)
                .local_address(local)
                .build()
                .expect("http client"),
        }
    }

    /// The SDK client underneath, for typed calls.
    pub fn sdk(&self) -> &client::Http {
        &self.inner
    }

    async fn send(&self, rb: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        self.inner.send_raw(rb, token).await.expect("http request")
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        let rb = self.inner.request(reqwest::Method::POST, path).json(&body);
        self.send(rb, token).await
    }

    /// `POST {"username", "password"}` to `path` (`/api/v1/users` signs up, `/api/v1/sessions`
    /// logs in), whatever the answer.
    pub async fn credentials(&self, path: &str, username: &str, password: &str) -> (u16, Value) {
        let body = serde_json::json!({"username": username, "password": password});
        self.post(path, body, None).await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        let rb = self
            .inner
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body);
        self.send(rb, token).await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.inner.request(reqwest::Method::GET, path), token)
            .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.inner.request(reqwest::Method::DELETE, path), token)
            .await
    }

    /// Raw response, for headers.
    pub async fn raw(
        &self,
        rb: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        rb(self.inner.reqwest(), self.inner.base().to_string())
            .send()
            .await
            .expect("http request")
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let mut attempt = 0;
        let r = loop {
            let r = self.inner.log_in(username, password).await;
            // `unavailable` means "retry" (the edge gave up waiting on a busy worker).
            attempt += 1;
            let busy = matches!(
                &r,
                Err(client::Error::Api {
                    status: Some(503),
                    ..
                })
            );
            if !busy || attempt == 3 {
                break r;
            }
        };
        match r {
            Ok(s) => s.token,
            Err(e) => panic!("login failed: {e}"),
        }
    }
}

pub struct Client {
    inner: client::Socket,
    /// Which edge served the handshake (`x-switchboard-edge`).
    pub edge: String,
}

/// Open a WebSocket with the token in the subprotocol; the HTTP status when refused.
pub async fn connect(url: &str, token: Option<&str>, origin: Option<&str>) -> Result<Client, u16> {
    let options = client::ConnectOptions {
        token: token.map(str::to_string),
        origin: origin.map(str::to_string),
        connect_timeout: Some(WAIT),
        reply_timeout: WAIT,
        ..Default::default()
    };
    let connector = client::Connector::new(url, options).expect("ws url");
    match connector.connect().await {
        Ok(inner) => Ok(Client {
            edge: inner.edge().unwrap_or_default().to_string(),
            inner,
        }),
        Err(client::Error::Refused { status, .. }) => Err(status),
        Err(e) => panic!("ws connect failed: {e}"),
    }
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        connect(url, Some(token), None)
            .await
            .expect("handshake accepted")
    }

    /// The SDK socket underneath, for typed requests.
    pub fn sdk(&mut self) -> &mut client::Socket {
        &mut self.inner
    }

    pub async fn send_text(&mut self, text: String) {
        self.inner.send_text(text).await.expect("ws send");
    }

    /// Send a request (a `rid` is added) and wait for its reply or error, keeping events aside.
    pub async fn request(&mut self, frame: Value) -> ServerFrame {
        let what = frame.to_string();
        let rid = self.inner.send_json(frame).await.expect("ws send");
        self.wait_reply_to(&rid, &what).await
    }

    pub async fn wait_reply(&mut self, rid: &str) -> ServerFrame {
        self.wait_reply_to(rid, "").await
    }

    async fn wait_reply_to(&mut self, rid: &str, what: &str) -> ServerFrame {
        self.inner
            .reply_within(rid, WAIT)
            .await
            .unwrap_or_else(|e| panic!("no reply to {rid} {what}: {e}"))
    }

    /// The next event (already received or arriving within `within`).
    pub async fn event(&mut self, within: Duration) -> Option<Event> {
        match self.inner.next_event(within).await {
            Ok(e) => e,
            Err(client::Error::BadFrame { text, source }) => {
                panic!("bad server frame {text}: {source}")
            }
            Err(_) => None,
        }
    }

    /// Wait for an event matching `pred`, skipping others.
    pub async fn event_where(&mut self, pred: impl Fn(&Event) -> bool) -> Event {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self
                .event(left)
                .await
                .expect("expected event did not arrive");
            if pred(&e) {
                return e;
            }
        }
    }

    /// Wait until the server closes the socket; its close code.
    pub async fn closed(&mut self) -> Option<u16> {
        match self.inner.closed(WAIT).await {
            Ok(code) => code,
            Err(client::Error::Timeout) => panic!("socket was not closed"),
            Err(_) => None,
        }
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.inner.send_message(m).await.expect("ws send");
    }

    pub async fn close(self) {
        self.inner.close().await;
    }
}

/// The `data` of a reply; panics on an error frame.
pub fn ok(f: ServerFrame) -> topics::Response {
    match f {
        ServerFrame::Reply { data, .. } => data,
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// The code of an error frame; panics on a reply.
pub fn err(f: ServerFrame) -> topics::ErrorCode {
    match f {
        ServerFrame::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}
