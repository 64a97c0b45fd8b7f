"""The one criterion interface: statistics in, element scores out.

A :class:`Criterion` declares the statistics it reads (``needs``, names from
:data:`prunekit.calibration.STATISTICS`) and the kinds of unit it has a meaning for (``levels``:
``element`` for single weights, N:M groups and tiles; ``channel``; ``head``; ``layer``). Given a weight in
its canonical layout ``[out, in/groups, *kernel]`` (see :mod:`prunekit.layout`) and that layer's
statistics (:class:`~prunekit.calibration.LayerStats`), it returns:

* :meth:`Criterion.element`: one score per weight, shaped like the weight; higher is more important;
* :meth:`Criterion.contribution`: what a weight adds to the score of a unit it belongs to (the element
  score, except for first-order Taylor, whose unit score is the square of a signed sum);
* :meth:`Criterion.unit`: a unit score from the summed contributions and the unit sizes (by default the
  mean, so that units of different sizes and layers compare).

Criteria that score rows by nature (FPGM, APoZ, BN scale) give every weight of a row the row's score.
Every granularity reduces these scores to its units in one place (:mod:`prunekit.granularity.patterns`, the
structural engine for dependency groups, heads and layers).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from prunekit.calibration.collect import STATISTICS, LayerStats
from prunekit.errors import ConfigError, DataError, MissingDataError, PrunekitError
from prunekit.layout import WeightLayout
from prunekit.registry import Registry

__all__ = [
    "CRITERIA",
    "Criterion",
    "CriterionLevelError",
    "LEVELS",
    "ScoreInput",
    "criteria_for",
    "criterion",
    "key_generator",
    "lp",
    "register",
    "resolve_criterion",
]

LEVELS = frozenset({"element", "channel", "head", "layer"})
LEVEL_WORDS = {
    "element": "single weights, N:M groups and tiles",
    "channel": "channels (output rows, dependency groups)",
    "head": "attention heads",
    "layer": "whole layers (blocks)",
}


class CriterionLevelError(PrunekitError):
    """A criterion was asked to score a kind of unit it has no meaning for."""


@dataclass
class ScoreInput:
    """What a criterion reads for one weight: the weight in canonical layout, the layer's statistics and a
    seeded generator. ``layout`` maps stored-layout statistics (gradients) to the canonical layout."""

    weight: Tensor
    stats: LayerStats
    layout: WeightLayout | None = None
    key: str = ""
    seed: int = 0
    _generator: torch.Generator | None = field(default=None, repr=False)

    @property
    def groups(self) -> int:
        """The layer's convolution group count (1 without a layout)."""
        return self.layout.groups if self.layout is not None else 1

    @property
    def generator(self) -> torch.Generator:
        """A random stream seeded from ``(seed, key)`` (:func:`key_generator`), made once per input."""
        if self._generator is None:
            self._generator = key_generator(self.seed, self.key)
        return self._generator

    def require(self, name: str, criterion: str) -> Tensor:
        """A statistic of this layer by its :data:`~prunekit.calibration.STATISTICS` name, or
        :class:`~prunekit.errors.MissingDataError` saying what to pass for ``criterion`` to have it."""
        value: Tensor | None = getattr(self.stats, _FIELD.get(name, name), None)
        if value is None:
            raise MissingDataError(
                f"criterion {criterion!r} needs the statistic {name!r} of {self.key or 'this layer'}, which was not "
                f"gathered: {_HOW.get(name, 'pass calibration= data')}"
            )
        return value

    def canonical(self, t: Tensor) -> Tensor:
        """A tensor shaped like the stored weight (a gradient), in the canonical layout."""
        t = t.to(self.weight.device)
        return self.layout.to_canonical(t) if self.layout is not None else t

    def per_input(self, vec: Tensor) -> Tensor:
        """An ``[in_features]`` vector (input channels) spread over the canonical weight: every weight gets
        the value of the input channel it reads (grouped convolutions: the channel of its group).

        Raises :class:`~prunekit.errors.DataError` when ``vec`` does not have one value per input channel.
        """
        w = self.weight
        g = self.groups
        vec = vec.to(device=w.device, dtype=torch.float32).reshape(-1)
        cin = w.shape[1] * g
        if vec.numel() != cin:
            raise DataError(f"{self.key or 'a layer'}: {vec.numel()} input statistics for {cin} input channels")
        per_out = vec.reshape(g, w.shape[1]).repeat_interleave(w.shape[0] // g, 0)  # [out, in/groups]
        return per_out.reshape(*per_out.shape, *([1] * (w.dim() - 2))).expand_as(w)

    def per_output(self, vec: Tensor) -> Tensor:
        """An ``[out_features]`` vector spread over the rows of the canonical weight.

        Raises :class:`~prunekit.errors.DataError` when ``vec`` does not have one value per output.
        """
        w = self.weight
        vec = vec.to(device=w.device, dtype=torch.float32).reshape(-1)
        if vec.numel() != w.shape[0]:
            raise DataError(f"{self.key or 'a layer'}: {vec.numel()} output statistics for {w.shape[0]} outputs")
        return vec.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)


