"""Element scores of the pruning targets: the statistics a criterion needs, gathered from calibration data,
and the criterion's scores shaped like each target's weight (the input of every mask granularity)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from prunekit.calibration import LayerStats, collect
from prunekit.criteria import Criterion, ScoreInput
from prunekit.errors import (
    DataError,
    NothingToPruneError,
    PlanError,
)
from prunekit.targets import Target

__all__ = [
    "FORWARD_ONLY_STATS",
    "check_scores",
    "element_scores",
    "gather_statistics",
    "score_input",
    "without_norm_scale",
]


def _weight_for_scoring(target: Target) -> Tensor:
    """The weight as the model computes it (through masks, weight_norm, ...), in canonical layout."""
    with torch.no_grad():
        return target.layout.to_canonical(target.weight.detach())


#: statistics one forward pass on example_inputs gives (no calibration data needed)
FORWARD_ONLY_STATS = frozenset({"bn_gamma"})


def gather_statistics(
    criterion: Criterion,
    model: nn.Module,
    targets: list[Target],
    *,
    calibration: Any = None,
    example_inputs: Any = None,
    loss_fn: Any = None,
    **kwargs: Any,
) -> dict[str, LayerStats]:
    """The statistics ``criterion.needs`` of every target, from :func:`prunekit.calibration.collect`
    (``{target name: LayerStats}``). Raises :class:`~prunekit.errors.MissingDataError` /
    :class:`~prunekit.errors.DataError` naming the calibration forms the criterion can use."""
    layers = {t.name: t.module for t in targets}
    if not criterion.needs:
        return {name: LayerStats(name) for name in layers}
    if calibration is None and example_inputs is not None and criterion.needs <= FORWARD_ONLY_STATS:
        calibration = [example_inputs]  # one forward pass finds what it needs (as the structural path does)
    try:
        return collect(
            model, layers, criterion.needs, calibration, example_inputs=example_inputs, loss_fn=loss_fn, **kwargs
        )
    except DataError as e:  # say which criterion asked and what it can read
        raise type(e)(f"criterion {criterion.name!r}: {e}") from None


def without_norm_scale(
    criterion: Criterion, targets: list[Target], stats: dict[str, LayerStats], ignored: list[tuple[str, str]]
) -> tuple[list[Target], list[tuple[str, str]]]:
    """BN scale scores a layer by the normalisation layer its output feeds: layers that feed none are kept
    dense, with the reason (as the structural engine keeps such channel groups whole). Raises
    :class:`NothingToPruneError` when no layer feeds one."""
    if "bn_gamma" not in criterion.needs:
        return targets, ignored
    keep = [t for t in targets if stats.get(t.name) is not None and stats[t.name].bn_gamma is not None]
    if not keep:
        raise NothingToPruneError(
            f"criterion {criterion.name!r} scores a layer's channels by the |gamma| of the normalisation layer its "
            "output feeds, and no pruned layer feeds one; use another criterion (e.g. 'l1')"
        )
    left = [
        (t.name, f"feeds no normalisation layer, which {criterion.name} needs: kept dense")
        for t in targets
        if t not in keep
    ]
    return keep, ignored + left


def score_input(criterion: Criterion, target: Target, stats: LayerStats, seed: int) -> ScoreInput:
    """What ``criterion`` reads for one target: its canonical weight, statistics and a seeded generator."""
    return ScoreInput(_weight_for_scoring(target), stats, target.layout, target.key, seed)


def element_scores(
    criterion: Criterion, targets: list[Target], stats: dict[str, LayerStats], seed: int = 0
) -> dict[str, Tensor]:
    """``{target name: element scores}`` in canonical layout ``[out, in/groups, *kernel]`` (float32).

    Raises :class:`~prunekit.errors.PlanError` when the criterion gives scores of another shape and
    :class:`~prunekit.errors.DataError` when it gives NaN.
    """
    out = {}
    for t in targets:
        s = criterion.element(score_input(criterion, t, stats.get(t.name) or LayerStats(t.name), seed))
        check_scores(criterion, t, s)
        out[t.name] = s
    return out


def check_scores(criterion: Criterion, t: Target, s: Tensor) -> None:
    """Refuse scores a criterion gave for target ``t`` that are not shaped like its canonical weight or hold
    NaN: raises :class:`~prunekit.errors.PlanError` naming the criterion and the layer."""
    if tuple(s.shape) != tuple(t.layout.canonical_shape(tuple(t.weight.shape))):
        raise PlanError(f"criterion {criterion.name!r} gave scores of shape {tuple(s.shape)} for {t.name}")
    if torch.isnan(s).any():
        raise DataError(
            f"criterion {criterion.name!r} gave NaN scores for {t.name}: its statistics are not finite "
            "(check the calibration data and the model's outputs)"
        )
