"""Unit tests of the MariaDB shards' launcher decisions (no server): which Galera node starts a
stopped cluster again, that the supervisor's command line never bootstraps, the configs and ports.

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import os
import sys
import tempfile
import tomllib
import unittest
from unittest import mock

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import launcher  # noqa: E402
import mariadb  # noqa: E402
import services  # noqa: E402
from ports import MARIADB_SHARDS, Ports  # noqa: E402
from state import State  # noqa: E402
from util import SbError  # noqa: E402


def ctx(d: str, replication: str = "galera") -> launcher.Ctx:
    return launcher.Ctx(State(d), Ports(5000), 1, 1, False, d, False, shard_replication=replication)


class BootstrapTest(unittest.TestCase):
    def test_a_fresh_shard_starts_from_node_0(self):
        self.assertEqual(mariadb.pick_bootstrap([None, None]), 0)

    def test_the_node_galera_marked_safe_starts_the_cluster(self):
        # a clean stop: the last node to leave is marked safe, whatever the seqnos say
        self.assertEqual(mariadb.pick_bootstrap([{"safe": False, "seqno": 9}, {"safe": True, "seqno": 9}]), 1)
        self.assertEqual(mariadb.pick_bootstrap([{"safe": True, "seqno": 3}, {"safe": False, "seqno": 3}]), 0)

    def test_after_a_crash_of_every_node_the_most_advanced_one_starts_it(self):
        self.assertEqual(mariadb.pick_bootstrap([{"safe": False, "seqno": 11}, {"safe": False, "seqno": 12}]), 1)
        self.assertEqual(mariadb.pick_bootstrap([{"safe": False, "seqno": 12}, {"safe": False, "seqno": 11}]), 0)
        # a tie: the first in order
        self.assertEqual(mariadb.pick_bootstrap([{"safe": False, "seqno": 7}, {"safe": False, "seqno": 7}]), 0)
        # a node that never ran under Galera cannot be the one
        self.assertEqual(mariadb.pick_bootstrap([None, {"safe": False, "seqno": -1}]), 1)

    def test_grastate_and_the_recovered_position_are_read(self):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "grastate.dat")
            self.assertIsNone(mariadb.grastate(path))
            with open(path, "w") as f:
                f.write("# GALERA saved state\nversion: 2.1\nuuid:    723f68b8-f1bc-11f1-919c-c341dea4a71c\n"
                        "seqno:   -1\nsafe_to_bootstrap: 0\n")
            self.assertEqual(mariadb.grastate(path), {"safe": False, "seqno": -1})
            with open(path, "w") as f:
                f.write("uuid: x\nseqno: 42\nsafe_to_bootstrap: 1\n")
            self.assertEqual(mariadb.grastate(path), {"safe": True, "seqno": 42})
            with open(path, "w") as f:
                f.write("uuid: x\nseqno: garbage\n")
            self.assertEqual(mariadb.grastate(path), {"safe": False, "seqno": -1})
        log = ("2026-12-06 21:32:50 0 [Note] WSREP: Recovered position: 723f68b8-f1bc-11f1-919c-c341dea4a71c:12\n"
               "2026-12-06 21:32:50 0 [Note] other\n")
        self.assertEqual(mariadb.position_seqno(mariadb.recovered_position(log)), 12)
        self.assertEqual(mariadb.position_seqno(mariadb.recovered_position("nothing recovered")), -1)
        garbled = mariadb.recovered_position("WSREP: Recovered position: x:notanumber")
        self.assertEqual(mariadb.position_seqno(garbled), -1)
        self.assertEqual(mariadb.recovered_position(log), "723f68b8-f1bc-11f1-919c-c341dea4a71c:12")
        self.assertIsNone(mariadb.recovered_position("nothing recovered"))

    def test_a_crashed_galera_node_is_started_again_at_its_recovered_position(self):
        recovered = []

        def fake_recover(cnf, log):
            recovered.append(cnf)
            return position

        real, mariadb.wsrep_recover = mariadb.wsrep_recover, fake_recover
        try:
            with tempfile.TemporaryDirectory() as d:
                os.makedirs(os.path.join(d, "data"))
                node = {"kind": "mariadb", "role": "node", "cnf": "n.cnf", "cwd": d}
                grastate = os.path.join(d, "data", "grastate.dat")
                position = "723f68b8-f1bc-11f1-919c-c341dea4a71c:12"
                # a node that never ran, and other processes: nothing to add
                self.assertEqual(mariadb.rejoin_args(node), [])
                self.assertEqual(mariadb.rejoin_args({**node, "role": "primary"}), [])
                self.assertEqual(mariadb.rejoin_args({"kind": "edge", "cwd": d}), [])
                # stopped cleanly: grastate.dat has the position, mariadbd reads it itself
                with open(grastate, "w") as f:
                    f.write("uuid: x\nseqno: 42\nsafe_to_bootstrap: 0\n")
                self.assertEqual(mariadb.rejoin_args(node), [])
                self.assertEqual(recovered, [])
                # killed: the recovered position is passed on
                with open(grastate, "w") as f:
                    f.write("uuid: x\nseqno: -1\nsafe_to_bootstrap: 0\n")
                self.assertEqual(mariadb.rejoin_args(node), [f"--wsrep-start-position={position}"])
                self.assertEqual(recovered, ["n.cnf"])
                # nothing recovered: started as recorded (it asks for a full transfer)
                for position in (None, "723f68b8-f1bc-11f1-919c-c341dea4a71c:-1"):
                    self.assertEqual(mariadb.rejoin_args(node), [])
        finally:
            mariadb.wsrep_recover = real

    def test_data_of_one_replication_is_refused_by_the_other(self):
        mariadb.check_replication(None, "async", True)  # a state dir from before the option
        mariadb.check_replication("galera", "galera", True)
        mariadb.check_replication("async", "galera", False)  # no data yet: anything goes
        with self.assertRaises(SbError) as e:
            mariadb.check_replication(None, "galera", True)
        self.assertIn("--purge", str(e.exception))
        with self.assertRaises(SbError):
            mariadb.check_replication("galera", "async", True)


    def test_unasked_the_replication_is_what_the_data_was_made_for_else_galera(self):
        with tempfile.TemporaryDirectory() as d:
            state = State(d)
            self.assertEqual(mariadb.replication_for(state, None), "galera")  # no data yet
            self.assertEqual(mariadb.replication_for(state, "async"), "async")
            os.makedirs(os.path.join(d, "mariadb", "mariadb-shard0-primary", "data", "mysql"))
            # data from before the marker was made by the default of then
            self.assertEqual(mariadb.replication_for(state, None), "async")
            with open(os.path.join(d, "mariadb", "replication"), "w") as f:
                f.write("galera\n")
            self.assertEqual(mariadb.replication_for(state, None), "galera")
            self.assertEqual(mariadb.replication_for(state, "async"), "async")  # refused later, by check_replication

class GaleraProcessesTest(unittest.TestCase):
    def test_the_supervisor_restarts_a_node_without_bootstrapping(self):
        with tempfile.TemporaryDirectory() as d:
            c = ctx(d)
            started = []

            def fake_spawn(argv, out, env=None, cwd=None):
                started.append(argv)
                return 4242, 1

            with mock.patch.object(mariadb, "spawn", fake_spawn):
                comp = mariadb._spawn(c, 0, False, ("--wsrep-new-cluster",))
            self.assertIn("--wsrep-new-cluster", started[0], "the first start bootstraps")
            self.assertNotIn("--wsrep-new-cluster", comp["argv"], "what the supervisor runs joins")
            recorded = c.state.get("mariadb-shard0-node0")
            self.assertEqual(recorded["argv"], comp["argv"])
            self.assertEqual((recorded["kind"], recorded["role"], recorded["node"]), ("mariadb", "node", 0))
            self.assertEqual(recorded["stop_wave"], 1, "node 0 leaves last on `./sb down`")
            with mock.patch.object(mariadb, "spawn", fake_spawn):
                mariadb._spawn(c, 0, True)
                mariadb._spawn_garbd(c, 0)
            self.assertEqual(c.state.get("mariadb-shard0-node1")["stop_wave"], 0)
            garbd = c.state.get("mariadb-shard0-garbd")
            self.assertEqual((garbd["role"], garbd["port"]), ("arbitrator", Ports(5000).galera(0, 2)))
            self.assertIn(f"gcomm://127.0.0.1:{Ports(5000).galera(0, 0)},127.0.0.1:{Ports(5000).galera(0, 1)}",
                          garbd["argv"])

    def test_a_galera_node_is_configured_as_one_of_its_shards_cluster(self):
        with tempfile.TemporaryDirectory() as d:
            p = Ports(5000)
            text = mariadb.cnf(ctx(d), 1, True)
            self.assertIn(f"wsrep_provider = {mariadb.GALERA_PROVIDER}", text)
            self.assertIn(f"wsrep_cluster_address = gcomm://127.0.0.1:{p.galera(1, 0)},127.0.0.1:{p.galera(1, 1)},"
                          f"127.0.0.1:{p.galera(1, 2)}", text)
            self.assertIn(f"gmcast.listen_addr=tcp://127.0.0.1:{p.galera(1, 1)}", text)
            self.assertIn(f"ist.recv_addr=127.0.0.1:{p.galera(1, 1) + 1}", text)
            self.assertIn(f"wsrep_sst_receive_address = 127.0.0.1:{p.galera(1, 1) + 2}", text)
            self.assertIn("innodb_autoinc_lock_mode = 2", text)
            self.assertIn("innodb_flush_log_at_trx_commit = 1", text)
            self.assertNotIn("read_only", text, "both nodes take writes")
            self.assertNotIn("gtid_strict_mode", text)
            # the async layout is unchanged
            text = mariadb.cnf(ctx(d, "async"), 1, True)
            self.assertIn("read_only = 1", text)
            self.assertIn("sync_binlog = 1", text)
            self.assertNotIn("wsrep", text)
            self.assertEqual(mariadb.name(1, True, ctx(d, "async")), "mariadb-shard1-replica")
            self.assertEqual(mariadb.name(1, True, ctx(d)), "mariadb-shard1-node1")

    def test_galera_ports_are_distinct_from_every_other_port(self):
        p = Ports(5000)
        groups = p.all_listening(1, 2, True, None, galera=True)
        ports = [x for v in groups.values() for x in v]
        self.assertEqual(len(ports), len(set(ports)), "no port twice")
        self.assertEqual(len(groups["mariadb"]), 2 * MARIADB_SHARDS + 7 * MARIADB_SHARDS)
        self.assertNotIn(p.galera(0, 0), [x for v in p.all_listening(1, 2, True).values() for x in v])

    def test_the_workers_are_told_a_galera_shard_fails_over(self):
        with tempfile.TemporaryDirectory() as d:
            for replication, failover in (("galera", True), ("async", None)):
                conf = tomllib.loads(services._database_section(ctx(d, replication)))
                for sh in conf["database"]["shards"]:
                    self.assertEqual(sh.get("failover"), failover)
                stack = services.stack(ctx(d, replication), [])
                self.assertEqual(stack["mariadb"]["replication"], replication)


if __name__ == "__main__":
    unittest.main()
