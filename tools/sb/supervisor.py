"""The supervisor: starts a crashed platform process again, like Kubernetes' `restartPolicy: Always`.

`./sb up` starts this loop as a background process (component `supervisor`, one per state dir)
once the platform is up. Twice a second it reads state.json and checks every supervised process
(edges, workers, the router, nginx, the discovery loop, Prometheus, and the infrastructure: Redis
nodes, MariaDB instances, Kafka brokers) by PID and start time. One that is gone
is started again with the command line, working directory, environment and log it was started
with the first time, and its new PID, start time and restart counter are written to state.json
(`./sb status` shows them). An edge keeps its config file, so it keeps its edge id (and per-edge
topic) and its port, and announces a new epoch by itself; nginx's upstream entries are ports,
and the discovery loop puts the edge back into them once it answers /healthz. A Redis node,
MariaDB instance or Kafka broker starts again on its own data directory: MariaDB recovers its
committed transactions (InnoDB with `innodb_flush_log_at_trx_commit = 1`), Redis reloads its
append-only file, a broker catches up from its peers. A Galera data node is first run with
`--wsrep-recover` (a few seconds, during which the supervisor waits) and started at the position
it finds, so that it asks its peer only for the writes it missed (`mariadb.rejoin_args`).

A Redis node is started again only after REDIS_FAILOVER_WAIT: a master that came back sooner
than the cluster notices it gone (`cluster-node-timeout`) would skip the failover; this way its
replica takes over, as it would if the machine were lost, and the old master rejoins as a replica
of the new one.

Policy (`on_exit`), after the kubelet's: the first restart after a process that ran for at least
STABLE_AFTER seconds is immediate; each further exit after a shorter run doubles the wait
(0.5, 1, 2, 4 s, capped at BACKOFF_CAP). When CRASH_LOOP_RESTARTS restarts in a row all exited
within STABLE_AFTER, it is a crash loop: the supervisor gives up on that process, says so in its
log and in state.json (`./sb status` shows "crash loop"), and `./sb up` starts it again. Unlike
the kubelet, which retries forever at up to 5 minutes, it stops: locally a loop is a bug or a
port taken by something else, and a loud stop is more useful than a quiet retry.

It changes state.json only under the state dir's lock, and never while an `./sb up` or
`./sb down` holds it (those start or stop the processes themselves). `./sb down` stops it first,
by PID, before it stops the processes it watches.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import mariadb
from state import State
from util import alive, session_members, spawn, stop_on_signals

INTERVAL = 0.5
# a process that ran this long before it exited was healthy: its exit starts a new count
STABLE_AFTER = 30.0
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 5.0
# restarts in a row whose process exited within STABLE_AFTER before the supervisor gives up
CRASH_LOOP_RESTARTS = 5
SUPERVISED = ("edge", "worker", "router", "nginx", "discovery", "prometheus", "jaeger", "redis", "mariadb",
              "kafka")
# Three times the Redis Cluster's `cluster-node-timeout` (tools/sb/redis.py, 2 s): by then the
# other nodes have marked a killed master failed and its replica has won the election.
REDIS_FAILOVER_WAIT = 6.0
# An edge's epoch is the second it started (edge-ws: `now_ms() / 1000`), and a new epoch is what
# retires its predecessor's registry entries: an edge is never started again within this long
# after its predecessor started, so the two never share an epoch.
EDGE_EPOCH_GAP = 1.1


def delay_before(crashes: int) -> float:
    """Seconds to wait before restarting a process that has exited `crashes` times in a row
    (the first of them after any run, the rest after short runs): 0, 0.5, 1, 2, 4, 5, 5, ..."""
    if crashes <= 1:
        return 0.0
    return min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (crashes - 2))


def on_exit(comp: dict, ran_for: float) -> float | None:
    """Count an exit of `comp` that ran `ran_for` seconds (`comp["crashes"]`: exits in a row, all
    but the first after a short run). Returns the wait before the restart, or None: a crash loop,
    give up."""
    crashes = 1 if ran_for >= STABLE_AFTER else comp.get("crashes", 0) + 1
    comp["crashes"] = crashes
    if crashes > CRASH_LOOP_RESTARTS:
        return None
    return delay_before(crashes)


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    return f"exit code {os.WEXITSTATUS(status)}"


class Procs:
    """The supervisor's view of the operating system (a fake replaces it in the unit tests)."""

    def __init__(self):
        self._statuses: dict[int, int] = {}
        self._tick = os.sysconf("SC_CLK_TCK")

    def alive(self, pid: int | None, starttime: int | None) -> bool:
        if pid:
            try:  # a process this supervisor started: keep its exit status for the log
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == pid:
                    self._statuses[pid] = status
            except ChildProcessError:
                pass  # started by `./sb up`, not our child: no exit status to read
        return alive(pid, starttime)

    def exit_status(self, pid: int) -> str | None:
        status = self._statuses.pop(pid, None)
        return None if status is None else describe_status(status)

    def ran_for(self, starttime: int | None) -> float:
        """How long a process that started at `starttime` (clock ticks after boot) ran, up to now."""
        if not starttime:
            return float("inf")  # unknown: do not count it towards a crash loop
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - starttime / self._tick)

    def clear_session(self, pid: int) -> None:
        """Kill what is left of a dead process' session (e.g. nginx workers whose master was
        SIGKILLed, still holding the listening socket)."""
        for member in session_members(pid):
            try:
                os.kill(member, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def spawn(self, comp: dict) -> tuple[int, int]:
        # a crashed Galera node rejoins at the position it had committed (IST, not a full SST)
        argv = comp["argv"] + mariadb.rejoin_args(comp)
        return spawn(argv, comp["out"], env=None, cwd=comp.get("cwd"))


class Supervisor:
    def __init__(self, state: State, procs: Procs | None = None, clock=time.monotonic, say=None):
        self.state = state
        self.procs = procs or Procs()
        self.clock = clock
        self.say = say or (lambda msg: print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True))
        # name -> ((pid, starttime) of the exited process, when to start it again)
        self.pending: dict[str, tuple[tuple, float]] = {}

    @staticmethod
    def watched(comp: dict) -> bool:
        return comp.get("kind") in SUPERVISED and bool(comp.get("argv")) and not comp.get("gave_up")

    def _dead(self) -> list[dict]:
        return [c for c in self.state.components
                if self.watched(c) and not self.procs.alive(c.get("pid"), c.get("starttime"))]

    def tick(self) -> None:
        self.state.load()
        dead = self._dead()
        names = {c["name"] for c in dead}
        for name in [n for n in self.pending if n not in names]:
            del self.pending[name]  # started again by `./sb up`, or gone from the state file
        if not dead:
            return
        if not self.state.try_lock():
            return  # an `./sb up` or `./sb down` is at work: it starts or stops these itself
        try:
            self.state.load()  # again, under the lock
            now = self.clock()
            changed = False
            for c in self._dead():
                changed |= self._handle(c, now)
            if changed:
                self.state.save()
        finally:
            self.state.unlock()

    def _handle(self, c: dict, now: float) -> bool:
        """Count a new exit and/or start the process again when its wait is over; True if `c`
        changed."""
        name, key = c["name"], (c.get("pid"), c.get("starttime"))
        changed = False
        pend = self.pending.get(name)
        if pend is None or pend[0] != key:
            ran = self.procs.ran_for(c.get("starttime"))
            status = self.procs.exit_status(c["pid"]) if c.get("pid") else None
            what = (f"{name} (pid {c.get('pid')}) exited" + (f" ({status})" if status else "")
                    + (f" after {ran:.1f}s" if ran != float("inf") else ""))
            pend = self._schedule(c, ran, now, what)
            changed = True
            if pend is None:
                return changed
        if now < pend[1]:
            return changed
        self.procs.clear_session(c["pid"])
        try:
            pid, stt = self.procs.spawn(c)
        except OSError as e:
            # cannot even start (e.g. the binary is gone): counts as an exit after no run
            self._schedule(c, 0.0, now, f"{name} could not be started ({e})")
            return True
        c["pid"], c["starttime"] = pid, stt
        c["restarts"] = c.get("restarts", 0) + 1
        c["restarted_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        del self.pending[name]
        self.say(f"{name} started again (pid {pid}, restart {c['restarts']})")
        return True

    def _schedule(self, c: dict, ran: float, now: float, what: str) -> tuple | None:
        name = c["name"]
        delay = on_exit(c, ran)
        if delay is None:
            c["gave_up"] = True
            c["gave_up_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
            self.pending.pop(name, None)
            self.say(f"{what}: crash loop ({CRASH_LOOP_RESTARTS} restarts in a row each exited within "
                     f"{STABLE_AFTER:.0f}s); giving up on it -- `./sb up` starts it again")
            return None
        if c.get("kind") == "edge":
            delay = max(delay, EDGE_EPOCH_GAP - ran)
        if c.get("kind") == "redis":
            delay = max(delay, REDIS_FAILOVER_WAIT)
        self.pending[name] = ((c.get("pid"), c.get("starttime")), now + delay)
        self.say(f"{what}; restart {c.get('restarts', 0) + 1} " + ("now" if delay == 0 else f"in {delay:.1f}s"))
        return self.pending[name]


def run(state_dir: str) -> int:
    stop = stop_on_signals()
    sup = Supervisor(State(state_dir))
    sup.say(f"supervisor: watching {', '.join(SUPERVISED)} in {state_dir} every {INTERVAL}s")
    while not stop.is_set():
        try:
            sup.tick()
        except Exception as e:  # a state file being rewritten, a full disk: try again next tick
            sup.say(f"supervisor: tick failed ({type(e).__name__}: {e})")
        time.sleep(INTERVAL)
    sup.say("supervisor: stopped")
    return 0


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    sys.exit(run(sys.argv[1]))
