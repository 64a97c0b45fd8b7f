"""The registry of tracing rules: how labels flow through each aten operation and through whole modules.

Rule modules (:mod:`prunekit.surgery.rules`) register themselves with the decorators here; the tracer looks
rules up by the operation's name, and operations no name matches through the fallbacks (pointwise
operations are recognised by their tag). An operation without a rule is refused (or, with
``strict=False``, the channels it touches are kept).

- an *op rule* is called as ``rule(tracer, func, args, kwargs, out)`` after the operation ran (``func``:
  the aten overload; ``out``: its result) and labels the outputs from the inputs, coupling and pinning atoms
  on the way;
- a *module rule* traces a module as a whole: the operations inside it are not looked at, and the rule is
  called as ``rule(tracer, name, module, args, kwargs, output)`` once its forward has returned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

__all__ = [
    "ModuleRule",
    "OpRule",
    "fallback_rule",
    "find_module_rule",
    "find_op_rule",
    "inplace_view",
    "is_aliasing",
    "is_inplace_view",
    "module_rule",
    "op_name",
    "op_rule",
]

OpRule = Callable[["Tracer", Any, tuple, dict, Any], None]
ModuleRule = Callable[["Tracer", str, nn.Module, tuple, dict, Any], None]
_F = TypeVar("_F", bound=Callable[..., None])

_OP_RULES: dict[str, OpRule] = {}
_ALIASING: set[str] = set()
_INPLACE_VIEWS: set[str] = set()
_FALLBACKS: list[tuple[Callable[[Any], bool], OpRule]] = []
_MODULE_RULES: dict[type, ModuleRule] = {}


def op_name(func: Any) -> str:
    """The name rules are registered under: the aten overload's packet name (``aten.view.default`` ->
    ``"view"``), or ``str(func)`` for anything else."""
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


def _bare(name: str) -> str:
    if not name.startswith("aten."):
        raise ValueError(f"an operation is named as the dispatcher names it, 'aten.<name>'; got {name!r}")
    return name[len("aten.") :]


def op_rule(*names: str, aliasing: bool = False) -> Callable[[_F], _F]:
    """Register the decorated function as the rule of the aten operations ``names`` ("aten.view", ...; the
    overload packet's name, any overload).

    ``aliasing=True``: the operation returns a view of its input. Applied to a parameter (or a view of one)
    that carries no label of its own, it is skipped: parameters are recognised by their storage where they
    are used. Raises ValueError when a name is not "aten.<name>" or already has a rule.
    """

    def deco(fn: _F) -> _F:
        for name in names:
            bare = _bare(name)
            if bare in _OP_RULES:
                raise ValueError(f"aten.{bare} already has a rule ({_OP_RULES[bare].__qualname__})")
            _OP_RULES[bare] = fn
            if aliasing:
                _ALIASING.add(bare)
        return fn

    return deco


def fallback_rule(predicate: Callable[[Any], bool]) -> Callable[[_F], _F]:
    """Register the decorated function as the rule of every operation ``func`` without a rule of its own
    for which ``predicate(func)`` holds (fallbacks are tried in the order they were registered)."""

    def deco(fn: _F) -> _F:
        _FALLBACKS.append((predicate, fn))
        return fn

    return deco


def inplace_view(*names: str) -> None:
    """Declare in-place view operations ("aten.transpose_", ...): the tracer runs the out-of-place twin
    (a view, no data is copied), labels it by the twin's rule and gives that label to the tensor in place.
    Names whose operation or twin this torch does not have are left out."""
    for name in names:
        bare = _bare(name)
        if hasattr(torch.ops.aten, bare) and hasattr(torch.ops.aten, bare[:-1]):
            _INPLACE_VIEWS.add(bare)


def module_rule(*types: type[nn.Module]) -> Callable[[_F], _F]:
    """Register the decorated function as the rule that traces modules of these classes (and their
    subclasses) as a whole. Raises ValueError when a class already has a rule."""

    def deco(fn: _F) -> _F:
        for cls in types:
            if cls in _MODULE_RULES:
                raise ValueError(f"{cls.__name__} already has a module rule ({_MODULE_RULES[cls].__qualname__})")
            _MODULE_RULES[cls] = fn
        return fn

    return deco


def find_op_rule(func: Any, name: str) -> OpRule | None:
    """The rule of operation ``func`` (its packet's name is ``name``, without "aten."): the rule registered
    for the name, else the first fallback whose predicate holds, else None."""
    rule = _OP_RULES.get(name)
    if rule is not None:
        return rule
    for predicate, fallback in _FALLBACKS:
        if predicate(func):
            return fallback
    return None


def is_aliasing(name: str) -> bool:
    """Whether operation ``name`` (without "aten.") was registered as returning a view of its input."""
    return name in _ALIASING


def is_inplace_view(name: str) -> bool:
    """Whether operation ``name`` (without "aten.") was declared an in-place view (:func:`inplace_view`)."""
    return name in _INPLACE_VIEWS


def find_module_rule(module: nn.Module) -> ModuleRule | None:
    """The module rule of ``module``'s class or its nearest base class that has one, else None."""
    for cls in type(module).__mro__:
        if cls in _MODULE_RULES:
            return _MODULE_RULES[cls]
    return None
