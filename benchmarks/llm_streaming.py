"""Benchmark: pruning a causal LM from its safetensors files one decoder layer at a time
(``prunekit.llm.prune_checkpoint``) against the same run in memory.

For each model, three fresh processes (so that each peak is its own): ``stream`` prunes the checkpoint into
a folder with ``prune_checkpoint``; ``memory`` loads the whole model (``load_causal_lm``), prunes it with
``prune_causal_lm`` and saves it with ``save_pretrained``; ``one-layer`` runs the same ``prune_causal_lm`` on
the model cut to its first decoder layer (random weights), to measure the calibration activations. The
first two record their peak resident memory (``ru_maxrss``) and their resident memory after the imports and
the tokenizer (the interpreter's own share), and the prune time; ``one-layer`` records its resident memory
once the model is built and the peak above it during the pruning call (``VmHWM`` reset right before it).
The parent then compares the two outputs tensor by tensor (bit for bit) and computes the memory bound the
issue states: the tensors outside the decoder layers + two decoder layers + the calibration activations,
float32; the activations computed (the calibration set's hidden states, a layer's inputs and outputs, from
the checkpoint's shapes) and measured (the ``one-layer`` run's peak above its resident model: hidden
states, the layer forward's working memory and the kernels its first call loads).

    python benchmarks/llm_streaming.py --models smollm2-135m --method wanda --n-samples 16 --seq-len 256

Writes ``streaming.md`` and ``streaming.json`` to ``--out`` (default docs/results/llm).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path("docs/results/llm")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> float:
    """Free what can be freed, reset the peak resident set (``VmHWM``; Linux: 5 into ``clear_refs``) to the
    current one, and return it in MB."""
    import gc

    from prunekit.llm.memory import release_freed_memory

    gc.collect()
    release_freed_memory()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def child(args: argparse.Namespace) -> None:
    """One measured run in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    from prunekit.datasets import load_text
    from prunekit.llm import cached_model_dir, calibration_batches, load_causal_lm, prune_causal_lm, prune_checkpoint

    src = cached_model_dir(args.model)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src))
    calib = calibration_batches(tok, load_text(args.text), n_samples=args.n_samples, seq_len=args.seq_len, seed=0)
    base = _rss_mb()
    t0 = time.perf_counter()
    if args.child == "stream":
        prune_checkpoint(src, args.dest, args.method, sparsity=args.sparsity, calibration=calib, progress=False)
    elif args.child == "one-layer":  # the same run on the model cut to its first decoder layer (random weights)
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = AutoConfig.from_pretrained(str(src))
        text = getattr(cfg, "text_config", cfg)
        text.num_hidden_layers = 1
        if getattr(text, "layer_types", None):
            text.layer_types = text.layer_types[:1]
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
        # the model is resident now: what the pruning run adds on top is the calibration activations (with
        # the layer forward's working memory and the kernels its first call loads), measured from here
        base = _reset_peak()
        t0 = time.perf_counter()
        prune_causal_lm(model, args.method, sparsity=args.sparsity, calibration=calib, progress=False)
        seconds = time.perf_counter() - t0
        peak = _status_mb("VmHWM")
        print(json.dumps({"mode": args.child, "base_mb": base, "peak_mb": peak, "seconds": seconds}))
        return
    else:
        model, _ = load_causal_lm(args.model)
        prune_causal_lm(model, args.method, sparsity=args.sparsity, calibration=calib, progress=False)
        model.save_pretrained(args.dest)
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": args.child, "base_mb": base, "peak_mb": _rss_mb(), "seconds": seconds}))


def _bound(src: Path, n_samples: int, seq_len: int) -> dict[str, float]:
    from safetensors import safe_open

    from prunekit.llm.streaming import checkpoint_tensors

    files = checkpoint_tensors(src)
    sizes: dict[str, int] = {}
    hidden = 0
    for name, file in files.items():
        with safe_open(str(file), framework="pt") as f:
            shape = f.get_slice(name).get_shape()
        n = 1
        for d in shape:
            n *= d
        sizes[name] = 4 * n  # computed in float32
        if name.endswith("embed_tokens.weight"):
            hidden = int(shape[1])
    layer_keys = [k for k in sizes if ".layers." in k]
    per_layer: dict[str, int] = {}
    for k in layer_keys:
        idx = k.split(".layers.", 1)[1].split(".", 1)[0]
        per_layer[idx] = per_layer.get(idx, 0) + sizes[k]
    outside = sum(v for k, v in sizes.items() if k not in layer_keys)
    activations = 2 * n_samples * seq_len * hidden * 4
    mb = 1024 * 1024
    return {
        "outside_layers_mb": outside / mb,
        "one_layer_mb": max(per_layer.values()) / mb,
        "layers": len(per_layer),
        "whole_model_mb": sum(sizes.values()) / mb,
        "activations_mb": activations / mb,
        "bound_mb": (outside + 2 * max(per_layer.values()) + activations) / mb,
    }


