"""Switchboard's own processes (edge-ws, workers, router): config files, start, health."""

from __future__ import annotations

import json
import os

import jaeger
import kafka
from mariadb import DB_NAME, DB_PASSWORD, DB_USER
from ports import MARIADB_SHARDS, MAX_WORKERS_PER_ROLE, NGINX_INSTANCES, REDIS_NODES, WORKERS, addr
from state import write_atomic
from util import SbError, alive, http_status, line, spawn, tail, wait_until

TOPIC_PREFIX = "sb"
KEY_PREFIX = "sb"


def q(s: str) -> str:
    """TOML basic string (JSON string escapes are valid TOML)."""
    return json.dumps(s)


def qlist(items: list[str]) -> str:
    return "[" + ", ".join(q(i) for i in items) + "]"


# ---------------------------------------------------------------- shared facts


def kafka_brokers(ctx) -> str:
    return kafka.brokers_string(ctx.ports, ctx.kafka_brokers)


def replication_factor(ctx) -> int:
    return 3 if ctx.kafka_brokers == 3 else 1


def redis_nodes(ctx) -> list[str]:
    return [f"redis://{addr(ctx.ports.redis(i))}" for i in range(REDIS_NODES)]


def db_shards(ctx) -> list[dict]:
    """Every shard's two instances; `failover`: they are nodes of one Galera cluster, and the
    workers write to the first of them that is Synced (workers::settings::ShardSettings)."""
    galera = getattr(ctx, "shard_replication", "async") == "galera"
    return [{"primary": addr(ctx.ports.mariadb(s, False)), "replica": addr(ctx.ports.mariadb(s, True))}
            | ({"failover": True} if galera else {})
            for s in range(MARIADB_SHARDS)]


def nginx_addrs(ctx) -> list[str]:
    return [addr(ctx.ports.nginx(i)) for i in range(NGINX_INSTANCES)]


def edge_id(i: int) -> str:
    return f"edge-{i}"


def worker_name(role: str, instance: int) -> str:
    """Process `instance` of a worker role: worker-dms, worker-dms-1, worker-dms-2, ..."""
    return f"worker-{role}" if instance == 0 else f"worker-{role}-{instance}"


def worker_processes(ctx) -> list[tuple[str, str, int]]:
    """(name, role, instance) of every worker process, role by role."""
    return [(worker_name(w, j), w, j) for w in WORKERS for j in range(ctx.workers.get(w, 1))]


def parse_workers(spec: str) -> dict[str, int]:
    """`--workers`: "N" (every role), "dms=2,auth=3" (the others one), or both ("2,dms=3").
    Every role in the result; each count 1..MAX_WORKERS_PER_ROLE."""
    default, counts = 1, {}
    for part in [p.strip() for p in spec.split(",")]:
        role, sep, n = part.rpartition("=")
        if sep and role.strip() not in WORKERS:
            raise SbError(f"--workers: unknown role {role.strip()!r} (roles: {', '.join(WORKERS)})")
        try:
            k = int(n)
        except ValueError:
            raise SbError(f"--workers: {part!r} is not N or ROLE=N") from None
        if not 1 <= k <= MAX_WORKERS_PER_ROLE:
            raise SbError(f"--workers: {part!r}: processes per role must be 1..{MAX_WORKERS_PER_ROLE}")
        if sep:
            counts[role.strip()] = k
        else:
            default = k
    return {w: counts.get(w, default) for w in WORKERS}


def app_names(ctx) -> list[str]:
    return [edge_id(i) for i in range(ctx.edges)] + [n for n, _, _ in worker_processes(ctx)] + ["router"]


# ---------------------------------------------------------------- config files


def _kafka_section(ctx, group_instance_id: str | None = None) -> str:
    """`group_instance_id`: the process' static name in its consumer group (workers and the
    router, each process under its own name, the same after a restart)."""
    out = (f"[kafka]\nbrokers = {q(kafka_brokers(ctx))}\ntopic_prefix = {q(TOPIC_PREFIX)}\n"
           f"replication_factor = {replication_factor(ctx)}\n")
    if group_instance_id:
        out += f"group_instance_id = {q(group_instance_id)}\n"
    return out


def _redis_section(ctx) -> str:
    return f"[redis]\nnodes = {qlist(redis_nodes(ctx))}\nkey_prefix = {q(KEY_PREFIX)}\n"


def _database_section(ctx) -> str:
    out = f"[database]\nuser = {q(DB_USER)}\npassword = {q(DB_PASSWORD)}\nname = {q(DB_NAME)}\n"
    for sh in db_shards(ctx):
        out += f"\n[[database.shards]]\nprimary = {q(sh['primary'])}\nreplica = {q(sh['replica'])}\n"
        if sh.get("failover"):
            out += "failover = true\n"
    return out


