"""prunekit.eval.accuracy: exact counts, the same answer at any batch size, eval mode without gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.eval import accuracy


class _Recorder(nn.Module):
    """Returns its input as logits and records, per call, the batch size, its training flag and grad mode."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(x), self.training, torch.is_grad_enabled()))
        return x


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """Seven one-hot 'logits' over 3 classes and labels: samples 1 and 4 are wrong, the other five right."""
    predicted = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    labels = torch.tensor([0, 2, 2, 0, 0, 2, 0])
    return nn.functional.one_hot(predicted, 3).float(), labels


@pytest.mark.parametrize("batch", [1, 2, 3, 7, 1000])
def test_exact_fraction_at_any_batch_size(batch: int) -> None:
    images, labels = _logits()
    model = _Recorder()
    assert accuracy(model, images, labels, batch=batch) == 5 / 7
    sizes = [n for n, _, _ in model.calls]
    assert sum(sizes) == 7 and all(n == min(batch, 7) for n in sizes[:-1])


def test_batches_of_the_given_size_in_eval_mode_without_gradients() -> None:
    images, labels = _logits()
    model = _Recorder().train()
    assert accuracy(model, images, labels, batch=3) == 5 / 7
    assert model.calls == [(3, False, False), (3, False, False), (1, False, False)]
    assert model.training  # restored
    model.eval()
    accuracy(model, images, labels)
    assert not model.training and model.calls[-1] == (7, False, False)  # default batch 1000: one call


def test_matches_a_plain_loop_on_a_real_network() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5), nn.Linear(5, 4)).train()
    x = torch.randn(50, 3, 4)
    y = torch.randint(0, 4, (50,))
    model.eval()
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).sum().item() / 50
    model.train()
    assert accuracy(model, x, y, batch=16) == expected
    assert model.training
