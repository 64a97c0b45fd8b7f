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
    with pytest.raises(ConfigError, match="'uno' is already taken"):
        reg.add("uno", 3)
    with pytest.raises(ConfigError, match="'two' is already taken"):
        reg.add("mine", 4, aliases=("two",))  # a taken alias: nothing of the entry is registered
    assert "mine" not in reg and reg.get("two") == 2
    with pytest.raises(ConfigError, match="'selfy' is already taken"):
        reg.add("selfy", 5, aliases=("SELFY",))
    assert "selfy" not in reg
    reg.remove("one")  # the name and its alias
    assert reg.names() == ["two"] and "uno" not in reg
    with pytest.raises(UnknownNameError, match="two"):  # lists what is registered
        reg.remove("one")
    with pytest.raises(UnknownNameError):
        reg.remove(None)
    reg.add("three", 3, aliases=("drei",))
    reg.remove("DREI")  # an alias removes only itself
    assert reg.names() == ["three", "two"]
