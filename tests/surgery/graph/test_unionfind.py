"""Tests of :mod:`prunekit.surgery.graph.unionfind`: classes are connected components rooted at their smallest
atom; flags are per atom."""

from __future__ import annotations

import numpy as np

from prunekit.surgery.graph.unionfind import UnionFind


def test_union_find_roots_are_the_smallest_atom_of_each_component() -> None:
    uf = UnionFind()
    assert uf.make(3) == 0 and uf.make(4, producer=True) == 3
    uf.union(5, 1)
    uf.union_many(np.array([1, 6]), np.array([2, 5]))  # 1-2, 6-5: {1, 2, 5, 6}
    assert uf.roots().tolist() == [0, 1, 1, 3, 4, 1, 1]
    assert uf.producer == [False] * 3 + [True] * 4
    uf.mark_producer(0, 2)
    assert uf.producer[:3] == [True, True, False]


def test_union_find_follows_long_chains() -> None:
    uf = UnionFind()
    uf.make(1000)
    uf.union_many(np.arange(999, 0, -1), np.arange(998, -1, -1))  # 999-998, ..., 1-0: one class
    uf.union(0, 0)
    assert (uf.roots() == 0).all()
