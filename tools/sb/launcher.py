"""`./sb up`, `./sb down`, `./sb status`: orchestration over the component modules."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import jaeger
import kafka
import mariadb
import nginx
import prometheus
import redis
import services
import supervisor
import web
from ports import MAX_EDGES, NGINX_INSTANCES, Ports
from state import REPO, State
from util import (SYSTEM_COMMANDS, SbError, alive, ensure_packages, info, line, port_free, port_owner, spawn,
                  stop_many, warn)


class Ctx:
    """Everything a component module needs for one invocation."""

    def __init__(self, state: State, ports: Ports, kafka_brokers: int, edges: int, infra_only: bool,
                 bin_dir: str, release: bool, limits: str = "default", workers: dict[str, int] | None = None,
                 trace_ratio: float = jaeger.SAMPLE_RATIO, shard_replication: str = "async"):
        self.repo = REPO
        self.state = state
        self.ports = ports
        self.kafka_brokers = kafka_brokers
        self.edges = edges
        self.infra_only = infra_only
        self.bin_dir = bin_dir
        self.release = release
        self.limits = limits  # a key of services.LIMIT_PROFILES
        self.workers = workers or {}  # processes per worker role (`--workers`; a missing role: 1)
        self.trace_ratio = trace_ratio  # the apps' [trace] sample_ratio (`--trace-ratio`; 0: no [trace])
        self.shard_replication = shard_replication  # `--shard-replication`: async or galera (tools/sb/mariadb.py)
        self.infra_env = dict(os.environ)
        self.app_env = dict(os.environ)
        self.app_env.setdefault("RUST_LOG", "info")
        self.app_env.setdefault("NO_COLOR", "1")  # plain log files (tracing-subscriber honours NO_COLOR)
        # glibc: allocations from 1 MiB up are mmapped and go back to the OS when freed. Without a
        # fixed threshold glibc raises it to the largest block freed, and every Argon2 hash (19 MiB)
        # then stays in the heap: worker-users was at 738 MiB after 200 sign-ups (16 MiB after 300 with it).
        self.app_env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))


def _rel(path: str) -> str:
    try:
        r = os.path.relpath(path)
        return r if not r.startswith("../..") else path
    except ValueError:
        return path


def default_bin_dir(release: bool) -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    if not os.path.isabs(target):
        target = os.path.join(REPO, target)
    return os.path.join(target, "release" if release else "debug")


# ---------------------------------------------------------------- up


def up(args) -> int:
    t0 = time.monotonic()
    if args.kafka_brokers not in (1, 3):
        raise SbError("--kafka-brokers must be 1 or 3")
    if not 1 <= args.edges <= MAX_EDGES:
        raise SbError(f"--edges must be 1..{MAX_EDGES}")
    ports = Ports(args.port_offset)
    state = State(args.state_dir)
    state.lock()
    state.load()
    bin_dir = os.path.abspath(args.bin_dir) if args.bin_dir else default_bin_dir(args.release)
    workers = services.parse_workers(args.workers)
    args.shard_replication = mariadb.replication_for(state, args.shard_replication)
    ctx = Ctx(state, ports, args.kafka_brokers, args.edges, args.infra_only, bin_dir, args.release, args.limits,
              workers, args.trace_ratio, args.shard_replication)

    # --- already running? -----------------------------------------------------------------
    running_before = state.any_running()
    if running_before:
        old = state.layout
        for key, new in (("port_offset", args.port_offset), ("kafka_brokers", args.kafka_brokers),
                         ("edges", args.edges), ("limits", args.limits), ("workers", workers),
                         ("trace_ratio", args.trace_ratio), ("shard_replication", args.shard_replication)):
            if key in old and old[key] != new and not (key in ("edges", "workers") and args.infra_only):
                raise SbError(f"a platform is running from {_rel(state.dir)} with {key}={old[key]} "
                              f"(asked for {new}); run `./sb down` first")
        dead = [c["name"] for c in state.components if not alive(c.get("pid"), c.get("starttime"))]
        buildable = [n for n in state.data.get("skipped", [])
                     if os.access(os.path.join(bin_dir, services.binary_of(n)), os.X_OK)]
        wants_apps = not args.infra_only and (old.get("infra_only", False) or buildable)
        if not dead and not wants_apps:
            info(f"Switchboard is already running from {_rel(state.dir)} -- not starting a second one.")
            if not args.infra_only:
                try:
                    web.build()  # nginx serves web/dist as it is on disk: a rebuild is live at once
                except SbError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 1
            status_table(state)
            _print_connect(state, ctx)
            return 0
        if dead:
            info(f"restarting dead component(s): {', '.join(dead)}")
    try:
        _preflight(ctx)
    except SbError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    state.data["layout"] = {"port_offset": args.port_offset, "kafka_brokers": args.kafka_brokers,
                            "edges": args.edges, "limits": args.limits, "workers": workers,
                            "trace_ratio": args.trace_ratio, "shard_replication": args.shard_replication,
                            "infra_only": args.infra_only and (not running_before
                                                               or state.layout.get("infra_only", True)),
                            "bin_dir": bin_dir}
    state.data.setdefault("started_at", time.strftime("%Y-%m-%dT%H:%M:%S"))
    state.save()
    info(f"Switchboard up: state {_rel(state.dir)}, port offset {args.port_offset}, "
         f"{args.kafka_brokers} Kafka broker(s), " + ("infra only" if args.infra_only else f"{args.edges} edge(s)")
         + ("" if args.infra_only or set(workers.values()) == {1}
            else ", worker processes " + ",".join(f"{w}={n}" for w, n in workers.items()))
         + ("" if args.limits == "default" else f", {args.limits} limits")
         + f", {args.shard_replication} shards")

    try:
        ensure_packages(SYSTEM_COMMANDS)
        if not args.infra_only:
            if args.bin_dir:
                services.check_bin_dir(ctx)
            else:
                _cargo_build(args.release)
            web.build()
        os.makedirs(state.logs_dir, exist_ok=True)
        services.write_configs(ctx)
        # spawn the three infrastructure services first, then wait for each in order
        kafka.start(ctx)
        redis.start(ctx)
        mariadb.start(ctx)
        kafka.wait(ctx)
        redis.wait(ctx)
        mariadb.wait(ctx)
        mariadb.migrate(ctx)
        services.write_stack(ctx)
        if not args.infra_only:
            # before the app processes, so their first spans have somewhere to go
            jaeger.start_and_wait(ctx)
            services.start_and_wait(ctx)
        nginx.start_and_wait(ctx)
        if not args.infra_only:
            prometheus.start_and_wait(ctx)
            _start_discovery(ctx)
            _start_supervisor(ctx)
        services.write_stack(ctx)
    except (SbError, KeyboardInterrupt) as e:
        if isinstance(e, KeyboardInterrupt):
            warn("interrupted")
        else:
            line("up", "failed", False)
            print(f"error: {e}", file=sys.stderr)
        if state.any_running():
            info(f"Components started so far are still running (logs in {_rel(state.logs_dir)}); "
                 f"`./sb down{_state_flag(args)}` stops them.")
        return 1

    total = time.monotonic() - t0
    info("")
    info(f"Switchboard is up: healthy in {total:.1f}s")
    _print_connect(state, ctx)
    return 0


def _start_discovery(ctx: Ctx) -> None:
    """The loop that keeps nginx's upstreams in step with the live edges (tools/sb/discovery.py)."""
    if ctx.state.running("discovery"):
        line("discovery", "already running", True)
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "discovery.py")
    argv, log = [sys.executable, script, ctx.state.dir], ctx.state.log("discovery")
    pid, stt = spawn(argv, log)
    ctx.state.put({"name": "discovery", "kind": "discovery", "role": "nginx-upstreams", "addr": "-", "port": 0,
                   "pid": pid, "starttime": stt, "group": "app", "log": log, "argv": argv, "out": log})
    line("discovery", "nginx upstreams follow the live edges (checked every second)", True)


