"""``python -m scale_tests <scenario> [--json]``; the last line of stdout is a JSON summary."""

from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m scale_tests")
    sub = p.add_subparsers(dest="scenario", required=True)
    f = sub.add_parser("failover", help="remove a node hosting connection actors mid-stream")
    f.add_argument("--wells", type=int, default=6)
    f.add_argument("--tags", type=int, default=5)
    f.add_argument("--interval-ms", type=int, default=50)
    f.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.scenario == "failover":
        from scale_tests.failover import run

        result = run(args.wells, args.tags, args.interval_ms)
        ok = result["silent_loss"] == 0 and result["recovery_s"] <= 10
    if not args.json:
        sys.stderr.write(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
