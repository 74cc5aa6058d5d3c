"""MariaDB shards: each a primary + a GTID replica, plus running sb-migrate."""

from __future__ import annotations

import os
import pwd
import subprocess
import time

from ports import MARIADB_SHARDS, addr
from state import write_atomic
from util import SbError, alive, line, spawn, tail, wait_until, warn, which

DB_USER = "switchboard"
DB_PASSWORD = "switchboard"
DB_NAME = "switchboard"
REPL_USER = "repl"
REPL_PASSWORD = "switchboard-repl"


def name(shard: int, replica: bool) -> str:
    return f"mariadb-shard{shard}-{'replica' if replica else 'primary'}"


def instances():
    for s in range(MARIADB_SHARDS):
        for r in (False, True):
            yield s, r


def inst_dir(ctx, shard: int, replica: bool) -> str:
    return ctx.state.path("mariadb", name(shard, replica))


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
log-error = {ctx.state.log(name(shard, replica))}
skip-name-resolve
character-set-server = utf8mb4
collation-server = utf8mb4_unicode_ci
max_connections = 500
# Workers keep up to 512 prepared statements per connection (batched statements differ by their
# row count); the default server-wide cap of 16,382 could be reached by one busy worker-dms.
max_prepared_stmt_count = 262144
# replication (GTID)
server_id = {server_id(shard, replica)}
log_bin = mysql-bin
relay_log = relay-bin
binlog_format = ROW
gtid_strict_mode = 1
log_slave_updates = 1
{'read_only = 1' if replica else '# primary: writable'}
# durability
innodb_flush_log_at_trx_commit = 1
sync_binlog = 1
innodb_buffer_pool_size = 256M
"""


def sql(ctx, shard: int, replica: bool, query: str, timeout: float = 30) -> str:
    """Run SQL as root over the instance's unix socket; returns tab-separated output."""
    cmd = [which("mariadb") or "mariadb", f"--defaults-file={cnf_path(ctx, shard, replica)}",
           "-N", "-B", "--connect-timeout=2", "-e", query]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise SbError(f"{name(shard, replica)}: SQL failed: {query[:200]}\n{r.stderr.strip()}")
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


def healthy(comp: dict) -> bool:
    if not alive(comp.get("pid"), comp.get("starttime")):
        return False
    if comp["role"] == "primary":
        return _ping(comp["cnf"])
    st = slave_status(comp["cnf"])
    return st.get("Slave_IO_Running") == "Yes" and st.get("Slave_SQL_Running") == "Yes"


def start(ctx) -> None:
    mariadbd = which("mariadbd")
    install = which("mariadb-install-db")
    if not mariadbd or not install:
        raise SbError("mariadbd / mariadb-install-db not found")
    todo = [(s, r) for s, r in instances() if not ctx.state.running(name(s, r))]
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
            installs.append((name(s, r), cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE,
                                                                stderr=subprocess.STDOUT, text=True)))
    for n, cmd, p in installs:
        out, _ = p.communicate(timeout=300)
        if p.returncode != 0:
            raise SbError(f"{n}: mariadb-install-db failed:\n  {' '.join(cmd)}\n{out[-3000:]}")
    for s, r in todo:
        n, cf = name(s, r), cnf_path(ctx, s, r)
        argv, out, cwd = [mariadbd, f"--defaults-file={cf}"], ctx.state.log(n) + ".out", inst_dir(ctx, s, r)
        pid, stt = spawn(argv, out, env=ctx.infra_env, cwd=cwd)
        port = ctx.ports.mariadb(s, r)
        # argv, cwd, out: what the supervisor starts again after a crash
        ctx.state.put({"name": n, "kind": "mariadb", "role": "replica" if r else "primary", "addr": addr(port),
                       "port": port, "pid": pid, "starttime": stt, "group": "mariadb", "log": ctx.state.log(n),
                       "cnf": cf, "shard": s, "argv": argv, "cwd": cwd, "out": out})
    extra = f", {len(installs)} datadir(s) initialized" if installs else ""
    line("mariadb", f"started {len(todo)} instance(s){extra}" if todo else "already running")


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
    # 1. every instance answers
    for s, r in instances():
        c = ctx.state.get(name(s, r))
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