def edge_toml(ctx, i: int) -> str:
    origins = []
    for i_ng in range(NGINX_INSTANCES):
        p = ctx.ports.nginx(i_ng)
        origins += [f"http://127.0.0.1:{p}", f"http://localhost:{p}"]
    return (_kafka_section(ctx)
            + f"\n[edge]\nid = {q(edge_id(i))}\nlisten = {q(addr(ctx.ports.edge(i)))}\n"
            + f"internal_listen = {q(addr(ctx.ports.edge_internal(i)))}\n"
            + f"allowed_origins = {qlist(origins)}\n"
            + "".join(f"{k} = {v}\n" for k, v in EDGE_LIMIT_PROFILES[ctx.limits].items())
            + trace_section(ctx))


# `./sb up --limits NAME`: the workers' `[limits]` (keys of `workers::settings::Limits`).
# `default` writes no section, so users get the product's limits. `bench` lifts the per-user
# and per-address rate limits that would throttle a load test coming from one machine, and keeps
# sessions for a day so the load generator can reuse its cached sessions between runs.
LIMIT_PROFILES: dict[str, dict[str, int]] = {
    "default": {},
    "bench": {
        "login_failures_per_user_per_address_per_minute": 1_000_000,
        "login_failures_per_user_per_hour": 1_000_000,
        "login_attempts_per_address_per_minute": 1_000_000,
        "signups_per_address_per_minute": 1_000_000,
        "broadcasts_per_user_per_minute": 1_000_000,
        "session_idle_timeout_s": 86_400,
    },
}


# The same profiles for the edges' per-client limits (keys of `edge_ws::EdgeSettings`, written
# into `[edge]`): `bench` lifts the connection caps (loadtest opens 50 sockets per account and
# thousands per source address) and the API rate limits (its account phase checks thousands of
# cached sessions from a few addresses). The per-connection frame rate stays.
EDGE_LIMIT_PROFILES: dict[str, dict[str, int]] = {
    "default": {},
    "bench": {
        "max_connections_per_user": 1_000_000,
        "max_connections_per_address": 1_000_000,
        "api_requests_per_second_per_address": 1_000_000,
        "api_burst_per_address": 1_000_000,
        "api_requests_per_second_per_session": 1_000_000,
        "api_burst_per_session": 1_000_000,
    },
}


def limits_section(profile: str) -> str:
    values = LIMIT_PROFILES[profile]
    if not values:
        return ""
    return "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in values.items())


def trace_section(ctx) -> str:
    """`[trace]`: spans to the platform's Jaeger at `--trace-ratio` (none with --infra-only: no
    Jaeger runs; none at ratio 0: tracing off)."""
    if ctx.infra_only or ctx.trace_ratio == 0:
        return ""
    return (f"\n[trace]\notlp_endpoint = {q(jaeger.otlp_endpoint(ctx.ports))}\n"
            f"sample_ratio = {ctx.trace_ratio}\n")


def service_toml(ctx, svc: str, health_port: int, database: bool) -> str:
    out = _kafka_section(ctx, svc) + "\n" + _redis_section(ctx) + "\n"
    if database:
        out += _database_section(ctx) + "\n"
    out += f"[service]\nname = {q(svc)}\nhealth_listen = {q(addr(health_port))}\n"
    if database and limits_section(ctx.limits):
        out += "\n" + limits_section(ctx.limits)
    return out + trace_section(ctx)


def write_configs(ctx) -> None:
    """conf/<name>.toml for every binary (written even with --infra-only, for running by hand)."""
    hdr = "# written by ./sb up -- edits are overwritten\n"
    conf = ctx.state.conf_dir
    for i in range(ctx.edges):
        write_atomic(os.path.join(conf, f"{edge_id(i)}.toml"), hdr + edge_toml(ctx, i))
    for name, w, j in worker_processes(ctx):
        write_atomic(os.path.join(conf, f"{name}.toml"),
                     hdr + service_toml(ctx, name, ctx.ports.worker_health(w, j), True))
    write_atomic(os.path.join(conf, "router.toml"), hdr + service_toml(ctx, "router", ctx.ports.router_health(), False))
    write_atomic(os.path.join(conf, "migrate.toml"), hdr + _database_section(ctx))


def stack(ctx, edges: list[dict]) -> dict:
    return {
        "kafka": {"brokers": kafka_brokers(ctx), "replication_factor": replication_factor(ctx)},
        "redis": {"nodes": redis_nodes(ctx)},
        "mariadb": {"user": DB_USER, "password": DB_PASSWORD, "database": DB_NAME, "shards": db_shards(ctx),
                    "replication": getattr(ctx, "shard_replication", "async")},
        "nginx": nginx_addrs(ctx),
        "edges": edges,
        "nginx_prefixes": [ctx.state.path(f"nginx-{i}") for i in range(NGINX_INSTANCES)],
    }