def _start_supervisor(ctx: Ctx) -> None:
    """The loop that starts crashed platform processes again (tools/sb/supervisor.py). It inherits
    the environment the app processes got, so a restarted one runs exactly as the first."""
    if ctx.state.running("supervisor"):
        line("supervisor", "already running", True)
        return
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "supervisor.py")
    log = ctx.state.log("supervisor")
    pid, stt = spawn([sys.executable, "-B", script, ctx.state.dir], log, env=ctx.app_env)
    ctx.state.put({"name": "supervisor", "kind": "supervisor", "role": "restarts", "addr": "-", "port": 0,
                   "pid": pid, "starttime": stt, "group": "supervisor", "log": log})
    line("supervisor", "restarts crashed edges, workers, router, nginx, discovery, prometheus, jaeger, Redis, MariaDB, "
         "Kafka "
         "(backoff up to "
         f"{supervisor.BACKOFF_CAP:.0f}s; gives up on a crash loop)", True)


def _state_flag(args) -> str:
    flags = ""
    if getattr(args, "state_dir_given", False):
        flags += f" --state-dir {_rel(args.state_dir)}"
    elif args.port_offset:
        flags += f" --port-offset {args.port_offset}"
    return flags


def _print_connect(state: State, ctx: Ctx) -> None:
    urls = [f"http://127.0.0.1:{ctx.ports.nginx(i)}/" for i in range(NGINX_INSTANCES)]
    if os.path.exists(os.path.join(web.WEB, "dist", "index.html")):
        info(f"  web client: {urls[0]}  (open it in a browser; also on {urls[1]})")
    info("  connect:    " + "  ".join(urls) + f"   (WebSocket path /ws, e.g. ws://127.0.0.1:{ctx.ports.nginx(0)}/ws)")
    if ctx.state.get(prometheus.NAME):
        info(f"  prometheus: {prometheus.url(ctx)}/  (every process' /metrics, rules of observability/rules/; "
             f"alerts at {prometheus.url(ctx)}/alerts)")
    if ctx.state.get(jaeger.NAME):
        info(f"  jaeger:     {jaeger.url(ctx)}/api/traces?service=edge-0  (its query API, JSON; traces "
             f"sampled at {ctx.trace_ratio:g})")
    info(f"  stack file: {_rel(state.stack_file)}")
    info(f"  configs:    {_rel(state.conf_dir)}/   logs: {_rel(state.logs_dir)}/")
    if state.data.get("skipped"):
        info(f"  not started (no binary yet): {', '.join(state.data['skipped'])}")


