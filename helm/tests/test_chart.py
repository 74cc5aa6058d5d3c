"""Properties of the rendered chart (run by `./sb test` / `./sb chart` through tools/sb/chartcheck.py,
which renders every value set of helm/switchboard/ci/ for every pinned Kubernetes version into
SB_CHART_RENDERED and gives the tools in SB_HELM and SB_YAML2JSON). Standard library only.

What is checked against the code, not against the chart's own idea of it: the probe paths are the
routes the binaries serve (runtime/src/health.rs), the TOML keys and sections are the fields of
the settings structs, the schema's free keys are exactly those fields."""

from __future__ import annotations

import base64
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
import unittest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(REPO, "helm", "switchboard")
HELM = os.environ.get("SB_HELM", "")
YAML2JSON = os.environ.get("SB_YAML2JSON", "")
RENDERED = os.environ.get("SB_CHART_RENDERED", "")
KUBE_VERSIONS = [v for v in os.environ.get("SB_KUBE_VERSIONS", "").split(",") if v]
WORKLOADS = ("Deployment", "StatefulSet", "Job")
APP_CONTAINERS = {"edge-ws", "router"} | {f"worker-{r}" for r in ("auth", "users", "invites", "dms", "presence")}
# [section] -> settings struct of each binary (docs/operations.md, "Which sections each binary reads")
SECTIONS = {
    "edge.toml": {"kafka", "log", "edge", "trace"},
    "worker.toml": {"kafka", "log", "redis", "database", "service", "limits", "trace"},
    "router.toml": {"kafka", "log", "redis", "service", "router", "trace"},
    "migrate.toml": {"database"},
}
STRUCTS = {
    "kafka": ("runtime/src/settings.rs", "KafkaSettings"),
    "log": ("runtime/src/settings.rs", "LogSettings"),
    "trace": ("runtime/src/settings.rs", "TraceSettings"),
    "redis": ("runtime/src/settings.rs", "RedisSettings"),
    "service": ("runtime/src/settings.rs", "ServiceSettings"),
    "edge": ("edge-ws/src/settings.rs", "EdgeSettings"),
    "database": ("workers/src/settings.rs", "DatabaseSettings"),
    "limits": ("workers/src/settings.rs", "Limits"),
    "router": ("router/src/lib.rs", "RouterSettings"),
}


def struct_fields(path: str, name: str) -> set[str]:
    with open(os.path.join(REPO, path)) as f:
        src = f.read()
    m = re.search(r"pub struct " + name + r"\s*\{(.*?)\n\}", src, re.S)
    assert m, f"struct {name} not found in {path}"
    return set(re.findall(r"^\s*pub (\w+):", m.group(1), re.M))


def served_paths() -> set[str]:
    """Routes of the health listener every process runs (edges: internal listener; workers and the
    router: service.health_listen)."""
    with open(os.path.join(REPO, "runtime", "src", "health.rs")) as f:
        src = f.read()
    return {"/" + p for p in re.findall(r'warp::path!\("([a-z]+)"\)', src)}


