//! Spans, exported over OTLP/HTTP (protobuf) when `[trace] otlp_endpoint` is set, and the W3C
//! trace context that links them across processes through Kafka headers
//! ([`TraceContextPropagator`]).
//!
//! Off (no endpoint, the default) nothing is installed: no OpenTelemetry layer, no propagator
//! work, no header written or read ([`enabled`] is false and every helper here returns at once).
//!
//! On, whether a request is traced is decided once, where it enters the platform (the edge:
//! [`sample_root`], `trace.sample_ratio` of the requests), and travels with it: only a traced
//! request's records carry a trace context ([`Carrier::sampled`]), and every later hop builds
//! spans only for those. An untraced request costs no span, no context and no header anywhere;
//! the spans that also give log lines their context are then made with the [`UNTRACED`] target,
//! which the OpenTelemetry layer never sees ([`hop_span!`](crate::hop_span)).
//!
//! On, spans go through [`BoundedBatch`]: `on_end` only tries to put the finished span on a
//! bounded queue (never waits; a full queue drops the span and counts it in
//! `sb_trace_spans_dropped_total{reason="queue_full"}`); one thread of the exporter's own takes
//! batches off the queue and posts them to the collector (a batch the collector refused or did
//! not answer in time counts under `reason="export_failed"`). The hot path thus never waits for
//! the collector, whatever it does.

use crate::metrics::{Counter, Family, Labels};
use crate::settings::TraceSettings;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use tracing_opentelemetry::OpenTelemetrySpanExt;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// `trace.sample_ratio` of this process, as `f64` bits (1.0 until [`enable`] sets it).
static RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000);

/// Is span export on in this process (an endpoint was set and the exporter started)?
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Should a request entering the platform here be traced? With tracing on, `sample_ratio` of the
/// calls answer yes, at random. Only a request that is starts spans: its root span and, through
/// the context its records carry, every hop's.
pub fn sample_root() -> bool {
    enabled() && decide(f64::from_bits(RATIO.load(Ordering::Relaxed)))
}

/// Yes with probability `ratio` (0: never, 1: always).
fn decide(ratio: f64) -> bool {
    ratio >= 1.0 || (ratio > 0.0 && rand::random::<f64>() < ratio)
}

/// The target of the spans that exist for the log lines only (a request that is not traced):
/// the OpenTelemetry layer is filtered to never see them, so they cost no more than with tracing
/// off, and no span made inside one is traced ([`traced_current`]).
pub const UNTRACED: &str = "sb::untraced";

/// A span named and with the fields given, part of the trace when `$traced` (an `info` span),
/// otherwise with the [`UNTRACED`] target: kept for the log lines written inside it.
#[macro_export]
macro_rules! hop_span {
    ($traced:expr, $($span:tt)+) => {
        if $traced {
            ::tracing::info_span!($($span)+)
        } else {
            ::tracing::info_span!(target: $crate::trace::UNTRACED, $($span)+)
        }
    };
}

/// Is the current span part of a trace (tracing on, inside a span that is not [`UNTRACED`])? A
/// publish made inside one carries its context.
pub fn traced_current() -> bool {
    enabled()
        && tracing::Span::current()
            .metadata()
            .is_some_and(|m| m.target() != UNTRACED)
}

/// Why spans were lost: the values of `sb_trace_spans_dropped_total`'s `reason` label.
pub const DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];

/// The process's count of spans lost, by reason (one set per process: the exporter starts before
/// the metrics registry, which registers these).
pub struct Drops {
    /// `sb_trace_spans_dropped_total`, every reason's series created up front.
    pub family: Family<Labels, Counter>,
    pub counters: DropCounters,
}

/// The counters a [`BoundedBatch`] adds its lost spans to.
#[derive(Clone, Debug, Default)]
pub struct DropCounters {
    pub queue_full: Counter,
    pub export_failed: Counter,
}

static DROPS: LazyLock<Drops> = LazyLock::new(|| {
    let family = Family::<Labels, Counter>::default();
    let at = |reason: &str| {
        family
            .get_or_create(&vec![("reason", reason.to_string())])
            .clone()
    };
    Drops {
        counters: DropCounters {
            queue_full: at(DROP_REASONS[0]),
            export_failed: at(DROP_REASONS[1]),
        },
        family: family.clone(),
    }
});

