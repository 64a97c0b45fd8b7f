"""Latency you can trust: pinned threads, warm-up, interleaved repetitions, medians with their spread.

A single median of forward passes taken before pruning, and another taken after, compares two moments of
a noisy machine rather than two models: on a loaded machine such pairs were seen to report a 3x faster
model as 2x slower. :func:`compare_latency` therefore times the models *interleaved* (one forward pass of
each per round, the order alternating between rounds), at a fixed thread count, and reduces each round to a
paired ratio. A model faster than :data:`BLOCK_MS` per call is run in each round as a block of consecutive
calls lasting about that long, and the block's mean per call is its time in that round: a single call of
under a millisecond right after the other model ran (another runtime, its own threads and caches) measures
the switch more than the model, which is not how a deployed model is called.

The ratio's median and a 95% confidence interval (distribution-free, from the order statistics of the
paired ratios) decide the verdict: "faster" or "slower" only when the whole interval lies on one side of 1
and the median differs from 1 by more than 5%; "same within 5%" when the whole interval lies within 5% of
1; otherwise "no clear difference". A warning is attached when the spread is too wide for the medians to
mean much.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.calls import call_model, restore_modes, training_modes

__all__ = [
    "BLOCK_MS",
    "LatencyComparison",
    "MAX_BLOCK_CALLS",
    "SAME_WITHIN",
    "Timing",
    "WIDE_SPREAD",
    "compare_latency",
    "median_interval",
    "pinned_threads",
    "time_model",
    "verdict",
]

#: relative interquartile range above which a timing is flagged as too noisy to read precisely
WIDE_SPREAD = 0.25
#: differences smaller than this fraction are reported as "same", even when they are measurable
SAME_WITHIN = 0.05
#: a model whose fastest warm-up call takes less than this many milliseconds is timed, in each round, over a
#: block of consecutive calls lasting about this long (their mean per call is the round's figure)
BLOCK_MS = 2.0
#: the most consecutive calls in one timed block
MAX_BLOCK_CALLS = 1000


@dataclass(frozen=True)
class Timing:
    """Forward-pass times of one model, in milliseconds: median, quartiles and the number of timed runs (a
    run of a fast model is the mean of a block of consecutive calls; see the module docstring)."""

    median_ms: float
    q1_ms: float
    q3_ms: float
    runs: int
    threads: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.1 = the middle half of the runs lies within 10%)."""
        return (self.q3_ms - self.q1_ms) / self.median_ms if self.median_ms > 0 else math.inf

    def __str__(self) -> str:
        return (
            f"{self.median_ms:.3f} ms (IQR {self.q1_ms:.3f}-{self.q3_ms:.3f}, {self.runs} runs, "
            f"{self.threads} thread(s))"
        )


