"""Exact tests of :mod:`prunekit.surgery.rules.pointwise`: elementwise operations couple channel i of
every operand; a broadcast operand couples nothing; a constant of fixed size pins the channels.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.surgery.graph import trace_groups

from .conftest import expect, units


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.a(x) + self.b(x)))


def test_pointwise_add_couples_channel_i_of_both_operands() -> None:
    tr = trace_groups(Residual(), torch.randn(1, 3, 5, 5))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i]} for i in range(4)]
    )
    # the model's output keeps its channels; the image's channels are data (no producer)
    assert units(tr, "c.weight", 0) == expect(
        *[{"c.weight:0": [i], "c.bias:0": [i]} for i in range(2)], removable=False
    )
    assert units(tr, "a.weight", 1) == expect(*[{"a.weight:1": [i]} for i in range(3)], removable=False)


class Gate(nn.Module):
    """A squeeze-excitation gate: a(x) * sigmoid(mean(b(x))), plus a scalar multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.b(x).mean((2, 3), keepdim=True))
        return self.c(2.0 * self.a(x) * s)


def test_pointwise_gate_reduced_over_space_couples_channels_and_a_scalar_couples_nothing() -> None:
    tr = trace_groups(Gate(), torch.randn(1, 3, 5, 5))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i]} for i in range(4)]
    )


class ConstAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x) + torch.arange(4.0))  # a constant of fixed size along the channels


def test_pointwise_constant_of_fixed_size_pins_the_channels() -> None:
    tr = trace_groups(ConstAdd(), torch.randn(2, 3))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(4)], removable=False
    )
