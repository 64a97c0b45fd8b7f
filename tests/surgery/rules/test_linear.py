"""Exact tests of :mod:`prunekit.surgery.rules.linear`: grouped and depthwise convolutions, scaled dot
product attention and embeddings.

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


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 4, 1)
        self.g = nn.Conv2d(4, 6, 3, padding=1, groups=2)  # 2 inputs and 3 filters per group
        self.c = nn.Conv2d(6, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.g(self.a(x)))


def test_grouped_conv_ties_input_c_to_column_c_mod_2_and_filter_j_of_every_group() -> None:
    tr = trace_groups(Grouped(), torch.randn(1, 2, 4, 4))
    assert units(tr, "a.weight", 0) == expect(
        {"a.weight:0": [0, 2], "a.bias:0": [0, 2], "g.weight:1": [0]},
        {"a.weight:0": [1, 3], "a.bias:0": [1, 3], "g.weight:1": [1]},
    )
    assert units(tr, "g.weight", 0) == expect(
        *[{"g.weight:0": [j, j + 3], "g.bias:0": [j, j + 3], "c.weight:1": [j, j + 3]} for j in range(3)]
    )


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.dw = nn.Conv2d(3, 3, 3, padding=1, groups=3)
        self.c = nn.Conv2d(3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.dw(self.a(x)))


def test_depthwise_conv_ties_input_channel_c_to_filter_c() -> None:
    tr = trace_groups(Depthwise(), torch.randn(1, 2, 4, 4))
    assert units(tr, "a.weight", 0) == expect(
        *[
            {"a.weight:0": [c], "a.bias:0": [c], "dw.weight:0": [c], "dw.bias:0": [c], "c.weight:1": [c]}
            for c in range(3)
        ]
    )


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 2)
        self.o = nn.Linear(2, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
        return self.o(a)


def test_attention_couples_q_and_k_over_the_head_dim_and_v_with_the_output() -> None:
    tr = trace_groups(Attention(), torch.randn(1, 5, 4))
    assert units(tr, "q.weight", 0) == expect(
        *[{"q.weight:0": [i], "q.bias:0": [i], "k.weight:0": [i], "k.bias:0": [i]} for i in range(3)]
    )
    assert units(tr, "v.weight", 0) == expect(
        *[{"v.weight:0": [i], "v.bias:0": [i], "o.weight:1": [i]} for i in range(2)]
    )


class Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 3)
        self.fc = nn.Linear(3, 2, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(ids))


def test_embedding_columns_feed_the_next_layer() -> None:
    tr = trace_groups(Embed(), torch.tensor([[1, 4, 7]]))
    assert units(tr, "emb.weight", 1) == expect(*[{"emb.weight:1": [i], "fc.weight:1": [i]} for i in range(3)])