def _same(a: Path, b: Path) -> dict[str, Any]:
    import torch
    from safetensors import safe_open

    from prunekit.llm.streaming import checkpoint_tensors

    fa, fb = checkpoint_tensors(a), checkpoint_tensors(b)
    differ = []
    for name in sorted(set(fa) & set(fb)):
        with safe_open(str(fa[name]), framework="pt") as x, safe_open(str(fb[name]), framework="pt") as y:
            if not torch.equal(x.get_tensor(name), y.get_tensor(name)):
                differ.append(name)
    return {
        "tensors": len(set(fa) | set(fb)),
        "only_in_stream": sorted(set(fa) - set(fb)),
        "only_in_memory": sorted(set(fb) - set(fa)),
        "different": differ,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="smollm2-135m")
    ap.add_argument("--method", default="wanda")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--text", default="emma")
    ap.add_argument("--n-samples", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--child", choices=["stream", "memory", "one-layer"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--dest", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args)
        return 0
    from prunekit.llm import cached_model_dir, load_causal_lm

    rows = []
    for name in args.models.split(","):
        load_causal_lm(name)  # makes sure the offline checkpoint folder exists
        src = cached_model_dir(name)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {}
            for mode in ("stream", "memory", "one-layer"):
                cmd = [sys.executable, __file__, "--child", mode, "--model", name, "--dest", f"{tmp}/{mode}"]
                cmd += ["--method", args.method, "--sparsity", str(args.sparsity), "--text", args.text]
                cmd += ["--n-samples", str(args.n_samples), "--seq-len", str(args.seq_len)]
                cmd += ["--threads", str(args.threads)]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
                print(name, runs[mode], flush=True)
            same = _same(Path(tmp) / "stream", Path(tmp) / "memory")
        rows.append({"model": name, "runs": runs, "bound": _bound(src, args.n_samples, args.seq_len), "same": same})
    res = {
        "rows": rows,
        "method": args.method,
        "sparsity": args.sparsity,
        "calibration": f"{args.n_samples} x {args.seq_len} tokens of {args.text}",
        "threads": args.threads,
        "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
        "env": {"python": platform.python_version(), "machine": platform.machine()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "streaming.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def markdown(res: dict[str, Any]) -> str:
    lines = [
        "# Pruning from the checkpoint files, one decoder layer at a time",
        "",
        f"`prunekit.llm.prune_checkpoint` vs the same run in memory (`load_causal_lm` + `prune_causal_lm` + "
        f"`save_pretrained`): {res['method']} {res['sparsity']:g}, calibration {res['calibration']}, "
        f"{res['threads']} threads, each in a fresh process. Memory: peak resident set (`ru_maxrss`) minus the "
        "resident set after the imports and the tokenizer (the interpreter's own share, in the base column). "
        "Bound: tensors outside the decoder layers + two decoder layers + the calibration activations, all "
        "float32. Computed, the activations are the calibration set's hidden states (a layer's inputs and "
        "outputs) from the checkpoint's shapes; measured, they are what the same pruning call takes above the "
        "resident model when the model is cut to its first decoder layer (a fresh process, random weights, "
        "peak reset before the call): the hidden states and also the layer forward's working memory and the "
        "kernels the first forward loads.",
        "",
        f"Reproduce: `{res['command']}`",
        "",
        "| model | whole model (fp32) | bound, computed activations | bound, measured activations | "
        "streamed: peak - base | in memory: peak - base | base | prune time stream / memory | weights equal |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        s, m, b, same = r["runs"]["stream"], r["runs"]["memory"], r["bound"], r["same"]
        equal = not (same["different"] or same["only_in_stream"] or same["only_in_memory"])
        one = r["runs"].get("one-layer")
        measured = "-"
        if one:
            acts = one["peak_mb"] - one["base_mb"]
            measured = (
                f"{b['outside_layers_mb'] + 2 * b['one_layer_mb'] + acts:.0f} MB ({b['outside_layers_mb']:.0f} + "
                f"2 x {b['one_layer_mb']:.1f} + {acts:.0f} measured)"
            )
        lines.append(
            f"| {r['model']} | {b['whole_model_mb']:.0f} MB ({b['layers']} layers of {b['one_layer_mb']:.1f} MB) | "
            f"{b['bound_mb']:.0f} MB ({b['outside_layers_mb']:.0f} outside + 2 x {b['one_layer_mb']:.1f} + "
            f"{b['activations_mb']:.0f} activations) | {measured} | {s['peak_mb'] - s['base_mb']:.0f} MB | "
            f"{m['peak_mb'] - m['base_mb']:.0f} MB | {s['base_mb']:.0f} / {m['base_mb']:.0f} MB | "
            f"{s['seconds']:.1f} s / {m['seconds']:.1f} s | "
            f"{'yes, all ' + str(same['tensors']) + ' tensors' if equal else 'NO: ' + str(same)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
