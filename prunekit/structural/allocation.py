"""Allocation over dependency groups: how many units each group loses.

``uniform`` removes the same fraction of every group; ``global`` ranks all units of all groups on
normalised scores and removes the lowest, with a per-group cap so that no layer collapses. Both can round
the number of kept units to a multiple (``round_to=8``) for hardware-friendly channel counts. Registered in
:data:`GROUP_ALLOCATIONS` as ``allocate(scores, removable, sparsity, **opts) -> list[np.ndarray]`` (indices
of the units to remove, per group).

A group can join the outputs of several layers side by side (a concatenation: DenseNet's dense blocks,
Inception's branches). Its units then fall into segments, one per producing layer, passed as
``segments=`` (per group: a segment id for every unit, or None). Both allocations apply their fraction and
cap to every segment, so each producing layer loses its share of channels: removing half of a
concatenation never empties one branch while leaving another whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from prunekit.errors import ConfigError
from prunekit.registry import Registry

GroupAllocation = Callable[..., list[np.ndarray]]


def _validate(name: str, obj: object) -> None:
    if not callable(obj):
        raise ConfigError(f"group allocation {name!r} must be callable")


GROUP_ALLOCATIONS: Registry[GroupAllocation] = Registry("group allocation", validate=_validate)


def _rounded_keep(n: int, keep: int, round_to: int | None) -> int:
    if not round_to or round_to <= 1 or n <= round_to:
        return keep
    return min(n, int(math.ceil(keep / round_to) * round_to))


def _lowest(scores: np.ndarray, removable: np.ndarray, k: int) -> np.ndarray:
    cand = np.nonzero(removable)[0]
    if k <= 0 or cand.size == 0:
        return np.zeros(0, dtype=np.int64)
    order = cand[np.argsort(scores[cand], kind="stable")]
    return np.sort(order[: min(k, cand.size)])


def _segment_list(segments: list[np.ndarray | None] | None, scores: list[np.ndarray]) -> list[np.ndarray]:
    out = []
    for g, s in enumerate(scores):
        seg = segments[g] if segments is not None and g < len(segments) else None
        out.append(np.zeros(len(s), dtype=np.int64) if seg is None else np.asarray(seg, dtype=np.int64))
    return out


@GROUP_ALLOCATIONS.register("uniform", "the same fraction of every group's units (of every segment of a concatenation)")
def uniform(
    scores: list[np.ndarray],
    removable: list[np.ndarray],
    sparsity: float,
    *,
    round_to: int | None = None,
    segments: list[np.ndarray | None] | None = None,
    **_: object,
) -> list[np.ndarray]:
    out = []
    for s, r, seg in zip(scores, removable, _segment_list(segments, scores)):
        r = np.asarray(r, dtype=bool)
        parts = []
        for k in np.unique(seg).tolist():
            in_k = seg == k
            n = int(in_k.sum())
            keep = _rounded_keep(n, max(1, n - int(math.floor(sparsity * n + 1e-9))), round_to)
            parts.append(_lowest(s, r & in_k, n - keep))
        out.append(np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64))
    return out


@GROUP_ALLOCATIONS.register("global", "rank units of all groups together (normalised scores), capped per group")
def global_(
    scores: list[np.ndarray],
    removable: list[np.ndarray],
    sparsity: float,
    *,
    round_to: int | None = None,
    global_cap: float | None = None,
    segments: list[np.ndarray | None] | None = None,
    **_: object,
) -> list[np.ndarray]:
    """Scores are divided by their group's mean so that groups of different scale compare; the lowest
    ``sparsity`` fraction of all units is removed, but no group (no segment of a concatenation) loses more
    than ``global_cap`` (default ``min(0.9, 2 * sparsity)``) of its units."""
    cap = global_cap if global_cap is not None else min(0.9, 2 * sparsity)
    if not 0 < cap < 1:
        raise ConfigError(f"global_cap must be in (0, 1), got {cap}")
    segs = _segment_list(segments, scores)
    total = sum(len(s) for s in scores)
    budget = int(math.floor(sparsity * total + 1e-9))
    pool = []
    for g, (s, r) in enumerate(zip(scores, removable)):
        norm = s / (np.mean(np.abs(s)) + 1e-12)
        for i in np.nonzero(r)[0]:
            pool.append((float(norm[i]), g, int(i)))
    pool.sort()
    sizes = [np.bincount(seg) for seg in segs]
    limit = [np.minimum(np.floor(cap * n).astype(np.int64), n - 1) for n in sizes]
    taken_per = [np.zeros(len(n), dtype=np.int64) for n in sizes]
    taken: list[list[int]] = [[] for _ in scores]
    used = 0
    for _score, g, i in pool:
        if used >= budget:
            break
        k = segs[g][i]
        if taken_per[g][k] >= limit[g][k]:
            continue
        taken[g].append(i)
        taken_per[g][k] += 1
        used += 1
    out = []
    for g, s in enumerate(scores):
        chosen_all = np.asarray(taken[g], dtype=np.int64)
        parts = []
        for k, n in enumerate(sizes[g].tolist()):
            if n == 0:
                continue
            mine = chosen_all[segs[g][chosen_all] == k] if chosen_all.size else chosen_all
            keep = _rounded_keep(n, n - len(mine), round_to)
            # keep the lowest-ranked of the chosen ones removed, drop the rest back
            parts.append(mine[np.argsort(s[mine], kind="stable")][: n - keep])
        out.append(np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64))
    return out
