"""Scores of physical units (channel groups, attention heads, whole blocks) from the one criterion interface.

A physical unit is spread over *members*: parameter dimensions ``(tensor key, dim)`` whose indices belong
to units (a dependency group's coupled dimensions, an attention block's head slices, a block's whole
parameters). Every level reduces a :class:`~prunekit.criteria.Criterion` ``c`` to its units the same way:

* a layer weight (a module with a :mod:`prunekit.layout` layout, attribute ``weight``) contributes
  ``c.contribution(ScoreInput(canonical weight [out, in/groups, *kernel], stats of its module, layout,
  key, seed))``, mapped back to the stored layout (``layout.from_canonical``) and summed over every
  dimension except the member's; the unit sizes (weights per index) likewise;
* a row-native criterion (``row_native=True``: FPGM, APoZ, BN scale) contributes only on producer members
  (the weight's output axis): the input dimensions of consumers contribute nothing for it;
* a layer's bias contributes to gradient criteria (Taylor, grad-weight, OBD) with its own gradient, as a
  ``[out_features]`` tensor: Taylor's unit sum covers every parameter of the unit (Molchanov et al. 2019:
  the gradient of a gate on the unit's output, ``sum g w`` over its weights and bias);
* other parameters (biases for other data-driven criteria, normalisation weights, embeddings, recurrent
  weights) are scored as tensors by the data-free criteria (magnitude, l2, lp, random, LAMP) and skipped by
  the data-driven ones; buffers contribute nothing.

Then ``c.unit(sums, sizes)`` over one :class:`UnitSet` (a group, an attention block, a stack of blocks)
gives one score per unit: the mean by default, the square of the signed sum for Taylor (Molchanov et al.
2019), LAMP normalised within the set (Lee et al. 2021). A unit no member contributed to has no score and
is kept. Statistics are gathered once, with :func:`prunekit.calibration.collect`, for the modules that
own the members' weights (``needs = c.needs``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.calibration.collect import LayerStats, collect
from prunekit.calls import call_model
from prunekit.criteria.base import Criterion, ScoreInput, criteria_for, resolve_criterion
from prunekit.errors import DataError, MissingDataError, NothingToPruneError, UnknownNameError
from prunekit.layout import WeightLayout, weight_layout
from prunekit.surgery.remove import tensor_slots

#: statistics read from activations: a layer whose forward never runs has none of them
_ACTIVATION = frozenset({"act_norm", "act_mean", "act_zeros", "xtx"})
#: statistics that are derivatives: a weight the loss (or the path sum) does not reach has a zero one
_DERIVATIVE = frozenset({"grad", "grad_sq", "synflow", "grasp_hg"})
_GRADIENT = frozenset({"grad", "grad_sq"})
_PARAMETRIZED = "parametrizations.weight"
_ON_OTHERS = "; units are scored on their other weights"


@dataclass
class UnitSet:
    """Units scored together: the "layer" of a criterion's unit reduction (a dependency group, an attention
    block, a stack of blocks). ``members``: ``(tensor key, dim, labels)`` with ``labels[i]`` the unit of
    index ``i`` along ``dim`` (-1: none); ``dim=None``: the whole tensor belongs to unit ``labels[0]``."""

    name: str
    size: int
    members: list[tuple[str, int | None, np.ndarray]]


@dataclass
class UnitScores:
    """``scores`` float64 ``[size]`` (higher: more important); ``scored`` bool ``[size]`` (units some member
    contributed to; the others are kept); ``sizes`` float64 ``[size]``: the parameters each unit holds
    (every parameter member), which is what allocations count."""

    scores: np.ndarray
    scored: np.ndarray
    sizes: np.ndarray

    def kept_high(self) -> np.ndarray:
        """``scores`` (float64 ``[size]``) with every unscored unit raised to the highest score of the set,
        so that an allocation removing the lowest-scored units keeps them; unchanged when every unit or no
        unit has a score."""
        if self.scored.all() or not self.scored.any():
            return self.scores
        s = self.scores.copy()
        s[~self.scored] = float(self.scores[self.scored].max())
        return s


@dataclass
class _Ref:
    """What a tensor key is for scoring: the tensor as stored, its layout when it is a layer weight, and
    the module whose statistics describe it (None: none can be gathered)."""

    key: str
    tensor: Tensor | None
    layout: WeightLayout | None = None
    stats_name: str | None = None
    param: bool = False
    bias: bool = False  # the bias of the layer ``stats_name`` (scored by gradient criteria with its own gradient)


def level_criterion(criterion: str | Criterion, level: str, what: str = "") -> Criterion:
    """A registered criterion (name, ``"l<p>"`` or object) checked for ``level`` ("channel", "head",
    "layer"). Raises :class:`~prunekit.errors.UnknownNameError` (listing the names) or
    :class:`~prunekit.criteria.CriterionLevelError` (listing the criteria that work at ``level``)."""
    try:
        crit = resolve_criterion(criterion)
    except UnknownNameError:
        raise UnknownNameError("criterion", criterion, [*criteria_for(level), "l<p> (e.g. l1, l0.5)"]) from None
    crit.check_level(level, what)
    return crit


def _parametrized_owner(module_name: str) -> str | None:
    if module_name == _PARAMETRIZED:
        return ""
    if module_name.endswith("." + _PARAMETRIZED):
        return module_name[: -len(_PARAMETRIZED) - 1]
    return None


def resolve_tensor(key: str, slots: Mapping[str, Sequence[Any]], modules: Mapping[str, nn.Module]) -> _Ref:
    """How ``key`` is scored. A layer weight (also a parametrized one, scored as the module computes it;
    also ``nn.MultiheadAttention``'s packed ``in_proj_weight``, a Linear ``[3E, E]`` weight without a
    module of its own, so without statistics) gets its layout; anything else is a plain tensor."""
    sl = slots.get(key)
    if not sl:
        return _Ref(key, None)
    for s in sl:
        if s.is_param and s.attr == "weight" and (lay := weight_layout(s.module)) is not None:
            return _Ref(key, s.module.weight, lay, s.module_name, True)
    for s in sl:
        owner_name = _parametrized_owner(s.module_name) if s.is_param and s.attr == "original" else None
        owner = modules.get(owner_name) if owner_name is not None else None
        if owner is not None and (lay := weight_layout(owner)) is not None:
            owner_w = cast(Tensor, owner.weight)  # a module with a weight layout has a weight tensor
            if tuple(owner_w.shape) == tuple(getattr(s.module, s.attr).shape):
                return _Ref(key, owner_w, lay, owner_name, True)
        if s.is_param and isinstance(s.module, nn.MultiheadAttention) and s.attr == "in_proj_weight":
            return _Ref(key, s.module.in_proj_weight, WeightLayout("linear", 0, 1), None, True)
    for s in sl:
        if s.is_param and s.attr == "bias" and weight_layout(s.module) is not None:
            return _Ref(key, s.module.bias, None, s.module_name, True, bias=True)
    s = sl[0]
    return _Ref(key, getattr(s.module, s.attr), None, None, bool(s.is_param))


def _per_index(t: Tensor, dim: int | None) -> Tensor:
    """``t`` summed over every dimension except ``dim``; ``dim=None``: the total, as ``[1]``. Summed in the
    tensor's precision (torch's cascade summation) and returned as float64 for the bincount over units."""
    if dim is None or t.dim() == 0:
        return t.sum().double().reshape(1)
    if t.dim() == 1:
        return t.double()
    # as [lead, n, trail]: the trailing dims are reduced first (a contiguous, fast reduction), then the
    # leading ones over a small [lead, n]; a strided sum over the leading dims of a big tensor is slow
    t = t.contiguous()
    n = t.shape[dim]
    lead = int(np.prod(t.shape[:dim])) if dim else 1
    return t.reshape(lead, n, -1).sum(2).sum(0).double()


def _power_per_index(t: Tensor, dim: int | None, p: float) -> Tensor:
    """``sum |t|^p`` over every dimension except ``dim`` (float64), with no temporary of the tensor's size:
    long trailing rows are reduced by a norm kernel, short ones (convolution kernels) elementwise, and the
    leading dimensions in chunks of rows that stay in cache (the same sums as :func:`_per_index` of
    ``|t|^p``, up to float32 rounding within a chunk)."""
    if dim is None or t.dim() == 0:
        return torch.linalg.vector_norm(t.float().reshape(-1), ord=p).double().pow(p).reshape(1)
    x = t if t.is_contiguous() else t.contiguous()
    n = x.shape[dim]
    lead = int(np.prod(x.shape[:dim])) if dim else 1
    x3 = x.reshape(lead, n, -1).float()

    def part(rows: Tensor) -> Tensor:  # (r, n, b) -> (n,)
        if rows.shape[2] > 64:
            v = torch.linalg.vector_norm(rows, ord=p, dim=2)
            return (v if p == 1 else v.pow(p)).sum(0)
        if rows.shape[2] > 1:
            if p == 1:
                return rows.abs().sum((0, 2))
            return (rows * rows).sum((0, 2)) if p == 2 else rows.abs().pow(p).sum((0, 2))
        v = rows[:, :, 0]
        return v.abs().sum(0) if p == 1 else (v * v).sum(0) if p == 2 else v.abs().pow(p).sum(0)

    if lead == 1:
        return part(x3).double()
    acc = torch.zeros(n, dtype=torch.float64, device=x.device)
    step = max(1, (1 << 18) // max(n * x3.shape[2], 1))  # ~256k values per chunk
    for i in range(0, lead, step):
        acc += part(x3[i : i + step]).double()
    return acc


def _slice_sizes(shape: tuple[int, ...], dim: int | None) -> np.ndarray:
    numel = int(np.prod(shape)) if shape else 1
    if dim is None or not shape:
        return np.full(1, float(numel))
    return np.full(shape[dim], float(numel // max(shape[dim], 1)))


def _spread(vec: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """A per-index vector matched to the member's labels (a broadcast scalar: one value per index)."""
    vec = np.asarray(vec, dtype=np.float64).reshape(-1)
    if vec.size == lab.size:
        return vec
    return np.broadcast_to(vec[:1], lab.shape) if vec.size == 1 else vec[: lab.size]


