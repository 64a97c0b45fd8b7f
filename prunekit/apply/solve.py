"""Layer-wise post-training pruning of any model: magnitude, Wanda and SparseGPT on its Linear and Conv layers.

``solve_layerwise(model, "sparsegpt", sparsity=0.5, pattern="2:4", calibration=loader)`` prunes every target
layer of a CNN, a vision transformer or any other ``nn.Module`` (language models the decoder-layer runner of
:mod:`prunekit.llm` knows go there instead, through the same method names). Each layer's problem is
``min ||W X - W' X||^2`` on the inputs ``X`` it sees (im2col patches for a convolution,
:mod:`prunekit.im2col`), solved by :mod:`prunekit.apply.solvers`:

* magnitude: ``|W_ij|``, lowest removed over the layer (no data needed);
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"):
  ``|W_ij| * ||X_j||_2``, lowest removed per output row;
* SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
  One-Shot"): optimal-brain-surgeon reconstruction (Hassibi & Stork 1993) with ``H = 2 X X^T / n``: the
  weights kept are updated to make up for the ones removed.

How the inputs are gathered. A trace runs the first calibration batch and records the order in which the
target layers run. Then, with ``sequential=True`` (the default), for each layer in that order: the
calibration batches run through the model with a forward pre-hook that feeds the layer's inputs to its
solver and stops the forward there (the rest of the model is not computed; a layer called more than once
per forward lets the forward finish), the solver prunes the layer in place, and the next layer is
calibrated on the inputs the already-pruned layers before it produce, as in SparseGPT's sequential mode.
Only one layer's statistics are live (for SparseGPT one ``[F, F]`` Hessian, ``F`` = in or
``K * in/groups``); the price is one partial forward pass per layer. ``sequential=False`` gathers every
layer's statistics in one pass over the dense model (all Hessians live at once), then solves each.

The ``out_proj`` of an ``nn.MultiheadAttention`` is not called by torch's attention (which reads its weight),
so while inputs are gathered such attentions run an equal explicit forward that calls it
(:func:`prunekit.calibration.collect.modules_called`).

Calibration: any form :class:`prunekit.calibration.Calibration` reads (a tensor batch, a list of tensors,
``(inputs, targets)`` pairs, dicts of model inputs, a ``DataLoader``); the batches are read once and kept.
Positions where a dict batch's ``attention_mask`` is 0 enter no statistic (:mod:`prunekit.padding`).

Masks: the pruned weights are zeroed in place and, with ``masks=True`` (default), a mask parametrization
keeps them at zero during fine-tuning, as every other :func:`prunekit.prune` method does
(:func:`prunekit.squash_masks_` folds it in). This function changes the model as it goes; through
:func:`prunekit.prune` a failure leaves the model as it was.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.allocation.builtin import OWL, Allocation, LayerInfo, Uniform, resolve_allocation
from prunekit.apply.masks import apply_mask_
from prunekit.apply.solvers import (
    SOLVERS,
    Solver,
    WandaSolver,
    check_pattern,
    check_sparsity,
    stored_mask,
    weight_matrix,
)
from prunekit.calibration import FORMS, Calibration, current_token_mask
from prunekit.calibration.collect import modules_called
from prunekit.calls import eval_mode, restore_modes, training_modes
from prunekit.errors import (
    ConfigError,
    DataError,
    InvalidSparsityError,
    ModelError,
    NothingToPruneError,
    PatternError,
    PrunekitError,
    UnknownNameError,
)
from prunekit.granularity.patterns import NM, Granularity, Unstructured, parse_pattern
from prunekit.im2col import is_matrix_layer, layer_rows
from prunekit.layout import base_class, layer_weight, weight_layout
from prunekit.progress import ProgressBar
from prunekit.targets import Target, select_targets

__all__ = ["LayerError", "LayerwiseResult", "dense_matrices", "reconstruction_errors", "solve_layerwise"]


@dataclass
class LayerwiseResult:
    """What :func:`solve_layerwise` did.

    ``layer_sparsity``: the sparsity each layer was pruned at (name -> fraction); ``order``: the layers in
    the order they were solved (the order the model runs them); ``rows``: how many input rows (tokens,
    batch x output positions) each layer's statistics saw; ``forward_passes``: model calls, the trace
    included; ``seconds`` and ``layer_seconds``: wall time in all and per layer (gathering + solving).
    """

    method: str
    pattern: str
    allocation: str
    layer_sparsity: dict[str, float]
    order: list[str]
    rows: dict[str, int] = field(default_factory=dict)
    layer_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    forward_passes: int = 0
    sequential: bool = True
    notes: list[str] = field(default_factory=list)


class _Reached(Exception):
    """Raised by a hook to stop the forward pass once the layer being calibrated has its inputs."""


# ------------------------------------------------------------------------------------------------ taps


@dataclass
class _Tap:
    """A target layer whose inputs a forward pre-hook reads."""

    name: str
    module: nn.Module

    def inputs(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor | None:
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
        return x if isinstance(x, Tensor) and x.is_floating_point() else None


def _taps(targets: Mapping[str, nn.Module]) -> dict[str, _Tap]:
    return {name: _Tap(name, module) for name, module in targets.items()}


def _real_rows(x: Tensor, tap: _Tap) -> Tensor:
    """``x`` without its padding positions (the published token mask of the batch being run)."""
    mask = current_token_mask()
    if mask is None:
        return x
    mask = mask.to(x.device)
    b, t = mask.shape
    if weight_layout(tap.module) is not None and weight_layout(tap.module).kind == "conv":  # type: ignore[union-attr]
        if x.dim() == 3 and x.shape[0] == b and x.shape[2] == t:
            raise DataError(
                f"{tap.name} convolves over a padded token sequence, so padding would enter its im2col patches; "
                "calibrate with unpadded batches (one sequence per batch, or sequences of equal length)"
            )
        return x  # an image branch: no token axis
    if x.dim() >= 3 and tuple(x.shape[:2]) == (b, t):
        return x[mask]
    if x.dim() >= 3 and tuple(x.shape[:2]) == (t, b):  # sequence-first
        return x.transpose(0, 1)[mask]
    if x.dim() == 2 and x.shape[0] == b * t:  # flattened batch x sequence
        return x[mask.reshape(-1)]
    if x.dim() == 2 and x.shape[0] == b:  # one vector per sequence (a pooled output): no padding in it
        return x
    raise DataError(
        f"the inputs of {tap.name} have shape {tuple(x.shape)}, so prunekit cannot tell which of them are "
        f"padding (attention_mask {tuple(mask.shape)}); calibrate with unpadded batches"
    )


# -------------------------------------------------------------------------------------------- running


def _to(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to(v, device) for v in obj)
    if isinstance(obj, list):
        return [_to(v, device) for v in obj]
    return obj


def _read_batches(calibration: Any, device: torch.device) -> list[Any]:
    calib = Calibration.of(calibration)
    if calib.is_loss_callable:
        raise DataError(
            "layer-wise solvers read the inputs of each layer, so they need input batches, not a loss callable; "
            f"pass {FORMS.rsplit(', or a callable', 1)[0]}"
        )
    return [_to(b, device) for b in calib.batches()]


class _Runner:
    """Runs calibration batches through the model with hooks, counting forward passes."""

    def __init__(self, model: nn.Module, batches: list[Any]):
        self.model = model
        self.batches = batches
        self.passes = 0

    def run(self, hooks: Mapping[nn.Module, Callable[..., None]]) -> None:
        handles = [host.register_forward_pre_hook(h, with_kwargs=True) for host, h in hooks.items()]
        try:
            # an nn.MultiheadAttention reads its out_proj's weight without calling it: while the hooks are on,
            # attentions whose out_proj is hooked run an equal forward that calls it
            with torch.no_grad(), modules_called(self.model, hooks.keys()):
                for i, batch in enumerate(self.batches):
                    self.passes += 1
                    try:
                        for _ in Calibration([batch]).forward(self.model):
                            pass
                    except _Reached:
                        pass
                    except PrunekitError:
                        raise
                    except Exception as e:  # the model's own forward failed on this batch
                        raise DataError(
                            f"the model does not run on calibration batch {i} ({type(e).__name__}: {e}); pass {FORMS}"
                        ) from e
        finally:
            for h in handles:
                h.remove()


def _trace(runner: _Runner, taps: Mapping[str, _Tap]) -> tuple[list[str], dict[str, int]]:
    """The targets in the order they first run on the first batch, and how often each runs per pass."""
    order: list[str] = []
    calls: dict[str, int] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: tuple[Any, ...], _kwargs: dict[str, Any]) -> None:
            if name not in calls:
                order.append(name)
            calls[name] = calls.get(name, 0) + 1

        return hook

    first = _Runner(runner.model, runner.batches[:1])
    first.run({tap.module: hook_for(name) for name, tap in taps.items()})
    runner.passes += first.passes
    missing = [n for n in taps if n not in calls]
    if missing:
        raise ModelError(
            f"{len(missing)} target layer(s) never ran on the calibration data: {', '.join(missing[:8])}"
            f"{' ...' if len(missing) > 8 else ''}; layer-wise solvers need each layer's inputs. Leave them out "
            "with ignore=[...]"
        )
    return order, calls


def _gather(runner: _Runner, taps: Mapping[str, _Tap], solvers: Mapping[str, Solver], stop: bool) -> None:
    """Feed every solver its layer's inputs over the calibration batches (stopping early when ``stop``)."""
    hooks: dict[nn.Module, Callable[..., None]] = {}
    for name, solver in solvers.items():
        tap = taps[name]

        def hook(
            _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], tap: _Tap = tap, solver: Solver = solver
        ) -> None:
            x = tap.inputs(args, kwargs)
            if x is not None:
                solver.add_batch(_real_rows(x, tap))
            if stop:
                raise _Reached

        hooks[tap.module] = hook
    runner.run(hooks)


