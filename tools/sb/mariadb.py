"""MariaDB shards, plus running sb-migrate. Each shard is either (`--shard-replication galera`, the
default) a Galera cluster of two data nodes and an arbitrator (garbd), so that losing one data node
keeps a majority (2 of 3), or (`async`) a primary + a GTID replica on the same ports.

Galera: the first start bootstraps node 0 (`--wsrep-new-cluster`) and the others join it (a full state
transfer, SST, by mariabackup). The command line recorded for the supervisor never bootstraps: a node it starts again
joins the running cluster at the position `--wsrep-recover` finds (IST from the other node: `rejoin_args`). When no node of a shard runs (`./sb down`,
or both lost), `./sb up` bootstraps the node that can (`safe_to_bootstrap: 1` in its grastate.dat,
else the highest position `mariadbd --wsrep-recover` finds) and the others join it."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from ports import MARIADB_SHARDS, addr
from state import write_atomic
from util import SbError, alive, ensure_packages, line, port_free, spawn, tail, wait_until, warn, which

DB_USER = "switchboard"
DB_PASSWORD = "switchboard"
DB_NAME = "switchboard"
REPL_USER = "repl"
REPL_PASSWORD = "switchboard-repl"


REPLICATIONS = ("async", "galera")
# What a state dir without MariaDB data gets when `--shard-replication` is not given: the mode in
# which losing a shard's writer loses no acknowledged write and needs no person.
DEFAULT_REPLICATION = "galera"
GALERA_PROVIDER = "/usr/lib/galera/libgalera_smm.so"
GALERA_COMMANDS = {"garbd": "galera-arbitrator-4", "mariabackup": "mariadb-backup", "socat": "socat"}
# Galera's failure detection, tightened for loopback (the default, 5 s to suspect a silent node,
# is for real networks): a killed node leaves the cluster's view after ~1.5-3 s, during which the
# survivor's commits wait. The view installation keeps its default timeout (7.5 s): at 3 s, on a
# loaded machine, a node's rejoin once left the survivor outside the primary component for 2 s.
GALERA_EVS = ("evs.keepalive_period=PT0.5S;evs.suspect_timeout=PT1.5S;evs.inactive_timeout=PT10S;"
              "evs.inactive_check_period=PT0.5S")
# No automatic recovery of the last primary component (gvwstate.dat): with it, a node started
# again within seconds came back under its old identity, which the others had just dropped, and
# the survivor fell out of the primary component for 2 s. A full-cluster restart is `./sb up`'s
# job (pick_bootstrap).
GALERA_PC = "pc.recovery=FALSE"


def galera(ctx) -> bool:
    return getattr(ctx, "shard_replication", "async") == "galera"


def name(shard: int, replica: bool, ctx=None) -> str:
    if ctx is not None and galera(ctx):
        return f"mariadb-shard{shard}-node{1 if replica else 0}"
    return f"mariadb-shard{shard}-{'replica' if replica else 'primary'}"


def garbd_name(shard: int) -> str:
    return f"mariadb-shard{shard}-garbd"


def instances():
    for s in range(MARIADB_SHARDS):
        for r in (False, True):
            yield s, r


def inst_dir(ctx, shard: int, replica: bool) -> str:
    return ctx.state.path("mariadb", name(shard, replica, ctx))


def cnf_path(ctx, shard: int, replica: bool) -> str:
    return os.path.join(inst_dir(ctx, shard, replica), "my.cnf")


def server_id(shard: int, replica: bool) -> int:
    return 1 + 2 * shard + (1 if replica else 0)


def cnf(ctx, shard: int, replica: bool) -> str:
    d = inst_dir(ctx, shard, replica)
    port = ctx.ports.mariadb(shard, replica)
    sock = os.path.join(d, "mysqld.sock")
    return f"""# written by ./sb up -- edits are overwritten
[client]
user = root
socket = {sock}
port = {port}

