"""Benchmark: recovery of structurally pruned SmolLM2-135M with LoRA, zero-shot tasks, decode speed.

Stages (each appends its record to ``OUT/recovery.json`` as soon as it finishes; a re-run skips the stages
already there, ``--fresh`` starts over; ``OUT/recovery.md`` is rewritten from the JSON after every stage):

* ``dense``: perplexity on *Persuasion* and the two offline lm-eval tasks (``austen_lastword``,
  ``austen_cloze``, built from *Persuasion* too);
* ``llm-mlp`` 0.3, ``llm-layers`` 0.2 and ``llm-pruner`` 0.2 (LLM-Pruner, Ma et al. 2023, at 20% of the
  decoder layers' attention and MLP parameters, as in the paper):
  ``pk.prune(model, "llm-mlp", sparsity=0.3, calibration=...)`` with calibration windows from *Emma*,
  perplexity pruned, LoRA recovery (:func:`prunekit.llm.recover`) on Pride and Prejudice, Mansfield Park,
  Northanger Abbey and Sense and Sensibility (never *Emma*, never *Persuasion*), perplexity recovered, share
  of the gap to dense closed, tasks on the recovered model (saved under the cache for the throughput stage);
* ``sparse`` (50% unstructured) and ``sparse-2:4`` with ``--sparse-method`` (SparseGPT by default):
  perplexity and tasks;
* ``throughput``: prefill and decode tokens/s of the recovered structured models against dense, timed
  interleaved in this process (:func:`prunekit.llm.throughput`), next to their parameter ratio.

    python benchmarks/llm_recovery.py --out docs/results/llm            # all stages
    python benchmarks/llm_recovery.py --stages llm-mlp throughput        # some of them
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

STAGES = ("dense", "llm-mlp", "llm-layers", "llm-pruner", "sparse", "sparse-2:4", "throughput")
STRUCTURED = {"llm-mlp": 0.3, "llm-layers": 0.2, "llm-pruner": 0.2}
TRAIN_TEXTS = ("prideprejudice", "mansfieldpark", "northangerabbey", "sensesensibility")


def _ppl(model: Any, tok: Any, args: argparse.Namespace) -> Any:
    from prunekit.datasets import load_text
    from prunekit.llm.data import perplexity

    return perplexity(
        model, tok, load_text(args.eval_text), name=args.eval_text, seq_len=args.eval_len, max_tokens=args.eval_tokens
    )


def _tasks(model: Any, tok: Any, args: argparse.Namespace) -> dict[str, Any] | None:
    if args.no_tasks:
        return None
    from prunekit.llm.tasks import evaluate_tasks

    res = evaluate_tasks(model, tok, limit=args.task_limit, batch_size=args.task_batch)
    print(res, flush=True)
    return res.to_dict()


def _calibration(tok: Any, args: argparse.Namespace) -> Any:
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches

    return calibration_batches(
        tok,
        [(args.calib_text, load_text(args.calib_text))],
        n_samples=args.calib_samples,
        seq_len=args.calib_len,
        seed=0,
    )


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _saved_dir(stage: str) -> Path:
    from prunekit.llm.models import cache_dir

    return Path(cache_dir()) / "bench" / "llm_recovery" / stage.replace(":", "-")


def run_stage(stage: str, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import prunekit as pk
    from prunekit.llm.models import load_causal_lm

    torch.manual_seed(0)
    model, tok = load_causal_lm(args.model)
    rec: dict[str, Any] = {"stage": stage, "params": _params(model)}
    if stage == "dense":
        t0 = time.perf_counter()
        rec["ppl"] = _ppl(model, tok, args).ppl
        rec["eval_seconds"] = time.perf_counter() - t0
        rec["tasks"] = _tasks(model, tok, args)
        return rec
    if stage in STRUCTURED:
        cal = _calibration(tok, args)
        t0 = time.perf_counter()
        pk.prune(
            model, stage, sparsity=STRUCTURED[stage], calibration=cal, measure=False, progress=args.progress or None
        )
        rec.update(
            sparsity=STRUCTURED[stage],
            prune_seconds=time.perf_counter() - t0,
            params=_params(model),
            calibration=cal.protocol,
        )
        from prunekit.datasets import load_text
        from prunekit.llm.recover import recover

        texts = [(name, load_text(name)) for name in TRAIN_TEXTS]
        report = recover(
            model,
            texts,
            "lora",
            tokenizer=tok,
            steps=args.steps,
            batch_size=args.batch_size,
            seq_len=args.seq_len,
            lr=args.lr,
            rank=args.rank,
            lora_alpha=2.0 * args.rank,
            eval_text=load_text(args.eval_text),
            eval_name=args.eval_text,
            eval_tokens=args.eval_tokens,
            eval_seq_len=args.eval_len,
            seed=0,
            progress=args.progress or None,
        )
        print(report, flush=True)
        rec["ppl_pruned"] = report.perplexity_before.ppl
        rec["ppl"] = report.perplexity_after.ppl
        rec["recovery"] = report.to_dict()
        rec["tasks"] = _tasks(model, tok, args)
        out = _saved_dir(stage)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        return rec
    if stage in ("sparse", "sparse-2:4"):
        cal = _calibration(tok, args)
        pattern = "2:4" if stage == "sparse-2:4" else None
        t0 = time.perf_counter()
        pk.prune(
            model,
            args.sparse_method,
            sparsity=0.5,
            pattern=pattern,
            calibration=cal,
            measure=False,
            progress=args.progress or None,
        )
        pk.squash_masks_(model)
        rec.update(
            method=args.sparse_method,
            pattern=pattern or "unstructured",
            sparsity=0.5,
            prune_seconds=time.perf_counter() - t0,
            calibration=cal.protocol,
        )
        rec["ppl"] = _ppl(model, tok, args).ppl
        rec["tasks"] = _tasks(model, tok, args)
        return rec
    if stage == "throughput":
        from prunekit.llm.throughput import throughput

        models = {"dense": model}
        for name in STRUCTURED:
            path = _saved_dir(name)
            if (path / "config.json").exists():  # the recovered model its stage saved
                models[name], _ = load_causal_lm(path)
        if len(models) == 1:
            raise SystemExit(f"throughput needs a structured stage first ({', '.join(STRUCTURED)})")
        res = throughput(models, prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats)
        print(res, flush=True)
        rec["throughput"] = res.to_dict()
        return rec
    raise SystemExit(f"unknown stage {stage}; stages: {', '.join(STAGES)}")


def _fmt_tasks(t: dict[str, Any] | None) -> tuple[str, str]:
    if not t:
        return "-", "-"
    m = t["metrics"]
    lw = m.get("austen_lastword", {})
    cz = m.get("austen_cloze", {})
    a = f"{lw['acc']:.3f} ± {lw['acc_stderr']:.3f} (ppl {lw['perplexity']:.1f})" if lw else "-"
    b = f"{cz['acc']:.3f} / {cz['acc_norm']:.3f} ± {cz['acc_stderr']:.3f}" if cz else "-"
    return a, b


def write_markdown(data: dict[str, Any], path: Path) -> None:
    recs = {r["stage"]: r for r in data["records"]}
    s = data["settings"]
    lines = ["# SmolLM2-135M: LoRA recovery of structured pruning, zero-shot tasks, decode speed", ""]
    dense = recs.get("dense")
    commands = list(dict.fromkeys(r["settings"]["command"] for r in data["records"]))
    lines += [
        "Written by " + "; ".join(f"`{c}`" for c in commands) + f" on {s['machine']} ({s['threads']} threads, "
        f"torch {s['torch']}); {s['date']}. Stage wall times (machine shared with other jobs): "
        + ", ".join(f"{r['stage']} {r['stage_seconds']:.0f} s" for r in data["records"])
        + ".",
        "",
        *(
            [f"Stages not run yet: {', '.join(m for m in STAGES if m not in recs)}.", ""]
            if any(m not in recs for m in STAGES)
            else []
        ),
        "## Perplexity: dense, pruned, recovered (LoRA)",
        "",
        f"Perplexity on the first {s['eval_tokens']:,} tokens of *{s['eval_text']}* (windows of {s['eval_len']}). "
        f"Calibration: {s['calib_samples']} x {s['calib_len']} tokens of *{s['calib_text']}*. Recovery: LoRA rank "
        f"{s['rank']} (alpha {2 * s['rank']}) on every linear projection, steps (last column) x {s['batch_size']} "
        f"windows x {s['seq_len']} tokens drawn from {', '.join(TRAIN_TEXTS)}, AdamW lr {s['lr']:g}, warmup 10% then "
        "linear decay; the adapters are merged, so the recovered model has the pruned shapes.",
        "",
        "| model | params | ppl | gap closed | recovery steps / tokens / s |",
        "|---|---|---|---|---|",
    ]
    if dense:
        lines.append(f"| dense | {dense['params']:,} | {dense['ppl']:.2f} | | |")
    for stage, sp in STRUCTURED.items():
        # a stage renamed "<stage>@<steps>" is an earlier run of it with another number of recovery steps
        runs = [r for r in data["records"] if r["stage"] == stage or r["stage"].startswith(f"{stage}@")]
        if not runs:
            continue
        runs.sort(key=lambda r: r["recovery"]["steps"])
        lines.append(f"| {stage} {sp} pruned | {runs[0]['params']:,} | {runs[0]['ppl_pruned']:.2f} | | |")
        for r in runs:
            rv = r["recovery"]
            gap = None
            if dense:
                gap = (r["ppl_pruned"] - r["ppl"]) / (r["ppl_pruned"] - dense["ppl"])
            lines.append(
                f"| {stage} {sp} + LoRA | {r['params']:,} | {r['ppl']:.2f} | "
                f"{'-' if gap is None else f'{100 * gap:.0f}%'} | {rv['steps']} / {rv['tokens']:,} / "
                f"{rv['seconds']:.0f} |"
            )
    lines += [
        "",
        "Gap closed = (ppl pruned - ppl recovered) / (ppl pruned - ppl dense).",
        "",
        "## Zero-shot tasks (lm-eval, offline Austen tasks)",
        "",
        "`austen_lastword`: LAMBADA-style last word of a passage (accuracy of the greedy word, and its perplexity); "
        "`austen_cloze`: the true next sentence among four (acc / acc_norm). Both built from *Persuasion* "
        "(see prunekit/llm/tasks/)."
        + (f" Only the first {s['task_limit']} items of each task." if s.get("task_limit") else ""),
        "",
        "The cloze's raw `acc` (summed log-likelihood of the sentence) is at or below chance (0.25) for every model, "
        "the dense one included, so read `acc_norm` (per byte); with 50 items a standard error is about 0.07.",
        "",
        "| model | austen_lastword acc (ppl) | austen_cloze acc / acc_norm |",
        "|---|---|---|",
    ]
    for stage in ("dense", "sparse", "sparse-2:4", *STRUCTURED):
        r = recs.get(stage)
        if not r or not r.get("tasks"):
            continue
        label = {
            "dense": "dense",
            "sparse": f"{r.get('method')} 50%",
            "sparse-2:4": f"{r.get('method')} 2:4",
            **{name: f"{name} {sp} + LoRA" for name, sp in STRUCTURED.items()},
        }[stage]
        a, b = _fmt_tasks(r["tasks"])
        lines.append(f"| {label} (ppl {r['ppl']:.2f}) | {a} | {b} |")
    t = recs.get("throughput")
    if t:
        tp = t["throughput"]
        st = tp["settings"]
        lines += [
            "",
            "## Decode speed against parameter count",
            "",
            f"Prompt of {st['prompt_len']} tokens (batch {st['batch_size']}), then {st['new_tokens']} greedy decode "
            f"steps with the KV cache; {st['repeats']} repeats after {st['warmup']} warm-up, models interleaved "
            f"(order rotating), {st['threads']} threads. Ratios are medians of per-repeat ratios to dense "
            "(quartiles in brackets).",
            "",
            "| model | params (ratio) | prefill tok/s (ratio) | decode tok/s (ratio) |",
            "|---|---|---|---|",
        ]
        p0 = tp["parameters"]["dense"]
        for name in tp["decode_tokens_per_s"]:
            pr, dr = tp["prefill_ratio"][name], tp["decode_ratio"][name]
            lines.append(
                f"| {name} | {tp['parameters'][name]:,} ({tp['parameters'][name] / p0:.3f}) | "
                f"{tp['prefill_tokens_per_s'][name][1]:.0f} (x{pr[1]:.2f} [{pr[0]:.2f}, {pr[2]:.2f}]) | "
                f"{tp['decode_tokens_per_s'][name][1]:.1f} (x{dr[1]:.2f} [{dr[0]:.2f}, {dr[2]:.2f}]) |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="docs/results/llm")
    ap.add_argument("--stages", nargs="*", default=list(STAGES))
    ap.add_argument("--fresh", action="store_true", help="forget earlier stages in OUT/recovery.json")
    ap.add_argument("--calib-text", default="emma")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--eval-text", default="persuasion")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-len", type=int, default=512)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--sparse-method", default="sparsegpt", choices=["sparsegpt", "wanda"])
    ap.add_argument("--no-tasks", action="store_true")
    ap.add_argument("--task-limit", type=int, default=None, help="first N items of each task (default: all)")
    ap.add_argument("--task-batch", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args()
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # progress lines of long steps

    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "recovery.json"
    settings = {
        **{k: v for k, v in vars(args).items() if k not in ("stages", "fresh", "out", "progress")},
        "command": "python benchmarks/llm_recovery.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    data = json.loads(path.read_text()) if path.exists() and not args.fresh else {"records": []}
    done = {r["stage"] for r in data["records"]}
    for stage in args.stages:
        if stage in done:
            continue
        t0 = time.perf_counter()
        rec = run_stage(stage, args)
        rec["stage_seconds"] = time.perf_counter() - t0
        rec["settings"] = settings
        data["records"].append(rec)
        data["settings"] = settings
        path.write_text(json.dumps(data, indent=1) + "\n")
        write_markdown(data, out / "recovery.md")
        print(f"{stage}: done in {rec['stage_seconds']:.0f} s, ppl {rec.get('ppl', float('nan')):.2f}", flush=True)
    if data["records"]:
        write_markdown(data, out / "recovery.md")


if __name__ == "__main__":
    main()
