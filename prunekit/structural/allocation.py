"""Allocation over dependency groups: how many units each group loses.

``uniform`` removes the same fraction of every group; ``global`` ranks all units of all groups on
normalised scores and removes the lowest, with a per-group cap so that no layer collapses. Both can round
the number of kept units to a multiple (``round_to=8``) for hardware-friendly channel counts. Registered in
:data:`GROUP_ALLOCATIONS` as ``allocate(scores, removable, sparsity, **opts) -> list[np.ndarray]`` (indices
of the units to remove, per group).
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


@GROUP_ALLOCATIONS.register("uniform", "the same fraction of every group's units")
def uniform(
    scores: list[np.ndarray], removable: list[np.ndarray], sparsity: float, *, round_to: int | None = None, **_: object
) -> list[np.ndarray]:
    out = []
    for s, r in zip(scores, removable):
        n = len(s)
        keep = _rounded_keep(n, max(1, n - int(math.floor(sparsity * n + 1e-9))), round_to)
        out.append(_lowest(s, r, n - keep))
    return out


@GROUP_ALLOCATIONS.register("global", "rank units of all groups together (normalised scores), capped per group")
def global_(
    scores: list[np.ndarray],
    removable: list[np.ndarray],
    sparsity: float,
    *,
    round_to: int | None = None,
    global_cap: float | None = None,
    **_: object,
) -> list[np.ndarray]:
    """Scores are divided by their group's mean so that groups of different scale compare; the lowest
    ``sparsity`` fraction of all units is removed, but no group loses more than ``global_cap`` (default
    ``min(0.9, 2 * sparsity)``) of its units."""
    cap = global_cap if global_cap is not None else min(0.9, 2 * sparsity)
    if not 0 < cap < 1:
        raise ConfigError(f"global_cap must be in (0, 1), got {cap}")
    total = sum(len(s) for s in scores)
    budget = int(math.floor(sparsity * total + 1e-9))
    pool = []
    for g, (s, r) in enumerate(zip(scores, removable)):
        norm = s / (np.mean(np.abs(s)) + 1e-12)
        for i in np.nonzero(r)[0]:
            pool.append((float(norm[i]), g, int(i)))
    pool.sort()
    limit = [min(int(math.floor(cap * len(s))), len(s) - 1) for s in scores]
    taken: list[list[int]] = [[] for _ in scores]
    used = 0
    for _score, g, i in pool:
        if used >= budget:
            break
        if len(taken[g]) >= limit[g]:
            continue
        taken[g].append(i)
        used += 1
    out = []
    for g, s in enumerate(scores):
        n = len(s)
        keep = _rounded_keep(n, n - len(taken[g]), round_to)
        # keep the lowest-ranked of the chosen ones removed, drop the rest back
        chosen = sorted(taken[g], key=lambda i: s[i])[: n - keep]
        out.append(np.sort(np.asarray(chosen, dtype=np.int64)))
    return out
