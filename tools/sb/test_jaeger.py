"""Unit tests of the launcher's Jaeger pieces: its config, its ports, the apps' `[trace]` and how
it is built (no process started, nothing built).

    python3 -B -m unittest discover -s tools/sb -p 'test_*.py'
"""

from __future__ import annotations

import json
import os
import sys
import unittest
from unittest import mock

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jaeger  # noqa: E402
import services  # noqa: E402
from ports import Ports  # noqa: E402


class Ctx:
    def __init__(self, offset: int, infra_only: bool = False, trace_ratio: float = jaeger.SAMPLE_RATIO):
        self.ports = Ports(offset)
        self.infra_only = infra_only
        self.trace_ratio = trace_ratio
        self.limits = "default"
        self.kafka_brokers = 1


class JaegerTest(unittest.TestCase):
    def test_config_listens_on_loopback_ports_of_the_offset_with_bounded_memory_storage(self):
        c = json.loads(jaeger.config(Ports(1000)))
        ext = c["extensions"]
        self.assertEqual(ext["jaeger_query"]["http"]["endpoint"], "127.0.0.1:19311")
        self.assertEqual(ext["jaeger_query"]["grpc"]["endpoint"], "127.0.0.1:19312")
        self.assertFalse(ext["jaeger_query"]["enable_tracing"])
        self.assertEqual(ext["jaeger_storage"]["backends"]["memstore"]["memory"]["max_traces"], jaeger.MAX_TRACES)
        self.assertEqual(c["receivers"]["otlp"]["protocols"]["http"]["endpoint"], "127.0.0.1:19310")
        self.assertNotIn("grpc", c["receivers"]["otlp"]["protocols"])
        pipeline = c["service"]["pipelines"]["traces"]
        self.assertEqual(pipeline["processors"][0], "memory_limiter")
        self.assertEqual(c["processors"]["memory_limiter"]["limit_mib"], jaeger.MEMORY_LIMIT_MIB)
        self.assertEqual(c["service"]["telemetry"]["metrics"]["level"], "none")
        self.assertEqual(c["service"]["telemetry"]["traces"]["level"], "none")

    def test_ports_do_not_collide_and_are_listed_for_the_preflight(self):
        p = Ports(0)
        self.assertEqual((p.jaeger_otlp(), p.jaeger_query(), p.jaeger_query_grpc()), (18310, 18311, 18312))
        listening = p.all_listening(1, 2, True)
        self.assertEqual(listening["jaeger"], [18310, 18311, 18312])
        every = [port for group in listening.values() for port in group]
        self.assertEqual(len(every), len(set(every)))
        self.assertNotIn("jaeger", Ports(0).all_listening(1, 2, False))

    def test_every_app_config_points_at_jaeger_unless_infra_only(self):
        ctx = Ctx(5000)
        trace = services.trace_section(ctx)
        self.assertIn('otlp_endpoint = "http://127.0.0.1:23310/v1/traces"', trace)
        self.assertIn("sample_ratio = 1.0", trace)
        self.assertTrue(services.service_toml(ctx, "router", 23250, False).endswith(trace))
        self.assertEqual(services.trace_section(Ctx(5000, infra_only=True)), "")

    def test_trace_ratio_sets_the_sampling_and_zero_turns_tracing_off(self):
        self.assertIn("sample_ratio = 0.1", services.trace_section(Ctx(5000, trace_ratio=0.1)))
        self.assertEqual(services.trace_section(Ctx(5000, trace_ratio=0.0)), "")
        import sb
        up = lambda *a: sb.parser().parse_args(["up", *a])  # noqa: E731
        self.assertEqual(up().trace_ratio, 1.0)
        self.assertEqual(up("--trace-ratio", "0.1").trace_ratio, 0.1)
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
            up("--trace-ratio", "1.5")

    def test_it_is_built_once_by_the_go_tool_step_from_its_pinned_module(self):
        with open(os.path.join(jaeger.MODULE, "go.mod")) as f:
            mod = f.read()
        self.assertIn("tool github.com/jaegertracing/jaeger/cmd/jaeger", mod)
        self.assertIn("github.com/jaegertracing/jaeger v1.76.0", mod)
        with mock.patch("chartcheck.go_build", return_value=({"jaeger": "/x/jaeger"}, "cached")) as build:
            self.assertEqual(jaeger.binary(), "/x/jaeger")
        build.assert_called_once_with(jaeger.MODULE, {"jaeger": jaeger.PACKAGE}, "jaeger")


if __name__ == "__main__":
    unittest.main()
