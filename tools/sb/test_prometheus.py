"""Unit tests of the launcher's Prometheus pieces: the file_sd target list it keeps in step with
state.json, the config it writes, and its port (no processes started).

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import prometheus  # noqa: E402
from ports import MAX_EDGES, MAX_WORKERS_PER_ROLE, WORKERS, Ports  # noqa: E402
from state import State  # noqa: E402


def comp(name, kind, addr, metrics_addr=None, role=None):
    c = {"name": name, "kind": kind, "addr": addr, "port": int(addr.rsplit(":", 1)[1]), "pid": 1, "starttime": 1}
    if metrics_addr:
        c["metrics_addr"] = metrics_addr
    if role:
        c["role"] = role
    return c


class TargetsTest(unittest.TestCase):
    def components(self):
        return [
            comp("kafka-0", "kafka", "127.0.0.1:19092"),
            comp("edge-1", "edge", "127.0.0.1:18101", "127.0.0.1:18151", "edge-1"),
            comp("edge-0", "edge", "127.0.0.1:18100", "127.0.0.1:18150", "edge-0"),
            comp("worker-dms", "worker", "127.0.0.1:18203", "127.0.0.1:18203", "dms"),
            comp("worker-dms-1", "worker", "127.0.0.1:18208", "127.0.0.1:18208", "dms"),
            comp("router", "router", "127.0.0.1:18250", role="router"),
            comp("nginx-0", "nginx", "127.0.0.1:18080"),
            comp("prometheus", "prometheus", "127.0.0.1:18300"),
        ]

    def test_every_app_process_is_a_target_at_its_metrics_address_with_job_and_process(self):
        t = prometheus.targets(self.components())
        self.assertEqual([x["targets"] for x in t],
                         [["127.0.0.1:18150"], ["127.0.0.1:18151"], ["127.0.0.1:18250"], ["127.0.0.1:18203"],
                          ["127.0.0.1:18208"]])
        self.assertEqual(t[0]["labels"], {"job": "edge", "process": "edge-0"})
        self.assertEqual(t[2]["labels"], {"job": "router", "process": "router"})
        self.assertEqual(t[4]["labels"], {"job": "worker", "process": "worker-dms-1", "role": "dms"})

    def test_the_file_follows_state_json_and_is_rewritten_only_when_it_changes(self):
        with tempfile.TemporaryDirectory() as d:
            state = State(d)
            state.data["components"] = self.components()
            self.assertFalse(prometheus.write_targets(state), "no prometheus dir yet (--infra-only)")
            os.makedirs(prometheus.home(state))
            self.assertTrue(prometheus.write_targets(state))
            self.assertFalse(prometheus.write_targets(state))
            # an edge goes away (or `--edges` changed): the list follows
            state.data["components"] = [c for c in state.components if c["name"] != "edge-1"]
            self.assertTrue(prometheus.write_targets(state))
            with open(prometheus.targets_file(state)) as f:
                listed = [x["labels"]["process"] for x in json.load(f)]
            self.assertEqual(listed, ["edge-0", "router", "worker-dms", "worker-dms-1"])
            # a crashed process keeps its target (Prometheus shows up == 0 for it)
            state.components[0]["pid"] = None
            self.assertFalse(prometheus.write_targets(state))

    def test_the_config_scrapes_the_file_sd_list_and_loads_the_rules(self):
        conf = json.loads(prometheus.config("/s/prometheus/targets.json", "/repo/observability/rules"))
        self.assertEqual(conf["scrape_configs"][0]["file_sd_configs"], [{"files": ["/s/prometheus/targets.json"]}])
        self.assertEqual(conf["rule_files"], ["/repo/observability/rules/*.yml"])
        self.assertEqual(conf["global"]["scrape_interval"], prometheus.SCRAPE_INTERVAL)
        self.assertTrue(os.path.isdir(prometheus.RULES_DIR))


class PortTest(unittest.TestCase):
    def test_prometheus_has_a_port_of_its_own(self):
        for offset in (0, 1000, 3000, 4000, 5000):
            p = Ports(offset)
            groups = p.all_listening(3, MAX_EDGES, True, {w: MAX_WORKERS_PER_ROLE for w in WORKERS})
            self.assertEqual(groups["prometheus"], [p.prometheus()])
            others = [port for g, ports in groups.items() if g != "prometheus" for port in ports]
            self.assertNotIn(p.prometheus(), others)


if __name__ == "__main__":
    unittest.main()
