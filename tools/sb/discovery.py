"""Service discovery for nginx: keep every nginx's upstream list in step with the edges that are alive;
and for Prometheus: keep its file_sd target list in step with the processes the launcher runs.

`./sb up` starts this loop as a background process (component `discovery`). Once a second it
asks every edge the launcher knows of for `GET /healthz`; when the set of healthy edges changes
it rewrites `upstream.conf` of every nginx instance and reloads them (`nginx -s reload` keeps
open WebSockets; a refused config leaves the old one serving). Between checks nginx's passive
health checks (`max_fails=1 fail_timeout=2s`, `proxy_next_upstream error timeout`) already
steer new connections away from a dead edge, so a client loses at most one reconnect. An edge
whose process is gone leaves the list at once; one that is alive but misses its check leaves
only after MISSES_TO_REMOVE checks in a row, so a busy machine does not make nginx reload.

Each round it also rewrites <state>/prometheus/targets.json when the set of edges, workers and
the router in state.json changed (tools/sb/prometheus.py says what it lists); Prometheus picks
the file up by itself.

On Kubernetes the Service's endpoints do this job; see helm/README.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import nginx
import prometheus
from ports import NGINX_INSTANCES
from state import State, write_atomic
from util import alive, http_status, stop_on_signals, which

INTERVAL = 1.0
# A live process that misses this many checks in a row leaves the upstream list. One missed check
# is usually a busy machine, not a dead edge, and every reload leaves old nginx workers draining
# their clients' sockets (up to `worker_shutdown_timeout`). A process that is gone leaves at once.
MISSES_TO_REMOVE = 3
CHECK_TIMEOUT = 1.0


def healthy_edges(components: list[dict], misses: dict[int, int]) -> list[int]:
    """Ports of the edges to route to: those that answer /healthz with 200, plus those whose
    process is alive and that failed fewer than MISSES_TO_REMOVE checks in a row. Updates
    `misses` (port -> failed checks in a row)."""
    keep = []
    for c in components:
        if c.get("kind") != "edge":
            continue
        port = c["port"]
        if not alive(c.get("pid"), c.get("starttime")):
            misses[port] = MISSES_TO_REMOVE
            continue
        if http_status(f"http://{c['addr']}/healthz", timeout=CHECK_TIMEOUT) == 200:
            misses[port] = 0
        else:
            misses[port] = misses.get(port, 0) + 1
        if misses[port] < MISSES_TO_REMOVE:
            keep.append(port)
    return sorted(keep)


def apply(state: State, ports: list[int], placeholder: int) -> list[str]:
    """Write the upstream list to every nginx and reload the running ones; returns errors."""
    errors = []
    exe = which("nginx")
    conf = nginx.upstream_conf(ports, placeholder)
    for i in range(NGINX_INSTANCES):
        p = state.path(nginx.name(i))
        if not os.path.isdir(os.path.join(p, "conf")):
            continue
        write_atomic(os.path.join(p, "conf", "upstream.conf"), conf)
        c = state.get(nginx.name(i))
        if c and alive(c.get("pid"), c.get("starttime")):
            r = subprocess.run([exe, "-p", p + "/", "-c", "conf/nginx.conf", "-e", "logs/error.log", "-s", "reload"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                errors.append(f"{nginx.name(i)}: {r.stderr.strip()}")
    return errors


def run(state_dir: str) -> int:
    stop = stop_on_signals()
    state = State(state_dir)
    current: list[int] | None = None
    misses: dict[int, int] = {}
    while not stop.is_set():
        try:
            state.load()
        except Exception as e:  # a state file being rewritten: try again next tick
            print(f"discovery: state not readable ({e})", flush=True)
            time.sleep(INTERVAL)
            continue
        if prometheus.write_targets(state):
            print(f"{time.strftime('%H:%M:%S')} discovery: prometheus targets "
                  f"{[t['labels']['process'] for t in prometheus.targets(state.components)]}", flush=True)
        live = healthy_edges(state.components, misses)
        if live != current:
            # Never write an empty list while edges are registered but all failing their check at
            # once (e.g. the whole machine stalled): keep routing to all of them instead.
            known = sorted(c["port"] for c in state.components if c.get("kind") == "edge")
            target = live or known
            errors = apply(state, target, state.ports().edge(0))
            stamp = time.strftime("%H:%M:%S")
            print(f"{stamp} discovery: live edges {live} -> upstream {target}"
                  + (f"; reload errors: {errors}" if errors else ""), flush=True)
            current = live
        time.sleep(INTERVAL)
    print("discovery: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
