"""Composability matrix: every criterion x granularity x allocation on a tiny CNN, ViT and Llama.

    .venv/bin/python benchmarks/composability.py [--allocations uniform,global,erk,lamp,owl] [--out DIR]

Writes ``DIR/matrix.md`` and ``DIR/matrix.json`` (default ``docs/results/composability``): per cell ok /
refused (with the PrunekitError) / raw / silent, pair counts and criteria per granularity.
See :mod:`prunekit.bench.composability` for what each status means.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prunekit.bench.composability import ALLOCATIONS, markdown, run_matrix, summarise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allocations", default=",".join(ALLOCATIONS))
    ap.add_argument("--out", default="docs/results/composability")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    n = [0]

    def progress(cell):
        n[0] += 1
        if cell.status in ("raw", "silent") or n[0] % 50 == 0:
            print(
                f"[{n[0]}] {cell.model} {cell.criterion} x {cell.granularity} ({cell.allocation}): {cell.status} "
                f"{cell.detail[:120]}",
                flush=True,
            )

    cells = run_matrix(allocations=[a for a in args.allocations.split(",") if a], progress=progress)
    summary = summarise(cells)
    summary["wall_seconds"] = round(time.time() - t0, 1)
    summary["torch"] = torch.__version__
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "matrix.json").write_text(json.dumps({"summary": summary, "cells": [asdict(c) for c in cells]}, indent=1))
    (out / "matrix.md").write_text(markdown(cells, summary))
    print(
        f"{summary['pairs_working']}/{summary['pairs_total']} pairs work; per granularity "
        f"{summary['criteria_per_granularity']}; {summary['status_counts']}; {summary['wall_seconds']} s -> {out}"
    )
    return 0 if not summary["raw"] and not summary["silent"] else 1


if __name__ == "__main__":
    sys.exit(main())
