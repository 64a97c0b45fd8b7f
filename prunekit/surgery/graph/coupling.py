"""Coupling helpers shared by several rule families: operands combined element by element, and an
activation consumed by a parameter dimension (a layer's input channels, a norm's scale)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from prunekit.surgery.graph.labels import one_atom_per_index, per_index, unique_pairs

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

__all__ = ["couple_consumer", "couple_elementwise"]


def couple_elementwise(tr: Tracer, ea: tuple, eb: tuple, shape: tuple[int, ...]) -> None:
    """Couple the atoms two operands of an elementwise operation put at the same output position.

    ``ea`` / ``eb``: (label, broadcast flags per output axis, operand shape padded to the output's rank).
    An operand broadcast over the other's channels (a scalar, a gate of one channel) couples nothing, and a
    weak (per-element) atom is absorbed only into a single partner.
    """
    la, ba, _ = ea
    lb, bb, _ = eb
    fshape = np.broadcast_shapes(la.shape, lb.shape)
    fa = np.broadcast_to(la, fshape).reshape(-1)
    fb = np.broadcast_to(lb, fshape).reshape(-1)
    ok = (fa >= 0) & (fb >= 0)
    if not ok.any():
        return
    pairs = unique_pairs(fa[ok], fb[ok])
    x, y = pairs[:, 0], pairs[:, 1]
    # how many distinct partners each atom has (pairs are distinct, so a count of occurrences)
    ux, ix, cx = np.unique(x, return_inverse=True, return_counts=True)
    uy, iy, cy = np.unique(y, return_inverse=True, return_counts=True)
    many_a, many_b = cx[ix] > 1, cy[iy] > 1
    weak = tr.uf.weak
    weak_x = np.fromiter((weak[i] for i in ux.tolist()), dtype=bool, count=ux.size)[ix]
    weak_y = np.fromiter((weak[i] for i in uy.tolist()), dtype=bool, count=uy.size)[iy]
    keep = x != y
    # an operand broadcast over the other's channels (a scalar, a gate of one channel) couples nothing
    if any(ba):
        keep &= ~many_a
    if any(bb):
        keep &= ~many_b
    # weak (element) atoms are absorbed only into a single partner
    keep &= ~(weak_x & many_a) & ~(weak_y & many_b)
    if keep.any():
        tr.uf.union_many(x[keep], y[keep])


def couple_consumer(tr: Tracer, lab: np.ndarray, ax: int, size: int, param_atoms: np.ndarray | None) -> None:
    """Couple each index of a consuming parameter dimension with the atoms of the activation there.

    ``lab``: the activation's label, whose axis ``ax`` (of ``size`` indices) meets ``param_atoms`` (the
    atoms of the parameter dimension, one per index). An index that sees a constant, or a mix of channels
    and constants, is pinned. With ``param_atoms=None`` only the atoms meeting at one index are coupled.
    """
    col = one_atom_per_index(lab, ax, size)
    if col is not None:  # one atom per index: vectorised
        if param_atoms is not None:
            tr.pin(param_atoms[col < 0])
            tr.union_pairs(np.asarray(param_atoms[:size]), col)
        return
    per = per_index(lab, ax, size)
    for i in range(size):
        atoms = per[i]
        real = atoms[atoms >= 0]
        if param_atoms is not None:
            if real.size == 0 or real.size != atoms.size:
                tr.pin([param_atoms[i]])
                tr.pin(real)
            for a in real.tolist():
                tr.uf.union(int(param_atoms[i]), a)
        elif real.size > 1:
            for a in real[1:].tolist():
                tr.uf.union(int(real[0]), a)
