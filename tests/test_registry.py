"""prunekit.registry: names (case-insensitive), aliases, refusals, and unregistering."""

from __future__ import annotations

import pytest

from prunekit.errors import ConfigError, UnknownNameError
from prunekit.registry import Registry


def test_names_aliases_and_removal():
    reg: Registry[int] = Registry("thing")
    reg.add("One", 1, "the first", aliases=("uno",))
    reg.add("two", 2, "the second")
    assert reg.get("ONE") == reg.get("uno") == 1 and reg.names() == ["one", "two", "uno"]
    assert [e.description for e in reg.entries()] == ["the first", "the second", "alias of One"]
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add("uno", 3)
    reg.remove("one")  # the name and its alias
    assert reg.names() == ["two"] and "uno" not in reg
    with pytest.raises(UnknownNameError, match="two"):  # lists what is registered
        reg.remove("one")
    reg.add("three", 3, aliases=("drei",))
    reg.remove("DREI")  # an alias removes only itself
    assert reg.names() == ["three", "two"]
