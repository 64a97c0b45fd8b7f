"""Exact tests of :mod:`prunekit.surgery.rules.shape`: views, in-place views, concatenation, chunk / split,
slices and GLU halves.

Each case is a tiny model whose coupling is worked out by hand: which indices of which parameter dimensions
form one unit, and whether the unit may be removed. Groups are read through the public model
(:func:`trace_groups`, :meth:`TraceResult.group_of`, :attr:`Group.classes`, :attr:`Group.removable`).
"""

from __future__ import annotations

import torch
from torch import nn

import prunekit as pk
from prunekit.surgery.engine import analyze
from prunekit.surgery.graph import trace_groups

from .conftest import expect, members, units


class Flatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).view(x.shape[0], 16))  # (N, 4, 2, 2) -> (N, 16)


def test_view_merging_channels_with_space_maps_channel_c_to_four_features() -> None:
    tr = trace_groups(Flatten(), torch.randn(2, 3, 2, 2))
    assert units(tr, "conv.weight", 0) == expect(
        *[
            {"conv.weight:0": [c], "conv.bias:0": [c], "fc.weight:1": [4 * c, 4 * c + 1, 4 * c + 2, 4 * c + 3]}
            for c in range(4)
        ]
    )


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
    assert (
        units(tr, "a.weight", 0)
        == units(tr, "b.weight", 0)
        == expect(
            *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)],
            *[{"b.weight:0": [i], "b.bias:0": [i], "c.weight:1": [i + 3]} for i in range(4)],
        )
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
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "fc.weight:1": [i]} for i in range(3)]
    )


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
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i, i + 4], "a.bias:0": [i, i + 4], "c.weight:1": [i]} for i in range(4)]
    )


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
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(4)]
    )


def test_slice_of_the_channels_pins_them() -> None:
    tr = trace_groups(Slice(channels=True), torch.randn(1, 2, 3, 3))
    assert units(tr, "a.weight", 0) == expect(
        *[{"a.weight:0": [i], "a.bias:0": [i], "c.weight:1": [i]} for i in range(3)],
        {"a.weight:0": [3], "a.bias:0": [3]},
        removable=False,
    )


class InPlaceViews(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)  # (B, 16)
        h = h.unsqueeze_(0)  # (1, B, 16)
        h = h.transpose_(0, 1)  # (B, 1, 16)
        h = h.squeeze_(1)  # (B, 16)
        h = h.t_()  # (16, B)
        h = h.t_()
        h = torch.relu(h).swapdims_(0, 1).swapdims_(0, 1)
        return self.b(h)


def test_in_place_view_operations_are_traced() -> None:
    torch.manual_seed(0)
    model = InPlaceViews().eval()
    x = torch.randn(3, 8)
    trace = analyze(model, x)
    group = trace.group_of("a.weight", 0)
    assert group is not None and group.size == 16 and all(group.removable)
    assert {(m.param, m.dim) for m in group.members} == {("a.weight", 0), ("a.bias", 0), ("b.weight", 1)}
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    assert model.a.out_features == 8 and model.b.in_features == 8
    assert model(x).shape == (3, 4)


def test_glu_halves_are_coupled() -> None:
    class GLU(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 32)
            self.b = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(nn.functional.glu(self.a(x), dim=-1))

    model = GLU().eval()
    x = torch.randn(2, 8)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    assert model.a.out_features == 16 and model.b.in_features == 8
    assert model(x).shape == (2, 3)
