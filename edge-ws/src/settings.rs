use runtime::KafkaSettings;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub edge: EdgeSettings,
    #[serde(default)]
    pub log: runtime::LogSettings,
    #[serde(default)]
    pub trace: runtime::TraceSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeSettings {
    /// Stable id (`edge-0`): names this edge's topic.
    pub id: String,
    pub listen: String,
    /// Operator listener: `/metrics` and `/healthz`, never the public API. Keep it off the
    /// addresses clients and the public nginx reach.
    #[serde(default = "d_internal")]
    pub internal_listen: String,
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
    /// How often the edge tells presence which of its connections are open, so that registry
    /// entries whose `disconnected` was lost are taken out ([`EdgeSettings::sweep_period`]).
    #[serde(default = "d_registry_sweep")]
    pub registry_sweep_ms: u64,
    /// Connections this process accepts before refusing with 503.
    #[serde(default = "d_max_conns")]
    pub max_connections: usize,
    /// WebSocket connections one user may hold on this edge (handshakes under way included);
    /// one more is refused with 429 `rate_limited` before the upgrade.
    #[serde(default = "d_conns_per_user")]
    pub max_connections_per_user: usize,
    /// WebSocket connections one source address (the first `X-Forwarded-For` hop) may hold on
    /// this edge; one more is refused with 429 `rate_limited` before the upgrade.
    #[serde(default = "d_conns_per_address")]
    pub max_connections_per_address: usize,
    /// API calls a second per source address, sustained, and the burst above it; past them
    /// 429 `rate_limited` with `Retry-After`.
    #[serde(default = "d_api_rate_address")]
    pub api_requests_per_second_per_address: u32,
    #[serde(default = "d_api_burst_address")]
    pub api_burst_per_address: u32,
    /// API calls a second per session token, sustained, and the burst above it.
    #[serde(default = "d_api_rate_session")]
    pub api_requests_per_second_per_session: u32,
    #[serde(default = "d_api_burst_session")]
    pub api_burst_per_session: u32,
    /// Most clients (addresses, and separately sessions) whose API rate is remembered; the least
    /// recently seen are forgotten first.
    #[serde(default = "d_api_rate_keys")]
    pub api_rate_keys_max: usize,
    /// A new connection must send its first request head within this; on a kept-alive
    /// connection, a request head must be complete this long after its first byte. Slower
    /// connections are closed.
    #[serde(default = "d_header_read")]
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request in progress is closed after this long idle.
    #[serde(default = "d_keep_alive")]
    pub keep_alive_timeout_ms: u64,
    /// Connections that have not yet been answered their first request (head, body and, for a
    /// WebSocket, the session check) at once; one more is answered 503 and closed.
    #[serde(default = "d_max_handshakes")]
    pub max_handshakes: usize,
    /// Set the `Secure` attribute on the session cookie (behind TLS).
    #[serde(default)]
    pub secure_cookies: bool,
}

fn d_internal() -> String {
    "127.0.0.1:18150".into()
}
fn d_header_read() -> u64 {
    10_000
}
fn d_keep_alive() -> u64 {
    75_000
}
fn d_max_handshakes() -> usize {
    1024
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
fn d_registry_sweep() -> u64 {
    60_000
}
fn d_max_conns() -> usize {
    19_000
}
fn d_conns_per_user() -> usize {
    16
}
fn d_conns_per_address() -> usize {
    256
}
fn d_api_rate_address() -> u32 {
    100
}
fn d_api_burst_address() -> u32 {
    300
}
fn d_api_rate_session() -> u32 {
    20
}
fn d_api_burst_session() -> u32 {
    60
}
fn d_api_rate_keys() -> usize {
    50_000
}

impl Default for EdgeSettings {
    fn default() -> Self {
        EdgeSettings {
            id: "edge-0".into(),
            listen: "127.0.0.1:18100".into(),
            internal_listen: d_internal(),
            allowed_origins: Vec::new(),
            max_frame_bytes: d_max_frame(),
            max_request_bytes: d_max_request(),
            frames_per_second: d_rate(),
            frame_burst: d_burst(),
            idle_timeout_ms: d_idle(),
            outbound_queue: d_queue(),
            request_timeout_ms: d_req_timeout(),
            heartbeat_interval_ms: d_heartbeat(),
            registry_sweep_ms: d_registry_sweep(),
            max_connections: d_max_conns(),
            max_connections_per_user: d_conns_per_user(),
            max_connections_per_address: d_conns_per_address(),
            api_requests_per_second_per_address: d_api_rate_address(),
            api_burst_per_address: d_api_burst_address(),
            api_requests_per_second_per_session: d_api_rate_session(),
            api_burst_per_session: d_api_burst_session(),
            api_rate_keys_max: d_api_rate_keys(),
            header_read_timeout_ms: d_header_read(),
            keep_alive_timeout_ms: d_keep_alive(),
            max_handshakes: d_max_handshakes(),
            secure_cookies: false,
        }
    }
}

impl EdgeSettings {
    /// How often the registry sweep runs: `registry_sweep_ms`, but never within twice
    /// `request_timeout_ms`, the longest a handshake waits for its check; the sweep relies on
    /// every handshake begun before its previous tick having ended.
    pub fn sweep_period(&self) -> std::time::Duration {
        std::time::Duration::from_millis(
            self.registry_sweep_ms
                .max(self.request_timeout_ms.saturating_mul(2))
                .max(1),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_never_runs_within_twice_the_handshake_timeout() {
        let mut s = EdgeSettings::default();
        assert_eq!(s.sweep_period().as_millis(), 60_000);
        s.registry_sweep_ms = 1_000;
        assert_eq!(s.sweep_period().as_millis(), 10_000);
    }
}