def _preflight(ctx: Ctx) -> None:
    """Every port we are about to listen on must be free (or held by our own running component)."""
    ours = {c["port"] for c in ctx.state.components if alive(c.get("pid"), c.get("starttime"))}
    # an edge's internal listener (/metrics, /readyz) is ours too
    ours |= {int(c["metrics_addr"].rsplit(":", 1)[1]) for c in ctx.state.components
             if c.get("metrics_addr") and alive(c.get("pid"), c.get("starttime"))}
    # controller / bus ports of running components are ours too
    for c in ctx.state.components:
        if alive(c.get("pid"), c.get("starttime")):
            if c["kind"] == "kafka":
                ours.add(c["port"] + 1)
            if c["kind"] == "redis":
                ours.add(c["port"] + (ctx.ports.redis_bus(0) - ctx.ports.redis(0)))
            if c["kind"] == "mariadb" and c.get("role") == "node":  # its Galera, IST and SST ports
                ours |= {ctx.ports.galera(c["shard"], c["node"]) + k for k in range(3)}
    busy = []
    for group, plist in ctx.ports.all_listening(ctx.kafka_brokers, ctx.edges, not ctx.infra_only,
                                                ctx.workers, mariadb.galera(ctx)).items():
        for p in plist:
            if p not in ours and not port_free(p):
                busy.append(f"{group} port {p}: {port_owner(p)}")
    if busy:
        raise SbError("ports already in use (another platform? try --port-offset):\n  " + "\n  ".join(busy))


def _cargo_build(release: bool) -> None:
    cmd = ["cargo", "build", "--bins"] + (["--release"] if release else [])
    line("build", " ".join(cmd))
    t = time.monotonic()
    if subprocess.run(cmd, cwd=REPO).returncode != 0:
        raise SbError(f"`{' '.join(cmd)}` failed")
    line("build", f"done in {time.monotonic() - t:.1f}s", True)


# ---------------------------------------------------------------- down

# The supervisor first, so that nothing it watches is started again while it is being stopped
# (it also never acts while `down` holds the state dir's lock).
STOP_ORDER = [("supervisor", 10.0), ("app", 15.0), ("prometheus", 10.0), ("jaeger", 10.0), ("nginx", 10.0), ("mariadb", 60.0), ("redis", 30.0),
              ("kafka", 60.0)]


