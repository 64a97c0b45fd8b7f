"""Tests of :mod:`prunekit.surgery.handlers`: registration is validated, handlers are found by class, and each
handler puts a module's size attributes in step with its sliced tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.surgery import HANDLERS, ModuleHandler
from prunekit.surgery.handlers import handler_for

CONV, LINEAR, BATCHNORM = HANDLERS.get("conv"), HANDLERS.get("linear"), HANDLERS.get("batchnorm")


def test_handler_registration_is_validated() -> None:
    with pytest.raises(ConfigError):
        HANDLERS.add("bad-handler", object())  # type: ignore[arg-type]

    class NoTypes(ModuleHandler):
        pass

    with pytest.raises(ConfigError, match="names no module types"):
        HANDLERS.add("no-types", NoTypes())


def test_the_most_specific_registered_class_serves_a_module():
    class MyLinear(nn.Linear):
        pass

    assert handler_for(nn.Conv2d(2, 2, 1)) is CONV and handler_for(nn.ConvTranspose1d(2, 2, 1)) is CONV
    assert handler_for(MyLinear(2, 2)) is LINEAR
    assert handler_for(nn.MultiheadAttention(4, 2)) is HANDLERS.get("multihead-attention")  # not its out_proj's
    assert handler_for(nn.BatchNorm1d(3)) is BATCHNORM
    assert handler_for(nn.ReLU()) is None  # no sizes to keep: the plain fallback


def test_handlers_put_size_attributes_in_step_with_sliced_tensors():
    dw = nn.Conv2d(4, 8, 3, groups=4)  # depthwise with a channel multiplier of 2
    old = {"weight": tuple(dw.weight.shape)}
    dw.weight = nn.Parameter(dw.weight.detach()[:4].clone())  # two input channels (four filters) removed
    CONV.update(dw, old)
    assert (dw.in_channels, dw.out_channels, dw.groups) == (2, 4, 2)
    lin = nn.Linear(3, 4)
    lin.weight = nn.Parameter(torch.zeros(2, 1))
    LINEAR.update(lin, {})
    assert (lin.out_features, lin.in_features) == (2, 1)
    bn = nn.BatchNorm2d(4)
    bn.weight = nn.Parameter(torch.ones(3))
    BATCHNORM.update(bn, {})
    assert bn.num_features == 3


def test_a_handler_vetoes_shapes_its_module_cannot_take():
    grouped = nn.Conv2d(4, 6, 1, groups=2)
    with pytest.raises(UnsupportedModuleError, match="5 output channels do not split into 2 groups"):
        CONV.check("g", grouped, {"weight": (5, 2, 1, 1)})
    CONV.check("g", grouped, {"weight": (4, 2, 1, 1)})  # two per group: fine
