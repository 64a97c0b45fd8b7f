"""Reversible in-place patches: each run-time method replaces some modules' ``forward`` with an instance
attribute (no parameter, buffer or class is touched, so ``state_dict`` is unchanged) and records itself on
the model, so that :func:`restore_` can undo it bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from prunekit.errors import ConfigError

__all__ = ["Patch", "find_patch", "restore_"]

_ATTR = "_prunekit_dynamic"


class Patch:
    """A reversible patch of a model's forward passes; also a context manager that restores on exit.

    Subclasses call :meth:`_install` with ``(module, new_forward)`` pairs.
    """

    kind = "patch"

    def __init__(self, model: nn.Module):
        self.model = model
        self._patched: list[nn.Module] = []
        self.active = False

    def _install(self, pairs: list[tuple[nn.Module, Callable[..., Any]]]) -> None:
        existing = find_patch(self.model)
        if existing is not None:
            raise ConfigError(
                f"the model already carries a run-time patch ({existing.kind}); call "
                "prunekit.dynamic.restore_(model) first (patches do not stack)"
            )
        for module, _fwd in pairs:
            if "forward" in module.__dict__:
                raise ConfigError(
                    f"module {type(module).__name__} already has its forward replaced on the instance (by another "
                    "tool); prunekit.dynamic patches only unpatched modules"
                )
        for module, fwd in pairs:
            module.forward = fwd  # instance attribute: nn.Module.__call__ uses it, state_dict does not see it
            self._patched.append(module)
        self.model.__dict__[_ATTR] = self
        self.active = True

    def restore(self) -> None:
        """Give every patched module its own forward back and forget the patch (idempotent)."""
        for module in self._patched:
            module.__dict__.pop("forward", None)
        self._patched.clear()
        if self.model.__dict__.get(_ATTR) is self:
            del self.model.__dict__[_ATTR]
        self.active = False

    def __enter__(self) -> Patch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def __deepcopy__(self, memo: dict) -> Any:
        raise ConfigError(
            f"a model patched by prunekit.dynamic ({self.kind}) cannot be copied: its patched forward passes are "
            "bound to the original modules. Copy the model before patching, or call prunekit.dynamic.restore_(model)"
        )

    def __getstate__(self) -> Any:
        raise ConfigError(
            f"a model patched by prunekit.dynamic ({self.kind}) cannot be pickled or saved whole; call "
            "prunekit.dynamic.restore_(model) first (its state_dict is unchanged and can be saved at any time)"
        )


def find_patch(model: nn.Module) -> Patch | None:
    """The run-time patch installed on ``model`` or on any of its submodules, or None."""
    for m in model.modules():
        p = m.__dict__.get(_ATTR)
        if p is not None:
            return p
    return None


def restore_(model: nn.Module) -> bool:
    """Undo :func:`merge_tokens_`, :func:`prune_tokens_` or :func:`skip_layers_` on ``model`` in place.

    The model's forward passes become bit-identical to before the patch. Returns True when a patch was
    removed, False when the model carried none.
    """
    p = find_patch(model)
    if p is None:
        return False
    p.restore()
    return True
