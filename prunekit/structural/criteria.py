"""Group criteria: one importance score per removable unit of a dependency group.

A criterion scores every member of a group (each coupled parameter dimension) per index, then reduces over
the members and over the indices of each unit, so a decision reflects every layer the unit lives in
(DepGraph, Fang et al. 2023). Scores are higher for more important units. Criteria are registered in
:data:`GROUP_CRITERIA` and called as ``criterion(group, ctx) -> np.ndarray`` (one score per class).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from prunekit.errors import ConfigError, MissingDataError
from prunekit.registry import Registry
from prunekit.structural.trace import Group


@dataclass
class ScoreContext:
    """What criteria may read: the tensors by key, gradient statistics by key, a seeded generator."""

    tensors: dict[str, Tensor]
    params: set[str]
    grads: dict[str, Tensor] = field(default_factory=dict)  # sum of gradients over calibration batches
    grad_sq: dict[str, Tensor] = field(default_factory=dict)  # sum of squared gradients (Fisher diagonal)
    norm_weights: set[str] = field(default_factory=set)  # weights of normalisation layers (BN, LN, GN)
    producers: set[tuple[str, int]] = field(default_factory=set)  # output dims of conv / linear / embedding
    seed: int = 0
    cache: dict = field(default_factory=dict)


GroupCriterion = Callable[[Group, ScoreContext], np.ndarray]


def _validate(name: str, obj: object) -> None:
    if not callable(obj):
        raise ConfigError(f"group criterion {name!r} must be callable as criterion(group, ctx)")


GROUP_CRITERIA: Registry[GroupCriterion] = Registry("group criterion", validate=_validate)


def _per_index(t: Tensor, dim: int, fn: Callable[[Tensor], Tensor]) -> np.ndarray:
    """Reduce ``fn(t)`` over every dimension except ``dim``: one value per index along ``dim``."""
    x = fn(t.detach().float())
    if x.dim() == 0:
        return np.full(t.shape[dim] if t.dim() else 1, float(x))
    others = [d for d in range(x.dim()) if d != dim]
    if others:
        x = x.sum(dim=others)
    return x.double().cpu().numpy()


def _norm_per_index(t: Tensor, dim: int, p: int) -> np.ndarray:
    """``sum |t|^p`` over every dimension except ``dim``, without a temporary of the tensor's size: the
    dimensions after ``dim`` are reduced by a norm (a fast contiguous reduction), those before it in chunks
    of rows (a norm over a leading dimension is a slow strided reduction)."""
    x = t.detach()
    if x.dim() == 0:
        return np.full(1, float(x.float().abs() ** p))
    if not x.is_contiguous():
        x = x.contiguous()
    n = x.shape[dim]
    lead = int(np.prod(x.shape[:dim])) if dim else 1
    x3 = x.reshape(lead, n, -1).float()

    def part(rows: Tensor) -> Tensor:  # (r, n, b) -> (n,): sum of |x|^p over rows and the trailing dimension
        if rows.shape[2] > 64:  # long rows: a norm kernel, no temporary of the chunk's size
            v = torch.linalg.vector_norm(rows, ord=p, dim=2)
            return (v if p == 1 else v**p).sum(0)
        if rows.shape[2] > 1:  # short rows (conv kernels): plain elementwise reductions are faster
            return rows.abs().sum((0, 2)) if p == 1 else (rows * rows).sum((0, 2)) if p == 2 else rows.abs().pow(p).sum((0, 2))
        v = rows[:, :, 0]
        return v.abs().sum(0) if p == 1 else (v * v).sum(0) if p == 2 else v.abs().pow(p).sum(0)

    if lead == 1:
        return part(x3).double().cpu().numpy()
    acc = torch.zeros(n, dtype=torch.float64, device=x.device)
    step = max(1, (1 << 18) // max(n * x3.shape[2], 1))  # chunks of ~256k values stay in cache
    for i in range(0, lead, step):
        acc += part(x3[i: i + step]).double()  # float32 within a chunk, float64 across chunks
    return acc.cpu().numpy()


def _reduce(group: Group, ctx: ScoreContext, per_member: Callable[[str, int], np.ndarray | None]) -> np.ndarray:
    """Sum the per-index values of every member into the units they belong to."""
    scores = np.zeros(group.size)
    for m, lab in zip(group.members, group.index_class):
        ck = (getattr(per_member, "__qualname__", ""), m.param, m.dim)
        if ck in ctx.cache:
            vec = ctx.cache[ck]
        else:
            vec = ctx.cache[ck] = per_member(m.param, m.dim)
        if vec is None:
            continue
        vec = np.asarray(vec, dtype=np.float64).reshape(-1)
        if vec.size != lab.size:  # a statistic of another shape (e.g. a broadcast scalar): one value per index
            vec = np.broadcast_to(vec[:1], lab.shape) if vec.size == 1 else vec[: lab.size]
        ok = lab >= 0
        scores += np.bincount(lab[ok], weights=vec[ok], minlength=group.size)
    return scores


def _weights(ctx: ScoreContext, key: str) -> Tensor | None:
    return ctx.tensors.get(key) if key in ctx.params else None


@GROUP_CRITERIA.register("l1", "group L1 norm: sum of |w| over every coupled slice (Li et al. 2017)")
def l1(group: Group, ctx: ScoreContext) -> np.ndarray:
    """L1 filter norm (Li et al. 2017, "Pruning Filters for Efficient ConvNets"), summed over the group:
    ``s_k = sum_{(p, d) in group} sum_{i in k} ||p[i along d]||_1``."""

    def f(key: str, dim: int) -> np.ndarray | None:
        w = _weights(ctx, key)
        return None if w is None else _norm_per_index(w, dim, 1)

    return _reduce(group, ctx, f)


@GROUP_CRITERIA.register("l2", "group L2 norm: sqrt of the sum of w^2 over every coupled slice")
def l2(group: Group, ctx: ScoreContext) -> np.ndarray:
    """Group L2 norm ``s_k = sqrt(sum_{(p, d)} sum_{i in k} ||p[i along d]||_2^2)`` (group lasso view of
    filter norms; DepGraph, Fang et al. 2023)."""

    def f(key: str, dim: int) -> np.ndarray | None:
        w = _weights(ctx, key)
        return None if w is None else _norm_per_index(w, dim, 2)

    return np.sqrt(_reduce(group, ctx, f))


@GROUP_CRITERIA.register("bn-scale", "|gamma| of the normalisation layers in the group (Liu et al. 2017)")
def bn_scale(group: Group, ctx: ScoreContext) -> np.ndarray:
    """Network slimming (Liu et al. 2017, "Learning Efficient Convolutional Networks through Network
    Slimming"): ``s_k = sum |gamma_k|`` over the group's normalisation layers; groups without one fall back
    to the group L1 norm."""
    if not any(m.param in ctx.norm_weights for m in group.members):
        return l1(group, ctx)

    def f(key: str, dim: int) -> np.ndarray | None:
        if key not in ctx.norm_weights:
            return None
        return _norm_per_index(ctx.tensors[key], dim, 1)

    return _reduce(group, ctx, f)


@GROUP_CRITERIA.register("taylor", "first-order Taylor (g * w summed over the group, squared)")
def taylor(group: Group, ctx: ScoreContext) -> np.ndarray:
    """First-order Taylor importance (Molchanov et al. 2019, "Importance Estimation for Neural Network
    Pruning"): the loss change when a unit is removed, ``s_k = (sum_{s in k} g_s w_s)^2`` with gradients
    accumulated over the calibration batches."""
    if not ctx.grads:
        raise MissingDataError("the Taylor criterion needs gradients: pass calibration= (batches or a loss callable)")

    def f(key: str, dim: int) -> np.ndarray | None:
        w, g = _weights(ctx, key), ctx.grads.get(key)
        if w is None or g is None:
            return None
        return _per_index(w.detach() * g, dim, lambda t: t)

    return np.square(_reduce(group, ctx, f))


@GROUP_CRITERIA.register("hessian", "OBD saliency 0.5 * h_ii * w_i^2 with the Fisher diagonal (LeCun 1990)")
def hessian(group: Group, ctx: ScoreContext) -> np.ndarray:
    """Optimal Brain Damage (LeCun et al. 1990): ``s_k = 1/2 sum_{i in k} h_ii w_i^2``, the Hessian
    diagonal approximated by the empirical Fisher ``h_ii ~ E[g_i^2]`` over calibration batches."""
    if not ctx.grad_sq:
        raise MissingDataError("the Hessian criterion needs gradients: pass calibration= (batches or a loss callable)")

    def f(key: str, dim: int) -> np.ndarray | None:
        w, h = _weights(ctx, key), ctx.grad_sq.get(key)
        if w is None or h is None:
            return None
        return 0.5 * _per_index(h * w.detach().square(), dim, lambda t: t)

    return _reduce(group, ctx, f)


@GROUP_CRITERIA.register("fpgm", "distance to the geometric median of the layer's filters (He et al. 2019)")
def fpgm(group: Group, ctx: ScoreContext) -> np.ndarray:
    """FPGM (He et al. 2019, "Filter Pruning via Geometric Median"): filters near the geometric median are
    redundant. ``s_i = sum_j ||F_i - F_j||_2`` over the filters of each producing layer in the group,
    summed over the group's producers; groups without a producing weight fall back to L2."""
    prods = [m for m in group.members if (m.param, m.dim) in ctx.producers and _weights(ctx, m.param) is not None
             and ctx.tensors[m.param].dim() >= 2]
    if not prods:
        return l2(group, ctx)

    def f(key: str, dim: int) -> np.ndarray | None:
        if (key, dim) not in ctx.producers or key not in ctx.params or ctx.tensors[key].dim() < 2:
            return None
        w = ctx.tensors[key].detach().double().movedim(dim, 0)
        flat = w.reshape(w.shape[0], -1)
        return torch.cdist(flat, flat).sum(1).cpu().numpy()

    return _reduce(group, ctx, f)


@GROUP_CRITERIA.register("lamp", "LAMP score of each unit's squared norm within each layer (Lee et al. 2021)")
def lamp(group: Group, ctx: ScoreContext) -> np.ndarray:
    """LAMP (Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning") on units: per
    member, with ``u_i`` the squared norm of slice ``i`` sorted ascending, ``lamp_i = u_i / sum_{j >= i} u_j``;
    the scores of a unit's slices are summed over the group. Scale-free, so it ranks fairly across layers."""

    def f(key: str, dim: int) -> np.ndarray | None:
        w = _weights(ctx, key)
        if w is None:
            return None
        u = _norm_per_index(w, dim, 2)
        order = np.argsort(u, kind="stable")
        tail = np.cumsum(u[order][::-1])[::-1]
        out = np.empty_like(u)
        out[order] = u[order] / np.maximum(tail, 1e-30)
        return out

    return _reduce(group, ctx, f)


@GROUP_CRITERIA.register("random", "uniform random scores (seeded): the baseline")
def random(group: Group, ctx: ScoreContext) -> np.ndarray:
    """Random unit scores from the seeded generator; the baseline every criterion must beat."""
    rng = np.random.default_rng([ctx.seed, zlib.crc32(group.members[0].param.encode())])
    return rng.random(group.size)
