"""``python -m prunekit.bench run SPEC --store DB [--suite NAME ...] [--backend local|ray] [--jobs N]``
and ``python -m prunekit.bench report DB --out DIR``: the same as the ``prunekit bench`` / ``report``
commands, usable without the CLI mounted."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunekit.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a benchmark spec into a results store")
    run.add_argument("spec")
    run.add_argument("--store", required=True)
    run.add_argument("--suite", action="append", default=None)
    run.add_argument("--backend", default="local")
    run.add_argument("--jobs", type=int, default=1)
    run.add_argument("--ray-address", default=None)
    run.add_argument("--no-progress", action="store_true")
    rep = sub.add_parser("report", help="write tables, plots and HTML from a results store")
    rep.add_argument("store")
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        from prunekit.bench.runner import run_grid

        s = run_grid(args.spec, args.store, suites=args.suite, backend=args.backend, jobs=args.jobs,
                     ray_address=args.ray_address, progress=not args.no_progress)
        print(f"grid {s.total}: {s.already_done} already done, {s.ran} ran, {len(s.failed)} failed, "
              f"{len(s.skipped)} skipped")
        for label, err in s.failed:
            print(f"failed {label}: {err}", file=sys.stderr)
        return 1 if s.failed else 0
    from prunekit.bench.report import write_report

    out = write_report(args.store, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
