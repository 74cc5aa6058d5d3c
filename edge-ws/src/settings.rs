use runtime::KafkaSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub edge: EdgeSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettings {
    /// Stable id (`edge-0`): names this edge's topic.
    pub id: String,
    pub listen: String,
    /// Origins a browser may connect from; requests without an Origin header (SDKs) pass.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message or frame, and HTTP body, in bytes (≤ 64 KiB): a larger message
    /// closes the connection with 1009.
    #[serde(default = "d_max_frame")]
    pub max_frame_bytes: usize,
    /// Largest request frame forwarded; larger ones (up to `max_frame_bytes`) get a typed
    /// `payload_too_large` error frame and the connection stays.
    #[serde(default = "d_max_request")]
    pub max_request_bytes: usize,
    /// Sustained frames per second per connection, and the burst above it.
    #[serde(default = "d_rate")]
    pub frames_per_second: u32,
    #[serde(default = "d_burst")]
    pub frame_burst: u32,
    /// A connection that sends nothing (not even a pong) for this long is closed; pings go out at
    /// a third of it.
    #[serde(default = "d_idle")]
    pub idle_timeout_ms: u64,
    /// Frames queued for one connection; a client that lets it fill is disconnected.
    #[serde(default = "d_queue")]
    pub outbound_queue: usize,
    /// How long an HTTP call or handshake waits for its worker's answer.
    #[serde(default = "d_req_timeout")]
    pub request_timeout_ms: u64,
    #[serde(default = "d_heartbeat")]
    pub heartbeat_interval_ms: u64,
    /// Connections this process accepts before refusing with 503.
    #[serde(default = "d_max_conns")]
    pub max_connections: usize,
    /// Set the `Secure` attribute on the session cookie (behind TLS).
    #[serde(default)]
    pub secure_cookies: bool,
}

fn d_max_frame() -> usize {
    topics::validate::FRAME_MAX
}
fn d_max_request() -> usize {
    topics::validate::REQUEST_MAX
}
fn d_rate() -> u32 {
    50
}
fn d_burst() -> u32 {
    100
}
fn d_idle() -> u64 {
    60_000
}
fn d_queue() -> usize {
    256
}
fn d_req_timeout() -> u64 {
    5_000
}
fn d_heartbeat() -> u64 {
    2_000
}
fn d_max_conns() -> usize {
    19_000
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            id: "edge-0".into(),
            listen: "127.0.0.1:18100".into(),
            allowed_origins: Vec::new(),
            max_frame_bytes: d_max_frame(),
            max_request_bytes: d_max_request(),
            frames_per_second: d_rate(),
            frame_burst: d_burst(),
            idle_timeout_ms: d_idle(),
            outbound_queue: d_queue(),
            request_timeout_ms: d_req_timeout(),
            heartbeat_interval_ms: d_heartbeat(),
            max_connections: d_max_conns(),
            secure_cookies: false,
        }
    }
}
