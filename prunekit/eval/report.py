"""Reports: what pruning did to a model, measured.

:func:`measure` takes a model's vital signs (parameters, non-zeros, FLOPs, latency, size on disk);
:class:`Report` puts a before and an after side by side with per-layer sparsity, prints as a table and
serialises to a dict / JSON.
"""

from __future__ import annotations

import io
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from torch import nn
from torch.nn.utils import parametrize

from prunekit.apply.masks import effective_state_dict
from prunekit.calls import call_model, restore_modes, training_modes
from prunekit.errors import PrunekitError, inputs_failure
from prunekit.eval.latency import LatencyComparison, Timing, time_model
from prunekit.layout import is_parametrization_key, is_prunable
from prunekit.serialization import SAVED_METADATA, atomic_write, dense_size, sparse_size
from prunekit.targets import state_prefixes

__all__ = [
    "LayerStats",
    "ModelStats",
    "Report",
    "count_flops",
    "count_params",
    "layer_stats",
    "measure",
    "no_fused_attention",
    "time_forward",
    "weight_shapes",
]


@dataclass
class ModelStats:
    """Measurements of one model. ``None`` where a figure was not measured (e.g. no example inputs)."""

    params: int
    nonzero_params: int
    flops: int | None = None
    effective_flops: int | None = None
    latency_ms: float | None = None  # median of forward passes at batch = example inputs
    dense_bytes: int | None = None
    sparse_bytes: int | None = None
    latency_q1_ms: float | None = None  # quartiles of the timed passes: the spread of latency_ms
    latency_q3_ms: float | None = None
    latency_threads: int | None = None

    def set_timing(self, timing: Timing) -> None:
        """Record a :class:`~prunekit.eval.latency.Timing` (median, quartiles, threads)."""
        self.latency_ms, self.latency_q1_ms, self.latency_q3_ms = timing.median_ms, timing.q1_ms, timing.q3_ms
        self.latency_threads = timing.threads

    def latency_text(self) -> str:
        """``median (q1-q3)`` in milliseconds, or ``-`` when not measured."""
        if self.latency_ms is None:
            return "-"
        if self.latency_q1_ms is None or self.latency_q3_ms is None:
            return f"{self.latency_ms:.3f}"
        return f"{self.latency_ms:.3f} ({self.latency_q1_ms:.3f}-{self.latency_q3_ms:.3f})"

    @property
    def macs(self) -> int | None:
        """Multiply-accumulates of one forward pass: ``flops // 2`` (None when FLOPs were not counted)."""
        return None if self.flops is None else self.flops // 2


@dataclass
class LayerStats:
    """One prunable layer in a :class:`Report`: its weight ``shape`` and ``params`` (count), the ``nonzero``
    weights, the ``target`` sparsity the method gave it, why it was ``ignored`` (None: pruned) and, after
    structural pruning, its ``shape_before``."""

    name: str
    shape: tuple[int, ...]
    params: int
    nonzero: int
    target: float | None = None
    ignored: str | None = None
    shape_before: tuple[int, ...] | None = None  # set when the layer's weight changed shape (structural pruning)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros among the weights the layer still has."""
        return 1.0 - self.nonzero / self.params if self.params else 0.0

    @property
    def removed(self) -> float:
        """Fraction of the layer's original weights that were physically removed."""
        if not self.shape_before:
            return 0.0
        n0 = math.prod(self.shape_before)
        return 1.0 - self.params / n0 if n0 else 0.0


def _layer_fields(r: dict[str, Any]) -> dict[str, Any]:
    """The :class:`LayerStats` fields of one layer of :meth:`Report.to_dict` (shapes back to tuples, the
    derived ``sparsity`` and ``removed`` left out)."""
    return {
        k: (tuple(v) if k in ("shape", "shape_before") and v is not None else v)
        for k, v in r.items()
        if k not in ("sparsity", "removed")
    }


