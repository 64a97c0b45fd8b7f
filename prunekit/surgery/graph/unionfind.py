"""The union-find of the tracer: atoms (one per channel index met), their flags, and the couplings between them."""

from __future__ import annotations

import numpy as np

__all__ = ["UnionFind"]


class UnionFind:
    """Atoms with per-atom flags (weak, producer) and the couplings between them.

    Couplings are only recorded while tracing (a list append, or one array per operation); the classes are
    resolved once at the end as connected components, which is much faster than a Python union-find over
    every channel of every layer. Flags are per atom: a class is a producer if any of its atoms is one.
    """

    def __init__(self) -> None:
        self.n = 0
        self.weak: list[bool] = []
        self.producer: list[bool] = []
        self._a: list[int] = []
        self._b: list[int] = []
        self._arrays: list[tuple[np.ndarray, np.ndarray]] = []

    def make(self, n: int, *, weak: bool = False, producer: bool = False) -> int:
        """Create ``n`` new atoms with the given flags; returns the first one (they are consecutive)."""
        base = self.n
        self.n += n
        self.weak.extend([weak] * n)
        self.producer.extend([producer] * n)
        return base

    def union(self, a: int, b: int) -> None:
        """Couple atoms ``a`` and ``b``."""
        self._a.append(a)
        self._b.append(b)

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple ``a[i]`` with ``b[i]`` for every ``i`` (two arrays of one length)."""
        self._arrays.append((np.asarray(a, dtype=np.int64).reshape(-1), np.asarray(b, dtype=np.int64).reshape(-1)))

    def mark_producer(self, base: int, n: int) -> None:
        """Flag atoms ``base`` ... ``base + n - 1`` as producers (output channels of a layer)."""
        self.producer[base : base + n] = [True] * n

    def roots(self) -> np.ndarray:
        """For every atom, the smallest atom of its class (connected components of the couplings, by
        hooking roots onto smaller roots and pointer jumping, all vectorised)."""
        a = np.concatenate([np.asarray(self._a, dtype=np.int64)] + [x for x, _ in self._arrays])
        b = np.concatenate([np.asarray(self._b, dtype=np.int64)] + [y for _, y in self._arrays])
        lab = np.arange(self.n, dtype=np.int64)
        while a.size:
            la, lb = lab[a], lab[b]
            diff = la != lb
            if not diff.any():
                break
            a, b, la, lb = a[diff], b[diff], la[diff], lb[diff]
            low = np.minimum(la, lb)
            np.minimum.at(lab, la, low)
            np.minimum.at(lab, lb, low)
            while True:
                nxt = lab[lab]
                if np.array_equal(nxt, lab):
                    break
                lab = nxt
        return lab
