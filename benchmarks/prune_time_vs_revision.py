"""Structural prune time of this tree against another git revision, interleaved so machine load hits both.

    .venv/bin/python benchmarks/prune_time_vs_revision.py REV [--models resnet50,mobilenet_v2] [--rounds 5]

REV is checked out into a temporary git worktree. Each round runs, for every model, one child process per
tree (the order alternates between rounds); a child builds the torchvision model (random init), warms up,
then times ``prunekit.prune(model, "l2-channel", sparsity=0.5, example_inputs=1x3x224x224, measure=False)``
three times at one thread, in CPU time of the process (``time.process_time``: other processes on a shared
machine do not count), keeping the fastest, and checks the parameter count after pruning. Reports per model the
median time of each tree, the median of the per-round ratios (this tree / REV), and whether both trees give the same
parameter count. Writes docs/results/prune_time/<REV>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import copy, json, sys, time, torch, torchvision
import prunekit as pk
torch.set_num_threads(1)
name = sys.argv[1]
m0 = getattr(torchvision.models, name)()
x = torch.randn(1, 3, 224, 224)
m = copy.deepcopy(m0); pk.prune(m, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
cpu = []
for _ in range(3):
    m = copy.deepcopy(m0); t = time.process_time()
    pk.prune(m, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
    cpu.append(time.process_time() - t)
print(json.dumps({"s": min(cpu), "params": sum(p.numel() for p in m.parameters())}))
"""

ROOT = Path(__file__).resolve().parent.parent


def run(tree: Path, model: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, model],
        cwd=tree,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rev")
    ap.add_argument("--models", default="resnet50,mobilenet_v2,densenet121,vit_b_16")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "rev"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(old), args.rev], cwd=ROOT, check=True)
        try:
            rows = []
            for model in args.models.split(","):
                new_s, old_s, ratios, params = [], [], [], set()
                for r in range(args.rounds):
                    order = [("new", ROOT), ("old", old)] if r % 2 == 0 else [("old", old), ("new", ROOT)]
                    got = {tag: run(tree, model) for tag, tree in order}
                    new_s.append(got["new"]["s"])
                    old_s.append(got["old"]["s"])
                    ratios.append(got["new"]["s"] / got["old"]["s"])
                    params.add((got["new"]["params"], got["old"]["params"]))
                row = {
                    "model": model,
                    "new_s": statistics.median(new_s),
                    "old_s": statistics.median(old_s),
                    "ratio": statistics.median(ratios),
                    "ratios": ratios,
                    "same_params": all(a == b for a, b in params),
                    "params": sorted(params),
                }
                rows.append(row)
                print(
                    f"{model:16s} this {row['new_s']:.3f} s  {args.rev} {row['old_s']:.3f} s  "
                    f"ratio {row['ratio']:.3f}  same params {row['same_params']}",
                    flush=True,
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    out = ROOT / "docs" / "results" / "prune_time"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.rev}.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# l2-channel prune time, this tree vs {args.rev}",
        "",
        f"Interleaved child processes, one thread, CPU time (fastest of 3 per child), {args.rounds} rounds, "
        "input 1x3x224x224, sparsity 0.5.",
        "",
        "| model | this tree s | rev s | median ratio | same parameter count |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['new_s']:.3f} | {r['old_s']:.3f} | {r['ratio']:.3f} | {r['same_params']} |" for r in rows
    ]
    (out / f"{args.rev}.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
