//! A WebSocket client and an HTTP client speaking Switchboard's protocol, for tests.

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use topics::{Event, ServerFrame};

pub const WAIT: Duration = Duration::from_secs(20);

pub struct Http {
    base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Self {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::new(),
        }
    }

    /// A client whose connections come from `local` (another loopback address, 127.0.0.x): nginx
    /// sees it as `$remote_addr` and forwards it as the client's address.
    pub fn from_address(base: &str, local: std::net::IpAddr) -> Self {
        Http {
            base: base.trim_end_matches('/').to_string(),
            client: reqwest::Client::builder()
                .local_address(local)
                .build()
                .expect("http client"),
        }
    }

    async fn send(&self, rb: reqwest::RequestBuilder, token: Option<&str>) -> (u16, Value) {
        let rb = match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let resp = rb.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
        self.send(
            self.client.post(format!("{}{path}", self.base)).json(&body),
            token,
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>, token: Option<&str>) -> (u16, Value) {
        self.send(
            self.client
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body),
            token,
        )
        .await
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.client.get(format!("{}{path}", self.base)), token)
            .await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        self.send(self.client.delete(format!("{}{path}", self.base)), token)
            .await
    }

    /// Raw response, for headers.
    pub async fn raw(
        &self,
        rb: impl FnOnce(&reqwest::Client, String) -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        rb(&self.client, self.base.clone())
            .send()
            .await
            .expect("http request")
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let mut attempt = 0;
        let (s, b) = loop {
            let (s, b) = self
                .post(
                    "/api/v1/sessions",
                    json!({"username": username, "password": password}),
                    None,
                )
                .await;
            // `unavailable` means "retry" (the edge gave up waiting on a busy worker).
            attempt += 1;
            if s != 503 || attempt == 3 {
                break (s, b);
            }
        };
        assert_eq!(s, 200, "login failed: {b}");
        b["token"].as_str().expect("token").to_string()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub struct Client {
    ws: Ws,
    /// Which edge served the handshake (`x-switchboard-edge`).
    pub edge: String,
    pending: VecDeque<ServerFrame>,
    next_rid: u64,
}

/// Open a WebSocket with the token in the subprotocol; the HTTP status when refused.
pub async fn connect(url: &str, token: Option<&str>, origin: Option<&str>) -> Result<Client, u16> {
    let mut req = url.into_client_request().expect("ws url");
    let protos = match token {
        Some(t) => format!("switchboard.v1, auth.{t}"),
        None => "switchboard.v1".to_string(),
    };
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&protos).unwrap(),
    );
    if let Some(o) = origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            let edge = resp
                .headers()
                .get("x-switchboard-edge")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            Ok(Client {
                ws,
                edge,
                pending: VecDeque::new(),
                next_rid: 0,
            })
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("ws connect failed: {e}"),
    }
}

impl Client {
    pub async fn connect(url: &str, token: &str) -> Client {
        connect(url, Some(token), None)
            .await
            .expect("handshake accepted")
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("ws send");
    }

    async fn read(&mut self, within: Duration) -> Option<ServerFrame> {
        // One deadline for the whole wait: pings arriving in between must not restart it.
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    return Some(
                        serde_json::from_str(&t)
                            .unwrap_or_else(|e| panic!("bad server frame {t}: {e}")),
                    )
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                    return None
                }
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    /// Send a request (a `rid` is added) and wait for its reply or error, keeping events aside.
    pub async fn request(&mut self, mut frame: Value) -> ServerFrame {
        self.next_rid += 1;
        let rid = format!("r{}", self.next_rid);
        frame["rid"] = json!(rid);
        self.send_text(frame.to_string()).await;
        self.wait_reply_to(&rid, &frame.to_string()).await
    }

    pub async fn wait_reply(&mut self, rid: &str) -> ServerFrame {
        self.wait_reply_to(rid, "").await
    }

    async fn wait_reply_to(&mut self, rid: &str, what: &str) -> ServerFrame {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .read(left)
                .await
                .unwrap_or_else(|| panic!("no reply to {rid} {what}"));
            match &f {
                ServerFrame::Reply { rid: Some(r), .. }
                | ServerFrame::Error { rid: Some(r), .. }
                    if r == rid =>
                {
                    return f
                }
                ServerFrame::Event { .. } => self.pending.push_back(f),
                _ => {}
            }
        }
    }

    /// The next event (already received or arriving within `within`).
    pub async fn event(&mut self, within: Duration) -> Option<Event> {
        if let Some(ServerFrame::Event { data }) = self.pending.pop_front() {
            return Some(data);
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.read(left).await? {
                ServerFrame::Event { data } => return Some(data),
                _ => continue,
            }
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
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(c)))) => return c.map(|c| u16::from(c.code)),
                Ok(Some(Ok(_))) => continue,
                Ok(None) | Ok(Some(Err(_))) => return None,
                Err(_) => panic!("socket was not closed"),
            }
        }
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("ws send");
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
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
