//! One DM, sent through nginx on the platform `./sb up` runs, is one end-to-end trace in the
//! platform's Jaeger (found through its HTTP query API): the sender's edge handling the frame,
//! the Kafka publish, worker-dms handling the send, the hop to the recipient's edge topic and
//! the recipient's edge writing it to the socket, each span the child of the one before and
//! started no earlier than it. Any hop that does not carry the trace context on (a header not
//! written or not read, a batch item without its own context) breaks the chain and fails this
//! test. A second test takes the screenshots of such a trace and of a Prometheus graph that
//! docs/observability.md shows.

mod common;

use e2e::client::{ok, Client, Http};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use topics::Event;

fn jaeger() -> (e2e::Stack, String) {
    let stack = e2e::stack();
    let url = stack.jaeger_url();
    (stack, url)
}

/// A span as the query API shows it, with its service.
#[derive(Clone, Debug)]
struct Span {
    id: String,
    parent: Option<String>,
    name: String,
    service: String,
    start_us: u64,
    tags: HashMap<String, String>,
}

/// The spans of one trace of the query API's answer.
fn spans(trace: &Value) -> Vec<Span> {
    let services: HashMap<String, String> = trace["processes"]
        .as_object()
        .map(|ps| {
            ps.iter()
                .map(|(k, p)| (k.clone(), p["serviceName"].as_str().unwrap_or("").into()))
                .collect()
        })
        .unwrap_or_default();
    trace["spans"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| Span {
            id: s["spanID"].as_str().unwrap_or("").into(),
            parent: s["references"].as_array().and_then(|rs| {
                rs.iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str().map(String::from))
            }),
            name: s["operationName"].as_str().unwrap_or("").into(),
            service: services
                .get(s["processID"].as_str().unwrap_or(""))
                .cloned()
                .unwrap_or_default(),
            start_us: s["startTime"].as_u64().unwrap_or(0),
            tags: s["tags"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|t| {
                    let v = match &t["value"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (t["key"].as_str().unwrap_or("").to_string(), v)
                })
                .collect(),
        })
        .collect()
}

/// One hop of the chain a DM's trace must hold: the span's name, which service, and tags.
struct Hop {
    name: &'static str,
    service: fn(&str) -> bool,
    tags: &'static [(&'static str, &'static str)],
}

fn is_edge(s: &str) -> bool {
    s.starts_with("edge-")
}

const CHAIN: [Hop; 5] = [
    // the sender's edge: the client's frame
    Hop {
        name: "edge.request",
        service: is_edge,
        tags: &[("kind", "dm.send")],
    },
    // its publish to the dms topic
    Hop {
        name: "kafka.publish",
        service: is_edge,
        tags: &[],
    },
    // worker-dms handling that send (its span in the batch)
    Hop {
        name: "request",
        service: |s| s == "worker-dms",
        tags: &[("kind", "dm.send")],
    },
    // the hop to the recipient's edge topic (the item in the per-edge record)
    Hop {
        name: "edge.publish",
        service: |s| s == "worker-dms",
        tags: &[("op", "deliver")],
    },
    // the recipient's edge writing the message to the socket
    Hop {
        name: "edge.write",
        service: is_edge,
        tags: &[("op", "deliver")],
    },
];