@dataclass
class UnitScorer:
    """Scores :class:`UnitSet` s of ``model`` with one criterion (see the module docstring).

    ``calibration`` / ``loss_fn`` / ``max_batches``: data for data-driven criteria (any form
    :class:`~prunekit.calibration.Calibration` reads); ``example_inputs``: SynFlow's input shape, and the
    forward pass that finds the normalisation layer each layer feeds for BN scale when no calibration is
    given (that statistic depends on the graph only); ``level``: the level scored, for the criteria that
    error messages list. ``notes`` collects what the caller should report.
    """

    model: nn.Module
    criterion: Criterion
    calibration: Any = None
    example_inputs: Any = None
    loss_fn: Any = None
    max_batches: int | None = None
    seed: int = 0
    level: str = "channel"
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._slots = tensor_slots(self.model)
        self._modules = dict(self.model.named_modules())
        self._refs: dict[str, _Ref] = {}
        self._stats: dict[str, LayerStats] = {}
        self._cache: dict[tuple[str, int | None], tuple[np.ndarray, np.ndarray] | None] = {}
        self._unobserved: set[str] = set()

    # ------------------------------------------------------------------------------------------- public
    def ref(self, key: str) -> _Ref:
        """How tensor ``key`` is scored (see :func:`resolve_tensor`), resolved once and cached."""
        if key not in self._refs:
            self._refs[key] = resolve_tensor(key, self._slots, self._modules)
        return self._refs[key]

    def score(self, sets: Sequence[UnitSet]) -> list[UnitScores]:
        """One :class:`UnitScores` per set; statistics are gathered once for all of them."""
        dims: dict[str, set[int | None]] = {}
        for us in sets:
            for key, dim, _ in us.members:
                dims.setdefault(key, set()).add(dim)
        self._gather([self.ref(k) for k in dims])
        for key, ds in dims.items():
            self._vectors(key, ds)
        if self._unobserved:
            names = sorted(self._unobserved)
            self.notes.append(
                f"criterion {self.criterion.name!r} has no statistics of {', '.join(names[:4])}"
                f"{' ...' if len(names) > 4 else ''}: a weight no module of its own multiplies, or a module whose "
                f"forward never runs (nn.MultiheadAttention's packed in_proj_weight and its out_proj, for two)"
                + _ON_OTHERS
            )
        return [self._reduce(us) for us in sets]

    # ------------------------------------------------------------------------------------------ helpers
    def _gather(self, refs: list[_Ref]) -> None:
        needs = set(self.criterion.needs)
        if not needs:
            return
        layers = {
            r.stats_name: self._modules[r.stats_name]
            for r in refs
            if (r.layout is not None or r.bias) and r.stats_name is not None
        }
        if not layers:
            return
        calibration = self.calibration
        if calibration is None and needs <= {"bn_gamma"} and self.example_inputs is not None:
            inputs = self.example_inputs
            calibration = lambda m: call_model(m, inputs)  # noqa: E731  (which norm follows a layer: the graph only)
        elif calibration is None and needs - {"synflow", "bn_gamma"}:
            free = [n for n in criteria_for(self.level) if not _needs_data(n)]
            raise MissingDataError(
                f"criterion {self.criterion.name!r} needs calibration data (it reads {', '.join(sorted(needs))}): "
                f"pass calibration= (batches (inputs, targets), dict batches, or a loss callable), or use a "
                f"criterion that needs none: {', '.join(free)}"
            )
        try:
            self._stats = collect(
                self.model,
                layers,
                needs,
                calibration,
                example_inputs=self.example_inputs,
                loss_fn=self.loss_fn,
                max_batches=self.max_batches,
            )
        except DataError as e:
            if not str(e).startswith("no calibration input reached"):
                raise
            self._stats = {n: LayerStats(n) for n in layers}  # none of these modules ran: none has activations

    def _stats_for(self, ref: _Ref, w: Tensor) -> LayerStats | None:
        """The statistics of a layer weight ``w`` (detached ``ref.tensor``), or None when the criterion cannot
        score it (a missing normalisation layer for BN scale). Derivatives the loss does not reach are zero."""
        crit = self.criterion
        if not crit.needs:
            return LayerStats(ref.key)
        st = self._stats.get(ref.stats_name or "")
        if st is None:
            return None
        if "bn_gamma" in crit.needs and st.bn_gamma is None:
            return None  # no normalisation layer follows this layer: BN scale has nothing to read
        missing = {n for n in crit.needs & _DERIVATIVE if getattr(st, n) is None}
        if missing:
            zero = torch.zeros_like(w, dtype=torch.float32)
            filled: dict[str, Any] = {n: zero for n in missing}
            st = dataclasses.replace(st, **filled)
        return st

    def _vectors(self, key: str, dims: set[int | None]) -> None:
        """Per-index contribution sums and sizes of ``key`` along each of ``dims`` (cached; the
        contribution is computed once per tensor)."""
        todo = [d for d in dims if (key, d) not in self._cache]
        if not todo:
            return
        ref, crit = self.ref(key), self.criterion
        for d in todo:
            self._cache[(key, d)] = None
        if ref.tensor is None or not ref.param:
            return
        if crit.power is not None and not crit.needs:  # |w|^p: a fused norm per index, no full-size temporary
            with torch.no_grad():
                t = ref.tensor.detach()
                for d in todo:
                    self._cache[(key, d)] = (
                        _power_per_index(t, d, crit.power).cpu().numpy(),
                        _slice_sizes(tuple(t.shape), d),
                    )
            return
        if ref.layout is not None:
            want = [d for d in todo if not crit.row_native or d == ref.layout.out_axis]
            if not want:
                return
            if crit.needs and ref.stats_name is None:
                self._unobserved.add(key)
                return
            w = ref.tensor.detach()
            st = self._stats_for(ref, w)
            if st is None:
                return
            s = ScoreInput(ref.layout.to_canonical(w), st, ref.layout, key, self.seed)
            try:
                contrib = ref.layout.from_canonical(crit.contribution(s))
            except MissingDataError:
                if not (crit.needs & _ACTIVATION and not (st.rows or st.out_rows)):
                    raise
                self._unobserved.add(key)  # its module never ran: it has no activations to read
                return
        elif ref.bias and crit.needs and crit.needs <= _GRADIENT and not crit.row_native:
            st = self._stats.get(ref.stats_name or "")
            if st is None or st.bias_grad is None:
                return
            want = todo
            contrib = crit.contribution(
                ScoreInput(
                    ref.tensor.detach(),
                    LayerStats(key, grad=st.bias_grad, grad_sq=st.bias_grad_sq),
                    None,
                    key,
                    self.seed,
                )
            )
        elif not crit.needs and not crit.row_native and crit.score is not None:
            want = todo
            t = ref.tensor.detach()
            contrib = crit.contribution(ScoreInput(t, LayerStats(key), None, key, self.seed))
        else:
            return
        if bool(torch.isnan(contrib).any()):
            raise DataError(
                f"criterion {crit.name!r} gave NaN scores for {key}: its statistics are not finite (check the "
                "calibration data and the model's outputs)"
            )
        with torch.no_grad():
            for d in want:
                self._cache[(key, d)] = (_per_index(contrib, d).cpu().numpy(), _slice_sizes(tuple(contrib.shape), d))

    def _reduce(self, us: UnitSet) -> UnitScores:
        sums = np.zeros(us.size)
        sizes = np.zeros(us.size)
        params = np.zeros(us.size)
        for key, dim, lab in us.members:
            lab = np.asarray(lab, dtype=np.int64).reshape(-1)
            ref = self.ref(key)
            if ref.tensor is not None and ref.param:
                shape = tuple(ref.tensor.shape)
                n = _spread(_slice_sizes(shape, dim), lab)
                ok = lab >= 0
                params += np.bincount(lab[ok], weights=n[ok], minlength=us.size)
            got = self._cache.get((key, dim))
            if got is None:
                continue
            vec, size = (_spread(v, lab) for v in got)
            ok = lab >= 0
            sums += np.bincount(lab[ok], weights=vec[ok], minlength=us.size)
            sizes += np.bincount(lab[ok], weights=size[ok], minlength=us.size)
        scored = sizes > 0
        unit = self.criterion.unit(torch.from_numpy(sums), torch.from_numpy(sizes)).double().numpy()
        unit = np.where(scored, unit, 0.0)
        return UnitScores(np.asarray(unit, dtype=np.float64), scored, params)


