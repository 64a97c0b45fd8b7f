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
