"""Running one grid point: data, model, (pre-)training, pruning, fine-tuning, evaluation, measurement.

:func:`run_point` is a pure function of its :class:`GridPoint` (seeded, single-threaded by default), so the
deterministic metrics (accuracy, parameters, FLOPs, sparsity, a hash of the final weights) are the same in
any process, on any backend. Latency, wall time and memory are measured, not deterministic.

Data specs: ``digits`` (scikit-learn, 1,347 train / 450 test, a fixed split), ``mnist:N[:M]`` and
``fashion-mnist:N[:M]`` (the first N training and M test images, M default 2,000). Model specs:
``bench:mlp`` (in-256-128-classes), ``bench:mlp-wide`` (in-1024-1024-classes), ``bench:cnn`` (three
conv-BN-ReLU layers and a linear head), or any ``prunekit:`` / ``torchvision:`` spec.

Static and run-time methods on one scale. ``sparsity`` in the metrics is always the share of masked (zero)
weights in the prunable layers; a run-time method (``fbs``, ``cgnet``: per-input channel gating, trained
during the whole budget like SET or RigL) masks none, so its saving is in MACs per input instead. Every run
records, over the evaluation (test) set, with :func:`prunekit.dynamic.gating.count_macs`:

- ``dense_kernel_macs_per_input``: the mean MACs per input of the Conv2d / Linear layers that a dense kernel
  executes: every product of the layers' shapes, except for channels removed structurally (a smaller layer)
  and channels a run-time gate switched off for that input (the output channels it does not compute and the
  matching input channels of the layers they feed). Zero weights do not save; activations that happen to be
  zero (ReLU zeros, blank pixels) never save. A dense or masked network is exactly its dense MACs here.
- ``macs_per_input``: the same without the products by a zero weight (masked weights): what a kernel that
  skips zero weights could reach at best. Static and run-time rows compare on this count.
- ``dense_macs_per_input``: the MACs of the unpruned, ungated network.
- ``skipped_share`` (run-time methods; None otherwise): the measured share of the gated layers' outputs
  skipped per input (:meth:`prunekit.dynamic.gating.GatedNetwork.skipped_share`).

For a run-time method the grid's target ``sparsity`` is the method's own quantity, passed unchanged: for
``fbs`` the share of each gated layer's output channels suppressed per input (``ceil((1 - sparsity) C_out)``
computed), for ``cgnet`` the share of gated output elements that skip their remaining input channels (the
target of its threshold controller; ``skipped_share`` says what was reached). Neither is the share of MACs
saved: that is ``1 - macs_per_input / dense_macs_per_input``. A method that cannot act on a point's model
(:meth:`prunekit.methods.base.Method.model_problem`, e.g. ``fbs`` on an MLP) is skipped with that reason
(:func:`point_problem`).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.api import prune
from prunekit.apply.masks import squash_masks_
from prunekit.bench.spec import DENSE, GridPoint, MethodSpec, parse_schedule
from prunekit.dynamic.gating import count_macs, gated_network
from prunekit.errors import ConfigError, UnknownNameError
from prunekit.eval.accuracy import accuracy
from prunekit.eval.report import measure
from prunekit.methods.base import METHODS, Method
from prunekit.models.nets import MLP, SmallCNN

# ---- data -----------------------------------------------------------------------------------------

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


@functools.lru_cache(maxsize=8)
def load_data(spec: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_train, y_train, x_test, y_test)`` for a data spec (see the module docstring)."""
    from prunekit import datasets

    name, _, rest = spec.partition(":")
    if name == "digits":
        x, y = datasets.load_digits()
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x = (x - 0.5) / 0.5
        tr, te = perm[:1347], perm[1347:]
        return x[tr], y[tr], x[te], y[te]
    if name in ("mnist", "fashion-mnist"):
        parts = [p for p in rest.split(":") if p]
        try:
            n_train = int(parts[0]) if parts else 5000
            n_test = int(parts[1]) if len(parts) > 1 else 2000
        except ValueError:
            raise ConfigError(f"data spec {spec!r}: use {name}:N or {name}:N:M with integers") from None
        norm: Callable[[torch.Tensor], torch.Tensor]
        if name == "mnist":
            xtr, ytr = datasets.load_mnist("train")
            xte, yte = datasets.load_mnist("test")
            norm = datasets.mnist_normalize
        else:
            xtr, ytr = datasets.load_fashion_mnist("train")
            xte, yte = datasets.load_fashion_mnist("test")

            def fashion_norm(t: torch.Tensor) -> torch.Tensor:
                return (t - FASHION_MEAN) / FASHION_STD

            norm = fashion_norm

        return norm(xtr[:n_train]), ytr[:n_train].clone(), norm(xte[:n_test]), yte[:n_test].clone()
    raise UnknownNameError("benchmark data", spec, ["digits", "mnist:N[:M]", "fashion-mnist:N[:M]"])


