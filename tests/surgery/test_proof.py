"""Proving a structural plan (prunekit.surgery.proof): the check run says which module failed and with what,
the groups a model's code fixes the size of are found and kept, and a failure no group explains is raised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.apply.transaction import restore_tree, snapshot_tree
from prunekit.errors import ModelError
from prunekit.surgery import plan_channels
from prunekit.surgery.proof import bisect_failures, probe, still_runs, unexplained
from prunekit.surgery.remove import remove_


class _FixedWidth(nn.Module):
    """conv2's 16 channels are fixed by a hard-coded reshape; conv1's may shrink."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3))
        return self.fc(y.reshape(-1, 16))


def _plan():
    torch.manual_seed(0)
    model, x = _FixedWidth().eval(), torch.randn(2, 3, 8, 8)
    return model, plan_channels(model, x, 0.5)


def test_still_runs_names_the_failing_module_and_keeps_the_error():
    model, plan = _plan()
    snap = snapshot_tree(model)
    remove_(model, plan.removal())
    where: list[str] = []
    errors: list[Exception] = []
    assert not still_runs(model, plan.check_inputs, plan.check_shapes, where, errors)
    restore_tree(snap)
    assert where == ["fc"]  # the reshape runs on 8 channels but hands fc 16 features: fc raises
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert still_runs(model, plan.check_inputs, plan.check_shapes)  # restored: the dense model runs


def test_bisection_keeps_exactly_the_group_the_code_fixes():
    model, plan = _plan()
    assert not probe(model, plan.check_inputs, plan.removal(), plan.check_shapes)
    bad = bisect_failures(model, plan.check_inputs, plan, plan.check_shapes)
    assert [plan.groups[i].members[0].param for i in bad] == ["conv2.weight"]
    rest = [i for i, r in enumerate(plan.remove) if len(r) and i not in bad]
    assert rest and probe(model, plan.check_inputs, plan.removal(rest), plan.check_shapes)


def test_a_failure_no_group_reproduces_is_raised_with_its_cause():
    cause = RuntimeError("flaky")
    with pytest.raises(ModelError, match="RuntimeError: flaky") as info:
        unexplained([cause], set())
    assert info.value.__cause__ is cause
    unexplained([cause], {0})  # explained by a group: nothing to raise
    unexplained([], set())  # a wrong output shape, no exception: the bisection's own business
