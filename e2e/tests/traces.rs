//! One DM, sent through nginx on the platform `./sb up` runs, is one end-to-end trace in the
//! platform's Jaeger (found through its HTTP query API): the sender's edge handling the frame,
//! the Kafka publish, worker-dms handling the send, the hop to the recipient's edge topic and
//! the recipient's edge writing it to the socket, each span the child of the one before and
//! started no earlier than it. Any hop that does not carry the trace context on (a header not
//! written or not read, a batch item without its own context) breaks the chain and fails this
//! test.

mod common;

use e2e::client::{ok, Client, Http};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::Duration;
use topics::Event;

fn jaeger() -> (e2e::Stack, String) {
    let stack = e2e::stack();
    let url = stack
        .jaeger
        .as_ref()
        .expect("stack.json names no Jaeger: run the full platform (`./sb up`, `./sb test`)")
        .url
        .clone();
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
        for t in traces(&jaeger, "worker-dms", since_us).await {
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
                    return;
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