@dataclass(frozen=True)
class LatencyComparison:
    """``candidate`` timed against ``baseline`` interleaved.

    ``ratio`` is the median over rounds of candidate time / baseline time (below 1: the candidate is
    faster; the speedup is ``1 / ratio``); ``ratio_low`` .. ``ratio_high`` is its 95% confidence interval.
    ``verdict`` is ``"faster"``, ``"slower"``, ``"same within 5%"`` or ``"no clear difference"``;
    ``warning`` is set when the spread is too wide to read the medians precisely.
    """

    baseline: Timing
    candidate: Timing
    ratio: float
    ratio_low: float
    ratio_high: float
    verdict: str
    warning: str | None = None

    @property
    def speedup(self) -> float:
        """``1 / ratio``: how many times faster the candidate is (below 1: slower; inf for a zero ratio)."""
        return 1.0 / self.ratio if self.ratio > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field (timings nested, in milliseconds) plus ``speedup``."""
        return {**asdict(self), "speedup": self.speedup}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LatencyComparison:
        """The inverse of :meth:`to_dict` (``speedup`` is recomputed, not read)."""
        fields = {k: v for k, v in d.items() if k != "speedup"}
        return cls(**{**fields, "baseline": Timing(**d["baseline"]), "candidate": Timing(**d["candidate"])})

    def __str__(self) -> str:
        text = (
            f"latency {self.candidate.median_ms:.3f} ms vs {self.baseline.median_ms:.3f} ms: ratio {self.ratio:.3f} "
            f"(95% CI {self.ratio_low:.3f}-{self.ratio_high:.3f}), {self.verdict}"
        )
        return text + (f"; {self.warning}" if self.warning else "")


@contextmanager
def pinned_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``torch.set_num_threads(threads)`` (None: keep the current count); restores it.

    Yields the thread count in force. Raises :class:`~prunekit.errors.ConfigError` for ``threads`` < 1.
    """
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            from prunekit.errors import ConfigError

            raise ConfigError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval ``(low, high)`` of the median of ``values`` from order statistics
    (binomial ranks; no assumption on the timings' distribution). With fewer than 6 values it is their range."""
    xs = sorted(values)
    n = len(xs)
    if n < 6:  # too few runs for a 95% interval: the range is the honest answer
        return xs[0], xs[-1]
    # the largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2
    alpha, cdf, k = (1.0 - confidence) / 2.0, 0.0, 0
    while True:
        p = math.comb(n, k) / 2.0**n
        if cdf + p > alpha:
            break
        cdf += p
        k += 1
    k = max(k, 1)
    return xs[k - 1], xs[n - k]


def verdict(ratio: float, low: float, high: float) -> str:
    """The word for a latency ratio (candidate / baseline) and its interval ``[low, high]``: ``"faster"`` or
    ``"slower"`` only when the interval excludes 1 and the ratio is beyond :data:`SAME_WITHIN`; ``"same within
    5%"`` when the whole interval lies within it; otherwise ``"no clear difference"``."""
    if high < 1.0 and ratio < 1.0 - SAME_WITHIN:
        return "faster"
    if low > 1.0 and ratio > 1.0 + SAME_WITHIN:
        return "slower"
    if low >= 1.0 - SAME_WITHIN and high <= 1.0 + SAME_WITHIN:
        return f"same within {100 * SAME_WITHIN:.0f}%"
    return "no clear difference"


def _timing(times: list[float], threads: int) -> Timing:
    q1, med, q3 = _quartiles(times)
    return Timing(median_ms=med, q1_ms=q1, q3_ms=q3, runs=len(times), threads=threads)


def _run_rounds(
    models: Sequence[nn.Module], inputs: Any, *, warmup: int, min_rounds: int, max_rounds: int, budget_s: float
) -> list[list[float]]:
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad(), parametrize.cached():
        fastest = [math.inf] * len(models)
        for _ in range(max(warmup, 1)):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                call_model(m, inputs)
                fastest[i] = min(fastest[i], (time.perf_counter() - t0) * 1000.0)
        calls = [max(1, min(MAX_BLOCK_CALLS, math.ceil(BLOCK_MS / max(f, 1e-6)))) for f in fastest]
        start = time.perf_counter()
        for r in range(max_rounds):
            order = range(len(models)) if r % 2 == 0 else reversed(range(len(models)))
            for i in order:
                t0 = time.perf_counter()
                for _ in range(calls[i]):
                    call_model(models[i], inputs)
                times[i].append((time.perf_counter() - t0) * 1000.0 / calls[i])
            if r + 1 >= min_rounds and time.perf_counter() - start > budget_s:
                break
    return times


def _eval_mode(models: Sequence[nn.Module]) -> list[tuple[nn.Module, bool]]:
    """Put ``models`` in eval mode; every module's own flag, for :func:`~prunekit.calls.restore_modes`."""
    modes = [entry for m in models for entry in training_modes(m)]
    for m in models:
        m.eval()
    return modes


def time_model(
    model: nn.Module,
    inputs: Any,
    *,
    threads: int | None = 1,
    warmup: int = 3,
    min_rounds: int = 7,
    max_rounds: int = 50,
    budget_s: float = 2.0,
) -> Timing:
    """Time ``model``'s forward pass on ``inputs`` (eval mode, no grad, masks cached) at ``threads`` threads.

    Runs ``warmup`` untimed passes, then at least ``min_rounds`` and at most ``max_rounds`` timed ones,
    stopping after ``budget_s`` seconds. Returns a :class:`Timing` in milliseconds. Raises
    :class:`~prunekit.errors.ConfigError` for ``threads`` < 1.
    """
    modes = _eval_mode([model])
    try:
        with pinned_threads(threads) as n:
            (times,) = _run_rounds(
                [model], inputs, warmup=warmup, min_rounds=min_rounds, max_rounds=max_rounds, budget_s=budget_s
            )
    finally:
        restore_modes(modes)
    return _timing(times, n)


def compare_latency(
    baseline: nn.Module,
    candidate: nn.Module,
    inputs: Any,
    *,
    threads: int | None = 1,
    warmup: int = 3,
    min_rounds: int = 15,
    max_rounds: int = 200,
    budget_s: float = 3.0,
) -> LatencyComparison:
    """Time ``candidate`` against ``baseline`` on the same ``inputs``, interleaved (see the module docstring).

    Both run in eval mode without gradients, at ``threads`` threads (None: the current count). At least
    ``min_rounds`` rounds are timed, then rounds continue until ``budget_s`` seconds or ``max_rounds``.
    Raises :class:`~prunekit.errors.ConfigError` for ``threads`` < 1.
    """
    modes = _eval_mode([baseline, candidate])
    try:
        with pinned_threads(threads) as n:
            base, cand = _run_rounds(
                [baseline, candidate],
                inputs,
                warmup=warmup,
                min_rounds=min_rounds,
                max_rounds=max_rounds,
                budget_s=budget_s,
            )
    finally:
        restore_modes(modes)
    ratios = [c / b for b, c in zip(base, cand) if b > 0]
    ratio = statistics.median(ratios)
    low, high = median_interval(ratios)
    word = verdict(ratio, low, high)
    tb, tc = _timing(base, n), _timing(cand, n)
    warning = None
    if max(tb.spread, tc.spread) > WIDE_SPREAD or (high - low) > WIDE_SPREAD * ratio:
        warning = (
            f"timings vary widely (IQR {100 * tb.spread:.0f}% / {100 * tc.spread:.0f}% of the median): the machine is "
            "busy or the model is too small to time precisely; read the ratio's interval, not the medians"
        )
    return LatencyComparison(tb, tc, ratio, low, high, word, warning)