_FIELD = {"act_norm": "act_sq", "act_mean": "act_sum", "act_zeros": "act_nonpos", "grasp_hg": "grasp_hg"}
_HOW = {
    "grad": "pass calibration=(inputs, targets) batches, dict batches with labels, token batches, or a loss callable",
    "grad_sq": "pass calibration=(inputs, targets) batches, dict batches with labels, token batches, or a loss "
    "callable",
    "act_norm": "pass calibration= batches that run the model",
    "act_mean": "pass calibration= batches that run the model",
    "act_zeros": "pass calibration= batches that run the model",
    "xtx": "pass calibration= batches that run the model",
    "bn_gamma": "this layer's output feeds no normalisation layer; leave it out with ignore=[...]",
    "synflow": "pass example_inputs= (only their shape is used)",
    "grasp_hg": "pass calibration=(inputs, targets) batches or a loss callable",
}


def key_generator(seed: int, key: str) -> torch.Generator:
    """One independent, reproducible random stream per (seed, layer name)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _mean(sums: Tensor, sizes: Tensor) -> Tensor:
    return sums / sizes.clamp_min(1).to(sums.dtype)


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule (see the module docstring).

    ``score(s: ScoreInput) -> Tensor`` gives the element scores; ``contribute`` (default ``score``) what
    a weight adds to its unit; ``reduce(sums, sizes)`` (default the mean) a layer's unit scores from
    them. ``levels``: the units it has a meaning for; ``needs``: the statistics it reads.
    """

    name: str
    score: Callable[[ScoreInput], Tensor] | None
    description: str = ""
    paper: str = ""
    needs: frozenset[str] = frozenset()
    levels: frozenset[str] = LEVELS
    contribute: Callable[[ScoreInput], Tensor] | None = None
    reduce: Callable[[Tensor, Tensor], Tensor] = _mean
    row_native: bool = False  # scores rows (filters) by nature: every weight of a row shares its score
    power: float | None = None  # the element score and contribution are |w|^power (lets reductions fuse)

    def __post_init__(self) -> None:
        if not self.needs <= STATISTICS:
            raise ConfigError(f"criterion {self.name!r} needs unknown statistics {sorted(self.needs - STATISTICS)}")
        if not self.levels <= LEVELS or not self.levels:
            raise ConfigError(f"criterion {self.name!r}: levels must be a non-empty subset of {sorted(LEVELS)}")

    # compatibility: the gradient flag the first build exposed
    @property
    def needs_grad(self) -> bool:
        """Whether the criterion reads gradients (``grad``, ``grad_sq`` or GraSP's ``grasp_hg``)."""
        return bool(self.needs & {"grad", "grad_sq", "grasp_hg"})

    @property
    def needs_data(self) -> bool:
        """Whether the criterion needs calibration data (any statistic but SynFlow's, which needs only an
        input shape)."""
        return bool(self.needs - {"synflow"})

    def check_level(self, level: str, what: str = "") -> None:
        """Raise :class:`CriterionLevelError` when this criterion has no meaning for ``level`` units (one of
        :data:`LEVELS`); the message lists the criteria that do. ``what`` replaces the unit words in it."""
        if level not in self.levels:
            ok = ", ".join(LEVEL_WORDS[lv] for lv in sorted(self.levels))
            raise CriterionLevelError(
                f"criterion {self.name!r} has no meaning for {what or LEVEL_WORDS.get(level, level)}; it scores: {ok}. "
                f"Criteria for {LEVEL_WORDS.get(level, level)}: {', '.join(criteria_for(level))}"
            )

    def element(self, s: ScoreInput) -> Tensor:
        """Element scores shaped like ``s.weight`` (float32); higher is more important.

        Raises :class:`CriterionLevelError` for a criterion that scores whole units only (no element
        score), and :class:`~prunekit.errors.MissingDataError` when a statistic it needs was not gathered.
        """
        if self.score is None:
            raise CriterionLevelError(f"criterion {self.name!r} scores {', '.join(sorted(self.levels))} only")
        return self.score(s).float()

    def contribution(self, s: ScoreInput) -> Tensor:
        """What each weight adds to the score of the unit it belongs to (shaped like ``s.weight``)."""
        return self.contribute(s).float() if self.contribute else self.element(s)

    def unit(self, sums: Tensor, sizes: Tensor) -> Tensor:
        """Unit scores of one layer from the summed contributions of each unit and the unit sizes."""
        return self.reduce(sums.double(), sizes).float()

    def __call__(self, weight: Tensor, *, grad: Tensor | None = None, seed: int = 0, key: str = "") -> Tensor:
        """Element scores of a canonical-layout ``weight`` with an optional gradient (shaped like it)."""
        return self.element(ScoreInput(weight.detach(), LayerStats(key, grad=grad), None, key, seed))

    def __str__(self) -> str:
        return self.name


