"""Tests of :mod:`prunekit.criteria.builtin`: the built-in criteria, their names and aliases, and their unit
reductions (Taylor's squared signed sum, LAMP's normalisation), by hand."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import BUILTIN, CRITERIA, ScoreInput, criteria_for, lamp_scores, resolve_criterion
from prunekit.layout import weight_layout


def _input(module, stats=None, name="m"):
    from prunekit.calibration import LayerStats

    layout = weight_layout(module)
    return ScoreInput(layout.to_canonical(module.weight.detach()), stats or LayerStats(name), layout, name)


def test_lamp_scores_hand_computed():
    # magnitudes 1, 2, 3 -> squares 1, 4, 9; suffix sums 14, 13, 9
    s = lamp_scores(torch.tensor([4.0, 1.0, 9.0]))
    assert s.tolist() == pytest.approx([4 / 13, 1 / 14, 1.0])


def test_seventeen_criteria_registered_with_levels():
    assert len(BUILTIN) == 17
    assert set(criteria_for("element")) >= {"magnitude", "wanda", "sparsegpt", "grad-weight", "taylor", "synflow"}
    assert "influence" not in criteria_for("element") and "influence" in criteria_for("layer")
    assert resolve_criterion("snip").name == "grad-weight"
    assert resolve_criterion("hessian").name == "obd"
    assert resolve_criterion("l0.5").name == "l0.5"
    with pytest.raises(pk.UnknownNameError):
        resolve_criterion("zigzag")


def test_taylor_unit_is_squared_signed_sum_and_grad_weight_is_not():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 0.1]]))
    from prunekit.calibration import LayerStats

    g = torch.tensor([[1.0, -1.0], [0.5, 0.5]])  # row 0: contributions cancel
    s = _input(lin, LayerStats("m", grad=g))
    taylor, gw = CRITERIA.get("taylor"), CRITERIA.get("grad-weight")
    t_units = taylor.unit(taylor.contribution(s).sum(1), torch.tensor([2, 2]))
    gw_units = gw.unit(gw.contribution(s).sum(1), torch.tensor([2, 2]))
    assert t_units[0] < t_units[1]  # (1 - 1)^2 = 0 < (0.5 + 0.05)^2
    assert gw_units[0] > gw_units[1]  # mean |g w|: 1.0 > 0.275
