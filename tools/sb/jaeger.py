"""Jaeger, receiving the spans every Switchboard process exports (OTLP over HTTP).

`./sb up` builds `github.com/jaegertracing/jaeger/cmd/jaeger` (v1.76.0, pinned in
tools/jaeger/go.mod) from the Go module proxy into .sb-tools/jaeger-<hash>/ with the mechanism
that builds the chart tools (chartcheck.go_build: once per go.mod/go.sum), and runs it on
127.0.0.1 with its config and log under <state>/jaeger/: the OTLP/HTTP receiver the app
processes post to (ports.py `jaeger_otlp`), the query API (`jaeger_query`; no web UI, the Go module carries no UI assets), gRPC on
`jaeger_query_grpc`). Storage is Jaeger's in-memory one, bounded to MAX_TRACES traces (the oldest
go first) and behind a memory limiter, so a load test cannot eat the machine's memory; it is
lost when Jaeger stops, which is what a local platform wants.

Measured on the 2-core machine (docs/observability.md): the first build ~10.5 min (modules
downloaded and compiled, with other builds running), a rebuild with warm Go caches ~20 s; later
`./sb up`s find the binary cached.
"""

from __future__ import annotations

import json
import os

import chartcheck
from ports import addr
from state import REPO, write_atomic
from util import SbError, alive, http_status, line, spawn_tool, tail, wait_until

NAME = "jaeger"
MODULE = os.path.join(REPO, "tools", "jaeger")
PACKAGE = "github.com/jaegertracing/jaeger/cmd/jaeger"
# Traces kept in memory (the oldest are evicted): a DM's trace is ~10 spans, a few KiB.
MAX_TRACES = 10_000
# The collector's memory limiter refuses spans (the apps count them as export_failed) above this.
MEMORY_LIMIT_MIB = 512
# The sampling ratio the launcher writes into every app's [trace] unless `--trace-ratio` says
# otherwise: 1, so that every request a developer or a test makes has its trace. A load test that
# should cost what a deployment does passes the product's default (`--trace-ratio 0.1`,
# runtime::TraceSettings) or turns tracing off (`--trace-ratio 0`). The apps' exporters are
# bounded (spans dropped are counted in sb_trace_spans_dropped_total) and so is Jaeger's storage.
SAMPLE_RATIO = 1.0


def home(state) -> str:
    return state.path(NAME)


def url(ctx) -> str:
    """The query API (JSON; this build serves no web UI)."""
    return f"http://{addr(ctx.ports.jaeger_query())}"


def otlp_endpoint(ports) -> str:
    """The OTLP/HTTP traces URL the app processes post to."""
    return f"http://{addr(ports.jaeger_otlp())}/v1/traces"


def config(ports) -> str:
    """Jaeger's (OpenTelemetry collector) config; JSON is YAML."""
    return json.dumps({
        "service": {
            "extensions": ["jaeger_storage", "jaeger_query"],
            "pipelines": {"traces": {"receivers": ["otlp"], "processors": ["memory_limiter", "batch"],
                                     "exporters": ["jaeger_storage_exporter"]}},
            # no telemetry listener of its own (its default port 8888 would clash between platforms)
            # and no spans of its own either (nor does the query extension, below)
            "telemetry": {"metrics": {"level": "none"}, "traces": {"level": "none"},
                          "logs": {"level": "info"}},
        },
        "extensions": {
            "jaeger_query": {
                "storage": {"traces": "memstore"},
                "http": {"endpoint": addr(ports.jaeger_query())},
                "grpc": {"endpoint": addr(ports.jaeger_query_grpc())},
                # its own spans would go to an OTLP/gRPC collector on localhost:4317
                "enable_tracing": False,
            },
            "jaeger_storage": {"backends": {"memstore": {"memory": {"max_traces": MAX_TRACES}}}},
        },
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": addr(ports.jaeger_otlp())}}}},
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": MEMORY_LIMIT_MIB,
                               "spike_limit_mib": MEMORY_LIMIT_MIB // 4},
            "batch": {},
        },
        "exporters": {"jaeger_storage_exporter": {"trace_storage": "memstore"}},
    }, indent=2) + "\n"


def binary() -> str:
    paths, how = chartcheck.go_build(MODULE, {"jaeger": PACKAGE}, "jaeger")
    if how != "cached":
        line(NAME, f"{PACKAGE} {how}", True)
    return paths["jaeger"]


def healthy(comp: dict) -> bool:
    return (alive(comp.get("pid"), comp.get("starttime"))
            and http_status(f"http://{comp['addr']}/api/services") == 200)


def start_and_wait(ctx, timeout: float = 60.0) -> None:
    comp = ctx.state.get(NAME)
    if not (comp and alive(comp.get("pid"), comp.get("starttime"))):
        line(NAME, f"{PACKAGE}: built once from the Go module proxy (~10 min the first time), then cached")
        exe = binary()
        h = home(ctx.state)
        os.makedirs(h, exist_ok=True)
        conf = os.path.join(h, "config.yaml")
        write_atomic(conf, config(ctx.ports))
        listen = addr(ctx.ports.jaeger_query())
        argv = [exe, f"--config=file:{conf}"]
        comp = spawn_tool(ctx, NAME, "traces", argv, listen, ctx.ports.jaeger_query(), h)
    if not wait_until(lambda: healthy(comp), timeout, 0.2, lambda: not alive(comp["pid"], comp["starttime"])):
        raise SbError(f"jaeger not ready at http://{comp['addr']}/api/services; log {comp['log']}:\n{tail(comp['log'])}")
    line(NAME, f"ready at http://{comp['addr']}/ (OTLP/HTTP on {otlp_endpoint(ctx.ports)}, "
               f"up to {MAX_TRACES} traces in memory)", True)