def count_params(model: nn.Module, modules: Iterable[nn.Module] | None = None) -> tuple[int, int]:
    """``(parameters, non-zero parameters)`` of ``model`` as it computes: masks folded in, buffers left out,
    every entry of :func:`~prunekit.apply.masks.effective_state_dict` counted. One tensor at a time, so counting
    a large masked model costs no copy of it. ``modules``: count only the tensors of these submodules (None:
    all)."""
    if modules is None:
        counts = count_params_within(model, [model])
    else:  # only the tensors within are read (a model mapped from its checkpoint file reads nothing else)
        counts = count_params_within(model, modules, outside=False)
    return counts[2], counts[3]


def count_nonzero(t: torch.Tensor) -> int:
    """Non-zero entries of ``t`` (NaN counts as non-zero); on CPU a comparison and an int32 sum in blocks of
    2^20 entries, several times as fast as ``torch.count_nonzero``, with temporaries of a few MiB whatever the
    size of ``t`` (an embedding matrix counted whole would need its size again in int32 flags)."""
    if t.device.type != "cpu":
        return int(torch.count_nonzero(t))
    flat = t.reshape(-1)
    return sum(int((part != 0).sum(dtype=torch.int32)) for part in flat.split(1 << 20))


def count_params_within(
    model: nn.Module, modules: Iterable[nn.Module], *, outside: bool = True
) -> tuple[int, int, int, int]:
    """:func:`count_params` of the whole ``model`` and of the tensors of ``modules`` in one pass:
    ``(parameters, non-zero parameters, parameters within, non-zero within)``. ``outside=False`` counts the
    tensors within only (the whole-model figures are then those of the tensors within too)."""
    buffers = {k for k, _ in model.named_buffers(remove_duplicate=False)}  # a buffer two modules hold: both names
    prefixes = state_prefixes(model, modules)
    total = nonzero = total_in = nonzero_in = 0
    seen: set[tuple[int, int, int]] = set()  # a tied tensor (embedding and LM head) is one set of parameters

    def add(key: str, value: torch.Tensor, stored: torch.Tensor | None = None) -> None:
        """Count ``value`` under ``key``; ``stored``: the tensor that identifies it (a masked tensor is
        computed anew and freed at once, so its address may be the previous one's: its original is used)."""
        nonlocal total, nonzero, total_in, nonzero_in
        if key in buffers or not (outside or key.startswith(prefixes)):
            return
        owner = value if stored is None else stored
        if owner.device.type != "meta":
            ident = (owner.untyped_storage().data_ptr(), int(owner.storage_offset()), owner.numel())
            if ident in seen:
                return
            seen.add(ident)
        n, nz = value.numel(), count_nonzero(value)
        total, nonzero = total + n, nonzero + nz
        if key.startswith(prefixes):
            total_in, nonzero_in = total_in + n, nonzero_in + nz

    with torch.no_grad():
        for key, value in model.state_dict().items():  # what effective_state_dict keeps as it is
            if not is_parametrization_key(key):
                add(key, value)
        for mname, module in model.named_modules():  # and what it computes: each masked tensor in turn
            if parametrize.is_parametrized(module):
                for pname in module.parametrizations.keys():
                    key = f"{mname}.{pname}" if mname else pname
                    if not (outside or key.startswith(prefixes)):
                        continue  # not computed either
                    plist = module.parametrizations[pname]  # one original, or several (weight_norm's)
                    original = getattr(plist, "original", None)
                    original = getattr(plist, "original0", None) if original is None else original
                    add(key, getattr(module, pname).detach(), original)
    return total, nonzero, total_in, nonzero_in


