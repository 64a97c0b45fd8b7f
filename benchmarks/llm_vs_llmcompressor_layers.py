"""Where prunekit's 2:4 results part from llm-compressor's: the masks of the first decoder layers, compared.

    .venv/bin/python benchmarks/llm_vs_llmcompressor_layers.py [--layers 3] [--llmcompressor-path DIR]

Needs PyPI ``llmcompressor`` (0.14; e.g. ``pip install --no-deps --target DIR llmcompressor==0.14.0.1
compressed-tensors loguru`` and ``--llmcompressor-path DIR``) and ``datasets``. SmolLM2-135M is cut to its first
``--layers`` decoder layers (so both run in a minute at one thread) and pruned 2:4 under the speed benchmark's
calibration protocol (64 x 256 tokens of *Emma*, starts ``torch.randint(0, len(ids) - 256 + 1, (64,),
generator=torch.Generator().manual_seed(0))``) twice: by llm-compressor's ``oneshot`` (sequential pipeline,
``SparseGPTModifier`` / ``WandaPruningModifier``, ``mask_structure="2:4"``, defaults otherwise) and by
``prunekit.prune``. Then, to tell the per-layer algorithm from the pipeline that feeds it, layer 1 is pruned
again by prunekit with layer 0 set to llm-compressor's pruned layer 0 (same inputs for both). Reports, per
matrix, the share of mask entries that agree and the largest weight difference; writes
docs/results/llm/nm_gap.{md,json}.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def compare(a: torch.nn.Module, b: torch.nn.Module, names: list[str]) -> list[dict]:
    rows = []
    for n in names:
        wa, wb = a.get_submodule(n).weight.detach(), b.get_submodule(n).weight.detach()
        rows.append(
            {
                "matrix": n,
                "mask_agree": float(((wa != 0) == (wb != 0)).float().mean()),
                "masks_differ": int(((wa != 0) != (wb != 0)).sum()),
                "max_abs_diff": float((wa - wb).abs().max()),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--llmcompressor-path", default=None)
    args = ap.parse_args()
    if args.llmcompressor_path:
        sys.path.insert(0, args.llmcompressor_path)
    torch.set_num_threads(1)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    import prunekit as pk
    from prunekit.datasets import load_text
    from prunekit.llm import load_causal_lm
    from prunekit.llm.prune import prune_causal_lm

    model, tok = load_causal_lm("smollm2-135m")
    model.model.layers = model.model.layers[: args.layers]
    model.config.num_hidden_layers = args.layers
    ids = torch.tensor(tok(load_text("emma"), add_special_tokens=False)["input_ids"])
    starts = torch.randint(0, len(ids) - 256 + 1, (64,), generator=torch.Generator().manual_seed(0))
    windows = [ids[s : s + 256] for s in starts.tolist()]
    batches = [w.unsqueeze(0) for w in windows]
    ds = Dataset.from_dict({"input_ids": [w.tolist() for w in windows], "attention_mask": [[1] * 256] * 64})
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n]
    result: dict = {"command": "python " + " ".join(sys.argv), "layers": args.layers, "methods": {}}
    for method, modifier in (("sparsegpt", SparseGPTModifier), ("wanda", WandaPruningModifier)):
        ours, ref = copy.deepcopy(model), copy.deepcopy(model)
        pk.prune(ours, method, sparsity=0.5, pattern="2:4", calibration=batches, progress=False)
        recipe = [modifier(sparsity=0.5, mask_structure="2:4", targets=["Linear"], ignore=["re:.*lm_head"])]
        oneshot(
            model=ref,
            dataset=ds,
            recipe=recipe,
            num_calibration_samples=64,
            max_seq_length=256,
            shuffle_calibration_samples=False,
            pipeline="sequential",
        )
        same_inputs = copy.deepcopy(model)
        same_inputs.model.layers[0].load_state_dict(ref.model.layers[0].state_dict())
        layer1 = [n for n in linears if n.startswith("model.layers.1.")]
        prune_causal_lm(same_inputs, method, pattern="2:4", calibration=batches, targets=layer1, progress=False)
        result["methods"][method] = {
            "end_to_end": compare(ours, ref, linears),
            "layer1_on_reference_layer0": compare(same_inputs, ref, layer1),
        }
    out = ROOT / "docs/results/llm"
    (out / "nm_gap.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# 2:4 masks: prunekit against llm-compressor, layer by layer",
        "",
        f"SmolLM2-135M cut to its first {args.layers} decoder layers; calibration as in `speed.md`. "
        "`agree`: share of mask entries equal; `differ`: entries that differ; `max |dW|`: largest weight difference.",
        "",
    ]
    for method, parts in result["methods"].items():
        for part, rows in parts.items():
            lines += [f"## {method}: {part.replace('_', ' ')}", "", "| matrix | agree | differ | max abs dW |"]
            lines += ["|---|---:|---:|---:|"]
            for r in rows:
                agree, differ, diff = r["mask_agree"], r["masks_differ"], r["max_abs_diff"]
                lines.append(f"| {r['matrix']} | {agree:.6f} | {differ} | {diff:.3g} |")
            lines.append("")
    lines += ["Reproduce: `" + result["command"] + "`", ""]
    (out / "nm_gap.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
