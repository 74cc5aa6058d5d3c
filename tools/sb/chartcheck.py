"""The Helm chart's checks (a step of `./sb test`; alone: `./sb chart`). Everything offline after the
first run, all tools from the Go module proxy, pinned by tools/chart-tools/go.sum:

1. build helm, kubeconform, helm-docs and yaml2json once into .sb-tools/ (rebuilt when go.mod or
   go.sum change);
2. make strict JSON schemas for the pinned Kubernetes versions from the OpenAPI spec in the
   `k8s.io/kubernetes` module source (api/openapi-spec/swagger.json), and for the Prometheus
   Operator kinds from its CRDs, once into .sb-tools/schemas/;
3. `helm lint --strict` and `helm template` of every value set in helm/switchboard/ci/ for every
   pinned version, each rendered object validated by kubeconform -strict against those schemas
   (unknown fields and duplicate keys are errors, a kind without a schema is an error);
4. the property tests of the rendered output and the front's nginx run against a stand-in DNS
   server (helm/tests/, unittest);
5. the values reference (helm/switchboard/README.md) is what helm-docs writes from values.yaml.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from state import REPO
from util import SbError, info, which

CHART = os.path.join(REPO, "helm", "switchboard")
VALUE_SETS = os.path.join(CHART, "ci")
TESTS = os.path.join(REPO, "helm", "tests")
TOOLS_MOD = os.path.join(REPO, "tools", "chart-tools")
CACHE = os.path.join(REPO, ".sb-tools")
# The Kubernetes versions the chart is validated against: the ends of Chart.yaml's kubeVersion
# range (helm/tests checks that they are inside it).
KUBE_VERSIONS = ["v1.32.13", "v1.37.2"]
# The Prometheus Operator whose CRDs give the schemas of PodMonitor, ServiceMonitor, PrometheusRule.
PROM_OPERATOR = "v0.85.0"
TOOLS = {
    "helm": "helm.sh/helm/v3/cmd/helm",
    "kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform",
    "helm-docs": "github.com/norwoodj/helm-docs/cmd/helm-docs",
    "yaml2json": "./yaml2json",
}
# Bumped when the schema conversion below changes, so cached schemas are remade.
SCHEMA_FORMAT = "1"


def _sha(*paths: str) -> str:
    h = hashlib.sha256()
    for p in paths:
        if os.path.isdir(p):
            for root, _dirs, files in sorted(os.walk(p)):
                for f in sorted(files):
                    with open(os.path.join(root, f), "rb") as fh:
                        h.update(f.encode() + fh.read())
        else:
            with open(p, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def _run(cmd: list[str], cwd: str = REPO, env: dict | None = None, quiet: bool = False) -> str:
    if not quiet:
        info("$ " + " ".join(cmd))
    r = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    if r.returncode != 0:
        raise SbError(f"`{' '.join(cmd)}` exited with {r.returncode}:\n{r.stdout[-4000:]}{r.stderr[-4000:]}")
    return r.stdout


def _go() -> str:
    go = which("go")
    if not go:
        raise SbError("the chart checks and Jaeger are built with Go (>= 1.26; tools/chart-tools/go.mod, "
                      "tools/jaeger/go.mod): go not found")
    return go


def _go_env() -> dict:
    """Modules only from a module proxy (the configured one, `direct` and `off` dropped; else
    proxy.golang.org), checked against go.sum / sum.golang.org; no toolchain download."""
    proxies = [p for p in os.environ.get("GOPROXY", "").replace("|", ",").split(",") if p and p not in ("direct", "off")]
    return dict(os.environ, GOPROXY=",".join(proxies) or "https://proxy.golang.org", GOTOOLCHAIN="local")


def go_build(mod_dir: str, tools: dict[str, str], prefix: str, extra: tuple[str, ...] = ()) -> tuple[dict[str, str], str]:
    """Binaries (name -> path) of `tools` (name -> package) of the Go module in `mod_dir`, built
    once into .sb-tools/<prefix>-<hash of go.mod, go.sum and `extra`>/ (rebuilt when those
    change; older builds of the same prefix are removed). Also used by tools/sb/jaeger.py."""
    key = _sha(os.path.join(mod_dir, "go.mod"), os.path.join(mod_dir, "go.sum"), *extra)
    bin_dir = os.path.join(CACHE, f"{prefix}-{key}")
    paths = {name: os.path.join(bin_dir, name) for name in tools}
    if all(os.access(p, os.X_OK) for p in paths.values()):
        return paths, "cached"
    tmp = bin_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    t = time.monotonic()
    _run([_go(), "build", "-mod=readonly", "-trimpath", "-o", tmp + os.sep, *tools.values()], cwd=mod_dir,
         env=_go_env())
    for old in os.listdir(CACHE):
        if old.startswith(prefix + "-") and old != os.path.basename(tmp):
            shutil.rmtree(os.path.join(CACHE, old), ignore_errors=True)
    os.rename(tmp, bin_dir)
    return paths, f"built in {time.monotonic() - t:.0f}s"


def build_tools() -> tuple[dict[str, str], str]:
    """The tool binaries (name -> path), built once per go.mod/go.sum/yaml2json source."""
    return go_build(TOOLS_MOD, TOOLS, "bin", (os.path.join(TOOLS_MOD, "yaml2json"),))


def _module_dir(path: str, version: str) -> str:
    """Source of a module from the Go module proxy (go mod download, checked against sum.golang.org)."""
    with tempfile.TemporaryDirectory() as d:  # outside any module: nothing is added to a go.mod
        out = _run([_go(), "mod", "download", "-json", f"{path}@{version}"], cwd=d, env=_go_env())
    return json.loads(out)["Dir"]


# ---------------------------------------------------------------- OpenAPI -> strict JSON schema

INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}
QUANTITY = {"anyOf": [{"type": "string"}, {"type": "number"}]}


def _strict(node):
    """Schema node made strict: an object with properties allows no others; int-or-string and
    Quantity accept both forms, as the API server does."""
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    if node.get("x-kubernetes-int-or-string") or node.get("format") == "int-or-string":
        return dict(INT_OR_STRING, description=node.get("description", ""))
    out = {}
    for k, v in node.items():
        if k in ("properties", "definitions", "patternProperties"):
            out[k] = {name: _strict(s) for name, s in v.items()}
        else:
            out[k] = _strict(v)
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _refs(node, found: set) -> None:
    if isinstance(node, dict):
        r = node.get("$ref")
        if isinstance(r, str) and r.startswith("#/definitions/"):
            found.add(r[len("#/definitions/"):])
        for v in node.values():
            _refs(v, found)
    elif isinstance(node, list):
        for v in node:
            _refs(v, found)


def _write_schema(out_dir: str, group: str, version: str, kind: str, schema: dict) -> None:
    folder = os.path.join(out_dir, group or version, version)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, kind.lower() + ".json"), "w") as f:
        json.dump(schema, f)


def k8s_schemas(spec: dict, out_dir: str) -> int:
    """One standalone schema per kind of swagger.json (its definitions closure inlined as local
    definitions), at <out>/<group or version>/<version>/<kind>.json."""
    defs = spec["definitions"]
    special = {"io.k8s.apimachinery.pkg.util.intstr.IntOrString": INT_OR_STRING,
               "io.k8s.apimachinery.pkg.api.resource.Quantity": QUANTITY}
    strict = {name: special.get(name) or _strict(d) for name, d in defs.items()}
    n = 0
    for name, d in defs.items():
        for gvk in d.get("x-kubernetes-group-version-kind", []):
            needed, todo = set(), [name]
            while todo:
                cur = todo.pop()
                if cur in needed:
                    continue
                needed.add(cur)
                found: set = set()
                _refs(strict[cur], found)
                todo.extend(found - needed)
            schema = {"$schema": "http://json-schema.org/draft-07/schema#",
                      "$ref": f"#/definitions/{name}",
                      "definitions": {k: strict[k] for k in sorted(needed)}}
            _write_schema(out_dir, gvk["group"], gvk["version"], gvk["kind"], schema)
            n += 1
    return n


def crd_schemas(crds: list[dict], out_dir: str) -> int:
    n = 0
    for crd in crds:
        if crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            schema = _strict(v["schema"]["openAPIV3Schema"])
            # metadata is the API server's, checked there; the CRD gives it as a bare object
            schema.setdefault("properties", {})["metadata"] = {"type": "object"}
            schema["$schema"] = "http://json-schema.org/draft-07/schema#"
            _write_schema(out_dir, group, v["name"], kind, schema)
            n += 1
    return n


def ensure_schemas(tools: dict[str, str]) -> tuple[dict[str, str], str]:
    """Schema dir per Kubernetes version (name -> path), made once."""
    dirs, made = {}, []
    for kv in KUBE_VERSIONS:
        d = os.path.join(CACHE, "schemas", f"{kv}-prom{PROM_OPERATOR}-f{SCHEMA_FORMAT}")
        dirs[kv] = d
        if os.path.exists(os.path.join(d, ".complete")):
            continue
        t = time.monotonic()
        tmp = d + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        src = _module_dir("k8s.io/kubernetes", kv)
        with open(os.path.join(src, "api", "openapi-spec", "swagger.json")) as f:
            n = k8s_schemas(json.load(f), tmp)
        prom = _module_dir("github.com/prometheus-operator/prometheus-operator", PROM_OPERATOR)
        crd_dir = os.path.join(prom, "example", "prometheus-operator-crd-full")
        crds = []
        for name in sorted(os.listdir(crd_dir)):
            if name.endswith(".yaml"):
                with open(os.path.join(crd_dir, name), "rb") as f:
                    crds += json.loads(subprocess.run([tools["yaml2json"]], input=f.read(), capture_output=True,
                                                      check=True).stdout)
        n += crd_schemas(crds, tmp)
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(f"{n} schemas\n")
        shutil.rmtree(d, ignore_errors=True)
        os.rename(tmp, d)
        made.append(f"{kv}: {n} schemas in {time.monotonic() - t:.0f}s")
    return dirs, ("made " + "; ".join(made)) if made else "cached"


# ---------------------------------------------------------------- the checks


def value_sets() -> list[str]:
    sets = sorted(os.path.join(VALUE_SETS, f) for f in os.listdir(VALUE_SETS) if f.endswith(".yaml"))
    if len(sets) < 3:
        raise SbError(f"expected at least 3 value sets in {VALUE_SETS}, found {len(sets)}")
    return sets


def validate(tools: dict[str, str], schemas: dict[str, str], out_dir: str) -> str:
    helm, total_bytes, summaries = tools["helm"], 0, []
    for kv in KUBE_VERSIONS:
        for vs in value_sets():
            name = os.path.basename(vs)[:-len(".yaml")]
            _run([helm, "lint", "--strict", CHART, "-f", vs, "--kube-version", kv], quiet=True)
            rendered = _run([helm, "template", "sb", CHART, "-f", vs, "--kube-version", kv,
                             "--namespace", "chat"], quiet=True)
            path = os.path.join(out_dir, f"{name}-{kv}.yaml")
            with open(path, "w") as f:
                f.write(rendered)
            total_bytes += len(rendered.encode())
            loc = os.path.join(schemas[kv], "{{ .Group }}", "{{ .ResourceAPIVersion }}", "{{ .ResourceKind }}.json")
            r = subprocess.run([tools["kubeconform"], "-strict", "-summary", "-output", "json",
                                "-schema-location", loc, path], capture_output=True, text=True)
            try:
                report = json.loads(r.stdout)
            except json.JSONDecodeError:
                raise SbError(f"kubeconform on {name} ({kv}) said:\n{r.stdout}{r.stderr}") from None
            bad = [res for res in report.get("resources", []) if res.get("status") != "statusValid"]
            s = report.get("summary", {})
            if r.returncode != 0 or bad or s.get("invalid") or s.get("errors") or s.get("skipped"):
                raise SbError(f"kubeconform: {name} for Kubernetes {kv} is not valid:\n"
                              + json.dumps(bad or report, indent=2)[:6000])
            summaries.append(f"{name}@{kv}: {s.get('valid')} valid")
            info(f"  {name:<8} {kv:<9} lint ok, {len(rendered.encode()):>6} bytes rendered, "
                 f"kubeconform -strict: {s.get('valid')} valid, {s.get('invalid')} invalid, "
                 f"{s.get('errors')} errors, {s.get('skipped')} skipped")
    return f"{len(summaries)} renders, {total_bytes} bytes, every object valid"


def docs_current(tools: dict[str, str]) -> None:
    """helm/switchboard/README.md is helm-docs' output for the current values.yaml."""
    with tempfile.TemporaryDirectory() as d:
        copy = os.path.join(d, "switchboard")
        shutil.copytree(CHART, copy)
        _run([tools["helm-docs"], "--chart-search-root", copy, "--log-level", "warning"], quiet=True)
        with open(os.path.join(copy, "README.md")) as f:
            want = f.read()
    have_path = os.path.join(CHART, "README.md")
    have = open(have_path).read() if os.path.exists(have_path) else ""
    if have != want:
        raise SbError("helm/switchboard/README.md is not what helm-docs writes from values.yaml: "
                      "run ./sb chart --write-docs and commit it")