/// This process's dropped-span counters.
pub fn drops() -> &'static Drops {
    &DROPS
}

static PROPAGATOR: LazyLock<TraceContextPropagator> = LazyLock::new(TraceContextPropagator::new);

/// The headers a record carries for the trace context (`traceparent`, `tracestate`), as read
/// from Kafka: empty (no allocation) when tracing is off or the record has none.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Carrier(pub Vec<(String, String)>);

impl Carrier {
    /// The trace context of the current span, as the propagator writes it (empty when off or
    /// outside a trace).
    pub fn current() -> Carrier {
        let mut c = Carrier::default();
        if traced_current() {
            PROPAGATOR.inject_context(&tracing::Span::current().context(), &mut c);
        }
        c
    }

    /// The trace context of `span`, as the propagator writes it (empty when off).
    pub fn of(span: &tracing::Span) -> Carrier {
        let mut c = Carrier::default();
        if enabled() {
            PROPAGATOR.inject_context(&span.context(), &mut c);
        }
        c
    }

    /// The context these headers carry, to parent a span with.
    pub fn context(&self) -> Context {
        PROPAGATOR.extract(self)
    }

    /// The `traceparent` value, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.get("traceparent")
    }

    /// Is this the context of a traced request (tracing on, a `traceparent` whose flags say
    /// sampled)? Only then does a hop build spans for it. (Edges write a context for traced
    /// requests only; an unsampled one written by an earlier release is treated alike.)
    pub fn sampled(&self) -> bool {
        enabled()
            && self
                .traceparent()
                .and_then(|tp| tp.rsplit('-').next())
                .and_then(|flags| u8::from_str_radix(flags, 16).ok())
                .is_some_and(|flags| flags & 1 == 1)
    }

    /// A carrier holding one `traceparent` (the per-item field of an edge record).
    pub fn from_traceparent(tp: Option<&str>) -> Carrier {
        Carrier(
            tp.map(|v| vec![("traceparent".to_string(), v.to_string())])
                .unwrap_or_default(),
        )
    }

    /// Is `name` one of the headers the propagator reads?
    pub fn wants(name: &str) -> bool {
        PROPAGATOR.fields().any(|f| f == name)
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_string(), value));
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// The span `make` builds when `traced` (a traced request's: see [`Carrier::sampled`]) and tracing
/// is on, else a disabled one (nothing built, nothing allocated): for spans that exist only for
/// the trace.
pub fn span_if(traced: bool, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if traced && enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

/// Make `span`'s parent the context `carrier` holds (a span of another process). Nothing when
/// tracing is off or the carrier is not a traced request's. Call before the span is first
/// entered.
pub fn set_parent(span: &tracing::Span, carrier: &Carrier) {
    if carrier.sampled() {
        let _ = span.set_parent(carrier.context());
    }
}

/// Link `span` to the span `carrier` holds (a batch span to each record's trace), if it is a
/// traced request's.
pub fn add_link(span: &tracing::Span, carrier: &Carrier) {
    if carrier.sampled() {
        let cx = carrier.context();
        span.add_link(cx.span().span_context().clone());
    }
}

/// The trace id of `span` in hex, when tracing is on and the span is part of a valid trace (for
/// a log field).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// `(trace_id, span_id)` in hex of the span `id` of `dispatch`, if it is part of a valid trace.
pub fn ids_of(id: &tracing::span::Id, dispatch: &tracing::Dispatch) -> Option<(String, String)> {
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// `(trace_id, span_id)` of the current span in hex, when tracing is on and the span is valid.
pub fn current_ids() -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = tracing::Span::current().context();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Spans a process keeps before dropping new ones while the collector is slow or down.
pub const DEFAULT_QUEUE_SPANS: usize = 2048;
/// Spans per export request.
pub const MAX_BATCH_SPANS: usize = 512;
/// How long a span may wait on the queue before its batch is sent, if the batch is not full.
pub const EXPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one export may take (retries included) before its spans count as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

enum Msg {
    Span(Box<SpanData>),
    /// Export what is queued, then answer.
    Flush(SyncSender<OTelSdkResult>),
    /// Export what is queued, shut the exporter down, answer and stop.
    Stop(SyncSender<OTelSdkResult>),
    /// The process's resource (its `service.name`), for the exporter.
    Resource(Resource),
}

/// A span processor with a bounded queue that never blocks the thread ending a span, and one
/// thread that exports in batches (see the module docs).
#[derive(Debug)]
pub struct BoundedBatch {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    stopped: AtomicBool,
    drops: DropCounters,
}

impl BoundedBatch {
    /// Start the export thread; `queue` spans at most wait for it; lost spans count in `drops`.
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        queue: usize,
        drops: DropCounters,
    ) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(queue.max(1));
        let failed = drops.export_failed.clone();
        let thread = std::thread::Builder::new()
            .name("span-export".into())
            .spawn(move || export_loop(exporter, rx, failed))?;
        Ok(BoundedBatch {
            tx,
            thread: Mutex::new(Some(thread)),
            stopped: AtomicBool::new(false),
            drops,
        })
    }

    fn ask(&self, make: fn(SyncSender<OTelSdkResult>) -> Msg, timeout: Duration) -> OTelSdkResult {
        let (ack, done) = mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut msg = make(ack);
        // the queue may be full of spans: wait for room, up to the deadline
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => return Err(OTelSdkError::Timeout(timeout)),
                Err(TrySendError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        done.recv_timeout(left)
            .map_err(|_| OTelSdkError::Timeout(timeout))?
    }
}

fn export_loop<E: SpanExporter>(mut exporter: E, rx: mpsc::Receiver<Msg>, failed: Counter) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("span export thread: no runtime: {e}");
            return;
        }
    };
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH_SPANS);
    let export = |exporter: &E, batch: &mut Vec<SpanData>| -> OTelSdkResult {
        if batch.is_empty() {
            return Ok(());
        }
        let n = batch.len() as u64;
        let spans = std::mem::replace(batch, Vec::with_capacity(MAX_BATCH_SPANS));
        let r = rt.block_on(exporter.export(spans));
        if r.is_err() {
            failed.inc_by(n);
        }
        r
    };
    let mut due = Instant::now() + EXPORT_INTERVAL;
    loop {
        match rx.recv_timeout(due.saturating_duration_since(Instant::now())) {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                if batch.len() >= MAX_BATCH_SPANS {
                    let _ = export(&exporter, &mut batch);
                    due = Instant::now() + EXPORT_INTERVAL;
                }
            }
            Ok(Msg::Flush(ack)) => {
                let _ = ack.send(export(&exporter, &mut batch));
            }
            Ok(Msg::Resource(r)) => {
                let _ = export(&exporter, &mut batch);
                exporter.set_resource(&r);
            }
            Ok(Msg::Stop(ack)) => {
                let r = export(&exporter, &mut batch);
                let _ = exporter.shutdown();
                let _ = ack.send(r);
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = export(&exporter, &mut batch);
                due = Instant::now() + EXPORT_INTERVAL;
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = export(&exporter, &mut batch);
                return;
            }
        }
    }
}

