//! Logs as structured lines on stderr — human-readable text, or JSON with `log.format = "json"`
//! — filtered by `RUST_LOG` (default `info`), and W3C trace context that travels in Kafka
//! headers so one request can be followed across processes.

use crate::settings::{LogFormat, LogSettings};
use rand::RngCore;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Install the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(service: &str, log: &LogSettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` also forwards the `log` crate's records (librdkafka's, through rdkafka)
    let _ = subscriber(log.format, filter, std::io::stderr).try_init();
    tracing::info!(service, "telemetry started");
}

/// The subscriber of `format`, writing to `writer`.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(fmt.finish()),
        // every line: timestamp, level, the event's fields at the top level, and `spans`: the
        // fields of each enclosing span, outermost first (a request's `trace_id`)
        LogFormat::Json => Box::new(
            fmt.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(true)
                .finish(),
        ),
    }
}

/// For tests: logs go through the test harness's capture (shown only for failing tests).
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// An error and every cause below it, for logs: `error = %Chain(&e)` writes
/// `outer: cause: root cause`. A cause whose text its parent already shows (errors that format
/// their source into their own message) is not repeated.
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut shown = self.0.to_string();
        let mut next = self.0.source();
        while let Some(cause) = next {
            let text = cause.to_string();
            if !shown.contains(&text) {
                shown.push_str(": ");
                shown.push_str(&text);
            }
            next = cause.source();
        }
        f.write_str(&shown)
    }
}

/// Kafka header that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// A fresh W3C `traceparent` (version 00, sampled).
pub fn new_traceparent() -> String {
    let mut rng = rand::rng();
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    rng.fill_bytes(&mut trace);
    rng.fill_bytes(&mut span);
    format!("00-{}-{}-01", hex::encode(trace), hex::encode(span))
}

/// The trace id of a valid `traceparent`, for log fields.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (parts.next().is_none()
        && hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace != "0".repeat(32))
    .then_some(trace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(format: LogFormat) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(format, EnvFilter::new("info"), move || out.clone());
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", kind = "dm.send", trace_id = "4bf92f35");
            let _in = span.enter();
            tracing::warn!(offset = 7, "request failed");
            tracing::debug!("filtered out");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text
    }

    #[test]
    fn json_lines_carry_the_fields_of_their_spans() {
        let text = logged(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "request failed");
        assert_eq!(v["offset"], 7);
        assert!(v["timestamp"].is_string());
        assert_eq!(v["spans"][0]["name"], "request");
        assert_eq!(v["spans"][0]["trace_id"], "4bf92f35");
        assert_eq!(v["spans"][0]["kind"], "dm.send");
    }

    #[test]
    fn text_stays_the_human_readable_default() {
        assert_eq!(LogSettings::default().format, LogFormat::Text);
        let text = logged(LogFormat::Text);
        assert!(text.contains("request failed"), "{text}");
        assert!(
            text.contains("trace_id") && text.contains("\"4bf92f35\""),
            "{text}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(text.trim()).is_err());
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        /// Shows its cause in its own message.
        #[error("database: {0}")]
        Shows(#[from] std::io::Error),
        /// Hides its cause: only the chain shows it.
        #[error("publish failed")]
        Hides(#[source] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("broker down")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn a_chain_shows_every_cause_once() {
        let io = || std::io::Error::other("connection refused");
        assert_eq!(
            Chain(&Outer::Hides(Inner(io()))).to_string(),
            "publish failed: broker down: connection refused"
        );
        assert_eq!(
            Chain(&Outer::Shows(io())).to_string(),
            "database: connection refused"
        );
        assert_eq!(Chain(&io()).to_string(), "connection refused");
    }

    #[test]
    fn traceparents_are_valid_and_unique() {
        let a = new_traceparent();
        let b = new_traceparent();
        assert_ne!(a, b);
        assert_eq!(trace_id(&a).unwrap().len(), 32);
        assert_eq!(trace_id("00-abc-def-01"), None);
        assert_eq!(
            trace_id(&format!("00-{}-{}-01", "0".repeat(32), "1".repeat(16))),
            None
        );
        assert_eq!(trace_id(&format!("{a}-extra")), None);
        init_for_tests();
        init("test", &LogSettings::default());
    }
}
