"""Tests of :mod:`prunekit.surgery.graph.coupling`: which atoms an elementwise operation and a consuming parameter
dimension couple or pin, on hand-made labels (atoms 0-2: three channels of one tensor, 3-5: of another)."""

import numpy as np
from torch import nn

from prunekit.surgery.graph.coupling import couple_consumer, couple_elementwise
from prunekit.surgery.graph.labels import NO_ATOM, axis_label
from prunekit.surgery.graph.tracer import Tracer


def _tracer(atoms: int = 6) -> Tracer:
    tr = Tracer(nn.Module(), strict=True)
    tr.uf.make(atoms)
    return tr


def _pinned(tr: Tracer) -> list[int]:
    return sorted(np.concatenate(tr.pinned).tolist()) if tr.pinned else []


def test_elementwise_couples_channel_i_with_channel_i():
    tr = _tracer()
    a = axis_label(1, 2, np.array([0, 1, 2]))  # (1, 3): channels along axis 1
    b = axis_label(1, 2, np.array([3, 4, 5]))
    couple_elementwise(tr, (a, (False, False), (1, 3)), (b, (False, False), (1, 3)), (2, 3))
    assert tr.uf.roots().tolist() == [0, 1, 2, 0, 1, 2]


def test_an_operand_broadcast_over_the_channels_couples_nothing():
    tr = _tracer(4)
    a = axis_label(1, 2, np.array([0, 1, 2]))
    gate = np.array([[3]])  # one channel, broadcast over a's three
    couple_elementwise(tr, (a, (False, False), (1, 3)), (gate, (False, True), (1, 1)), (2, 3))
    assert tr.uf.roots().tolist() == [0, 1, 2, 3]


def test_a_weak_atom_is_absorbed_only_into_a_single_partner():
    tr = Tracer(nn.Module(), strict=True)
    tr.uf.make(3)  # three channels
    tr.uf.make(1, weak=True)  # one element of a free parameter, met by all three channels
    a = axis_label(1, 2, np.array([0, 1, 2]))
    scale = np.array([[3, 3, 3]])
    couple_elementwise(tr, (a, (False, False), (1, 3)), (scale, (False, False), (1, 3)), (2, 3))
    assert tr.uf.roots().tolist() == [0, 1, 2, 3]


def test_a_consumer_couples_each_input_index_with_the_channel_there():
    tr = _tracer()
    couple_consumer(tr, axis_label(1, 2, np.array([0, 1, 2])), 1, 3, np.array([3, 4, 5]))
    assert tr.uf.roots().tolist() == [0, 1, 2, 0, 1, 2] and _pinned(tr) == []


def test_a_consumer_index_that_sees_a_constant_is_pinned():
    tr = _tracer()
    couple_consumer(tr, axis_label(1, 2, np.array([0, NO_ATOM, 2])), 1, 3, np.array([3, 4, 5]))
    assert tr.uf.roots().tolist() == [0, 1, 2, 0, 4, 2]
    assert _pinned(tr) == [4]


def test_a_consumer_index_that_mixes_channels_couples_and_pins_them():
    tr = _tracer()
    mixed = np.array([[0, 1, 2], [0, 2, 2]])  # index 1 sees channel 1 in one row, channel 2 in the other
    couple_consumer(tr, mixed, 1, 3, np.array([3, 4, 5]))
    assert tr.uf.roots().tolist() == [0, 1, 1, 0, 1, 1]
    assert _pinned(tr) == []  # every entry is a channel: nothing constant to pin
    tr = _tracer()
    couple_consumer(tr, mixed, 1, 3, None)  # no parameter: only the atoms meeting at one index
    assert tr.uf.roots().tolist() == [0, 1, 1, 3, 4, 5]