def write_docs(tools: dict[str, str]) -> None:
    _run([tools["helm-docs"], "--chart-search-root", CHART, "--log-level", "warning"])


def property_tests(tools: dict[str, str], out_dir: str) -> None:
    env = dict(os.environ, SB_HELM=tools["helm"], SB_YAML2JSON=tools["yaml2json"], SB_CHART_RENDERED=out_dir,
               SB_KUBE_VERSIONS=",".join(KUBE_VERSIONS), PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([sys.executable, "-m", "unittest", "discover", "-s", TESTS, "-t", TESTS, "-v"],
                       cwd=REPO, env=env, text=True, capture_output=True)
    sys.stderr.write(r.stderr[-8000:] if r.returncode else "".join(r.stderr.splitlines(True)[-3:]))
    if r.returncode != 0:
        raise SbError("chart property tests failed (helm/tests)")


def _pod_env(container: dict) -> dict[str, str]:
    """A container's environment as the kubelet would make it, with stand-ins for what only a
    cluster has: the pod index label is 0, a Secret's value a password or a Redis list."""
    env: dict[str, str] = {}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
        elif "fieldRef" in e.get("valueFrom", {}):
            env[e["name"]] = "0"
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = '["redis://127.0.0.1:1"]' if e["name"] == "SWITCHBOARD_REDIS__NODES" else "Stand-in-Password"
    return env


def binaries_accept(bin_dir: str, base_env: dict | None = None, grace: float = 3.0, rendered: str | None = None,
                    launch=None) -> str:
    """Start every app container of every rendered value set (first pinned Kubernetes version)
    as the chart would — its binary, its config file, its environment — with Kafka and every
    listener pointed at loopback, and fail if one refuses its settings (exit 64, `configuration
    error`) or cannot run at all (a missing library, a read-only file system). One that is still
    running after `grace` seconds, or stops for another reason (no Kafka, no database), took its
    settings; it is then stopped. `launch(container, args, env, conf_dir, log) -> Popen` starts one
    some other way than `bin_dir/<name>` with the settings in `conf_dir` (images.py: from its image)."""
    tools = build_tools()[0]
    rendered = rendered or os.path.join(CACHE, "rendered")
    files = sorted(f for f in os.listdir(rendered) if f.endswith(f"-{KUBE_VERSIONS[0]}.yaml")) if os.path.isdir(rendered) else []
    if not files:
        raise SbError("no rendered chart in .sb-tools/rendered: run the chart step first")
    procs, refused = [], []
    with tempfile.TemporaryDirectory() as d:
        for f in files:
            with open(os.path.join(rendered, f), "rb") as fh:
                objs = json.loads(subprocess.run([tools["yaml2json"]], input=fh.read(), capture_output=True, check=True).stdout)
            conf_dir = os.path.join(d, f[:-len(".yaml")])
            os.makedirs(conf_dir)
            for o in objs:
                if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config"):
                    for name, text in o["data"].items():
                        with open(os.path.join(conf_dir, name), "w") as out:
                            out.write(text)
            for o in objs:
                if o["kind"] not in ("Deployment", "StatefulSet", "Job"):
                    continue
                for c in o["spec"]["template"]["spec"]["containers"]:
                    exe = os.path.join(bin_dir, c["name"])
                    if c["name"] == "nginx":
                        continue
                    if launch is None and not os.access(exe, os.X_OK):
                        raise SbError(f"no {c['name']} binary in {bin_dir}")
                    args = [a.replace("/etc/switchboard/", conf_dir + "/") for a in c.get("args", [])]
                    # the caller's environment (coverage profiles of an instrumented build go where
                    # its LLVM_PROFILE_FILE says), without SWITCHBOARD_ variables of its own
                    env = {k: v for k, v in (base_env or os.environ).items() if not k.startswith("SWITCHBOARD_")}
                    env.update(_pod_env(c))
                    env.update({"SWITCHBOARD_EDGE__LISTEN": "127.0.0.1:0", "SWITCHBOARD_EDGE__INTERNAL_LISTEN": "127.0.0.1:0"}
                               if c["name"] == "edge-ws" else {})
                    env.update({"SWITCHBOARD_SERVICE__HEALTH_LISTEN": "127.0.0.1:0"}
                               if c["name"].startswith("worker-") or c["name"] == "router" else {})
                    if c["name"] != "sb-migrate":
                        env["SWITCHBOARD_KAFKA__BROKERS"] = "127.0.0.1:1"
                    log = open(os.path.join(d, f"{f}-{o['metadata']['name']}.log"), "w+")
                    if launch is not None:
                        p = launch(c, c.get("args", []), env, conf_dir, log)
                    else:
                        p = subprocess.Popen([exe, *args], env=env, cwd=d, stdout=log, stderr=log)
                    procs.append((f, c["name"], p, log))
        deadline = time.monotonic() + grace
        for f, name, p, log in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for f, name, p, log in procs:
            if p.poll() is None:
                p.terminate()
        # a process still retrying Kafka may not act on SIGTERM soon; it has shown what matters
        deadline = time.monotonic() + 3.0
        for f, name, p, log in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f, name, p, log in procs:
            log.seek(0)
            text = log.read()
            log.close()
            if (p.returncode in (64, 126, 127) or "configuration error" in text
                    or "error while loading shared libraries" in text or "Read-only file system" in text):
                refused.append(f"{f}: {name} exited {p.returncode}:\n{text[-1500:]}")
    if refused:
        raise SbError("a binary refused the settings the chart gives it:\n" + "\n".join(refused))
    return f"ok ({len(procs)} processes of {len(files)} renders took their settings)"


def check(write: bool = False) -> str:
    os.makedirs(CACHE, exist_ok=True)
    t = time.monotonic()
    tools, how = build_tools()
    info(f"  tools: {how} ({os.path.relpath(os.path.dirname(tools['helm']), REPO)})")
    if write:
        write_docs(tools)
    schemas, how = ensure_schemas(tools)
    info(f"  schemas: {how}")
    out_dir = os.path.join(CACHE, "rendered")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.makedirs(out_dir)
    summary = validate(tools, schemas, out_dir)
    property_tests(tools, out_dir)
    docs_current(tools)
    return f"ok ({summary}; property tests pass; values reference current; {time.monotonic() - t:.1f}s)"