@contextmanager
def no_fused_attention() -> Iterator[None]:
    """Turn off nn.MultiheadAttention's fused inference kernel, which the FLOP counter cannot see (it would
    count no attention at all for a stock module, and all of it once heads were removed)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def count_flops(model: nn.Module, inputs: Any) -> tuple[int, dict[str, int]]:
    """Total FLOPs of one forward pass (torch.utils.flop_counter) and the FLOPs of each named module."""
    from torch.utils.flop_counter import FlopCounterMode  # imported here: it pulls in triton (~0.4 s)

    with torch.no_grad(), no_fused_attention(), parametrize.cached(), FlopCounterMode(display=False) as counter:
        call_model(model, inputs)
    per_module = {}
    for key, ops in counter.get_flop_counts().items():
        name = key.split(".", 1)[1] if "." in key else ""
        per_module[name] = int(sum(ops.values()))
    return int(counter.get_total_flops()), per_module


def _count_flops_or_none(model: nn.Module, inputs: Any) -> tuple[int, dict[str, int]] | None:
    """:func:`count_flops`, or None (with a warning) when torch's FLOP counter fails on a model that runs
    (its module tracking asserts on some models' autograd use). Raises
    :class:`~prunekit.errors.DataError` (:func:`~prunekit.errors.inputs_failure`) when the model itself does not run."""
    caught = (RuntimeError, TypeError, ValueError, IndexError, MemoryError, AssertionError)
    try:
        return count_flops(model, inputs)
    except PrunekitError:
        raise
    except caught as e:
        counter_error = e
    try:  # the model alone: if it runs, the counter was at fault, not the inputs
        with torch.no_grad(), parametrize.cached():
            call_model(model, inputs)
    except PrunekitError:
        raise
    except caught as e:
        raise inputs_failure(e, inputs) from e
    first = str(counter_error).splitlines()[0] if str(counter_error) else ""
    warnings.warn(
        f"FLOPs not counted: torch's FLOP counter failed on this model ({type(counter_error).__name__}: {first}), "
        "though the model runs on example_inputs; the report leaves FLOPs out",
        RuntimeWarning,
        stacklevel=3,
    )
    return None


def time_forward(model: nn.Module, inputs: Any, *, warmup: int = 3, repeats: int = 20, budget_s: float = 3.0) -> float:
    """Median wall time of a forward pass in milliseconds at the current thread count (see
    :func:`prunekit.eval.latency.time_model` for the spread, and :func:`prunekit.eval.latency.compare_latency` to
    compare two models)."""
    return time_model(
        model, inputs, threads=None, warmup=warmup, min_rounds=min(5, repeats), max_rounds=repeats, budget_s=budget_s
    ).median_ms


def measure(
    model: nn.Module,
    example_inputs: Any = None,
    *,
    latency: bool = True,
    sizes: bool = True,
    threads: int | None = 1,
) -> ModelStats:
    """Measure ``model`` in eval mode (its mode is restored). FLOPs and latency need ``example_inputs``.

    Latency is timed at ``threads`` threads (None: the current count), median and quartiles in ms
    (:func:`prunekit.eval.latency.time_model`). To compare two models, use
    :func:`prunekit.eval.latency.compare_latency`, which times them interleaved. Raises
    :class:`~prunekit.errors.DataError` when the model does not run on ``example_inputs``.
    """
    params, nonzero = count_params(model)
    stats = ModelStats(params=params, nonzero_params=nonzero)
    if example_inputs is not None:
        modes = training_modes(model)
        model.eval()
        try:
            counted = _count_flops_or_none(model, example_inputs)
            if counted is not None:
                total, per_module = counted
                stats.flops = total
                saved = 0.0
                for name, module in model.named_modules():
                    w = getattr(module, "weight", None)
                    if is_prunable(module) and name in per_module and w is not None and w.numel():
                        saved += per_module[name] * (1.0 - torch.count_nonzero(w).item() / w.numel())
                stats.effective_flops = int(round(total - saved))
            if latency:
                stats.set_timing(time_model(model, example_inputs, threads=threads))
        finally:
            restore_modes(modes)
    if sizes:
        state = effective_state_dict(model)
        stats.dense_bytes = dense_size(state, SAVED_METADATA)  # the files' exact sizes, without serialising
        stats.sparse_bytes = sparse_size(state)
    return stats


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """The weight shape of every prunable module, by name (taken before a structural method runs)."""
    return {
        name: tuple(m.weight.shape)
        for name, m in model.named_modules()
        if is_prunable(m) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def layer_stats(
    model: nn.Module,
    targets: Mapping[str, float | None],
    ignored: Mapping[str, str],
    shapes_before: dict[str, tuple[int, ...]] | None = None,
) -> list[LayerStats]:
    """Per-layer statistics of every prunable module, in model order. ``shapes_before``: weight shapes before
    a structural method ran; layers whose shape changed record it."""
    rows = []
    for name, module in model.named_modules():
        if not is_prunable(module) or getattr(module, "weight", None) is None:
            continue
        w = module.weight.detach()
        rows.append(
            LayerStats(
                name=name,
                shape=tuple(w.shape),
                params=w.numel(),
                nonzero=count_nonzero(w),
                target=targets.get(name),
                ignored=ignored.get(name),
                shape_before=(
                    shapes_before[name]
                    if shapes_before and name in shapes_before and shapes_before[name] != tuple(w.shape)
                    else None
                ),
            )
        )
    return rows


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{n} B"


@dataclass
class Report:
    """What a pruning call did: settings, before/after measurements, per-layer sparsity, notes."""

    method: str
    settings: dict[str, Any]
    before: ModelStats
    after: ModelStats
    layers: list[LayerStats]
    notes: list[str] = field(default_factory=list)
    latency: LatencyComparison | None = None  # the pruned model timed against the dense one, interleaved

    @property
    def pruned_layers(self) -> list[LayerStats]:
        """The layers the method pruned (those not ignored)."""
        return [layer for layer in self.layers if layer.ignored is None]

    @property
    def sparsity(self) -> float:
        """Overall sparsity of the pruned (non-ignored) layers' weights: zeros / weights, summed over layers."""
        rows = self.pruned_layers
        total = sum(r.params for r in rows)
        return 1.0 - sum(r.nonzero for r in rows) / total if total else 0.0

    @property
    def model_sparsity(self) -> float:
        """Sparsity over every parameter of the model (biases, norms and ignored layers included)."""
        return 1.0 - self.after.nonzero_params / self.after.params if self.after.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: settings, both measurements, per-layer rows (with sparsity and removed fraction),
        notes and the latency comparison."""
        return {
            "method": self.method,
            "settings": self.settings,
            "sparsity": self.sparsity,
            "model_sparsity": self.model_sparsity,
            "before": asdict(self.before),
            "after": asdict(self.after),
            "layers": [{**asdict(r), "sparsity": r.sparsity, "removed": r.removed} for r in self.layers],
            "notes": self.notes,
            "latency": None if self.latency is None else self.latency.to_dict(),
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """:meth:`to_dict` as indented JSON text, also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:  # whole or not at all: a temporary file renamed into place
            atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Report:
        """The inverse of :meth:`to_dict` (derived fields such as ``sparsity`` are recomputed)."""
        return cls(
            method=d["method"],
            settings=d.get("settings", {}),
            before=ModelStats(**d["before"]),
            after=ModelStats(**d["after"]),
            layers=[LayerStats(**_layer_fields(r)) for r in d.get("layers", [])],
            notes=list(d.get("notes", [])),
            latency=LatencyComparison.from_dict(d["latency"]) if d.get("latency") else None,
        )

    def summary_table(self) -> Table:
        """A rich table of before / after / ratio: parameters, non-zeros, FLOPs, latency, file sizes, and the
        sparsity reached (or the share of parameters removed by structural pruning)."""
        t = Table(title=f"prunekit: {self.method}  {self._settings_line()}")
        t.add_column("")
        t.add_column("before", justify="right")
        t.add_column("after", justify="right")
        t.add_column("ratio", justify="right")
        b, a = self.before, self.after

        def ratio(x: float | None, y: float | None) -> str:
            return f"{y / x:.3f}x" if x and y is not None else "-"

        t.add_row("parameters", _fmt_int(b.params), _fmt_int(a.params), ratio(b.params, a.params))
        t.add_row(
            "non-zero parameters",
            _fmt_int(b.nonzero_params),
            _fmt_int(a.nonzero_params),
            ratio(b.nonzero_params, a.nonzero_params),
        )
        t.add_row("FLOPs (dense execution)", _fmt_int(b.flops), _fmt_int(a.flops), ratio(b.flops, a.flops))
        t.add_row(
            "FLOPs (non-zero weights only)",
            _fmt_int(b.effective_flops),
            _fmt_int(a.effective_flops),
            ratio(b.effective_flops, a.effective_flops),
        )
        if self.latency is not None:
            lat = self.latency
            threads = f", {lat.baseline.threads} thread(s)"
            t.add_row(
                f"latency ms, median (IQR){threads}",
                b.latency_text(),
                a.latency_text(),
                f"{lat.ratio:.3f}x [{lat.ratio_low:.3f}-{lat.ratio_high:.3f}] {lat.verdict}",
            )
        else:
            t.add_row(
                "latency ms, median (IQR)",
                b.latency_text(),
                a.latency_text(),
                ratio(b.latency_ms, a.latency_ms) if b.latency_ms and a.latency_ms else "-",
            )
        t.add_row(
            "file, dense safetensors",
            _fmt_bytes(b.dense_bytes),
            _fmt_bytes(a.dense_bytes),
            ratio(b.dense_bytes, a.dense_bytes),
        )
        t.add_row(
            "file, sparse export",
            _fmt_bytes(b.sparse_bytes),
            _fmt_bytes(a.sparse_bytes),
            ratio(b.sparse_bytes, a.sparse_bytes),
        )
        if self.structural:
            t.add_row("parameters removed", "", f"{1 - a.params / b.params:.4f}" if b.params else "-", "")
        else:
            t.add_row("sparsity of pruned layers", "", f"{self.sparsity:.4f}", "")
        return t

    @property
    def structural(self) -> bool:
        """True when the method removed structure physically (shapes changed) rather than masking."""
        return "(physical)" in str(self.settings.get("pattern", ""))

    def layer_table(self) -> Table:
        """A rich table with a row per prunable layer: sparsity and target for masks, shapes before -> after
        and the share removed for structural pruning."""
        t = Table(title="per layer")
        if self.structural:  # shapes changed: what was removed, not zeros inside what is left
            for col in ("layer", "shape", "weights", "outputs removed", "weights removed", "note"):
                t.add_column(col, justify="left" if col in ("layer", "shape", "note") else "right")
            for r in self.layers:
                shape = "x".join(map(str, r.shape))
                if r.shape_before:
                    shape = "x".join(map(str, r.shape_before)) + " -> " + shape
                note = r.ignored or ""
                if note and r.shape_before:
                    note += "; its inputs follow the layers before it"
                t.add_row(
                    r.name,
                    shape,
                    str(r.params),
                    "-" if r.target is None else f"{r.target:.4f}",
                    f"{r.removed:.4f}",
                    note,
                )
            return t
        for col in ("layer", "shape", "weights", "non-zero", "target", "sparsity", "note"):
            t.add_column(col, justify="left" if col in ("layer", "note") else "right")
        for r in self.layers:
            t.add_row(
                r.name,
                "x".join(map(str, r.shape)),
                str(r.params),
                str(r.nonzero),
                "-" if r.target is None else f"{r.target:.4f}",
                f"{r.sparsity:.4f}",
                r.ignored or "",
            )
        return t

    def _settings_line(self) -> str:
        keys = ("pattern", "allocation", "sparsity")
        return "  ".join(f"{k}={self.settings[k]}" for k in keys if k in self.settings)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.summary_table()
        yield self.layer_table()
        for note in self.notes:
            yield f"note: {note}"
        if self.latency is not None and self.latency.warning:
            yield f"warning: {self.latency.warning}"

    def __str__(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=120, force_terminal=False, color_system=None).print(self)
        return buf.getvalue()
