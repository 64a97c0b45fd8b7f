"""Tests of :mod:`prunekit.surgery.remove`: physical removal slices every tensor of a removal, through
parametrizations (weight_norm's g and v, masks), and refuses what it cannot slice before any change."""

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.nn.utils.parametrizations import orthogonal, weight_norm

import prunekit as pk
from prunekit.apply.masks import get_mask
from prunekit.surgery.remove import new_shapes, remove_


def _normed_conv(dim=0, groups=1):
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=groups), dim=dim)
    with torch.no_grad():  # g differs from ||v||, so a slip in either shows in the weight
        conv.parametrizations.weight.original0.mul_(1.5)
    return conv


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_surgery_slices_g_and_v_consistently(dim):
    """Removing output channels and an input channel of a weight-normed conv: g and v are sliced together
    (g rescaled where the norm runs over a sliced dim) and every kept output is what it was."""
    conv = _normed_conv(dim)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 10)
    x[:, 0] = 0  # the input channel that goes
    with torch.no_grad():
        ref = conv(x)
    removal = {"0.weight": {0: np.array([1, 5]), 1: np.array([0])}, "0.bias": {0: np.array([1, 5])}}
    assert new_shapes(model, removal)["0.parametrizations.weight.original1"] == (6, 7, 3)
    remove_(model, removal)
    keep = [0, 2, 3, 4, 6, 7]
    assert (conv.in_channels, conv.out_channels) == (7, 6)
    assert tuple(conv.parametrizations.weight.original1.shape) == (6, 7, 3)
    with torch.no_grad():
        out = conv(x[:, 1:])
    assert torch.allclose(out, ref[:, keep], atol=1e-5)


def test_surgery_slices_a_masked_weight_named_by_its_stored_tensor():
    conv = _normed_conv(dim=0)
    pk.prune(conv, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 10)
    with torch.no_grad():
        ref = conv(x)
    remove_(model, {"0.parametrizations.weight.original1": {0: np.array([2])}, "0.bias": {0: np.array([2])}})
    assert tuple(get_mask(conv).shape) == (7, 8, 3) and conv.out_channels == 7
    with torch.no_grad():
        assert torch.allclose(conv(x), ref[:, [0, 1, 3, 4, 5, 6, 7]], atol=1e-5)


def test_surgery_refuses_an_unknown_parametrization_before_any_change():
    torch.manual_seed(0)
    model = nn.Sequential(orthogonal(nn.Linear(4, 4)), nn.Linear(4, 2))
    before = snapshot(model)
    with pytest.raises(pk.UnsupportedModuleError, match="leave_parametrized=True"):
        remove_(model, {"0.weight": {0: np.array([1])}, "0.bias": {0: np.array([1])}, "1.weight": {1: np.array([1])}})
    assert_unchanged(model, before)
    assert model[1].in_features == 4


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_removing_a_hidden_unit_drops_its_row_bias_and_column_exactly():
    model = _mlp()
    w0, b0, w2 = (t.detach().clone() for t in (model[0].weight, model[0].bias, model[2].weight))
    removal = {"0.weight": {0: np.array([1])}, "0.bias": {0: np.array([1])}, "2.weight": {1: np.array([1])}}
    assert new_shapes(model, removal) == {"0.weight": (3, 3), "0.bias": (3,), "2.weight": (2, 3)}
    old = remove_(model, removal)
    assert old == {"0.weight": (4, 3), "0.bias": (4,), "2.weight": (2, 4)}
    keep = [0, 2, 3]
    assert torch.equal(model[0].weight, w0[keep]) and torch.equal(model[0].bias, b0[keep])
    assert torch.equal(model[2].weight, w2[:, keep])
    assert (model[0].out_features, model[2].in_features) == (3, 3)  # the handlers followed
    assert isinstance(model[0].weight, nn.Parameter)


def test_tied_weights_stay_tied_and_bad_removals_change_nothing():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    model[1].weight = model[0].weight
    remove_(model, {"0.weight": {1: np.array([0])}})
    assert model[1].weight is model[0].weight and tuple(model[1].weight.shape) == (4, 3)
    model = _mlp()
    before = snapshot(model)
    with pytest.raises(pk.PlanError, match="does not have"):
        remove_(model, {"9.weight": {0: np.array([0])}})
    with pytest.raises(pk.PlanError, match="every index"):
        remove_(model, {"2.weight": {0: np.array([0, 1])}})
    with pytest.raises(pk.PlanError, match="index 7"):
        remove_(model, {"0.bias": {0: np.array([7])}})
    assert_unchanged(model, before)