[mysqld]
user = {pwd.getpwuid(os.geteuid()).pw_name}
bind-address = 127.0.0.1
port = {port}
socket = {sock}
pid-file = {os.path.join(d, 'mysqld.pid')}
datadir = {os.path.join(d, 'data')}
tmpdir = {os.path.join(d, 'tmp')}
log-error = {ctx.state.log(name(shard, replica, ctx))}
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
max_connections = 500
# Workers keep up to 512 prepared statements per connection (batched statements differ by their
# row count); the default server-wide cap of 16,382 could be reached by one busy worker-dms.
max_prepared_stmt_count = 262144
server_id = {server_id(shard, replica)}
binlog_format = ROW
{galera_cnf(ctx, shard, replica) if galera(ctx) else gtid_cnf(replica)}
# durability
innodb_flush_log_at_trx_commit = 1
innodb_buffer_pool_size = 256M
"""


def gtid_cnf(replica: bool) -> str:
    return f"""# replication (GTID)
log_bin = mysql-bin
log_slave_updates = 1
sync_binlog = 1
relay_log = relay-bin
gtid_strict_mode = 1
{'read_only = 1' if replica else '# primary: writable'}"""


def cluster_address(ctx, shard: int) -> str:
    return "gcomm://" + ",".join(addr(ctx.ports.galera(shard, n)) for n in (0, 1, 2))


def galera_cnf(ctx, shard: int, replica: bool) -> str:
    g = ctx.ports.galera(shard, 1 if replica else 0)
    return f"""# Galera: one synchronous cluster per shard (two data nodes and garbd); both nodes writable.
# No binary log: Galera replicates write sets itself, and a commit is durable once certified and
# received by the other node.
wsrep_on = ON
wsrep_provider = {GALERA_PROVIDER}
wsrep_cluster_name = sb-shard{shard}
wsrep_cluster_address = {cluster_address(ctx, shard)}
wsrep_node_name = {name(shard, replica, ctx)}
wsrep_node_address = 127.0.0.1:{g}
wsrep_provider_options = "gmcast.listen_addr=tcp://127.0.0.1:{g};ist.recv_addr=127.0.0.1:{g + 1};gcache.size=256M;{GALERA_EVS};{GALERA_PC}"
wsrep_sst_receive_address = 127.0.0.1:{g + 2}
# full state transfer (a new or long-gone node) by mariabackup, streamed with socat; rsync's
# daemon, started as root, writes as `nobody` and cannot open the joiner's files
wsrep_sst_method = mariabackup
wsrep_sst_auth = root:
innodb_autoinc_lock_mode = 2"""


def sql(ctx, shard: int, replica: bool, query: str, timeout: float = 30) -> str:
    """Run SQL as root over the instance's unix socket; returns tab-separated output."""
    cmd = [which("mariadb") or "mariadb", f"--defaults-file={cnf_path(ctx, shard, replica)}",
           "-N", "-B", "--connect-timeout=2", "-e", query]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SbError(f"{name(shard, replica, ctx)}: SQL failed: {query[:200]}\n{r.stderr.strip()}")
    return r.stdout


