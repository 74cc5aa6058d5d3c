"""Unit tests of `./sb up`'s pre-flight port check (a loopback socket, no platform) and of the
configs it writes.

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import launcher  # noqa: E402
import services  # noqa: E402
import tomllib  # noqa: E402
from ports import Ports  # noqa: E402
from state import State  # noqa: E402
from util import SbError, proc_starttime  # noqa: E402


class PreflightTest(unittest.TestCase):
    def test_a_running_edges_internal_listener_is_ours_so_up_can_start_a_dead_component(self):
        ports = Ports(7000)
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.bind(("127.0.0.1", ports.edge_internal(0)))
        held.listen()
        self.addCleanup(held.close)
        with tempfile.TemporaryDirectory() as d:
            state = State(d)
            ctx = launcher.Ctx(state, ports, 1, 1, False, d, False)
            # the port is held by something that is not a recorded component: refused
            with self.assertRaises(SbError) as e:
                launcher._preflight(ctx)
            self.assertIn(str(ports.edge_internal(0)), str(e.exception))
            # held by a running edge of this platform (this test process stands in for it)
            me = os.getpid()
            state.data["components"] = [{
                "name": "edge-0", "kind": "edge", "port": ports.edge(0), "addr": f"127.0.0.1:{ports.edge(0)}",
                "metrics_addr": f"127.0.0.1:{ports.edge_internal(0)}", "pid": me, "starttime": proc_starttime(me)}]
            try:
                launcher._preflight(ctx)
            except SbError as err:
                if str(ports.edge_internal(0)) in str(err):
                    raise
                # other ports of offset 7000 taken on this machine are not this test's business


class ConfigTest(unittest.TestCase):
    def test_each_worker_and_the_router_have_their_own_static_name_in_their_consumer_group(self):
        with tempfile.TemporaryDirectory() as d:
            ctx = launcher.Ctx(State(d), Ports(7000), 1, 2, False, d, False, workers={"dms": 2})
            services.write_configs(ctx)

            def kafka(name: str) -> dict:
                with open(os.path.join(ctx.state.conf_dir, f"{name}.toml"), "rb") as f:
                    return tomllib.load(f)["kafka"]

            names = [n for n, _, _ in services.worker_processes(ctx)] + ["router"]
            self.assertIn("worker-dms-1", names)
            for name in names:
                self.assertEqual(kafka(name).get("group_instance_id"), name)
            # edges read their own topic by assignment: no group to be named in
            self.assertNotIn("group_instance_id", kafka("edge-0"))


class NginxConfTest(unittest.TestCase):
    def test_a_reload_lets_the_old_workers_drain_their_sockets_for_an_hour(self):
        import nginx
        conf = nginx.nginx_conf(18080, "/nowhere")
        self.assertIn("worker_shutdown_timeout 1h;", conf)


if __name__ == "__main__":
    unittest.main()
