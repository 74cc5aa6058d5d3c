"""Unit tests of the supervisor's restart policy and loop, and of `--workers` (no processes, no
sleeping: a fake clock, a fake process table and an in-memory state file).

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import copy
import os
import sys
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import launcher  # noqa: E402
import services  # noqa: E402
import supervisor as sup  # noqa: E402
from ports import MAX_WORKERS_PER_ROLE, WORKERS, Ports  # noqa: E402
from util import SbError  # noqa: E402


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeState:
    """state.json in memory: load() gives fresh copies of what save() stored, like the file."""

    def __init__(self, components: list[dict]):
        self.saved = {"components": copy.deepcopy(components)}
        self.data: dict = {}
        self.locked_by_other = False
        self.held = False
        self.saves = 0

    @property
    def components(self) -> list[dict]:
        return self.data.setdefault("components", [])

    def get(self, name: str) -> dict:
        return next(c for c in self.saved["components"] if c["name"] == name)

    def load(self) -> bool:
        self.data = copy.deepcopy(self.saved)
        return True

    def save(self) -> None:
        assert self.held, "state saved without the lock"
        self.saved = copy.deepcopy(self.data)
        self.saves += 1

    def try_lock(self) -> bool:
        if self.locked_by_other:
            return False
        self.held = True
        return True

    def unlock(self) -> None:
        self.held = False


class FakeProcs:
    """pid -> seconds it ran before exiting (None: still running)."""

    def __init__(self):
        self.procs: dict[int, float | None] = {}
        self.next_pid = 500
        self.spawned: list[str] = []
        self.cleared: list[int] = []
        self.fail_spawn = False

    def start(self, ran: float | None = None) -> int:
        self.next_pid += 1
        self.procs[self.next_pid] = ran
        return self.next_pid

    def exit(self, pid: int, ran: float) -> None:
        self.procs[pid] = ran

    def alive(self, pid, _starttime) -> bool:
        return pid in self.procs and self.procs[pid] is None

    def exit_status(self, pid) -> str | None:
        return "killed by SIGKILL" if pid in self.procs else None

    def ran_for(self, starttime) -> float:
        return self.procs[starttime]  # the fake start time is the pid

    def clear_session(self, pid) -> None:
        self.cleared.append(pid)

    def spawn(self, comp: dict) -> tuple[int, int]:
        if self.fail_spawn:
            raise FileNotFoundError(comp["argv"][0])
        self.spawned.append(comp["name"])
        pid = self.start()
        return pid, pid


def comp(name: str, kind: str, pid: int, argv=True) -> dict:
    c = {"name": name, "kind": kind, "pid": pid, "starttime": pid, "group": "app", "out": f"/logs/{name}.log"}
    if argv:
        c["argv"] = [f"/bin/{name}", "--config", f"/conf/{name}.toml"]
    return c


class Rig:
    def __init__(self, *kinds: tuple[str, str]):
        self.clock = Clock()
        self.procs = FakeProcs()
        self.said: list[str] = []
        self.pids = {name: self.procs.start() for name, _ in kinds}
        self.state = FakeState([comp(name, kind, self.pids[name]) for name, kind in kinds])
        self.sup = sup.Supervisor(self.state, self.procs, self.clock, self.said.append)

    def kill(self, name: str, ran: float) -> None:
        self.procs.exit(self.state.get(name)["pid"], ran)

    def at(self, dt: float) -> None:
        self.clock.t += dt
        self.sup.tick()


class PolicyTest(unittest.TestCase):
    def test_backoff_doubles_from_half_a_second_and_is_capped(self):
        self.assertEqual([sup.delay_before(n) for n in range(1, 9)], [0, 0.5, 1, 2, 4, 5, 5, 5])
        self.assertEqual(sup.BACKOFF_CAP, 5.0)

    def test_a_long_run_starts_a_new_count_and_short_runs_add_up_to_a_crash_loop(self):
        c: dict = {}
        self.assertEqual(sup.on_exit(c, 3600.0), 0.0)
        self.assertEqual(c["crashes"], 1)
        delays = [sup.on_exit(c, 1.0) for _ in range(sup.CRASH_LOOP_RESTARTS - 1)]
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0])
        self.assertIsNone(sup.on_exit(c, 1.0), "the 5th restart in a row exited quickly too: give up")
        # a run of STABLE_AFTER seconds counts as healthy again
        c = {"crashes": 4}
        self.assertEqual(sup.on_exit(c, sup.STABLE_AFTER), 0.0)
        self.assertEqual(c["crashes"], 1)


class SupervisorTest(unittest.TestCase):
    def test_a_killed_process_is_started_again_at_once_with_its_command_and_counted(self):
        r = Rig(("worker-dms", "worker"), ("edge-0", "edge"))
        old = r.pids["worker-dms"]
        r.at(0.5)
        self.assertEqual(r.procs.spawned, [])
        self.assertEqual(r.state.saves, 0, "nothing dead: state.json untouched")
        r.kill("worker-dms", 3600.0)
        r.at(0.5)
        self.assertEqual(r.procs.spawned, ["worker-dms"])
        self.assertEqual(r.procs.cleared, [old], "what was left of its session is killed first")
        w = r.state.get("worker-dms")
        self.assertNotEqual(w["pid"], old)
        self.assertTrue(r.procs.alive(w["pid"], w["starttime"]))
        self.assertEqual((w["restarts"], w["crashes"]), (1, 1))
        self.assertEqual(w["argv"], ["/bin/worker-dms", "--config", "/conf/worker-dms.toml"])
        self.assertNotIn("restarts", r.state.get("edge-0"))
        self.assertIn(f"worker-dms (pid {old}) exited (killed by SIGKILL) after 3600.0s; restart 1 now", r.said)
        r.at(0.5)
        self.assertEqual(r.procs.spawned, ["worker-dms"], "running again: left alone")

    def test_quick_exits_back_off_then_a_crash_loop_is_given_up_and_said(self):
        r = Rig(("edge-1", "edge"))
        r.kill("edge-1", 100.0)
        r.at(0.5)
        self.assertEqual(len(r.procs.spawned), 1)
        for n, delay in enumerate([0.5, 1.0, 2.0, 4.0], start=2):
            r.kill("edge-1", 2.0)
            r.at(0.0)  # the exit is seen; the restart waits
            self.assertEqual(len(r.procs.spawned), n - 1)
            r.at(delay - 0.01)
            self.assertEqual(len(r.procs.spawned), n - 1, f"restart {n} before its {delay}s")
            r.at(0.01)
            self.assertEqual(len(r.procs.spawned), n, f"restart {n} after {delay}s")
        self.assertEqual(r.state.get("edge-1")["restarts"], 5)
        r.kill("edge-1", 2.0)
        r.at(0.5)
        e = r.state.get("edge-1")
        self.assertTrue(e["gave_up"])
        self.assertTrue(any("crash loop" in m and "giving up" in m for m in r.said), r.said)
        r.at(60.0)
        self.assertEqual(len(r.procs.spawned), 5, "given up: never started again")

    def test_an_edge_never_starts_within_the_second_its_predecessor_started(self):
        # its epoch is its start second: a restart 0.3 s after the last start would reuse it
        r = Rig(("edge-0", "edge"), ("worker-dms", "worker"))
        r.kill("edge-0", 0.3)
        r.kill("worker-dms", 0.3)
        r.at(0.0)
        self.assertEqual(r.procs.spawned, ["worker-dms"], "a worker: at once")
        r.at(sup.EDGE_EPOCH_GAP - 0.3 - 0.01)
        self.assertEqual(r.procs.spawned, ["worker-dms"])
        r.at(0.01)
        self.assertEqual(r.procs.spawned, ["worker-dms", "edge-0"])

    def test_nothing_happens_while_an_sb_command_holds_the_lock(self):
        r = Rig(("router", "router"))
        r.kill("router", 100.0)
        r.state.locked_by_other = True
        r.at(0.5)
        r.at(0.5)
        self.assertEqual((r.procs.spawned, r.state.saves), ([], 0))
        r.state.locked_by_other = False
        r.at(0.5)
        self.assertEqual(r.procs.spawned, ["router"])

    def test_a_process_started_by_someone_else_during_the_wait_is_left_alone(self):
        r = Rig(("worker-auth", "worker"))
        r.kill("worker-auth", 100.0)
        r.at(0.5)
        r.kill("worker-auth", 1.0)
        r.at(0.1)  # now waiting 0.5 s
        # `./sb up` starts it meanwhile (a new record: new pid, no counters)
        r.state.saved["components"][0] = comp("worker-auth", "worker", r.procs.start())
        r.at(1.0)
        self.assertEqual(len(r.procs.spawned), 1)
        self.assertEqual(r.sup.pending, {})

    def test_only_supervised_kinds_with_a_recorded_command_are_restarted(self):
        r = Rig(("web-build", "helper"), ("worker-users", "worker"), ("supervisor", "supervisor"))
        r.state.saved["components"][1].pop("argv")  # recorded by an older launcher
        for name in ("web-build", "worker-users", "supervisor"):
            r.kill(name, 100.0)
        r.at(0.5)
        self.assertEqual(r.procs.spawned, [])
        self.assertEqual(set(sup.SUPERVISED), {"edge", "worker", "router", "nginx", "discovery", "prometheus",
                                               "jaeger", "redis", "mariadb", "kafka"})

    def test_infrastructure_comes_back_and_a_redis_node_only_after_its_failover(self):
        r = Rig(("mariadb-shard0-primary", "mariadb"), ("kafka-1", "kafka"), ("redis-2", "redis"))
        for name in ("mariadb-shard0-primary", "kafka-1", "redis-2"):
            r.kill(name, 3600.0)
        r.at(0.0)
        self.assertEqual(r.procs.spawned, ["mariadb-shard0-primary", "kafka-1"], "at once")
        self.assertTrue(any("redis-2" in m and f"in {sup.REDIS_FAILOVER_WAIT:.1f}s" in m for m in r.said), r.said)
        r.at(sup.REDIS_FAILOVER_WAIT - 0.01)
        self.assertEqual(len(r.procs.spawned), 2, "a Redis master back sooner would skip the failover")
        r.at(0.01)
        self.assertEqual(r.procs.spawned[-1], "redis-2")
        self.assertEqual(r.state.get("redis-2")["restarts"], 1)

    def test_a_command_that_cannot_start_counts_as_a_quick_exit(self):
        r = Rig(("worker-invites", "worker"))
        r.kill("worker-invites", 100.0)
        r.procs.fail_spawn = True
        r.at(0.5)
        self.assertEqual(r.state.get("worker-invites")["crashes"], 2)
        self.assertTrue(any("could not be started" in m for m in r.said), r.said)
        r.procs.fail_spawn = False
        r.at(0.4)
        self.assertEqual(r.procs.spawned, [])
        r.at(0.1)
        self.assertEqual(r.procs.spawned, ["worker-invites"])


class WorkersTest(unittest.TestCase):
    def test_parse_workers(self):
        self.assertEqual(services.parse_workers("1"), {w: 1 for w in WORKERS})
        self.assertEqual(services.parse_workers("2"), {w: 2 for w in WORKERS})
        self.assertEqual(services.parse_workers("dms=2"), {w: 2 if w == "dms" else 1 for w in WORKERS})
        self.assertEqual(services.parse_workers("3, presence=1"), {w: 1 if w == "presence" else 3 for w in WORKERS})
        for bad in ("0", "x", "dms=", f"dms={MAX_WORKERS_PER_ROLE + 1}", "nope=2"):
            with self.assertRaises(SbError, msg=bad):
                services.parse_workers(bad)

    def test_every_worker_process_has_its_own_name_config_and_port(self):
        class Ctx:
            workers = {w: MAX_WORKERS_PER_ROLE for w in WORKERS}
            edges = 50
        names = services.worker_processes(Ctx)
        self.assertEqual(names[:2], [("worker-auth", "auth", 0), ("worker-auth-1", "auth", 1)])
        self.assertEqual(len({n for n, _, _ in names}), len(names))
        for offset in (0, 1000):
            ports = Ports(offset)
            self.assertEqual([ports.worker_health(w) for w in WORKERS],
                             [ports.worker_health(WORKERS[0]) + k for k in range(len(WORKERS))],
                             "process 0 of each role keeps its port")
            every = [p for ps in ports.all_listening(3, 50, True, Ctx.workers).values() for p in ps]
            self.assertEqual(len(every), len(set(every)), "no two listeners share a port")
        self.assertEqual(services.binary_of("worker-dms-3"), "worker-dms")
        self.assertEqual(services.binary_of("worker-dms"), "worker-dms")
        self.assertEqual(services.binary_of("edge-12"), "edge-ws")

    def test_down_stops_the_supervisor_first(self):
        self.assertEqual(launcher.STOP_ORDER[0][0], "supervisor")


if __name__ == "__main__":
    unittest.main()
