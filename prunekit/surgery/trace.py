"""Dependency tracing at the dispatcher level: which slices of which parameters are coupled.

A forward pass with example inputs runs under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`.
Every tensor carries a *label*: an integer array broadcastable to its shape whose entries are *atoms*
(``-1`` means "no atom": data, constants). Atoms are created for each index of each parameter dimension
that the trace meets (output channels of a convolution, input columns of a linear layer, the channels of a
norm layer, ...) and, for free parameters used by plain tensor operations (class tokens, position
embeddings, layer scales), for each element. Operations propagate labels (views reshape them, ``cat``
concatenates them, ``permute`` moves them) and *couple* atoms (a residual add, a layer consuming a channel)
by a union-find. After the trace, every class of the union-find is one removable unit: it names the indices
of every parameter dimension that must go together. This is the dependency-graph idea of DepGraph (Fang et
al. 2023, "DepGraph: Towards Any Structural Pruning"), computed per index on the dispatcher's closed set of
aten operations instead of on a module graph.

Operations that constrain channels in a way physical removal cannot follow (a view that splits a channel
dimension, a slice with constant bounds, a constant tensor of fixed size) *pin* the atoms involved: they
are never removed. Operations the tracer does not know refuse with :class:`UnsupportedModuleError` naming
the module and the operation, before anything is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from prunekit.errors import ModelError, UnsupportedModuleError
from prunekit.calls import call_model

NO_ATOM = -1
_ELEMENT_ATOM_LIMIT = 4_000_000


class _UnionFind:
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
        base = self.n
        self.n += n
        self.weak.extend([weak] * n)
        self.producer.extend([producer] * n)
        return base

    def union(self, a: int, b: int) -> None:
        self._a.append(a)
        self._b.append(b)

    def union_many(self, a: np.ndarray, b: np.ndarray) -> None:
        self._arrays.append((np.asarray(a, dtype=np.int64).reshape(-1), np.asarray(b, dtype=np.int64).reshape(-1)))

    def mark_producer(self, base: int, n: int) -> None:
        self.producer[base: base + n] = [True] * n

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


# ----------------------------------------------------------------------------------------------- labels


def _compress(lab: np.ndarray) -> np.ndarray:
    """Shrink every axis along which the label is constant to size 1."""
    for ax in range(lab.ndim):
        if lab.shape[ax] > 1:
            first = lab.take([0], axis=ax)
            if (lab == first).all():
                lab = first
    return lab


def _const(ndim: int) -> np.ndarray:
    return np.full((1,) * ndim, NO_ATOM, dtype=np.int64)


def _varies(lab: np.ndarray, ax: int) -> bool:
    return lab.shape[ax] > 1


def _atoms(lab: np.ndarray) -> np.ndarray:
    u = np.unique(lab)
    return u[u >= 0]


def _per_index(lab: np.ndarray, ax: int, size: int) -> list[np.ndarray]:
    """Atoms seen at each index along ``ax`` (with NO_ATOM included if present)."""
    if lab.shape[ax] == 1:
        u = np.unique(lab)
        return [u] * size
    moved = np.moveaxis(lab, ax, 0).reshape(lab.shape[ax], -1)
    if moved.shape[1] == 1:
        return [moved[i] for i in range(size)]
    return [np.unique(moved[i]) for i in range(size)]


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distinct (a, b) rows, fast: the pair is packed into one int64."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    if a.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    code = np.unique(a * (1 << 31) + b)
    return np.stack([code >> 31, code & ((1 << 31) - 1)], 1)


def _axis_label(lab: np.ndarray, ax: int, ndim: int, atoms: np.ndarray) -> np.ndarray:
    shape = [1] * ndim
    shape[ax] = len(atoms)
    return np.asarray(atoms, dtype=np.int64).reshape(shape)


@dataclass
class _ParamView:
    """A tensor that aliases the storage of a parameter or buffer (the parameter itself, ``w.t()``, a slice)."""

    key: str
    param: Tensor
    tensor: Tensor

    def flat_index(self) -> np.ndarray:
        """For each element of the view, its flat index into the parameter (full array, view-shaped)."""
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


@dataclass
class Member:
    """One parameter dimension in a group: ``param`` (qualified name) along ``dim``."""

    param: str
    dim: int


class Group:
    """Coupled parameter dimensions, split into units (classes) that are removed together.

    ``index_class[m]`` gives, for every index of member ``m`` along its dimension, the unit it belongs to
    (the compact form the engine computes with); ``classes[k]`` is the per-unit view, mapping each member
    to the indices of unit ``k``. Either may be given; the other is derived on first use.
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
        self._size = int(size) if size is not None else int(max((a.max() for a in self.index_class if a.size), default=-1)) + 1
        self.removable = list(removable) if removable is not None else [True] * self._size

    @property
    def size(self) -> int:
        return self._size

    @property
    def classes(self) -> list[dict[tuple[str, int], np.ndarray]]:
        if self._classes is None:
            out: list[dict[tuple[str, int], np.ndarray]] = [{} for _ in range(self._size)]
            for m, lab in zip(self.members, self.index_class):
                order = np.argsort(lab, kind="stable")
                cuts = np.searchsorted(lab[order], np.arange(self._size + 1))
                for c in np.unique(lab[lab >= 0]).tolist():
                    out[c][(m.param, m.dim)] = order[cuts[c]: cuts[c + 1]]
            self._classes = out
        return self._classes

    def counts(self) -> np.ndarray:
        """(members x units) matrix: how many indices of each member every unit holds."""
        out = np.zeros((len(self.members), self._size), dtype=np.int64)
        for i, lab in enumerate(self.index_class):
            out[i] = np.bincount(lab[lab >= 0], minlength=self._size)
        return out

    def describe(self) -> str:
        ms = ", ".join(f"{m.param}[dim {m.dim}]" for m in self.members[:6])
        more = f" (+{len(self.members) - 6} more)" if len(self.members) > 6 else ""
        return f"group of {self.size} units ({sum(self.removable)} removable): {ms}{more}"

    def __repr__(self) -> str:
        return f"Group({self.describe()})"


@dataclass
class TraceResult:
    """The dependency groups of a model and what the trace noticed."""

    groups: list[Group]
    notes: list[str] = field(default_factory=list)
    module_calls: list[tuple[str, list[int], int | None]] = field(default_factory=list)
    residual_chain: dict[int, list[int]] = field(default_factory=dict)
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)
    producer_of: dict[tuple[str, int], str] = field(default_factory=dict)
    inputs: Any = field(default=None, repr=False)  # what was traced: plans are proved on it

    def group_of(self, param: str, dim: int) -> Group | None:
        for g in self.groups:
            for m in g.members:
                if m.param == param and m.dim == dim:
                    return g
        return None


# ------------------------------------------------------------------------------------------------- tracer


def _name(func: Any) -> str:
    return func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)