def to_json(yaml_text: str) -> list[dict]:
    r = subprocess.run([YAML2JSON], input=yaml_text, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


def helm_template(*values: str, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    args = [HELM, "template", "sb", CHART, "--namespace", "chat", "--kube-version", KUBE_VERSIONS[0]]
    for v in values:
        args += ["-f", v]
    return subprocess.run(args + (extra or []), capture_output=True, text=True)


def renders() -> dict[str, list[dict]]:
    out = {}
    for path in sorted(glob.glob(os.path.join(RENDERED, "*.yaml"))):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = to_json(f.read())
    return out


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def matches(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        has = e["key"] in labels
        if e["operator"] == "In" and labels.get(e["key"]) not in e["values"]:
            return False
        if e["operator"] == "NotIn" and has and labels[e["key"]] in e["values"]:
            return False
        if e["operator"] == "Exists" and not has:
            return False
    return True


class Rendered(unittest.TestCase):
    all: dict[str, list[dict]] = {}

    @classmethod
    def setUpClass(cls):
        if not (HELM and YAML2JSON and RENDERED and KUBE_VERSIONS):
            raise RuntimeError("run through tools/sb/chartcheck.py (./sb chart): SB_HELM, SB_YAML2JSON, "
                               "SB_CHART_RENDERED and SB_KUBE_VERSIONS must be set")
        cls.all = renders()
        if len(cls.all) < 3 * len(KUBE_VERSIONS):
            raise RuntimeError(f"expected >= 3 renders per Kubernetes version in {RENDERED}, found {len(cls.all)}")

    def each(self, kinds=None):
        for name, objs in self.all.items():
            for o in objs:
                if kinds is None or o["kind"] in kinds:
                    yield name, o

    def config(self, objs: list[dict]) -> dict[str, dict]:
        cm = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")]
        self.assertEqual(len(cm), 1)
        return {k: tomllib.loads(v) for k, v in cm[0]["data"].items()}

    # ------------------------------------------------------------ edges

    def test_edge_id_comes_from_the_statefulset_ordinal(self):
        for name, objs in self.all.items():
            sts = [o for o in objs if o["kind"] == "StatefulSet"]
            self.assertEqual(len(sts), 1, name)
            c = pod_spec(sts[0])["containers"][0]
            env = [e["name"] for e in c["env"]]
            idx = next(e for e in c["env"] if e["name"] == "POD_INDEX")
            self.assertEqual(idx["valueFrom"]["fieldRef"]["fieldPath"], "metadata.labels['apps.kubernetes.io/pod-index']")
            edge_id = next(e for e in c["env"] if e["name"] == "SWITCHBOARD_EDGE__ID")
            self.assertEqual(edge_id["value"], "edge-$(POD_INDEX)")
            # $(VAR) expands only variables defined earlier in the list
            self.assertLess(env.index("POD_INDEX"), env.index("SWITCHBOARD_EDGE__ID"))
            # every ordinal gives a valid id (1-32 of a-z 0-9 -, edge-ws/src/settings.rs)
            for n in range(sts[0]["spec"]["replicas"]):
                self.assertRegex(f"edge-{n}", r"^[a-z0-9-]{1,32}$")
            # and the file does not set one that the environment would have to override
            self.assertNotIn("id", self.config(objs)["edge.toml"]["edge"], name)

    def test_edge_drain_fits_in_the_grace_period(self):
        for name, o in self.each({"StatefulSet"}):
            spec = pod_spec(o)
            sleep = spec["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
            # preStop, then the edge's 5 s shutdown grace and 5 s producer flush (docs/operations.md)
            self.assertGreaterEqual(spec["terminationGracePeriodSeconds"], sleep + 5 + 5 + 5, name)

    def test_front_follows_the_edges_through_the_headless_service(self):
        for name, objs in self.all.items():
            fronts = [o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-front")]
            if not fronts:
                continue
            conf = fronts[0]["data"]["nginx.conf"]
            headless = [o for o in objs if o["kind"] == "Service" and o["spec"].get("clusterIP") == "None"
                        and o["metadata"]["name"].endswith("-edge-headless")]
            self.assertEqual(len(headless), 1, name)
            sts = next(o for o in objs if o["kind"] == "StatefulSet")
            self.assertEqual(sts["spec"]["serviceName"], headless[0]["metadata"]["name"])
            self.assertTrue(matches({"matchLabels": headless[0]["spec"]["selector"]}, sts["spec"]["template"]["metadata"]["labels"]))
            port = headless[0]["spec"]["ports"][0]["port"]
            host = f"{headless[0]['metadata']['name']}.chat.svc.cluster.local"
            self.assertIn(f'set $edges "http://{host}:{port}";', conf, name)
            # a variable in proxy_pass (re-resolved at request time), never a static upstream
            self.assertNotRegex(conf, r"(?m)^\s*upstream\s+\S+\s*\{")
            for loc in ("/api/", "= /ws", "= /healthz"):
                block = conf.split(f"location {loc} {{", 1)[1].split("}", 1)[0]
                self.assertIn("proxy_pass $edges;", block, (name, loc))
                self.assertIn("proxy_set_header X-Forwarded-For $remote_addr;", block, (name, loc))
            self.assertRegex(conf, r"resolver \S+ valid=\d+s")
            deploy = next(o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-front"))
            self.assertGreaterEqual(deploy["spec"]["replicas"], 2, name)
            self.assertIn("podAntiAffinity", pod_spec(deploy)["affinity"], name)

    def test_front_config_is_accepted_by_nginx(self):
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if not nginx:
            self.fail("nginx not found (./sb installs it); the front's config cannot be checked")
        name, objs = next((n, o) for n, o in self.all.items() if n.startswith("minimal"))
        conf = next(o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-front"))["data"]["nginx.conf"]
        with tempfile.TemporaryDirectory() as d:
            # no cluster DNS here: the resolver becomes an address; /tmp paths and ports stay
            conf = re.sub(r"resolver \S+", "resolver 127.0.0.1", conf)
            conf = re.sub(r"listen (\d+)", r"listen 127.0.0.1:\1", conf).replace("/tmp/", d + "/")
            path = os.path.join(d, "nginx.conf")
            with open(path, "w") as f:
                f.write(conf)
            r = subprocess.run([nginx, "-t", "-q", "-p", d, "-c", path, "-e", "/dev/stderr"], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)

    # ------------------------------------------------------------ every pod

    def test_every_pod_has_probes_on_served_paths_and_a_security_context(self):
        served = served_paths()
        self.assertTrue({"/healthz", "/readyz", "/metrics"} <= served, served)
        for name, o in self.each(WORKLOADS):
            spec = pod_spec(o)
            where = (name, o["metadata"]["name"])
            self.assertIs(spec.get("enableServiceLinks"), False, where)  # no SWITCHBOARD_*_PORT variables
            self.assertIs(spec.get("automountServiceAccountToken"), False, where)
            psc = spec["securityContext"]
            self.assertIs(psc["runAsNonRoot"], True, where)
            self.assertEqual(psc["seccompProfile"]["type"], "RuntimeDefault", where)
            for c in spec["containers"]:
                sc = c["securityContext"]
                self.assertIs(sc["readOnlyRootFilesystem"], True, where)
                self.assertIs(sc["allowPrivilegeEscalation"], False, where)
                self.assertIs(sc["runAsNonRoot"], True, where)
                self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where)
                self.assertEqual(sc["seccompProfile"]["type"], "RuntimeDefault", where)
                self.assertIn("/tmp", [m["mountPath"] for m in c.get("volumeMounts", [])], where)
                if o["kind"] == "Job":
                    continue  # a run-to-completion pod: no probes
                for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                    self.assertIn(p, c, (where, c["name"]))
                ports = {pt["name"]: pt["containerPort"] for pt in c["ports"]}
                if c["name"] in APP_CONTAINERS:
                    self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz", where)
                    self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz", where)
                    for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                        get = c[p]["httpGet"]
                        self.assertIn(get["path"], served, (where, p))
                        # on the health listener the binary is configured with
                        self.assertEqual(get["port"], "metrics", (where, p))
                    self.assertEqual(ports["metrics"], self.health_port(name, c["name"]), where)
                else:
                    self.assertEqual(c["name"], "nginx", where)
                    conf = next(x for x in self.all[name] if x["kind"] == "ConfigMap"
                                and x["metadata"]["name"].endswith("-front"))["data"]["nginx.conf"]
                    for p in ("startupProbe", "livenessProbe", "readinessProbe"):
                        get = c[p]["httpGet"]
                        port = ports[get["port"]]
                        server = conf.split(f"listen {port};", 1)
                        self.assertEqual(len(server), 2, f"no nginx server on the probe port {port}")
                        self.assertIn(f"location = {get['path']} {{\n", server[1].split("listen ", 1)[0], (where, p))

    def health_port(self, render: str, container: str) -> int:
        cfg = self.config(self.all[render])
        if container == "edge-ws":
            addr = cfg["edge.toml"]["edge"]["internal_listen"]
        elif container == "router":
            addr = cfg["router.toml"]["service"]["health_listen"]
        else:
            addr = cfg["worker.toml"]["service"]["health_listen"]
        return int(addr.rsplit(":", 1)[1])

    def test_every_app_container_reads_its_own_config_and_known_variables(self):
        files = {"edge-ws": "edge.toml", "router": "router.toml"}
        for name, o in self.each(WORKLOADS):
            for c in pod_spec(o)["containers"]:
                if c["name"] not in APP_CONTAINERS and c["name"] != "sb-migrate":
                    continue
                want = files.get(c["name"], "migrate.toml" if c["name"] == "sb-migrate" else "worker.toml")
                self.assertEqual(c["args"], ["--config", f"/etc/switchboard/{want}"], (name, c["name"]))
                for e in c.get("env", []):
                    if e["name"].startswith("SWITCHBOARD_"):
                        section = e["name"][len("SWITCHBOARD_"):].split("__", 1)[0].lower()
                        # the binaries refuse a variable of a section they lack (exit 64)
                        self.assertIn(section, SECTIONS[want], (name, c["name"], e["name"]))
                        key = e["name"].split("__", 1)[1].lower()
                        self.assertIn(key, struct_fields(*STRUCTS[section]), (name, e["name"]))

    # ------------------------------------------------------------ settings

    def test_config_files_hold_only_keys_of_the_settings_structs(self):
        shard_fields = struct_fields("workers/src/settings.rs", "ShardSettings")
        for name, objs in self.all.items():
            for file, cfg in self.config(objs).items():
                self.assertLessEqual(set(cfg), SECTIONS[file], (name, file))
                for section, keys in cfg.items():
                    fields = struct_fields(*STRUCTS[section])
                    self.assertLessEqual(set(keys), fields, (name, file, section))
                    for shard in keys.get("shards", []) if section == "database" else []:
                        self.assertLessEqual(set(shard), shard_fields)
                # required keys without a default: in the file or, per pod, in the environment
                if "kafka" in cfg:
                    self.assertTrue({"brokers", "topic_prefix", "replication_factor"} <= set(cfg["kafka"]))
                if "service" in cfg:
                    self.assertIn("health_listen", cfg["service"])
                if "database" in cfg:
                    self.assertTrue({"user", "name", "shards"} <= set(cfg["database"]))

    def test_an_unset_linger_leaves_each_process_its_own_default(self):
        # edges hold requests 5 ms, workers 1 ms (edge-ws EDGE_LINGER_MS, runtime kafka::LINGER_MS):
        # a linger in the shared [kafka] section would overrule both
        for name, objs in self.all.items():
            for file, cfg in self.config(objs).items():
                self.assertNotIn("linger_ms", cfg.get("kafka", {}), (name, file))
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write("kafka: {lingerMs: 0}\n")
            f.flush()
            r = helm_template(os.path.join(CHART, "ci", "minimal.yaml"), f.name)
        self.assertEqual(r.returncode, 0, r.stderr)
        for file, cfg in self.config(to_json(r.stdout)).items():
            if "kafka" in cfg:
                self.assertEqual(cfg["kafka"]["linger_ms"], 0, file)

    def test_schema_free_keys_are_the_settings_fields(self):
        with open(os.path.join(CHART, "values.schema.json")) as f:
            schema = json.load(f)
        edge = set(schema["properties"]["edge"]["properties"]["settings"]["properties"])
        self.assertEqual(edge, struct_fields(*STRUCTS["edge"]) - {"id", "listen", "internal_listen"})
        limits = set(schema["properties"]["limits"]["properties"])
        self.assertEqual(limits, struct_fields(*STRUCTS["limits"]))
        # trace's values are camelCase: each is one field of [trace], and every field has one
        trace = {re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), k)
                 for k in schema["properties"]["trace"]["properties"]}
        self.assertEqual(trace, struct_fields(*STRUCTS["trace"]))

    # ------------------------------------------------------------ tracing

    def traced(self, values: str) -> list[dict]:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(values)
            f.flush()
            r = helm_template(os.path.join(CHART, "ci", "minimal.yaml"), f.name)
        self.assertEqual(r.returncode, 0, r.stderr)
        return to_json(r.stdout)

    def collector_egress(self, objs: list[dict]) -> dict[str, bool]:
        """Per NetworkPolicy: whether it lets the pods out to port 4318 (the collector's)."""
        return {o["metadata"]["name"]: any(p.get("port") == 4318 for e in o["spec"].get("egress", [])
                                           for p in e.get("ports", []))
                for o in objs if o["kind"] == "NetworkPolicy"}

    def test_trace_is_written_only_with_an_endpoint(self):
        # unset (every value set of ci/ but full.yaml): no [trace], so the binaries' tracing is off
        # and no policy lets a pod out to a collector
        for name, objs in self.all.items():
            on = "full" in name
            for file, cfg in self.config(objs).items():
                self.assertEqual("trace" in cfg, on and file != "migrate.toml", (name, file))
            if not on:
                self.assertFalse(any(self.collector_egress(objs).values()), name)
        objs = self.traced('trace: {otlpEndpoint: "http://otel.monitoring:4318/v1/traces", '
                           "sampleRatio: 1, queueSpans: 512}\n")
        cfg = self.config(objs)
        for file in ("edge.toml", "worker.toml", "router.toml"):
            self.assertEqual(cfg[file]["trace"], {"otlp_endpoint": "http://otel.monitoring:4318/v1/traces",
                                                  "sample_ratio": 1, "queue_spans": 512}, file)
        self.assertNotIn("trace", cfg["migrate.toml"])
        egress = self.collector_egress(objs)
        for name, out in egress.items():
            # the app pods reach the collector; the front and the migrations do not export spans
            app = re.search(r"-(edge|worker-[a-z]+|router)$", name) is not None
            self.assertEqual(out, app, name)
        self.assertEqual(sum(egress.values()), 7, egress)
        # the defaults of the settings: a ratio of 0.1 stays a float
        cfg = self.config(self.traced('trace: {otlpEndpoint: "https://otel:4318/v1/traces"}\n'))
        self.assertEqual(cfg["edge.toml"]["trace"]["sample_ratio"], 0.1)
        self.assertEqual(cfg["worker.toml"]["trace"]["queue_spans"], 2048)

    def test_no_secret_value_in_a_config_map(self):
        for name, objs in self.all.items():
            secrets = set()
            for o in objs:
                if o["kind"] == "Secret":
                    secrets |= {base64.b64decode(v).decode() for v in o.get("data", {}).values()}
            secrets.add("not-a-real-password")  # the value sets' password
            for o in objs:
                if o["kind"] != "ConfigMap":
                    continue
                for k, v in o["data"].items():
                    for s in secrets:
                        self.assertNotIn(s, v, (name, o["metadata"]["name"], k))
                    self.assertNotRegex(v, r"(?m)^\s*password\s*=", (name, k))
                    self.assertNotRegex(v, r"redis://[^\"/]*@", (name, k))
            for _n, o in self.each(WORKLOADS):
                for c in pod_spec(o)["containers"]:
                    for e in c.get("env", []):
                        if "PASSWORD" in e["name"] or e["name"] == "SWITCHBOARD_REDIS__NODES":
                            self.assertIn("secretKeyRef", e.get("valueFrom", {}), (name, c["name"], e["name"]))

    # ------------------------------------------------------------ selectors

    def test_pdbs_services_hpas_and_policies_select_their_pods(self):
        for name, objs in self.all.items():
            pods = {(o["kind"], o["metadata"]["name"]): o["spec"]["template"]["metadata"]["labels"]
                    for o in objs if o["kind"] in WORKLOADS}
            for o in objs:
                where = (name, o["kind"], o["metadata"]["name"])
                if o["kind"] == "PodDisruptionBudget":
                    hits = [k for k, labels in pods.items() if matches(o["spec"]["selector"], labels)]
                    self.assertEqual(len(hits), 1, where)  # exactly its own workload
                    self.assertNotEqual(hits[0][0], "Job", where)
                    wl = next(x for x in objs if (x["kind"], x["metadata"]["name"]) == hits[0])
                    self.assertEqual(wl["metadata"]["name"], o["metadata"]["name"], where)
                elif o["kind"] == "Service" and o["spec"].get("selector"):
                    self.assertTrue(any(matches({"matchLabels": o["spec"]["selector"]}, lb) for lb in pods.values()), where)
                    for p in o["spec"]["ports"]:
                        tp = p["targetPort"]
                        self.assertTrue(any(tp in [cp["name"] for c in pod_spec(x)["containers"] for cp in c.get("ports", [])]
                                            for x in objs if x["kind"] in WORKLOADS
                                            and matches({"matchLabels": o["spec"]["selector"]}, x["spec"]["template"]["metadata"]["labels"])), where)
                elif o["kind"] == "HorizontalPodAutoscaler":
                    ref = o["spec"]["scaleTargetRef"]
                    self.assertIn((ref["kind"], ref["name"]), pods, where)
                    target = next(x for x in objs if (x["kind"], x["metadata"]["name"]) == (ref["kind"], ref["name"]))
                    self.assertNotIn("replicas", target["spec"], where)  # the HPA owns it
                    self.assertGreaterEqual(o["spec"]["minReplicas"], 1)
                elif o["kind"] == "NetworkPolicy":
                    self.assertEqual(sum(matches(o["spec"]["podSelector"], lb) for lb in pods.values()), 1, where)
                elif o["kind"] in ("PodMonitor",):
                    hits = [k for k, lb in pods.items() if matches(o["spec"]["selector"], lb)]
                    self.assertEqual({k[1].rsplit("-", 1)[-1] for k in hits} >= {"edge", "router"}, True, where)
                    self.assertFalse(any(k[0] == "Job" for k in hits), where)

    def test_only_workers_and_migrations_reach_the_database(self):
        for name, objs in self.all.items():
            db_ports = None
            for o in objs:
                if o["kind"] != "NetworkPolicy":
                    continue
                comp = o["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                ports = {p["port"] for rule in o["spec"]["egress"] for p in rule.get("ports", [])}
                if db_ports is None and comp == "worker-dms":
                    db_ports = ports - {53}
                allowed = comp.startswith("worker-") or comp == "migrations"
                self.assertEqual(3306 in ports, allowed, (name, comp))
                if comp == "edge":
                    froms = [f for rule in o["spec"]["ingress"] if any(p["port"] == "http" for p in rule["ports"])
                             for f in rule.get("from", [{}])]
                    self.assertTrue(froms and all(f for f in froms), (name, "edges reachable from anywhere"))

    def test_hooks_use_only_what_exists_when_they_run(self):
        """A pre-install hook runs before the release's own objects are created: everything its
        pod refers to must be a hook of the same events with a lower weight, or not the chart's."""
        for name, objs in self.all.items():
            rendered = {(o["kind"], o["metadata"]["name"]): o for o in objs}
            jobs = [o for o in objs if o["kind"] == "Job"]
            self.assertTrue(jobs, name)
            for job in jobs:
                ann = job["metadata"]["annotations"]
                self.assertEqual(ann["helm.sh/hook"], "pre-install,pre-upgrade")
                spec = pod_spec(job)
                refs = [("ServiceAccount", spec.get("serviceAccountName", "default"))]
                refs += [("ConfigMap", v["configMap"]["name"]) for v in spec.get("volumes", []) if "configMap" in v]
                refs += [("Secret", v["secret"]["secretName"]) for v in spec.get("volumes", []) if "secret" in v]
                refs += [("Secret", e["valueFrom"]["secretKeyRef"]["name"]) for c in spec["containers"]
                         for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})]
                for ref in refs:
                    obj = rendered.get(ref)
                    if obj is None:
                        continue  # not the chart's: the user's Secret, the namespace's default account
                    oa = obj["metadata"].get("annotations", {})
                    self.assertEqual(oa.get("helm.sh/hook"), ann["helm.sh/hook"], (name, ref, "is not a hook"))
                    self.assertLess(int(oa["helm.sh/hook-weight"]), int(ann["helm.sh/hook-weight"]), (name, ref))

    def test_kube_versions_are_inside_the_chart_range(self):
        with open(os.path.join(CHART, "Chart.yaml")) as f:
            chart = f.read()
        lo, hi = re.search(r'kubeVersion: ">=(\d+\.\d+)\.0-0 <(\d+\.\d+)\.0-0"', chart).groups()
        key = lambda v: tuple(int(x) for x in v.lstrip("v").split(".")[:2])
        for v in KUBE_VERSIONS:
            self.assertTrue(key(lo) <= key(v) < key(hi), v)
        self.assertEqual(min(key(v) for v in KUBE_VERSIONS), key(lo))


class BadValues(unittest.TestCase):
    """values.schema.json refuses bad values before anything renders, with a message naming the value."""

    def refused(self, values: str, *expect: str):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(values)
            f.flush()
            r = helm_template(os.path.join(CHART, "ci", "minimal.yaml"), f.name)
        self.assertNotEqual(r.returncode, 0, f"accepted:\n{values}")
        for e in expect:
            self.assertIn(e, r.stderr)
        return r.stderr

    def test_the_minimal_values_render(self):
        r = helm_template(os.path.join(CHART, "ci", "minimal.yaml"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_no_values_at_all_are_refused(self):
        r = helm_template()
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("at '/kafka/brokers'", r.stderr)
        self.assertIn("at '/database/shards'", r.stderr)

    def test_a_missing_kafka_address_is_refused(self):
        self.refused('kafka: {brokers: ""}\n', "at '/kafka/brokers'")
        self.refused('kafka: {brokers: "no-port"}\n', "at '/kafka/brokers'", "does not match pattern")

    def test_replicas_below_one_are_refused(self):
        self.refused("edge: {replicas: 0}\n", "at '/edge/replicas'", "minimum")
        self.refused("workers: {dms: {replicas: 0}}\n", "at '/workers/dms/replicas'")
        self.refused("router: {replicas: -1}\n", "at '/router/replicas'")
        self.refused("front: {replicas: 0}\n", "at '/front/replicas'")

    def test_an_unknown_log_format_is_refused(self):
        self.refused("logFormat: xml\n", "at '/logFormat'")

    def test_bad_trace_values_are_refused(self):
        self.refused("trace: {sampleRatio: 1.5}\n", "at '/trace/sampleRatio'")
        self.refused("trace: {queueSpans: 0}\n", "at '/trace/queueSpans'")
        self.refused('trace: {otlpEndpoint: "otel:4318"}\n', "at '/trace/otlpEndpoint'")
        self.refused("trace: {endpoint: x}\n", "'endpoint' not allowed")

    def test_unknown_keys_are_refused(self):
        self.refused("edgee: {replicas: 2}\n", "additional properties 'edgee' not allowed")
        self.refused("edge: {settings: {max_conections: 5}}\n", "'max_conections' not allowed")
        self.refused("limits: {session_idle_timeout: 5}\n", "'session_idle_timeout' not allowed")
        self.refused("workers: {chat: {replicas: 1}}\n", "'chat' not allowed")

    def test_credentials_are_required_and_never_switchboard_variables(self):
        self.refused('database: {password: ""}\n', "at '/database'")
        self.refused('redis: {nodes: []}\n', "at '/redis'")
        self.refused('podDefaults: {extraEnv: [{name: SWITCHBOARD_LIMITS__LANES, value: "2"}]}\n',
                     "at '/podDefaults/extraEnv/0/name'")

    def test_a_password_the_environment_would_not_read_as_a_string_is_refused(self):
        for pw in ("123456", "true", "[abc]", '"quoted"', "{a=1}", "-5"):
            self.refused(f"database: {{password: {json.dumps(pw)}}}\n", "at '/database/password'")

    def test_an_ingress_without_hosts_is_refused(self):
        self.refused("ingress: {enabled: true}\n", "at '/ingress/hosts'")


if __name__ == "__main__":
    unittest.main()
