"""Allocation: how a sparsity budget is spread over layers.

An allocation takes a description of every prunable layer (shape, unit scores) and the overall target
sparsity, and returns the sparsity of each layer. Overall sparsity is always measured in weights:
``sum(pruned) / sum(numel)`` over the layers it was given.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.criteria import lamp_scores
from prunekit.registry import Registry


@dataclass
class LayerInfo:
    """What an allocation may look at: a layer's name, weight shape and its unit scores and sizes."""

    name: str
    shape: tuple[int, ...]
    unit_scores: Tensor | None = None
    unit_sizes: Tensor | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


class Allocation(ABC):
    """Base class: ``allocate(layers, sparsity) -> {layer name: sparsity}``."""

    name: str = "allocation"
    needs_scores: bool = False

    @abstractmethod
    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]: ...

    def __str__(self) -> str:
        return self.name


ALLOCATIONS: Registry[Allocation] = Registry("allocation")


@ALLOCATIONS.register("uniform", "the same sparsity in every layer (layer-wise pruning)", aliases=("layerwise",))
@dataclass(frozen=True)
class Uniform(Allocation):
    """Every layer gets the target sparsity."""

    name: str = "uniform"

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        return {layer.name: float(sparsity) for layer in layers}


def _global_threshold(scores: list[Tensor], sizes: list[Tensor], names: list[str], sparsity: float) -> dict[str, float]:
    """Remove the lowest-scoring units across all layers until ``sparsity`` of all weights are gone."""
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    all_scores = torch.cat([s.reshape(-1).to(dtype) for s in scores])
    all_sizes = torch.cat([z.reshape(-1).double() for z in sizes])
    owner = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    total = all_sizes.sum().item()
    if bool((all_sizes == 1).all()):  # single weights: an O(n) selection instead of a sort
        from prunekit.granularity import lowest_k_mask

        gone = lowest_k_mask(all_scores, round(sparsity * total))
        counts = torch.zeros(len(scores), dtype=torch.float64).index_add_(0, owner[gone], all_sizes[gone])
        return {name: float(counts[i] / scores[i].numel()) for i, name in enumerate(names)}
    order = torch.argsort(all_scores, stable=True)
    cum = torch.cumsum(all_sizes[order], 0)
    target = sparsity * total
    k = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)).item())
    if k < len(cum) and (k == 0 or abs(cum[k].item() - target) < abs(cum[k - 1].item() - target)):
        k += 1
    removed = torch.zeros(len(scores), dtype=torch.float64)
    removed.index_add_(0, owner[order[:k]], all_sizes[order[:k]])
    layer_sizes = torch.tensor([z.double().sum().item() for z in sizes])
    return {name: float(removed[i] / layer_sizes[i]) for i, name in enumerate(names)}


@ALLOCATIONS.register("global", "one score threshold across all layers (global pruning)")
@dataclass(frozen=True)
class Global(Allocation):
    """Rank units of all layers together and remove the lowest until the target is reached.

    ``max_sparsity`` caps every layer (so that no layer collapses); the budget a capped layer cannot take
    goes to the others.
    """

    name: str = "global"
    needs_scores: bool = True
    max_sparsity: float = 0.99

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        result = _global_threshold(
            [layer.unit_scores for layer in layers],  # type: ignore[misc]
            [layer.unit_sizes for layer in layers],  # type: ignore[misc]
            [layer.name for layer in layers],
            sparsity,
        )
        return _cap(result, layers, sparsity, self.max_sparsity)


def _cap(result: dict[str, float], layers: list[LayerInfo], sparsity: float, cap: float) -> dict[str, float]:
    """Clamp layers above ``cap`` and spread the excess over the others by re-thresholding them."""
    over = {n for n, s in result.items() if s > cap}
    if not over:
        return result
    capped = {n: cap for n in over}
    rest = [layer for layer in layers if layer.name not in over]
    total = sum(layer.numel for layer in layers)
    left = sparsity * total - sum(cap * layer.numel for layer in layers if layer.name in over)
    rest_total = sum(layer.numel for layer in rest)
    if not rest or rest_total == 0:
        return {**result, **capped}
    sub = min(max(left / rest_total, 0.0), cap)
    return {**capped, **_cap(_global_threshold(
        [r.unit_scores for r in rest], [r.unit_sizes for r in rest], [r.name for r in rest], sub  # type: ignore[misc]
    ), rest, sub, cap)}


@ALLOCATIONS.register("erk", "Erdos-Renyi-Kernel: density proportional to sum(dims)/prod(dims) (Evci et al. 2020)")
@dataclass(frozen=True)
class ERK(Allocation):
    """Erdos-Renyi(-Kernel) allocation (Mocanu et al. 2018; Evci et al. 2020, "Rigging the Lottery").

    Layer ``l`` with weight dims ``d_1..d_k`` gets density ``eps * (sum_i d_i) / (prod_i d_i)``, with ``eps``
    chosen so that the total density meets the target. Layers whose density would exceed 1 stay dense and
    ``eps`` is solved again over the others. For a Linear layer the kernel dims are absent, which is plain ER.
    """

    name: str = "erk"
    power_scale: float = 1.0

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        raw = {layer.name: (sum(layer.shape) / math.prod(layer.shape)) ** self.power_scale for layer in layers}
        numel = {layer.name: layer.numel for layer in layers}
        dense: set[str] = set()
        budget = (1.0 - sparsity) * sum(numel.values())
        while True:
            free = [n for n in raw if n not in dense]
            left = budget - sum(numel[n] for n in dense)
            denom = sum(raw[n] * numel[n] for n in free)
            eps = left / denom if denom > 0 else 0.0
            newly = {n for n in free if eps * raw[n] > 1.0}
            if not newly:
                break
            dense |= newly
        return {n: (0.0 if n in dense else float(1.0 - eps * raw[n])) for n in raw}


@ALLOCATIONS.register("lamp", "layer-adaptive sparsity from one global threshold on LAMP scores (Lee et al. 2021)")
@dataclass(frozen=True)
class LAMP(Allocation):
    """LAMP allocation (Lee et al. 2021): within each layer score units by ``s_u^2 / sum_{v>=u} s_v^2`` over
    units sorted by their score ``s`` (the weight magnitude for unstructured pruning), then remove the
    lowest LAMP scores globally. Every layer keeps at least its largest unit (its LAMP score is 1)."""

    name: str = "lamp"
    needs_scores: bool = True

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        return _global_threshold(
            [_lamp_of_alive(layer.unit_scores) for layer in layers],  # type: ignore[arg-type]
            [layer.unit_sizes for layer in layers],  # type: ignore[misc]
            [layer.name for layer in layers],
            sparsity,
        )


def _lamp_of_alive(unit_scores: Tensor) -> Tensor:
    """LAMP scores of a layer's units over those still alive; units an earlier pruning removed (score
    ``-inf``) keep ``-inf``, so they count towards the target first."""
    s = unit_scores.double()
    dead = torch.isneginf(s)
    if not bool(dead.any()):
        return lamp_scores(s.pow(2))
    out = torch.full_like(s, float("-inf"))
    out[~dead] = lamp_scores(s[~dead].pow(2))
    return out


def resolve_allocation(value: str | Allocation | None) -> Allocation:
    """A registered name or an :class:`Allocation`; None means uniform."""
    if value is None:
        return Uniform()
    obj = ALLOCATIONS.resolve(value)
    return obj() if isinstance(obj, type) else obj
