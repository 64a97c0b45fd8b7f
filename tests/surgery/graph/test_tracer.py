"""The graph package: the union-find, labels, the Group model, the rule registry and the driver's bookkeeping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import ModelError
from prunekit.surgery.graph import Group, Member, TraceResult, op_rule, trace_groups
from prunekit.surgery.graph.labels import NO_ATOM, ParamView, compress, const_label, one_atom_per_index, per_index
from prunekit.surgery.graph.registry import find_module_rule, find_op_rule, is_aliasing, is_inplace_view, module_rule
from prunekit.surgery.graph.unionfind import UnionFind
from prunekit.surgery.rules.modules import rnn_rule
from prunekit.surgery.rules.pointwise import pointwise_rule
from prunekit.surgery.rules.shape import view_rule

# ------------------------------------------------------------------------------------------- union-find


def test_union_find_roots_are_the_smallest_atom_of_each_component() -> None:
    uf = UnionFind()
    assert uf.make(3) == 0 and uf.make(4, producer=True) == 3
    uf.union(5, 1)
    uf.union_many(np.array([1, 6]), np.array([2, 5]))  # 1-2, 6-5: {1, 2, 5, 6}
    assert uf.roots().tolist() == [0, 1, 1, 3, 4, 1, 1]
    assert uf.producer == [False] * 3 + [True] * 4
    uf.mark_producer(0, 2)
    assert uf.producer[:3] == [True, True, False]


def test_union_find_follows_long_chains() -> None:
    uf = UnionFind()
    uf.make(1000)
    uf.union_many(np.arange(999, 0, -1), np.arange(998, -1, -1))  # 999-998, ..., 1-0: one class
    uf.union(0, 0)
    assert (uf.roots() == 0).all()


# ----------------------------------------------------------------------------------------------- labels


def test_labels_compress_constant_axes_and_read_one_atom_per_index() -> None:
    lab = np.array([[[3, 3], [4, 4], [5, 5]]])  # (1, 3, 2): channels along axis 1, constant along axis 2
    small = compress(lab)
    assert small.shape == (1, 3, 1)
    assert one_atom_per_index(small, 1, 3).tolist() == [3, 4, 5]
    assert one_atom_per_index(np.array([[1, 2], [3, 4]]), 1, 2) is None  # two atoms at each index
    assert [a.tolist() for a in per_index(np.array([[1, 2], [3, NO_ATOM]]), 1, 2)] == [[1, 3], [-1, 2]]
    assert const_label(3).shape == (1, 1, 1) and (const_label(3) == NO_ATOM).all()


def test_param_view_maps_a_transpose_to_the_parameter_dimensions() -> None:
    w = torch.zeros(4, 3)
    assert ParamView("w", w, w.t()).dim_map() == {0: 1, 1: 0}
    assert ParamView("w", w, w[1:]).dim_map() is None  # an offset view is not a permutation
    assert ParamView("w", w, w[1:3, 2]).flat_index().tolist() == [5, 8]


# --------------------------------------------------------------------------------------------- the Group


def test_group_from_classes_and_from_index_class_agree() -> None:
    members = [Member("a.weight", 0), Member("b.weight", 1)]
    classes = [{("a.weight", 0): np.array([0, 2]), ("b.weight", 1): np.array([1])},
               {("a.weight", 0): np.array([1]), ("b.weight", 1): np.array([0, 2])}]
    g = Group(members, classes, [True, False])
    assert [lab.tolist() for lab in g.index_class] == [[0, 1, 0], [1, 0, 1]]
    assert g.size == 2 and g.removable == [True, False]
    assert g.counts().tolist() == [[2, 1], [1, 2]]
    h = Group(members, index_class=[np.array([0, 1, 0]), np.array([1, 0, 1])])
    assert h.size == 2 and h.removable == [True, True]
    assert [{k: v.tolist() for k, v in c.items()} for c in h.classes] == [
        {("a.weight", 0): [0, 2], ("b.weight", 1): [1]}, {("a.weight", 0): [1], ("b.weight", 1): [0, 2]}]
    assert g.describe() == "group of 2 units (1 removable): a.weight[dim 0], b.weight[dim 1]"
    with pytest.raises(ValueError, match="classes or index_class"):
        Group(members)


def test_trace_result_finds_the_group_of_a_dimension() -> None:
    g = Group([Member("a.weight", 0)], index_class=[np.array([0, 1])])
    tr = TraceResult(groups=[g])
    assert tr.group_of("a.weight", 0) is g
    assert tr.group_of("a.weight", 1) is None


# ------------------------------------------------------------------------------------------- the registry


def test_registry_finds_rules_by_name_by_tag_and_by_class() -> None:
    assert find_op_rule(torch.ops.aten.view.default, "view") is view_rule
    assert find_op_rule(torch.ops.aten.mul.Tensor, "mul") is pointwise_rule  # by the pointwise tag
    assert find_op_rule(torch.ops.aten.relu_.default, "relu_") is pointwise_rule  # in place: by its twin
    assert find_op_rule(torch.ops.aten.cummax.default, "cummax") is None
    assert is_aliasing("view") and not is_aliasing("view_copy")
    assert is_inplace_view("transpose_") and not is_inplace_view("transpose")
    assert find_module_rule(nn.LSTM(2, 3)) is rnn_rule and find_module_rule(nn.Linear(2, 3)) is None


def test_registering_twice_or_without_the_aten_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="already has a rule"):
        op_rule("aten.view")(view_rule)
    with pytest.raises(ValueError, match="aten.<name>"):
        op_rule("view")(view_rule)
    with pytest.raises(ValueError, match="already has a module rule"):
        module_rule(nn.RNNBase)(rnn_rule)


# ------------------------------------------------------------------------------------------- the driver


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 3)
        self.b = nn.Linear(3, 3)
        self.c = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.c(h + self.b(h))


def test_trace_records_calls_producers_output_shapes_and_residual_adds() -> None:
    model = Block()
    tr = trace_groups(model, torch.randn(2, 2))
    assert [name for name, _, _ in tr.module_calls] == ["a", "b", "c", ""]
    assert tr.producer_of[("a.weight", 0)] == "a" and tr.producer_of[("b.weight", 0)] == "b"
    assert ("c.weight", 0) not in tr.producer_of  # a single output: nothing to remove there
    assert tr.output_shapes == [(2, 1)]
    assert len(tr.residual_chain) == 1  # the one add
    assert model.training  # put back as it was


def test_fixed_dims_are_kept_and_unknown_opaque_names_refused() -> None:
    tr = trace_groups(Block(), torch.randn(2, 2), fixed=lambda name, mod: [("weight", 0)] if name == "b" else [])
    assert not any(tr.group_of("a.weight", 0).removable)  # b's outputs are a's, through the residual
    with pytest.raises(ModelError, match="not in the model: nope"):
        trace_groups(Block(), torch.randn(2, 2), opaque=["nope"])