def nothing_scored(criterion: Criterion, level: str, what: str, notes: Sequence[str]) -> NothingToPruneError:
    """The error for a criterion that can score none of a model's units at ``level``."""
    why = "; ".join(n.replace(_ON_OTHERS, "") for n in notes) or "none of their weights is one it reads"
    return NothingToPruneError(
        f"criterion {criterion.name!r} can score none of this model's {what} ({why}); criteria for {what}: "
        f"{', '.join(criteria_for(level))}"
    )


def _needs(name: str) -> frozenset[str]:
    return resolve_criterion(name).needs


def _needs_data(name: str) -> bool:
    return bool(_needs(name) - {"synflow", "bn_gamma"})


def stack_rows(blocks: Sequence[nn.Module]) -> Tensor:
    """The blocks of one stack as rows ``[n_blocks, P]``: each block's parameters flattened in order
    (float32; a copy of the stack's parameters). Raises :class:`~prunekit.errors.ConfigError` when the
    blocks' parameter shapes differ."""
    from prunekit.errors import ConfigError

    shapes = [[tuple(p.shape) for p in b.parameters()] for b in blocks]
    if any(s != shapes[0] for s in shapes[1:]):
        raise ConfigError(
            "comparing whole blocks by their parameters needs blocks of equal shapes in a stack; "
            "these differ (pruned unevenly?): use criterion='influence' for layers"
        )
    return torch.stack([torch.cat([p.detach().float().reshape(-1) for p in b.parameters()]) for b in blocks])


def row_scores(criterion: Criterion, rows: Tensor, key: str, seed: int = 0) -> np.ndarray:
    """Unit scores of the rows of a ``[n, P]`` matrix scored as one layer's weight (each row a unit): how a
    row-native criterion compares whole blocks (FPGM: ``sum_j ||theta_i - theta_j||_2`` over the stack)."""
    s = ScoreInput(rows, LayerStats(key), None, key, seed)
    with torch.no_grad():
        c = criterion.contribution(s)
        sums = c.sum(1, dtype=torch.float64)
    sizes = torch.full((rows.shape[0],), float(rows.shape[1]), dtype=torch.float64)
    return criterion.unit(sums, sizes).double().numpy()
