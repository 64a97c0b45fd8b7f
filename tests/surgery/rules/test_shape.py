"""Exact tests of the tracer's op rules, one or more per rule module of :mod:`prunekit.surgery.rules`.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import UnsupportedModuleError
from prunekit.surgery.graph import TraceResult, trace_groups


def units(tr: TraceResult, param: str, dim: int) -> list[tuple[dict[str, list[int]], bool]]:
    """The units of the group holding ``param`` along ``dim``: ({"param:dim": indices}, removable), sorted."""
    g = tr.group_of(param, dim)
    assert g is not None, f"{param}:{dim} is in no group"
    out = [({f"{p}:{d}": sorted(int(i) for i in idx) for (p, d), idx in c.items()}, bool(r))
           for c, r in zip(g.classes, g.removable)]
    return sorted(out, key=lambda u: sorted(u[0].items()))


def expect(*unit_list: dict[str, list[int]], removable: bool = True) -> list[tuple[dict[str, list[int]], bool]]:
    return sorted(((u, removable) for u in unit_list), key=lambda u: sorted(u[0].items()))


def members(tr: TraceResult, param: str, dim: int) -> set[str]:
    g = tr.group_of(param, dim)
    assert g is not None
    return {f"{m.param}:{m.dim}" for m in g.members}


# --------------------------------------------------------------------------------------------- pointwise


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i]} for i in range(4)
    ])
    # the model's output keeps its channels; the image's channels are data (no producer)
    assert units(tr, "c.weight", 0) == expect(*[{"c.weight:0": [i], "c.bias:0": [i]} for i in range(2)],
                                              removable=False)
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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i]} for i in range(4)
    ])


class ConstAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x) + torch.arange(4.0))  # a constant of fixed size along the channels


def test_pointwise_constant_of_fixed_size_pins_the_channels() -> None:
    tr = trace_groups(ConstAdd(), torch.randn(2, 3))
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(4)
    ], removable=False)


# ------------------------------------------------------------------------------------------------- shape


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], 16))  # (N, 4, 2, 2) -> (N, 16)


def test_view_merging_channels_with_space_maps_channel_c_to_four_features() -> None:
    tr = trace_groups(Flatten(), torch.randn(2, 3, 2, 2))
    assert units(tr, "conv.weight", 0) == expect(*[
        {"conv.weight:0": [c], "conv.bias:0": [c], "fc.weight:1": [4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3]}
        for c in range(4)
    ])


class SplitView(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 12)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(x).view(2, 3, 4).sum(1))  # the 12 channels split into 3 x 4


def test_view_splitting_a_channel_axis_pins_it() -> None:
    tr = trace_groups(SplitView(), torch.randn(2, 5))
    assert all(not r for r in tr.group_of("a.weight", 0).removable)
    assert tr.group_of("a.weight", 0).size == 12


class Cat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(7, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_cat_maps_channel_i_of_the_second_operand_to_i_plus_the_first_width() -> None:
    tr = trace_groups(Cat(), torch.randn(1, 2, 3, 3))
    # one group (both feed c's input channels), seven units
    assert units(tr, "a.weight", 0) == units(tr, "b.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)],
        *[{"b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i + 3]} for i in range(4)],
    )


class TransposeInPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(2, 3, 1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)  # (N, 3, L)
        h.transpose_(1, 2)  # (N, L, 3), in place
        return self.fc(h)


def test_transpose_in_place_moves_the_channels_to_the_last_axis() -> None:
    tr = trace_groups(TransposeInPlace(), torch.randn(1, 2, 5))
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "fc.weight:1": [i]} for i in range(3)
    ])


class Chunk(nn.Module):
    def __init__(self, sizes: list[int] | None = None) -> None:
        super().__init__()
        self.sizes = sizes
        self.a = nn.Linear(3, 8)
        self.c = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, v = self.a(x).chunk(2, dim=1) if self.sizes is None else self.a(x).split(self.sizes, dim=1)
        return self.c(u * torch.sigmoid(v))


def test_chunk_couples_index_i_of_every_piece() -> None:
    tr = trace_groups(Chunk(), torch.randn(2, 3))
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i, i + 4], "a.bias:0": [i, i + 4], "c.weight:1": [i]} for i in range(4)
    ])


def test_split_with_explicit_sizes_pins_the_channels() -> None:
    tr = trace_groups(Chunk([4, 4]), torch.randn(2, 3))
    assert members(tr, "a.weight", 0) == {"a.weight:0", "a.bias:0", "c.weight:1"}
    assert not any(tr.group_of("a.weight", 0).removable)


class Slice(nn.Module):
    def __init__(self, channels: bool) -> None:
        super().__init__()
        self.channels = channels
        self.a = nn.Conv2d(2, 4, 1)
        self.c = nn.Conv2d(3 if channels else 4, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(h[:, :3] if self.channels else h[:, :, 1:])


def test_slice_along_space_is_free() -> None:
    tr = trace_groups(Slice(channels=False), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(4)
    ])


def test_slice_of_the_channels_pins_them() -> None:
    tr = trace_groups(Slice(channels=True), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)],
        {"a.weight:0": [3], "a.bias:0": [3]},
        removable=False,
    )


# ------------------------------------------------------------------------------------------------ reduce


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "fc.weight:1": [i]} for i in range(3)
    ])


class ChannelPad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.pad(self.a(x), (1, 1)))  # two constant channels around the three


def test_padding_a_channel_axis_pins_it() -> None:
    tr = trace_groups(ChannelPad(), torch.randn(2, 2))
    assert units(tr, "a.weight", 0) == expect(*[{"a.weight:0": [i], "a.bias:0": [i]} for i in range(3)],
                                              removable=False)


# ---------------------------------------------------------------------------------------------- indexing


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)
    ])


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


# ------------------------------------------------------------------------------------------------ linear


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
    assert units(tr, "g.weight", 0) == expect(*[
        {"g.weight:0": [j, j + 3], "g.bias:0": [j, j + 3], "c.weight:1": [j, j + 3]} for j in range(3)
    ])


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [c], "a.bias:0": [c], "dw.weight:0": [c], "dw.bias:0": [c], "c.weight:1": [c]}
        for c in range(3)
    ])


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
    assert units(tr, "q.weight", 0) == expect(*[
        {"q.weight:0": [i], "q.bias:0": [i], "k.weight:0": [i], "k.bias:0": [i]} for i in range(3)
    ])
    assert units(tr, "v.weight", 0) == expect(*[
        {"v.weight:0": [i], "v.bias:0": [i], "o.weight:1": [i]} for i in range(2)
    ])


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


# -------------------------------------------------------------------------------------------------- norm


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "bn.weight:0": [i], "bn.bias:0": [i], "bn.running_mean:0": [i],
         "bn.running_var:0": [i], "gn_conv.weight:1": [i]} for i in range(3)
    ])
    # channel j of group 0 goes with channel j of group 1 (two groups of two channels)
    assert units(tr, "gn_conv.weight", 0) == expect(*[
        {"gn_conv.weight:0": [j, j + 2], "gn_conv.bias:0": [j, j + 2], "gn.weight:0": [j, j + 2],
         "gn.bias:0": [j, j + 2], "c.weight:1": [j, j + 2]} for j in range(2)
    ])


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
    assert units(tr, "a.weight", 0) == expect(*[
        {"a.weight:0": [i], "a.bias:0": [i], "ln.weight:0": [i], "ln.bias:0": [i], "c.weight:1": [i]}
        for i in range(3)
    ])


# ----------------------------------------------------------------------------------------------- modules


class Recurrent(nn.Module):
    def __init__(self, proj_size: int = 0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 3, batch_first=True, proj_size=proj_size)
        self.fc = nn.Linear(proj_size or 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


def test_lstm_hidden_unit_j_is_row_j_of_every_gate() -> None:
    tr = trace_groups(Recurrent(), torch.randn(1, 4, 2))
    gates = lambda j: [j, 3 + j, 6 + j, 9 + j]  # input, forget, cell, output gates
    assert units(tr, "lstm.weight_hh_l0", 1) == expect(*[
        {"lstm.weight_ih_l0:0": gates(j), "lstm.weight_hh_l0:0": gates(j), "lstm.weight_hh_l0:1": [j],
         "lstm.bias_ih_l0:0": gates(j), "lstm.bias_hh_l0:0": gates(j), "fc.weight:1": [j]} for j in range(3)
    ])


def test_lstm_with_proj_size_is_kept_whole() -> None:
    tr = trace_groups(Recurrent(proj_size=2), torch.randn(1, 4, 2))
    assert not any(tr.group_of("lstm.weight_hh_l0", 0).removable)
    assert any("is kept whole: it has proj_size" in n for n in tr.notes)


def test_an_ignored_module_is_not_looked_into_and_its_neighbours_keep_their_sizes() -> None:
    tr = trace_groups(Recurrent(), torch.randn(1, 4, 2), opaque=["lstm"])
    assert tr.group_of("lstm.weight_hh_l0", 1) is None  # no atom inside the closed box
    assert units(tr, "fc.weight", 1) == expect(*[{"fc.weight:1": [j]} for j in range(3)], removable=False)
    assert any("module 'lstm' (LSTM) is ignored" in n for n in tr.notes)


# ------------------------------------------------------------------------------------------ no rule at all


class Unknown(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.c = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.cummax(self.a(x), dim=0).values)  # no rule for aten.cummax


def test_an_operation_without_a_rule_refuses_or_keeps_what_it_touches() -> None:
    with pytest.raises(UnsupportedModuleError, match="aten.cummax"):
        trace_groups(Unknown(), torch.randn(2, 2))
    tr = trace_groups(Unknown(), torch.randn(2, 2), strict=False)
    assert not any(tr.group_of("a.weight", 0).removable)
    assert any("aten.cummax" in n for n in tr.notes)
