"""Element scores of the pruning targets (:mod:`prunekit.apply.scores`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.apply.scores import check_scores, element_scores, gather_statistics
from prunekit.criteria import Criterion, resolve_criterion
from prunekit.targets import select_targets


def _one_linear() -> tuple[nn.Module, list]:
    model = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-0.25, 3.0, -1.0]]))
    return model, select_targets(model, prune_classifier=True).targets


def test_magnitude_scores_are_the_absolute_weights_shaped_like_the_weight() -> None:
    model, targets = _one_linear()
    crit = resolve_criterion("magnitude")
    stats = gather_statistics(crit, model, targets)
    scores = element_scores(crit, targets, stats)
    assert torch.equal(scores["0"], model[0].weight.abs())


def test_scores_of_another_shape_or_with_nan_are_refused() -> None:
    _, targets = _one_linear()
    wrong = Criterion("wrong-shape", lambda s: torch.ones(5), "test")
    with pytest.raises(pk.PlanError, match="wrong-shape"):
        check_scores(wrong, targets[0], torch.ones(5))
    with pytest.raises(pk.DataError):
        check_scores(wrong, targets[0], torch.full((2, 3), float("nan")))
