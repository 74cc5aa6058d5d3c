//! The dashboards and rules of `observability/` against the real Prometheus that `./sb up` runs,
//! scraping the real platform after real traffic (a sign-up, a handshake, an invite and a few
//! DMs through nginx, sent here):
//!
//! - every panel query of every dashboard and every recording rule returns data;
//! - every alert expression evaluates without error, and each metric selector inside it (its
//!   name and label matchers, without the comparison that makes a quiet alert return nothing)
//!   returns data; so does each selector of the panels and recording rules;
//! - Prometheus loaded every rule file of `observability/rules/` and no rule fails to evaluate;
//! - its file-based service discovery lists exactly the platform's processes;
//! - docs/observability.md lists every metric the processes export, and nothing they do not.
//!
//! A query naming a metric nobody exports, or a label value nobody has, fails the run.

mod common;

use e2e::client::{ok, Client, Http};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;
use topics::Event;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prometheus() -> (e2e::Stack, String) {
    let stack = e2e::stack();
    let url = stack.prometheus_url();
    (stack, url)
}

/// Grafana's built-in interval variables, as the dashboards use them, with the values the check
/// evaluates them at (Prometheus scrapes every 5 s locally).
const GRAFANA_VARIABLES: [(&str, &str); 3] = [
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "5m"),
];

/// Where a query comes from, and whether it must return data as a whole (panels, recording
/// rules) or may be empty (alerts: an alert that is not firing returns nothing).
#[derive(Clone, Debug)]
struct Query {
    origin: String,
    expr: String,
    whole_must_return_data: bool,
}

