"""Weight layouts: which axis of a layer's weight indexes its outputs and which its inputs.

One place decides this for every layer kind prunekit prunes, from what the module is (its class, seen
through the wrapper class a parametrization swaps in), never from the name of the instance's class:

==========================  ==================================  =========================
layer                       stored weight                       kind
==========================  ==================================  =========================
``nn.Linear``               ``[out, in]``                       ``linear``
``nn.Conv1d/2d/3d``         ``[out, in/groups, *kernel]``       ``conv``
``nn.ConvTranspose1d/2d/3d``  ``[in, out/groups, *kernel]``     ``conv-transposed``
transformers ``Conv1D``     ``[in, out]`` (GPT-2)               ``hf-conv1d``
==========================  ==================================  =========================

Everything that reads weight axes (granularities through the planner, the layer-wise solvers, channel
masks, surgery, reports) works on the *canonical* form ``[out, in/groups, *kernel]`` that
:meth:`WeightLayout.to_canonical` gives and maps results back with :meth:`WeightLayout.from_canonical`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import cast

from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = [
    "WeightLayout",
    "base_class",
    "is_parametrization_key",
    "is_prunable",
    "layer_weight",
    "parametrization_list",
    "plain_key",
    "weight_layout",
]

# where transformers defines (or once defined) its Conv1D
_HF_CONV1D_MODULES = ("transformers.pytorch_utils", "transformers.modeling_utils")


def _hf_conv1d_types() -> tuple[type, ...]:
    """transformers' Conv1D class, when transformers is loaded (no instance can exist before it is)."""
    found: list[type] = []
    for modname in _HF_CONV1D_MODULES:
        cls = getattr(sys.modules.get(modname), "Conv1D", None)
        if isinstance(cls, type) and issubclass(cls, nn.Module) and cls not in found:
            found.append(cls)
    return tuple(found)


def base_class(module: nn.Module) -> type:
    """The module's own class: a parametrized module's class is a generated subclass
    (``ParametrizedConv1D``) whose first base is the class it had before."""
    cls = type(module)
    if parametrize.is_parametrized(module) and cls.__bases__:
        return cls.__bases__[0]
    return cls


def layer_weight(module: nn.Module, name: str = "weight") -> Tensor:
    """``module.<name>`` typed as the tensor it is (torch types module attributes as ``Tensor | Module``): the
    weight as the model computes it, so a masked or otherwise parametrized weight comes out computed. Raises
    ``AttributeError`` when ``module`` has no such attribute."""
    return cast(Tensor, getattr(module, name))


def parametrization_list(module: nn.Module, name: str = "weight") -> parametrize.ParametrizationList:
    """The parametrizations of ``module.<name>``: torch's ``module.parametrizations[name]``, typed.

    It holds the stored tensor(s) (``original``, or ``original0``, ``original1``, ... when a
    parametrization's ``right_inverse`` returns several) and the parametrizations in the order they apply.
    Raises ``AttributeError`` when ``module`` has no parametrization and ``KeyError`` when ``name`` has none.
    """
    plists = cast(nn.ModuleDict, module.parametrizations)
    return cast(parametrize.ParametrizationList, plists[name])


def is_parametrization_key(key: str) -> bool:
    """Whether a state-dict ``key`` lies inside a parametrization (``conv.parametrizations.weight.original``, or
    ``parametrizations.weight.original`` of a parametrized root module)."""
    return key.startswith("parametrizations.") or ".parametrizations." in key


def plain_key(key: str) -> str:
    """The plain name of a state-dict ``key``: ``[m.]parametrizations.weight.original`` -> ``[m.]weight``
    (other keys as they are)."""
    if key.startswith("parametrizations."):
        key = key[len("parametrizations.") :]
    return key.replace(".parametrizations.", ".").replace(".original", "")


def _swap_within_groups(t: Tensor, groups: int) -> Tensor:
    """``[groups * a, b, *kernel]`` -> ``[groups * b, a, *kernel]``, the first two axes swapped within each
    group: a grouped transposed convolution's stored weight to its canonical layout, and back (the map is
    its own inverse)."""
    a, b, *kernel = t.shape
    a //= groups
    return t.reshape(groups, a, b, *kernel).transpose(1, 2).reshape(groups * b, a, *kernel)


@dataclass(frozen=True)
class WeightLayout:
    """Where a layer keeps its output and input axes. ``groups``: grouped convolutions' group count."""

    kind: str
    out_axis: int
    in_axis: int
    groups: int = 1

    def to_canonical(self, t: Tensor) -> Tensor:
        """``t`` (shaped like the stored weight) as ``[out, in/groups, *kernel]``; a view where one exists
        (Linear, Conv, Conv1D, ungrouped transposed convolutions), so writes go through."""
        if self.kind == "hf-conv1d":
            return t.transpose(0, 1)
        if self.kind == "conv-transposed":
            if self.groups == 1:
                return t.transpose(0, 1)
            # output channel o = group * out_per_group + j; its inputs are the group's in/groups channels
            return _swap_within_groups(t, self.groups)
        return t

    def from_canonical(self, t: Tensor) -> Tensor:
        """The inverse of :meth:`to_canonical`: a canonical tensor back in the stored weight's layout."""
        if self.kind == "hf-conv1d":
            return t.transpose(0, 1)
        if self.kind == "conv-transposed":
            if self.groups == 1:
                return t.transpose(0, 1)
            return _swap_within_groups(t, self.groups)
        return t

    def canonical_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The canonical ``[out, in/groups, *kernel]`` shape of a stored weight shape."""
        if self.kind == "hf-conv1d" or (self.kind == "conv-transposed" and self.groups == 1):
            return (shape[1], shape[0], *shape[2:])
        if self.kind == "conv-transposed":
            return (shape[1] * self.groups, shape[0] // self.groups, *shape[2:])
        return tuple(shape)

    def out_features(self, shape: tuple[int, ...]) -> int:
        """The number of outputs (neurons, filters) of a weight of this shape."""
        return self.canonical_shape(shape)[0]


def weight_layout(module: nn.Module) -> WeightLayout | None:
    """The layout of ``module.weight``, or None when prunekit does not prune this kind of module."""
    if isinstance(module, nn.Linear):
        return WeightLayout("linear", 0, 1)
    if isinstance(module, nn.modules.conv._ConvNd):
        groups = int(module.groups)
        if module.transposed:
            return WeightLayout("conv-transposed", 1, 0, groups)
        return WeightLayout("conv", 0, 1, groups)
    hf = _hf_conv1d_types()
    if hf and isinstance(module, hf):
        return WeightLayout("hf-conv1d", 1, 0)
    return None


def is_prunable(module: nn.Module) -> bool:
    """Is ``module`` a layer whose weight prunekit prunes (Linear, any Conv, transformers' Conv1D)?"""
    return weight_layout(module) is not None