_PASS = {
    "clone", "contiguous", "_to_copy", "detach", "alias", "lift_fresh", "lift_fresh_copy", "to",
    "_conj", "resolve_conj", "resolve_neg", "dropout", "feature_dropout", "alpha_dropout",
    "_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax", "copy", "type_as",
}
_CREATE = {
    "arange", "zeros", "ones", "full", "empty", "empty_strided", "scalar_tensor", "new_zeros", "new_ones",
    "new_empty", "new_full", "new_empty_strided", "zeros_like", "ones_like", "full_like", "empty_like",
    "rand", "randn", "rand_like", "randn_like", "randint", "tensor", "linspace", "eye", "bernoulli",
    "tril_indices", "triu_indices", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel",
    "is_nonzero", "equal", "_assert_async", "_assert_tensor_metadata", "_functional_assert_async",
    "item", "nonzero", "argmax", "argmin", "histc", "bincount", "randperm", "normal", "uniform",
    "set_", "record_stream", "_has_compatible_shallow_copy_type", "is_same_size", "empty_permuted",
    "_unique2", "unique_consecutive", "searchsorted", "bucketize", "one_hot", "full_like",
}
_VIEWS = {"view", "_unsafe_view", "reshape", "_reshape_alias", "unsafe_view", "view_copy", "_reshape_copy"}
_ALIASING = {
    "view", "_unsafe_view", "reshape", "_reshape_alias", "permute", "transpose", "t", "expand", "unsqueeze",
    "squeeze", "select", "slice", "split", "split_with_sizes", "unbind", "alias", "detach", "view_as",
    "unflatten", "narrow", "chunk", "as_strided",
}
# in-place view operations, labelled through their out-of-place twin (``transpose_`` through ``transpose``)
_INPLACE_VIEWS = {"transpose_", "t_", "squeeze_", "unsqueeze_", "swapdims_", "swapaxes_", "detach_", "as_strided_"}
_INPLACE_VIEWS = {n for n in _INPLACE_VIEWS if hasattr(torch.ops.aten, n) and hasattr(torch.ops.aten, n[:-1])}
_REDUCE = {
    "mean", "sum", "amax", "amin", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm",
    "logsumexp", "any", "all", "prod", "nansum", "max", "min", "count_nonzero",
}
_SPATIAL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool1d_with_indices", "max_pool2d_with_indices",
    "max_pool3d_with_indices", "avg_pool1d", "avg_pool2d", "avg_pool3d", "_adaptive_avg_pool2d",
    "_adaptive_avg_pool3d", "adaptive_avg_pool1d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "adaptive_avg_pool2d", "upsample_nearest1d", "upsample_nearest2d",
    "upsample_nearest3d", "upsample_bilinear2d", "upsample_bicubic2d", "upsample_linear1d",
    "_upsample_bilinear2d_aa", "_upsample_nearest_exact2d", "_upsample_bicubic2d_aa", "grid_sampler_2d",
    "pixel_shuffle_spatial_only", "reflection_pad2d", "replication_pad2d", "reflection_pad1d",
    "replication_pad1d",
}
_POINTWISE_EXTRA = {
    "where", "masked_fill", "clamp", "clamp_min", "clamp_max", "lerp", "addcmul", "addcdiv", "hardtanh",
    "threshold", "leaky_relu", "elu", "celu", "selu", "gelu", "silu", "mish", "hardswish", "hardsigmoid",
    "relu", "relu6", "sigmoid", "tanh", "softplus", "logit", "nan_to_num", "fill", "zero",
    "native_dropout", "rrelu_with_noise", "glu_jvp", "_prelu_kernel",
}


def _is_pointwise(func: Any) -> bool:
    try:
        if torch.Tag.pointwise in func.tags:
            return True
    except AttributeError:
        return False
    name = _name(func)
    if name.endswith("_"):  # in-place variants are not tagged; their out-of-place twin is
        base = name[:-1]
        if base in _POINTWISE_EXTRA:
            return True
        packet = getattr(torch.ops.aten, base, None)
        if packet is not None:
            try:
                return torch.Tag.pointwise in packet.default.tags
            except AttributeError:
                for ov in packet.overloads():
                    return torch.Tag.pointwise in getattr(packet, ov).tags
    return False