/// Every target of every panel of every dashboard JSON (rows' nested panels included).
fn dashboard_queries() -> Vec<Query> {
    let dir = repo().join("observability/dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "dashboards: {files:?}");
    let mut out = Vec::new();
    for f in files {
        let d: Value = serde_json::from_str(&std::fs::read_to_string(&f).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(d["schemaVersion"], 39, "{name}");
        let mut panels: Vec<Value> = d["panels"].as_array().cloned().unwrap_or_default();
        let mut n = 0;
        while let Some(p) = panels.pop() {
            panels.extend(p["panels"].as_array().cloned().unwrap_or_default());
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let mut expr = t["expr"]
                    .as_str()
                    .expect("a target with an expr")
                    .to_string();
                for (var, value) in GRAFANA_VARIABLES {
                    expr = expr.replace(var, value);
                }
                assert!(!expr.contains('$'), "{name}: unknown variable in {expr}");
                n += 1;
                out.push(Query {
                    origin: format!("{name}: panel {:?} {}", p["title"], t["refId"]),
                    expr,
                    whole_must_return_data: true,
                });
            }
        }
        assert!(n > 0, "{name} has no queries");
    }
    out
}

/// The metric selectors of a PromQL expression: each metric name with its `{…}` matchers (no
/// range, no offset), skipping functions, aggregations, keywords, label lists of `by`,
/// `without`, `on`, `ignoring`, `group_left` and `group_right`, numbers, durations and strings.
fn selectors(expr: &str) -> Vec<String> {
    // keywords that take a label list, then the other keywords (neither is a metric name)
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: [&str; 7] = ["and", "or", "unless", "bool", "offset", "inf", "nan"];
    // aggregations may put their `by (…)` before the parenthesis: `sum by (le) (…)`
    const AGGREGATIONS: [&str; 12] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    // the end of the bracketed group opening at `i` (`{`/`}`, `(`/`)`, `[`/`]`), past strings
    let close = |i: usize, open: u8, shut: u8| {
        let (mut depth, mut j, mut quote) = (0, i, None::<u8>);
        while j < b.len() {
            let c = b[j];
            match quote {
                Some(_) if c == b'\\' => j += 1,
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' || c == b'`' => quote = Some(c),
                None if c == open => depth += 1,
                None if c == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                None => {}
            }
            j += 1;
        }
        panic!("unbalanced {} in {expr}", open as char)
    };
    let next_non_space = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    while i < b.len() {
        let c = b[i];
        if c == b'[' {
            i = close(i, b'[', b']');
        } else if c == b'"' || c == b'\'' || c == b'`' {
            let mut j = i + 1;
            while j < b.len() && b[j] != c {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
        } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
        {
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b':' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b':') {
                i += 1;
            }
            let word = &expr[start..i];
            let after = next_non_space(i);
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if b.get(after) == Some(&b'(') {
                    i = close(after, b'(', b')');
                }
            } else if KEYWORDS.contains(&lower.as_str()) || AGGREGATIONS.contains(&lower.as_str()) {
            } else if b.get(after) == Some(&b'(') {
                // a function or an aggregation: its arguments are scanned next
            } else if b.get(after) == Some(&b'{') {
                let end = close(after, b'{', b'}');
                out.push(format!("{word}{}", &expr[after..end]));
                i = end;
            } else {
                out.push(word.to_string());
            }
        } else if c == b'{' {
            let end = close(i, b'{', b'}');
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn selectors_are_the_metrics_and_matchers_of_a_query() {
    assert_eq!(
        selectors(
            r#"histogram_quantile(0.99, sum by (le, kind) (rate(sb_x_bucket{kind="dm.send", a=~"b|c}"}[5m])))"#
        ),
        vec![r#"sb_x_bucket{kind="dm.send", a=~"b|c}"}"#]
    );
    assert_eq!(
        selectors("sb:lag:sum > 100 and deriv(sb:lag:sum[5m]) > 0"),
        vec!["sb:lag:sum", "sb:lag:sum"]
    );
    assert_eq!(
        selectors(
            r#"sum(rate(a_total[1m])) / on (job) group_left (x) sum(b) or vector(0.05) unless up{job=~"edge"} == bool 1e3"#
        ),
        vec!["a_total", "b", r#"up{job=~"edge"}"#]
    );
    assert_eq!(selectors("sum(x) without (y, z) offset 5m"), vec!["x"]);
    assert_eq!(
        selectors(r#"{__name__="q"} + max by(process)(sb_y)"#),
        vec![r#"{__name__="q"}"#, "sb_y"]
    );
}

/// `GET /api/v1/query`: the result vector, or Prometheus' error.
async fn query(prom: &str, expr: &str) -> Result<Vec<Value>, String> {
    let r = reqwest::Client::new()
        .get(format!("{prom}/api/v1/query"))
        .query(&[("query", expr)])
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let body: Value = r.json().await.map_err(|e| e.to_string())?;
    if body["status"] != "success" {
        return Err(format!("{}: {}", body["errorType"], body["error"]));
    }
    let result = &body["data"]["result"];
    Ok(match body["data"]["resultType"].as_str() {
        Some("vector") | Some("matrix") => result.as_array().cloned().unwrap_or_default(),
        _ => vec![result.clone()], // scalar, string
    })
}

async fn api(prom: &str, path: &str) -> Value {
    let body: Value = reqwest::get(format!("{prom}{path}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "success", "{path}: {body}");
    body["data"].clone()
}

/// Every rule Prometheus loaded (the files of `observability/rules/`, which `./sb up` points it
/// at), each file there loaded, and none failing to evaluate (checked once every rule has been
/// evaluated at least once).
async fn rule_queries(prom: &str) -> Vec<Query> {
    let data = api(prom, "/api/v1/rules").await;
    let groups = data["groups"].as_array().cloned().unwrap_or_default();
    let loaded: BTreeSet<String> = groups
        .iter()
        .filter_map(|g| {
            let f = g["file"].as_str()?;
            Some(f.rsplit('/').next()?.to_string())
        })
        .collect();
    let dir = repo().join("observability/rules");
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yml"))
        .collect();
    assert!(!files.is_empty());
    assert_eq!(
        loaded, files,
        "rule files Prometheus loaded vs observability/rules"
    );
    let mut out = Vec::new();
    for g in &groups {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            let alert = r["type"] == "alerting";
            let name = r["name"].as_str().unwrap_or_default();
            out.push(Query {
                origin: format!(
                    "rule {} {name} ({})",
                    if alert { "alert" } else { "record" },
                    g["file"].as_str().unwrap_or_default()
                ),
                expr: r["query"].as_str().unwrap().to_string(),
                whole_must_return_data: !alert,
            });
        }
    }
    out
}

/// The rules' last evaluation: every one has run and none failed.
async fn rules_evaluated_without_error(prom: &str) -> Result<(), String> {
    let data = api(prom, "/api/v1/rules").await;
    for g in data["groups"].as_array().cloned().unwrap_or_default() {
        for r in g["rules"].as_array().cloned().unwrap_or_default() {
            if r["health"] != "ok" {
                return Err(format!(
                    "rule {} health {} {}",
                    r["name"], r["health"], r["lastError"]
                ));
            }
        }
    }
    Ok(())
}

/// What is wrong with `q` now, if anything.
async fn problem(prom: &str, q: &Query) -> Option<String> {
    match query(prom, &q.expr).await {
        Err(e) => return Some(format!("{}: `{}` fails: {e}", q.origin, q.expr)),
        Ok(r) if r.is_empty() && q.whole_must_return_data => {
            return Some(format!("{}: `{}` returns no data", q.origin, q.expr))
        }
        Ok(_) => {}
    }
    let sel = selectors(&q.expr);
    if sel.is_empty() && !q.expr.starts_with("vector(") {
        return Some(format!("{}: `{}` names no metric", q.origin, q.expr));
    }
    for s in sel {
        match query(prom, &s).await {
            Ok(r) if !r.is_empty() => {}
            Ok(_) => {
                return Some(format!(
                    "{}: `{s}` (in `{}`) matches no series: nobody exports it",
                    q.origin, q.expr
                ))
            }
            Err(e) => return Some(format!("{}: `{s}` fails: {e}", q.origin)),
        }
    }
    None
}

/// A little of everything the dashboards show, through nginx: two sign-ups and logins (HTTP),
/// two WebSocket handshakes, an invite accepted, a few DMs both ways.
async fn traffic(stack: &e2e::Stack) {
    let http = Http::new(&format!("http://{}", stack.nginx[0]));
    let (ann, ann_token) = common::signup_and_login(&http).await;
    let (bob, bob_token) = common::signup_and_login(&http).await;
    let mut a = Client::connect(&format!("ws://{}/ws", stack.nginx[0]), &ann_token).await;
    let mut b = Client::connect(&format!("ws://{}/ws", stack.nginx[1]), &bob_token).await;
    let conv = common::befriend_over_ws(&mut a, &mut b, ann, bob).await;
    for n in 0..5 {
        ok(a.request(json!({"type": "dm.send", "conversation_id": conv, "client_msg_id": format!("o{n}"), "text": "metrics"}))
            .await);
        b.event_where(|e| matches!(e, Event::DmMessage { .. }))
            .await;
    }
    a.close().await;
    b.close().await;
}

/// How long the queries may take to return data after the traffic: a scrape (5 s), a rule
/// evaluation (5 s), librdkafka's statistics (5 s) and slack for a loaded CI machine.
const SETTLE: Duration = Duration::from_secs(90);

#[tokio::test]
async fn every_dashboard_panel_and_rule_returns_data_from_the_real_prometheus() {
    let (stack, prom) = prometheus();
    let before = query(&prom, "sum(sb_dm_delivery_duration_seconds_count)")
        .await
        .unwrap()
        .first()
        .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    traffic(&stack).await;

    let mut queries = dashboard_queries();
    queries.extend(rule_queries(&prom).await);
    if let Ok(extra) = std::env::var("SB_EXTRA_QUERY") {
        // shows that a query nobody answers fails this test: SB_EXTRA_QUERY='sb_nobody_total'
        queries.push(Query {
            origin: "SB_EXTRA_QUERY".into(),
            expr: extra,
            whole_must_return_data: true,
        });
    }
    let deadline = tokio::time::Instant::now() + SETTLE;
    let wanted = format!("sum(sb_dm_delivery_duration_seconds_count) > {before}");
    let problems = loop {
        let mut problems = Vec::new();
        // Prometheus has scraped the deliveries of this test's DMs
        if query(&prom, &wanted).await.map_or(true, |r| r.is_empty()) {
            problems.push(format!("Prometheus has not scraped the DMs yet: {wanted}"));
        }
        if let Err(e) = rules_evaluated_without_error(&prom).await {
            problems.push(e);
        }
        for q in &queries {
            if let Some(p) = problem(&prom, q).await {
                problems.push(p);
            }
        }
        if problems.is_empty() || tokio::time::Instant::now() >= deadline {
            break problems;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(
        problems.is_empty(),
        "{} of {} queries (and checks) fail after {SETTLE:?}:\n{}",
        problems.len(),
        queries.len(),
        problems.join("\n")
    );
}

#[tokio::test]
async fn prometheus_scrapes_exactly_the_platform_processes() {
    let (stack, prom) = prometheus();
    let want: BTreeSet<(String, String)> = stack
        .services
        .iter()
        .map(|s| (s.kind.clone(), s.health_addr.clone()))
        .collect();
    assert!(want.len() >= 3, "{stack:?}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let data = api(&prom, "/api/v1/targets?state=active").await;
        let got: BTreeSet<(String, String)> = data["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|t| {
                (
                    t["labels"]["job"].as_str().unwrap_or_default().to_string(),
                    t["labels"]["instance"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        if got == want {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "targets (job, instance) {got:?}\nprocesses {want:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The sample names a `/metrics` text exports: `# TYPE` lines, a counter as `<name>_total`, an
/// info as `<name>_info`, anything else (gauge, histogram) under its own name.
fn exported(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some(match kind {
                "counter" => format!("{name}_total"),
                "info" => format!("{name}_info"),
                _ => name.to_string(),
            })
        })
        .collect()
}

/// The metric names in the first column of docs/observability.md's metric tables.
fn documented() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(repo().join("docs/observability.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
        .filter(|n| {
            n.starts_with("sb_") || n.starts_with("process_") || n.starts_with("switchboard_")
        })
        .collect()
}

#[tokio::test]
async fn the_doc_lists_every_exported_metric_and_no_other() {
    let stack = e2e::stack();
    let mut all = BTreeSet::new();
    for kind in ["edge", "worker", "router"] {
        assert!(stack.services.iter().any(|s| s.kind == kind), "{stack:?}");
    }
    for s in &stack.services {
        let text = reqwest::get(format!("http://{}/metrics", s.health_addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let names = exported(&text);
        assert!(names.contains("sb_dependency_up"), "{}: {text}", s.name);
        all.extend(names);
    }
    let doc = documented();
    let missing: Vec<_> = all.difference(&doc).collect();
    let stale: Vec<_> = doc.difference(&all).collect();
    assert!(
        missing.is_empty(),
        "exported but not in docs/observability.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "in docs/observability.md but exported by no process: {stale:?}"
    );
}