def down(args) -> int:
    t0 = time.monotonic()
    state = State(args.state_dir)
    if not os.path.isdir(state.dir):
        info(f"nothing to stop ({_rel(state.dir)} does not exist)")
        return 0
    state.lock()
    state.load()
    comps = state.components
    if not comps:
        info(f"nothing running from {_rel(state.dir)}")
    for group, timeout in STOP_ORDER:
        members = [c for c in comps if c.get("group") == group]
        live = [c for c in members if alive(c.get("pid"), c.get("starttime"))]
        # in waves (`stop_wave`, default 0): a Galera shard's node 0 leaves last, so that it is
        # the one marked safe to bootstrap the cluster again (tools/sb/mariadb.py)
        for wave in sorted({c.get("stop_wave", 0) for c in live}):
            batch = [c for c in live if c.get("stop_wave", 0) == wave]
            killed = stop_many([(c["name"], c["pid"], c.get("starttime")) for c in batch], signal.SIGTERM, timeout)
            extra = f" (SIGKILL after {timeout:.0f}s: {', '.join(killed)})" if killed else ""
            line(group if group != "app" else "switchboard", f"stopped {len(batch)} process(es){extra}", True)
        for c in members:
            state.remove(c["name"])
    # anything recorded outside the known groups
    rest = [c for c in state.components if alive(c.get("pid"), c.get("starttime"))]
    if rest:
        stop_many([(c["name"], c["pid"], c.get("starttime")) for c in rest], signal.SIGTERM, 15)
    state.data["components"] = []
    state.data.pop("skipped", None)
    state.data.pop("started_at", None)
    state.save()
    try:
        os.remove(state.stack_file)
    except FileNotFoundError:
        pass
    if args.purge:
        shutil.rmtree(state.dir)
        line("purge", f"removed {_rel(state.dir)}", True)
    info(f"down in {time.monotonic() - t0:.1f}s")
    return 0


# ---------------------------------------------------------------- status


def _check(state: State, c: dict) -> dict:
    kind = c["kind"]
    role = c.get("role", "")
    if kind == "kafka":
        ok = kafka.healthy(c, int(state.layout.get("kafka_brokers", 1)))
    elif kind == "redis":
        ok = redis.healthy(c)
        role = (redis.role(c["port"]) if ok or alive(c.get("pid"), c.get("starttime")) else None) or role
    elif kind == "mariadb":
        ok = mariadb.healthy(c)
        if c.get("role") == "node":
            role = mariadb.node_role(state, c, ok)
    elif kind == "nginx":
        ok = nginx.healthy(c, any(x["kind"] == "edge" for x in state.components))
    elif kind in ("discovery", "supervisor"):
        ok = alive(c.get("pid"), c.get("starttime"))
    elif kind == "prometheus":
        ok = prometheus.healthy(c)
    elif kind == "jaeger":
        ok = jaeger.healthy(c)
    else:
        ok = services.healthy(c) and services.ready(c)
    row = {"name": c["name"], "kind": kind, "role": role, "addr": c["addr"], "pid": c["pid"], "healthy": bool(ok)}
    if kind in ("edge", "worker", "router"):
        row["metrics_addr"] = services.metrics_addr(c)
    if kind in supervisor.SUPERVISED:
        # restarts by the supervisor since `./sb up` started this process; gave_up: a crash loop
        row["restarts"] = int(c.get("restarts", 0))
        row["gave_up"] = bool(c.get("gave_up"))
    return row


KIND_ORDER = ["kafka", "redis", "mariadb", "edge", "worker", "router", "nginx", "prometheus", "jaeger", "discovery",
              "supervisor"]


def collect(state: State) -> list[dict]:
    comps = sorted(state.components, key=lambda c: KIND_ORDER.index(c["kind"]) if c["kind"] in KIND_ORDER else 99)
    with ThreadPoolExecutor(max_workers=8) as ex:
        return list(ex.map(lambda c: _check(state, c), comps))


def status_table(state: State, rows: list[dict] | None = None) -> bool:
    rows = collect(state) if rows is None else rows
    hdr = ("NAME", "KIND", "ROLE", "ADDR", "METRICS", "PID", "RESTARTS", "HEALTHY")
    table = [hdr] + [(r["name"], r["kind"], r["role"], r["addr"], r.get("metrics_addr", "-"), str(r["pid"]),
                      str(r["restarts"]) if "restarts" in r else "-",
                      "NO (crash loop)" if r.get("gave_up") else "yes" if r["healthy"] else "NO")
                     for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(hdr))]
    for row in table:
        info("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())
    looping = [r["name"] for r in rows if r.get("gave_up")]
    if looping:
        info(f"the supervisor gave up on {', '.join(looping)} (crash loop; see {_rel(state.log('supervisor'))}); "
             "`./sb up` starts it again")
    return all(r["healthy"] for r in rows)


def status(args) -> int:
    state = State(args.state_dir)
    state.load()
    rows = collect(state) if state.components else []
    if args.json:
        print(json.dumps({"components": rows}))
    else:
        if not rows:
            info(f"not running (state dir {_rel(state.dir)})")
        else:
            status_table(state, rows)
            if state.data.get("skipped"):
                info(f"not started (no binary): {', '.join(state.data['skipped'])}")
    return 0 if rows and all(r["healthy"] for r in rows) else 1
