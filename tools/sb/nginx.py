"""nginx x2 in front of the edges. Each instance has its own prefix: <state>/nginx-<i>/.

The upstream list lives in <prefix>/conf/upstream.conf (included by nginx.conf) so it can be
rewritten and reloaded without touching the rest:

    nginx -p <prefix> -c conf/nginx.conf -e logs/error.log -s reload
"""

from __future__ import annotations

import os
import subprocess

from ports import NGINX_INSTANCES, addr
from state import write_atomic
from util import SbError, alive, http_status, line, port_open, spawn, tail, wait_until, which


def name(i: int) -> str:
    return f"nginx-{i}"


def prefix(ctx, i: int) -> str:
    return ctx.state.path(name(i))


# Headers of the page: scripts, styles, fetches and the WebSocket only from our own origin
# (CSP 'self' covers ws: to the same host and port), no framing, no referrer, no sniffing.
SECURITY_HEADERS = [
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                                "frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]

PROXY_COMMON = """            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_next_upstream error timeout http_502;"""


# Slow and idle clients are bounded here first (the edges bound theirs too: edge.header_read_timeout_ms,
# keep_alive_timeout_ms, max_handshakes). A request head or body that stalls this long between two
# reads, or a response the client stops reading, ends the connection; a kept-alive client
# connection with no request closes after keepalive_timeout. The WebSocket's own timeouts are the
# proxy_*_timeout of location /ws and the edge's ping/idle timeout.
CLIENT_TIMEOUTS = """    client_header_timeout 10s;
    client_body_timeout 10s;
    send_timeout 30s;
    keepalive_timeout 65s;"""


# The edges' body limit (edge.max_frame_bytes, 64 KiB), enforced here with the edge's own error
# body. An edge refuses a larger body from its Content-Length without reading it and closes the
# connection; nginx, still sending that body, then sees a reset and answered 502 instead of 413.
BODY_LIMIT = """        client_max_body_size 64k;
        error_page 413 = @payload_too_large;
        location @payload_too_large {
            default_type application/json;
            return 413 '{"code":"payload_too_large","message":"body is larger than the limit"}';
        }"""


def web_root(ctx) -> str:
    """The built web client (`./sb up` builds it when web/package.json exists: web.py)."""
    return os.path.join(ctx.repo, "web", "dist")


def _quote(path: str) -> str:
    """A path as one nginx config token."""
    if any(c in path for c in '"\\;{}$\n'):
        raise SbError(f"cannot serve the web client from {path!r}: move the checkout to a plainer path")
    return f'"{path}"'


# Each process may hold 20,000 open files here (hard limit). A proxied WebSocket takes two
# connections (client and upstream), so one worker carries at most ~9,750 clients.
WORKER_FILES = 20000
WORKER_CONNECTIONS = 19500
# How long the workers of a reloaded nginx keep relaying the WebSockets they hold. A reload (an
# edge left or came back) must not cut the sockets of the other edges: the old workers drain as
# their clients leave, for up to an hour (each holds only its own sockets meanwhile).
SHUTDOWN_DRAIN = "1h"


def worker_count(edges: int) -> int:
    """Workers per instance: one per edge (at least 2), so that the two instances together hold
    as many clients as the edges behind them (an edge takes up to 19,000 connections)."""
    return max(2, edges)


def proxy_source(i: int) -> str:
    """The loopback address instance `i` connects to the edges from. The kernel has ~28,000
    ephemeral ports per (source, destination) pair: with both instances on 127.0.0.1 one edge could
    take at most ~14,000 clients through each; an address per instance lifts that past the
    edge's own 19,000 (measured: `connect() failed (99: Cannot assign requested address)` at
    14,138 clients per edge)."""
    return f"127.0.1.{i + 1}"


def nginx_conf(port: int, root: str, workers: int = 2, source: str = "127.0.1.1") -> str:
    security_headers = "\n".join(f'            add_header {k} "{v}" always;' for k, v in SECURITY_HEADERS)
    web_root = _quote(root)
    return f"""# written by ./sb up -- edits are overwritten (the upstream list is in upstream.conf)
daemon off;
pid logs/nginx.pid;
error_log logs/error.log warn;
worker_processes {workers};
worker_rlimit_nofile {WORKER_FILES};
worker_shutdown_timeout {SHUTDOWN_DRAIN};

events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;

    # the web client's file types (no dependency on the distribution's mime.types)
    types {{
        text/html html;
        text/javascript js mjs;
        text/css css;
        application/json json map;
        image/svg+xml svg;
        image/png png;
        image/x-icon ico;
        font/woff2 woff2;
        text/plain txt;
    }}
    default_type application/octet-stream;

    access_log logs/access.log combined buffer=64k flush=5s;
    sendfile on;
    tcp_nodelay on;
{CLIENT_TIMEOUTS}

    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}

    include upstream.conf;
    proxy_bind {source};

    server {{
        # reuseport: one listening socket per worker, so the kernel spreads clients evenly
        listen 127.0.0.1:{port} backlog=4096 reuseport;

{BODY_LIMIT}

        # the web client (web/dist, built by `./sb up`); any other path gets the page too
        root {web_root};
        index index.html;

        location / {{
            try_files $uri /index.html =404;
            charset utf-8;
            charset_types text/css text/javascript application/json image/svg+xml;
            add_header Cache-Control "no-cache" always;
{security_headers}
        }}

        # content-hashed bundles never change
        location /assets/ {{
            try_files $uri =404;
            charset utf-8;
            charset_types text/css text/javascript application/json image/svg+xml;
            add_header Cache-Control "public, max-age=31536000, immutable" always;
{security_headers}
        }}

        location /api/ {{
            proxy_pass http://edges;
{PROXY_COMMON}
        }}

        location = /ws {{
            proxy_pass http://edges;
{PROXY_COMMON}
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
        }}

        location = /healthz {{
            proxy_pass http://edges;
{PROXY_COMMON}
        }}

        # operator endpoints: asked at each process' own address, never served to the public
        location = /metrics {{
            return 404;
        }}
        location = /readyz {{
            return 404;
        }}
    }}
}}
"""


def upstream_conf(edge_ports: list[int], placeholder_port: int) -> str:
    out = "# written by ./sb -- the edges nginx balances over; rewrite + `nginx -s reload` to change\n"
    out += "upstream edges {\n"
    for p in edge_ports:
        out += f"    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n"
    if not edge_ports:
        # nginx refuses an empty upstream: a placeholder marked down answers 502
        out += f"    server 127.0.0.1:{placeholder_port} down;\n"
    out += "}\n"
    return out


def _edge_ports(ctx) -> list[int]:
    return [c["port"] for c in ctx.state.components if c["kind"] == "edge"]


def write_upstreams(ctx) -> None:
    for i in range(NGINX_INSTANCES):
        write_atomic(os.path.join(prefix(ctx, i), "conf", "upstream.conf"),
                     upstream_conf(_edge_ports(ctx), ctx.ports.edge(0)))


def _nginx_args(ctx, i: int) -> list[str]:
    return ["-p", prefix(ctx, i) + "/", "-c", "conf/nginx.conf", "-e", "logs/error.log"]


def reload(ctx) -> None:
    """Rewrite upstream.conf from the running edges and reload every running nginx."""
    write_upstreams(ctx)
    exe = which("nginx")
    for i in range(NGINX_INSTANCES):
        if ctx.state.running(name(i)):
            r = subprocess.run([exe, *_nginx_args(ctx, i), "-s", "reload"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SbError(f"{name(i)} reload failed: {r.stderr.strip()}")


def healthy(comp: dict, has_edges: bool) -> bool:
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    if has_edges:
        return http_status(f"http://{comp['addr']}/healthz") == 200
    return port_open(comp["port"])


def start_and_wait(ctx, timeout: float = 30.0) -> None:
    exe = which("nginx")
    if not exe:
        raise SbError("nginx not found")
    has_edges = bool(_edge_ports(ctx))
    running = [i for i in range(NGINX_INSTANCES) if ctx.state.running(name(i))]
    write_upstreams(ctx)
    for i in range(NGINX_INSTANCES):
        if i in running:
            continue
        p = prefix(ctx, i)
        for sub in ("conf", "logs", "temp"):
            os.makedirs(os.path.join(p, sub), exist_ok=True)
        port = ctx.ports.nginx(i)
        write_atomic(os.path.join(p, "conf", "nginx.conf"), nginx_conf(port, web_root(ctx), worker_count(len(_edge_ports(ctx))), proxy_source(i)))
        t = subprocess.run([exe, "-t", "-q", *_nginx_args(ctx, i)], capture_output=True, text=True)
        if t.returncode != 0:
            raise SbError(f"{name(i)}: bad nginx config:\n{t.stderr}")
        log = os.path.join(p, "logs", "error.log")
        argv, out = [exe, *_nginx_args(ctx, i)], ctx.state.log(name(i)) + ".out"
        pid, stt = spawn(argv, out, env=ctx.infra_env, cwd=p)
        ctx.state.put({"name": name(i), "kind": "nginx", "role": "proxy", "addr": addr(port), "port": port,
                       "pid": pid, "starttime": stt, "group": "nginx", "log": log, "prefix": p,
                       "argv": argv, "cwd": p, "out": out})
    if running:
        reload(ctx)  # edges may have changed since they started
    for i in range(NGINX_INSTANCES):
        c = ctx.state.get(name(i))
        if not wait_until(lambda c=c: healthy(c, has_edges), timeout, 0.1,
                          lambda c=c: not alive(c["pid"], c["starttime"])):
            why = "GET /healthz through nginx is not 200" if has_edges else "port not accepting"
            raise SbError(f"{c['name']} not healthy on {c['addr']} ({why}); log {c['log']}:\n{tail(c['log'])}")
        via = f"-> {len(_edge_ports(ctx))} edge(s), /healthz 200" if has_edges else "(no edges: TCP only)"
        line(c["name"], f"healthy at http://{c['addr']}/ {via}", True)
