"""Labels: integer arrays of atoms, broadcastable to a tensor's shape, that say which channel sits where.

Every tensor met by the tracer carries a label whose entries are atoms (one per channel index of a
parameter dimension, see :class:`~prunekit.surgery.graph.unionfind.UnionFind`) or :data:`NO_ATOM` (data,
constants). An axis along which the label does not vary is kept at size 1, so a (N, C, H, W) activation of
C channels usually has a label of shape (1, C, 1, 1). :class:`ParamView` recognises a tensor as a view of a
parameter's storage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

__all__ = [
    "NO_ATOM",
    "ParamView",
    "atoms_of",
    "axis_label",
    "compress",
    "const_label",
    "one_atom_per_index",
    "per_index",
    "unique_pairs",
    "varies",
]

NO_ATOM = -1


def compress(lab: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the label is constant to size 1."""
    for ax in range(lab.ndim):
        if lab.shape[ax] > 1:
            first = lab.take([0], axis=ax)
            if (lab == first).all():
                lab = first
    return lab


def const_label(ndim: int) -> np.ndarray:
    """The label of a constant of ``ndim`` dimensions: no atom anywhere, every axis of size 1."""
    return np.full((1,) * ndim, NO_ATOM, dtype=np.int64)


def varies(lab: np.ndarray, ax: int) -> bool:
    """Whether the label changes along axis ``ax`` (different channels sit at different indices)."""
    return lab.shape[ax] > 1


def atoms_of(lab: np.ndarray) -> np.ndarray:
    """The distinct atoms in a label, sorted (without :data:`NO_ATOM`)."""
    u = np.unique(lab)
    return u[u >= 0]


def per_index(lab: np.ndarray, ax: int, size: int) -> list[np.ndarray]:
    """Atoms seen at each index along ``ax`` (with NO_ATOM included if present)."""
    if lab.shape[ax] == 1:
        u = np.unique(lab)
        return [u] * size
    moved = np.moveaxis(lab, ax, 0).reshape(lab.shape[ax], -1)
    if moved.shape[1] == 1:
        return [moved[i] for i in range(size)]
    return [np.unique(moved[i]) for i in range(size)]


def one_atom_per_index(lab: np.ndarray, ax: int, size: int) -> np.ndarray | None:
    """If the label holds one atom at each index along ``ax`` (the usual case), those atoms; else None."""
    if lab.shape[ax] != size and lab.shape[ax] != 1:
        return None
    moved = np.moveaxis(np.broadcast_to(lab, lab.shape[:ax] + (size,) + lab.shape[ax + 1 :]), ax, 0)
    moved = moved.reshape(size, -1)
    if moved.shape[1] == 1 or (moved == moved[:, :1]).all():
        return moved[:, 0]
    return None


def unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) rows, fast: the pair is packed into one int64."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    code = np.unique(a * (1 << 31) + b)
    return np.stack([code >> 31, code & ((1 << 31) - 1)], 1)


def axis_label(ax: int, ndim: int, atoms: np.ndarray) -> np.ndarray:
    """A label of ``ndim`` dimensions that runs through ``atoms`` along axis ``ax`` (size 1 elsewhere)."""
    shape = [1] * ndim
    shape[ax] = len(atoms)
    return np.asarray(atoms, dtype=np.int64).reshape(shape)


@dataclass
class ParamView:
    """A tensor that aliases the storage of a parameter or buffer (the parameter itself, ``w.t()``, a slice).

    ``key``: the parameter's qualified name; ``param``: the parameter; ``tensor``: the view.
    """

    key: str
    param: Tensor
    tensor: Tensor

    def flat_index(self) -> np.ndarray:
        """For each element of the view, its flat index into the parameter (full array, view-shaped).
        Raises ValueError for a non-contiguous parameter."""
        p, t = self.param, self.tensor
        off = t.storage_offset() - p.storage_offset()
        base = np.arange(p.numel(), dtype=np.int64)
        if not p.is_contiguous():
            raise ValueError("non-contiguous parameter")
        return np.lib.stride_tricks.as_strided(
            base[off:], shape=tuple(t.shape), strides=tuple(s * 8 for s in t.stride())
        ).copy()

    def dim_map(self) -> dict[int, int] | None:
        """view dim -> parameter dim, when the view is a pure permutation (plus expanded dims) at offset 0."""
        p, t = self.param, self.tensor
        if t.storage_offset() != p.storage_offset():
            return None
        out: dict[int, int] = {}
        used = set()
        for i, (s, st) in enumerate(zip(t.shape, t.stride())):
            if s == 1 or st == 0:
                continue
            cands = [j for j in range(p.dim()) if p.stride(j) == st and p.shape[j] == s and j not in used]
            if len(cands) != 1:
                return None
            out[i] = cands[0]
            used.add(cands[0])
        if any(p.shape[j] > 1 for j in range(p.dim()) if j not in used):
            return None
        return out