impl SpanProcessor for BoundedBatch {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() || self.stopped.load(Ordering::Relaxed) {
            return;
        }
        match self.tx.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(_) => {
                self.drops.queue_full.inc();
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Msg::Flush, EXPORT_TIMEOUT)
    }

    fn set_resource(&mut self, resource: &Resource) {
        // the provider sets it once, as it is built: the queue is empty then
        if self.tx.try_send(Msg::Resource(resource.clone())).is_err() {
            self.drops.export_failed.inc();
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let r = self.ask(Msg::Stop, timeout);
        if r.is_ok() {
            if let Some(t) = self.thread.lock().expect("not poisoned").take() {
                let _ = t.join();
            }
        }
        r
    }
}

/// The OTLP/HTTP exporter posting to `endpoint` (the full URL, `…/v1/traces`).
pub fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, String> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("trace exporter: {e}"))
}

/// The tracer provider of `settings` for `service`: `None` when no endpoint is set.
pub fn provider(
    settings: &TraceSettings,
    service: &str,
) -> Result<Option<SdkTracerProvider>, String> {
    let Some(endpoint) = settings.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(None);
    };
    if !(0.0..=1.0).contains(&settings.sample_ratio) {
        return Err(format!(
            "trace.sample_ratio must be between 0 and 1, not {}",
            settings.sample_ratio
        ));
    }
    let processor = BoundedBatch::new(
        otlp_exporter(endpoint)?,
        settings.queue_spans,
        DROPS.counters.clone(),
    )
    .map_err(|e| format!("trace exporter thread: {e}"))?;
    Ok(Some(with_processor(processor, service)))
}

