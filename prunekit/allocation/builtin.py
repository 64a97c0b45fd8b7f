"""Allocation: how a sparsity budget is spread over layers.

An allocation takes a description of every prunable layer (shape, unit scores) and the overall target
sparsity, and returns the sparsity of each layer. Overall sparsity is always measured in weights:
``sum(pruned) / sum(numel)`` over the layers it was given.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from prunekit.criteria import lamp_scores
from prunekit.errors import ConfigError
from prunekit.registry import Registry

__all__ = [
    "ALLOCATIONS",
    "Allocation",
    "DEFAULT_MAX_SPARSITY",
    "ERK",
    "Global",
    "LAMP",
    "LayerInfo",
    "OWL",
    "Uniform",
    "outlier_ratio",
    "owl_sparsities",
    "repeated_block",
    "resolve_allocation",
    "shift_to_target",
]


@dataclass
class LayerInfo:
    """What an allocation may look at: a layer's name, weight shape and its unit scores and sizes."""

    name: str
    shape: tuple[int, ...]
    unit_scores: Tensor | None = None
    unit_sizes: Tensor | None = None

    @property
    def numel(self) -> int:
        """The number of weights in the layer (the product of ``shape``)."""
        return math.prod(self.shape)


class Allocation(ABC):
    """Base class: ``allocate(layers, sparsity) -> {layer name: sparsity}``."""

    name: str = "allocation"
    needs_scores: bool = False

    @abstractmethod
    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        """Per layer name, the fraction of its weights (or units) to remove so that ``sparsity`` (a fraction
        in [0, 1)) of the weights of all ``layers`` go. Allocations with ``needs_scores`` read
        ``LayerInfo.unit_scores`` / ``unit_sizes``; the others only the shapes."""

    def __str__(self) -> str:
        return self.name


#: the allocations by name: the built-in ones register their class (:func:`resolve_allocation` instantiates it
#: with its defaults); an instance may be registered too
ALLOCATIONS: Registry[type[Allocation] | Allocation] = Registry("allocation")


def _unit_scores(layers: list[LayerInfo], allocation: str) -> list[Tensor]:
    """Every layer's ``unit_scores``; :class:`~prunekit.errors.ConfigError` when one has none."""
    scores = [layer.unit_scores for layer in layers]
    present = [s for s in scores if s is not None]
    if len(present) != len(scores):
        raise ConfigError(f"the {allocation} allocation needs each layer's scores (LayerInfo.unit_scores)")
    return present


def _unit_sizes(layers: list[LayerInfo], allocation: str) -> list[Tensor]:
    """Every layer's ``unit_sizes``; :class:`~prunekit.errors.ConfigError` when one has none."""
    sizes = [layer.unit_sizes for layer in layers]
    present = [z for z in sizes if z is not None]
    if len(present) != len(sizes):
        raise ConfigError(f"the {allocation} allocation needs each layer's unit sizes (LayerInfo.unit_sizes)")
    return present


@ALLOCATIONS.register("uniform", "the same sparsity in every layer (layer-wise pruning)", aliases=("layerwise",))
@dataclass(frozen=True)
class Uniform(Allocation):
    """Every layer gets the target sparsity."""

    name: str = "uniform"

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        """``sparsity`` for every layer."""
        return {layer.name: float(sparsity) for layer in layers}


def _global_threshold(scores: list[Tensor], sizes: list[Tensor], names: list[str], sparsity: float) -> dict[str, float]:
    """Remove the lowest-scoring units across all layers until ``sparsity`` of all weights are gone."""
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    all_scores = torch.cat([s.reshape(-1).to(dtype) for s in scores])
    all_sizes = torch.cat([z.reshape(-1).double() for z in sizes])
    owner = torch.cat([torch.full((s.numel(),), i, dtype=torch.long) for i, s in enumerate(scores)])
    total = all_sizes.sum().item()
    if bool((all_sizes == 1).all()):  # single weights: an O(n) selection instead of a sort
        from prunekit.granularity.patterns import lowest_k_mask

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


#: Global's cap in mask form when ``max_sparsity`` is not given
DEFAULT_MAX_SPARSITY = 0.99


