"""`./sb test`: what CI runs (.ci/run). Lint, build instrumented, start a test platform, run every
test against it, stop it gracefully, report coverage per crate. Always tears down what it started."""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import chartcheck
import dashboards
import images
import web
from state import REPO
from util import SYSTEM_COMMANDS, SbError, ensure_packages, info, warn, which

SB_PY = os.path.join(REPO, "tools", "sb", "sb.py")
LLVM_ENV = {"LLVM_COV": "/usr/bin/llvm-cov-22", "LLVM_PROFDATA": "/usr/bin/llvm-profdata-22"}
TEST_COMMANDS = dict(SYSTEM_COMMANDS, **{"llvm-cov-22": "llvm-22", "llvm-profdata-22": "llvm-22"})
# the browser tests drive Debian's Chromium (web/tests/lib.mjs: executablePath /usr/bin/chromium)
BROWSER_COMMANDS = {"chromium": "chromium"}
COVERAGE_IGNORE = r"tools/|loadtest/|tests/"
CRATES = ["topics", "edge-ws", "workers", "router", "runtime"]
# Line coverage every service crate must keep (the run fails below it). The goal is 100 %; this is
# the floor, raised as tests are added, never lowered to get a run green.
COVERAGE_MIN = 90.0
# The test platform runs two worker-dms processes in one consumer group: e2e/tests/restarts.rs
# kills one (and an edge) and checks that the supervisor brings them back. One extra process only.
TEST_WORKERS = "dms=2"
# Every request traced on the test platform: e2e/tests/traces.rs follows one DM through Jaeger.
TEST_TRACE_RATIO = "1"
# The fault run (docs/reliability.md): clients that reconnect, catch up and resend like the web
# client exchange DMs while worker-dms, an edge and a Redis master are SIGKILLed in turn; it fails
# on anything lost, duplicated, out of order, unanswered or missed, or a client that never
# recovers (function, not timing). It waits for every killed process to run again (the launcher's
# supervisor restarts them; the Redis node rejoins as a replica), and the step then waits for
# `./sb status` to be all healthy, so the steps after it find the platform whole.
CHAOS_ARGS = ["--kill", "worker-dms,edge,redis-master", "--pairs", "8", "--rate", "48", "--warmup", "5",
              "--settle", "10", "--kill-in-flight", "2", "--user-prefix", "ci_chaos_", "--quiet", "--ci"]
HEALTHY_WITHIN = 90.0
# The test platform's shards are Galera clusters (`./sb up`'s default; e2e/tests/galera.rs kills a
# writer node there). The tests of GTID replicas (their lag, `SHOW REPLICA STATUS`) run on a second,
# short-lived infrastructure whose shards are a primary + a replica (`--shard-replication async`),
# at the test platform's port offset + ASYNC_OFFSET; they run in-process (`e2e::spawn_app`), built
# instrumented, so their code counts in the coverage report.
ASYNC_OFFSET = 1000
ASYNC_TESTS = ["replica_lag", "replica_metrics"]
# What one run writes to the disk: from a fresh clone (2026-12-07, CI=true), the instrumented
# debug build, clippy's, the platforms' state, the release build and the images took the free
# space down by 13.9 GB at most (Cargo.toml: the dev profile keeps line tables only). A run first
# checks that much is there (free, or held by an earlier run's target/, which the builds reuse),
# so that a short disk fails in seconds with a message, not with a linker's SIGBUS minutes in.
DISK_PEAK_GB = 14


def promtool() -> str:
    """The Prometheus rules of observability/: `promtool check rules` (syntax, expressions,
    templates) and `promtool test rules` (the unit tests in observability/tests/)."""
    exe = which("promtool")
    if not exe:
        raise SbError("promtool not found (Debian package prometheus)")
    rules = sorted(glob.glob(os.path.join(REPO, "observability", "rules", "*.yml")))
    tests = sorted(glob.glob(os.path.join(REPO, "observability", "tests", "*.yml")))
    if not rules or not tests:
        raise SbError("no rules or no rule tests in observability/")
    run([exe, "check", "rules", *rules])
    run([exe, "test", "rules", *tests])
    return f"ok ({len(rules)} rule file(s), {len(tests)} test file(s))"


