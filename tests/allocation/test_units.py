"""Tests of :mod:`prunekit.allocation.units`: physical unit sets get their share from a core allocation and lose
their lowest-scoring removable units, per segment of a concatenation."""

from __future__ import annotations

import numpy as np
import pytest

import prunekit as pk
from prunekit.allocation.units import (
    allocate_units,
    default_global_cap,
    remove_lowest,
    structural_allocation,
    unique_names,
)
from prunekit.errors import ConfigError


def test_allocations() -> None:
    scores = [np.array([5.0, 1, 3, 2]), np.arange(16, dtype=float)]
    rem = [np.ones(4, bool), np.ones(16, bool)]
    assert remove_lowest(scores[0], rem[0], 0.5).tolist() == [1, 3]
    assert remove_lowest(scores[1], rem[1], 0.5).tolist() == list(range(8))
    assert len(remove_lowest(scores[1], rem[1], 0.5, round_to=8)) == 8
    assert len(remove_lowest(scores[0], rem[0], 0.5, round_to=8)) == 2
    assert 20 - len(remove_lowest(np.arange(20.0), np.ones(20, bool), 0.5, round_to=8)) == 16
    sizes = [np.ones(4), np.ones(16)]
    gl, per = allocate_units(["a", "b"], scores, sizes, rem, 0.5, structural_allocation("global", 0.5, 0.5))
    assert all(len(x) <= 0.5 * len(s) for x, s in zip(gl, scores)) and max(per.values()) <= 0.5
    with pytest.raises(ConfigError, match=r"global_cap must be in \(0, 1\)"):
        structural_allocation("global", 0.5, 1.5)
    with pytest.raises(ConfigError, match="allocation='global'"):  # the cap means nothing to another allocation
        structural_allocation("uniform", 0.5, 0.5)
    assert structural_allocation("global", 0.3).max_sparsity == pytest.approx(0.6)  # the default min(0.9, 2 s)
    assert structural_allocation(pk.Global(max_sparsity=0.4), 0.3).max_sparsity == 0.4  # one meaning of the cap


def test_allocations_split_a_concatenation_by_producer() -> None:
    # units 0-3 come from one layer, 4-11 from another; the first layer's units all score lower
    scores = np.arange(12, dtype=float)
    rem = np.ones(12, bool)
    seg = np.array([0] * 4 + [1] * 8)
    assert remove_lowest(scores, rem, 0.5, segments=seg).tolist() == [0, 1, 4, 5, 6, 7]  # half of each segment
    assert remove_lowest(scores, rem, 0.5).tolist() == [0, 1, 2, 3, 4, 5]  # no segments
    g, _ = allocate_units(
        ["cat"], [scores], [np.ones(12)], [rem], 0.5, structural_allocation("global", 0.5, 0.5), segments=[seg]
    )
    assert g[0].tolist() == [0, 1, 4, 5, 6, 7]  # the share holds per segment: segment 0 keeps two units


def test_remove_lowest_keeps_one_unit_and_only_removes_removable_ones():
    assert remove_lowest(np.array([2.0, 1.0]), np.ones(2, bool), 0.99).tolist() == [1]  # one unit stays
    removable = np.array([False, True, True, True])
    assert remove_lowest(np.array([1.0, 2.0, 3.0, 4.0]), removable, 0.5).tolist() == [1, 2]  # 0 is pinned
    assert remove_lowest(np.array([1.0, 2.0]), np.zeros(2, bool), 0.5).tolist() == []
    # ties: the earlier unit goes first
    assert remove_lowest(np.array([1.0, 1.0, 1.0, 0.0]), np.ones(4, bool), 0.5).tolist() == [0, 3]


def test_unique_names_and_the_default_cap():
    assert unique_names(["a", "b", "a", "a"]) == ["a", "b", "a#1", "a#2"]
    assert default_global_cap(0.3) == pytest.approx(0.6) and default_global_cap(0.6) == 0.9
    assert structural_allocation(None, 0.5) == pk.Uniform()
    assert allocate_units([], [], [], [], 0.5, pk.Uniform()) == ([], {})