/// A provider exporting through `processor`. Every span it is shown is sampled as its parent is,
/// and a root always: whether a request is traced was decided before its root span was made
/// ([`sample_root`]), and the span made only if it is.
pub fn with_processor<P: SpanProcessor + 'static>(
    processor: P,
    service: &str,
) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_resource(
            Resource::builder_empty()
                .with_service_name(service.to_string())
                .build(),
        )
        .build()
}

/// Turn the helpers of this module on (the process installed an exporting layer), tracing
/// `ratio` of the requests that enter the platform here.
pub(crate) fn enable(ratio: f64) {
    RATIO.store(ratio.to_bits(), Ordering::Relaxed);
    ENABLED.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Tracer, TracerProvider};
    use std::sync::Arc;
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// An exporter keeping what it is given, and the service name of its resource.
    #[derive(Clone, Debug, Default)]
    struct Kept(Arc<Mutex<Vec<SpanData>>>, Arc<Mutex<Option<String>>>);

    impl SpanExporter for Kept {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
        fn set_resource(&mut self, r: &Resource) {
            *self.1.lock().unwrap() = r
                .get(&opentelemetry::Key::new("service.name"))
                .map(|v| v.to_string());
        }
    }

    fn end_spans(provider: &SdkTracerProvider, n: usize) {
        let tracer = provider.tracer("test");
        for i in 0..n {
            drop(tracer.start(format!("span-{i}")));
        }
    }

    /// A provider exporting into a [`Kept`], and a text subscriber (discarding its lines) whose
    /// spans it exports; tracing turned on.
    fn exporting() -> (
        Kept,
        SdkTracerProvider,
        Box<dyn tracing::Subscriber + Send + Sync>,
    ) {
        let kept = Kept::default();
        let provider = with_processor(
            BoundedBatch::new(kept.clone(), 64, DropCounters::default()).unwrap(),
            "test",
        );
        let sub = crate::telemetry::subscriber(
            crate::LogFormat::Text,
            tracing_subscriber::EnvFilter::new("info"),
            std::io::sink,
            Some(provider.tracer("test")),
        );
        enable(1.0);
        (kept, provider, sub)
    }

    #[test]
    fn a_hop_gets_a_new_span_whose_parent_is_the_previous_hop() {
        let (kept, provider, sub) = exporting();
        let carried = tracing::subscriber::with_default(sub, || {
            // one process: the publish span writes its context into the record's headers
            let publish = tracing::info_span!("kafka.publish");
            let carrier = Carrier::of(&publish);
            assert!(carrier.traceparent().is_some(), "{carrier:?}");
            // another: the handler's span takes its parent from those headers
            let handler = tracing::info_span!(parent: None, "request");
            set_parent(&handler, &carrier);
            let ids = trace_id_of(&handler);
            let current = handler.in_scope(current_ids);
            drop(handler);
            drop(publish);
            (carrier, ids, current)
        });
        provider.force_flush().unwrap();
        assert_eq!(
            kept.1.lock().unwrap().as_deref(),
            Some("test"),
            "the service name is exported"
        );
        let spans = kept.0.lock().unwrap().clone();
        let by_name = |n: &str| spans.iter().find(|s| s.name == n).unwrap().clone();
        let (publish, handler) = (by_name("kafka.publish"), by_name("request"));
        assert_eq!(
            handler.span_context.trace_id(),
            publish.span_context.trace_id()
        );
        assert_eq!(handler.parent_span_id, publish.span_context.span_id());
        assert_ne!(
            handler.span_context.span_id(),
            publish.span_context.span_id()
        );
        let (carrier, ids, current) = carried;
        let trace = publish.span_context.trace_id().to_string();
        assert_eq!(
            carrier.traceparent().unwrap(),
            format!("00-{trace}-{}-01", publish.span_context.span_id())
        );
        assert_eq!(ids.as_deref(), Some(trace.as_str()));
        assert_eq!(
            current,
            Some((trace, handler.span_context.span_id().to_string()))
        );
        // an item's own traceparent parents like a header does
        let one = Carrier::from_traceparent(carrier.traceparent());
        assert_eq!(
            one.context().span().span_context().span_id(),
            publish.span_context.span_id()
        );
        assert!(Carrier::wants("traceparent") && Carrier::wants("tracestate"));
        assert!(!Carrier::wants("key"));
        provider.shutdown().unwrap();
    }

    use crate::telemetry::LogCapture;

    #[test]
    fn json_lines_inside_a_span_carry_its_trace_and_span_ids() {
        let kept = Kept::default();
        let provider = with_processor(
            BoundedBatch::new(kept.clone(), 64, DropCounters::default()).unwrap(),
            "test",
        );
        let buf = LogCapture::default();
        let out = buf.clone();
        let sub = crate::telemetry::subscriber(
            crate::LogFormat::Json,
            tracing_subscriber::EnvFilter::new("info"),
            move || out.clone(),
            Some(provider.tracer("test")),
        );
        enable(1.0);
        let ids = tracing::subscriber::with_default(sub, || {
            crate::telemetry::remember_dispatch();
            tracing::info!("outside any span");
            let span = tracing::info_span!("request", kind = "dm.send");
            let _in = span.enter();
            tracing::warn!(offset = 7, "inside");
            current_ids().unwrap()
        });
        let text = buf.text();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].get("trace_id").is_none(), "{text}");
        assert_eq!(lines[1]["message"], "inside");
        assert_eq!(lines[1]["offset"], 7);
        assert_eq!(lines[1]["spans"][0]["kind"], "dm.send");
        assert_eq!(lines[1]["trace_id"], ids.0.as_str());
        assert_eq!(lines[1]["span_id"], ids.1.as_str());
        assert_eq!(ids.0.len(), 32);
        assert_eq!(ids.1.len(), 16);
        provider.shutdown().unwrap();
    }

    /// An exporter whose exports never finish: the thread takes one batch and stays there. Each
    /// export it starts is told on its channel.
    #[derive(Debug)]
    struct Stuck(Mutex<mpsc::Sender<()>>);

    impl Stuck {
        fn new() -> (Stuck, mpsc::Receiver<()>) {
            let (tx, rx) = mpsc::channel();
            (Stuck(Mutex::new(tx)), rx)
        }
    }

    impl SpanExporter for Stuck {
        fn export(
            &self,
            _batch: Vec<SpanData>,
        ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
            let _ = self.0.lock().unwrap().send(());
            futures::future::pending()
        }
    }

    /// A finished, sampled span, as an exporter is given it.
    fn a_span() -> SpanData {
        let kept = Kept::default();
        let provider = with_processor(
            BoundedBatch::new(kept.clone(), 4, DropCounters::default()).unwrap(),
            "test",
        );
        end_spans(&provider, 1);
        provider.shutdown().unwrap();
        let span = kept.0.lock().unwrap().pop().unwrap();
        assert!(span.span_context.is_sampled());
        span
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let drops = DropCounters::default();
        let provider = with_processor(
            BoundedBatch::new(Stuck::new().0, 4, drops.clone()).unwrap(),
            "test",
        );
        let t0 = Instant::now();
        end_spans(&provider, MAX_BATCH_SPANS + 100);
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(drops.queue_full.get() >= 90, "{}", drops.queue_full.get());
        // a flush or shutdown gives up after its timeout instead of hanging
        let t0 = Instant::now();
        assert!(provider
            .shutdown_with_timeout(Duration::from_millis(200))
            .is_err());
        assert!(t0.elapsed() < Duration::from_secs(2));
        // spans ended after the shutdown are neither queued nor counted
        let before = drops.queue_full.get();
        end_spans(&provider, 3);
        assert_eq!(drops.queue_full.get(), before);
    }

    #[test]
    fn a_flush_waits_for_room_on_a_full_queue_up_to_its_deadline_only() {
        let (stuck, exporting) = Stuck::new();
        let drops = DropCounters::default();
        let p = BoundedBatch::new(stuck, 2, drops.clone()).unwrap();
        p.on_end(a_span());
        // a flush sends the span to the exporter, which never answers
        assert!(matches!(
            p.ask(Msg::Flush, Duration::from_millis(10)),
            Err(OTelSdkError::Timeout(_))
        ));
        exporting
            .recv_timeout(Duration::from_secs(5))
            .expect("the export started");
        // the thread is busy: two spans fill the queue, no room is left for a flush
        p.on_end(a_span());
        p.on_end(a_span());
        assert_eq!(drops.queue_full.get(), 0);
        let timeout = Duration::from_millis(150);
        let t0 = Instant::now();
        let r = p.ask(Msg::Flush, timeout);
        let waited = t0.elapsed();
        assert!(
            matches!(r, Err(OTelSdkError::Timeout(t)) if t == timeout),
            "{r:?}"
        );
        assert!(
            waited >= timeout && waited < Duration::from_secs(2),
            "{waited:?}"
        );
    }

    #[test]
    fn a_shut_down_processor_queues_nothing_and_says_so() {
        let kept = Kept::default();
        let drops = DropCounters::default();
        let mut p = BoundedBatch::new(kept.clone(), 4, drops.clone()).unwrap();
        let span = a_span();
        // an unsampled span (the SDK does not end those through a provider) is not queued
        let mut unsampled = span.clone();
        unsampled.span_context = opentelemetry::trace::SpanContext::new(
            span.span_context.trace_id(),
            span.span_context.span_id(),
            opentelemetry::trace::TraceFlags::default(),
            false,
            Default::default(),
        );
        p.on_end(unsampled);
        p.force_flush().unwrap();
        assert!(kept.0.lock().unwrap().is_empty());
        p.on_end(span.clone());
        p.force_flush().unwrap();
        assert_eq!(kept.0.lock().unwrap().len(), 1);

        p.shutdown().unwrap();
        assert!(matches!(p.shutdown(), Err(OTelSdkError::AlreadyShutdown)));
        assert!(matches!(
            p.force_flush(),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        // a span ended after the shutdown is not queued, so not counted as a full queue either
        p.on_end(span);
        assert_eq!(drops.queue_full.get(), 0);
        // a resource that cannot reach the exporter is counted as a failed export
        p.set_resource(&Resource::builder_empty().with_service_name("late").build());
        assert_eq!(drops.export_failed.get(), 1);
        assert_eq!(kept.0.lock().unwrap().len(), 1);
        assert_eq!(kept.1.lock().unwrap().as_deref(), None);
    }

    #[test]
    fn spans_queued_when_the_processor_is_dropped_are_still_exported() {
        let kept = Kept::default();
        let p = BoundedBatch::new(kept.clone(), 4, DropCounters::default()).unwrap();
        p.on_end(a_span());
        let thread = p.thread.lock().unwrap().take().unwrap();
        drop(p);
        // the thread exports what it holds as soon as the queue is closed, not at its interval
        thread.join().unwrap();
        assert_eq!(kept.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_carrier_lists_the_headers_it_holds() {
        let c = Carrier(vec![
            ("traceparent".into(), "00-x".into()),
            ("tracestate".into(), "a=b".into()),
        ]);
        assert_eq!(c.keys(), ["traceparent", "tracestate"]);
        assert!(Carrier::default().keys().is_empty());
    }

    #[test]
    fn spans_of_an_unsampled_parent_are_not_queued() {
        let kept = Kept::default();
        let drops = DropCounters::default();
        let provider = with_processor(
            BoundedBatch::new(kept.clone(), 1, drops.clone()).unwrap(),
            "test",
        );
        let tracer = provider.tracer("test");
        let unsampled = Carrier::from_traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        for _ in 0..10 {
            drop(tracer.start_with_context("hop", &unsampled.context()));
        }
        provider.force_flush().unwrap();
        assert!(kept.0.lock().unwrap().is_empty());
        assert_eq!(drops.queue_full.get(), 0);
    }

    #[test]
    fn a_request_is_traced_with_the_ratio_s_probability() {
        assert!((0..1000).all(|_| !decide(0.0)));
        assert!((0..1000).all(|_| decide(1.0)));
        // 10,000 draws at 0.25: 2,500 expected, sd 43; the bounds are 11 sd away
        let yes = (0..10_000).filter(|_| decide(0.25)).count();
        assert!((2_000..3_000).contains(&yes), "{yes}");
    }

    #[test]
    fn only_a_sampled_traceparent_marks_a_traced_request() {
        enable(1.0);
        let with = |flags: &str| {
            Carrier::from_traceparent(Some(&format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"
            )))
            .sampled()
        };
        assert!(with("01") && with("03"));
        assert!(!with("00") && !with("02") && !with("zz"));
        assert!(!Carrier::default().sampled());
        assert!(!Carrier::from_traceparent(Some("garbage")).sampled());
    }

    /// An untraced request's spans (log context only) reach no exporter, and neither does a span
    /// made inside one: no span is built for it, no context written.
    #[test]
    fn an_untraced_request_exports_nothing_and_carries_no_context() {
        let (kept, provider, sub) = exporting();
        let (untraced, traced) = tracing::subscriber::with_default(sub, || {
            let look = |traced: bool| {
                let span = crate::hop_span!(traced, "request", kind = "dm.send");
                let _in = span.enter();
                let inner = span_if(traced_current(), || tracing::info_span!("kafka.publish"));
                let _inner = inner.enter();
                (traced_current(), Carrier::current())
            };
            (look(false), look(true))
        });
        provider.force_flush().unwrap();
        assert_eq!(untraced, (false, Carrier::default()));
        assert!(traced.0 && traced.1.sampled(), "{traced:?}");
        let mut names: Vec<_> = kept
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["kafka.publish", "request"]);
        provider.shutdown().unwrap();
    }

    fn otlp(server: &str, drops: &DropCounters) -> SdkTracerProvider {
        let exporter = otlp_exporter(&format!("{server}/v1/traces")).unwrap();
        with_processor(
            BoundedBatch::new(exporter, 64, drops.clone()).unwrap(),
            "test",
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_reach_an_otlp_http_collector_as_protobuf() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/traces"))
            .and(header("content-type", "application/x-protobuf"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1..)
            .mount(&server)
            .await;
        let drops = DropCounters::default();
        let provider = otlp(&server.uri(), &drops);
        end_spans(&provider, 3);
        let flushed = tokio::task::spawn_blocking(move || {
            let r = provider.force_flush();
            provider.shutdown().unwrap();
            r
        })
        .await
        .unwrap();
        assert!(flushed.is_ok(), "{flushed:?}");
        let got = server.received_requests().await.unwrap();
        assert!(!got.is_empty());
        assert!(got[0].body.len() > 20, "a protobuf body");
        assert_eq!(drops.export_failed.get(), 0);
        assert_eq!(drops.queue_full.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_answering_500_costs_the_failed_counter_only() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(500))
            .mount(&server)
            .await;
        failed_exports_cost_the_counter_only(&server.uri(), 5).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_is_down_costs_the_failed_counter_only() {
        // nothing listens on port 1
        failed_exports_cost_the_counter_only("http://127.0.0.1:1", 7).await;
    }

    /// Ending `n` spans for a collector at `endpoint` that fails every export never waits; the
    /// flush fails and the `n` spans are counted as failed exports, none as a full queue.
    async fn failed_exports_cost_the_counter_only(endpoint: &str, n: u64) {
        let drops = DropCounters::default();
        let provider = otlp(endpoint, &drops);
        let t0 = Instant::now();
        end_spans(&provider, n as usize);
        assert!(
            t0.elapsed() < Duration::from_millis(500),
            "ending spans never waits"
        );
        let flushed = tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .unwrap();
        assert!(flushed.is_err());
        assert_eq!(drops.export_failed.get(), n);
        assert_eq!(drops.queue_full.get(), 0);
    }

    #[test]
    fn no_endpoint_no_provider_and_a_bad_ratio_is_refused() {
        assert!(provider(&TraceSettings::default(), "x").unwrap().is_none());
        let empty = TraceSettings {
            otlp_endpoint: Some(String::new()),
            ..Default::default()
        };
        assert!(provider(&empty, "x").unwrap().is_none());
        let bad = TraceSettings {
            otlp_endpoint: Some("http://127.0.0.1:1/v1/traces".into()),
            sample_ratio: -0.5,
            ..Default::default()
        };
        assert!(provider(&bad, "x").unwrap_err().contains("sample_ratio"));
        let ok = TraceSettings {
            otlp_endpoint: Some("http://127.0.0.1:1/v1/traces".into()),
            ..Default::default()
        };
        let p = provider(&ok, "x").unwrap().unwrap();
        p.shutdown().unwrap();
        assert!(otlp_exporter("not a url at all").is_err());
        // every reason's series exists from the start
        let text = {
            let mut reg = prometheus_client::registry::Registry::default();
            reg.register("d", "d", drops().family.clone());
            let mut s = String::new();
            prometheus_client::encoding::text::encode(&mut s, &reg).unwrap();
            s
        };
        for r in DROP_REASONS {
            assert!(text.contains(&format!("reason=\"{r}\"")), "{text}");
        }
    }
}
