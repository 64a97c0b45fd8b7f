"""Benchmark: FLAP's adaptive structure against uniform widths at an equal parameter count (SmolLM2-135M).

For each target share of the decoder layers' attention and MLP parameters (20% and 30% by default):

1. ``pk.prune(model, "flap", sparsity=s, allocation="uniform", calibration=...)``: the paper's UL-UM, every
   layer keeps the same attention shape and MLP width (a stock config); it removes a share ``u`` close to ``s``.
2. ``pk.prune(model, "flap", sparsity=u, calibration=...)``: the adaptive AL-AM at the very share UL-UM
   removed, so both models keep the same number of parameters (to within one MLP channel).

Both use the same fluctuation statistics (calibration windows from *Emma*), bias compensation, and are
evaluated by the project's perplexity protocol on *Persuasion* (never the calibration text). Each pruned
model is saved with ``save_pretrained`` and reloaded with prunekit's loader
(:func:`prunekit.llm.load_causal_lm`, which rebuilds per-layer widths from ``config.prunekit_structure``);
its logits on held-out windows must equal the in-memory model's. The per-layer widths found are written
out. Results: ``OUT/flap.json`` (command, environment, every number) and ``OUT/flap.md`` (the table).

    python benchmarks/llm_flap.py --out docs/results/llm
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _ppl(model: Any, tok: Any, args: argparse.Namespace) -> Any:
    from prunekit.datasets import load_text
    from prunekit.llm.data import perplexity

    return perplexity(
        model,
        tok,
        load_text(args.eval_text),
        name=args.eval_text,
        seq_len=args.eval_len,
        max_tokens=args.eval_tokens,
    )


def _reload_check(model: Any, tok: Any, ids: Any) -> dict[str, Any]:
    """Save, reload with prunekit's loader, compare logits on ``ids`` [batch, seq]."""
    import torch

    from prunekit.llm.models import load_causal_lm

    with torch.no_grad():
        before = model(ids).logits
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        config = json.loads((Path(tmp) / "config.json").read_text())
        again, _ = load_causal_lm(tmp)
        with torch.no_grad():
            after = again(ids).logits
    return {
        "identical_logits": bool(torch.equal(before, after)),
        "max_abs_diff": float((before - after).abs().max()),
        "stock_config": "prunekit_structure" not in config,
        "config_intermediate_size": config.get("intermediate_size"),
        "config_heads": [config.get("num_attention_heads"), config.get("num_key_value_heads")],
        "logits_shape": list(before.shape),
    }


