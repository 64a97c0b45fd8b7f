"""Tests of :mod:`prunekit.criteria.base`: the one criterion interface, its levels and its registry."""

import pytest

import prunekit as pk
from prunekit.criteria import CRITERIA, CriterionLevelError


def test_level_refusal_names_what_works():
    with pytest.raises(CriterionLevelError) as info:
        CRITERIA.get("apoz").check_level("element")
    assert "channel" in str(info.value) and "magnitude" in str(info.value)
    assert isinstance(info.value, pk.PrunekitError)
