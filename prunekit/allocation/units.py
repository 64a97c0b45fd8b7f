"""Allocation over physical units: the core allocations decide each unit set's share.

Channel groups, attention blocks and stacks of blocks are handed to an allocation of
:data:`prunekit.allocation.builtin.ALLOCATIONS` (uniform, global, erk, lamp, and whatever else is registered there)
as :class:`~prunekit.allocation.builtin.LayerInfo` ``(name, shape, unit_scores, unit_sizes)``: ``shape`` is
``(units, parameters per unit)``, ``unit_sizes`` the parameters each unit holds, so that sparsity is counted
in weights as everywhere in prunekit. The allocation returns a sparsity per set;
:func:`allocate_units` turns it into the lowest-scoring units of that set: in every segment of a
concatenation (one per producing layer: DenseNet's dense blocks, Inception's branches) ``floor(s * n)``
of its ``n`` units, at least one unit kept, the kept count rounded up to a multiple of ``round_to``, only
removable units. With equal unit sizes in a set (the usual case) ``s`` is also the fraction of its units;
under ``uniform`` every set loses ``floor(s * n)`` units.

The global cap is one thing: :class:`~prunekit.allocation.builtin.Global`'s ``max_sparsity``, the most any set may
lose. The structural option ``global_cap`` sets it; when neither is given the structural default is
``min(0.9, 2 * sparsity)`` (so that no layer collapses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from prunekit.allocation.builtin import ALLOCATIONS, Allocation, Global, LayerInfo, resolve_allocation
from prunekit.errors import ConfigError

__all__ = ["allocate_units", "default_global_cap", "remove_lowest", "structural_allocation", "unique_names"]


def default_global_cap(sparsity: float) -> float:
    """The structural default of the global cap: ``min(0.9, 2 * sparsity)``."""
    return min(0.9, 2 * sparsity)


def structural_allocation(allocation: Any, sparsity: float, global_cap: float | None = None) -> Allocation:
    """The allocation a structural plan uses: ``allocation`` (a registered name, an
    :class:`~prunekit.allocation.builtin.Allocation` or None for uniform) with the global cap resolved.

    ``global_cap`` in (0, 1) is :class:`~prunekit.allocation.builtin.Global`'s ``max_sparsity``; it is refused for
    any other allocation, and when it contradicts a ``max_sparsity`` given explicitly. A ``Global`` without
    ``max_sparsity`` (None) gets ``min(0.9, 2 * sparsity)``; an explicit one is honoured as given. Raises
    :class:`~prunekit.errors.ConfigError` naming what is supported.
    """
    alloc = resolve_allocation(allocation)
    if not isinstance(alloc, Allocation) or not callable(getattr(alloc, "allocate", None)):
        raise ConfigError(f"allocation {alloc!r} is not an Allocation; use one of: {', '.join(ALLOCATIONS.names())}")
    if global_cap is not None:
        if isinstance(global_cap, bool) or not isinstance(global_cap, (int, float)) or not 0 < global_cap < 1:
            raise ConfigError(f"global_cap must be in (0, 1), got {global_cap!r}")
        if not isinstance(alloc, Global):
            raise ConfigError(
                f"global_cap is the most one group may lose under allocation='global' (Global.max_sparsity); "
                f"allocation {alloc} does not read it: drop global_cap or use allocation='global'"
            )
        if alloc.max_sparsity is not None and alloc.max_sparsity != global_cap:
            raise ConfigError(
                f"global_cap={global_cap} contradicts Global(max_sparsity={alloc.max_sparsity}); give one of them"
            )
        return dataclasses.replace(alloc, max_sparsity=float(global_cap))
    if isinstance(alloc, Global) and alloc.max_sparsity is None:
        return dataclasses.replace(alloc, max_sparsity=default_global_cap(sparsity))
    return alloc


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


def remove_lowest(
    scores: np.ndarray,
    removable: np.ndarray,
    sparsity: float,
    *,
    segments: np.ndarray | None = None,
    round_to: int | None = None,
) -> np.ndarray:
    """Indices of the units one set loses at ``sparsity``: per segment ``floor(sparsity * n)`` of its ``n``
    units, the lowest-scoring removable ones, at least one unit kept, the kept count rounded up to a
    multiple of ``round_to``."""
    scores = np.asarray(scores, dtype=np.float64)
    removable = np.asarray(removable, dtype=bool)
    seg = np.zeros(len(scores), dtype=np.int64) if segments is None else np.asarray(segments, dtype=np.int64)
    parts = []
    for k in np.unique(seg).tolist():
        in_k = seg == k
        n = int(in_k.sum())
        keep = _rounded_keep(n, max(1, n - math.floor(sparsity * n + 1e-9)), round_to)
        parts.append(_lowest(scores, removable & in_k, n - keep))
    return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def allocate_units(
    names: Sequence[str],
    scores: Sequence[np.ndarray],
    sizes: Sequence[np.ndarray],
    removable: Sequence[np.ndarray],
    sparsity: float,
    allocation: Allocation,
    *,
    segments: Sequence[np.ndarray | None] | None = None,
    round_to: int | None = None,
) -> tuple[list[np.ndarray], dict[str, float]]:
    """Units to remove per set (indices) and the sparsity the allocation gave each set.

    ``names`` (unique), ``scores`` (float ``[n]``, higher is more important), ``sizes`` (parameters per unit),
    ``removable`` (bool ``[n]``) and ``segments`` (per set: a segment id per unit, or None) describe the
    sets. Raises :class:`~prunekit.errors.ConfigError` when the allocation does not return a sparsity in
    [0, 1) for every set.
    """
    if not names:
        return [], {}
    infos = []
    for name, s, z in zip(names, scores, sizes):
        n = len(s)
        z = np.asarray(z, dtype=np.float64)
        per_unit = max(1, round(float(z.sum()) / max(n, 1)))
        infos.append(
            LayerInfo(
                name,
                (n, per_unit),
                torch.as_tensor(np.asarray(s, dtype=np.float64)),
                torch.as_tensor(np.where(z > 0, z, 1.0)),
            )
        )
    per = allocation.allocate(infos, float(sparsity))
    out = []
    for i, name in enumerate(names):
        given = per.get(name)
        if given is None or not (0.0 <= float(given) <= 1.0) or math.isnan(float(given)):
            raise ConfigError(
                f"allocation {allocation} gave {name!r} the sparsity {given!r}; an allocation must "
                f"return one in [0, 1] for every layer (supported: {', '.join(ALLOCATIONS.names())})"
            )
        seg = segments[i] if segments is not None and i < len(segments) else None
        out.append(remove_lowest(scores[i], removable[i], float(given), segments=seg, round_to=round_to))
    return out, {n: float(per[n]) for n in names}


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` made unique by a ``#k`` suffix on repeats (allocations key their result by name)."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n}#{k}")
    return out
