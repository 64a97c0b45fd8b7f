"""Tests of :mod:`prunekit.apply.plan`: :class:`prunekit.Pruner` composes a criterion, a granularity and an
allocation into a mask plan; criterion levels are checked against the granularity; repruning only shrinks."""

import pytest
import torch
from conftest import SmallCNN
from torch import nn

import prunekit as pk
from prunekit.criteria import CriterionLevelError


def _linear_stack() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 2, bias=False))


def test_taylor_channel_score_is_the_squared_signed_sum():
    model = _linear_stack()
    G = torch.tensor([[2.0, -2.0, 0.5], [0.5, 0.5, 0.5], [0.9, 0.0, 0.0]])
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    loss = lambda m: (m[0].weight * G).sum()  # noqa: E731  (dL/dW = G)
    # (sum g w)^2 per row: 0.25, 2.25, 0.81 -> row 0 goes; mean |g w| would drop row 2 (0.3 < 1.5)
    plan = pk.Pruner("taylor", "channel").plan(model, sparsity=1 / 3, calibration=loss)
    assert pk.Channel().units(plan.layers[0].mask.float())[0].tolist() == [0.0, 1.0, 1.0]
    plan = pk.Pruner("grad-weight", "channel").plan(model, sparsity=1 / 3, calibration=loss)
    assert pk.Channel().units(plan.layers[0].mask.float())[0].tolist() == [1.0, 1.0, 0.0]


def test_lamp_normalises_units_within_each_layer():
    model = nn.Sequential(nn.Linear(2, 4, bias=False), nn.Linear(2, 4, bias=False), nn.Linear(4, 1))
    with torch.no_grad():
        rows = torch.tensor([1.0, 2.0, 3.0, 4.0]).sqrt()[:, None].expand(4, 2)
        model[0].weight.copy_(rows * 1e-2)  # tiny layer
        model[1].weight.copy_(rows)
    kept = lambda p: [int(lp.mask.all(1).sum()) for lp in p.layers]  # noqa: E731
    # LAMP unit scores are 1/10, 2/9, 3/7, 1 in both layers: a global threshold takes two rows from each
    assert kept(pk.Pruner("lamp", "channel", "global").plan(model, sparsity=0.5)) == [2, 2]
    # plain L2 takes the tiny layer's rows first
    assert kept(pk.Pruner("l2", "channel", "global").plan(model, sparsity=0.5))[0] < 2


def test_criterion_levels_are_checked_for_the_granularity():
    with pytest.raises(CriterionLevelError, match="channel") as info:
        pk.Pruner("fpgm", "unstructured")
    assert isinstance(info.value, pk.PrunekitError) and "magnitude" in str(info.value)
    with pytest.raises(CriterionLevelError):
        pk.Pruner("apoz", "2:4")
    with pytest.raises(CriterionLevelError):
        pk.Pruner("influence", "channel")
    with pytest.raises(CriterionLevelError, match="head"):
        pk.Pruner("apoz", pk.Head())
    pk.Pruner("fpgm", pk.Channel())  # channels: fine
    pk.Pruner("influence", pk.Layer())


def test_physical_pruner_is_not_a_mask_plan():
    with pytest.raises(pk.ConfigError, match="prunekit.prune"):
        pk.Pruner("l2", "physical-channel").plan(SmallCNN(), sparsity=0.5)


def test_channel_repruning_takes_dead_rows_first():
    model = SmallCNN()
    pk.prune(model, pk.Pruner("random", "channel"), sparsity=0.25, measure=False, seed=1)
    first = {n: pk.get_mask(m).clone() for n, m in model.named_children() if pk.get_mask(m) is not None}
    assert sorted(first) == ["conv1", "conv2", "fc"]
    pk.prune(model, pk.Pruner("random", "channel"), sparsity=0.5, measure=False, seed=2)
    for name in first:
        m = getattr(model, name)
        mask = pk.get_mask(m)
        assert not (mask & ~first[name]).any()  # only shrinks
        rows = mask.reshape(mask.shape[0], -1).all(1)
        assert int((~rows).sum()) == round(0.5 * mask.shape[0]), name  # the earlier rows count towards the target


def test_the_plan_table_gives_the_reason_each_layer_is_left_dense():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    plan = pk.Pruner("magnitude", pk.NM(2, 4), "uniform", sparsity=0.5, skip_incompatible=True).plan(model)
    text = " ".join(str(plan).split())
    assert "2.weight │ 8x8 │ 0.5000 │ 0.5000" in text
    assert "0 │ │ - │ dense │ does not fit pattern 2:4" in text  # 3 inputs: not a multiple of 4
    assert "4 │ │ - │ dense │ final classifier, kept dense by default" in text