# -------------------------------------------------------------------------------------------- solving


def _resolve_targets(model: nn.Module, targets: Any) -> dict[str, nn.Module]:
    if targets is None:
        return {t.name: t.module for t in select_targets(model).targets}
    by_id = {id(m): n for n, m in model.named_modules()}
    out: dict[str, nn.Module] = {}
    for t in [targets] if isinstance(targets, (str, nn.Module, Target)) else targets:
        if isinstance(t, Target):
            out[t.name] = t.module
        elif isinstance(t, nn.Module):
            if id(t) not in by_id:
                raise ConfigError(f"targets= holds a {type(t).__name__} that is not a module of the model")
            out[by_id[id(t)]] = t
        elif isinstance(t, str):
            try:
                out[t] = model.get_submodule(t)
            except AttributeError:
                raise ConfigError(f"targets= names no module of the model: {t!r}") from None
        else:
            raise ConfigError(f"targets= takes Target objects, modules or module names; got {t!r}")
    if not out:
        raise NothingToPruneError("targets= selects no layer")
    return out


def _check_targets(targets: Mapping[str, nn.Module], pattern: Granularity) -> None:
    """Refuse, before anything changes, layers the solvers cannot solve and layers the pattern does not fit."""
    unsupported = [f"{n} ({base_class(m).__name__})" for n, m in targets.items() if not is_matrix_layer(m)]
    if unsupported:
        raise ModelError(
            f"layer-wise solvers prune Linear, transformers Conv1D, Conv1d and Conv2d layers; {len(unsupported)} "
            f"target(s) are none of these: {', '.join(unsupported)}. Leave them out with ignore=[...]"
        )
    misfits = []
    for name, module in targets.items():
        layout = weight_layout(module)
        assert layout is not None
        with torch.no_grad():
            canonical = layout.to_canonical(layer_weight(module).detach())
        try:
            check_pattern(pattern, name, canonical)
        except PatternError as e:
            misfits.append(str(e))
    if misfits:
        raise PatternError(f"{len(misfits)} layer(s) do not fit pattern {pattern}:\n  " + "\n  ".join(misfits))