def _prune(
    allocation: str,
    standardization: str | None,
    sparsity: float,
    cal: Any,
    tok: Any,
    ids: Any,
    args: argparse.Namespace,
) -> dict:
    import prunekit as pk
    from prunekit.llm.models import load_causal_lm

    model, _ = load_causal_lm(args.model)
    params_dense = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    options = {} if standardization is None else {"standardization": standardization}
    report = pk.prune(
        model,
        "flap",
        sparsity=sparsity,
        allocation=allocation,
        calibration=cal,
        progress=False,
        measure=False,
        **options,
    )
    seconds = time.perf_counter() - t0
    # the widths and the accounting, read back from the pruned model (the same numbers prune_flap reports)
    layers = model.model.layers
    head_dim = model.config.head_dim
    heads = [layer.self_attn.q_proj.out_features // head_dim for layer in layers]
    kv = [layer.self_attn.k_proj.out_features // head_dim for layer in layers]
    widths = [layer.mlp.down_proj.in_features for layer in layers]
    ppl = _ppl(model, tok, args)
    check = _reload_check(model, tok, ids)
    row = {
        "allocation": allocation,
        "structure": {"global": "AL-AM", "uniform": "UL-UM"}[allocation],
        "standardization": standardization,
        "sparsity_asked": sparsity,
        "ppl": ppl.ppl,
        "nll": ppl.nll,
        "prune_seconds": round(seconds, 1),
        "params_dense": params_dense,
        "params_after": sum(p.numel() for p in model.parameters()),
        "projection_weights_after": sum(
            m.weight.numel()
            for layer in layers
            for m in (
                *[getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")],
                *[getattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")],
            )
        ),
        "heads_per_layer": heads,
        "kv_heads_per_layer": kv,
        "mlp_width_per_layer": widths,
        "reload": check,
        "notes": report.notes,
    }
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--out", default="docs/results/llm")
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.2, 0.3])
    ap.add_argument("--calib-text", default="emma")
    ap.add_argument("--calib-samples", type=int, default=64)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--eval-text", default="persuasion")
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--eval-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--standardizations",
        nargs="+",
        default=["per-layer", "across-layers"],
        help="AL-AM variants (flap's standardization)",
    )
    ap.add_argument("--table-only", action="store_true", help="only rewrite OUT/flap.md from OUT/flap.json")
    args = ap.parse_args()
    if args.table_only:
        rec = json.loads((Path(args.out) / "flap.json").read_text())
        (Path(args.out) / "flap.md").write_text(_markdown(rec))
        return

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    from prunekit.datasets import load_text
    from prunekit.llm.data import calibration_batches
    from prunekit.llm.models import load_causal_lm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dense, tok = load_causal_lm(args.model)
    cal = calibration_batches(
        tok, [(args.calib_text, load_text(args.calib_text))], n_samples=args.calib_samples, seq_len=args.calib_len
    )
    # held-out windows for the reload check: the start of the evaluation text
    ids = tok(load_text(args.eval_text), return_tensors="pt").input_ids[:, : 2 * 128].reshape(2, 128)
    dense_ppl = _ppl(dense, tok, args)
    layers = dense.model.layers
    targeted = sum(
        m.weight.numel()
        for layer in layers
        for m in (
            *[getattr(layer.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")],
            *[getattr(layer.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")],
        )
    )
    hidden = dense.config.hidden_size
    del dense
    rows: list[dict] = []
    for s in args.sparsities:
        uniform = _prune("uniform", None, s, cal, tok, ids, args)
        share = (targeted - uniform["projection_weights_after"]) / targeted
        adaptive = [_prune("global", how, share, cal, tok, ids, args) for how in args.standardizations]
        for row in (uniform, *adaptive):
            row["target"] = s
            row["removed_params"] = targeted - row["projection_weights_after"]
            row["removed_share"] = row["removed_params"] / targeted
            rows.append(row)
            print(
                f"{row['structure']} {row['standardization'] or ''} target {s}: removed {row['removed_share']:.4f}, "
                f"ppl {row['ppl']:.2f}, "
                f"reload identical {row['reload']['identical_logits']}",
                flush=True,
            )
    record = {
        "command": "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]]),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "platform": platform.platform(),
            "threads": args.threads,
        },
        "model": args.model,
        "targeted_params": targeted,
        "mlp_channel_params": 3 * hidden,
        "dense": {"ppl": dense_ppl.ppl, "nll": dense_ppl.nll},
        "eval_protocol": dense_ppl.protocol,
        "calibration_protocol": cal.protocol,
        "rows": rows,
    }
    (out / "flap.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "flap.md").write_text(_markdown(record))
    print(_markdown(record))


def _markdown(rec: dict) -> str:
    ev, cal = rec["eval_protocol"], rec["calibration_protocol"]
    lines = [
        f"# FLAP on {rec['model']}: adaptive (AL-AM) against uniform (UL-UM) widths at equal parameter count",
        "",
        f"Targeted parameters: the weights of the 7 projections of the {len(rec['rows'][0]['heads_per_layer'])} "
        f"decoder layers, {rec['targeted_params']:,}. Dense perplexity: {rec['dense']['ppl']:.2f}.",
        "",
        "| target | structure | standardization | removed (of targeted) | removed params | model params "
        "| Persuasion ppl | prune s | reload: identical logits | stock config |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rec["rows"]:
        lines.append(
            f"| {r['target']:g} | {r['structure']} | {r['standardization'] or '-'} | {100 * r['removed_share']:.3f}% | "
            f"{r['removed_params']:,} | "
            f"{r['params_after']:,} | {r['ppl']:.2f} | {r['prune_seconds']:.0f} | "
            f"{'yes' if r['reload']['identical_logits'] else 'NO'} | {'yes' if r['reload']['stock_config'] else 'no'} |"
        )
    lines += [""]
    for target in sorted({r["target"] for r in rec["rows"]}):
        at = [r for r in rec["rows"] if r["target"] == target]
        uniform = next(r for r in at if r["structure"] == "UL-UM")
        lines.append(
            f"* {target:g}: "
            + "; ".join(
                f"AL-AM {r['standardization']} {r['ppl']:.2f} "
                f"({r['ppl'] / uniform['ppl']:.2f}x UL-UM's {uniform['ppl']:.2f})"
                for r in at
                if r["structure"] == "AL-AM"
            )
        )
    lines += [
        "",
        "Standardisation (`flap`'s option `standardization`): `per-layer` (the default) standardises each layer's "
        "attention channels and MLP channels within the layer, a key-value group scoring the mean of its channels' "
        "values; `across-layers` standardises group scores (sums over their channels) and channel scores over all "
        "layers together, which keeps the layers' differences in activation scale, so the layers whose inputs "
        "vary least lose the most (widths below).",
        "",
        "Per-layer widths (layer 0 first):",
        "",
    ]
    for r in rec["rows"]:
        lines.append(
            f"* target {r['target']:g}, {r['structure']}{' ' + r['standardization'] if r['standardization'] else ''}: "
            f"query heads {r['heads_per_layer']}, key-value heads "
            f"{r['kv_heads_per_layer']}, MLP channels {r['mlp_width_per_layer']}"
        )
    lines += [
        "",
        f"Evaluation: {ev['corpus']}, first {ev['eval_tokens']} tokens, seq_len {ev['seq_len']}, stride "
        f"{ev['stride']}. Calibration: {cal['n_samples']} x {cal['seq_len']} tokens of {', '.join(cal['texts'])}, "
        f"seed {cal['seed']}, token sha256 {cal['token_sha256'][:16]}... Threads: {rec['environment']['threads']}; "
        f"torch {rec['environment']['torch']}, transformers {rec['environment']['transformers']}.",
        "",
        "UL-UM runs first at the target; AL-AM then gets the share UL-UM actually removed, so both keep the same "
        f"number of parameters (AL-AM stops within one MLP channel, {rec['mlp_channel_params']:,} parameters, below "
        "it). Model parameters "
        "include the zero biases that bias compensation adds where the config then gives every layer a bias. "
        "Reload: `save_pretrained`, then `prunekit.llm.load_causal_lm` (per-layer widths rebuilt from "
        "`config.prunekit_structure`, safetensors only); logits compared with `torch.equal` on two 128-token "
        "windows of the evaluation text. Prune seconds are wall time on a shared 2-core machine (other jobs "
        "running), not a speed measurement.",
        "",
        "Reproduce:",
        "",
        "```bash",
        rec["command"],
        "```",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