@ALLOCATIONS.register("global", "one score threshold across all layers (global pruning)")
@dataclass(frozen=True)
class Global(Allocation):
    """Rank units of all layers together and remove the lowest until the target is reached.

    ``max_sparsity`` caps every layer (so that no layer collapses); the budget a capped layer cannot take
    goes to the others. None (the default) means the granularity's default cap: 0.99 for masks
    (:data:`DEFAULT_MAX_SPARSITY`), ``min(0.9, 2 * sparsity)`` for physical units (channel groups, heads,
    blocks); a value given explicitly is always honoured.

    ``count``: what the budget counts, ``"weights"`` (default: ``sparsity`` of all weights go) or
    ``"units"`` (``sparsity`` of all units go, each unit counting one whatever its size: network slimming's
    "prune 50% of the channels", Liu et al. 2017); the returned per-layer fractions count the same thing.
    """

    name: str = "global"
    needs_scores: bool = True
    max_sparsity: float | None = None
    count: str = "weights"

    def __post_init__(self) -> None:
        if self.max_sparsity is not None and (
            isinstance(self.max_sparsity, bool)
            or not isinstance(self.max_sparsity, (int, float))
            or not 0 < self.max_sparsity <= 1
        ):
            raise ConfigError(
                f"Global(max_sparsity=...) must be in (0, 1] or None (the default cap), got {self.max_sparsity!r}"
            )
        if self.count not in ("weights", "units"):
            raise ConfigError(f"Global(count=...) counts 'weights' or 'units', got {self.count!r}")

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        """One threshold on the unit scores of all layers (ties: earlier layers and lower indices first),
        then every layer above the cap is clamped and its excess spread over the others."""
        if self.count == "units":
            layers = [
                LayerInfo(layer.name, (int(s.numel()),), s, torch.ones(int(s.numel()), dtype=torch.long))
                for layer, s in zip(layers, _unit_scores(layers, "global"))
            ]
        result = _global_threshold(
            _unit_scores(layers, "global"),
            _unit_sizes(layers, "global"),
            [layer.name for layer in layers],
            sparsity,
        )
        cap = DEFAULT_MAX_SPARSITY if self.max_sparsity is None else float(self.max_sparsity)
        return _cap(result, layers, sparsity, cap)


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
    return {
        **capped,
        **_cap(
            _global_threshold(_unit_scores(rest, "global"), _unit_sizes(rest, "global"), [r.name for r in rest], sub),
            rest,
            sub,
            cap,
        ),
    }


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
        """Per layer ``1 - eps * (sum(dims) / prod(dims)) ** power_scale``; layers that would be denser than 1
        are kept dense (0.0) and ``eps`` is solved again over the rest."""
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
        """One global threshold on the LAMP scores of the layers' unit scores; units already removed
        (score ``-inf``) count first."""
        return _global_threshold(
            [_lamp_of_alive(s) for s in _unit_scores(layers, "LAMP")],
            _unit_sizes(layers, "LAMP"),
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


def outlier_ratio(scores: list[Tensor], multiple: float = 5.0) -> float:
    """OWL's layer-wise outlier distribution (Yin et al. 2023): share of scores above ``multiple`` x their mean.

    ``scores``: the element scores of every matrix of one layer (in the paper a decoder block and its Wanda
    scores ``|W_ij| * ||X_j||``), pooled together; any shapes. An empty layer has ratio 0.
    """
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    if flat.numel() == 0:
        return 0.0
    return float((flat > multiple * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity"): non-uniform sparsity from outlier ratios.

    Layers with more outliers keep more weights. The ratios ``D_l`` are mapped linearly onto densities in
    ``[0, 2 * lam]``, shifted so the mean density is ``1 - sparsity``: ``S_l = 1 - (d_l - mean(d) + 1 - S)``
    with ``d_l = 2 lam (D_l - min D) / (max D - min D)``. The layer sparsities span ``2 lam`` and their mean
    is ``S`` (so with equal parameter counts per layer the overall sparsity is the requested one; the
    :class:`OWL` allocation shifts them when the counts differ). Values are clamped into [0, 1].
    """
    if not ratios:
        return []
    t = torch.tensor(ratios, dtype=torch.float64)
    spread = (t.max() - t.min()).item()
    d = torch.zeros_like(t) if spread == 0 else (t - t.min()) * (2 * lam / spread)
    density = d - d.mean() + (1.0 - sparsity)
    return [float(min(max(1.0 - x, 0.0), 1.0)) for x in density]


def repeated_block(name: str) -> str:
    """The outermost numbered block a layer sits in, found from its dotted module name.

    ``model.layers.3.self_attn.q_proj`` -> ``model.layers.3`` (a decoder block), ``layer1.0.conv2`` ->
    ``layer1.0`` (a residual block), ``features.3`` -> ``features.3``; a name with no purely numeric part
    (``conv1``, ``fc``) is its own block. The default grouping of :class:`OWL`.
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name


def shift_to_target(
    values: dict[str, float], numel: dict[str, int], sparsity: float, high: float = 1.0
) -> dict[str, float]:
    """Add one constant ``c`` to every sparsity so that ``sum(numel * clamp(s + c, 0, high)) / sum(numel)`` is
    ``sparsity``: the overall sparsity in weights meets the target while the differences between layers stay
    (except where a layer is clamped). Closed form when nothing is clamped, bisection otherwise.
    """
    if not values:
        return {}
    high = max(high, sparsity)
    total = sum(numel[n] for n in values)
    if total == 0:
        return dict(values)
    c = sparsity - sum(values[n] * numel[n] for n in values) / total
    if all(0.0 <= v + c <= high for v in values.values()):
        return {n: v + c for n, v in values.items()}

    def overall(shift: float) -> float:
        return sum(numel[n] * min(max(v + shift, 0.0), high) for n, v in values.items()) / total

    lo, hi = -max(values.values()), high - min(values.values())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if overall(mid) < sparsity:
            lo = mid
        else:
            hi = mid
    return {n: min(max(v + hi, 0.0), high) for n, v in values.items()}


@ALLOCATIONS.register("owl", "outlier-weighed layerwise sparsity: more outlier scores, fewer removed (Yin et al. 2023)")
@dataclass(frozen=True)
class OWL(Allocation):
    """OWL, Outlier Weighed Layerwise sparsity (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity (OWL): A
    Missing Secret Sauce for Pruning LLMs to High Sparsity").

    For every layer ``l`` the outlier ratio ``D_l`` is the share of its scores above ``M`` x their mean
    (:func:`outlier_ratio`); :func:`owl_sparsities` maps the ratios to sparsities spanning ``2 * lam``
    around the target, more outliers meaning fewer weights removed. Works with any criterion: it reads the
    unit scores it is given (for unstructured pruning these are the element scores; for coarser units the
    share counts the weights of the units scoring above ``M`` x the size-weighted mean). Scores that are not
    finite (weights an earlier pruning removed score ``-inf``) are left out of the ratio.

    A "layer" of OWL is a *block*: in the paper, a decoder block with all its matrices pooled. ``block_of``
    maps a weight's module name to its block; the default :func:`repeated_block` pools the weights of each
    numbered block of the model (``model.layers.3.*``, ``layer1.0.*``), and a weight outside numbered blocks
    is its own; ``block_of=None`` makes every weight its own block. All weights of a block get its
    sparsity. Blocks differ in size, so the sparsities from :func:`owl_sparsities` are shifted by one
    constant (:func:`shift_to_target`) until the overall sparsity in weights meets the target (with equal
    block sizes the shift is zero and the result is the paper's); no block exceeds ``max_sparsity``.

    Raises :class:`~prunekit.errors.ConfigError` for ``lam`` < 0, ``M`` <= 0 or ``max_sparsity`` outside (0, 1].
    """

    name: str = "owl"
    needs_scores: bool = True
    lam: float = 0.08
    M: float = 5.0
    block_of: Callable[[str], str] | None = repeated_block
    max_sparsity: float = 0.99

    def __post_init__(self) -> None:
        if not self.lam >= 0:
            raise ConfigError(f"OWL lam must be >= 0 (the sparsities span 2 * lam), got {self.lam!r}")
        if not self.M > 0:
            raise ConfigError(f"OWL M must be > 0 (a score is an outlier above M x the mean), got {self.M!r}")
        if not 0 < self.max_sparsity <= 1:
            raise ConfigError(f"OWL max_sparsity must be in (0, 1], got {self.max_sparsity!r}")

    def block(self, name: str) -> str:
        """The block (OWL's layer) that the weight of module ``name`` belongs to."""
        return name if self.block_of is None else self.block_of(name)

    def ratio(self, scores: list[Tensor], sizes: list[Tensor | None] | None = None) -> float:
        """Outlier ratio of one block from the unit scores of its weights (and unit sizes; None: 1 each)."""
        sizes = sizes or [None] * len(scores)
        flat = torch.cat([s.reshape(-1).double() for s in scores]) if scores else torch.zeros(0)
        size = (
            torch.cat([torch.ones(s.numel()) if z is None else z.reshape(-1).double() for s, z in zip(scores, sizes)])
            if scores
            else torch.zeros(0)
        )
        finite = torch.isfinite(flat)
        flat, size = flat[finite], size[finite]
        if bool((size == 1).all()):
            return outlier_ratio([flat], self.M)
        total = size.sum()
        if total <= 0:
            return 0.0
        mean = (flat * size).sum() / total
        return float(size[flat > self.M * mean].sum() / total)

    def sparsities(self, ratios: dict[str, float], numel: dict[str, int], sparsity: float) -> dict[str, float]:
        """Block sparsities from block outlier ratios and sizes (in weights), meeting ``sparsity`` overall."""
        names = list(ratios)
        raw = dict(zip(names, owl_sparsities([ratios[n] for n in names], sparsity, self.lam)))
        return shift_to_target(raw, numel, sparsity, self.max_sparsity)

    def allocate(self, layers: list[LayerInfo], sparsity: float) -> dict[str, float]:
        """Every layer gets its block's sparsity (see the class docstring). Raises
        :class:`~prunekit.errors.ConfigError` when a layer comes without unit scores."""
        blocks: dict[str, list[LayerInfo]] = {}
        for layer in layers:
            blocks.setdefault(self.block(layer.name), []).append(layer)
        ratios, numel = {}, {}
        for key, members in blocks.items():
            ratios[key] = self.ratio(_unit_scores(members, "OWL"), [m.unit_sizes for m in members])
            numel[key] = sum(m.numel for m in members)
        per_block = self.sparsities(ratios, numel, sparsity)
        return {layer.name: per_block[self.block(layer.name)] for layer in layers}


def resolve_allocation(value: str | Allocation | None) -> Allocation:
    """A registered name or an :class:`Allocation`; None means uniform. A registered class is instantiated
    with its defaults. Raises :class:`~prunekit.errors.UnknownNameError` listing the names."""
    if value is None:
        return Uniform()
    obj = ALLOCATIONS.resolve(value)
    return obj() if isinstance(obj, type) else obj