def data_hash(spec: str) -> str:
    """SHA-256 (hex) over the four tensors :func:`load_data` gives for ``spec``: recorded with every result
    so that a run can be matched to the exact data it saw."""
    from prunekit.datasets import sha256_of_tensor

    h = hashlib.sha256()
    for t in load_data(spec):
        h.update(sha256_of_tensor(t).encode())
    return h.hexdigest()


# ---- models ---------------------------------------------------------------------------------------


BENCH_MODELS = ("bench:mlp", "bench:mlp-wide", "bench:cnn")


def build(spec: str, sample: torch.Tensor, classes: int, seed: int) -> nn.Module:
    """A freshly initialised model (seeded with ``seed``) for a model spec: ``bench:mlp``, ``bench:mlp-wide``,
    ``bench:cnn`` (sized from ``sample``, a batch ``[B, ...]`` of inputs, and ``classes`` outputs), or any
    ``prunekit:NAME`` / ``torchvision:NAME`` of :func:`prunekit.models.build_model`. Raises
    :class:`~prunekit.errors.UnknownNameError` for other specs."""
    torch.manual_seed(seed)
    if spec == "bench:mlp":
        return MLP(sample[0].numel(), (256, 128), classes)
    if spec == "bench:mlp-wide":
        return MLP(sample[0].numel(), (1024, 1024), classes)
    if spec == "bench:cnn":
        return SmallCNN(sample.shape[1], classes)
    if spec.startswith(("prunekit:", "torchvision:")):
        from prunekit.models import build_model

        return build_model(spec, pretrained=False)
    raise UnknownNameError("benchmark model", spec, [*BENCH_MODELS, "prunekit:NAME", "torchvision:NAME"])


def _classes(src: tuple[torch.Tensor, ...], target: tuple[torch.Tensor, ...]) -> int:
    return int(max(src[1].max(), target[1].max())) + 1


# ---- methods --------------------------------------------------------------------------------------


def point_problem(p: GridPoint) -> str | None:
    """Why grid point ``p`` cannot run on its model, or None: its method's
    :meth:`~prunekit.methods.base.Method.model_problem` on the model :func:`run_point` would build. Only
    methods that check models (they override ``model_problem``) cost a model build; one per model and data."""
    name = p.method.method
    if name == DENSE or name not in METHODS:
        return None
    if type(METHODS.get(name)).model_problem is Method.model_problem:
        return None
    problem = _model_problem(name, p.model, p.data, p.transfer)
    return f"method {name!r} cannot run on {p.model}: {problem}" if problem else None


@functools.lru_cache(maxsize=64)
def _model_problem(method: str, model: str, data: str, transfer: str | None) -> str | None:
    src = load_data(data)
    target = load_data(transfer) if transfer else src
    with torch.random.fork_rng(devices=[]):  # build() seeds torch: leave the caller's generator as it was
        net = build(model, src[0][:1], _classes(src, target), 0)
    return METHODS.get(method).model_problem(net)


def _when(m: MethodSpec) -> str:
    method = METHODS.get(m.method)
    if method.when == "during-training":
        return "during"
    if m.stage == "init" or (m.stage == "auto" and method.when == "at-init"):
        return "init"
    return "trained"


# ---- one run --------------------------------------------------------------------------------------


def _train(model: nn.Module, p: GridPoint, data: tuple[torch.Tensor, ...], epochs: int, **kw: Any) -> None:
    from prunekit.train import TrainConfig, Trainer

    if epochs <= 0:
        return
    cfg = TrainConfig(epochs=epochs, batch_size=p.batch_size, lr=p.lr, seed=p.seed, progress=False)
    Trainer(model, (data[0], data[1]), None, cfg, **kw).fit()


def _pretrained(p: GridPoint, data: tuple[torch.Tensor, ...], classes: int, cache_dir: str | None) -> nn.Module:
    """The dense model after ``pretrain_epochs`` (cached on disk by its own key: many points share it)."""
    model = build(p.model, data[0][:1], classes, p.seed)
    ident = f"{p.model}|{p.data}|{p.pretrain_epochs}|{p.seed}|{p.batch_size}|{p.lr}|{p.threads}"
    path = Path(cache_dir) / f"pretrained-{hashlib.sha256(ident.encode()).hexdigest()[:20]}.pt" if cache_dir else None
    if path is not None and path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model
        except Exception:  # noqa: BLE001  (a torn cache file: train again)
            path.unlink(missing_ok=True)
    _train(model, p, data, p.pretrain_epochs)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        torch.save(model.state_dict(), tmp)
        os.replace(tmp, path)
    return model


