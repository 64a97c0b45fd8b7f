"""Schedules: when pruning happens. Each is a pure ``sparsity_at(step) -> float``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from prunekit.errors import ConfigError, InvalidSparsityError
from prunekit.registry import Registry

__all__ = ["Gradual", "Iterative", "OneShot", "SCHEDULES", "Schedule"]

SCHEDULES: Registry[type] = Registry("schedule")


def _check(final: float) -> None:
    if not 0.0 <= final < 1.0:
        raise InvalidSparsityError(f"final_sparsity must be in [0, 1), got {final!r}")


class Schedule(ABC):
    """Target sparsity as a function of the training step (or pruning round)."""

    final_sparsity: float

    @abstractmethod
    def sparsity_at(self, step: int) -> float:
        """The target sparsity (fraction of weights removed, in [0, 1)) at training step or round ``step``."""

    def steps(self) -> list[int]:
        """The steps at which the target changes (where a pruner should act)."""
        return [0]

    def acts_at(self, step: int) -> bool:
        """Is ``step`` one of :meth:`steps`? (Subclasses answer without building the list.)"""
        return step in self.steps()


@SCHEDULES.register("one-shot", "prune once, at `at`, to the final sparsity")
@dataclass(frozen=True)
class OneShot(Schedule):
    """All pruning at step ``at``. Raises :class:`~prunekit.errors.InvalidSparsityError` for a final
    sparsity outside [0, 1)."""

    final_sparsity: float
    at: int = 0

    def __post_init__(self) -> None:
        _check(self.final_sparsity)

    def sparsity_at(self, step: int) -> float:
        """0 before ``at``, ``final_sparsity`` from ``at`` on."""
        return self.final_sparsity if step >= self.at else 0.0

    def steps(self) -> list[int]:
        """``[at]``."""
        return [self.at]


@SCHEDULES.register("iterative", "k rounds, each removing the same fraction of the remaining weights")
@dataclass(frozen=True)
class Iterative(Schedule):
    """``rounds`` equal-ratio rounds, ``every`` steps apart: after round r (1-based) the sparsity is
    ``1 - (1 - final) ** (r / rounds)``, the geometric schedule of iterative magnitude pruning
    (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks"; Frankle &
    Carbin 2019, "The Lottery Ticket Hypothesis").

    Raises :class:`~prunekit.errors.InvalidSparsityError` for a final sparsity outside [0, 1) and
    :class:`~prunekit.errors.ConfigError` unless ``rounds >= 1`` and ``every >= 1``.
    """

    final_sparsity: float
    rounds: int = 5
    every: int = 1
    start: int = 0

    def __post_init__(self) -> None:
        _check(self.final_sparsity)
        if self.rounds < 1 or self.every < 1:
            raise ConfigError("Iterative needs rounds >= 1 and every >= 1")

    def sparsity_at(self, step: int) -> float:
        """0 before ``start``; after round r (counting the round at ``step`` itself),
        ``1 - (1 - final) ** (r / rounds)``."""
        if step < self.start:
            return 0.0
        done = min(self.rounds, (step - self.start) // self.every + 1)
        kept: float = (1.0 - self.final_sparsity) ** (done / self.rounds)
        return 1.0 - kept

    def steps(self) -> list[int]:
        """The ``rounds`` steps ``start, start + every, ...``."""
        return [self.start + i * self.every for i in range(self.rounds)]

    def acts_at(self, step: int) -> bool:
        """Is ``step`` one of the rounds' steps?"""
        k, r = divmod(step - self.start, self.every)
        return step >= self.start and r == 0 and k < self.rounds


@SCHEDULES.register("gradual", "cubic schedule of Zhu & Gupta 2017 (automated gradual pruning)")
@dataclass(frozen=True)
class Gradual(Schedule):
    """Automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune"):

    ``s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (t_1 - t_0)) ** 3`` for ``t_0 <= t <= t_1``, updated every
    ``frequency`` steps; ``s_i`` before ``t_0`` (0 before the first pruning step) and ``s_f`` after ``t_1``.

    Raises :class:`~prunekit.errors.InvalidSparsityError` for sparsities outside [0, 1) and
    :class:`~prunekit.errors.ConfigError` unless ``end > start`` and ``frequency >= 1``.
    """

    start: int
    end: int
    final_sparsity: float
    initial_sparsity: float = 0.0
    frequency: int = 1

    def __post_init__(self) -> None:
        _check(self.final_sparsity)
        _check(self.initial_sparsity)
        if self.end <= self.start or self.frequency < 1:
            raise ConfigError("Gradual needs end > start and frequency >= 1")

    def sparsity_at(self, step: int) -> float:
        """The cubic schedule of the class docstring, held constant between updates (every ``frequency``
        steps)."""
        if step < self.start:
            return 0.0
        if step >= self.end:
            return self.final_sparsity
        t = self.start + ((step - self.start) // self.frequency) * self.frequency
        frac = (t - self.start) / (self.end - self.start)
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - frac) ** 3

    def steps(self) -> list[int]:
        """``start``, every ``frequency`` steps up to ``end`` (excluded), and ``end``."""
        return [*range(self.start, self.end, self.frequency), self.end]

    def acts_at(self, step: int) -> bool:
        """Is ``step`` one of :meth:`steps`?"""
        return step == self.end or (self.start <= step < self.end and (step - self.start) % self.frequency == 0)
