"""The web client (web/): `npm ci` when node_modules is missing or the lock file changed, then
`npm run build` when a source changed, so nginx serves a current web/dist at `/`.

Stamps (in node_modules, so nginx never serves them): .sb-lock.sha256 (the package files `npm ci`
installed) and .sb-build.sha256 (the sources web/dist was built from)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time

from state import REPO
from util import SbError, line, warn, which

WEB = os.path.join(REPO, "web")
# what a build reads, besides node_modules
SOURCES = ["index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts", "src", "public"]
MIN_NODE = (20, 19)


def present() -> bool:
    return os.path.exists(os.path.join(WEB, "package.json"))


def _sha_files(paths: list[str]) -> str:
    h = hashlib.sha256()
    for rel in paths:
        full = os.path.join(WEB, rel)
        files = []
        if os.path.isdir(full):
            for root, dirs, names in os.walk(full):
                dirs.sort()
                files += [os.path.join(root, n) for n in sorted(names)]
        elif os.path.exists(full):
            files = [full]
        for f in files:
            h.update(os.path.relpath(f, WEB).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(fh.read())
            h.update(b"\0")
    return h.hexdigest()


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text + "\n")


def node_problem() -> str | None:
    """Why the web client cannot be built here, or None."""
    npm, node = which("npm"), which("node")
    if not npm or not node:
        return "npm and Node.js >= 20.19 are needed (see web/README.md)"
    out = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    m = re.match(r"v(\d+)\.(\d+)", out)
    if not m or (int(m.group(1)), int(m.group(2))) < MIN_NODE:
        return f"Node.js {out or '?'} is too old: vite needs >= {MIN_NODE[0]}.{MIN_NODE[1]} (see web/README.md)"
    return None


def _npm(args: list[str], env: dict | None) -> None:
    npm = which("npm")
    r = subprocess.run([npm, *args], cwd=WEB, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.splitlines()[-30:])
        raise SbError(f"`npm {' '.join(args)}` in web/ failed:\n{tail}")


def ensure_deps(env: dict | None = None) -> bool:
    """`npm ci` unless node_modules already holds what package-lock.json says. True if it ran."""
    lock = os.path.join(WEB, "package-lock.json")
    stamp = os.path.join(WEB, "node_modules", ".sb-lock.sha256")
    want = _sha_files(["package.json", "package-lock.json"])
    if _read(stamp) == want:
        return False
    t = time.monotonic()
    line("web", "npm ci" if os.path.exists(lock) else "npm install")
    _npm(["ci", "--no-audit", "--no-fund"] if os.path.exists(lock) else ["install", "--no-audit", "--no-fund"], env)
    _write(stamp, want)
    line("web", f"dependencies installed in {time.monotonic() - t:.1f}s", True)
    return True


def build(env: dict | None = None, required: bool = False) -> None:
    """Install dependencies and build web/dist when needed. Without a usable Node.js the step is
    skipped with a warning (the API still works), unless `required`."""
    if not present():
        return
    problem = node_problem()
    if problem:
        if required:
            raise SbError(f"web client: {problem}")
        warn(f"web client not built: {problem}; the API works, `/` answers 404 until it is built")
        return
    installed = ensure_deps(env)
    dist = os.path.join(WEB, "dist")
    stamp = os.path.join(WEB, "node_modules", ".sb-build.sha256")
    want = _sha_files(SOURCES)
    if not installed and _read(stamp) == want and os.path.exists(os.path.join(dist, "index.html")):
        line("web", "web/dist is up to date", True)
        return
    t = time.monotonic()
    line("web", "npm run build")
    _npm(["run", "build"], env)
    _write(stamp, want)
    line("web", f"built web/dist in {time.monotonic() - t:.1f}s", True)


def has_test_script() -> bool:
    if not present():
        return False
    with open(os.path.join(WEB, "package.json")) as f:
        return "test" in (json.load(f).get("scripts") or {})
