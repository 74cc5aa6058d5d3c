"""Shared helpers: output, process start/stop by PID, network probes, system packages."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

T0 = time.monotonic()


class SbError(Exception):
    """A failure the user should read; printed without a traceback."""


# ---------------------------------------------------------------- output


def _tty() -> bool:
    return sys.stdout.isatty() and os.environ.get("NO_COLOR") is None


def _c(code: str, s: str) -> str:
    return f"\033[{code}m{s}\033[0m" if _tty() else s


def elapsed() -> float:
    return time.monotonic() - T0


def line(component: str, msg: str, ok: bool | None = None) -> None:
    """One line per component step: `[  3.1s] kafka        healthy ...`."""
    mark = ""
    if ok is True:
        mark = _c("32", "ok   ")
    elif ok is False:
        mark = _c("31", "FAIL ")
    else:
        mark = "     "
    print(f"[{elapsed():6.1f}s] {mark}{component:<24} {msg}", flush=True)


def info(msg: str) -> None:
    print(msg, flush=True)


def warn(msg: str) -> None:
    print(_c("33", "warning: ") + msg, file=sys.stderr, flush=True)


def tail(path: str, n: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            data = f.read().decode("utf-8", "replace")
        return "\n".join(data.splitlines()[-n:])
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- processes
#
# Every long-running process is started in its own session (setsid), so it is a session leader
# whose PID is also its session id. We record (pid, starttime) and only ever signal that PID,
# plus -- after the leader is gone -- any process still carrying that session id (e.g. nginx
# workers whose master was SIGKILLed). The starttime guards against PID reuse.


def proc_stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # field 2 (comm) is in parentheses and may contain spaces
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest  # rest[0] = state (field 3), rest[19] = starttime (field 22), rest[3] = session (field 6)


def proc_starttime(pid: int) -> int | None:
    st = proc_stat(pid)
    return int(st[19]) if st else None


def alive(pid: int | None, starttime: int | None = None) -> bool:
    if not pid:
        return False
    _reap(pid)
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    if starttime is not None and int(st[19]) != starttime:
        return False  # PID was reused by another process
    return True


def _reap(pid: int) -> None:
    """Collect our own exited children so they do not linger as zombies."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError:
        pass


def session_members(sid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_stat(int(d))
        if st and st[0] not in ("Z", "X") and int(st[3]) == sid:
            out.append(int(d))
    return out


def spawn(argv: list[str], log_path: str, env: dict | None = None, cwd: str | None = None) -> tuple[int, int]:
    """Start argv in the background in a new session; stdout+stderr appended to log_path."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} sb start: {' '.join(argv)}\n".encode())
        log.flush()
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    st = None
    for _ in range(50):
        st = proc_starttime(p.pid)
        if st is not None:
            break
        time.sleep(0.01)
    return p.pid, st or 0



def spawn_tool(ctx, name: str, role: str, argv: list[str], listen: str, port: int, cwd: str) -> dict:
    """Start one of the platform's own tools (Prometheus, Jaeger: one process each, a component of
    its own kind) in `cwd`, with its log in the state's logs, and record it in the state."""
    log = ctx.state.log(name)
    pid, stt = spawn(argv, log, env=ctx.infra_env, cwd=cwd)
    comp = {"name": name, "kind": name, "role": role, "addr": listen, "port": port,
            "pid": pid, "starttime": stt, "group": name, "log": log, "argv": argv, "cwd": cwd, "out": log}
    ctx.state.put(comp)
    return comp

def stop_many(procs: list[tuple[str, int, int | None]], sig: int = signal.SIGTERM, timeout: float = 15.0) -> list[str]:
    """Signal every (name, pid, starttime) at once, wait up to `timeout`, then SIGKILL the rest.

    Also kills anything left in each process' session. Returns names that needed SIGKILL."""
    pending = {}
    for name, pid, stt in procs:
        if alive(pid, stt):
            try:
                os.kill(pid, sig)
                pending[name] = (pid, stt)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for name, (pid, stt) in list(pending.items()):
            if not alive(pid, stt):
                del pending[name]
        if pending:
            time.sleep(0.1)
    killed = []
    for name, (pid, stt) in pending.items():
        killed.append(name)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for name, (pid, stt) in pending.items():
        for _ in range(50):
            if not alive(pid, stt):
                break
            time.sleep(0.1)
    # leftovers in the sessions we created (only processes whose session id is our leader's PID)
    for _name, pid, _stt in procs:
        for member in session_members(pid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return killed


# ---------------------------------------------------------------- network


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return False
        raise
    finally:
        s.close()


def port_owner(port: int) -> str:
    """Best effort `ss` lookup of who listens on a port, for error messages."""
    try:
        out = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_until(pred, timeout: float, interval: float = 0.1, dead=None) -> bool:
    """Poll pred() until true or timeout. `dead()` returning true aborts early (process exited)."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if dead is not None and dead():
            return bool(pred())
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# ---------------------------------------------------------------- system packages

# command -> Debian package providing it
SYSTEM_COMMANDS = {
    "redis-server": "redis-server",
    "redis-cli": "redis-tools",
    "mariadbd": "mariadb-server",
    "mariadb-install-db": "mariadb-server",
    "mariadb": "mariadb-client",
    "mariadb-admin": "mariadb-client",
    "nginx": "nginx",
    "java": "openjdk-17-jre-headless",
    "mvn": "maven",
    "ss": "iproute2",
    # Debian's package; `./sb up` runs the binary itself (tools/sb/prometheus.py), never the service
    "prometheus": "prometheus",
    "promtool": "prometheus",
}


def which(cmd: str) -> str | None:
    return shutil.which(cmd) or shutil.which(cmd, path="/usr/sbin:/sbin:/usr/bin:/bin")


def ensure_packages(commands: dict[str, str]) -> None:
    """apt-get install whatever provides a missing command (root), else explain and fail."""
    missing = sorted({pkg for cmd, pkg in commands.items() if not which(cmd)})
    if not missing:
        return
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
    if os.geteuid() != 0:
        raise SbError(
            "missing system packages: " + " ".join(missing) + "\n  run:  sudo apt-get update && sudo " + " ".join(cmd)
        )
    line("packages", "installing " + " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    t = time.monotonic()
    if subprocess.run(cmd, env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env)
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SbError("apt-get install failed: " + " ".join(cmd))
    still = sorted({pkg for c, pkg in commands.items() if not which(c)})
    if still:
        raise SbError("still missing after apt-get install: " + " ".join(still))
    line("packages", f"installed in {time.monotonic() - t:.1f}s", True)


def stop_on_signals() -> threading.Event:
    """An event that SIGTERM or SIGINT sets: a background loop of `./sb` (discovery, the
    supervisor) checks it between rounds and ends cleanly."""
    stop = threading.Event()

    def on_term(_sig, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return stop
