"""Unit tests of the chart checks' own logic (no helm, no Go, no network):

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

import chartcheck  # noqa: E402

SWAGGER = {
    "definitions": {
        "io.k8s.api.core.v1.Service": {
            "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                           "spec": {"$ref": "#/definitions/io.k8s.api.core.v1.ServiceSpec"}},
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Service", "version": "v1"}],
        },
        "io.k8s.api.core.v1.ServiceSpec": {
            "type": "object",
            "properties": {"ports": {"type": "array", "items": {"$ref": "#/definitions/io.k8s.api.core.v1.ServicePort"}},
                           "selector": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "io.k8s.api.core.v1.ServicePort": {
            "type": "object", "required": ["port"],
            "properties": {"port": {"type": "integer"},
                           "targetPort": {"$ref": "#/definitions/io.k8s.apimachinery.pkg.util.intstr.IntOrString"}},
        },
        "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {"type": "string", "format": "int-or-string"},
        "io.k8s.api.apps.v1.Unrelated": {"type": "object", "properties": {"x": {"type": "string"}}},
        "io.k8s.api.policy.v1.PodDisruptionBudget": {
            "type": "object", "properties": {"spec": {"type": "object"}},
            "x-kubernetes-group-version-kind": [{"group": "policy", "kind": "PodDisruptionBudget", "version": "v1"}],
        },
    }
}


class StrictSchemaTest(unittest.TestCase):
    def test_objects_with_properties_allow_no_others_and_maps_stay_maps(self):
        s = chartcheck._strict({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {}}}},
                                "x": {"type": "object", "additionalProperties": {"type": "string"}}})
        self.assertIs(s["additionalProperties"], False)
        self.assertIs(s["properties"]["a"]["additionalProperties"], False)
        self.assertEqual(s["x"]["additionalProperties"], {"type": "string"})

    def test_int_or_string_and_preserved_fields(self):
        self.assertEqual(chartcheck._strict({"x-kubernetes-int-or-string": True})["anyOf"],
                         chartcheck.INT_OR_STRING["anyOf"])
        open_obj = chartcheck._strict({"type": "object", "properties": {"a": {}},
                                       "x-kubernetes-preserve-unknown-fields": True})
        self.assertNotIn("additionalProperties", open_obj)

    def test_one_standalone_schema_per_kind_with_only_the_definitions_it_needs(self):
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(chartcheck.k8s_schemas(SWAGGER, d), 2)
            with open(os.path.join(d, "v1", "v1", "service.json")) as f:
                svc = json.load(f)
            self.assertTrue(os.path.exists(os.path.join(d, "policy", "v1", "poddisruptionbudget.json")))
        self.assertEqual(svc["$ref"], "#/definitions/io.k8s.api.core.v1.Service")
        self.assertEqual(set(svc["definitions"]), {
            "io.k8s.api.core.v1.Service", "io.k8s.api.core.v1.ServiceSpec", "io.k8s.api.core.v1.ServicePort",
            "io.k8s.apimachinery.pkg.util.intstr.IntOrString"})
        self.assertIs(svc["definitions"]["io.k8s.api.core.v1.ServicePort"]["additionalProperties"], False)
        self.assertEqual(svc["definitions"]["io.k8s.apimachinery.pkg.util.intstr.IntOrString"], chartcheck.INT_OR_STRING)

    def test_crd_versions_become_strict_schemas_with_an_open_metadata(self):
        crd = {"kind": "CustomResourceDefinition",
               "spec": {"group": "monitoring.coreos.com", "names": {"kind": "PodMonitor"},
                        "versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
                            "type": "object", "properties": {"spec": {"type": "object", "properties": {"a": {}}}}}}}]}}
        with tempfile.TemporaryDirectory() as d:
            self.assertEqual(chartcheck.crd_schemas([crd, {"kind": "ConfigMap"}], d), 1)
            with open(os.path.join(d, "monitoring.coreos.com", "v1", "podmonitor.json")) as f:
                s = json.load(f)
        self.assertIs(s["properties"]["spec"]["additionalProperties"], False)
        self.assertEqual(s["properties"]["metadata"], {"type": "object"})


class PodEnvTest(unittest.TestCase):
    def test_the_environment_a_pod_would_get_with_stand_ins(self):
        env = chartcheck._pod_env({"env": [
            {"name": "POD_INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}}},
            {"name": "SWITCHBOARD_EDGE__ID", "value": "edge-$(POD_INDEX)"},
            {"name": "LATER", "value": "$(UNDEFINED)"},
            {"name": "SWITCHBOARD_DATABASE__PASSWORD", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}},
            {"name": "SWITCHBOARD_REDIS__NODES", "valueFrom": {"secretKeyRef": {"name": "r", "key": "nodes"}}},
        ]})
        self.assertEqual(env["SWITCHBOARD_EDGE__ID"], "edge-0")
        self.assertEqual(env["LATER"], "$(UNDEFINED)")  # as the kubelet leaves an unknown reference
        self.assertEqual(json.loads(env["SWITCHBOARD_REDIS__NODES"]), ["redis://127.0.0.1:1"])
        self.assertTrue(env["SWITCHBOARD_DATABASE__PASSWORD"])


if __name__ == "__main__":
    unittest.main()
