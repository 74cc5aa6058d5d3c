"""Prometheus, scraping every Switchboard process, with the rules of observability/rules/.

`./sb up` runs Debian's `prometheus` binary (never the Debian service) with its own config and
data under <state>/prometheus/, listening on 127.0.0.1 (ports.py: `prometheus`). It scrapes
every edge (internal listener), worker and the router through a file-based service discovery
list, <state>/prometheus/targets.json, which the launcher writes when it starts processes and
the discovery loop (tools/sb/discovery.py) rewrites whenever the set of processes in state.json
changes. Prometheus re-reads that file by itself when it changes (no reload).

The list holds every app process the launcher runs, alive or not: a crashed process keeps its
target (and the supervisor starts it again on the same port), so Prometheus shows `up == 0` for
it and the "process down" alert can fire; `./sb down` removes them all.
"""

from __future__ import annotations

import json
import os

from ports import addr
from state import REPO, write_atomic
from util import SbError, alive, http_status, line, spawn_tool, tail, wait_until, which

NAME = "prometheus"
# Local scrape and rule evaluation interval: short, so a test sees its traffic within seconds.
SCRAPE_INTERVAL = "5s"
# Local data is for looking at a session, not for history.
RETENTION = "2d"
RETENTION_SIZE = "512MB"
RULES_DIR = os.path.join(REPO, "observability", "rules")
APP_KINDS = ("edge", "worker", "router")


def home(state) -> str:
    return state.path(NAME)


def targets_file(state) -> str:
    return os.path.join(home(state), "targets.json")


def url(ctx) -> str:
    return f"http://{addr(ctx.ports.prometheus())}"


def targets(components: list[dict]) -> list[dict]:
    """The file_sd list: one entry per app process the launcher runs, labelled with its job
    (edge, worker, router), its process name and, for workers, its role."""
    out = []
    for c in components:
        if c.get("kind") not in APP_KINDS:
            continue
        labels = {"job": c["kind"], "process": c["name"]}
        if c["kind"] == "worker":
            labels["role"] = c.get("role", "")
        out.append({"targets": [c.get("metrics_addr") or c["addr"]], "labels": labels})
    return sorted(out, key=lambda t: t["labels"]["process"])


def write_targets(state) -> bool:
    """Rewrite targets.json from state.json if it changed; True if it did. Nothing before
    `./sb up` made the prometheus directory (e.g. --infra-only)."""
    if not os.path.isdir(home(state)):
        return False
    text = json.dumps(targets(state.components), indent=2) + "\n"
    path = targets_file(state)
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    write_atomic(path, text)
    return True


def config(targets_path: str, rules_dir: str) -> str:
    """prometheus.yml (JSON is YAML)."""
    return json.dumps({
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
                   "scrape_timeout": "4s"},
        "rule_files": [os.path.join(rules_dir, "*.yml")],
        "scrape_configs": [{
            "job_name": "switchboard",  # each target's own `job` label (edge, worker, router) wins
            "file_sd_configs": [{"files": [targets_path]}],
        }],
    }, indent=2) + "\n"


def healthy(comp: dict) -> bool:
    return alive(comp.get("pid"), comp.get("starttime")) and http_status(f"http://{comp['addr']}/-/ready") == 200


def start_and_wait(ctx, timeout: float = 30.0) -> None:
    exe = which("prometheus")
    if not exe:
        raise SbError("prometheus not found (apt-get install prometheus)")
    h = home(ctx.state)
    os.makedirs(os.path.join(h, "data"), exist_ok=True)
    write_targets(ctx.state)
    conf = os.path.join(h, "prometheus.yml")
    write_atomic(conf, config(targets_file(ctx.state), RULES_DIR))
    comp = ctx.state.get(NAME)
    if not (comp and alive(comp.get("pid"), comp.get("starttime"))):
        listen = addr(ctx.ports.prometheus())
        argv = [exe, f"--config.file={conf}", f"--storage.tsdb.path={os.path.join(h, 'data')}",
                f"--web.listen-address={listen}", f"--storage.tsdb.retention.time={RETENTION}",
                f"--storage.tsdb.retention.size={RETENTION_SIZE}", "--web.enable-lifecycle"]
        comp = spawn_tool(ctx, NAME, "metrics", argv, listen, ctx.ports.prometheus(), h)
    if not wait_until(lambda: healthy(comp), timeout, 0.2, lambda: not alive(comp["pid"], comp["starttime"])):
        raise SbError(f"prometheus not ready at http://{comp['addr']}/-/ready; log {comp['log']}:\n{tail(comp['log'])}")
    n = len(targets(ctx.state.components))
    line(NAME, f"ready at http://{comp['addr']}/ (scrapes {n} process(es) every {SCRAPE_INTERVAL})", True)
