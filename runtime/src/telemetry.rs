//! Logs as structured lines on stderr — human-readable text, or JSON with `log.format = "json"`
//! — filtered by `RUST_LOG` (default `info`), and W3C trace context that travels in Kafka
//! headers so one request can be followed across processes.

use crate::settings::{LogFormat, LogSettings, TraceSettings};
use opentelemetry::trace::TracerProvider;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// What [`init`] started that must be finished on exit: the span exporter, if any.
#[must_use = "call shutdown() on exit so the last spans are exported"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// How long the exit waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Telemetry {
    /// Export what is queued and stop the exporter (at most [`FLUSH_TIMEOUT`]); on a blocking
    /// thread, as the export thread is waited for.
    pub async fn shutdown(self) {
        if let Some(p) = self.provider {
            let done =
                tokio::task::spawn_blocking(move || p.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "spans not flushed");
            }
        }
    }
}

/// Install the global subscriber, with span export when `trace.otlp_endpoint` is set. Safe to
/// call more than once (later calls install nothing). An invalid `[trace]` is an error.
pub fn init(service: &str, log: &LogSettings, trace: &TraceSettings) -> Result<Telemetry, String> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = crate::trace::provider(trace, service)?;
    let tracer = provider.as_ref().map(|p| p.tracer(service.to_string()));
    // `try_init` also forwards the `log` crate's records (librdkafka's, through rdkafka)
    let installed = subscriber(log.format, filter, std::io::stderr, tracer)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        remember_dispatch();
        crate::trace::enable(trace.sample_ratio);
    }
    tracing::info!(service, tracing = provider.is_some(), "telemetry started");
    Ok(Telemetry {
        provider: provider.filter(|_| installed),
    })
}

/// [`init`] for a binary: an invalid `[trace]` section prints the error and exits with
/// [`crate::settings::EXIT_CONFIG`].
pub fn init_or_exit(service: &str, log: &LogSettings, trace: &TraceSettings) -> Telemetry {
    init(service, log, trace).unwrap_or_else(|e| {
        eprintln!("configuration error: {e}");
        std::process::exit(crate::settings::EXIT_CONFIG);
    })
}

/// The subscriber of `format`, writing to `writer`, exporting spans through `tracer` if given.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    tracer: Option<SdkTracer>,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // a registry of layers (not `fmt()`'s own subscriber): the export layer has a filter of its own
    let logs = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    match format {
        LogFormat::Text => Box::new(logs.with(fmt).with(otel(tracer))),
        // every line: timestamp, level, the event's fields at the top level, `spans`: the
        // fields of each enclosing span, outermost first, and with tracing on `trace_id` and
        // `span_id` of the current span
        LogFormat::Json => Box::new(
            logs.with(
                fmt.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(WithTraceIds {
                        inner: tracing_subscriber::fmt::format()
                            .json()
                            .flatten_event(true)
                            .with_current_span(false)
                            .with_span_list(true)
                            .with_target(false),
                    }),
            )
            .with(otel(tracer)),
        ),
    }
}

/// The layer exporting spans through `tracer`, if given. It never sees the spans of untraced
/// requests ([`crate::trace::UNTRACED`]): those are for the log lines only.
fn otel<S>(tracer: Option<SdkTracer>) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracer.map(|t| {
        tracing_opentelemetry::layer().with_tracer(t).with_filter(
            tracing_subscriber::filter::filter_fn(|m| m.target() != crate::trace::UNTRACED),
        )
    })
}

/// A JSON line format that adds `trace_id` and `span_id` (of the current span, when tracing is
/// on and the line is written inside a span of a trace) to each line of the inner format.
pub struct WithTraceIds<F> {
    inner: F,
}

/// The installed subscriber's dispatch: a line's format reads the span's OpenTelemetry context
/// through it (the current dispatch is not reachable while an event is being dispatched).
static DISPATCH: std::sync::RwLock<Option<tracing::dispatcher::WeakDispatch>> =
    std::sync::RwLock::new(None);

