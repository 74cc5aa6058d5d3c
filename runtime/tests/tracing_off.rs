//! Tracing off (nothing in this test process calls `telemetry::init` with an endpoint), the trace
//! helpers cost nothing and give nothing, even under a subscriber that could export spans.

use opentelemetry::trace::TracerProvider;
use runtime::trace::{current_ids, ids_of, sample_root, Carrier};

#[test]
fn tracing_off_gives_no_ids_no_context_and_samples_nothing() {
    assert!(!runtime::trace::enabled());
    // an exporting layer gives every span a valid trace context
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let sub = runtime::telemetry::subscriber(
        runtime::LogFormat::Text,
        tracing_subscriber::EnvFilter::new("info"),
        std::io::sink,
        Some(provider.tracer("test")),
    );
    tracing::subscriber::with_default(sub, || {
        let span = tracing::info_span!("request", kind = "dm.send");
        let _in = span.enter();
        let id = span.id().unwrap();
        assert!(
            tracing::dispatcher::get_default(|d| ids_of(&id, d)).is_some(),
            "the span is part of a trace"
        );
        // ... which the helpers do not read or write while tracing is off
        assert_eq!(current_ids(), None);
        assert_eq!(Carrier::current(), Carrier::default());
        assert_eq!(Carrier::of(&span), Carrier::default());
    });
    assert!((0..100).all(|_| !sample_root()));
    // a sampled traceparent read from a record marks no traced request either
    let sampled = Carrier::from_traceparent(Some(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ));
    assert!(!sampled.sampled());
}
