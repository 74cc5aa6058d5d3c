"""Redis Cluster: 6 redis-server processes (3 masters + 3 replicas) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from ports import REDIS_NODES, addr
from state import write_atomic
from util import SbError, alive, line, spawn, tail, wait_until, which

# ---------------------------------------------------------------- tiny RESP client


def command(port: int, *args: str, timeout: float = 1.0):
    """Send one command, return the decoded reply (str/int/list/None). Raises on error replies."""
    payload = f"*{len(args)}\r\n".encode() + b"".join(
        f"${len(a.encode())}\r\n".encode() + a.encode() + b"\r\n" for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(payload)
        f = s.makefile("rb")
        return _read(f)


def _read(f):
    head = f.readline()
    if not head:
        raise OSError("connection closed")
    kind, rest = head[:1], head[1:-2].decode()
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError(rest)
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise OSError(f"bad RESP reply {head!r}")


def try_command(port: int, *args: str):
    try:
        return command(port, *args)
    except (OSError, RuntimeError, ValueError):
        return None


def cluster_info(port: int) -> dict[str, str]:
    raw = try_command(port, "CLUSTER", "INFO")
    if not raw:
        return {}
    return dict(ln.split(":", 1) for ln in raw.splitlines() if ":" in ln)


def role(port: int) -> str | None:
    r = try_command(port, "ROLE")
    if isinstance(r, list) and r:
        return {"master": "master", "slave": "replica"}.get(r[0], r[0])
    return None


# ---------------------------------------------------------------- lifecycle


def name(i: int) -> str:
    return f"redis-{i}"


def node_dir(ctx, i: int) -> str:
    return ctx.state.path("redis", str(ctx.ports.redis(i)))


def conf(ctx, i: int) -> str:
    port = ctx.ports.redis(i)
    return f"""# written by ./sb up -- edits are overwritten
port {port}
bind 127.0.0.1
protected-mode no
daemonize no
dir {node_dir(ctx, i)}
logfile {ctx.state.log(name(i))}
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 2000
cluster-port {ctx.ports.redis_bus(i)}
appendonly yes
appendfsync everysec
tcp-backlog 511
maxclients 10000
"""


def start(ctx) -> None:
    exe = which("redis-server")
    if not exe:
        raise SbError("redis-server not found")
    started = 0
    for i in range(REDIS_NODES):
        if ctx.state.running(name(i)):
            continue
        d = node_dir(ctx, i)
        os.makedirs(d, exist_ok=True)
        cf = os.path.join(d, "redis.conf")
        write_atomic(cf, conf(ctx, i))
        argv, out = [exe, cf], ctx.state.log(name(i)) + ".out"
        pid, stt = spawn(argv, out, env=ctx.infra_env, cwd=d)
        port = ctx.ports.redis(i)
        # argv, cwd, out: what the supervisor starts again after a crash
        ctx.state.put({"name": name(i), "kind": "redis", "role": "", "addr": addr(port), "port": port,
                       "pid": pid, "starttime": stt, "group": "redis", "log": ctx.state.log(name(i)),
                       "argv": argv, "cwd": d, "out": out})
        started += 1
    line("redis", f"started {started} node(s)" if started else "already running")


def healthy(comp: dict) -> bool:
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    return cluster_info(comp["port"]).get("cluster_state") == "ok"


def wait(ctx, timeout: float = 60.0) -> None:
    ports = [ctx.ports.redis(i) for i in range(REDIS_NODES)]
    comps = [ctx.state.get(name(i)) for i in range(REDIS_NODES)]
    for c in comps:
        if not wait_until(lambda c=c: try_command(c["port"], "PING") == "PONG", 20, 0.05,
                          lambda c=c: not alive(c["pid"], c["starttime"])):
            raise SbError(f"{c['name']} does not answer PING on {c['addr']}; log {c['log']}:\n{tail(c['log'])}")
    infos = [cluster_info(p) for p in ports]
    known = [int(i.get("cluster_known_nodes", "0")) for i in infos]
    assigned = [int(i.get("cluster_slots_assigned", "0")) for i in infos]
    if all(k == 1 for k in known) and all(a == 0 for a in assigned):
        cli = which("redis-cli")
        if not cli:
            raise SbError("redis-cli not found")
        cmd = [cli, "--cluster", "create", *[addr(p) for p in ports], "--cluster-replicas", "1", "--cluster-yes"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise SbError("redis cluster create failed:\n  " + " ".join(cmd) + "\n" + (r.stdout + r.stderr)[-3000:])
        line("redis", "cluster created (3 masters + 3 replicas)")
    elif not all(k >= REDIS_NODES for k in known):
        raise SbError(
            f"redis nodes are in a partial cluster state (known nodes per node: {known}); "
            f"`./sb down --purge` resets it"
        )
    t = time.monotonic()
    ok = wait_until(lambda: all(cluster_info(p).get("cluster_state") == "ok" for p in ports), timeout, 0.1)
    if not ok:
        raise SbError(f"redis cluster_state not ok after {time.monotonic() - t:.0f}s: "
                      + ", ".join(f"{p}={cluster_info(p).get('cluster_state')}" for p in ports))
    # the cluster agrees once every node knows the full slot map; wait for 3 masters to be visible
    wait_until(lambda: sum(1 for p in ports if role(p) == "master") == REDIS_NODES // 2, 15, 0.1)
    roles = [role(p) for p in ports]
    for c, r in zip(comps, roles):
        c["role"] = r or ""
        ctx.state.put(c)
    line("redis", f"cluster_state:ok on {addr(ports[0])}..{ports[-1]} "
                  f"({roles.count('master')} masters, {roles.count('replica')} replicas)", True)
