"""Benchmark: 2:4 semi-structured sparse kernels on a CUDA GPU (``prunekit.deploy.semi_structured_``).

Llama-7B-shaped MLP blocks (gate and up 4096 -> 11008, SiLU-gated, down 11008 -> 4096) and single Linear
layers are pruned to 2:4 by magnitude (``pk.prune(..., pattern="2:4")``), then timed at several token counts
with dense kernels and with the semi-structured kernels (the same pruned weights in both, so only the kernel
differs), interleaved in shuffled order per round, CUDA events, medians over rounds. The outputs of the two
are compared (largest absolute difference, fp16). Writes ``gpu_2of4.md`` and ``gpu_2of4.json`` to ``--out``.

Needs a CUDA GPU; on a machine without one it exits with the message of ``semi_structured_``'s refusal.

    python benchmarks/deploy_gpu.py --out docs/results/deploy
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import densify_, semi_structured_

BACKENDS = ("cusparselt", "cutlass")


class GatedMLP(nn.Module):
    """A Llama-style MLP: ``down(silu(gate(x)) * up(x))``, ``(..., d) -> (..., d)``."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d, hidden, bias=False)
        self.up = nn.Linear(d, hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def _pruned(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    pk.prune(model, "magnitude", sparsity=0.5, pattern="2:4", prune_classifier=True, measure=False)
    pk.squash_masks_(model)
    return model.to(device="cuda", dtype=dtype).eval()


def _time(models: dict[str, nn.Module], x: torch.Tensor, rounds: int, iters: int, seed: int) -> dict[str, list[float]]:
    rng = random.Random(seed)
    out: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():  # warm-up
            for _ in range(3):
                m(x)
        torch.cuda.synchronize()
        for _ in range(rounds):
            order = list(models)
            rng.shuffle(order)
            for name in order:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(iters):
                    models[name](x)
                end.record()
                torch.cuda.synchronize()
                out[name].append(start.elapsed_time(end) / iters)
    return out


class Graphed(nn.Module):
    """``model`` captured in a CUDA graph for one static input ``x``: replaying it skips the host-side work
    of every call (the kernel launches, and cuSPARSELt's per-call plan set-up in PyTorch releases without a
    plan cache)."""

    def __init__(self, model: nn.Module, x: torch.Tensor):
        super().__init__()
        self.x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                model(self.x)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.y = model(self.x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.graph.replay()
        return self.y


def run(args: argparse.Namespace) -> dict[str, Any]:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    cases: list[tuple[str, Any]] = [
        (f"MLP {args.d}->{args.hidden}->{args.d} (gate, up, down)", lambda: GatedMLP(args.d, args.hidden)),
        (f"Linear {args.d}->{args.hidden}", lambda: nn.Sequential(nn.Linear(args.d, args.hidden, bias=False))),
        (f"Linear {args.hidden}->{args.d}", lambda: nn.Sequential(nn.Linear(args.hidden, args.d, bias=False))),
    ]
    rows = []
    for label, make in cases:
        torch.manual_seed(args.seed)
        dense = _pruned(make(), dtype)  # dense kernels on the 2:4-pruned weights
        backends = [b for b in BACKENDS if b != "cutlass" or torch.cuda.get_device_capability()[0] == 8]
        sparse = {b: copy.deepcopy(dense) for b in backends}
        swapped = {b: semi_structured_(m, backend=b) for b, m in sparse.items()}
        d_in = next(m for m in dense.modules() if isinstance(m, nn.Linear)).in_features
        for tokens in [int(t) for t in args.tokens.split(",")]:
            x = torch.randn(tokens, d_in, device="cuda", dtype=dtype)
            variants = {"dense": dense, **sparse}
            graphs: dict[str, nn.Module] = {}
            for name, m in variants.items():
                try:
                    graphs[f"{name} (CUDA graph)"] = Graphed(m, x)
                except RuntimeError as e:
                    print(f"{label} {tokens} {name}: CUDA graph capture failed: {e}", flush=True)
            times = _time({**variants, **graphs}, x, args.rounds, args.iters, args.seed)
            pairs = [(b, m, "dense") for b, m in sparse.items()]
            if "dense (CUDA graph)" in graphs:
                pairs += [(b, g, "dense (CUDA graph)") for b, g in graphs.items() if not b.startswith("dense")]
            for b, m, ref in pairs:
                with torch.inference_mode():
                    diff = float((dense(x) - m(x)).abs().max())
                    scale = float(dense(x).abs().max())
                ratios = sorted(d / s for d, s in zip(times[ref], times[b]))
                rows.append(
                    {
                        "case": label,
                        "backend": b,
                        "layers_swapped": swapped[b.removesuffix(" (CUDA graph)")],
                        "tokens": tokens,
                        "dense_ms": statistics.median(times[ref]),
                        "sparse_ms": statistics.median(times[b]),
                        "speedup": {
                            "median": statistics.median(ratios),
                            "q1": ratios[len(ratios) // 4],
                            "q3": ratios[(3 * len(ratios)) // 4],
                        },
                        "max_abs_diff": diff,
                        "max_abs_output": scale,
                    }
                )
                print(rows[-1], flush=True)
        for b, m in sparse.items():
            assert densify_(m) == len(swapped[b]) > 0
    return {
        "dtype": args.dtype,
        "rows": rows,
        "rounds": args.rounds,
        "iters": args.iters,
        "gpu": torch.cuda.get_device_name(),
        "env": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cusparselt": getattr(torch.backends, "cusparselt", None) is not None
            and bool(torch.backends.cusparselt.is_available()),
        },
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# 2:4 semi-structured kernels on {res['gpu']} ({res['dtype']})",
        "",
        "`prunekit.deploy.semi_structured_` on 2:4-pruned layers (magnitude) vs the same pruned weights on dense "
        f"kernels; CUDA events, {res['iters']} calls per timing, {res['rounds']} interleaved rounds, median "
        f"[quartiles] of the per-round ratios. torch {res['env']['torch']}, CUDA {res['env']['cuda']}, "
        f"cuSPARSELt available: {res['env']['cusparselt']}.",
        "",
        "| case | tokens | backend | dense ms | 2:4 ms | speed-up | max abs diff (max abs output) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        s = r["speedup"]
        lines.append(
            f"| {r['case']} | {r['tokens']} | {r['backend']} | {r['dense_ms']:.4f} | {r['sparse_ms']:.4f} | "
            f"{s['median']:.2f}x "
            f"[{s['q1']:.2f}, {s['q3']:.2f}] | {r['max_abs_diff']:.3g} ({r['max_abs_output']:.3g}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/deploy"))
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--d", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=11008)
    ap.add_argument("--tokens", default="1,16,128,1024,4096")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU: the 2:4 semi-structured kernels run only on one", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    res = run(args)
    res["command"] = "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    res["wall_s"] = time.perf_counter() - t0
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_2of4.json").write_text(json.dumps(res, indent=2) + "\n")
    (args.out / "gpu_2of4.md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
