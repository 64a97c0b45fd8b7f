"""Tests of :mod:`prunekit.criteria.base`: the one criterion interface, its levels and its registry."""

import pytest
import torch

import prunekit as pk
from prunekit.calibration import LayerStats
from prunekit.criteria import (
    CRITERIA,
    Criterion,
    CriterionLevelError,
    ScoreInput,
    key_generator,
    lp,
    register,
    resolve_criterion,
)


def test_level_refusal_names_what_works():
    with pytest.raises(CriterionLevelError) as info:
        CRITERIA.get("apoz").check_level("element")
    assert "channel" in str(info.value) and "magnitude" in str(info.value)
    assert isinstance(info.value, pk.PrunekitError)


def test_a_criterion_scores_elements_and_reduces_units_by_the_mean():
    square = Criterion("test-square", lambda s: s.weight.pow(2), "w^2", levels=frozenset({"element", "channel"}))
    w = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    assert square(w).tolist() == [[1.0, 4.0], [9.0, 0.25]]
    assert square.contribution(ScoreInput(w, LayerStats("m"))).tolist() == [[1.0, 4.0], [9.0, 0.25]]
    assert square.unit(torch.tensor([5.0, 9.25]), torch.tensor([2, 2])).tolist() == [2.5, 4.625]
    assert not square.needs_data and not square.needs_grad
    square.check_level("channel")
    with pytest.raises(CriterionLevelError, match="test-square"):
        square.check_level("head")
    with pytest.raises(pk.ConfigError, match="unknown statistics"):
        Criterion("bad", None, needs=frozenset({"entropy"}))
    with pytest.raises(pk.ConfigError, match="levels"):
        Criterion("bad", None, levels=frozenset())


def test_lp_is_a_power_of_the_magnitudes_and_resolves_by_name():
    l3 = lp(3)
    assert l3.name == "l3" and l3(torch.tensor([[-2.0, 1.0]])).tolist() == [[8.0, 1.0]]
    assert resolve_criterion("l0.5")(torch.tensor([4.0, 9.0])).tolist() == [2.0, 3.0]
    assert resolve_criterion(l3) is l3
    with pytest.raises(pk.DataError, match="p > 0"):
        lp(0)
    with pytest.raises(pk.UnknownNameError):
        resolve_criterion("no-such-criterion")


def test_statistics_are_spread_over_the_canonical_weight():
    s = ScoreInput(torch.zeros(2, 3), LayerStats("m"), key="fc")
    assert s.per_input(torch.tensor([1.0, 2.0, 3.0])).tolist() == [[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]
    assert s.per_output(torch.tensor([5.0, 6.0])).tolist() == [[5.0, 5.0, 5.0], [6.0, 6.0, 6.0]]
    with pytest.raises(pk.DataError, match="fc: 2 input statistics for 3 input channels"):
        s.per_input(torch.ones(2))
    with pytest.raises(pk.MissingDataError, match="'act_norm' of fc"):
        s.require("act_norm", "wanda")


def test_random_streams_are_one_per_seed_and_layer():
    def draw(seed: int, key: str) -> list[float]:
        return torch.rand(3, generator=key_generator(seed, key)).tolist()

    assert draw(0, "fc1") == draw(0, "fc1")
    assert draw(0, "fc1") != draw(0, "fc2") and draw(0, "fc1") != draw(1, "fc1")


def test_a_taken_name_is_refused_and_the_registry_unchanged():
    before = CRITERIA.names()
    with pytest.raises(pk.ConfigError):
        register(CRITERIA.get("magnitude"))
    assert CRITERIA.names() == before
