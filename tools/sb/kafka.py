"""Apache Kafka in KRaft mode from Maven Central jars (see tools/kafka/pom.xml)."""

from __future__ import annotations

import base64
import fcntl
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid

from ports import addr
from state import REPO, write_atomic
from util import SbError, alive, line, spawn, tail, wait_until, which

POM = os.path.join(REPO, "tools", "kafka", "pom.xml")
JAVA_HEAP = ["-Xms256m", "-Xmx1g"]
JAVA_OPTS = [
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
]


# ---------------------------------------------------------------- jars


def version() -> str:
    with open(POM) as f:
        m = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", f.read())
    if not m:
        raise SbError(f"no <kafka.version> in {POM}")
    return m.group(1)


def cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "switchboard")


def libs_dir() -> str:
    """~/.cache/switchboard/kafka-<version>/libs, fetched with Maven once and reused."""
    v = version()
    home = os.path.join(cache_root(), f"kafka-{v}")
    libs = os.path.join(home, "libs")
    done = os.path.join(home, ".complete")
    if os.path.exists(done):
        return libs
    os.makedirs(home, exist_ok=True)
    with open(os.path.join(home, ".lock"), "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)  # a concurrent ./sb up (other state dir) may be fetching
        if os.path.exists(done):
            return libs
        if not which("mvn"):
            raise SbError("maven (mvn) is needed to fetch Kafka jars")
        line("kafka", f"fetching kafka_2.13 {v} jars from Maven Central (once) -> {libs}")
        t = time.monotonic()
        tmp = libs + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["mvn", "-q", "-B", "-f", POM, "dependency:copy-dependencies",
               "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not any(n.startswith("kafka_2.13-") for n in os.listdir(tmp) if os.path.isdir(tmp)):
            raise SbError("Maven could not fetch Kafka:\n  " + " ".join(cmd) + "\n" + (r.stdout + r.stderr)[-3000:])
        shutil.rmtree(libs, ignore_errors=True)
        os.rename(tmp, libs)
        write_atomic(done, v + "\n")
        line("kafka", f"jars fetched in {time.monotonic() - t:.1f}s ({len(os.listdir(libs))} jars)", True)
    return libs


# ---------------------------------------------------------------- config


def cluster_dir(ctx) -> str:
    # one directory per layout, so switching between 1 and 3 brokers never mixes cluster ids
    return ctx.state.path(f"kafka-{ctx.kafka_brokers}b")


def node_dir(ctx, i: int) -> str:
    return os.path.join(cluster_dir(ctx), f"node-{i}")


def brokers_string(ports, n: int) -> str:
    return ",".join(addr(ports.kafka_client(i)) for i in range(n))


def _cluster_id(ctx) -> str:
    p = os.path.join(cluster_dir(ctx), "cluster.id")
    if os.path.exists(p):
        return open(p).read().strip()
    while True:  # Kafka's Uuid.randomUuid(): base64url, no padding, must not start with '-'
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            break
    write_atomic(p, cid + "\n")
    return cid


def server_properties(ctx, i: int) -> str:
    n, ports = ctx.kafka_brokers, ctx.ports
    rf = 3 if n == 3 else 1
    isr = 2 if n == 3 else 1
    voters = ",".join(f"{j + 1}@127.0.0.1:{ports.kafka_controller(j)}" for j in range(n))
    data = os.path.join(node_dir(ctx, i), "data")
    return f"""# written by ./sb up -- edits are overwritten
process.roles=broker,controller
node.id={i + 1}
controller.quorum.voters={voters}
listeners=PLAINTEXT://127.0.0.1:{ports.kafka_client(i)},CONTROLLER://127.0.0.1:{ports.kafka_controller(i)}
advertised.listeners=PLAINTEXT://127.0.0.1:{ports.kafka_client(i)}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data}
metadata.log.dir={data}
num.partitions=6
default.replication.factor={rf}
min.insync.replicas={isr}
offsets.topic.replication.factor={rf}
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={isr}
share.coordinator.state.topic.replication.factor={rf}
share.coordinator.state.topic.min.isr={isr}
auto.create.topics.enable=false
group.initial.rebalance.delay.ms=0
unclean.leader.election.enable=false
# A broker that stops heartbeating is fenced after this (KRaft default 9 s) and its partitions get
# new leaders; until then publishes to them wait, and past the producers' message.timeout.ms (5 s)
# they fail. 3 s keeps the move inside that (docs/reliability.md). Only matters with 3 brokers.
broker.session.timeout.ms=3000
broker.heartbeat.interval.ms=500
"""


def log4j2_properties(log_file: str) -> str:
    return f"""# written by ./sb up
status = warn
name = switchboard-kafka
# keep logging while Kafka runs its own shutdown hook
shutdownHook = disable
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = {log_file}
appender.file.filePattern = {log_file}.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


# ---------------------------------------------------------------- protocol probe


def metadata_brokers(port: int, timeout: float = 1.0) -> list[int] | None:
    """Metadata v4 request (all topics). Returns the broker ids the node reports, None on failure."""
    client = b"sb"
    body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            size = struct.unpack(">i", _recv(s, 4))[0]
            buf = _recv(s, size)
    except (OSError, struct.error):
        return None
    try:
        corr, _throttle, nb = struct.unpack_from(">iii", buf, 0)
        if corr != 7:
            return None
        off, ids = 12, []
        for _ in range(nb):
            (node,) = struct.unpack_from(">i", buf, off)
            off += 4
            (hl,) = struct.unpack_from(">h", buf, off)
            off += 2 + hl + 4
            (rl,) = struct.unpack_from(">h", buf, off)
            off += 2 + max(rl, 0)
            ids.append(node)
        return sorted(ids)
    except struct.error:
        return None


def _recv(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise OSError("closed")
        out += chunk
    return out


# ---------------------------------------------------------------- lifecycle


def name(i: int) -> str:
    return f"kafka-{i}"


def start(ctx) -> None:
    """Format (first time) and launch every broker that is not already running. Non-blocking."""
    to_start = [i for i in range(ctx.kafka_brokers) if not ctx.state.running(name(i))]
    if not to_start:
        line("kafka", "already running")
        return
    libs = libs_dir()
    java = which("java")
    if not java:
        raise SbError("java not found")
    cp = os.path.join(libs, "*")
    cid = _cluster_id(ctx)
    formats = []
    for i in to_start:
        nd = node_dir(ctx, i)
        os.makedirs(os.path.join(nd, "data"), exist_ok=True)
        props = os.path.join(nd, "server.properties")
        write_atomic(props, server_properties(ctx, i))
        write_atomic(os.path.join(nd, "log4j2.properties"), log4j2_properties(ctx.state.log(name(i))))
        if not os.path.exists(os.path.join(nd, "data", "meta.properties")):
            fmt = [java, f"-Dlog4j2.configurationFile={os.path.join(nd, 'log4j2.properties')}", "-cp", cp,
                   "kafka.tools.StorageTool", "format", "-t", cid, "-c", props, "--ignore-formatted"]
            formats.append((i, subprocess.Popen(fmt, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    for i, p in formats:
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SbError(f"kafka StorageTool format failed for node {i}:\n{out[-2000:]}")
    if formats:
        line("kafka", f"formatted {len(formats)} node(s), cluster id {cid}")
    for i in to_start:
        nd = node_dir(ctx, i)
        argv = [java, *JAVA_HEAP, *JAVA_OPTS,
                f"-Dlog4j2.configurationFile={os.path.join(nd, 'log4j2.properties')}",
                "-cp", cp, "kafka.Kafka", os.path.join(nd, "server.properties")]
        out = ctx.state.log(name(i)) + ".out"
        pid, stt = spawn(argv, out, env=ctx.infra_env, cwd=nd)
        port = ctx.ports.kafka_client(i)
        # argv, cwd, out: what the supervisor starts again after a crash
        ctx.state.put({"name": name(i), "kind": "kafka", "role": "broker,controller", "addr": addr(port),
                       "port": port, "pid": pid, "starttime": stt, "group": "kafka",
                       "log": ctx.state.log(name(i)), "argv": argv, "cwd": nd, "out": out})
    line("kafka", f"started {len(to_start)} broker(s) (kafka_2.13 {version()})")


def healthy(comp: dict, expected: int) -> bool:
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    ids = metadata_brokers(comp["port"])
    return ids is not None and len(ids) >= expected


def wait(ctx, timeout: float = 90.0) -> None:
    t = time.monotonic()
    for i in range(ctx.kafka_brokers):
        c = ctx.state.get(name(i))

        def dead(c=c):
            return not alive(c["pid"], c["starttime"])

        if not wait_until(lambda c=c: healthy(c, ctx.kafka_brokers), timeout, 0.2, dead):
            raise SbError(f"{name(i)} not healthy on {c['addr']} after {time.monotonic() - t:.0f}s; "
                          f"log {c['log']}:\n{tail(c['log'])}\n{tail(c['log'] + '.out', 10)}")
    n = ctx.kafka_brokers
    line("kafka", f"{n} broker(s) healthy at {brokers_string(ctx.ports, n)} (RF {3 if n == 3 else 1})", True)