CRITERIA: Registry[Criterion] = Registry("criterion")


def register(criterion: Criterion, *, aliases: tuple[str, ...] = ()) -> Criterion:
    """Add a :class:`Criterion` to :data:`CRITERIA` under its name (and ``aliases``); returns it.

    Raises :class:`~prunekit.errors.ConfigError` when a name is taken.
    """
    CRITERIA.add(criterion.name, criterion, criterion.description, aliases=aliases)
    return criterion


def criterion(
    name: str,
    description: str,
    *,
    paper: str = "",
    needs: tuple[str, ...] = (),
    levels: tuple[str, ...] = tuple(LEVELS),
    aliases: tuple[str, ...] = (),
    reduce: Callable[[Tensor, Tensor], Tensor] | None = None,
    contribute: Callable[[ScoreInput], Tensor] | None = None,
    row_native: bool = False,
    power: float | None = None,
) -> Callable[[Callable[[ScoreInput], Tensor]], Callable[[ScoreInput], Tensor]]:
    """Decorator: register ``fn(s: ScoreInput) -> element scores`` as a :class:`Criterion`."""

    def deco(fn: Callable[[ScoreInput], Tensor]) -> Callable[[ScoreInput], Tensor]:
        register(
            Criterion(
                name,
                fn,
                description,
                paper,
                frozenset(needs),
                frozenset(levels),
                contribute,
                reduce or _mean,
                row_native,
                power,
            ),
            aliases=aliases,
        )
        return fn

    return deco


def criteria_for(level: str) -> list[str]:
    """Names of the registered criteria (aliases left out) that have a meaning for ``level`` units."""
    seen = []
    for entry in CRITERIA.entries():
        c = entry.obj
        if c.name == entry.name and level in c.levels:
            seen.append(c.name)
    return seen


def lp(p: float) -> Criterion:
    """The Lp criterion ``|w|^p`` (units rank by their Lp norm), for any p > 0; name ``"l<p>"``.

    Raises :class:`~prunekit.errors.DataError` when ``p <= 0``.
    """
    if not p > 0:
        raise DataError(f"the Lp criterion needs p > 0, got {p}")
    return Criterion(
        f"l{p:g}",
        lambda s: s.weight.float().abs().pow(p),
        f"|w|^{p:g}: units rank by their L{p:g} norm",
        power=float(p),
    )


_LP_RE = re.compile(r"^l(\d+(?:\.\d+)?)$")


def resolve_criterion(value: str | Criterion) -> Criterion:
    """A registered name, ``"l<p>"`` (``"l0.5"``, ``"l3"``: the Lp criterion with that p) or a
    :class:`Criterion`. Raises :class:`~prunekit.errors.UnknownNameError` listing the names, and
    :class:`~prunekit.errors.ConfigError` when the name is registered to something else."""
    if isinstance(value, Criterion):
        return value
    if isinstance(value, str) and value.lower() not in CRITERIA and (m := _LP_RE.match(value.strip().lower())):
        return lp(float(m.group(1)))
    obj = CRITERIA.resolve(value)
    if not isinstance(obj, Criterion):
        raise ConfigError(f"{value!r} is not a criterion")
    return obj
