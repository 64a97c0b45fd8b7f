"""Tests of :mod:`prunekit.surgery.graph.tracer`: the driver's bookkeeping (module calls, producers, output
shapes, residual adds), fixed and opaque modules, and operations that have no rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ModelError, UnsupportedModuleError
from prunekit.surgery.graph import trace_groups


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
