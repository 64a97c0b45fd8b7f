"""Tests of :mod:`prunekit.surgery.handlers`: registration is validated, handlers are found by class, and each
handler puts a module's size attributes in step with its sliced tensors."""

from __future__ import annotations

import pytest

from prunekit.errors import ConfigError
from prunekit.surgery import HANDLERS, ModuleHandler


def test_handler_registration_is_validated() -> None:
    with pytest.raises(ConfigError):
        HANDLERS.add("bad-handler", object())  # type: ignore[arg-type]

    class NoTypes(ModuleHandler):
        pass

    with pytest.raises(ConfigError, match="names no module types"):
        HANDLERS.add("no-types", NoTypes())