/// The chain in `spans`, each hop the child of the one before, or what is missing.
fn chain(spans: &[Span]) -> Result<Vec<Span>, String> {
    let fits = |s: &Span, hop: &Hop| {
        s.name == hop.name
            && (hop.service)(&s.service)
            && hop
                .tags
                .iter()
                .all(|(k, v)| s.tags.get(*k).map(String::as_str) == Some(*v))
    };
    // every path from a first hop down the chain (a trace may hold several edge writes)
    let mut paths: Vec<Vec<Span>> = spans
        .iter()
        .filter(|s| fits(s, &CHAIN[0]))
        .map(|s| vec![s.clone()])
        .collect();
    if paths.is_empty() {
        let names: Vec<String> = spans
            .iter()
            .map(|s| format!("{}/{}", s.service, s.name))
            .collect();
        return Err(format!(
            "no `{}` span of a dm.send (spans: {names:?})",
            CHAIN[0].name
        ));
    }
    for hop in &CHAIN[1..] {
        let next: Vec<Vec<Span>> = paths
            .iter()
            .flat_map(|path| {
                let last = path.last().expect("a path is never empty");
                spans
                    .iter()
                    .filter(|s| {
                        fits(s, hop)
                            && s.parent.as_deref() == Some(last.id.as_str())
                            && s.start_us >= last.start_us
                    })
                    .map(|s| {
                        let mut p = path.clone();
                        p.push(s.clone());
                        p
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if next.is_empty() {
            let names: Vec<String> = spans
                .iter()
                .map(|s| format!("{}/{}", s.service, s.name))
                .collect();
            return Err(format!(
                "no `{}` span child of a `{}` one (spans: {names:?})",
                hop.name,
                paths[0].last().map_or("?", |s| s.name.as_str())
            ));
        }
        paths = next;
    }
    Ok(paths.swap_remove(0))
}

#[test]
fn the_chain_is_found_only_when_every_hop_is_a_child_of_the_one_before() {
    let span =
        |id: &str, parent: Option<&str>, name: &str, service: &str, tags: &[(&str, &str)]| Span {
            id: id.into(),
            parent: parent.map(String::from),
            name: name.into(),
            service: service.into(),
            start_us: id.len() as u64,
            tags: tags
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
    let whole = vec![
        span("a", None, "edge.request", "edge-0", &[("kind", "dm.send")]),
        span("bb", Some("a"), "kafka.publish", "edge-0", &[]),
        span(
            "ccc",
            Some("bb"),
            "request",
            "worker-dms",
            &[("kind", "dm.send")],
        ),
        span(
            "dddd",
            Some("ccc"),
            "edge.publish",
            "worker-dms",
            &[("op", "reply")],
        ),
        span(
            "eeeee",
            Some("dddd"),
            "edge.write",
            "edge-0",
            &[("op", "reply")],
        ),
        span(
            "ffff",
            Some("ccc"),
            "edge.publish",
            "worker-dms",
            &[("op", "deliver")],
        ),
        span(
            "ggggg",
            Some("ffff"),
            "edge.write",
            "edge-1",
            &[("op", "deliver")],
        ),
    ];
    let found = chain(&whole).unwrap();
    let ids: Vec<&str> = found.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "bb", "ccc", "ffff", "ggggg"]);
    // a hop whose parent is not the previous hop's span (a context not carried on)
    for broken in [2, 4, 6] {
        let mut spans = whole.clone();
        spans[broken].parent = None;
        if broken == 4 {
            // the reply's write is not on the chain: still found
            assert!(chain(&spans).is_ok());
        } else {
            assert!(chain(&spans).is_err(), "{broken}");
        }
    }
}

/// Every trace of `service` that started since `since_us` (microseconds since the epoch).
async fn traces(jaeger: &str, service: &str, since_us: u64) -> Vec<Value> {
    let url = format!(
        "{jaeger}/api/traces?service={service}&start={since_us}&end={}&limit=200",
        runtime::now_ms() * 1000 + 60_000_000
    );
    let r = reqwest::get(&url)
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let v: Value = r.json().await.unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Long enough for the processes' exporters (a batch a second) and Jaeger's batching.
const SETTLE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn one_dm_is_one_trace_from_the_senders_edge_to_the_recipients_socket() {
    let (stack, jaeger) = jaeger();
    one_traced_dm(&stack, &jaeger).await;
}

/// Send one DM through nginx and wait for its whole chain in Jaeger; its trace id.
async fn one_traced_dm(stack: &e2e::Stack, jaeger: &str) -> String {
    let since_us = runtime::now_ms() * 1000;
    let http = Http::new(&format!("http://{}", stack.nginx[0]));
    let (ann, ann_token) = common::signup_and_login(&http).await;
    let (bob, bob_token) = common::signup_and_login(&http).await;
    let mut a = Client::connect(&format!("ws://{}/ws", stack.nginx[0]), &ann_token).await;
    let mut b = Client::connect(&format!("ws://{}/ws", stack.nginx[1]), &bob_token).await;
    let conv = common::befriend_over_ws(&mut a, &mut b, ann, bob).await;
    ok(a.request(json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": "traced", "text": "one trace"}))
        .await);
    b.event_where(|e| matches!(e, Event::DmMessage { .. }))
        .await;
    a.close().await;
    b.close().await;

    let deadline = tokio::time::Instant::now() + SETTLE;
    let last = loop {
        let mut why = Vec::new();
        for t in traces(jaeger, "worker-dms", since_us).await {
            let spans = spans(&t);
            if !spans.iter().any(|s| {
                s.name == "request" && s.tags.get("kind").map(String::as_str) == Some("dm.send")
            }) {
                continue;
            }
            match chain(&spans) {
                Ok(found) => {
                    let hops: Vec<String> = found
                        .iter()
                        .map(|s| format!("{}/{}", s.service, s.name))
                        .collect();
                    eprintln!("trace {}: {}", t["traceID"], hops.join(" -> "));
                    return t["traceID"].as_str().expect("a trace id").to_string();
                }
                Err(e) => why.push(format!("trace {}: {e}", t["traceID"])),
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break why;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    panic!(
        "no trace of a dm.send in {jaeger} holds the whole chain after {SETTLE:?}:\n{}",
        if last.is_empty() {
            "(no worker-dms trace of a dm.send at all)".to_string()
        } else {
            last.join("\n")
        }
    );
}

/// The screenshots docs/observability.md shows, taken against the platform with Debian's
/// Chromium (headless): a DM's trace as Jaeger's query API returns it, drawn as a waterfall, and
/// the records published per second by topic kind in Prometheus' graph page. Each must be a PNG of a rendered page (a blank page compresses to a
/// few KiB). Written to `target/screenshots/` (or `SB_SCREENSHOT_DIR`).
#[tokio::test]
async fn screenshots_of_a_trace_in_jaeger_and_a_graph_in_prometheus() {
    let (stack, jaeger) = jaeger();
    let trace = one_traced_dm(&stack, &jaeger).await;
    let prometheus = stack.prometheus_url();
    let dir = std::env::var_os("SB_SCREENSHOT_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots")
        });
    std::fs::create_dir_all(&dir).unwrap();
    // Jaeger built from the Go module proxy serves no UI (its assets come from the jaeger-ui
    // repository, built with npm): the test draws the trace from the query API itself.
    let url = format!("{jaeger}/api/traces/{trace}");
    let data: Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let page = dir.join("trace.html");
    std::fs::write(&page, waterfall(&data["data"][0])).unwrap();
    screenshot(
        &format!("file://{}", page.display()),
        &dir.join("trace.png"),
    )
    .await;
    let graph = "sum%20by%20(topic_kind)%20(rate(sb_records_published_total%5B1m%5D))";
    screenshot(
        &format!("{prometheus}/graph?g0.expr={graph}&g0.tab=0&g0.range_input=15m"),
        &dir.join("prometheus-graph.png"),
    )
    .await;
}

/// Headless Chromium's screenshot of `url`, after up to 10 s of the page's own time to render.
async fn screenshot(url: &str, path: &std::path::Path) {
    let _ = std::fs::remove_file(path);
    let out = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1400,900",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), out)
        .await
        .expect("chromium took over 90 s")
        .expect("chromium runs (Debian's `chromium` package)");
    let png = std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "no screenshot of {url} ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG"), "{} is a PNG", path.display());
    assert!(
        png.len() > 15_000,
        "{url}: {} bytes, a blank page?",
        png.len()
    );
}

/// One span of a trace as the waterfall draws it.
struct Bar {
    start_us: u64,
    duration_us: u64,
    id: String,
    parent: Option<String>,
    label: String,
}

/// A page drawing a trace (one element of the query API's `data`) as a waterfall: a row per span
/// in start order, indented under its parent, a bar from its start to its end on the trace's time
/// axis, labelled with its service, operation and duration.
fn waterfall(trace: &Value) -> String {
    let service = |pid: &Value| {
        trace["processes"][pid.as_str().unwrap_or("")]["serviceName"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    let mut bars: Vec<Bar> = trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| Bar {
            start_us: s["startTime"].as_u64().unwrap_or(0),
            duration_us: s["duration"].as_u64().unwrap_or(0),
            id: s["spanID"].as_str().unwrap_or("").to_string(),
            parent: s["references"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["refType"] == "CHILD_OF"))
                .and_then(|r| r["spanID"].as_str())
                .map(str::to_string),
            label: format!(
                "<b>{}</b> {}",
                service(&s["processID"]),
                s["operationName"].as_str().unwrap_or("")
            ),
        })
        .collect();
    bars.sort_by_key(|b| b.start_us);
    let t0 = bars.iter().map(|b| b.start_us).min().unwrap_or(0);
    let end = bars
        .iter()
        .map(|b| b.start_us + b.duration_us)
        .max()
        .unwrap_or(t0);
    let total = (end - t0).max(1) as f64;
    let depth = |b: &Bar| {
        let mut d = 0;
        let mut at = b.parent.clone();
        while let Some(p) = at {
            d += 1;
            at = bars
                .iter()
                .find(|x| x.id == p)
                .and_then(|x| x.parent.clone());
        }
        d
    };
    let mut html = format!(
        "<!doctype html><meta charset=utf-8><style>body{{font:14px sans-serif;margin:24px}}\
         .r{{display:flex;align-items:center;height:26px}}.l{{width:430px;box-sizing:border-box;white-space:nowrap}}\
         .t{{position:relative;flex:1;height:16px;background:#f1f3f5}}\
         .b{{position:absolute;height:16px;background:#3b7dd8}}.d{{width:90px;text-align:right}}\
         </style><h2>Trace {} &mdash; {} spans, {:.1} ms</h2>",
        trace["traceID"].as_str().unwrap_or(""),
        bars.len(),
        total / 1000.0
    );
    for b in &bars {
        html += &format!(
            "<div class=r><div class=l style=\"padding-left:{}px\">{}</div>\
             <div class=t><div class=b style=\"left:{:.2}%;width:{:.2}%\"></div></div>\
             <div class=d>{:.2} ms</div></div>",
            depth(b) * 16,
            b.label,
            (b.start_us - t0) as f64 / total * 100.0,
            (b.duration_us as f64 / total * 100.0).max(0.3),
            b.duration_us as f64 / 1000.0
        );
    }
    html
}
