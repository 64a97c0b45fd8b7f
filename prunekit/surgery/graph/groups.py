"""The public model of a trace: :class:`Member`, :class:`Group`, :class:`TraceResult`, and how the classes
of the union-find become groups (:func:`build_groups`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from prunekit.surgery.graph.labels import compress

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

__all__ = ["Group", "Member", "TraceResult", "build_groups"]


@dataclass
class Member:
    """One parameter dimension in a group: ``param`` (qualified name) along ``dim``."""

    param: str
    dim: int


class Group:
    """Coupled parameter dimensions, split into units (classes) that are removed together.

    ``index_class[m]`` gives, for every index of member ``m`` along its dimension, the unit it belongs to
    (the compact form the engine computes with); ``classes[k]`` is the per-unit view, mapping each member
    to the indices of unit ``k``. Either may be given (ValueError when neither is); the other is derived on
    first use. ``removable[k]`` says whether unit ``k`` may be removed (False: pinned, or not produced by a
    layer).
    """

    def __init__(
        self,
        members: list[Member],
        classes: list[dict[tuple[str, int], np.ndarray]] | None = None,
        removable: list[bool] | None = None,
        *,
        index_class: list[np.ndarray] | None = None,
        size: int | None = None,
    ) -> None:
        if classes is None and index_class is None:
            raise ValueError("a Group needs classes or index_class")
        self.members = members
        self._classes = classes
        if index_class is None:
            assert classes is not None
            index_class = []
            for m in members:
                k = (m.param, m.dim)
                n = sum(len(c[k]) for c in classes if k in c)
                lab = np.full(n, -1, dtype=np.int64)
                for ci, c in enumerate(classes):
                    if k in c:
                        lab[np.asarray(c[k], dtype=np.int64)] = ci
                index_class.append(lab)
            size = len(classes)
        self.index_class = [np.asarray(a, dtype=np.int64) for a in index_class]
        self._size = (
            int(size) if size is not None else int(max((a.max() for a in self.index_class if a.size), default=-1)) + 1
        )
        self.removable = list(removable) if removable is not None else [True] * self._size

    @property
    def size(self) -> int:
        """The number of units (classes) in the group."""
        return self._size

    @property
    def classes(self) -> list[dict[tuple[str, int], np.ndarray]]:
        """Per unit: (parameter, dim) -> the indices of that member the unit holds (sorted)."""
        if self._classes is None:
            out: list[dict[tuple[str, int], np.ndarray]] = [{} for _ in range(self._size)]
            for m, lab in zip(self.members, self.index_class):
                order = np.argsort(lab, kind="stable")
                cuts = np.searchsorted(lab[order], np.arange(self._size + 1))
                for c in np.unique(lab[lab >= 0]).tolist():
                    out[c][(m.param, m.dim)] = order[cuts[c] : cuts[c + 1]]
            self._classes = out
        return self._classes

    def counts(self) -> np.ndarray:
        """(members x units) matrix: how many indices of each member every unit holds."""
        out = np.zeros((len(self.members), self._size), dtype=np.int64)
        for i, lab in enumerate(self.index_class):
            out[i] = np.bincount(lab[lab >= 0], minlength=self._size)
        return out

    def describe(self) -> str:
        """One line: the number of units, how many are removable, and the first members."""
        ms = ", ".join(f"{m.param}[dim {m.dim}]" for m in self.members[:6])
        more = f" (+{len(self.members) - 6} more)" if len(self.members) > 6 else ""
        return f"group of {self.size} units ({sum(self.removable)} removable): {ms}{more}"

    def __repr__(self) -> str:
        return f"Group({self.describe()})"


@dataclass
class TraceResult:
    """The dependency groups of a model and what the trace noticed.

    ``notes``: what was kept and why; ``module_calls``: (module name, ids of its tensor inputs, id of its
    first output) in the order the calls returned; ``residual_chain``: id of the output of an ``add`` -> ids
    of its operands; ``output_shapes``: the model's output shapes on the traced inputs; ``producer_of``:
    (parameter, dim) -> the module whose output channels it is; ``inputs``: what was traced.
    """

    groups: list[Group]
    notes: list[str] = field(default_factory=list)
    module_calls: list[tuple[str, list[int], int | None]] = field(default_factory=list)
    residual_chain: dict[int, list[int]] = field(default_factory=dict)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    producer_of: dict[tuple[str, int], str] = field(default_factory=dict)
    inputs: Any = field(default=None, repr=False)  # what was traced: plans are proved on it

    def group_of(self, param: str, dim: int) -> Group | None:
        """The group holding dimension ``dim`` of parameter ``param`` (qualified name), or None."""
        for g in self.groups:
            for m in g.members:
                if m.param == param and m.dim == dim:
                    return g
        return None


def build_groups(tr: Tracer) -> TraceResult:
    """The groups of a finished trace: every class of the union-find is one unit; units that share a
    parameter dimension form one group. A unit is removable when one of its atoms is a producer (the output
    channels of a layer) and none is pinned. Groups come in the order of their smallest atom."""
    uf = tr.uf
    roots = uf.roots()
    producer = np.asarray(uf.producer, dtype=bool)
    # producer flags live on roots after unions, but roots() compressed paths without merging flags
    prod_root = np.zeros(len(roots), dtype=bool)
    np.logical_or.at(prod_root, roots, producer)
    pinned_root = np.zeros(len(roots), dtype=bool)
    for arr in tr.pinned:
        pinned_root[roots[arr]] = True
    notes = list(dict.fromkeys(tr.notes))
    # members: (param, dim) -> root per index
    members: dict[tuple[str, int], np.ndarray] = {}
    for (key, dim), base in tr.dim_atoms.items():
        n = tr.param_shapes[key][dim]
        members[(key, dim)] = roots[base : base + n]
    for key, base in tr.elem_atoms.items():
        shape = tr.param_shapes[key]
        r = roots[base : base + int(np.prod(shape))].reshape(shape)
        rc = compress(r)
        var = [d for d in range(rc.ndim) if rc.shape[d] > 1]
        if not var:
            continue
        if len(var) > 1:
            pinned_root[np.unique(r)] = True
            notes.append(f"parameter {key} couples channels along several dimensions; kept")
            continue
        d = var[0]
        k = (key, d)
        along = rc.reshape(-1)
        if k in members:
            # already tracked per dimension: the two views must agree, else keep both
            for a, b in zip(members[k].tolist(), along.tolist()):
                if a != b:
                    pinned_root[a] = pinned_root[b] = True
        else:
            members[k] = along
    if not members:
        return TraceResult(groups=[], notes=notes)
    keys = list(members)
    sizes = np.asarray([len(members[k]) for k in keys], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    all_roots = np.concatenate([members[k] for k in keys])
    all_keys = np.repeat(np.arange(len(keys)), sizes)
    # connected components of keys that share a root (union-find over keys, vectorised by label spreading)
    comp = np.arange(len(keys))
    order = np.argsort(all_roots, kind="stable")
    r_sorted = all_roots[order]
    run_start = np.concatenate([[True], r_sorted[1:] != r_sorted[:-1]])
    run_id = np.cumsum(run_start) - 1
    k_sorted = all_keys[order]
    while True:
        c = comp[k_sorted]
        run_min = np.full(int(run_id[-1]) + 1, len(keys), dtype=np.int64)
        np.minimum.at(run_min, run_id, c)
        new = comp.copy()
        np.minimum.at(new, k_sorted, run_min[run_id])
        new = new[new]
        if np.array_equal(new, comp):
            break
        comp = new
    # unit (class) of every entry: rank of its root among the roots of its component
    ent_comp = comp[all_keys]
    o2 = np.lexsort((all_roots, ent_comp))
    rc, cc = all_roots[o2], ent_comp[o2]
    first = np.concatenate([[True], (rc[1:] != rc[:-1]) | (cc[1:] != cc[:-1])])
    cls_global = np.cumsum(first) - 1
    comp_of_cls = cc[first]
    root_of_cls = rc[first]
    starts = np.nonzero(np.concatenate([[True], comp_of_cls[1:] != comp_of_cls[:-1]]))[0]
    ends = np.concatenate([starts[1:], [len(comp_of_cls)]])
    flat_cls = np.empty(len(all_roots), dtype=np.int64)
    flat_cls[o2] = cls_global  # entry i is (keys[all_keys[i]], index i - offsets[key])
    removable_cls = prod_root[root_of_cls] & ~pinned_root[root_of_cls]
    keys_of_comp: dict[int, list[int]] = {}
    for i, comp_id in enumerate(comp.tolist()):
        keys_of_comp.setdefault(comp_id, []).append(i)
    groups = []
    for st, en in sorted(zip(starts.tolist(), ends.tolist()), key=lambda se: int(root_of_cls[se[0]])):
        kids = keys_of_comp[int(comp_of_cls[st])]
        index_class = [flat_cls[offsets[k] : offsets[k + 1]] - st for k in kids]
        groups.append(
            Group(
                [Member(keys[k][0], keys[k][1]) for k in kids],
                None,
                removable_cls[st:en].tolist(),
                index_class=index_class,
                size=en - st,
            )
        )
    return TraceResult(groups=groups, notes=notes)
