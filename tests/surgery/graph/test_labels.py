"""Tests of :mod:`prunekit.surgery.graph.labels`: labels compress constant axes, give the atoms at each index,
and :class:`ParamView` maps a view back to its parameter's dimensions."""

from __future__ import annotations

import numpy as np
import torch

from prunekit.surgery.graph.labels import (
    NO_ATOM,
    ParamView,
    atoms_of,
    axis_label,
    compress,
    const_label,
    one_atom_per_index,
    per_index,
    unique_pairs,
    varies,
)


def test_labels_compress_constant_axes_and_read_one_atom_per_index() -> None:
    lab = np.array([[[3, 3], [4, 4], [5, 5]]])  # (1, 3, 2): channels along axis 1, constant along axis 2
    small = compress(lab)
    assert small.shape == (1, 3, 1)
    assert one_atom_per_index(small, 1, 3).tolist() == [3, 4, 5]
    assert one_atom_per_index(np.array([[1, 2], [3, 4]]), 1, 2) is None  # two atoms at each index
    assert [a.tolist() for a in per_index(np.array([[1, 2], [3, NO_ATOM]]), 1, 2)] == [[1, 3], [-1, 2]]
    assert const_label(3).shape == (1, 1, 1) and (const_label(3) == NO_ATOM).all()


def test_param_view_maps_a_transpose_to_the_parameter_dimensions() -> None:
    w = torch.zeros(4, 3)
    assert ParamView("w", w, w.t()).dim_map() == {0: 1, 1: 0}
    assert ParamView("w", w, w[1:]).dim_map() is None  # an offset view is not a permutation
    assert ParamView("w", w, w[1:3, 2]).flat_index().tolist() == [5, 8]


def test_axis_labels_atoms_pairs_and_variation():
    lab = axis_label(1, 3, np.array([7, 8]))
    assert lab.shape == (1, 2, 1) and lab.reshape(-1).tolist() == [7, 8]
    assert varies(lab, 1) and not varies(lab, 0) and not varies(lab, 2)
    assert atoms_of(np.array([[5, NO_ATOM], [2, 5]])).tolist() == [2, 5]
    assert unique_pairs(np.array([1, 1, 2, 1]), np.array([3, 3, 0, 4])).tolist() == [[1, 3], [1, 4], [2, 0]]
    assert unique_pairs(np.array([]), np.array([])).shape == (0, 2)