def _ping(cnf_file: str) -> bool:
    cmd = [which("mariadb-admin") or "mariadb-admin", f"--defaults-file={cnf_file}", "--connect-timeout=1", "ping"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=5).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def slave_status(cnf_file: str) -> dict[str, str]:
    cmd = [which("mariadb") or "mariadb", f"--defaults-file={cnf_file}", "--connect-timeout=1",
           "-e", "SHOW SLAVE STATUS\\G"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return {}
    out = {}
    for ln in r.stdout.splitlines():
        if ":" in ln:
            k, v = ln.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def wsrep_status(cnf_file: str) -> dict[str, str]:
    """The node's `wsrep_%` status variables (empty when it does not answer)."""
    cmd = [which("mariadb") or "mariadb", f"--defaults-file={cnf_file}", "--connect-timeout=1", "-N", "-B",
           "-e", "SHOW GLOBAL STATUS LIKE 'wsrep_%'"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
    except subprocess.TimeoutExpired:
        return {}
    return dict(ln.split("\t", 1) for ln in r.stdout.splitlines() if "\t" in ln)


def synced(st: dict[str, str]) -> bool:
    """A Galera node that serves: in the primary component and Synced (local state 4)."""
    return st.get("wsrep_ready") == "ON" and st.get("wsrep_local_state") == "4"


def healthy(comp: dict) -> bool:
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    if comp["role"] == "arbitrator":
        return not port_free(comp["port"])
    if comp["role"] == "node":
        return synced(wsrep_status(comp["cnf"]))
    if comp["role"] == "primary":
        return _ping(comp["cnf"])
    st = slave_status(comp["cnf"])
    return st.get("Slave_IO_Running") == "Yes" and st.get("Slave_SQL_Running") == "Yes"


def _marker(ctx) -> str:
    """The file that records which replication the shards' datadirs were made for."""
    return ctx.state.path("mariadb", "replication")


def _recorded(state) -> tuple[str | None, bool]:
    """The replication a state dir's MariaDB data was made for (its marker; None for a state dir
    from before the marker), and whether it holds any data (any mode's datadir)."""
    try:
        with open(state.path("mariadb", "replication")) as f:
            recorded = f.read().strip() or None
    except FileNotFoundError:
        recorded = None
    root = state.path("mariadb")
    has_data = os.path.isdir(root) and any(
        os.path.isdir(os.path.join(root, d, "data", "mysql")) for d in os.listdir(root))
    return recorded, has_data


def replication_for(state, asked: str | None) -> str:
    """`--shard-replication` as asked; when not asked, what the state dir's data was made for (a
    state dir from before the marker: async, the default then), else DEFAULT_REPLICATION."""
    if asked:
        return asked
    recorded, has_data = _recorded(state)
    return recorded or ("async" if has_data else DEFAULT_REPLICATION)


def check_replication(recorded: str | None, wanted: str, has_data: bool) -> None:
    """The datadirs of one replication cannot serve the other: refuse, naming the way out."""
    if has_data and (recorded or "async") != wanted:
        raise SbError(f"the MariaDB data in this state dir is for --shard-replication {recorded or 'async'}, "
                      f"not {wanted}: `./sb down --purge` first (deletes the data)")


def grastate(path: str) -> dict | None:
    """grastate.dat of a Galera node: {"safe": safe_to_bootstrap, "seqno": int}; None if absent."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    fields = dict(ln.split(":", 1) for ln in text.splitlines() if ":" in ln and not ln.startswith("#"))
    try:
        seqno = int(fields.get("seqno", "-1").strip())
    except ValueError:
        seqno = -1
    return {"safe": fields.get("safe_to_bootstrap", "0").strip() == "1", "seqno": seqno}


def recovered_position(log_text: str) -> str | None:
    """The position `mariadbd --wsrep-recover` wrote to its log ("WSREP: Recovered position:
    <uuid>:<seqno>"), or None."""
    pos = None
    for ln in log_text.splitlines():
        if "Recovered position:" in ln:
            p = ln.split("Recovered position:", 1)[1].strip()
            if ":" in p:
                pos = p
    return pos


def position_seqno(pos: str | None) -> int:
    """The seqno of a Galera position ("<uuid>:<seqno>"), or -1."""
    try:
        return int(pos.rsplit(":", 1)[1]) if pos else -1
    except ValueError:
        return -1


def wsrep_recover(cnf: str, log: str) -> str | None:
    """Run `mariadbd --wsrep-recover` on a stopped node (InnoDB recovers its committed transactions,
    reports the last one's Galera position, and exits): that position, or None."""
    try:
        os.remove(log)  # never read an earlier run's position
    except FileNotFoundError:
        pass
    cmd = [which("mariadbd") or "mariadbd", f"--defaults-file={cnf}", "--wsrep-recover", f"--log-error={log}"]
    subprocess.run(cmd, capture_output=True, timeout=120)
    try:
        with open(log) as f:
            return recovered_position(f.read())
    except FileNotFoundError:
        return None


def rejoin_args(comp: dict) -> list[str]:
    """What the supervisor adds to the recorded command line of a Galera data node it starts again
    (mysqld_safe and galera_recovery do the same): after a crash grastate.dat says seqno -1, and
    `mariadbd` alone would then ask its peer for a full state transfer (SST: a copy of the whole
    datadir, its peer a donor meanwhile). The position `--wsrep-recover` finds lets it ask for the
    writes it missed only (IST, from the peer's gcache). Nothing for other processes, or for a
    node that stopped cleanly (its grastate.dat has the position)."""
    if comp.get("kind") != "mariadb" or comp.get("role") != "node" or not comp.get("cnf"):
        return []
    st = grastate(os.path.join(comp["cwd"], "data", "grastate.dat"))
    if st is None or st["seqno"] >= 0:
        return []
    pos = wsrep_recover(comp["cnf"], os.path.join(comp["cwd"], "tmp", "wsrep-recover.log"))
    if position_seqno(pos) < 0:
        return []
    return [f"--wsrep-start-position={pos}"]


def pick_bootstrap(nodes: list[dict | None]) -> int:
    """Which node of a shard whose nodes are all stopped starts the cluster again: the one
    Galera marked `safe_to_bootstrap` (the last to leave a cleanly stopped cluster), else the one
    with the highest position (a crash of all nodes), the first in order on a tie. `nodes[i]` is
    None for a node that never ran under Galera (a fresh datadir: node 0 starts a new cluster)."""
    known = [(i, n) for i, n in enumerate(nodes) if n is not None]
    if not known:
        return 0
    safe = [i for i, n in known if n["safe"]]
    if safe:
        return safe[0]
    return max(known, key=lambda x: (x[1]["seqno"], -x[0]))[0]


def _galera_position(ctx, s: int, r: bool) -> dict | None:
    """grastate.dat of a stopped node, its seqno completed by `--wsrep-recover` after a crash."""
    data = os.path.join(inst_dir(ctx, s, r), "data")
    st = grastate(os.path.join(data, "grastate.dat"))
    if st is None or st["safe"] or st["seqno"] >= 0:
        return st
    pos = wsrep_recover(cnf_path(ctx, s, r), os.path.join(inst_dir(ctx, s, r), "tmp", "wsrep-recover.log"))
    st["seqno"] = position_seqno(pos)
    return st


def _allow_bootstrap(ctx, s: int, r: bool) -> None:
    """Galera refuses to bootstrap from a node without `safe_to_bootstrap: 1` (it may not have the
    last commits): the node `pick_bootstrap` chose has them, so say so, as an operator would."""
    path = os.path.join(inst_dir(ctx, s, r), "data", "grastate.dat")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return
    write_atomic(path, text.replace("safe_to_bootstrap: 0", "safe_to_bootstrap: 1"), 0o660)


def _spawn(ctx, s: int, r: bool, extra: tuple[str, ...] = ()) -> dict:
    """Start one mariadbd; the command line recorded for the supervisor is without `extra` (a
    Galera node it starts again joins, never bootstraps)."""
    n, cf = name(s, r, ctx), cnf_path(ctx, s, r)
    argv, out, cwd = [which("mariadbd"), f"--defaults-file={cf}"], ctx.state.log(n) + ".out", inst_dir(ctx, s, r)
    pid, stt = spawn(argv + list(extra), out, env=ctx.infra_env, cwd=cwd)
    port = ctx.ports.mariadb(s, r)
    role = "node" if galera(ctx) else "replica" if r else "primary"
    # argv, cwd, out: what the supervisor starts again after a crash
    comp = {"name": n, "kind": "mariadb", "role": role, "addr": addr(port),
            "port": port, "pid": pid, "starttime": stt, "group": "mariadb", "log": ctx.state.log(n),
            "cnf": cf, "shard": s, "argv": argv, "cwd": cwd, "out": out}
    if galera(ctx):
        comp["node"] = 1 if r else 0
        # `./sb down` stops node 1 and garbd first: node 0, the last to leave, may bootstrap next time
        comp["stop_wave"] = 0 if r else 1
    ctx.state.put(comp)
    return comp


def _spawn_garbd(ctx, s: int) -> None:
    n, port = garbd_name(s), ctx.ports.galera(s, 2)
    nodes = ",".join(addr(ctx.ports.galera(s, i)) for i in (0, 1))
    argv = [which("garbd") or "garbd", "--address", f"gcomm://{nodes}", "--group", f"sb-shard{s}", "--name", n,
            "--options", f"gmcast.listen_addr=tcp://127.0.0.1:{port};{GALERA_EVS}"]
    log = ctx.state.log(n)
    pid, stt = spawn(argv, log, env=ctx.infra_env, cwd=ctx.state.path("mariadb"))
    ctx.state.put({"name": n, "kind": "mariadb", "role": "arbitrator", "addr": addr(port), "port": port,
                   "pid": pid, "starttime": stt, "group": "mariadb", "log": log, "shard": s, "argv": argv,
                   "cwd": ctx.state.path("mariadb"), "out": log, "stop_wave": 0})


def node_role(state, comp: dict, ok: bool) -> str:
    """`./sb status`'s role of a Galera data node: `writer` if it is the first node of its shard,
    in order, that is Synced (the one every worker writes to, workers/src/db.rs), else `node`."""
    if not ok:
        return "node"
    earlier = [c for c in state.components if c.get("kind") == "mariadb" and c.get("role") == "node"
               and c.get("shard") == comp.get("shard") and c.get("node", 0) < comp.get("node", 0)]
    return "node" if any(healthy(c) for c in earlier) else "writer"


def start(ctx) -> None:
    mariadbd = which("mariadbd")
    install = which("mariadb-install-db")
    if not mariadbd or not install:
        raise SbError("mariadbd / mariadb-install-db not found")
    if galera(ctx):
        ensure_packages(GALERA_COMMANDS)
        if not os.path.exists(GALERA_PROVIDER):
            raise SbError(f"{GALERA_PROVIDER} not found (Debian package galera-4)")
    todo = [(s, r) for s, r in instances() if not ctx.state.running(name(s, r, ctx))]
    recorded, has_data = _recorded(ctx.state)
    check_replication(recorded, ctx.shard_replication, has_data)
    write_atomic(_marker(ctx), ctx.shard_replication + "\n")
    # which stopped Galera nodes ran before (their grastate.dat), before install-db adds datadirs
    positions = {(s, r): _galera_position(ctx, s, r) for s, r in todo} if galera(ctx) else {}
    # initialize missing datadirs in parallel (~0.5-1.5 s each)
    installs = []
    for s, r in todo:
        d = inst_dir(ctx, s, r)
        for sub in ("data", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        cf = cnf_path(ctx, s, r)
        write_atomic(cf, cnf(ctx, s, r))
        if not os.path.isdir(os.path.join(d, "data", "mysql")):
            try:  # a fresh datadir needs the setup SQL again
                os.remove(os.path.join(d, "sb-initialized"))
            except FileNotFoundError:
                pass
            cmd = [install, f"--defaults-file={cf}", "--skip-test-db", "--auth-root-authentication-method=normal"]
            installs.append((name(s, r, ctx), cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                                     stderr=subprocess.STDOUT, text=True)))
    for n, cmd, p in installs:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SbError(f"{n}: mariadb-install-db failed:\n  {' '.join(cmd)}\n{out[-3000:]}")
    if not galera(ctx):
        for s, r in todo:
            _spawn(ctx, s, r)
    else:
        _start_galera(ctx, todo, positions)
    extra = f", {len(installs)} datadir(s) initialized" if installs else ""
    line("mariadb", f"started {len(todo)} instance(s){extra}" if todo else "already running")


def _start_galera(ctx, todo: list[tuple[int, bool]], positions: dict) -> None:
    """Per shard: with a node still running, the stopped ones join it; with none, the node
    `pick_bootstrap` names starts the cluster again and, once it is Synced, the others join."""
    boots = []
    for s in range(MARIADB_SHARDS):
        down = [r for ss, r in todo if ss == s]
        if len(down) == 2:
            b = bool(pick_bootstrap([positions[(s, False)], positions[(s, True)]]))
            _allow_bootstrap(ctx, s, b)
            boots.append((s, b, _spawn(ctx, s, b, ("--wsrep-new-cluster",))))
    for s, b, c in boots:
        ok = wait_until(lambda c=c: synced(wsrep_status(c["cnf"])), 120, 0.2,
                        lambda c=c: not alive(c["pid"], c["starttime"]))
        if not ok:
            raise SbError(f"{c['name']} did not start the shard's Galera cluster; log {c['log']}:\n{tail(c['log'])}")
        line(c["name"], f"bootstrapped shard {s}'s Galera cluster", True)
    booted = {(s, b) for s, b, _ in boots}
    for s, r in todo:
        if (s, r) not in booted:
            _spawn(ctx, s, r)
    for s in range(MARIADB_SHARDS):
        if not ctx.state.running(garbd_name(s)):
            _spawn_garbd(ctx, s)


def _setup_primary(ctx, s: int) -> None:
    users = "".join(
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{h}' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'{h}' WITH GRANT OPTION;"
        # ALL includes READ_ONLY ADMIN, which would let the application write to a read-only
        # replica and break GTID replication; replica promotion is an operator's job (root).
        f"REVOKE READ_ONLY ADMIN ON *.* FROM '{DB_USER}'@'{h}';"
        for h in ("127.0.0.1", "localhost")
    )
    sql(ctx, s, False,
        "RESET MASTER;"  # start the GTID history clean (drops install-db's binlog, before any replica exists)
        + users
        + f"CREATE USER IF NOT EXISTS '{REPL_USER}'@'127.0.0.1' IDENTIFIED BY '{REPL_PASSWORD}';"
        + f"GRANT REPLICATION SLAVE ON *.* TO '{REPL_USER}'@'127.0.0.1';"
        + f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;")


def _setup_replica(ctx, s: int) -> None:
    sql(ctx, s, True,
        "STOP SLAVE; RESET SLAVE ALL; RESET MASTER; SET GLOBAL gtid_slave_pos='';"
        f"CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={ctx.ports.mariadb(s, False)}, "
        f"MASTER_USER='{REPL_USER}', MASTER_PASSWORD='{REPL_PASSWORD}', MASTER_USE_GTID=slave_pos, "
        "MASTER_CONNECT_RETRY=1;"
        "START SLAVE;")


def wait(ctx, timeout: float = 60.0) -> None:
    if galera(ctx):
        return _wait_galera(ctx, max(timeout, 180.0))
    # 1. every instance answers
    for s, r in instances():
        c = ctx.state.get(name(s, r, ctx))
        if not wait_until(lambda c=c: _ping(c["cnf"]), timeout, 0.1, lambda c=c: not alive(c["pid"], c["starttime"])):
            raise SbError(f"{c['name']} does not answer on {c['addr']}; log {c['log']}:\n{tail(c['log'])}")
    # 2. first start only: users + database on the primary, then attach the replica (users replicate)
    for s in range(MARIADB_SHARDS):
        pm = os.path.join(inst_dir(ctx, s, False), "sb-initialized")
        rm = os.path.join(inst_dir(ctx, s, True), "sb-initialized")
        if not os.path.exists(pm):
            _setup_primary(ctx, s)
            write_atomic(pm, "ok\n")
            if os.path.exists(rm):
                os.remove(rm)  # the primary's history restarted: the replica must re-attach
        if not os.path.exists(rm):
            _setup_replica(ctx, s)
            write_atomic(rm, "ok\n")
    # 3. replicas replicating
    for s in range(MARIADB_SHARDS):
        c = ctx.state.get(name(s, True))
        if not wait_until(lambda c=c: healthy(c), timeout, 0.1):
            st = slave_status(c["cnf"])
            raise SbError(f"{c['name']} is not replicating: IO={st.get('Slave_IO_Running')} "
                          f"SQL={st.get('Slave_SQL_Running')} {st.get('Last_IO_Error', '')} "
                          f"{st.get('Last_SQL_Error', '')}")
    # 4. the switchboard user reached the replicas (it was created on the primaries only)
    for s in range(MARIADB_SHARDS):
        ok = wait_until(lambda s=s: sql(ctx, s, True, f"SELECT COUNT(*) FROM mysql.user WHERE user='{DB_USER}'")
                        .strip() == "2", 15, 0.1)
        if not ok:
            raise SbError(f"{name(s, True)}: user {DB_USER} did not replicate")
    shards = ", ".join(f"shard{s} {addr(ctx.ports.mariadb(s, False))}->{ctx.ports.mariadb(s, True)}"
                       for s in range(MARIADB_SHARDS))
    line("mariadb", f"{MARIADB_SHARDS} shards healthy, replicas replicating ({shards})", True)


def _setup_galera(ctx, s: int, r: bool) -> None:
    """Users and database of a new Galera shard, on one node (Galera replicates them)."""
    users = "".join(
        f"CREATE USER IF NOT EXISTS '{DB_USER}'@'{h}' IDENTIFIED BY '{DB_PASSWORD}';"
        f"GRANT ALL PRIVILEGES ON *.* TO '{DB_USER}'@'{h}' WITH GRANT OPTION;"
        for h in ("127.0.0.1", "localhost")
    )
    sql(ctx, s, r, users + f"CREATE DATABASE IF NOT EXISTS `{DB_NAME}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;")


def _wait_galera(ctx, timeout: float) -> None:
    # 1. every data node Synced (a joiner answers once its state transfer is done) and garbd up
    for s, r in instances():
        c = ctx.state.get(name(s, r, ctx))
        if not wait_until(lambda c=c: healthy(c), timeout, 0.2, lambda c=c: not alive(c["pid"], c["starttime"])):
            st = wsrep_status(c["cnf"])
            raise SbError(f"{c['name']} is not a Synced Galera node (ready {st.get('wsrep_ready')}, state "
                          f"{st.get('wsrep_local_state_comment')}); log {c['log']}:\n{tail(c['log'])}")
    # 2. each cluster whole: two data nodes and the arbitrator (a majority survives one loss)
    for s in range(MARIADB_SHARDS):
        g = ctx.state.get(garbd_name(s))
        c = ctx.state.get(name(s, False, ctx))
        if not wait_until(lambda c=c: wsrep_status(c["cnf"]).get("wsrep_cluster_size") == "3", 60, 0.2,
                          lambda g=g: not alive(g["pid"], g["starttime"])):
            raise SbError(f"shard {s}: the Galera cluster is not 3 members (garbd log {g['log']}):\n{tail(g['log'])}")
    # 3. first start only: users + database (replicated to the other node)
    for s in range(MARIADB_SHARDS):
        marker = os.path.join(inst_dir(ctx, s, False), "sb-initialized")
        if not os.path.exists(marker):
            _setup_galera(ctx, s, False)
            write_atomic(marker, "ok\n")
    shards = ", ".join(f"shard{s} {addr(ctx.ports.mariadb(s, False))}+{ctx.ports.mariadb(s, True)}+garbd"
                       for s in range(MARIADB_SHARDS))
    line("mariadb", f"{MARIADB_SHARDS} Galera shards, every node Synced ({shards})", True)


def migrate(ctx) -> None:
    exe = os.path.join(ctx.bin_dir, "sb-migrate")
    if not os.access(exe, os.X_OK):
        warn(f"{exe} not found: skipping schema migrations")
        line("migrate", "skipped (no sb-migrate binary)")
        return
    t = time.monotonic()
    log = ctx.state.log("sb-migrate")
    cmd = [exe, "--config", os.path.join(ctx.state.conf_dir, "migrate.toml")]
    with open(log, "ab") as f:
        f.write(f"\n===== sb: {' '.join(cmd)}\n".encode())
        f.flush()
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=ctx.app_env, cwd=ctx.repo, timeout=300)
    if r.returncode != 0:
        raise SbError(f"sb-migrate failed (exit {r.returncode}); log {log}:\n{tail(log)}")
    line("migrate", f"schema applied to every shard in {time.monotonic() - t:.1f}s", True)
