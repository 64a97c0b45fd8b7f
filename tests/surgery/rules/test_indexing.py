"""Exact tests of :mod:`prunekit.surgery.rules.indexing`: index_select and sort across the channels pin
them (and reorder the coupling); along space they leave the channels free.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.surgery.graph import trace_groups

from .conftest import expect, members, units


class IndexSelect(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.a = nn.Conv2d(2, 3, 1)
        self.c = nn.Conv2d(3 if dim != 1 else 2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        idx = torch.tensor([2, 0]) if self.dim == 1 else torch.tensor([1, 0])
        return self.c(h.index_select(self.dim, idx))


def test_index_select_of_channels_pins_them_and_reorders_the_coupling() -> None:
    tr = trace_groups(IndexSelect(1), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(
        {"a.weight:0": [0], "a.bias:0": [0], "c.weight:1": [1]},
        {"a.weight:0": [1], "a.bias:0": [1]},
        {"a.weight:0": [2], "a.bias:0": [2], "c.weight:1": [0]},
        removable=False,
    )


def test_index_select_along_space_keeps_the_channels_free() -> None:
    tr = trace_groups(IndexSelect(2), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)]
    )


class Sort(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.c = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.sort(self.a(x), dim=1).values)  # sorting across the channels


def test_sort_across_channels_pins_them() -> None:
    tr = trace_groups(Sort(), torch.randn(2, 2))
    assert not any(tr.group_of("a.weight", 0).removable)
    assert members(tr, "a.weight", 0) == {"a.weight:0", "a.bias:0", "c.weight:1"}
