#!/usr/bin/env python3
"""sb -- the Switchboard local launcher. Python 3.11 standard library only.

    ./sb up [--edges N] [--workers N|ROLE=N,...] [--kafka-brokers 1|3] [--infra-only] [--bin-dir DIR] [--release]
            [--limits default|bench] [--trace-ratio R] [--shard-replication async|galera]
    ./sb down [--purge]
    ./sb status [--json]
    ./sb test [--test-threads N] [-- ARGS for the test harness]
    ./sb chart [--write-docs] [--bin-dir DIR]
    ./sb images [--bin-dir DIR] [--keep]

Common options: --state-dir DIR (default .sb/, or .sb-<offset>/), --port-offset N (default 0).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repo
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jaeger  # noqa: E402
from state import REPO, default_state_dir  # noqa: E402
from util import SbError  # noqa: E402


def _ratio(text: str) -> float:
    """`--trace-ratio`: a share of requests, 0 to 1."""
    try:
        r = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= r <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return r


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", help="state directory (default: .sb/ at port offset 0, else .sb-<offset>/)")
    common.add_argument("--port-offset", type=int, default=None,
                        help="add N to every port (default 0; `sb test` uses 1000)")

    p = argparse.ArgumentParser(prog="sb", description="Switchboard local launcher")
    sub = p.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", parents=[common], help="start Kafka, Redis Cluster, MariaDB, Switchboard, nginx")
    up.add_argument("--edges", type=int, default=2, help="number of edge-ws processes (default 2)")
    up.add_argument("--workers", default="1", metavar="N|ROLE=N,...",
                    help="processes per worker role, in one consumer group: N for every role, or e.g. "
                         "dms=2,auth=2 (the others 1), or 2,presence=1 (default 1)")
    up.add_argument("--kafka-brokers", type=int, default=1, choices=[1, 3])
    up.add_argument("--infra-only", action="store_true", help="Kafka, Redis, MariaDB, nginx only")
    up.add_argument("--bin-dir", help="where the Switchboard binaries are (skips cargo build)")
    up.add_argument("--release", action="store_true", help="cargo build --release, run target/release")
    up.add_argument("--trace-ratio", type=_ratio, default=jaeger.SAMPLE_RATIO,
                    help="share of requests traced into the platform's Jaeger, 0 to 1 (default "
                         f"{jaeger.SAMPLE_RATIO:g}: every request; the product's default is 0.1; 0 turns "
                         "tracing off)")
    up.add_argument("--limits", choices=["default", "bench"], default="default",
                    help="workers' [limits] and edges' per-client limits: default = the product's; "
                         "bench = rate limits and connection caps lifted for load tests")

    up.add_argument("--shard-replication", choices=["async", "galera"], default=None,
                    help="MariaDB shards: galera (the default for new data) = a Galera cluster of two "
                         "nodes + garbd each, the workers write to the first Synced node and fail over by "
                         "themselves; async = a primary + a GTID replica each (promotion is manual). "
                         "Unset: what the state dir's data was made for (docs/operations.md)")

    down = sub.add_parser("down", parents=[common], help="stop everything `up` started")
    down.add_argument("--purge", action="store_true", help="also delete the state dir (all data)")

    st = sub.add_parser("status", parents=[common], help="health of every component")
    st.add_argument("--json", action="store_true")

    t = sub.add_parser("test", parents=[common], help="what CI runs: lint, build, platform, tests, coverage")
    t.add_argument("--test-threads", type=int, default=None, help="passed to the test harness")
    t.add_argument("test_args", nargs="*", help="extra args after `--`, passed to the test harness")

    ch = sub.add_parser("chart", help="the Helm chart's checks alone (a step of `sb test`): lint, render, "
                                      "strict schema validation, values reference, property tests")
    ch.add_argument("--write-docs", action="store_true",
                    help="first rewrite helm/switchboard/README.md from values.yaml (helm-docs)")
    ch.add_argument("--bin-dir", help="also start every app binary from DIR with the settings the chart "
                                      "renders and fail if one refuses them (exit 64)")
    im = sub.add_parser("images", help="build the container images (tools/images/Containerfile) with buildah, "
                                       "check them and print their sizes (a step of `sb test`)")
    im.add_argument("--bin-dir", help="take the binaries from DIR instead of `cargo build --release`")
    im.add_argument("--keep", action="store_true",
                    help="keep the images in .sb-tools/images/storage (default: removed after the checks)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.cmd == "chart":
        import chartcheck
        try:
            print(chartcheck.check(write=args.write_docs))
            if args.bin_dir:
                print(chartcheck.binaries_accept(os.path.abspath(args.bin_dir)))
        except SbError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd == "images":
        import images
        try:
            print(images.build_and_check(os.path.abspath(args.bin_dir) if args.bin_dir else None, keep=args.keep))
        except SbError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0
    args.state_dir_given = args.state_dir is not None
    if args.port_offset is None:
        args.port_offset = 1000 if args.cmd == "test" else 0
    if args.state_dir is None:
        args.state_dir = os.path.join(REPO, ".sb-test") if args.cmd == "test" else default_state_dir(args.port_offset)
    args.state_dir = os.path.abspath(args.state_dir)
    try:
        if args.cmd == "up":
            import launcher as plat
            return plat.up(args)
        if args.cmd == "down":
            import launcher as plat
            return plat.down(args)
        if args.cmd == "status":
            import launcher as plat
            return plat.status(args)
        if args.cmd == "test":
            import citest
            return citest.test(args)
    except SbError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `./sb status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