def write_stack(ctx) -> None:
    edges = [{"id": c["role"], "addr": c["addr"], "metrics_addr": metrics_addr(c)}
             for c in ctx.state.components if c["kind"] == "edge"]
    out = stack(ctx, edges)
    # where each app process answers /healthz, /readyz and /metrics (operators, probes, tests)
    out["services"] = [{"name": c["name"], "kind": c["kind"], "health_addr": metrics_addr(c)}
                       for c in ctx.state.components if c["kind"] in ("edge", "worker", "router")]
    jg = ctx.state.get("jaeger")
    if jg:
        # where tests and operators find the traces (tools/sb/jaeger.py)
        out["jaeger"] = {"url": f"http://{jg['addr']}", "otlp_endpoint": jaeger.otlp_endpoint(ctx.ports)}
    prom = ctx.state.get("prometheus")
    if prom:
        # where tests and operators query what every process exported (tools/sb/prometheus.py)
        out["prometheus"] = {"url": f"http://{prom['addr']}"}
    write_atomic(ctx.state.stack_file, json.dumps(out, indent=2) + "\n")


# ---------------------------------------------------------------- processes


def _specs(ctx) -> list[dict]:
    """(name, kind, role, binary, port of /healthz[, port of /metrics]) for every app process.
    Edges serve /healthz on their public port and /metrics on their internal one only; workers
    and the router serve both on their health port."""
    out = []
    for i in range(ctx.edges):
        out.append({"name": edge_id(i), "kind": "edge", "role": edge_id(i), "bin": "edge-ws",
                    "port": ctx.ports.edge(i), "metrics_port": ctx.ports.edge_internal(i)})
    for name, w, j in worker_processes(ctx):
        out.append({"name": name, "kind": "worker", "role": w, "bin": f"worker-{w}",
                    "port": ctx.ports.worker_health(w, j)})
    out.append({"name": "router", "kind": "router", "role": "router", "bin": "router", "port": ctx.ports.router_health()})
    return out


def binary_of(name: str) -> str:
    """Binary that runs app component `name` (edge-3 -> edge-ws, worker-dms and worker-dms-2 ->
    worker-dms)."""
    if name.startswith("edge-"):
        return "edge-ws"
    base, _, n = name.rpartition("-")
    return base if name.startswith("worker-") and n.isdigit() else name


def metrics_addr(comp: dict) -> str:
    """Where a component serves /metrics (an edge's internal listener; else its health port)."""
    return comp.get("metrics_addr") or comp["addr"]


def healthy(comp: dict) -> bool:
    """/healthz answers 200 where clients and nginx reach the process and, for an edge, on its
    internal listener too (where its metrics are scraped)."""
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    return all(http_status(f"http://{a}/healthz") == 200 for a in dict.fromkeys([comp["addr"], metrics_addr(comp)]))


def ready(comp: dict) -> bool:
    """/readyz answers 200: the process is built and its dependencies answer. A binary that has
    no /readyz (404: a build from before it existed, e.g. an older tree being benchmarked) counts
    as ready once healthy."""
    return http_status(f"http://{metrics_addr(comp)}/readyz", timeout=3.0) in (200, 404)


def start_and_wait(ctx, timeout: float = 60.0) -> None:
    skipped, started = [], []
    for sp in _specs(ctx):
        if ctx.state.running(sp["name"]):
            continue
        exe = os.path.join(ctx.bin_dir, sp["bin"])
        if not os.access(exe, os.X_OK):
            skipped.append(sp["name"])
            continue
        log = ctx.state.log(sp["name"])
        argv = [exe, "--config", os.path.join(ctx.state.conf_dir, f"{sp['name']}.toml")]
        pid, stt = spawn(argv, log, env=ctx.app_env, cwd=ctx.repo)
        comp = {"name": sp["name"], "kind": sp["kind"], "role": sp["role"], "addr": addr(sp["port"]),
                "metrics_addr": addr(sp.get("metrics_port", sp["port"])), "port": sp["port"],
                "pid": pid, "starttime": stt, "group": "app", "log": log, "bin": exe,
                # how the supervisor starts it again (tools/sb/supervisor.py)
                "argv": argv, "cwd": ctx.repo, "out": log}
        ctx.state.put(comp)
        started.append(comp)
    ctx.state.data["skipped"] = skipped
    ctx.state.save()
    for comp in started:
        ok = wait_until(lambda c=comp: healthy(c), timeout, 0.1,
                        lambda c=comp: not alive(c["pid"], c["starttime"]))
        if not ok:
            state = "exited" if not alive(comp["pid"], comp["starttime"]) else "no 200 from /healthz"
            raise SbError(f"{comp['name']} not healthy ({state}) at http://{comp['addr']}/healthz; "
                          f"log {comp['log']}:\n{tail(comp['log'])}")
        ok = wait_until(lambda c=comp: ready(c), timeout, 0.2,
                        lambda c=comp: not alive(c["pid"], c["starttime"]))
        if not ok:
            raise SbError(f"{comp['name']} not ready at http://{metrics_addr(comp)}/readyz; "
                          f"log {comp['log']}:\n{tail(comp['log'])}")
        line(comp["name"], f"ready at http://{metrics_addr(comp)}/readyz (pid {comp['pid']})", True)
    for sp in _specs(ctx):
        if sp["name"] in skipped:
            line(sp["name"], f"skipped: no {sp['bin']} binary in {ctx.bin_dir}")


def check_bin_dir(ctx) -> None:
    if not os.path.isdir(ctx.bin_dir):
        raise SbError(f"--bin-dir {ctx.bin_dir} is not a directory")
