"""Tests of :mod:`prunekit.surgery.graph.groups`: a :class:`Group` built from classes or from per-dimension
index classes, and :class:`TraceResult` finding the group of a parameter dimension."""

from __future__ import annotations

import numpy as np
import pytest

from prunekit.surgery.graph import Group, Member, TraceResult


def test_group_from_classes_and_from_index_class_agree() -> None:
    members = [Member("a.weight", 0), Member("b.weight", 1)]
    classes = [
        {("a.weight", 0): np.array([0, 2]), ("b.weight", 1): np.array([1])},
        {("a.weight", 0): np.array([1]), ("b.weight", 1): np.array([0, 2])},
    ]
    g = Group(members, classes, [True, False])
    assert [lab.tolist() for lab in g.index_class] == [[0, 1, 0], [1, 0, 1]]
    assert g.size == 2 and g.removable == [True, False]
    assert g.counts().tolist() == [[2, 1], [1, 2]]
    h = Group(members, index_class=[np.array([0, 1, 0]), np.array([1, 0, 1])])
    assert h.size == 2 and h.removable == [True, True]
    assert [{k: v.tolist() for k, v in c.items()} for c in h.classes] == [
        {("a.weight", 0): [0, 2], ("b.weight", 1): [1]},
        {("a.weight", 0): [1], ("b.weight", 1): [0, 2]},
    ]
    assert g.describe() == "group of 2 units (1 removable): a.weight[dim 0], b.weight[dim 1]"
    with pytest.raises(ValueError, match="classes or index_class"):
        Group(members)


def test_trace_result_finds_the_group_of_a_dimension() -> None:
    g = Group([Member("a.weight", 0)], index_class=[np.array([0, 1])])
    tr = TraceResult(groups=[g])
    assert tr.group_of("a.weight", 0) is g
    assert tr.group_of("a.weight", 1) is None