/// Remember the current dispatch for the JSON lines' ids ([`init`] does it for the global one).
pub fn remember_dispatch() {
    let weak = tracing::dispatcher::get_default(|d| d.downgrade());
    *DISPATCH.write().expect("not poisoned") = Some(weak);
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceIds<F>
where
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = (crate::trace::enabled())
            .then(|| {
                let dispatch = DISPATCH.read().ok()?.as_ref()?.upgrade()?;
                let span = ctx.lookup_current()?;
                crate::trace::ids_of(&span.id(), &dispatch)
            })
            .flatten();
        let Some((trace, span)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match line.trim_end().strip_suffix('}') {
            Some(head) => {
                writer.write_str(head)?;
                writeln!(writer, ",\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}")
            }
            None => writer.write_str(&line),
        }
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

/// Log lines kept in memory, for tests that read back what was logged. Clones share one buffer;
/// as a writer (`move || capture.clone()` is a [`MakeWriter`]) it appends.
#[derive(Clone, Default)]
pub struct LogCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log capture").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogCapture {
    /// JSON lines at `level` and above are this thread's log while the guard lives.
    pub fn install(&self, level: &str) -> tracing::subscriber::DefaultGuard {
        let out = self.clone();
        tracing::subscriber::set_default(subscriber(
            LogFormat::Json,
            EnvFilter::new(level),
            move || out.clone(),
            None,
        ))
    }

    /// Everything written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log capture")).into_owned()
    }

    /// The JSON lines written so far whose message is `message`.
    pub fn with_message(&self, message: &str) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["message"] == message)
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn logged(format: LogFormat) -> String {
        let buf = LogCapture::default();
        let out = buf.clone();
        let sub = subscriber(format, EnvFilter::new("info"), move || out.clone(), None);
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("request", kind = "dm.send", trace_id = "4bf92f35");
            let _in = span.enter();
            tracing::warn!(offset = 7, "request failed");
            tracing::debug!("filtered out");
        });
        buf.text()
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

    #[tokio::test]
    async fn spans_that_could_not_be_flushed_on_exit_are_logged() {
        let buf = LogCapture::default();
        let out = buf.clone();
        let sub = subscriber(
            LogFormat::Text,
            EnvFilter::new("warn"),
            move || out.clone(),
            None,
        );
        let _default = tracing::subscriber::set_default(sub);
        let text = || buf.text();
        let provider = SdkTracerProvider::builder().build();
        Telemetry {
            provider: Some(provider.clone()),
        }
        .shutdown()
        .await;
        assert_eq!(text(), "", "a clean shutdown logs nothing");
        // the provider is shut down already: its shutdown fails, and the exit says so
        Telemetry {
            provider: Some(provider),
        }
        .shutdown()
        .await;
        let text = text();
        assert!(
            text.contains("WARN") && text.contains("spans not flushed"),
            "{text}"
        );
        assert!(text.contains("already"), "the error is shown: {text}");
    }

    /// A binary given a bad `[trace]` section exits with the configuration code and says why.
    /// `exit` ends the process: the test runs itself again in a child process that calls it.
    #[test]
    fn init_or_exit_exits_with_the_configuration_code() {
        const CHILD: &str = "SB_TEST_INIT_OR_EXIT_CHILD";
        if std::env::var_os(CHILD).is_some() {
            let bad = TraceSettings {
                otlp_endpoint: Some("http://127.0.0.1:1/v1/traces".into()),
                sample_ratio: 2.0,
                ..Default::default()
            };
            // returning ends this child with 0, which the parent refuses below
            let _ = init_or_exit("test", &LogSettings::default(), &bad);
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "telemetry::tests::init_or_exit_exits_with_the_configuration_code",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(crate::settings::EXIT_CONFIG),
            "{stderr}"
        );
        assert!(
            stderr.contains("configuration error: trace.sample_ratio must be between 0 and 1"),
            "{stderr}"
        );
    }

    #[test]
    fn init_refuses_a_bad_trace_section_and_installs_once() {
        let bad = TraceSettings {
            otlp_endpoint: Some("http://127.0.0.1:1/v1/traces".into()),
            sample_ratio: 2.0,
            ..Default::default()
        };
        assert!(init("test", &LogSettings::default(), &bad)
            .err()
            .unwrap()
            .contains("sample_ratio"));
        init_for_tests();
        let t = init("test", &LogSettings::default(), &TraceSettings::default()).unwrap();
        assert!(t.provider.is_none());
    }
}
