"""Is the reported latency trustworthy on a busy machine?

A busy loop runs on another core (``--busy`` processes) while the demo's models are timed the way reports
time them (:func:`prunekit.eval.latency.compare_latency`: 1 thread, interleaved with the dense model). Each
configuration is measured ``--repeats`` times; the script writes, per configuration, the medians of the
repeats, how far they spread (max - min) against the interquartile range each measurement reported, and
every verdict, to ``docs/results/latency/under_load.{json,md}``.

    python benchmarks/latency_under_load.py --repeats 5 --busy 1
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import platform
import statistics
import time
from pathlib import Path

import torch

import prunekit as pk
from prunekit import datasets
from prunekit.eval.latency import compare_latency

OUT = Path(__file__).resolve().parents[1] / "docs" / "results" / "latency"


def _busy(stop: mp.Event) -> None:  # type: ignore[valid-type]
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _configs() -> list[tuple[str, torch.nn.Module, torch.nn.Module, torch.Tensor]]:
    cnn = pk.build_model("prunekit:mnist-cnn")
    x_cnn = datasets.mnist_normalize(datasets.load_mnist("test")[0][:1])
    rows = []
    for method, kwargs in (("magnitude", {"allocation": "global"}), ("l2-channel", {})):
        m = copy.deepcopy(cnn)
        pk.prune(m, method, sparsity=0.5, example_inputs=x_cnn, measure=False, **kwargs)
        pk.squash_masks_(m)
        rows.append((f"mnist-cnn {method} 0.5", cnn, m, x_cnn))
    r18 = pk.build_model("torchvision:resnet18")
    x = torch.randn(1, 3, 224, 224)
    half = copy.deepcopy(r18)
    pk.prune(half, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
    rows.append(("resnet18 l2-channel 0.5", r18, half, x))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--busy", type=int, default=1, help="busy-loop processes competing for the cores")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    configs = _configs()
    stop = mp.Event()
    workers = [mp.Process(target=_busy, args=(stop,), daemon=True) for _ in range(args.busy)]
    for w in workers:
        w.start()
    results = []
    try:
        time.sleep(0.5)
        for name, dense, pruned, x in configs:
            runs = [compare_latency(dense, pruned, x, threads=1) for _ in range(args.repeats)]
            medians = [r.candidate.median_ms for r in runs]
            iqrs = [r.candidate.q3_ms - r.candidate.q1_ms for r in runs]
            results.append(
                {
                    "model": name,
                    "pruned median ms, each run": medians,
                    "spread of the medians ms (max - min)": max(medians) - min(medians),
                    "reported IQR ms, median over runs": statistics.median(iqrs),
                    "ratio to dense, each run": [r.ratio for r in runs],
                    "verdicts": [r.verdict for r in runs],
                    "warnings": sum(r.warning is not None for r in runs),
                }
            )
    finally:
        stop.set()
        for w in workers:
            w.join()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "busy_processes": args.busy,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cores": mp.cpu_count(),
        "threads": 1,
    }
    (args.out / "under_load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        "# Latency under load",
        "",
        f"Settings: {meta}",
        "",
        "| model | pruned median ms per run | spread of medians | reported IQR | ratio per run | verdicts |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {', '.join(f'{m:.3f}' for m in r['pruned median ms, each run'])} | "
            f"{r['spread of the medians ms (max - min)']:.3f} | {r['reported IQR ms, median over runs']:.3f} | "
            f"{', '.join(f'{v:.2f}' for v in r['ratio to dense, each run'])} | "
            f"{', '.join(sorted(set(r['verdicts'])))} |"
        )
    (args.out / "under_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
