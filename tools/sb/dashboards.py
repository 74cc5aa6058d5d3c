"""The Grafana dashboards of observability/dashboards/, checked against Grafana's own dashboard
schema: tools/dashboards is a small Go checker that decodes each file strictly into the dashboard
type of Grafana's Go SDK (github.com/grafana/grafana-foundation-sdk/go, generated from Grafana's
schema; Apache-2.0): a field the schema lacks, a value of the wrong type or a required field
missing, in the dashboard, a panel, a query, a panel's options or field config, fails the file.

`./sb test` runs the checker's own tests (`go test`: a broken dashboard of each kind fails it, the
repository's pass) and then the checker on every dashboard. The binary is built once into
.sb-tools/dashboards-<hash>/ with the mechanism that builds the chart tools (chartcheck.go_build),
rebuilt when go.mod, go.sum or the checker's source change."""

from __future__ import annotations

import glob
import os
import subprocess

import chartcheck
from state import REPO
from util import SbError, info

MODULE = os.path.join(REPO, "tools", "dashboards")
DASHBOARDS = os.path.join(REPO, "observability", "dashboards")


def files() -> list[str]:
    found = sorted(glob.glob(os.path.join(DASHBOARDS, "*.json")))
    if not found:
        raise SbError(f"no dashboards in {os.path.relpath(DASHBOARDS, REPO)}")
    return found


def checker() -> tuple[str, str]:
    """The checker binary and how it was had (built or cached)."""
    paths, how = chartcheck.go_build(MODULE, {"dashboards": "."}, "dashboards",
                                     (os.path.join(MODULE, "main.go"),))
    return paths["dashboards"], how


def check() -> str:
    dashboards = files()
    chartcheck._run([chartcheck._go(), "test", "-mod=readonly", "-count=1", "./..."], cwd=MODULE,
                    env=chartcheck._go_env())
    exe, how = checker()
    info(f"$ {exe} {' '.join(os.path.relpath(f, REPO) for f in dashboards)}")
    r = subprocess.run([exe, *dashboards], text=True, capture_output=True)
    if r.returncode != 0:
        raise SbError(f"a dashboard does not decode into Grafana's dashboard schema:\n{r.stdout}{r.stderr}")
    return f"ok ({len(dashboards)} dashboards; checker {how})"
