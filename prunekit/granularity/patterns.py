"""Granularity: what is removed (the survey's universal / specific speedup axis).

A granularity is a frozen, typed value that says what a *unit* is (a single weight, an N:M group, a
tile, an output channel, an attention head, a block, a hidden dimension). Tensors are shaped like the weight
they belong to in its canonical layout ``[out, in/groups, *kernel]``; layers that store their weight
otherwise (transposed convolutions, transformers' ``Conv1D``) are brought into that layout by
:mod:`prunekit.layout` before a granularity sees them, and the mask is mapped back.

The masking granularities (``Unstructured``, ``NM``, ``Block``, ``Channel()``) turn scores into a keep-mask:

* :meth:`Granularity.unit_sums` sums a criterion's per-weight contributions over each unit and gives the
  unit sizes; the criterion turns them into unit scores (:meth:`prunekit.criteria.Criterion.unit`: the
  mean by default, the squared signed sum for Taylor, LAMP's normalisation within the layer);
* :meth:`Granularity.mask_units` keeps the highest-scoring units of a layer at a sparsity counted in weights;
* :meth:`Granularity.mask` does both with the mean, for element scores.

The physical granularities (``Channel(physical=True)``, ``Head()``, ``Layer()``, ``Embedding()``) remove
units from the architecture; the structural engine carries them out (:attr:`Granularity.physical`), so
they make no masks. :attr:`Granularity.level` names the kind of unit, which is also what a criterion must
have a meaning for (:meth:`prunekit.criteria.Criterion.check_level`).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from prunekit.errors import InvalidSparsityError, PatternError, UnknownNameError

__all__ = [
    "Block",
    "Channel",
    "Embedding",
    "Granularity",
    "Head",
    "Layer",
    "NM",
    "PATTERN_NAMES",
    "Unstructured",
    "kth_lowest",
    "row_mask",
    "lowest_k_mask",
    "check_sparsity",
    "parse_pattern",
]


def kth_lowest(values: Tensor, k: int, dim: int | None = None) -> Tensor:
    """The ``k``-th lowest value (``k`` from 1) of ``values``, as a 0-dim tensor, or with ``dim`` of every
    slice along that dimension (the dimension kept with size 1, as ``kthvalue(..., keepdim=True)``).

    A float32 / float64 CPU tensor is selected by numpy's introselect (``numpy.partition``: 3-12x faster than
    ``torch.kthvalue`` on CPU for the score matrices pruning ranks), anything else by ``torch.kthvalue``; the
    value is the same either way, NaN ranking above every number. Raises ``IndexError`` for ``k`` outside
    ``1..n`` (``n``: the number of values, or the size of ``dim``).
    """
    if values.dim() == 0:  # one value: its own slice along dimension 0 or -1
        values = values.reshape(1)
    n = values.numel() if dim is None else values.shape[dim]
    if not 1 <= k <= n:
        raise IndexError(f"kth_lowest: k={k} is outside 1..{n}")
    if values.device.type == "cpu" and values.dtype in (torch.float32, torch.float64) and values.dim() > 0:
        import numpy as np

        array = values.detach().resolve_neg().numpy()  # a negated view is read as its values
        if dim is None:
            return torch.as_tensor(np.partition(array.reshape(-1), k - 1)[k - 1])
        axis = dim % values.dim()
        picked = np.take(np.partition(array, k - 1, axis=axis), [k - 1], axis=axis)
        return torch.from_numpy(np.ascontiguousarray(picked))
    if dim is None:
        return torch.kthvalue(values.reshape(-1), k).values
    return torch.kthvalue(values, k, dim=dim, keepdim=True).values


def lowest_k_mask(flat: Tensor, k: int) -> Tensor:
    """Boolean mask of the ``k`` lowest entries of a 1-D tensor, in O(n).

    Ties at the threshold go to the lower indices, so the result is deterministic (the same as a stable
    sort) without sorting the whole tensor. NaN ranks above every number (as in ``torch.sort``).
    """
    out = torch.zeros_like(flat, dtype=torch.bool)
    if k <= 0:
        return out
    if k >= flat.numel():
        return ~out
    thr = kth_lowest(flat.cpu(), k).to(flat.device)
    if bool(torch.isnan(thr)):  # fewer than k numbers: all of them, then NaNs (ranked highest) by index
        out, tied = ~torch.isnan(flat), torch.isnan(flat)
    else:
        out, tied = flat < thr, flat == thr
    need = k - int(out.sum())
    if need > 0:
        ties = torch.nonzero(tied).reshape(-1)[:need]
        out[ties] = True
    return out


def _as_2d(t: Tensor) -> Tensor:
    """A weight as [out, everything else]: rows are output units, columns their inputs."""
    return t.reshape(t.shape[0], -1) if t.dim() > 1 else t.reshape(t.shape[0], 1)


@dataclass(frozen=True)
class Granularity:
    """Base class. Subclasses define how weights group into units and how units map back.

    ``level``: the kind of unit (``element`` for single weights, N:M groups and tiles; ``channel``;
    ``head``; ``layer``; ``embedding``). ``physical``: removed from the architecture by the structural
    engine rather than masked.
    """

    kind: ClassVar[str] = "granularity"
    level: ClassVar[str] = "element"

    @property
    def physical(self) -> bool:
        """Whether the structural engine removes these units from the architecture (no masks); False here."""
        return False

    @property
    def criterion_level(self) -> str:
        """The criterion level (:data:`prunekit.criteria.LEVELS`) this granularity's units need; the hidden
        dimensions of ``Embedding()`` are channels of the residual stream."""
        return "channel" if self.level == "embedding" else self.level

    @property
    def fixed_sparsity(self) -> float | None:
        """The sparsity this pattern imposes by itself (N:M), or None when the sparsity is free."""
        return None

    def check(self, name: str, weight: Tensor) -> None:
        """Raise :class:`~prunekit.errors.PatternError` if this pattern cannot be applied to ``weight``
        (canonical ``[out, in/groups, *kernel]``, of layer ``name``); the base class accepts every weight."""

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        """``(sums, sizes)``: per unit, the float64 sum of ``contrib`` (shaped like the canonical weight) over
        the unit's weights, and the number of weights in the unit (long); both 1-D, in unit order."""
        raise NotImplementedError

    def units(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """``(score per unit, weights per unit)``: the mean of the element scores over each unit."""
        sums, sizes = self.unit_sums(scores)
        return (sums / sizes.clamp_min(1).double()).to(scores.dtype), sizes

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        """Turn a boolean keep-flag per unit back into a keep-mask shaped like the weight."""
        raise NotImplementedError

    def keep_units(self, unit_scores: Tensor, unit_sizes: Tensor, sparsity: float) -> Tensor:
        """Boolean keep-flag per unit: the lowest-scoring units go until the weights removed come closest
        to ``sparsity`` of all the layer's weights (ties: lower index first); the highest-scoring unit always
        stays, so a layer is never emptied.

        ``unit_scores``, ``unit_sizes``: 1-D, one entry per unit. Raises
        :class:`~prunekit.errors.InvalidSparsityError` for a sparsity outside [0, 1).
        """
        check_sparsity(sparsity)
        keep = torch.ones_like(unit_scores, dtype=torch.bool)
        target = sparsity * float(unit_sizes.double().sum())
        if target > 0:
            order = torch.argsort(unit_scores, stable=True)
            cum = torch.cumsum(unit_sizes[order].double(), 0)
            # the number of lowest units whose removal comes closest to the target count
            k = int(torch.searchsorted(cum, torch.tensor(target, dtype=torch.float64)).item())
            if k < len(cum) and (k == 0 or abs(cum[k].item() - target) < abs(cum[k - 1].item() - target)):
                k += 1
            # never every unit: the highest-scoring one stays (an emptied layer disconnects the network)
            keep[order[: min(k, len(order) - 1)]] = False
        return keep

    def mask_units(self, unit_scores: Tensor, unit_sizes: Tensor, shape: torch.Size, sparsity: float) -> Tensor:
        """Keep-mask shaped ``shape`` from one score per unit (higher = keep), at ``sparsity`` in weights.

        ``unit_scores``, ``unit_sizes``: 1-D, in the unit order of :meth:`unit_sums`. Raises
        :class:`~prunekit.errors.InvalidSparsityError` for a sparsity outside [0, 1).
        """
        return self.expand(self.keep_units(unit_scores, unit_sizes, sparsity), shape)

    def mask(self, scores: Tensor, sparsity: float) -> Tensor:
        """Keep-mask (True = keep) that removes the lowest-scoring ``sparsity`` fraction of weights; units
        are scored by the mean of their element scores.

        ``scores``: shaped like the canonical weight; the mask has the same shape. Raises
        :class:`~prunekit.errors.InvalidSparsityError` for a sparsity outside [0, 1).
        """
        check_sparsity(sparsity)
        unit_scores, unit_sizes = self.units(scores)
        return self.mask_units(unit_scores, unit_sizes, scores.shape, sparsity)

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Unstructured(Granularity):
    """Single weights (fine-grained, unstructured sparsity; needs sparse kernels or formats to pay off)."""

    kind: ClassVar[str] = "unstructured"

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        """Every weight is a unit: ``contrib`` flattened (float64) and a size of 1 each."""
        flat = contrib.reshape(-1)
        return flat.double(), torch.ones_like(flat, dtype=torch.long)

    def units(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The element scores flattened (in their own dtype) and a size of 1 each."""
        flat = scores.reshape(-1)
        return flat, torch.ones_like(flat, dtype=torch.long)

    def mask_units(self, unit_scores: Tensor, unit_sizes: Tensor, shape: torch.Size, sparsity: float) -> Tensor:
        """:meth:`mask` of the unit scores reshaped to ``shape`` (the sizes are all 1)."""
        return self.mask(unit_scores.reshape(shape), sparsity)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        """The per-weight keep-flags reshaped to ``shape``."""
        return keep_units.reshape(shape)

    def mask(self, scores: Tensor, sparsity: float) -> Tensor:
        """Keep-mask shaped like ``scores`` that drops the ``round(sparsity * numel)`` lowest weights (ties:
        lower index first), never all of them. Raises :class:`~prunekit.errors.InvalidSparsityError` for a
        sparsity outside [0, 1)."""
        check_sparsity(sparsity)
        flat = scores.reshape(-1)  # never every weight: the highest-scoring one stays
        k = min(round(sparsity * flat.numel()), max(flat.numel() - 1, 0))
        return (~lowest_k_mask(flat, k)).reshape(scores.shape)


@dataclass(frozen=True)
class NM(Granularity):
    """N:M semi-structured sparsity: keep ``n`` of every ``m`` consecutive weights along the input dim.

    For a Linear weight [out, in] the groups run along ``in``; for a convolution [out, in, kh, kw] they run
    along ``in`` at each (out, kh, kw) position, the layout sparse tensor cores use after im2col. (Weights
    arrive canonical, so for a GPT-2 ``Conv1D`` [in, out] or a ``ConvTranspose`` [in, out, k...] the groups
    still run along the layer's inputs.)
    2:4 is what NVIDIA Ampere and later accelerate (Mishra et al. 2021, "Accelerating Sparse Deep Neural
    Networks").
    """

    n: int
    m: int
    kind: ClassVar[str] = "n:m"

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 0 < self.n < self.m:
            raise PatternError(f"N:M needs integers 0 < n < m, got {self.n}:{self.m} (e.g. NM(2, 4))")

    @property
    def fixed_sparsity(self) -> float:
        """``1 - n / m``: an N:M pattern fixes the sparsity (0.5 for 2:4)."""
        return 1.0 - self.n / self.m

    def check_sparsity(self, sparsity: float | None, *, spelled: str = "sparsity=") -> None:
        """Raise :class:`~prunekit.errors.InvalidSparsityError` when ``sparsity`` is given and is not
        :attr:`fixed_sparsity` to within 1e-6 (so that the six digits the message prints are accepted back: 2:3
        fixes 1/3, and ``0.333333`` passes). ``spelled``: how the message writes the argument (``"--sparsity "``
        on the command line)."""
        if sparsity is not None and not math.isclose(sparsity, self.fixed_sparsity, abs_tol=1e-6):
            raise InvalidSparsityError(
                f"pattern {self} fixes the sparsity at {self.fixed_sparsity:g}; pass {spelled}{self.fixed_sparsity:g} "
                "or leave it out"
            )

    def check(self, name: str, weight: Tensor) -> None:
        """Raise :class:`~prunekit.errors.PatternError` unless ``weight`` has an input dim (``dim() >= 2``)
        whose size is a multiple of ``m``."""
        if weight.dim() < 2:
            raise PatternError(f"N:M needs a weight with an input dim; {name} has shape {tuple(weight.shape)}")
        if weight.shape[1] % self.m:
            raise PatternError(
                f"{self} cannot be applied to {name}: its input dim has {weight.shape[1]} weights, not a multiple "
                f"of {self.m}. Add it to ignore=[...] (or pass skip_incompatible=True to leave such layers dense)."
            )

    def _grouped(self, t: Tensor) -> Tensor:
        # move the input dim last so consecutive groups of m are contiguous, then split into groups
        moved = t.movedim(1, -1) if t.dim() > 2 else t
        return moved.reshape(-1, self.m)

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        """Every weight is a unit (each group keeps exactly ``n``): ``contrib`` flattened in group order (the
        input dim last, groups of ``m`` consecutive), float64, with a size of 1 each."""
        # every group keeps exactly n weights; as units for allocation each weight stands alone
        flat = self._grouped(contrib).reshape(-1)
        return flat.double(), torch.ones_like(flat, dtype=torch.long)

    def units(self, scores: Tensor) -> tuple[Tensor, Tensor]:
        """The element scores flattened in group order (see :meth:`unit_sums`) and a size of 1 each."""
        flat = self._grouped(scores).reshape(-1)
        return flat, torch.ones_like(flat, dtype=torch.long)

    def mask_units(self, unit_scores: Tensor, unit_sizes: Tensor, shape: torch.Size, sparsity: float | None) -> Tensor:
        """:meth:`mask` of unit scores given in group order (as :meth:`units` returns them), as a keep-mask
        shaped ``shape``."""
        moved = torch.Size([shape[0], *shape[2:], shape[1]]) if len(shape) > 2 else shape
        scores = unit_scores.reshape(moved)
        return self.mask(scores.movedim(-1, 1) if len(shape) > 2 else scores, sparsity)

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Keep-mask shaped like ``scores`` that keeps the ``n`` highest of every ``m`` consecutive weights
        along the input dim (ties: lower index dropped first).

        Raises :class:`~prunekit.errors.InvalidSparsityError` when ``sparsity`` is given and is not
        :attr:`fixed_sparsity`, and :class:`~prunekit.errors.PatternError` as :meth:`check` does.
        """
        self.check_sparsity(sparsity)
        self.check("this weight", scores)
        groups = self._grouped(scores)
        # drop the (m - n) lowest of each group; stable sort keeps ties deterministic
        drop = torch.argsort(groups, dim=1, stable=True)[:, : self.m - self.n]
        keep = torch.ones_like(groups, dtype=torch.bool)
        keep.scatter_(1, drop, False)
        if scores.dim() > 2:
            moved_shape = scores.movedim(1, -1).shape
            return keep.reshape(moved_shape).movedim(-1, 1).contiguous()
        return keep.reshape(scores.shape)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Block(Granularity):
    """Rectangular tiles of ``rows`` x ``cols`` weights in the [out, in*k*k] view (block sparsity).

    Tiles at the edges may be smaller; a tile's score comes from the sum of its weights' contributions and
    its size (the mean of its element scores by default).
    """

    rows: int
    cols: int
    kind: ClassVar[str] = "block"

    def __post_init__(self) -> None:
        if not (isinstance(self.rows, int) and isinstance(self.cols, int)) or self.rows < 1 or self.cols < 1:
            raise PatternError(f"Block needs positive integer sizes, got {self.rows}x{self.cols} (e.g. Block(4, 4))")

    def _pad(self, t: Tensor) -> tuple[Tensor, Tensor]:
        w2 = _as_2d(t).to(torch.float64)
        r = -w2.shape[0] % self.rows
        c = -w2.shape[1] % self.cols
        valid = torch.nn.functional.pad(torch.ones_like(w2), (0, c, 0, r))
        return torch.nn.functional.pad(w2, (0, c, 0, r)), valid

    def _tiles(self, t: Tensor) -> Tensor:
        R, C = t.shape
        return t.reshape(R // self.rows, self.rows, C // self.cols, self.cols).transpose(1, 2)

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        """Per tile of the ``[out, in*k*k]`` view (row-major over the tile grid): the float64 sum of
        ``contrib`` and the number of real weights in the tile (edge tiles may be smaller)."""
        padded, valid = self._pad(contrib)
        s = self._tiles(padded).sum(dim=(2, 3))
        n = self._tiles(valid).sum(dim=(2, 3))
        return s.reshape(-1), n.reshape(-1).long()

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        """One keep-flag per tile (row-major over the tile grid) as a keep-mask shaped ``shape``."""
        out = shape[0]
        inner = math.prod(shape[1:]) if len(shape) > 1 else 1
        nr, nc = -(-out // self.rows), -(-inner // self.cols)
        grid = keep_units.reshape(nr, nc)
        full = grid.repeat_interleave(self.rows, 0).repeat_interleave(self.cols, 1)
        return full[:out, :inner].reshape(shape).contiguous()

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


@dataclass(frozen=True)
class Channel(Granularity):
    """Whole output channels: filters of a convolution, neurons (rows) of a Linear layer.

    ``Channel()`` is the masking form: the rows are zeroed, shapes stay. ``Channel(physical=True)``
    (``"physical-channel"``) removes them from the architecture, with every coupled dimension of their
    dependency group (the structural engine; Li et al. 2017, "Pruning Filters for Efficient ConvNets";
    Fang et al. 2023, "DepGraph").
    """

    physical: bool = False
    kind: ClassVar[str] = "channel"
    level: ClassVar[str] = "channel"

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        """Per output channel (row of the canonical weight): the float64 sum of ``contrib`` and the row's
        size. Raises :class:`~prunekit.errors.PatternError` for ``Channel(physical=True)``."""
        self._masking_only()
        s2 = _as_2d(contrib).double()
        return s2.sum(dim=1), torch.full((s2.shape[0],), s2.shape[1], dtype=torch.long)

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        """One keep-flag per output channel broadcast to a keep-mask shaped ``shape``. Raises
        :class:`~prunekit.errors.PatternError` for ``Channel(physical=True)``."""
        self._masking_only()
        view = [shape[0]] + [1] * (len(shape) - 1)
        return keep_units.reshape(view).expand(shape).contiguous()

    def _masking_only(self) -> None:
        if self.physical:
            raise PatternError(
                "Channel(physical=True) removes channels from the architecture (the structural engine); it makes "
                "no masks. Use Channel() for the masking form"
            )

    def __str__(self) -> str:
        return "physical-channel" if self.physical else "channel"


class _Physical(Granularity):
    """A unit the structural engine removes from the architecture; it makes no masks."""

    @property
    def physical(self) -> bool:
        """True: removed from the architecture by the structural engine."""
        return True

    def unit_sums(self, contrib: Tensor) -> tuple[Tensor, Tensor]:
        raise PatternError(f"{self!r} is removed physically by the structural engine; it makes no masks")

    def expand(self, keep_units: Tensor, shape: torch.Size) -> Tensor:
        raise PatternError(f"{self!r} is removed physically by the structural engine; it makes no masks")


@dataclass(frozen=True)
class Head(_Physical):
    """Attention heads, removed physically. Grouped-query aware: a unit is one key/value head with all the
    query heads that share it, so the query-per-key/value ratio is kept (Michel et al. 2019, "Are Sixteen
    Heads Really Better than One?")."""

    kind: ClassVar[str] = "head"
    level: ClassVar[str] = "head"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Layer(_Physical):
    """Whole blocks of a stack (transformer blocks, residual blocks) whose input and output shapes agree,
    removed physically. Blocks that are identity residuals (``x + f(x)``) leave a model that degrades
    gracefully; ``identity_only=True`` removes only those (Men et al. 2024, "ShortGPT"; Sajjad et al. 2023)."""

    identity_only: bool = False
    kind: ClassVar[str] = "layer"
    level: ClassVar[str] = "layer"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Embedding(_Physical):
    """The hidden size of a transformer, removed physically: columns of the token embedding and everything
    that reads or writes the residual stream (norms, projections, the tied output layer)."""

    kind: ClassVar[str] = "embedding"
    level: ClassVar[str] = "embedding"

    def __str__(self) -> str:
        return self.kind


_NAMED: dict[str, Granularity] = {
    "unstructured": Unstructured(),
    "channel": Channel(),
    "physical-channel": Channel(physical=True),
    "head": Head(),
    "layer": Layer(),
    "embedding": Embedding(),
}
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
_BLOCK_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
PATTERN_NAMES = (
    "unstructured",
    "channel",
    "physical-channel",
    "head",
    "layer",
    "embedding",
    "N:M (e.g. 2:4, 4:8)",
    "RxC (e.g. 4x4)",
)


def parse_pattern(value: str | Granularity | None) -> Granularity:
    """A granularity from its string form, once, at the edge: ``None`` -> ``Unstructured()``; ``"2:4"`` ->
    ``NM(2, 4)``; ``"4x4"`` -> ``Block(4, 4)``; ``"channel"`` (masking) / ``"physical-channel"``;
    ``"head"``, ``"layer"``, ``"embedding"``; a :class:`Granularity` is returned as it is.

    Raises :class:`~prunekit.errors.UnknownNameError` listing the accepted forms, and
    :class:`~prunekit.errors.PatternError` for an N:M or block form with impossible sizes (``4:2``, ``0x4``).
    """
    if value is None:
        return Unstructured()
    if isinstance(value, Granularity):
        return value
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _NAMED:
            return _NAMED[key]
        if m := _NM_RE.match(key):
            return NM(int(m.group(1)), int(m.group(2)))
        if m := _BLOCK_RE.match(key):
            return Block(int(m.group(1)), int(m.group(2)))
    raise UnknownNameError("pattern", value, PATTERN_NAMES)


def check_sparsity(sparsity: float) -> None:
    """Refuse a sparsity that is not a number in [0, 1) (the fraction of weights removed).

    Raises :class:`~prunekit.errors.InvalidSparsityError` saying so.
    """
    # numbers.Real: Python and NumPy numbers (a NumPy float32 from a sweep is a number too); not bool
    if not isinstance(sparsity, numbers.Real) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        hint = ""
        if not isinstance(sparsity, (numbers.Real, str)) and hasattr(sparsity, "__float__"):
            hint = " (a tensor or another number type: pass float(sparsity))"
        raise InvalidSparsityError(
            f"sparsity must be a number in [0, 1) (the fraction of weights removed), got {sparsity!r}{hint}"
        )


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask dropping the ``round(sparsity * in)`` lowest scores of every row, at most ``in - 1`` (a row keeps
    a weight; ties: lower index first; NaN ranks highest), by :func:`~prunekit.granularity.patterns.kth_lowest`."""
    k = min(round(sparsity * scores.shape[1]), scores.shape[1] - 1)
    if k <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    # each row's k-th lowest score [out, 1]; a sort off the CPU, or for a row of fewer than k numbers (NaN)
    kth = kth_lowest(scores, k, dim=1) if scores.device.type == "cpu" else None
    if kth is None or bool(torch.isnan(kth).any()):
        keep = torch.ones_like(scores, dtype=torch.bool)
        keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        return keep
    drop = scores <= kth
    if bool((drop.sum(dim=1) == k).all()):  # no row has a tie at its k-th score: the k lowest are these
        return ~drop
    drop = scores < kth
    tied = scores == kth
    # of the scores equal to the k-th, drop the first ones (lowest index) until k are dropped
    drop |= tied & (tied.cumsum(dim=1) <= k - drop.sum(dim=1, keepdim=True))
    return ~drop
