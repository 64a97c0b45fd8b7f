"""Tests of :mod:`prunekit.surgery.graph.registry`: rules are found by operation name, by tag and by module
class; registering twice or without the ``aten.`` prefix is refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.surgery.graph import module_rule, op_rule
from prunekit.surgery.graph.registry import find_module_rule, find_op_rule, is_aliasing, is_inplace_view
from prunekit.surgery.rules.modules import rnn_rule
from prunekit.surgery.rules.pointwise import pointwise_rule
from prunekit.surgery.rules.shape import view_rule


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