class _Tracer(TorchDispatchMode):
    def __init__(self, model: nn.Module, strict: bool):
        super().__init__()
        self.uf = _UnionFind()
        self.labels: dict[int, tuple[Tensor, np.ndarray]] = {}
        self.layouts: dict[int, tuple[tuple[int, ...], tuple[int, ...], int]] = {}  # size, stride, offset when labelled
        self.pinned: list[np.ndarray] = []
        self.strict = strict
        self.notes: list[str] = []
        self.module_stack: list[str] = []
        # storage -> (qualified name, tensor); parameters and buffers
        self.storages: dict[int, list[tuple[str, Tensor]]] = {}
        seen: set[int] = set()
        for name, t in list(model.named_parameters(remove_duplicate=True)) + list(
            model.named_buffers(remove_duplicate=True)
        ):
            if id(t) in seen or t.numel() == 0:
                continue
            seen.add(id(t))
            self.storages.setdefault(t.untyped_storage().data_ptr(), []).append((name, t))
        self.dim_atoms: dict[tuple[str, int], int] = {}
        self.elem_atoms: dict[str, int] = {}
        self.param_shapes: dict[str, tuple[int, ...]] = {}
        self.producer_of: dict[tuple[str, int], str] = {}
        self.residual: dict[int, list[int]] = {}
        self.keep_alive: list[Any] = []
        self.module_types = {n: type(m).__name__ for n, m in model.named_modules()}
        self.quiet = 0  # > 0 while a module traced as a whole runs: its operations are not looked at

    # -- atoms ------------------------------------------------------------------------------------------
    def pdim(self, key: str, param: Tensor, dim: int, *, producer: bool = False) -> np.ndarray:
        k = (key, dim)
        if k not in self.dim_atoms:
            self.dim_atoms[k] = self.uf.make(param.shape[dim], producer=producer)
            self.param_shapes[key] = tuple(param.shape)
        elif producer:
            self.uf.mark_producer(self.dim_atoms[k], param.shape[dim])
        if producer and self.module_stack:
            self.producer_of.setdefault(k, self.module_stack[-1])
        base = self.dim_atoms[k]
        return np.arange(base, base + param.shape[dim], dtype=np.int64)

    def pin(self, atoms: np.ndarray | list[int]) -> None:
        a = np.asarray(atoms, dtype=np.int64).reshape(-1)
        a = a[a >= 0]
        if a.size:
            self.pinned.append(np.unique(a))

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        ok = (a >= 0) & (b >= 0) & (a != b)
        if ok.any():
            self.uf.union_many(a[ok], b[ok])

    # -- labels -----------------------------------------------------------------------------------------
    def view_of(self, t: Tensor) -> _ParamView | None:
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:  # noqa: BLE001  (meta or sparse tensors)
            return None
        cands = self.storages.get(ptr)
        if not cands:
            return None
        if len(cands) == 1:
            return _ParamView(cands[0][0], cands[0][1], t)
        for name, p in cands:  # several parameters share a storage: pick the one that holds the view
            if p.storage_offset() <= t.storage_offset() < p.storage_offset() + p.numel():
                return _ParamView(name, p, t)
        return None

    def label(self, t: Any) -> np.ndarray:
        """The label of any operand: an activation, a parameter (view) or a constant."""
        if not isinstance(t, Tensor):
            return _const(0)
        hit = self.labels.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        pv = self.view_of(t)
        if pv is None:
            return _const(t.dim())
        return self.param_label(pv)

    def param_label(self, pv: _ParamView) -> np.ndarray:
        """A parameter used by a plain tensor operation: per-dimension atoms when only one dimension is
        non-trivial, otherwise (weak) per-element atoms that later collapse onto the classes they meet."""
        p, t = pv.param, pv.tensor
        big = [j for j in range(p.dim()) if p.shape[j] > 1]
        if not big:
            return _const(t.dim())
        dm = pv.dim_map()
        if len(big) == 1 and dm is not None:
            j = big[0]
            atoms = self.pdim(pv.key, p, j)
            for i, pj in dm.items():
                if pj == j:
                    return _axis_label(None, i, t.dim(), atoms)  # type: ignore[arg-type]
            return _const(t.dim())
        if p.numel() > _ELEMENT_ATOM_LIMIT or not p.is_contiguous():
            self.notes.append(f"parameter {pv.key} is used by a plain operation and too large to track; fixed")
            for j in big:
                self.pin(self.pdim(pv.key, p, j))
            return _const(t.dim())
        if pv.key not in self.elem_atoms:
            self.elem_atoms[pv.key] = self.uf.make(p.numel(), weak=True)
            self.param_shapes[pv.key] = tuple(p.shape)
        base = self.elem_atoms[pv.key]
        return _compress(pv.flat_index() + base)

    def set_label(self, t: Any, lab: np.ndarray) -> None:
        if isinstance(t, Tensor):
            lab = np.asarray(lab, dtype=np.int64)
            if lab.ndim != t.dim():
                lab = lab.reshape((1,) * (t.dim() - lab.ndim) + lab.shape) if lab.ndim < t.dim() else _const(t.dim())
            self.labels[id(t)] = (t, lab)
            try:
                self.layouts[id(t)] = (tuple(t.shape), tuple(t.stride()), t.storage_offset())
            except Exception:  # noqa: BLE001  (tensors without strides)
                self.layouts.pop(id(t), None)

    def full(self, lab: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        return np.broadcast_to(lab, shape)

    def here(self) -> str:
        name = self.module_stack[-1] if self.module_stack else ""
        return f"{name or '<model>'}' ({self.module_types.get(name, '?')})"

    def unknown(self, name: str, args: tuple, out: Any) -> None:
        labs = [self.label(a) for a in tree_flatten(args)[0] if isinstance(a, Tensor)]
        if any(_atoms(lab).size for lab in labs):
            if self.strict:
                mod = self.module_stack[-1] if self.module_stack else ""
                advice = (f"pass ignore=[{mod!r}] to keep this module whole, or strict=False to keep only the "
                          f"channels it touches") if mod else (
                          "the operation is in the model's own forward (no submodule to ignore): pass strict=False "
                          "to keep the channels it touches")
                raise UnsupportedModuleError(
                    f"module '{self.here()} applies the operation aten.{name} to prunable channels, and "
                    f"prunekit does not know how channels flow through it; {advice}"
                )
            for lab in labs:
                self.pin(lab)
            self.notes.append(f"aten.{name} in '{self.here()} is not understood: the channels it touches are kept")
        for o in tree_flatten(out)[0]:
            if isinstance(o, Tensor):
                self.set_label(o, _const(o.dim()))

    # -- dispatch ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        if self.quiet:  # inside a module traced as a whole (ignored, or with a module rule)
            return func(*args, **kwargs)
        name = _name(func)
        if name in _INPLACE_VIEWS and args and isinstance(args[0], Tensor):
            return self._inplace_view(func, name, args, kwargs)
        out = func(*args, **kwargs)
        try:
            self.propagate(func, name, args, kwargs, out)
        except (UnsupportedModuleError, ModelError):
            raise
        except Exception as e:  # noqa: BLE001  a rule that failed on an odd case: keep what it touches
            self.notes.append(f"aten.{name} in '{self.here()}: {type(e).__name__}: {e}; channels kept")
            for a in tree_flatten(args)[0]:
                if isinstance(a, Tensor):
                    self.pin(self.label(a))
            for o in tree_flatten(out)[0]:
                if isinstance(o, Tensor):
                    self.set_label(o, _const(o.dim()))
        self.keep_alive.append(out)
        return out

    def _inplace_view(self, func: Any, name: str, args: tuple, kwargs: dict) -> Any:
        """``transpose_``, ``t_``, ``squeeze_``, ``unsqueeze_``...: the out-of-place twin is run first (a
        view, no data is copied) and labelled by its rule; the tensor then takes that label in place."""
        x = args[0]
        twin = getattr(torch.ops.aten, name[:-1])
        view = twin(*args, **kwargs)
        try:
            self.propagate(twin, name[:-1], args, kwargs, view)
            lab = self.label(view)
        except (UnsupportedModuleError, ModelError):
            raise
        except Exception as e:  # noqa: BLE001
            self.notes.append(f"aten.{name} in '{self.here()}: {type(e).__name__}: {e}; channels kept")
            self.pin(self.label(x))
            lab = None
        out = func(*args, **kwargs)
        self.set_label(out, lab if lab is not None else _const(out.dim()))
        self.keep_alive.append(out)
        return out

    def propagate(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        if name in _ALIASING and args and isinstance(args[0], Tensor):
            x = args[0]
            hit = self.labels.get(id(x))
            if (hit is None or hit[0] is not x) and self.view_of(x) is not None:
                return  # a view of a parameter: recognised by its storage where it is used
        handler = _RULES.get(name)
        if handler is not None:
            handler(self, args, kwargs, out)
            return
        if name in _PASS:
            self.set_label(out if isinstance(out, Tensor) else out[0], self.label(args[0]))
            return
        if name in _CREATE:
            for o in tree_flatten(out)[0]:
                if isinstance(o, Tensor):
                    self.set_label(o, _const(o.dim()))
            return
        if name in _VIEWS:
            _rule_view(self, args, kwargs, out)
            return
        if name in _REDUCE:
            _rule_reduce(self, args, kwargs, out)
            return
        if name in _SPATIAL:
            _rule_spatial(self, args, kwargs, out)
            return
        if _is_pointwise(func) or name in _POINTWISE_EXTRA:
            _rule_pointwise(self, func, args, kwargs, out)
            return
        self.unknown(name, args, out)


# ---------------------------------------------------------------------------------------------- the rules


def _rule_pointwise(tr: _Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    if not outs:
        return
    o = outs[0]
    shape = tuple(o.shape)
    ops = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
    ops += [a for lst in args if isinstance(lst, (list, tuple)) for a in lst if isinstance(a, Tensor)]
    entries = []
    for a in ops:
        lab = tr.label(a)
        if a.dim() > len(shape):
            continue
        lab = lab.reshape((1,) * (len(shape) - lab.ndim) + lab.shape)
        ashape = (1,) * (len(shape) - a.dim()) + tuple(a.shape)
        bcast = [ashape[d] == 1 and shape[d] > 1 for d in range(len(shape))]
        entries.append((lab, bcast, ashape))
    labeled = [e for e in entries if (e[0] >= 0).any()]
    if not labeled:
        for oo in outs:
            tr.set_label(oo, _const(oo.dim()))
        return
    # constants of fixed size along a varying channel axis: those channels cannot change
    for lab, _bc, _as in labeled:
        for lab2, _bc2, ashape2 in entries:
            if (lab2 >= 0).any():
                continue
            for d in range(len(shape)):
                if _varies(lab, d) and ashape2[d] > 1:
                    tr.pin(lab)
    # couple pairs
    for i in range(len(labeled)):
        for j in range(i + 1, len(labeled)):
            _couple_elementwise(tr, labeled[i], labeled[j], shape)
    # output label: the first operand that is not broadcast, else any
    best = None
    for lab, bcast, _as in labeled:
        if not any(b for d, b in enumerate(bcast) if _varies_any(labeled, d)):
            best = lab
            break
    if best is None:
        best = max(labeled, key=lambda e: _atoms(e[0]).size)[0]
    res = best
    for lab, _bc, _as in labeled:
        if lab is best:
            continue
        full_best = np.broadcast_to(res, np.broadcast_shapes(res.shape, lab.shape))
        if (full_best < 0).any():
            res = np.where(full_best >= 0, full_best, np.broadcast_to(lab, full_best.shape))
    res = _compress(np.ascontiguousarray(res))
    for oo in outs:
        if tuple(oo.shape) == shape:
            tr.set_label(oo, res)
        else:
            tr.set_label(oo, _const(oo.dim()))
    if isinstance(args[0], Tensor) and _name(func).endswith("_"):
        tr.set_label(args[0], res)


def _varies_any(labeled: list, d: int) -> bool:
    return any(_varies(e[0], d) for e in labeled)


def _couple_elementwise(tr: _Tracer, ea: tuple, eb: tuple, shape: tuple[int, ...]) -> None:
    la, ba, _ = ea
    lb, bb, _ = eb
    fshape = np.broadcast_shapes(la.shape, lb.shape)
    fa = np.broadcast_to(la, fshape).reshape(-1)
    fb = np.broadcast_to(lb, fshape).reshape(-1)
    ok = (fa >= 0) & (fb >= 0)
    if not ok.any():
        return
    pairs = _unique_pairs(fa[ok], fb[ok])
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


def _rule_view(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x = args[0]
    lab = tr.label(x)
    ishape, oshape = tuple(x.shape), tuple(out.shape)
    if not (lab >= 0).any():
        tr.set_label(out, _const(out.dim()))
        return
    # a varying input axis must land inside one output axis (merges are fine, splits are not)
    ostr = [int(np.prod(oshape[e + 1:])) for e in range(len(oshape))]
    for d in range(len(ishape)):
        if not _varies(lab, d) or ishape[d] == 1:
            continue
        st = int(np.prod(ishape[d + 1:]))
        ext = st * ishape[d]
        ok = any(ostr[e] <= st and ext <= ostr[e] * oshape[e] and oshape[e] > 1 for e in range(len(oshape)))
        if not ok:
            tr.pin(lab)
            break
    full = np.ascontiguousarray(np.broadcast_to(lab, ishape)).reshape(oshape)
    tr.set_label(out, _compress(full))


def _rule_permute(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    lab = tr.label(args[0])
    dims = [d % max(lab.ndim, 1) for d in args[1]]
    tr.set_label(out, np.transpose(lab, dims))


def _rule_transpose(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    lab = tr.label(args[0])
    if lab.ndim < 2:
        tr.set_label(out, lab)
        return
    d0, d1 = (args[1], args[2]) if len(args) >= 3 else (0, 1)
    tr.set_label(out, np.swapaxes(lab, d0 % lab.ndim, d1 % lab.ndim))
    if _name_is_inplace(args, out):
        tr.set_label(args[0], np.swapaxes(lab, d0 % lab.ndim, d1 % lab.ndim))


def _name_is_inplace(args: tuple, out: Any) -> bool:
    return out is args[0]


def _rule_expand(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    lab = tr.label(args[0])
    lab = lab.reshape((1,) * (out.dim() - lab.ndim) + lab.shape)
    tr.set_label(out, lab)


def _rule_unsqueeze(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    lab = tr.label(args[0])
    d = args[1] % (lab.ndim + 1)
    tr.set_label(out, np.expand_dims(lab, d))


def _rule_squeeze(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x = args[0]
    lab = tr.label(x)
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        dims = [d % max(x.dim(), 1) for d in dims if x.shape[d] == 1]
    else:
        dims = [d for d in range(x.dim()) if x.shape[d] == 1]
    tr.set_label(out, np.squeeze(lab, axis=tuple(dims)) if dims else lab)


def _rule_select(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, dim, idx = args[0], args[1], args[2]
    lab = tr.label(x)
    dim %= x.dim()
    if _varies(lab, dim):
        tr.pin(lab)
        lab = lab.take([idx % x.shape[dim]], axis=dim)
    tr.set_label(out, np.squeeze(lab, axis=dim))


def _slice_lab(tr: _Tracer, x: Tensor, lab: np.ndarray, dim: int, start: int, stop: int, step: int) -> np.ndarray:
    if _varies(lab, dim):
        if not (start == 0 and stop >= x.shape[dim] and step == 1):
            tr.pin(lab)
        return np.ascontiguousarray(np.take(lab, range(start, min(stop, x.shape[dim]), step), axis=dim))
    return lab


def _rule_slice(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    n = x.shape[dim]
    start = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("start", 0) or 0
    stop = args[3] if len(args) > 3 and args[3] is not None else kwargs.get("end", n)
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    start, stop = _clip(start, n), _clip(stop if stop is not None else n, n)
    tr.set_label(out, _slice_lab(tr, x, tr.label(x), dim, start, stop, step))


def _clip(i: int, n: int) -> int:
    if i < 0:
        i += n
    return max(0, min(i, n))


def _couple_pieces(tr: _Tracer, pieces: list[np.ndarray]) -> bool:
    """Equal pieces of one channel axis (``chunk(2)`` of a fused gate/up projection): index ``i`` of every
    piece is one unit, so removing it keeps the pieces equal and ``chunk`` splits the smaller tensor the same
    way. False (nothing coupled) when a piece mixes channels with constants where another has channels."""
    first = pieces[0]
    for p in pieces[1:]:
        a, b = np.broadcast_arrays(first, p)
        if ((a >= 0) != (b >= 0)).any():
            return False
    for p in pieces[1:]:
        a, b = np.broadcast_arrays(first, p)
        tr.union_pairs(a.copy(), b.copy())
    return True


def _rule_split(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = tr.label(x)
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    pos = 0
    if _varies(lab, dim) and len(out) > 1:
        # ``chunk`` arrives as ``split`` by one size; explicit sizes (``split_with_sizes``) are hard-coded
        sizes = {o.shape[dim] for o in out}
        if isinstance(args[1], (list, tuple)) or len(sizes) > 1 or sum(o.shape[dim] for o in out) != x.shape[dim]:
            tr.pin(lab)
        else:
            n = out[0].shape[dim]
            if not _couple_pieces(tr, [np.take(lab, range(k * n, (k + 1) * n), axis=dim) for k in range(len(out))]):
                tr.pin(lab)
    for o in out:
        n = o.shape[dim]
        tr.set_label(o, np.take(lab, range(pos, pos + n), axis=dim) if _varies(lab, dim) else lab)
        pos += n


def _rule_glu(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``glu``: the two halves of one axis multiply index by index (a fused gate): coupled like ``chunk(2)``."""
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", -1)) % x.dim()
    lab = tr.label(x)
    if not _varies(lab, dim):
        tr.set_label(out, lab)
        return
    n = x.shape[dim] // 2
    halves = [np.take(lab, range(0, n), axis=dim), np.take(lab, range(n, 2 * n), axis=dim)]
    if not _couple_pieces(tr, halves):
        tr.pin(lab)
    tr.set_label(out, np.ascontiguousarray(halves[0]))


def _rule_unbind(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    lab = tr.label(x)
    if _varies(lab, dim):
        tr.pin(lab)
    for i, o in enumerate(out):
        tr.set_label(o, np.squeeze(lab.take([i] if _varies(lab, dim) else [0], axis=dim), axis=dim))


def _rule_cat(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    ts = [t for t in args[0] if isinstance(t, Tensor) and not (t.dim() == 1 and t.numel() == 0)]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    dim %= out.dim()
    labs = [tr.label(t) for t in ts]
    if not any((lab >= 0).any() for lab in labs):
        tr.set_label(out, _const(out.dim()))
        return
    target = [1] * out.dim()
    for lab in labs:
        for d in range(out.dim()):
            if d != dim and lab.shape[d] > 1:
                target[d] = out.shape[d]
    parts = []
    for t, lab in zip(ts, labs):
        shp = list(target)
        shp[dim] = t.shape[dim]
        parts.append(np.broadcast_to(lab, shp))
    tr.set_label(out, _compress(np.concatenate(parts, axis=dim)))


def _rule_stack(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    ts = list(args[0])
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    labs = [np.expand_dims(tr.label(t), dim) for t in ts]
    if not any((lab >= 0).any() for lab in labs):
        tr.set_label(out, _const(out.dim()))
        return
    shp = [max(lab.shape[d] for lab in labs) for d in range(out.dim())]
    shp[dim] = 1
    tr.set_label(out, _compress(np.concatenate([np.broadcast_to(lab, shp) for lab in labs], axis=dim)))


def _rule_reduce(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = tr.label(x)
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0) or not isinstance(dims, (list, tuple)):
        dims = list(range(x.dim()))
    dims = sorted({d % max(x.dim(), 1) for d in dims}) if x.dim() else []
    red = lab
    for d in dims:
        if _varies(red, d):
            red = np.full(red.shape[:d] + (1,) + red.shape[d + 1:], NO_ATOM, dtype=np.int64) if False else red
    # reduce: along reduced axes keep only a label that is constant there
    for d in dims:
        if _varies(red, d):
            red = np.full_like(red.take([0], axis=d), NO_ATOM)
    for o in outs:
        if o.dim() == x.dim():
            tr.set_label(o, _compress(red))
        else:
            keep = [d for d in range(x.dim()) if d not in dims]
            r = red.reshape([red.shape[d] for d in keep]) if len(keep) == o.dim() else _const(o.dim())
            tr.set_label(o, r)


def _rule_spatial(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = tr.label(x)
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    nsp = max(0, x.dim() - 2)
    for d in range(x.dim() - nsp, x.dim()):
        if _varies(lab, d):
            tr.pin(lab)
            lab = np.full_like(lab.take([0], axis=d), NO_ATOM)
    for o in outs:
        tr.set_label(o, lab if o.dim() == lab.ndim else _const(o.dim()))


def _rule_pad(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, pad = args[0], list(args[1])
    lab = tr.label(x)
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        if (pad[2 * i] or pad[2 * i + 1]) and _varies(lab, d):
            tr.pin(lab)
            tr.set_label(out, _const(out.dim()))
            return
    tr.set_label(out, lab)


def _rule_roll(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x = args[0]
    lab = tr.label(x)
    dims = args[2] if len(args) > 2 else kwargs.get("dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    if not dims or any(_varies(lab, d % x.dim()) for d in dims):
        if (lab >= 0).any():
            tr.pin(lab)
    tr.set_label(out, lab)


def _rule_index(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, idx = args[0], list(args[1])
    lab = tr.label(x)
    if not (lab >= 0).any():
        tr.set_label(out, _const(out.dim()))
        return
    for d, ix in enumerate(idx):
        if ix is not None and _varies(lab, d):
            tr.pin(lab)
    full_dims = [x.shape[d] if (d < len(idx) and idx[d] is not None) else lab.shape[d] for d in range(x.dim())]
    full = np.broadcast_to(lab, full_dims)
    np_idx = tuple(slice(None) if (d >= len(idx) or idx[d] is None) else idx[d].cpu().numpy() for d in range(x.dim()))
    try:
        res = full[np_idx]
    except Exception:  # noqa: BLE001
        tr.pin(lab)
        tr.set_label(out, _const(out.dim()))
        return
    if res.ndim != out.dim():
        tr.pin(lab)
        tr.set_label(out, _const(out.dim()))
        return
    tr.set_label(out, _compress(np.ascontiguousarray(res)))


def _rule_index_select(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, dim, ix = args[0], args[1] % args[0].dim(), args[2]
    lab = tr.label(x)
    if _varies(lab, dim):
        tr.pin(lab)
        lab = np.take(lab, ix.cpu().numpy(), axis=dim)
    tr.set_label(out, lab)


def _rule_gather_like(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    """cumsum, sort, topk, gather, flip: fine along axes without channels; pin otherwise."""
    x = args[0]
    lab = tr.label(x)
    dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", -1)
    if isinstance(dim, (list, tuple)):
        dims = [d % x.dim() for d in dim]
    else:
        dims = [dim % max(x.dim(), 1)]
    if any(_varies(lab, d) for d in dims):
        tr.pin(lab)
    for o in tree_flatten(out)[0]:
        if isinstance(o, Tensor):
            tr.set_label(o, lab if tuple(o.shape) == tuple(x.shape) else _const(o.dim()))


def _one_atom_per_index(lab: np.ndarray, ax: int, size: int) -> np.ndarray | None:
    """If the label holds one atom at each index along ``ax`` (the usual case), those atoms; else None."""
    if lab.shape[ax] != size and lab.shape[ax] != 1:
        return None
    moved = np.moveaxis(np.broadcast_to(lab, lab.shape[:ax] + (size,) + lab.shape[ax + 1:]), ax, 0)
    moved = moved.reshape(size, -1)
    if moved.shape[1] == 1 or (moved == moved[:, :1]).all():
        return moved[:, 0]
    return None


def _in_atoms(tr: _Tracer, lab: np.ndarray, ax: int, size: int, param_atoms: np.ndarray | None) -> None:
    """Couple each index of a consuming parameter dimension with the atoms of the activation there."""
    col = _one_atom_per_index(lab, ax, size)
    if col is not None:  # one atom per index: vectorised
        if param_atoms is not None:
            tr.pin(param_atoms[col < 0])
            tr.union_pairs(np.asarray(param_atoms[: size]), col)
        return
    per = _per_index(lab, ax, size)
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


def _pv_dim_atoms(tr: _Tracer, pv: _ParamView, view_dim: int, *, producer: bool = False) -> np.ndarray | None:
    """Atoms of the parameter dimension that a view dimension runs along (None if not a clean mapping)."""
    dm = pv.dim_map()
    if dm is None or view_dim not in dm:
        if pv.tensor.shape[view_dim] == 1:
            return None
        # general strided view (a slice of a packed weight): index arithmetic on the flat index
        flat = pv.flat_index()
        idx = np.unravel_index(flat, pv.param.shape)
        for j in range(pv.param.dim()):
            lab = _compress(idx[j])
            if lab.shape[view_dim] > 1 and sum(s > 1 for s in lab.shape) == 1:
                atoms = tr.pdim(pv.key, pv.param, j, producer=producer)
                return atoms[lab.reshape(-1)]
        return None
    return tr.pdim(pv.key, pv.param, dm[view_dim], producer=producer)


def _rule_conv(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    lab = tr.label(x)
    pv = tr.view_of(w)
    if pv is None or pv.dim_map() is None:
        # weights computed on the fly (weight normalisation, parametrizations): treat as an opaque layer
        tr.unknown("convolution", (x,), out) if (lab >= 0).any() else None
        tr.set_label(out, _const(out.dim()))
        return
    cin = x.shape[1]
    nd = out.dim()
    if not transposed:
        o_atoms = tr.pdim(pv.key, pv.param, 0, producer=True)
        i_atoms = tr.pdim(pv.key, pv.param, 1)
        if groups == 1:
            _in_atoms(tr, lab, 1, cin, i_atoms)
        else:
            per_in = cin // groups
            per_out = w.shape[0] // groups
            col = _one_atom_per_index(lab, 1, cin)
            if col is not None:  # the usual case, vectorised: channel c feeds its group's filters
                if per_in == 1:  # depthwise: input channel c is output channels c*per_out ... c*per_out+per_out-1
                    tied = o_atoms[: cin * per_out].reshape(cin, per_out)
                    tr.union_pairs(np.repeat(col, per_out), tied.reshape(-1))
                else:  # grouped: input channel c is column c % per_in of its group's filters
                    tied = i_atoms[np.arange(cin) % per_in][:, None]
                    tr.union_pairs(col, tied.reshape(-1))
                tr.pin(tied[col < 0])
            per = _per_index(lab, 1, cin) if col is None else []
            for c in range(len(per)):
                atoms = per[c]
                real = atoms[atoms >= 0]
                g, j = divmod(c, per_in)
                tied = [int(o_atoms[g * per_out + t]) for t in range(per_out)] if per_in == 1 else [int(i_atoms[j])]
                if real.size == 0 or real.size != atoms.size:
                    tr.pin(tied)
                for a in real.tolist():
                    for t in tied:
                        tr.uf.union(t, a)
            if per_in > 1 and groups > 1:  # grouped (not depthwise): uniform removal inside every group
                tr.union_pairs(np.tile(o_atoms[:per_out], groups - 1), o_atoms[per_out: groups * per_out])
        out_lab = _axis_label(None, 1, nd, o_atoms)  # type: ignore[arg-type]
    else:
        i_atoms = tr.pdim(pv.key, pv.param, 0)
        o_atoms = tr.pdim(pv.key, pv.param, 1, producer=groups == 1)
        if groups == 1:
            _in_atoms(tr, lab, 1, cin, i_atoms)
            out_lab = _axis_label(None, 1, nd, o_atoms)  # type: ignore[arg-type]
        else:
            tr.pin(lab)
            tr.pin(i_atoms)
            tr.pin(o_atoms)
            out_lab = _const(nd)
    if b is not None and (bv := tr.view_of(b)) is not None:
        ba = tr.pdim(bv.key, bv.param, 0)
        if out_lab.shape[1] > 1:
            tr.union_pairs(ba, out_lab.reshape(-1))
        else:
            tr.pin(ba)
    tr.set_label(out, out_lab)


def _rule_mm(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor, bias: Any = None) -> None:
    a, b = args[0], args[1]
    if bias is not None and not isinstance(bias, Tensor):
        bias = None
    pa, pb = tr.view_of(a), tr.view_of(b)
    la = None if pa is not None else tr.label(a)
    lb = None if pb is not None else tr.label(b)
    k = a.shape[1]
    out_a = out_b = None
    if pb is not None and la is not None:  # activation @ weight (a linear layer)
        kin = _pv_dim_atoms(tr, pb, 0)
        kout = _pv_dim_atoms(tr, pb, 1, producer=True)
        if kin is not None:
            _in_atoms(tr, la, 1, k, kin)
        elif (la >= 0).any():
            tr.pin(la)
        if kout is not None:
            out_b = kout.reshape(1, -1)
        if _varies(la, 0) and not _varies(la, 1):
            out_a = la[:, :1]
    elif pa is not None and lb is not None:  # weight @ activation
        kin = _pv_dim_atoms(tr, pa, 1)
        kout = _pv_dim_atoms(tr, pa, 0, producer=True)
        if kin is not None:
            _in_atoms(tr, lb, 0, k, kin)
        elif (lb >= 0).any():
            tr.pin(lb)
        if kout is not None:
            out_a = kout.reshape(-1, 1)
        if _varies(lb, 1) and not _varies(lb, 0):
            out_b = lb[:1, :]
    else:
        la = tr.label(a) if la is None else la
        lb = tr.label(b) if lb is None else lb
        _contract_acts(tr, la[None], lb[None], 2, 1)
        if not _varies(la, 1):
            out_a = la[:, :1]
        if not _varies(lb, 0):
            out_b = lb[:1, :]
    res = _combine(tr, out_a, out_b, (out.shape[0], out.shape[1]))
    if bias is not None:
        bl = tr.label(bias)
        bl = bl.reshape((1,) * (2 - bl.ndim) + bl.shape)
        if (bl >= 0).any():
            e1 = (res, [False, False], tuple(out.shape))
            e2 = (bl, [bias.dim() < 2 or bias.shape[0] == 1, False], tuple(out.shape))
            _couple_elementwise(tr, e1, e2, tuple(out.shape))
            if not (res >= 0).any():
                tr.pin(bl)
    tr.set_label(out, res)


def _combine(tr: _Tracer, pa: np.ndarray | None, pb: np.ndarray | None, shape: tuple) -> np.ndarray:
    has_a = pa is not None and (pa >= 0).any()
    has_b = pb is not None and (pb >= 0).any()
    if has_a and has_b:
        tr.pin(pa)  # type: ignore[arg-type]
        tr.pin(pb)  # type: ignore[arg-type]
        return _const(len(shape))
    if has_a:
        return _compress(np.ascontiguousarray(pa))
    if has_b:
        return _compress(np.ascontiguousarray(pb))
    return _const(len(shape))


def _contract_acts(tr: _Tracer, la: np.ndarray, lb: np.ndarray, ka: int, kb: int) -> None:
    """Two activations contracted (``q @ k^T``): pair their atoms index by index along the contraction."""
    va, vb = _varies(la, ka), _varies(lb, kb)
    if not va and not vb:
        return
    if va != vb:
        tr.pin(la if va else lb)
        return
    # bring to (batch, k) pairs
    a = np.moveaxis(la, ka, -1)
    b = np.moveaxis(lb, kb, -1)
    a = a.reshape(a.shape[0], -1, a.shape[-1]) if a.ndim == 3 else a.reshape(1, -1, a.shape[-1])
    b = b.reshape(b.shape[0], -1, b.shape[-1]) if b.ndim == 3 else b.reshape(1, -1, b.shape[-1])
    if a.shape[1] != 1 or b.shape[1] != 1:
        tr.pin(la)
        tr.pin(lb)
        return
    fa, fb = np.broadcast_arrays(a[:, 0, :], b[:, 0, :])
    e1 = (fa, [False, False], fa.shape)
    e2 = (fb, [False, False], fb.shape)
    _couple_elementwise(tr, e1, e2, fa.shape)


def _rule_addmm(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    _rule_mm(tr, (args[1], args[2]), kwargs, out, bias=args[0])


def _rule_bmm(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    a, b = args[0], args[1]
    la, lb = tr.label(a), tr.label(b)
    _contract_acts(tr, la, lb, 2, 1)
    out_a = la[:, :, :1] if not _varies(la, 2) else None
    out_b = lb[:, :1, :] if not _varies(lb, 1) else None
    if out_a is not None and out_b is not None and (out_a >= 0).any() and (out_b >= 0).any():
        # both carry channels only along the batch axis (heads): couple them there
        fa, fb = np.broadcast_arrays(out_a[:, 0, 0], out_b[:, 0, 0])
        if not _varies(out_a, 1) and not _varies(out_b, 2):
            tr.union_pairs(fa.copy(), fb.copy())
            tr.set_label(out, _compress(np.ascontiguousarray(out_a)))
            return
    tr.set_label(out, _combine(tr, out_a, out_b, tuple(out.shape)))


def _rule_baddbmm(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    _rule_bmm(tr, (args[1], args[2]), kwargs, out)
    lab = tr.label(out)
    sl = tr.label(args[0])
    if (sl >= 0).any():
        sl = sl.reshape((1,) * (3 - sl.ndim) + sl.shape)
        _couple_elementwise(tr, (lab, [False] * 3, out.shape), (sl, [False] * 3, out.shape), tuple(out.shape))


def _rule_sdpa(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    q, k, v = args[0], args[1], args[2]
    lq, lk, lv = tr.label(q), tr.label(k), tr.label(v)
    nd = q.dim()
    # q.k over the head dimension: pair them index by index
    if _varies(lq, nd - 1) or _varies(lk, nd - 1):
        a = lq.reshape(-1, *lq.shape[-2:]) if lq.ndim >= 3 else lq[None]
        b = lk.reshape(-1, *lk.shape[-2:]) if lk.ndim >= 3 else lk[None]
        if lq.shape[:-2] != lk.shape[:-2]:  # grouped-query attention broadcasts k over query heads
            tr.pin(lq)
            tr.pin(lk)
        else:
            _contract_acts(tr, a, np.swapaxes(b, 1, 2), 2, 1)
    o = out[0] if isinstance(out, (tuple, list)) else out
    lab = lv
    if _varies(lv, nd - 2):
        tr.pin(lv)
        lab = np.full_like(lv.take([0], axis=nd - 2), NO_ATOM)
    if lv.shape[:-2] != lq.shape[:-2] and ((lv >= 0).any()):
        if any(lv.shape[d] != q.shape[d] and lv.shape[d] > 1 for d in range(nd - 2)):
            tr.pin(lv)
            lab = _const(nd)
    tr.set_label(o, lab)
    if isinstance(out, (tuple, list)):
        for extra in out[1:]:
            if isinstance(extra, Tensor):
                tr.set_label(extra, _const(extra.dim()))


def _norm_channel_rule(tr: _Tracer, x: Tensor, params: list[Any], ax: int) -> np.ndarray:
    lab = tr.label(x)
    c = x.shape[ax]
    for p in params:
        if not isinstance(p, Tensor):
            continue
        pv = tr.view_of(p)
        if pv is None or p.dim() != 1 or p.shape[0] != c:
            if (lab >= 0).any():
                tr.pin(lab)
            continue
        _in_atoms(tr, lab, ax, c, tr.pdim(pv.key, pv.param, 0))
    return lab


def _label_norm_outputs(tr: _Tracer, out: Any, lab: Any) -> None:
    """A norm's first output carries the input's channel labels; its extra outputs (saved statistics) none."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    tr.set_label(outs[0], lab)
    for o in outs[1:]:
        if isinstance(o, Tensor):
            tr.set_label(o, _const(o.dim()))


def _rule_batch_norm(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    lab = _norm_channel_rule(tr, x, list(args[1:5]), 1)
    _label_norm_outputs(tr, out, lab)


def _rule_layer_norm(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x, shape, w, b = args[0], list(args[1]), args[2], args[3]
    lab = tr.label(x)
    if len(shape) == 1 and w is not None:
        lab = _norm_channel_rule(tr, x, [w, b], x.dim() - 1)
    elif (lab >= 0).any():
        for d in range(x.dim() - len(shape), x.dim()):
            if _varies(lab, d):
                tr.pin(lab)
                if w is not None and (pv := tr.view_of(w)) is not None:
                    for j in range(w.dim()):
                        tr.pin(tr.pdim(pv.key, pv.param, j))
                break
    _label_norm_outputs(tr, out, lab)


def _rule_group_norm(tr: _Tracer, args: tuple, kwargs: dict, out: Any) -> None:
    x, w, b, groups = args[0], args[1], args[2], int(args[6])
    lab = tr.label(x)
    c = x.shape[1]
    if w is None:
        if _varies(lab, 1):
            tr.pin(lab)
    else:
        lab = _norm_channel_rule(tr, x, [w, b], 1)
        per = c // groups
        if per > 1 and (pv := tr.view_of(w)) is not None:
            atoms = tr.pdim(pv.key, pv.param, 0)
            for g in range(1, groups):
                for j in range(per):
                    tr.uf.union(int(atoms[j]), int(atoms[g * per + j]))
    _label_norm_outputs(tr, out, lab)


def _rule_prelu(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, w = args[0], args[1]
    if w.numel() == 1 or x.dim() < 2:
        tr.set_label(out, tr.label(x))
        return
    tr.set_label(out, _norm_channel_rule(tr, x, [w.reshape(-1) if w.dim() != 1 else w], 1))


def _rule_embedding(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    w = args[0]
    pv = tr.view_of(w)
    if pv is None or pv.dim_map() is None:
        tr.set_label(out, _const(out.dim()))
        return
    atoms = tr.pdim(pv.key, pv.param, 1, producer=True)
    tr.set_label(out, _axis_label(None, out.dim() - 1, out.dim(), atoms))  # type: ignore[arg-type]


def _rule_copy_(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    dst, src = args[0], args[1]
    lab = tr.label(src)
    lab = lab.reshape((1,) * (dst.dim() - lab.ndim) + lab.shape) if lab.ndim <= dst.dim() else _const(dst.dim())
    old = tr.label(dst)
    if (old >= 0).any():
        tr.pin(old)
    tr.set_label(dst, lab)
    tr.set_label(out, lab)


def _rule_as_strided(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    """A strided view keeps the label only when it is the same logical tensor: same sizes and offset, and
    the same strides on every dimension longer than one (kernels restride fresh outputs this way to keep a
    memory format). Anything else reinterprets memory: the channels it touches are fixed."""
    x = args[0]
    lab = tr.label(x)
    if (lab >= 0).any():
        size = tuple(int(v) for v in args[1])
        stride = tuple(int(v) for v in args[2])
        off = args[3] if len(args) > 3 else kwargs.get("storage_offset")
        before = tr.layouts.get(id(x))
        if (
            before is not None
            and before[0] == size
            and (off is None or int(off) == before[2])
            and all(n == 1 or a == b for n, a, b in zip(size, stride, before[1]))
        ):
            tr.set_label(out, lab)
            return
        tr.pin(lab)
    tr.set_label(out, _const(out.dim()))
    if out is args[0]:
        tr.set_label(args[0], _const(out.dim()))


def _rule_fill_(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    tr.set_label(args[0], _const(args[0].dim()))
    tr.set_label(out, _const(out.dim()))


def _rule_index_put(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    x, idx, vals = args[0], list(args[1]), args[2]
    lab = tr.label(x)
    lv = tr.label(vals)
    for d, ix in enumerate(idx):
        if ix is not None and _varies(lab, d):
            tr.pin(lab)
    if (lv >= 0).any():
        tr.pin(lv)
    tr.set_label(out, lab)
    if out is not x:
        return
    tr.set_label(x, lab)


def _rule_channel_shuffle(tr: _Tracer, args: tuple, kwargs: dict, out: Tensor) -> None:
    lab = tr.label(args[0])
    if _varies(lab, 1):
        tr.pin(lab)
    tr.set_label(out, _compress(np.ascontiguousarray(lab)) if not _varies(lab, 1) else _const(out.dim()))


_RULES: dict[str, Callable[..., None]] = {
    "permute": _rule_permute,
    "transpose": _rule_transpose,
    "t": _rule_transpose,
    "swapdims": _rule_transpose,
    "swapaxes": _rule_transpose,
    "expand": _rule_expand,
    "unsqueeze": _rule_unsqueeze,
    "squeeze": _rule_squeeze,
    "select": _rule_select,
    "slice": _rule_slice,
    "split": _rule_split,
    "split_with_sizes": _rule_split,
    "unsafe_split": _rule_split,
    "unbind": _rule_unbind,
    "glu": _rule_glu,
    "cat": _rule_cat,
    "stack": _rule_stack,
    "constant_pad_nd": _rule_pad,
    "roll": _rule_roll,
    "flip": _rule_gather_like,
    "cumsum": _rule_gather_like,
    "cumprod": _rule_gather_like,
    "sort": _rule_gather_like,
    "topk": _rule_gather_like,
    "gather": _rule_gather_like,
    "index": _rule_index,
    "_unsafe_index": _rule_index,
    "index_select": _rule_index_select,
    "convolution": _rule_conv,
    "mm": _rule_mm,
    "addmm": _rule_addmm,
    "bmm": _rule_bmm,
    "baddbmm": _rule_baddbmm,
    "_scaled_dot_product_flash_attention_for_cpu": _rule_sdpa,
    "_scaled_dot_product_efficient_attention": _rule_sdpa,
    "_scaled_dot_product_flash_attention": _rule_sdpa,
    "_scaled_dot_product_cudnn_attention": _rule_sdpa,
    "native_batch_norm": _rule_batch_norm,
    "_native_batch_norm_legit": _rule_batch_norm,
    "_native_batch_norm_legit_no_training": _rule_batch_norm,
    "native_layer_norm": _rule_layer_norm,
    "native_group_norm": _rule_group_norm,
    "_prelu_kernel": _rule_prelu,
    "embedding": _rule_embedding,
    "copy_": _rule_copy_,
    "as_strided": _rule_as_strided,
    "fill_": _rule_fill_,
    "zero_": _rule_fill_,
    "index_put_": _rule_index_put,
    "index_put": _rule_index_put,
    "channel_shuffle": _rule_channel_shuffle,
    "native_channel_shuffle": _rule_channel_shuffle,
}


# ---------------------------------------------------------------------------------------- module rules
#
# A module rule traces a module as a whole: the operations inside it are not looked at, and the rule labels
# its outputs from its inputs and parameters once its forward has returned. It is called as
# ``rule(tracer, name, module, args, kwargs, output)``.


def _module_opaque(tr: _Tracer, name: str, mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """A module kept whole (named by ``ignore=``): its inputs and outputs keep their sizes."""
    for a in tree_flatten((args, kwargs))[0]:
        if isinstance(a, Tensor):
            tr.pin(tr.label(a))
    for o in tree_flatten(output)[0]:
        if isinstance(o, Tensor):
            tr.set_label(o, _const(o.dim()))
    tr.notes.append(f"module '{name}' ({type(mod).__name__}) is ignored: kept whole, its inputs and outputs keep their sizes")


def _rnn_data(x: Any) -> Tensor | None:
    if isinstance(x, nn.utils.rnn.PackedSequence):
        return x.data
    return x if isinstance(x, Tensor) else None


def _module_rnn(tr: _Tracer, name: str, mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
    """nn.RNN / nn.LSTM / nn.GRU (any depth, either direction). Hidden unit ``j`` is rows ``g*H + j`` of
    every gate in ``weight_ih`` / ``weight_hh`` / biases, column ``j`` of ``weight_hh``, columns ``d*H + j``
    of the next layer's ``weight_ih`` and index ``j`` (of each direction) of the outputs. All layers share
    ``hidden_size``, so unit ``j`` is one unit across layers and directions. The input features are the
    columns of the first layer's ``weight_ih``. An LSTM with ``proj_size`` is kept whole."""
    x = _rnn_data(args[0] if args else kwargs.get("input"))
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    outs = [o for o in tree_flatten(output)[0] if isinstance(o, Tensor)]
    gates = {"LSTM": 4, "GRU": 3}.get(getattr(mod, "mode", ""), 1)
    nd = 2 if mod.bidirectional else 1
    hsize, layers = int(mod.hidden_size), int(mod.num_layers)
    sfx = ["", "_reverse"][:nd]

    def atoms(pname: str, dim: int, *, producer: bool = False) -> np.ndarray | None:
        t = getattr(mod, pname, None)
        pv = tr.view_of(t) if isinstance(t, Tensor) else None
        if pv is None or pv.dim_map() is None or pv.param.shape != t.shape:
            return None
        return tr.pdim(pv.key, pv.param, dim, producer=producer)

    hid = atoms("weight_hh_l0", 1, producer=True)
    if getattr(mod, "proj_size", 0) or hid is None or x is None:
        why = "it has proj_size" if getattr(mod, "proj_size", 0) else "its weights are not plain parameters"
        for a in tree_flatten((args, kwargs))[0]:
            if isinstance(a, Tensor):
                tr.pin(tr.label(a))
        for pname, p in mod.named_parameters():
            if (pv := tr.view_of(p)) is not None:
                for d in range(p.dim()):
                    tr.pin(tr.pdim(pv.key, pv.param, d))
        for o in outs:
            tr.set_label(o, _const(o.dim()))
        tr.notes.append(f"module '{name}' ({type(mod).__name__}) is kept whole: {why}")
        return
    rows = np.tile(hid, gates)  # row g*H + j of every gate matrix is unit j
    for layer in range(layers):
        for s in sfx:
            for pname, dim, unit in (
                (f"weight_ih_l{layer}{s}", 0, rows), (f"weight_hh_l{layer}{s}", 0, rows),
                (f"weight_hh_l{layer}{s}", 1, hid), (f"bias_ih_l{layer}{s}", 0, rows), (f"bias_hh_l{layer}{s}", 0, rows),
            ):
                a = atoms(pname, dim)
                if a is not None:
                    tr.union_pairs(a, unit)
            cols = atoms(f"weight_ih_l{layer}{s}", 1)
            if cols is None:
                continue
            if layer == 0:
                _in_atoms(tr, tr.label(x), x.dim() - 1, x.shape[-1], cols)
            else:
                tr.union_pairs(cols, np.tile(hid, nd))
    for h in tree_flatten(hx)[0]:  # initial states: their last axis is the hidden units
        if isinstance(h, Tensor):
            _in_atoms(tr, tr.label(h), h.dim() - 1, h.shape[-1], hid)
    for o in outs:
        tr.set_label(o, _const(o.dim()))
    seq = _rnn_data(output[0] if isinstance(output, tuple) else output)
    states = [h for h in tree_flatten(output[1] if isinstance(output, tuple) and len(output) > 1 else ())[0]
              if isinstance(h, Tensor)]
    for o, unit in [(seq, np.tile(hid, nd))] + [(h, hid) for h in states]:
        if isinstance(o, Tensor) and o.shape[-1] == unit.size:
            tr.set_label(o, _axis_label(None, o.dim() - 1, o.dim(), unit))  # type: ignore[arg-type]


_MODULE_RULES: dict[type, Callable[..., None]] = {
    nn.RNNBase: _module_rnn,
}


# ------------------------------------------------------------------------------------------------- driver


_call = call_model


def trace_groups(
    model: nn.Module,
    example_inputs: Any,
    *,
    strict: bool = True,
    fixed: Callable[[str, nn.Module], list[tuple[str, int]]] | None = None,
    opaque: Iterable[str] = (),
) -> TraceResult:
    """Trace ``model`` on ``example_inputs`` into dependency groups.

    ``fixed(name, module)`` may return (local parameter name, dim) pairs that must not change (module
    handlers use it to protect dimensions they cannot resize). ``opaque``: names of modules traced as
    closed boxes (the modules ``ignore=`` names): nothing inside them is looked at, and their inputs,
    outputs and parameters keep their sizes. Modules with a module rule (recurrent layers) are traced as a
    whole by that rule. Nothing about the model is changed; it is run once in eval mode with gradients
    enabled (so that fused inference fast paths are not taken).
    """
    was_training = model.training
    model.eval()
    tr = _Tracer(model, strict)
    handles = []
    calls: list[tuple[str, list[int], int | None]] = []
    stack_inputs: list[list[int]] = []
    closed = set(opaque)
    unknown = closed - set(tr.module_types)
    if unknown:
        raise ModelError(f"modules to keep whole are not in the model: {', '.join(sorted(unknown))}")

    def rule_of(name: str, mod: nn.Module) -> Callable[..., None] | None:
        if name in closed:
            return _module_opaque
        for cls in type(mod).__mro__:
            if cls in _MODULE_RULES:
                return _MODULE_RULES[cls]
        return None

    def pre(name: str, rule: Callable[..., None] | None) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            tr.module_stack.append(name)
            stack_inputs.append([id(a) for a in tree_flatten(args)[0] if isinstance(a, Tensor)])
            if rule is not None:
                tr.quiet += 1

        return hook

    def post(name: str, rule: Callable[..., None] | None) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if rule is not None:
                tr.quiet -= 1
                if not tr.quiet:  # the outermost module traced as a whole: its rule labels the outputs
                    rule(tr, name, mod, args, kwargs, output)
            if tr.module_stack and tr.module_stack[-1] == name:
                tr.module_stack.pop()
            ins = stack_inputs.pop() if stack_inputs else []
            outs = [o for o in tree_flatten(output)[0] if isinstance(o, Tensor)]
            calls.append((name, ins, id(outs[0]) if outs else None))

        return hook

    for name, mod in model.named_modules():
        rule = rule_of(name, mod)
        handles.append(mod.register_forward_pre_hook(pre(name, rule), with_kwargs=True))
        handles.append(mod.register_forward_hook(post(name, rule), with_kwargs=True))
    add_src: dict[int, list[int]] = {}
    orig_propagate = tr.propagate

    def propagate(func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        if name in ("add", "add_") and isinstance(out, Tensor):
            prev = [id(a) for a in args[:2] if isinstance(a, Tensor)]
            if name == "add_":  # in place: the tensor's earlier value is a new node
                prev = [add_src.get(-id(args[0]), id(args[0])) if i == 0 else p for i, p in enumerate(prev)]
            add_src[id(out)] = prev
        orig_propagate(func, name, args, kwargs, out)

    tr.propagate = propagate  # type: ignore[method-assign]
    try:
        with torch.enable_grad(), tr:
            output = _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out_tensors = [o for o in tree_flatten(output)[0] if isinstance(o, Tensor)]
    for o in out_tensors:
        tr.pin(tr.label(o))
    for name in closed:  # a parameter of a closed module also used outside it (tied) keeps its sizes
        for t in list(model.get_submodule(name).parameters()) + list(model.get_submodule(name).buffers()):
            pv = tr.view_of(t)
            if pv is None:
                continue
            for d in range(pv.param.dim()):
                if (pv.key, d) in tr.dim_atoms:
                    tr.pin(tr.pdim(pv.key, pv.param, d))
            if pv.key in tr.elem_atoms:
                base = tr.elem_atoms[pv.key]
                tr.pin(np.arange(base, base + pv.param.numel()))
    if fixed is not None:
        for mname, mod in model.named_modules():
            for pname, dim in fixed(mname, mod):
                key = f"{mname}.{pname}" if mname else pname
                p = _get_tensor(model, key)
                if p is not None and dim < p.dim():
                    tr.pin(tr.pdim(key, p, dim))
    result = _build_groups(tr)
    result.module_calls = calls
    result.residual_chain = add_src
    result.output_shapes = [tuple(o.shape) for o in out_tensors]
    result.inputs = example_inputs
    result.producer_of = dict(tr.producer_of)
    del tr.keep_alive, tr.labels, tr.layouts
    return result


def _get_tensor(model: nn.Module, key: str) -> Tensor | None:
    mod_name, _, attr = key.rpartition(".")
    try:
        mod = model.get_submodule(mod_name) if mod_name else model
    except AttributeError:
        return None
    t = getattr(mod, attr, None)
    return t if isinstance(t, Tensor) else None


def _build_groups(tr: _Tracer) -> TraceResult:
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
        members[(key, dim)] = roots[base: base + n]
    for key, base in tr.elem_atoms.items():
        shape = tr.param_shapes[key]
        r = roots[base: base + int(np.prod(shape))].reshape(shape)
        rc = _compress(r)
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
    comp_first_cls: dict[int, int] = {}
    comp_of_cls = cc[first]
    root_of_cls = rc[first]
    starts = np.nonzero(np.concatenate([[True], comp_of_cls[1:] != comp_of_cls[:-1]]))[0]
    ends = np.concatenate([starts[1:], [len(comp_of_cls)]])
    for st, en in zip(starts.tolist(), ends.tolist()):
        comp_first_cls[int(comp_of_cls[st])] = st
    flat_cls = np.empty(len(all_roots), dtype=np.int64)
    flat_cls[o2] = cls_global  # entry i is (keys[all_keys[i]], index i - offsets[key])
    removable_cls = prod_root[root_of_cls] & ~pinned_root[root_of_cls]
    keys_of_comp: dict[int, list[int]] = {}
    for i, c in enumerate(comp.tolist()):
        keys_of_comp.setdefault(c, []).append(i)
    groups = []
    for st, en in sorted(zip(starts.tolist(), ends.tolist()), key=lambda se: int(root_of_cls[se[0]])):
        c = int(comp_of_cls[st])
        kids = keys_of_comp[c]
        index_class = [flat_cls[offsets[k]: offsets[k + 1]] - st for k in kids]
        groups.append(Group([Member(keys[k][0], keys[k][1]) for k in kids], None, removable_cls[st:en].tolist(),
                            index_class=index_class, size=en - st))
    return TraceResult(groups=groups, notes=notes)
