"""Plan, validate and apply physical channel removal over dependency groups.

``plan_channels`` traces the model, scores every group with a group criterion and allocates removals over
the groups (nothing is changed). ``apply_plan_`` performs the surgery in place and, by default, proves it:
the pruned model is run on the traced inputs and must give the same output shapes as before. If it does
not (a size hard-coded in the model's code), the module tree is restored, the groups whose removal breaks
the forward pass are found by bisection and kept, and the rest is applied. Proving costs one forward pass of
the pruned model at the (downscaled) trace size, so it is cheap; no copy of the model is made.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.allocation.builtin import Allocation
from prunekit.allocation.units import allocate_units, structural_allocation, unique_names
from prunekit.apply.transaction import restore_tree, snapshot_tree
from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError, DataError, InvalidSparsityError, NothingToPruneError
from prunekit.layout import is_prunable
from prunekit.surgery.changes import output_axis, recurrent_notes, sync_config
from prunekit.surgery.graph import Group, TraceResult, trace_groups
from prunekit.surgery.handlers import handler_for
from prunekit.surgery.proof import bisect_failures, keep_groups, probe, still_runs, unexplained
from prunekit.surgery.remove import Removal, remove_, tensor_slots
from prunekit.surgery.scoring import UnitScorer, UnitSet, level_criterion, nothing_scored


def _produces(m: nn.Module, attr: str, dim: int) -> bool:
    """Is ``m.<attr>`` along ``dim`` a dimension of units the layer makes (a conv / linear layer's outputs,
    a recurrent layer's hidden units)?"""
    if is_prunable(m):
        return attr == "weight" and dim == output_axis(m)
    return isinstance(m, nn.RNNBase) and attr.startswith("weight_hh_l") and dim == 1


@dataclass
class StructuralPlan:
    """Which units of which groups are removed. Printable; ``removal()`` is the per-tensor form."""

    groups: list[Group]
    remove: list[np.ndarray]
    kind: str = "channel"
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    criterion: str = ""
    scores: list[np.ndarray] = field(default_factory=list, repr=False)  # unit scores per group
    check_inputs: Any = field(default=None, repr=False)
    check_shapes: list[tuple[int, ...]] | None = field(default=None, repr=False)

    def removal(self, only: Iterable[int] | None = None) -> Removal:
        """The plan as tensor key -> dim -> sorted indices to remove (every member of every group that
        loses units), for :func:`~prunekit.surgery.remove.remove_`; ``only``: just these group indices."""
        parts: dict[str, dict[int, list[np.ndarray]]] = {}
        sel = range(len(self.groups)) if only is None else only
        for g in sel:
            r = self.remove[g]
            if not len(r):
                continue
            grp = self.groups[g]
            gone = np.zeros(grp.size, dtype=bool)
            gone[r] = True
            for m, lab in zip(grp.members, grp.index_class):
                idx = np.nonzero(gone[lab])[0]
                if idx.size:
                    parts.setdefault(m.param, {}).setdefault(m.dim, []).append(idx)
        return {
            k: {d: np.unique(np.concatenate(v)).astype(np.int64) for d, v in dims.items()} for k, dims in parts.items()
        }

    @property
    def units_removed(self) -> int:
        """The number of units removed, summed over the groups."""
        return int(sum(len(r) for r in self.remove))

    def __str__(self) -> str:
        by = f", criterion {self.criterion}" if self.criterion else ""
        lines = [f"structural plan ({self.kind}{by}): {len(self.groups)} groups, {self.units_removed} units removed"]
        for g, r in zip(self.groups, self.remove):
            if len(r):
                lines.append(f"  -{len(r)}/{g.size}  {g.describe()}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def fixed_dims(targets: set[str] | None) -> Callable[[str, nn.Module], list[tuple[str, int]]]:
    """Dims that must not change: those handlers protect, and output dims of layers not selected."""

    def f(name: str, module: nn.Module) -> list[tuple[str, int]]:
        out = []
        h = handler_for(module)
        if h is not None:
            out += h.fixed(module)
        if targets is not None and is_prunable(module) and name not in targets:
            out.append(("weight", output_axis(module)))
            if getattr(module, "bias", None) is not None:
                out.append(("bias", 0))
        return out

    return f


_TRACE_SIDE = 64  # images are traced at this shorter side: channel coupling does not depend on the size


def analyze(
    model: nn.Module,
    example_inputs: Any,
    *,
    targets: Iterable[str] | None = None,
    strict: bool = True,
    reduce_spatial: bool = True,
    opaque: Iterable[str] = (),
) -> TraceResult:
    """Trace ``model`` into dependency groups (nothing is changed). ``targets``: names of the modules
    allowed to lose output channels (default: every conv / linear layer whose outputs are not model
    outputs).

    ``reduce_spatial``: an image batch (one N x C x H x W float tensor) is first traced downscaled to a
    shorter side of 64, because which channels are coupled does not depend on the image size and the trace
    then costs a fraction of the compute. If the model refuses the smaller image (a fixed input size, a
    flatten into a linear layer), it is traced at the given size. The inputs traced and the output shapes
    they gave are recorded (``inputs``, ``output_shapes``): plans are proved on them. ``opaque``: modules
    kept whole (those ``ignore=`` names): nothing inside them is traced and their inputs and outputs keep
    their sizes.
    """
    if example_inputs is None:
        raise DataError("structural pruning traces the model: pass example_inputs= (a batch the model accepts)")
    tset = set(targets) if targets is not None else None
    opaque = tuple(opaque)
    small = _downscaled(example_inputs) if reduce_spatial else None
    if small is not None:
        try:
            tr = trace_groups(model, small, strict=strict, fixed=fixed_dims(tset), opaque=opaque)
        except Exception:  # noqa: BLE001  the model wants its own size: trace at that size below
            tr = None
        if tr is not None:
            tr.inputs = small
            tr.notes.append(f"traced at {tuple(small.shape)} (channel coupling does not depend on image size)")
            return tr
    tr = trace_groups(model, example_inputs, strict=strict, fixed=fixed_dims(tset), opaque=opaque)
    tr.inputs = example_inputs
    return tr


def _downscaled(x: Any) -> Tensor | None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        return None
    h, w = x.shape[-2:]
    if min(h, w) <= _TRACE_SIDE:
        return None
    scale = _TRACE_SIDE / min(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x.detach(), size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------- planning


def select_groups(trace: TraceResult, model: nn.Module, kind: str) -> list[int]:
    """Indices of the groups a granularity acts on: ``channel`` (groups made by conv / linear layers, not
    the token-embedding stream), ``embedding`` (the stream of an nn.Embedding: a transformer's hidden size)."""
    slots = tensor_slots(model)
    out = []
    for gi, g in enumerate(trace.groups):
        if not any(g.removable):
            continue
        emb = False
        prod = False
        for m in g.members:
            sl = slots.get(m.param)
            if not sl:
                continue
            mod = sl[0].module
            if isinstance(mod, nn.Embedding) and m.dim == 1:
                emb = True
            if _produces(mod, sl[0].attr, m.dim):
                prod = True
        if kind == "channel" and prod and not emb:
            out.append(gi)
        elif kind == "embedding" and emb:
            out.append(gi)
    return out


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the analysis on one intra-op thread: it is made of many small tensor operations, for which
    thread hand-off costs more than it gains (and a busy machine makes it much worse)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def plan_channels(
    model: nn.Module,
    example_inputs: Any,
    sparsity: float,
    *,
    criterion: str | Criterion = "l2",
    allocation: str | Allocation | None = "uniform",
    kind: str = "channel",
    round_to: int | None = None,
    global_cap: float | None = None,
    targets: Iterable[str] | None = None,
    calibration: Any = None,
    loss_fn: Any = None,
    calib_batches: int = 8,
    seed: int = 0,
    strict: bool = True,
    validate: bool = True,
    trace: TraceResult | None = None,
    opaque: Iterable[str] = (),
) -> StructuralPlan:
    """Plan the removal of ``sparsity`` of the selected groups' units (nothing is changed).

    ``criterion``: any registered criterion whose levels include ``"channel"`` (a name, ``"l<p>"`` or a
    :class:`~prunekit.criteria.Criterion`), reduced to every group's units by
    :mod:`prunekit.surgery.scoring`; ``allocation``: any of :data:`prunekit.allocation.builtin.ALLOCATIONS` (a
    name or an object), see :mod:`prunekit.allocation.units`; ``kind``: "channel" or "embedding";
    ``round_to``: keep unit counts at a multiple of this; ``global_cap``: the most a group may lose under
    ``allocation="global"`` (``Global.max_sparsity``; default ``min(0.9, 2 * sparsity)``); ``targets``: names
    of modules allowed to lose output units; ``calibration`` / ``loss_fn`` / ``calib_batches``: data for
    data-driven criteria (at most ``calib_batches`` batches are read); ``validate``: have :func:`apply_plan_`
    prove the plan on the traced inputs (or call :func:`validate_plan` to prove it without applying it);
    ``opaque``: modules kept whole (those ``ignore=`` names). Groups the criterion cannot score (BN scale on
    a group that feeds no normalisation layer) are kept whole, and the plan's notes say so.

    Raises :class:`~prunekit.errors.UnknownNameError` / :class:`~prunekit.criteria.CriterionLevelError`
    for a criterion that does not exist or has no meaning for channels,
    :class:`~prunekit.errors.ConfigError` for an allocation option it cannot honour,
    :class:`~prunekit.errors.MissingDataError` when the criterion needs data that was not given.
    """
    with single_thread():
        return _plan_channels(
            model,
            example_inputs,
            sparsity,
            criterion=criterion,
            allocation=allocation,
            kind=kind,
            round_to=round_to,
            global_cap=global_cap,
            targets=targets,
            calibration=calibration,
            loss_fn=loss_fn,
            calib_batches=calib_batches,
            seed=seed,
            strict=strict,
            validate=validate,
            trace=trace,
            opaque=opaque,
        )


def group_unit_sets(groups: list[Group], names: list[str] | None = None) -> list[UnitSet]:
    """Dependency groups as unit sets for :class:`~prunekit.surgery.scoring.UnitScorer`."""
    names = names or [g.members[0].param for g in groups]
    return [
        UnitSet(n, g.size, [(m.param, m.dim, lab) for m, lab in zip(g.members, g.index_class)])
        for n, g in zip(names, groups)
    ]


def _group_name(g: Group, producer_of: dict[tuple[str, int], str]) -> str:
    """A readable name for a group: its first producing module (or its first member's tensor)."""
    for m in g.members:
        if (m.param, m.dim) in producer_of:
            return producer_of[(m.param, m.dim)]
    return g.members[0].param.rpartition(".")[0] or g.members[0].param


def _plan_channels(
    model: nn.Module,
    example_inputs: Any,
    sparsity: float,
    *,
    criterion: str | Criterion,
    allocation: str | Allocation | None,
    kind: str,
    round_to: int | None,
    global_cap: float | None,
    targets: Iterable[str] | None,
    calibration: Any,
    loss_fn: Any,
    calib_batches: int,
    seed: int,
    strict: bool,
    validate: bool,
    trace: TraceResult | None,
    opaque: Iterable[str] = (),
) -> StructuralPlan:
    if not 0 <= sparsity < 1:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity}")
    if kind not in ("channel", "embedding"):
        raise ConfigError(f"plan_channels plans 'channel' or 'embedding' units, not {kind!r}")
    t0 = time.perf_counter()
    crit = level_criterion(criterion, "channel", "channels" if kind == "channel" else "hidden dimensions")
    alloc = structural_allocation(allocation, sparsity, global_cap)
    check_options(round_to, None)
    tr = trace if trace is not None else analyze(model, example_inputs, targets=targets, strict=strict, opaque=opaque)
    chosen = select_groups(tr, model, kind)
    if not chosen:
        raise NothingToPruneError(
            f"no {kind} group of this model can be removed (every coupled dimension is fixed by a model output, "
            f"an ignored layer or an operation that hard-codes its size)"
        )
    groups = [tr.groups[i] for i in chosen]
    names = unique_names([_group_name(g, tr.producer_of) for g in groups])
    scorer = UnitScorer(
        model,
        crit,
        calibration=calibration,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        max_batches=calib_batches,
        seed=seed,
        level="channel",
    )
    scored = scorer.score(group_unit_sets(groups, names))
    notes = list(tr.notes) + scorer.notes
    removable = [np.asarray(g.removable, dtype=bool) & u.scored for g, u in zip(groups, scored)]
    unscored = [n for n, u in zip(names, scored) if not u.scored.any()]
    if unscored:
        why = " (no normalisation layer follows them)" if "bn_gamma" in crit.needs else ""
        notes.append(
            f"{len(unscored)} group(s) kept whole: criterion {crit.name!r} has no score for them{why}: "
            + ", ".join(unscored[:8])
            + (" ..." if len(unscored) > 8 else "")
        )
    live = [i for i, u in enumerate(scored) if u.scored.any()]
    if not live:
        what = "channels" if kind == "channel" else "hidden dimensions"
        raise nothing_scored(crit, "channel", what, notes[len(tr.notes) :])
    segs = [_segments(g, tr.producer_of) for g in groups]
    removes = [np.zeros(0, dtype=np.int64) for _ in groups]
    if live:
        got, _ = allocate_units(
            [names[i] for i in live],
            [scored[i].kept_high() for i in live],
            [scored[i].sizes for i in live],
            [removable[i] for i in live],
            sparsity,
            alloc,
            segments=[segs[i] for i in live],
            round_to=round_to,
        )
        for i, r in zip(live, got):
            removes[i] = r
    removes = [_protect_members(g, r) for g, r in zip(groups, removes)]
    plan = StructuralPlan(
        groups, removes, kind=kind, notes=notes, criterion=crit.name, scores=[u.scores for u in scored]
    )
    if validate and tr.inputs is not None:
        plan.check_inputs, plan.check_shapes = tr.inputs, list(tr.output_shapes)
    plan.seconds = time.perf_counter() - t0
    return plan


def _segments(g: Group, producer_of: dict[tuple[str, int], str]) -> np.ndarray | None:
    """Units of a concatenation, split by the layers that produce them: units covered by the same set of
    producing members share a segment id. None when there is one segment (the usual group)."""
    prod = [i for i, m in enumerate(g.members) if (m.param, m.dim) in producer_of]
    if len(prod) < 2:
        return None
    cov = np.zeros((g.size, len(prod)), dtype=bool)
    for j, i in enumerate(prod):
        lab = g.index_class[i]
        cov[lab[lab >= 0], j] = True
    _, seg = np.unique(cov, axis=0, return_inverse=True)
    seg = np.asarray(seg, dtype=np.int64).reshape(-1)
    return seg if seg.size and seg.max() > 0 else None


def _protect_members(g: Group, remove: np.ndarray) -> np.ndarray:
    """Never empty a member dimension: drop removals that would take a member's last index."""
    if not len(remove):
        return np.asarray(remove, dtype=np.int64)
    counts = g.counts()
    left = counts.sum(1)
    if (counts[:, remove].sum(1) < left).all():  # the usual case: every member keeps something
        return np.asarray(remove, dtype=np.int64)
    keep = []
    for c in remove.tolist():
        if (left - counts[:, c] > 0).all():
            left = left - counts[:, c]
            keep.append(c)
    return np.asarray(keep, dtype=np.int64)


def validate_plan(model: nn.Module, plan: StructuralPlan) -> set[int]:
    """Prove ``plan`` without keeping any change: groups whose removal breaks the forward pass on the
    traced inputs are dropped from the plan (and named in its notes). Returns their indices."""
    if plan.check_shapes is None or not plan.units_removed:
        return set()
    with single_thread():
        where: list[str] = []
        errors: list[Exception] = []
        if probe(model, plan.check_inputs, plan.removal(), plan.check_shapes, where, errors):
            bad: set[int] = set()
        else:
            bad = bisect_failures(model, plan.check_inputs, plan, plan.check_shapes, failed_in=where)
            unexplained(errors, bad)
    if bad:
        keep_groups(plan, bad)
    plan.check_shapes = None  # proved
    return bad


def apply_plan_(model: nn.Module, plan: StructuralPlan) -> dict[str, tuple[int, ...]]:
    """Remove the planned units in place. Returns the old shapes of the changed tensors.

    A plan made with ``validate=True`` is proved here: after the surgery the model must run on the traced
    inputs with the same output shapes; if not, the model is restored, the offending groups are dropped from
    the plan by bisection, and the rest is applied."""
    removal = plan.removal()
    if not removal:
        plan.notes += recurrent_notes(model, {})
        return {}
    shapes = plan.check_shapes
    with single_thread():
        snap = snapshot_tree(model) if shapes is not None else None
        try:
            old = remove_(model, removal)
        except BaseException:
            if snap is not None:
                restore_tree(snap)
            raise
        where: list[str] = []
        errors: list[Exception] = []
        if snap is not None and shapes is not None and not still_runs(model, plan.check_inputs, shapes, where, errors):
            restore_tree(snap)
            bad = bisect_failures(model, plan.check_inputs, plan, shapes, failed_in=where)
            unexplained(errors, bad)
            if bad:
                keep_groups(plan, bad)
            removal = plan.removal()
            old = remove_(model, removal) if removal else {}
        plan.check_shapes = None
    plan.notes += recurrent_notes(model, old)
    sync_config(model)
    return old


def prune_channels_(model: nn.Module, example_inputs: Any, sparsity: float, **kwargs: Any) -> StructuralPlan:
    """Plan and apply in one call; see :func:`plan_channels` for the options."""
    plan = plan_channels(model, example_inputs, sparsity, **kwargs)
    apply_plan_(model, plan)
    return plan


def check_options(round_to: Any, global_cap: Any) -> None:
    """Validate the structural options ``round_to`` (None or a positive int: unit counts are kept at a
    multiple of it) and ``global_cap`` (None or a number in (0, 1): the most a group may lose under global
    allocation). Raises :class:`~prunekit.errors.ConfigError` for any other value."""
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise ConfigError(f"round_to must be a positive integer, got {round_to!r}")
    if global_cap is not None and not (isinstance(global_cap, (int, float)) and 0 < global_cap < 1):
        raise ConfigError(f"global_cap must be in (0, 1), got {global_cap!r}")
