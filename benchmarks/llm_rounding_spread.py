"""How far float rounding alone moves the perplexity of Wanda / SparseGPT, for prunekit and llm-compressor 0.14.

    .venv/bin/python benchmarks/llm_rounding_spread.py --lc-python /path/to/lc-venv/bin/python \
        [--configs sparsegpt:unstructured,sparsegpt:2:4] [--orders 4] [--merge] [--rewrite]

The side-by-side protocol of ``llm_vs_llmcompressor.py`` (its children are reused: same model, token ids,
perplexity loop, pruning calls), run with the same 64 calibration windows fed in ``--orders`` different orders:
order 0 as drawn, order ``k`` a permutation seeded with ``k``. The windows are the same set, so every
statistic the methods gather (Wanda's input norms, SparseGPT's Hessian ``2 X X^T / n``) is the same sum in
exact arithmetic; only the order of the float32 additions changes (and, for prunekit, which windows share a
merged batch). Whatever the perplexity does across orders is the rounding sensitivity of the method and
model, which bounds how closely two correct implementations can agree. Both tools get the same orders; runs
alternate between the tools.

Writes ``OUT/rounding_spread.{md,json}`` (default OUT: docs/results/llm) after every run: perplexity per order
and its spread for each tool, and, paired by order, the medians of prunekit against llm-compressor (perplexity,
prune time, peak memory). ``--merge`` keeps the runs of other configurations already in the .json;
``--rewrite`` only remakes the .md from the .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_vs_llmcompressor as side  # noqa: E402  (the side-by-side children and their data)


def reorder(data: Path, seed: int, dest: Path) -> None:
    """Write ``data``'s token file with its calibration windows permuted by ``seed`` (0: unchanged)."""
    import torch

    record = torch.load(data)
    if seed:
        perm = torch.randperm(len(record["windows"]), generator=torch.Generator().manual_seed(seed)).tolist()
        record["windows"] = [record["windows"][i] for i in perm]
    torch.save(record, dest)


def paired(runs: list[dict], config: str) -> list[tuple[dict, dict]]:
    """(prunekit run, llm-compressor run) for every order of ``config`` that both tools ran."""
    by = {(r["tool"], r["order"]): r for r in runs if r["config"] == config}
    orders = sorted({o for _, o in by})
    return [
        (by["prunekit", o], by["llm-compressor", o])
        for o in orders
        if ("prunekit", o) in by and ("llm-compressor", o) in by
    ]


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "rounding_spread.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# Perplexity under float rounding alone: the same calibration windows in other orders",
        "",
        f"Protocol: {result['protocol']}. Calibration orders: 0 = as drawn, k = permuted with seed k (the same "
        "64 windows, so every statistic is the same sum in exact arithmetic). Machine: "
        f"{result['machine']}; {result['versions']}.",
        "",
        "| configuration | tool | perplexity per order | median | spread (max - min) / median |",
        "|---|---|---|---:|---:|",
    ]
    medians: dict[tuple[str, str], float] = {}
    for config in result["configs"]:
        for tool in side.TOOLS:
            rs = sorted(
                (r for r in result["runs"] if r["config"] == config and r["tool"] == tool), key=lambda r: r["order"]
            )
            if not rs:
                continue
            ppls = [r["ppl"] for r in rs]
            med = statistics.median(ppls)
            medians[config, tool] = med
            per = ", ".join(f"{r['order']}: {r['ppl']:.2f}" for r in rs)
            lines.append(f"| {config} | {tool} | {per} | {med:.2f} | {100 * (max(ppls) - min(ppls)) / med:.2f}% |")
    lines += [
        "",
        "Paired by order (the two tools' runs on the same order of windows, back to back): medians over orders.",
        "",
        "| configuration | orders | perplexity, prunekit median vs llm-compressor median | prune time ratio "
        "| peak memory ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for config in result["configs"]:
        a, b = medians.get((config, "prunekit")), medians.get((config, "llm-compressor"))
        if not (a and b):
            continue
        pairs = paired(result["runs"], config)
        time_r = statistics.median(p["prune_wall_s"] / q["prune_wall_s"] for p, q in pairs) if pairs else None
        peak_r = statistics.median(p["peak_prune_mib"] / q["peak_prune_mib"] for p, q in pairs) if pairs else None
        lines.append(
            f"| {config} | {len(pairs)} | {100 * (a / b - 1):+.2f}% | "
            + (f"{time_r:.2f}x | {peak_r:.2f}x |" if pairs else "- | - |")
        )
    lines += [
        "",
        "Prune time: wall seconds of the pruning call; peak: the peak resident set during it (`VmHWM` reset right "
        "before it), as in `vs_llmcompressor.md`. Targets (the issue's): perplexity within 1% of the reference's, "
        "time ratio <= 0.5x, peak memory no higher.",
    ]
    lines += ["", f"Reproduce: `{result['command']}`", ""]
    (out / "rounding_spread.md").write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lc-python", required=True, help="python of the llm-compressor virtual environment")
    ap.add_argument("--configs", default="sparsegpt:unstructured,sparsegpt:2:4", help="method:pattern, comma separated")
    ap.add_argument("--orders", type=int, default=4, help="calibration orders per tool (order 0 is as drawn)")
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--eval-tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tools", default=",".join(side.TOOLS))
    ap.add_argument("--out", default=str(side.ROOT / "docs/results/llm"))
    ap.add_argument("--merge", action="store_true", help="keep the runs of other configurations already in OUT's .json")
    ap.add_argument("--rewrite", action="store_true", help="only rewrite OUT's .md from its .json (runs nothing)")
    args = ap.parse_args()
    out = Path(args.out)
    if args.rewrite:
        write(json.loads((out / "rounding_spread.json").read_text()), out)
        return 0
    args.prunekit_options = {}
    import torch
    import transformers

    configs = [c for c in args.configs.split(",") if c]
    tools = [t for t in side.TOOLS if t in args.tools.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "tokens.pt"
        model_dir, protocol = side.prepare(args, base)
        args.shim = side.build_shim(args.lc_python, Path(tmp) / "shim") if "llm-compressor" in tools else None
        result = {
            "command": "python " + shlex.join(sys.argv),
            "protocol": (
                f"SmolLM2-135M float32, {args.threads} threads; calibration {args.samples} x 256 tokens of Emma; "
                f"perplexity on the first {protocol['eval_tokens']:,} tokens of Persuasion in windows of 512"
            ),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "versions": f"torch {torch.__version__}, transformers {transformers.__version__} (prunekit's side)",
            "configs": configs,
            "runs": [],
            **protocol,
        }
        previous = out / "rounding_spread.json"
        if args.merge and previous.exists():
            kept = json.loads(previous.read_text())
            if kept.get("calibration_token_sha256") != result.get("calibration_token_sha256"):
                raise SystemExit(f"--merge: {previous} was run on other calibration tokens; leave --merge out")
            result["runs"] = [r for r in kept["runs"] if r["config"] not in configs]
            result["configs"] = [c for c in kept["configs"] if c not in configs] + configs
            result["command"] = kept.get("command", "") + "; " + result["command"]
        for config in configs:
            for order in range(args.orders):
                data = Path(tmp) / f"tokens-{order}.pt"
                reorder(base, order, data)
                for tool in tools if order % 2 == 0 else tools[::-1]:
                    rec = side.run_child(tool, args, data, model_dir, config)
                    rec["order"] = order
                    result["runs"].append(rec)
                    print(
                        json.dumps({k: rec[k] for k in ("tool", "config", "order", "ppl", "prune_wall_s")}), flush=True
                    )
                    write(result, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