def _solver_class(method: str | type[Solver]) -> type[Solver]:
    if isinstance(method, type) and issubclass(method, Solver):
        return method
    if method not in SOLVERS:
        raise UnknownNameError("layer-wise solver", method, SOLVERS)
    return SOLVERS[method]


def _scores_for_allocation(
    runner: _Runner | None,
    taps: Mapping[str, _Tap],
    order: list[str],
    scorer: type[Solver],
    options: dict[str, Any],
    sequential: bool,
    stop_ok: Mapping[str, bool],
) -> dict[str, Tensor]:
    """Each layer's scores under ``scorer`` on the dense model (read-only), kept on the CPU in float32."""
    scores: dict[str, Tensor] = {}
    groups = [[n] for n in order] if sequential else [list(order)]
    for names in groups:
        solvers = {n: scorer(taps[n].module, n, **options) for n in names}
        if scorer.name != "magnitude":
            assert runner is not None
            _gather(runner, taps, solvers, stop=sequential and all(stop_ok[n] for n in names))
        for n, s in solvers.items():
            scores[n] = s.scores().float().cpu()
            s.free()
    return scores


def solve_layerwise(
    model: nn.Module,
    method: str | type[Solver],
    *,
    sparsity: float | None = None,
    pattern: str | Granularity | None = None,
    calibration: Any = None,
    targets: Iterable[Target | nn.Module | str] | None = None,
    allocation: str | Allocation | None = None,
    sparsities: Mapping[str, float] | None = None,
    sequential: bool = True,
    masks: bool = True,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> LayerwiseResult:
    """Prune the target layers of ``model`` in place, one layer at a time (see the module docstring).

    ``method``: "magnitude", "wanda", "sparsegpt" or a :class:`~prunekit.apply.solvers.Solver` class.
    ``pattern``: None (unstructured) or N:M such as "2:4" (then ``sparsity`` may be left out: the pattern
    fixes it). ``targets``: the layers, as :class:`~prunekit.targets.Target` objects, modules or names
    (default: every Linear / Conv except the final classifier). ``allocation``: how ``sparsity`` is spread
    over the layers (default uniform; score-based allocations read each layer's scores under the method's
    criterion on the dense model first, OWL reads Wanda scores as in Yin et al. 2023); ``sparsities``: a
    per-layer sparsity that overrides both. ``sequential``, ``masks``: see the module docstring.
    ``device``: where the model runs while it is pruned (it is moved back afterwards); default where it is.
    ``blocksize``, ``percdamp``: SparseGPT's column block and Hessian damping.

    Raises, before the model changes: :class:`~prunekit.errors.UnknownNameError` (method),
    :class:`~prunekit.errors.InvalidSparsityError`, :class:`~prunekit.errors.PatternError` (a pattern other
    than unstructured / N:M, or layers it does not fit, all listed), :class:`~prunekit.errors.ModelError`
    (targets that are not Linear / Conv1d / Conv2d / ``Conv1D``, or that never run on the calibration data),
    :class:`~prunekit.errors.MissingDataError` / :class:`~prunekit.errors.DataError` (no or unreadable
    calibration, for Wanda and SparseGPT), :class:`~prunekit.errors.ConfigError` (N:M with a non-uniform
    allocation).
    """
    start = time.perf_counter()
    cls = _solver_class(method)
    granularity = parse_pattern(pattern)
    if not isinstance(granularity, (Unstructured, NM)):
        check_pattern(granularity, "", torch.zeros(1, 1))  # raises the solvers' PatternError
    if isinstance(granularity, NM):
        granularity.check_sparsity(sparsity)
        sparsity = granularity.fixed_sparsity
    if sparsity is None:
        raise InvalidSparsityError("pass sparsity= a fraction in [0, 1) (or an N:M pattern, which fixes it)")
    sparsity = check_sparsity(sparsity, Unstructured())
    alloc = resolve_allocation(allocation)
    if isinstance(granularity, NM) and not isinstance(alloc, Uniform):
        raise ConfigError(
            f"pattern {granularity} fixes every layer's sparsity; allocation must be 'uniform', not {alloc}"
        )
    layers = _resolve_targets(model, targets)
    _check_targets(layers, granularity)
    if sparsities is not None:
        unknown = sorted(set(sparsities) - set(layers))
        if unknown:
            raise ConfigError(f"sparsities= names layers that are not targets: {', '.join(unknown)}")
        for s in sparsities.values():
            check_sparsity(s, Unstructured())
    options: dict[str, Any] = {"blocksize": blocksize, "percdamp": percdamp} if cls.name == "sparsegpt" else {}
    needs_data = cls.name != "magnitude" or (isinstance(alloc, OWL) and sparsities is None)

    params = list(model.parameters())
    home = params[0].device if params else torch.device("cpu")
    exec_device = torch.device(device) if device is not None else home
    taps = _taps(layers)
    modes = training_modes(model)
    result = LayerwiseResult(cls.name, str(granularity), str(alloc), {}, [], sequential=sequential)
    if exec_device != home:
        model.to(exec_device)
    try:
        model.eval()
        runner = _Runner(model, _read_batches(calibration, exec_device)) if needs_data else None
        if runner is not None:
            order, calls = _trace(runner, taps)
        else:
            order, calls = list(layers), {n: 1 for n in layers}
        stop_ok = {n: calls[n] == 1 for n in order}
        plan = _plan(
            model, layers, taps, order, runner, cls, options, alloc, sparsity, sparsities, sequential, stop_ok, result
        )
        _prune(
            layers, taps, order, runner, cls, options, plan, granularity, sequential, stop_ok, masks, progress, result
        )
        if runner is not None:
            result.forward_passes = runner.passes
    finally:
        restore_modes(modes)
        if exec_device != home:
            model.to(home)
    result.seconds = time.perf_counter() - start
    return result


def _plan(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    taps: Mapping[str, _Tap],
    order: list[str],
    runner: _Runner | None,
    cls: type[Solver],
    options: dict[str, Any],
    alloc: Allocation,
    sparsity: float,
    sparsities: Mapping[str, float] | None,
    sequential: bool,
    stop_ok: Mapping[str, bool],
    result: LayerwiseResult,
) -> dict[str, float]:
    """The sparsity of every layer: given, uniform, from shapes, or from dense scores (a read-only pass)."""
    if sparsities is not None:
        return {n: float(sparsities.get(n, sparsity)) for n in order}
    if isinstance(alloc, Uniform):
        return {n: sparsity for n in order}
    shapes = {n: tuple(layer_weight(layers[n]).shape) for n in order}
    if not alloc.needs_scores:
        return alloc.allocate([LayerInfo(n, shapes[n]) for n in order], sparsity)
    scorer = WandaSolver if isinstance(alloc, OWL) else cls
    scores = _scores_for_allocation(runner, taps, order, scorer, options if scorer is cls else {}, sequential, stop_ok)
    infos = [
        LayerInfo(n, shapes[n], scores[n].reshape(-1), torch.ones(scores[n].numel(), dtype=torch.long)) for n in order
    ]
    plan = alloc.allocate(infos, sparsity)
    result.notes.append(
        f"allocation {alloc} on {scorer.name} scores of the dense model: "
        + ", ".join(f"{n} {plan[n]:.3f}" for n in order)
    )
    return plan


def _prune(
    layers: Mapping[str, nn.Module],
    taps: Mapping[str, _Tap],
    order: list[str],
    runner: _Runner | None,
    cls: type[Solver],
    options: dict[str, Any],
    plan: Mapping[str, float],
    pattern: Granularity,
    sequential: bool,
    stop_ok: Mapping[str, bool],
    masks: bool,
    progress: bool | None,
    result: LayerwiseResult,
) -> None:
    def finish(name: str, solver: Solver, t0: float) -> None:
        keep = solver.prune(plan[name], pattern)
        if masks:
            apply_mask_(layers[name], stored_mask(layers[name], keep))
        solver.free()
        result.order.append(name)
        result.layer_sparsity[name] = check_sparsity(plan[name], pattern)
        result.rows[name] = solver.nsamples
        result.layer_seconds[name] = result.layer_seconds.get(name, 0.0) + time.perf_counter() - t0

    label = f"{cls.name} ({pattern})"
    with ProgressBar(label, len(order), enabled=progress) as bar:
        if sequential or runner is None:
            for name in order:
                t0 = time.perf_counter()
                solver = cls(layers[name], name, **options)
                if runner is not None and cls.name != "magnitude":
                    _gather(runner, taps, {name: solver}, stop=stop_ok[name])
                finish(name, solver, t0)
                bar.advance(description=f"{label} {name}")
        else:
            t0 = time.perf_counter()
            solvers = {name: cls(layers[name], name, **options) for name in order}
            if cls.name != "magnitude":
                _gather(runner, taps, solvers, stop=False)
            gather_share = (time.perf_counter() - t0) / max(len(order), 1)
            for name in order:
                finish(name, solvers.pop(name), time.perf_counter() - gather_share)
                bar.advance(description=f"{label} {name}")


# ------------------------------------------------------------------------------------ measurement


def dense_matrices(model: nn.Module, names: Iterable[str]) -> dict[str, Tensor]:
    """A copy of each named layer's weight as the solvers' matrix [out, in]
    (:func:`~prunekit.apply.solvers.weight_matrix`, float32), to measure :func:`reconstruction_errors`
    against after pruning."""
    return {n: weight_matrix(model.get_submodule(n)).detach().float().clone() for n in names}


@dataclass
class LayerError:
    """``error = ||W X - W' X||_F^2`` of one layer and ``reference = ||W X||_F^2`` over ``rows`` input rows."""

    error: float
    reference: float
    rows: int

    @property
    def relative(self) -> float:
        """``error / reference``: the share of the layer's output energy the pruning lost (0 when the
        reference is 0)."""
        return self.error / self.reference if self.reference > 0 else 0.0


@torch.no_grad()
def reconstruction_errors(
    model: nn.Module, reference: Mapping[str, Tensor], calibration: Any, *, device: str | torch.device | None = None
) -> dict[str, LayerError]:
    """The layer-wise reconstruction error of every layer in ``reference`` (name -> the dense matrix
    ``W`` from :func:`dense_matrices`) against its weight ``W'`` now, on the inputs ``X`` that layer
    really receives in ``model`` as it is now (one forward pass per batch; padding left out):
    ``||(W - W') X||_F^2`` summed over all input rows (im2col patches for a convolution).

    After a sequential :func:`solve_layerwise`, these are the inputs each layer was solved on, so the
    error is exactly what the solvers minimise. Raises :class:`~prunekit.errors.DataError` as
    :func:`solve_layerwise` does.
    """
    layers = {n: model.get_submodule(n) for n in reference}
    taps = _taps(layers)
    params = list(model.parameters())
    exec_device = torch.device(device) if device is not None else (params[0].device if params else torch.device("cpu"))
    totals = {n: LayerError(0.0, 0.0, 0) for n in layers}
    deltas = {}
    for n, module in layers.items():
        w_now = weight_matrix(module).detach().float()
        W = reference[n].to(w_now.device)
        deltas[n] = (W, W - w_now)

    def hook_for(tap: _Tap) -> Callable[..., None]:
        W, D = deltas[tap.name]
        layout = weight_layout(tap.module)
        groups = layout.groups if layout is not None and layout.kind == "conv" else 1
        per = W.shape[0] // groups

        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = tap.inputs(args, kwargs)
            if x is None:
                return
            for rows in layer_rows(tap.module, _real_rows(x, tap)):  # [n, groups, F]
                r = rows.float()
                t = totals[tap.name]
                for g in range(groups):
                    sl = slice(g * per, (g + 1) * per)
                    t.error += float((r[:, g] @ D[sl].t()).pow(2).sum())
                    t.reference += float((r[:, g] @ W[sl].t()).pow(2).sum())
                t.rows += rows.shape[0]

        return hook

    with eval_mode(model):
        _Runner(model, _read_batches(calibration, exec_device)).run({t.module: hook_for(t) for t in taps.values()})
    return totals
