"""Tests of :mod:`prunekit.criteria.formulas`: each layer-wise formula on a 2x3 weight, computed by hand."""

import pytest
import torch

from prunekit.criteria.formulas import block_influence, fluctuation, magnitude, sparsegpt, wanda

W = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])


def test_magnitude_is_the_absolute_weight():
    assert magnitude(W).tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]


def test_wanda_scales_each_column_by_the_input_norm():
    # ||X_j|| = sqrt(1, 4, 9) = (1, 2, 3): |W| * (1, 2, 3)
    assert wanda(W, torch.tensor([1.0, 4.0, 9.0])).tolist() == [[1.0, 4.0, 9.0], [4.0, 10.0, 18.0]]
    # per-row norms (a grouped convolution): row 0 reads (1, 1, 1), row 1 reads (4, 0, 1); negatives clamp to 0
    per_row = torch.tensor([[1.0, 1.0, 1.0], [16.0, -1.0, 1.0]])
    assert wanda(W, per_row).tolist() == [[1.0, 2.0, 3.0], [16.0, 0.0, 6.0]]


def test_sparsegpt_divides_the_squared_weight_by_the_squared_inverse_hessian_diagonal():
    # w^2 / d^2 with d = (1, 2, 0.5): (1, 4/4, 9/0.25) and (16, 25/4, 36/0.25)
    assert sparsegpt(W, torch.tensor([1.0, 2.0, 0.5])).tolist() == [[1.0, 1.0, 36.0], [16.0, 6.25, 144.0]]
    # a batch of two problems: each gets its own diagonal
    batch = sparsegpt(torch.stack([W, W]), torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0]]))
    assert batch.shape == (2, 2, 3) and batch[1].tolist() == (W.pow(2) / 4).tolist()


def test_fluctuation_is_the_input_variance_times_the_column_energy():
    # Var(x) = E[x^2] - E[x]^2 = (2 - 1, 1 - 0, 4 - 4) = (1, 1, 0); column sums of W^2 = (17, 29, 45)
    mean, sq_mean = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([2.0, 1.0, 4.0])
    assert fluctuation(mean, sq_mean, W).tolist() == [17.0, 29.0, 0.0]
    # a variance that rounds below zero counts as zero
    assert fluctuation(torch.tensor([1.0, 0, 0]), torch.tensor([0.5, 0, 0]), W).tolist() == [0.0, 0.0, 0.0]


def test_block_influence_is_one_minus_the_cosine_per_token():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    y = torch.tensor([[2.0, 0.0], [1.0, 0.0], [-3.0, -4.0]])  # same direction, orthogonal, opposite
    assert block_influence(x, y).tolist() == pytest.approx([0.0, 1.0, 2.0])
    assert block_influence(x.unsqueeze(0), y.unsqueeze(0)).shape == (1, 3)  # the hidden dim goes
