"""Benchmark: post-training pruning of real causal LMs (perplexity, wall time, peak memory).

For each model: dense; magnitude, Wanda and SparseGPT at 50% unstructured, 2:4 and 4:8; llm-heads,
llm-mlp and llm-layers at 20% and 30%. Calibration windows come from one Austen novel, perplexity is
measured on another (never the calibration text); the protocol (texts, hashes, tokenizer, sequence
length, stride, seed, token hashes) is written into every JSON line. Each configuration runs in its own
process so that its peak memory (max RSS) is its own. Results append to ``OUT/llm.jsonl`` (re-running
skips configurations already there) and ``OUT/llm.md`` holds the table.

    python benchmarks/llm.py --models smollm2-135m --out results/llm
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS: list[dict] = [
    {"method": "dense"},
    *[
        {"method": m, "sparsity": 0.5, "pattern": p}
        for m in ("magnitude", "wanda", "sparsegpt")
        for p in (None, "2:4", "4:8")
    ],
    *[{"method": m, "sparsity": s} for m in ("llm-heads", "llm-mlp", "llm-layers") for s in (0.2, 0.3)],
]


def _key(model: str, cfg: dict) -> str:
    return f"{model}|{cfg['method']}|{cfg.get('sparsity')}|{cfg.get('pattern')}"


def run_one(model_name: str, cfg: dict, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches, perplexity
    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.prune import prune_causal_lm
    from prunekit.llm.structured import prune_structured

    t0 = time.perf_counter()
    model, tok = load_causal_lm(model_name)
    load_s = time.perf_counter() - t0
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params_before = sum(p.numel() for p in model.parameters())
    cal = calibration_batches(
        tok,
        [(args.calib_text, load_text(args.calib_text))],
        n_samples=args.calib_samples,
        seq_len=args.calib_len,
        seed=args.seed,
    )
    method = cfg["method"]
    notes: list[str] = []
    t0 = time.perf_counter()
    if method in ("magnitude", "wanda", "sparsegpt"):
        res = prune_causal_lm(
            model,
            method,
            sparsity=None if cfg.get("pattern") else cfg["sparsity"],
            pattern=cfg.get("pattern"),
            progress=args.progress,
            calibration=None if method == "magnitude" else cal.batches,
        )
        notes = res.notes
    elif method.startswith("llm-"):
        res_s = prune_structured(
            model, method[4:], sparsity=cfg["sparsity"], calibration=cal.batches, progress=args.progress
        )
        notes = res_s.notes
    prune_s = time.perf_counter() - t0
    rss_pruned = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    params_after = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    t0 = time.perf_counter()
    ppl = perplexity(
        model,
        tok,
        load_text(args.eval_text),
        name=args.eval_text,
        seq_len=args.eval_len,
        stride=args.eval_stride,
        max_tokens=args.eval_tokens,
    )
    eval_s = time.perf_counter() - t0
    return {
        "model": model_name,
        **{k: cfg.get(k) for k in ("method", "sparsity", "pattern")},
        "ppl": ppl.ppl,
        "prune_seconds": round(prune_s, 2),
        "eval_seconds": round(eval_s, 2),
        "load_seconds": round(load_s, 2),
        "peak_rss_mb_after_load": round(rss_loaded, 1),
        "peak_rss_mb_after_prune": round(rss_pruned, 1),
        "params_before": params_before,
        "params_after": params_after,
        "nonzero_after": nonzero,
        "params_removed_fraction": round(1 - params_after / params_before, 4),
        "eval_protocol": ppl.protocol,
        "calibration_protocol": cal.protocol,
        "threads": args.threads,
        "torch": torch.__version__,
        "notes": notes,
    }


def write_table(rows: list[dict], path: Path) -> None:
    lines = [
        "| model | method | sparsity | pattern | ppl | params removed | weights zero | prune s "
        "| peak RSS MB (load -> prune) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['sparsity'] if r['sparsity'] is not None else '-'} | "
            f"{r['pattern'] or '-'} | {r['ppl']:.2f} | {100 * r['params_removed_fraction']:.1f}% | "
            f"{100 * (1 - r['nonzero_after'] / r['params_after']):.1f}% | "
            f"{r['prune_seconds']:.0f} | {r['peak_rss_mb_after_load']:.0f} -> {r['peak_rss_mb_after_prune']:.0f} |"
        )
    if rows:
        p = rows[0]
        lines += [
            "",
            f"Evaluation: {p['eval_protocol']['corpus']}, first {p['eval_protocol']['eval_tokens']} tokens, "
            f"seq_len {p['eval_protocol']['seq_len']}, stride {p['eval_protocol']['stride']}. Calibration: "
            f"{p['calibration_protocol']['n_samples']} x {p['calibration_protocol']['seq_len']} tokens of "
            f"{', '.join(p['calibration_protocol']['texts'])}, seed {p['calibration_protocol']['seed']}, "
            f"token sha256 {p['calibration_protocol']['token_sha256'][:16]}... Threads: {p['threads']}.",
        ]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m"])
    ap.add_argument("--methods", nargs="*", default=None, help="only these methods (default: all)")
    ap.add_argument("--out", default="results/llm")
    ap.add_argument("--calib-text", default="prideprejudice")
    ap.add_argument("--eval-text", default="persuasion")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-len", type=int, default=512)
    ap.add_argument("--eval-stride", type=int, default=None, help="default: disjoint windows")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--table-only", action="store_true", help="only rewrite OUT/llm.md from OUT/llm.jsonl")
    ap.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        model_name, cfg = json.loads(args.run_one)
        print("RESULT " + json.dumps(run_one(model_name, cfg, args)), flush=True)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "llm.jsonl"
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []
    if args.table_only:
        write_table(rows, out / "llm.md")
        return
    done = {_key(r["model"], r) for r in rows}
    passthrough = [a for a in sys.argv[1:]]
    for model_name in args.models:
        for cfg in CONFIGS:
            if args.methods and cfg["method"] not in args.methods:
                continue
            if _key(model_name, cfg) in done:
                continue
            cmd = [sys.executable, __file__, *passthrough, "--run-one", json.dumps([model_name, cfg])]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                print(f"FAILED {model_name} {cfg}:\n{proc.stderr[-3000:]}", file=sys.stderr, flush=True)
                continue
            row = json.loads(line[7:])
            rows.append(row)
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
            write_table(rows, out / "llm.md")
            print(
                f"{model_name} {cfg}: ppl {row['ppl']:.2f}, prune {row['prune_seconds']}s, "
                f"rss {row['peak_rss_mb_after_prune']} MB",
                flush=True,
            )
    write_table(rows, out / "llm.md")


if __name__ == "__main__":
    main()