class StepFailed(Exception):
    pass


class Interrupted(BaseException):
    pass


def _on_signal(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


class Runner:
    def __init__(self):
        self.results: list[tuple[str, float, str]] = []
        self.n = 0

    def step(self, title: str, fn) -> None:
        self.n += 1
        info(f"\n=== [{self.n}] {title}")
        t = time.monotonic()
        outcome = "FAILED"
        try:
            r = fn()
            outcome = r if isinstance(r, str) and r else "ok"
        except SbError as e:
            print(f"error: {e}", file=sys.stderr)
            raise StepFailed(title) from None
        finally:
            self.results.append((title, time.monotonic() - t, outcome))

    def summary(self, total: float, failed: str | None) -> None:
        info("\n=== step times")
        w = max([len(t) for t, _, _ in self.results] + [10])
        for i, (title, secs, outcome) in enumerate(self.results, 1):
            info(f"  {i:>2}. {title.ljust(w)} {secs:8.1f}s  {outcome}")
        info(f"      {'total'.ljust(w)} {total:8.1f}s  " + (f"FAILED ({failed})" if failed else "ok"))


def run(cmd: list[str], env: dict | None = None, cwd: str = REPO, capture: bool = False) -> str:
    info("$ " + " ".join(shlex.quote(c) for c in cmd))
    r = subprocess.run(cmd, env=env, cwd=cwd, text=True, stdout=subprocess.PIPE if capture else None)
    if r.returncode != 0:
        raise SbError(f"`{' '.join(cmd)}` exited with {r.returncode}")
    return r.stdout if capture else ""


# ---------------------------------------------------------------- steps


def tree_bytes(path: str) -> int:
    """Bytes of the regular files under `path` (0 if it does not exist); links are not followed."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                st = os.lstat(os.path.join(root, f))
            except OSError:
                continue  # removed while walking
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


def disk_shortfall(free: int, reusable: int, needed: int) -> int:
    """Bytes a run lacks: what it needs, less the free space and what target/ already holds."""
    return max(0, needed - free - reusable)


def disk_space() -> str:
    target = os.path.join(REPO, "target")
    free = shutil.disk_usage(REPO).free
    held = tree_bytes(target)
    gb = 10**9
    short = disk_shortfall(free, held, DISK_PEAK_GB * gb)
    if short:
        raise SbError(f"{free / gb:.1f} GB free on the disk of {REPO} and {held / gb:.1f} GB in target/: "
                      f"a run writes up to {DISK_PEAK_GB} GB; free {short / gb:.1f} GB more and rerun")
    return f"ok ({free / gb:.1f} GB free, {held / gb:.1f} GB in target/, a run writes up to {DISK_PEAK_GB} GB)"


def ensure_cargo_tool(subcommand: str, crate: str) -> str:
    """The version line of `cargo <subcommand>`, installed with `cargo install --locked` if missing."""
    def probe():
        return subprocess.run(["cargo", subcommand, "--version"], capture_output=True, text=True)
    found = probe()
    if found.returncode != 0:
        run(["cargo", "install", crate, "--locked"])
        found = probe()
        if found.returncode != 0:
            raise SbError(f"{crate} still unavailable after cargo install")
    return found.stdout.strip()


def ensure_tools() -> str:
    # Chromium before the tests: e2e/tests/traces.rs takes screenshots with it, the browser tests
    # drive it
    ensure_packages(dict(TEST_COMMANDS, **BROWSER_COMMANDS))
    llvm_cov = ensure_cargo_tool("llvm-cov", "cargo-llvm-cov")
    machete = ensure_cargo_tool("machete", "cargo-machete")
    return f"ok ({llvm_cov}, cargo-machete {machete})"


def coverage_env() -> dict:
    base = dict(os.environ, **LLVM_ENV)
    run(["cargo", "llvm-cov", "clean", "--workspace"], env=base)
    # `llvm-cov clean` leaves the workspace's own binaries of earlier builds in `target/debug/deps`
    # (a test binary whose hash changed stays beside the new one); `llvm-cov report` reads every
    # binary there, and stale ones' coverage maps made changed code look unrun. `cargo clean -p`
    # removes every build of the workspace's packages; their dependencies stay built.
    members = json.loads(run(["cargo", "metadata", "--no-deps", "--format-version", "1"],
                             env=base, capture=True))["packages"]
    run(["cargo", "clean", *[a for m in members for a in ("-p", m["name"])]], env=base)
    out = None
    for flag in ("--export-prefix", "--sh"):
        r = subprocess.run(["cargo", "llvm-cov", "show-env", flag], env=base, cwd=REPO, capture_output=True, text=True)
        if r.returncode == 0:
            out = r.stdout
            break
    if out is None:
        raise SbError("`cargo llvm-cov show-env --export-prefix` failed")
    env = dict(base)
    for ln in out.splitlines():
        ln = ln.strip()
        if not ln.startswith("export "):
            continue
        parts = shlex.split(ln[len("export "):])
        if parts and "=" in parts[0]:
            k, v = parts[0].split("=", 1)
            env[k] = v
    env.update(LLVM_ENV)
    stale = remove_stale_profiles(env.get("LLVM_PROFILE_FILE", ""))
    if stale:
        info(f"removed {stale} profile file(s) of an earlier run")
    shown = [k for k in env if k not in os.environ or os.environ[k] != env[k]]
    info("coverage env: " + " ".join(sorted(shown)))
    return env


def remove_stale_profiles(profile_file: str) -> int:
    """`cargo llvm-cov clean --workspace` also leaves the raw profiles that an earlier run wrote
    next to the target dir (`LLVM_PROFILE_FILE`, e.g. `target/<name>-%p-%2m.profraw`) and the
    merged `<name>.profdata`, which belong to binaries that no longer exist. Remove them so the
    report counts this run only."""
    if not profile_file:
        return 0
    folder, name = os.path.split(profile_file)
    prefix = name.split("-%", 1)[0]
    if not folder or not prefix or not os.path.isdir(folder):
        return 0
    n = 0
    for f in os.listdir(folder):
        if f.startswith(prefix) and (f.endswith(".profraw") or f == prefix + ".profdata"):
            os.remove(os.path.join(folder, f))
            n += 1
    return n


def coverage_bin_dir(env: dict) -> str:
    target = env.get("CARGO_LLVM_COV_TARGET_DIR") or env.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "debug")


def sb(*args: str, env: dict | None = None) -> None:
    run([sys.executable, SB_PY, *args], env=env)


def browser_tests(env: dict) -> str:
    """`npm test` in web/ (unit tests, then Playwright driving Debian's Chromium against the test
    platform in SB_STACK_FILE). `sb up` built web/dist already; this makes sure of Chromium and
    the npm dependencies."""
    if not web.present():
        return "skipped (no web/package.json)"
    if not web.has_test_script():
        return "skipped (no test script)"
    ensure_packages(BROWSER_COMMANDS)
    web.build(env, required=True)  # npm ci if needed; a no-op when `sb up` built the same sources
    run([which("npm"), "test"], env=env, cwd=web.WEB)
    return "ok"


def fault_run(env: dict, stack_file: str, sb_flags: list[str]) -> str:
    """`loadtest chaos --ci` against the test platform, then wait until every component is
    healthy again (the steps after this one use the same platform)."""
    exe = os.path.join(coverage_bin_dir(env), "loadtest")
    run([exe, "chaos", "--stack", stack_file, *CHAOS_ARGS], env=env)
    deadline = time.monotonic() + HEALTHY_WITHIN
    while True:
        r = subprocess.run([sys.executable, SB_PY, "status", "--json", *sb_flags], env=env, cwd=REPO,
                           capture_output=True, text=True)
        if r.returncode == 0:
            return "ok (0 lost, 0 duplicated; platform healthy again)"
        if time.monotonic() > deadline:
            sb("status", *sb_flags, env=env)
            raise SbError(f"the platform is not healthy {HEALTHY_WITHIN:.0f}s after the fault run")
        time.sleep(1)


def coverage_report(env: dict) -> str:
    ignore = ["--ignore-filename-regex", COVERAGE_IGNORE]
    run(["cargo", "llvm-cov", "report", "--summary-only", *ignore], env=env)
    raw = run(["cargo", "llvm-cov", "report", "--json", "--summary-only", *ignore], env=env, capture=True)
    data = json.loads(raw)
    per: dict[str, list[int]] = {c: [0, 0] for c in CRATES}
    for export in data.get("data", []):
        for f in export.get("files", []):
            rel = os.path.relpath(f["filename"], REPO)
            crate = rel.split(os.sep, 1)[0]
            if crate not in per:
                crate = "other"
                per.setdefault(crate, [0, 0])
            lines = f["summary"]["lines"]
            per[crate][0] += lines["covered"]
            per[crate][1] += lines["count"]
    info("\nline coverage per crate")
    info(f"  {'crate':<10} {'covered':>8} {'lines':>8} {'percent':>8}")
    tc = tl = 0
    for crate, (cov, cnt) in per.items():
        tc, tl = tc + cov, tl + cnt
        pct = f"{100.0 * cov / cnt:7.2f}%" if cnt else "      -"
        info(f"  {crate:<10} {cov:>8} {cnt:>8} {pct:>8}")
    info(f"  {'total':<10} {tc:>8} {tl:>8} " + (f"{100.0 * tc / tl:7.2f}%" if tl else "      -"))
    below = [f"{c} {100.0 * per[c][0] / per[c][1]:.2f}%" if per[c][1] else f"{c} (no lines)"
             for c in CRATES if not per[c][1] or 100.0 * per[c][0] / per[c][1] < COVERAGE_MIN]
    if below:
        raise SbError(f"line coverage under {COVERAGE_MIN:.0f}%: " + ", ".join(below))
    return f"ok ({100.0 * tc / tl:.2f}% lines, every service crate >= {COVERAGE_MIN:.0f}%)"


# ---------------------------------------------------------------- main


def test(args) -> int:
    t0 = time.monotonic()
    state_dir = os.path.abspath(args.state_dir)
    offset = str(args.port_offset)
    lock_path = os.path.join(tempfile.gettempdir(),
                             "switchboard-test-" + hashlib.sha1(state_dir.encode()).hexdigest()[:12] + ".lock")
    lock = open(lock_path, "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise SbError(f"another ./sb test is using {state_dir}") from None
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _on_signal)

    r = Runner()
    env: dict = {}
    platform = {"up": False}
    failed = None
    cargo_test = ["cargo", "test", "--workspace"]
    harness = (["--test-threads", str(args.test_threads)] if args.test_threads else []) + list(args.test_args)
    if harness:
        cargo_test += ["--", *harness]
    stack_file = os.path.join(state_dir, "stack.json")
    sb_flags = ["--state-dir", state_dir, "--port-offset", offset]

    def up():
        nonlocal env
        sb("down", "--purge", *sb_flags)  # leftovers of an interrupted run; fresh data every run
        platform["up"] = True
        sb("up", *sb_flags, "--bin-dir", coverage_bin_dir(env), "--workers", TEST_WORKERS,
           "--trace-ratio", TEST_TRACE_RATIO, env=env)

    def down():
        sb("down", *sb_flags, env=env)
        platform["up"] = False

    async_flags = ["--state-dir", state_dir + "-async", "--port-offset", str(args.port_offset + ASYNC_OFFSET)]

    def async_shards():
        sb("down", "--purge", *async_flags)
        platform["async"] = True
        try:
            sb("up", *async_flags, "--infra-only", "--shard-replication", "async", env=env)
            run(["cargo", "test", "-p", "e2e", *[a for t in ASYNC_TESTS for a in ("--test", t)]],
                env=dict(env, SB_STACK_FILE=os.path.join(state_dir + "-async", "stack.json")))
        finally:
            sb("down", "--purge", *async_flags, env=env)
            platform["async"] = False

    def set_env():
        nonlocal env
        env = coverage_env()

    try:
        r.step("system packages, llvm-22, cargo-llvm-cov, cargo-machete", ensure_tools)
        r.step("free disk space for the builds and the platforms", disk_space)
        r.step("cargo fmt --all -- --check", lambda: run(["cargo", "fmt", "--all", "--", "--check"]))
        r.step("tools/sb unit tests (python3 -m unittest)", lambda: run(
            [sys.executable, "-B", "-m", "unittest", "discover", "-s", os.path.join(REPO, "tools", "sb"),
             "-p", "test_*.py"]))
        r.step("promtool check rules + test rules (observability/)", promtool)
        r.step("grafana dashboards decode strictly into Grafana's schema (tools/dashboards)",
               dashboards.check)
        # a dependency declared in a package's Cargo.toml and not used fails the run (the
        # workspace's own [workspace.dependencies] list is not checked)
        r.step("cargo machete --skip-target-dir (unused dependencies)",
               lambda: run(["cargo", "machete", "--skip-target-dir"]))
        r.step("cargo clippy --workspace --all-targets -- -D warnings",
               lambda: run(["cargo", "clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
        # the Helm chart: lint, render 3+ value sets per pinned Kubernetes version, validate every
        # object strictly against the API schemas, values reference current, property tests
        r.step("helm chart (lint, kubeconform -strict, helm-docs, helm/tests)", lambda: chartcheck.check())
        r.step("coverage environment (cargo llvm-cov show-env)", set_env)
        r.step("cargo build --workspace --all-targets (instrumented)",
               lambda: run(["cargo", "build", "--workspace", "--all-targets"], env=env))
        r.step("the binaries take the settings the chart renders",
               lambda: chartcheck.binaries_accept(coverage_bin_dir(env), base_env=env))
        r.step(f"sb up (state {os.path.relpath(state_dir, REPO)}, port offset {offset})", up)
        r.step(" ".join(cargo_test), lambda: run(cargo_test, env=dict(env, SB_STACK_FILE=stack_file)))
        r.step("fault run: loadtest chaos --ci (SIGKILL worker-dms, an edge, a Redis master)",
               lambda: fault_run(env, stack_file, sb_flags))
        r.step("browser tests (web/)", lambda: browser_tests(dict(env, SB_STACK_FILE=stack_file)))
        r.step("sb down (graceful: binaries flush coverage profiles)", down)
        r.step("async shards: sb up --infra-only --shard-replication async, "
               + ", ".join(f"e2e/tests/{t}.rs" for t in ASYNC_TESTS) + ", sb down", async_shards)
        r.step("coverage report", lambda: coverage_report(env))
        # the container images from release binaries (buildah, no registry, no daemon): the chart's
        # images, non-root, nothing writable, `--version` in each, every app container of the
        # rendered chart and the front's nginx run from them on a read-only root
        r.step("container images (cargo build --release, buildah, checks)", lambda: images.build_and_check())
    except StepFailed as e:
        failed = str(e)
    except (KeyboardInterrupt, Interrupted) as e:
        failed = f"interrupted ({e or 'SIGINT'})"
        warn(failed)
    finally:
        if platform.get("async"):
            try:
                sb("down", "--purge", *async_flags, env=env or None)
            except SbError as e:
                warn(f"teardown of the async-shards platform failed: {e}")
        if platform["up"]:
            for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)  # teardown must finish
            info("\n=== teardown: sb down")
            try:
                sb("down", *sb_flags, env=env or None)
            except SbError as e:
                warn(f"teardown failed: {e}")
                failed = failed or "teardown"
        r.summary(time.monotonic() - t0, failed)
    return 1 if failed else 0
