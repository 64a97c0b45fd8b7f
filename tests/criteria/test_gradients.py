"""Tests of :mod:`prunekit.criteria.gradients`: gradients summed over calibration batches, by hand, and the model
left exactly as it was."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.criteria import accumulate_gradients


def _linear() -> nn.Linear:
    lin = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 2.0]]))
    return lin


def _product(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (out * y).sum()  # d/dW = y x^T


def test_gradients_of_the_batches_are_summed():
    lin = _linear()
    batches = [
        (torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]])),
        (torch.tensor([[0.0, 1.0]]), torch.tensor([[-1.0]])),
    ]
    got = accumulate_gradients(lin, {"w": lin.weight}, batches, loss_fn=_product)
    assert got["w"].tolist() == [[3.0, 5.0]]  # (3, 6) + (0, -1)
    assert accumulate_gradients(lin, {"w": lin.weight}, batches, loss_fn=_product, max_batches=1)["w"].tolist() == [
        [3.0, 6.0]
    ]
    dicts = [{"inputs": x, "labels": y} for x, y in batches]
    assert accumulate_gradients(lin, {"w": lin.weight}, dicts, loss_fn=_product)["w"].tolist() == [[3.0, 5.0]]


def test_a_loss_callable_is_called_once():
    lin = _linear()
    got = accumulate_gradients(lin, {"w": lin.weight}, lambda m: m.weight.pow(2).sum())
    assert got["w"].tolist() == [[2.0, 4.0]]  # d(w^2)/dw = 2w


def test_the_gradient_of_a_masked_weight_is_taken_at_the_computed_weight():
    """With a mask the model computes W * M; the gradient with respect to that computed weight is G, for the
    masked entries too (the criterion decides what to do with them)."""
    lin = _linear()
    pk.apply_mask_(lin, torch.tensor([[True, False]]))
    g = torch.tensor([[0.5, -7.0]])
    got = accumulate_gradients(lin, {"w": (lin, "weight")}, lambda m: (m.weight * g).sum())
    assert got["w"].tolist() == [[0.5, -7.0]]


def test_the_model_is_left_as_it_was():
    lin = _linear().train()
    marker = torch.tensor([[9.0, 9.0]])
    lin.weight.grad = marker.clone()
    lin.weight.requires_grad_(False)
    accumulate_gradients(lin, {"w": lin.weight}, lambda m: m(torch.ones(1, 2)).sum())
    assert lin.training and not lin.weight.requires_grad
    assert torch.equal(lin.weight.grad, marker) and torch.equal(lin.weight, torch.tensor([[1.0, 2.0]]))


def test_missing_empty_and_malformed_calibration_is_refused():
    lin = _linear()
    with pytest.raises(pk.MissingDataError, match="calibration="):
        accumulate_gradients(lin, {"w": lin.weight}, None)
    with pytest.raises(pk.DataError, match="empty"):
        accumulate_gradients(lin, {"w": lin.weight}, [])
    with pytest.raises(pk.DataError, match=r"\(inputs, targets\)"):
        accumulate_gradients(lin, {"w": lin.weight}, [torch.ones(1, 2)])
    with pytest.raises(pk.DataError, match="scalar"):
        accumulate_gradients(lin, {"w": lin.weight}, lambda m: m.weight * 2)
    with pytest.raises(pk.DataError, match="not finite"):
        accumulate_gradients(lin, {"w": lin.weight}, lambda m: m.weight.sum() * float("inf"))
