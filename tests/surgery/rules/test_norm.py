"""Exact tests of :mod:`prunekit.surgery.rules.norm`: batch norm couples every statistic, group norm keeps
its groups equal, layer norm over the channels couples its scale and shift.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.surgery.graph import trace_groups

from .conftest import expect, units


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.gn_conv = nn.Conv2d(3, 4, 1)
        self.gn = nn.GroupNorm(2, 4)
        self.c = nn.Conv2d(4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.gn(self.gn_conv(self.bn(self.a(x)))))


def test_batch_norm_couples_every_statistic_and_group_norm_keeps_groups_equal() -> None:
    tr = trace_groups(ConvBN(), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(
        *[
            {
                "a.weight:0": [i],
                "bn.weight:0": [i],
                "bn.bias:0": [i],
                "bn.running_mean:0": [i],
                "bn.running_var:0": [i],
                "gn_conv.weight:1": [i],
            }
            for i in range(3)
        ]
    )
    # channel j of group 0 goes with channel j of group 1 (two groups of two channels)
    assert units(tr, "gn_conv.weight", 0) == expect(
        *[
            {
                "gn_conv.weight:0": [j, j + 2],
                "gn_conv.bias:0": [j, j + 2],
                "gn.weight:0": [j, j + 2],
                "gn.bias:0": [j, j + 2],
                "c.weight:1": [j, j + 2],
            }
            for j in range(2)
        ]
    )


class LN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.ln = nn.LayerNorm(3)
        self.c = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.ln(self.a(x)))


def test_layer_norm_over_the_channels_couples_its_scale_and_shift() -> None:
    tr = trace_groups(LN(), torch.randn(2, 4, 2))
    assert units(tr, "a.weight", 0) == expect(
        *[
            {"a.weight:0": [i], "a.bias:0": [i], "ln.weight:0": [i], "ln.bias:0": [i], "c.weight:1": [i]}
            for i in range(3)
        ]
    )
