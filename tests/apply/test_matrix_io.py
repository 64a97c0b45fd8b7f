"""A layer's weight read as an [out, in] matrix and written back (prunekit.apply.matrix_io)."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.apply.masks import apply_mask_, get_mask
from prunekit.apply.matrix_io import store_matrix_, stored_mask, weight_matrix


def test_linear_matrix_is_the_weight_and_is_zeroed_in_place():
    layer = nn.Linear(6, 4)
    w = layer.weight.data.clone()
    matrix = weight_matrix(layer)
    assert matrix.shape == (4, 6) and matrix.data_ptr() == layer.weight.data_ptr()
    keep = torch.rand(4, 6) > 0.5
    out = store_matrix_(layer, matrix, keep)
    assert torch.equal(out, keep)
    assert torch.equal(layer.weight.data, torch.where(keep, w, torch.zeros_like(w)))


def test_new_values_are_written_where_kept_and_zero_elsewhere():
    layer = nn.Conv2d(3, 5, 3)
    matrix = weight_matrix(layer)
    assert matrix.shape == (5, 27)
    values = torch.randn(5, 27)
    keep = torch.rand(5, 27) > 0.3
    store_matrix_(layer, values, keep)
    assert torch.equal(weight_matrix(layer), values * keep)
    assert stored_mask(layer, keep).shape == layer.weight.shape


def test_a_masked_layer_keeps_its_mask_narrowed():
    layer = nn.Linear(8, 2, bias=False)
    first = torch.ones(2, 8, dtype=torch.bool)
    first[:, :2] = False
    apply_mask_(layer, first, "weight")
    keep = torch.ones(2, 8, dtype=torch.bool)
    keep[:, 6:] = False
    values = torch.randn(2, 8)
    out = store_matrix_(layer, values, keep)
    expected = first & keep
    assert torch.equal(out, expected)  # masks only shrink
    mask = get_mask(layer, "weight")
    assert mask is not None and torch.equal(mask.bool(), expected)
    assert torch.equal(layer.weight.detach(), values * expected)
