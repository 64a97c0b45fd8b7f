"""Exact tests of :mod:`prunekit.surgery.rules.reduce`: pooling and spatial padding keep the channels;
padding along the channels pins them.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.surgery.graph import trace_groups

from .conftest import expect, units


class Pool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.pad(self.a(x), (1, 1, 1, 1)), 2)
        return self.fc(F.adaptive_avg_pool2d(h, 1).flatten(1))


def test_pooling_and_spatial_padding_keep_the_channels() -> None:
    tr = trace_groups(Pool(), torch.randn(1, 2, 4, 4))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "fc.weight:1": [i]} for i in range(3)]
    )


class ChannelPad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.pad(self.a(x), (1, 1)))  # two constant channels around the three


def test_padding_a_channel_axis_pins_it() -> None:
    tr = trace_groups(ChannelPad(), torch.randn(2, 2))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i]} for i in range(3)], removable=False
    )