def _calibration(p: GridPoint, data: tuple[torch.Tensor, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(p.seed + 4242)
    idx = torch.randperm(len(data[0]), generator=g)[: p.calibration_size]
    return [(data[0][idx[i : i + 64]], data[1][idx[i : i + 64]]) for i in range(0, len(idx), 64)]


def _prune(model: nn.Module, p: GridPoint, sparsity: float, data: tuple[torch.Tensor, ...]) -> Any:
    m = METHODS.get(p.method.method)
    return prune(
        model,
        m,
        sparsity=sparsity,
        pattern=p.method.pattern,
        allocation=p.method.allocation,
        example_inputs=data[0][:2],
        calibration=_calibration(p, data) if m.needs_data else None,
        seed=p.seed,
        measure=False,
        **dict(p.method.options),
    )


def _weights(model: nn.Module) -> dict[str, tuple[tuple[int, ...], int, int]]:
    """Per prunable layer: (shape, weights, non-zeros), masks applied."""
    from prunekit.layout import is_prunable

    out = {}
    for name, module in model.named_modules():
        if is_prunable(module) and getattr(module, "weight", None) is not None:
            w = module.weight.detach()
            out[name] = (tuple(w.shape), w.numel(), int(torch.count_nonzero(w)))
    return out


def _state_hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def _latency(model: nn.Module, x: torch.Tensor) -> float:
    from prunekit.eval.report import time_forward

    model.eval()
    return time_forward(model, x, warmup=5, repeats=40, budget_s=1.0)


def _macs(model: nn.Module, dense: nn.Module, x: torch.Tensor, chunk: int = 256) -> dict[str, Any]:
    """The MACs metrics of the module docstring over the evaluation inputs ``x`` (in chunks)."""
    net = gated_network(model)
    counted, kernel, skipped = [], [], 0.0
    for i in range(0, len(x), chunk):
        xb = x[i : i + chunk]
        counted.append(count_macs(model, xb, skip_zero_weights=True).per_input)
        if net is not None:
            share = net.skipped_share()  # the gates of the pass just run
            assert share is not None, "count_macs ran a forward pass"
            skipped += share * len(xb)
        kernel.append(count_macs(model, xb).per_input)
    return {
        "macs_per_input": float(torch.cat(counted).mean()),
        "dense_kernel_macs_per_input": float(torch.cat(kernel).mean()),
        "dense_macs_per_input": count_macs(dense, x[:1]).dense,
        "skipped_share": skipped / len(x) if net is not None else None,
        "run_time": net is not None,
    }


def versions() -> dict[str, str]:
    """The versions of Python, torch, numpy, prunekit and (when installed) scikit-learn, by package name:
    the software part of a result's protocol."""
    import numpy

    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "prunekit": importlib.metadata.version("prunekit"),
    }
    try:
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    except ImportError:
        pass
    return out


def run_point(p: GridPoint, cache_dir: str | None = None) -> dict[str, Any]:
    """Execute one grid point; returns ``{"metrics", "protocol", "layers"}``.

    ``metrics["sparsity"]`` is the share of zero weights in the prunable layers; the MACs per input over the
    test set (``macs_per_input``, ``dense_kernel_macs_per_input``, ``dense_macs_per_input``) and, for a
    run-time gating method, ``skipped_share`` are defined in the module docstring, with what the grid's
    target sparsity means for ``fbs`` and ``cgnet``."""
    from prunekit.eval.report import count_flops

    t0 = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(p.threads)
    try:
        src = load_data(p.data)
        target = load_data(p.transfer) if p.transfer else src
        classes = _classes(src, target)
        method = p.method
        when = "dense" if method.method == DENSE else _when(method)
        notes: list[str] = []
        if when in ("dense", "trained"):
            model = _pretrained(p, src, classes, cache_dir)
        else:
            model = build(p.model, src[0][:1], classes, p.seed)
        dense = copy.deepcopy(model)
        dense_acc = accuracy(model, target[2], target[3]) if when in ("dense", "trained") else None
        original = _weights(model)
        if when == "dense":
            _train(model, p, target, p.fine_tune_epochs)
        elif when == "trained":
            steps = parse_schedule(method.schedule)
            structural = METHODS.get(method.method).structural
            per_step, extra = divmod(p.fine_tune_epochs, steps)
            for i in range(1, steps + 1):
                if structural:  # each step removes a fraction of what is left
                    s = 1.0 - (1.0 - p.sparsity) ** (1.0 / steps)
                else:  # masks only shrink: aim at the cumulative target
                    s = 1.0 - (1.0 - p.sparsity) ** (i / steps)
                _prune(model, p, s, target)
                _train(model, p, target, per_step + (extra if i == steps else 0))
        elif when == "init":
            _prune(model, p, p.sparsity, src)
            _train(model, p, src, p.pretrain_epochs)
            _train(model, p, target, p.fine_tune_epochs) if p.transfer else _train(model, p, src, p.fine_tune_epochs)
        else:  # during training: the method runs inside the trainer over the whole budget
            opts = dict(method.options)
            if p.transfer:
                _train(model, p, src, p.pretrain_epochs)
                _train(
                    model, p, target, p.fine_tune_epochs, method=method.method, sparsity=p.sparsity, method_options=opts
                )
            else:
                _train(
                    model,
                    p,
                    src,
                    p.pretrain_epochs + p.fine_tune_epochs,
                    method=method.method,
                    sparsity=p.sparsity,
                    method_options=opts,
                )
        acc = accuracy(model, target[2], target[3])
        squash_masks_(model)
        after = _weights(model)
        layers: list[dict[str, Any]] = []
        for name, (shape, n, _nz) in original.items():
            now = after.get(name)
            nz = now[2] if now else 0
            layers.append(
                {
                    "name": name,
                    "shape": list(now[0]) if now else [],
                    "original_shape": list(shape),
                    "params": n,
                    "nonzero": nz,
                    "sparsity": 1.0 - nz / n if n else 0.0,
                }
            )
        total = sum(r["params"] for r in layers)
        nonzero = sum(r["nonzero"] for r in layers)
        params = sum(v.numel() for v in model.parameters())
        dense_params = sum(v.numel() for v in dense.parameters())
        nonzero_params = sum(int(torch.count_nonzero(v)) for v in model.parameters())
        x1, x8 = target[2][:1], target[2][:8]
        model.eval()
        dense.eval()
        flops, _ = count_flops(model, x1)
        dense_flops, _ = count_flops(dense, x1)
        stats = measure(model, x1, latency=False, sizes=False)
        macs = _macs(model, dense, target[2])
        if macs["run_time"]:
            notes.append(
                "run-time gates are simulated (every channel computed, then masked): latency does not show "
                "their saving; MACs per input count it"
            )
        lat = {}
        for tag, x in (("b1", x1), ("b8", x8)):
            lat[f"latency_{tag}_ms"] = _latency(model, x)
            lat[f"dense_latency_{tag}_ms"] = _latency(dense, x)
            lat[f"speedup_{tag}"] = lat[f"dense_latency_{tag}_ms"] / lat[f"latency_{tag}_ms"]
        metrics = {
            "accuracy": acc,
            "dense_accuracy": dense_acc,
            "params": params,
            "dense_params": dense_params,
            "nonzero_params": nonzero_params,
            "sparsity": 1.0 - nonzero / total if total else 0.0,
            "flops": flops,
            "dense_flops": dense_flops,
            "effective_flops": stats.effective_flops,
            **macs,
            "weights_sha256": _state_hash(model),
            **lat,
            "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "stage": when,
            "structural": bool(method.method != DENSE and METHODS.get(method.method).structural),
        }
        protocol = {
            "data_sha256": {p.data: data_hash(p.data), **({p.transfer: data_hash(p.transfer)} if p.transfer else {})},
            "seed": p.seed,
            "threads": p.threads,
            "versions": versions(),
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
            },
            "latency": "median of up to 40 timed forward passes after 5 warm-up passes, masks folded in",
            "notes": notes,
            "argv0": Path(sys.argv[0]).name if sys.argv else "",
        }
        return {"metrics": metrics, "protocol": protocol, "layers": layers}
    finally:
        torch.set_num_threads(threads)


DETERMINISTIC_METRICS = (
    "accuracy",
    "dense_accuracy",
    "params",
    "nonzero_params",
    "sparsity",
    "flops",
    "effective_flops",
    "weights_sha256",
    "macs_per_input",
    "dense_kernel_macs_per_input",
    "dense_macs_per_input",
    "skipped_share",
)
