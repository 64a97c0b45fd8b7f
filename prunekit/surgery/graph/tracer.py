"""The dispatch-level tracer and :func:`trace_groups`, the driver that turns a forward pass into groups.

A forward pass with example inputs runs under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`.
Every tensor carries a label (:mod:`prunekit.surgery.graph.labels`). Atoms are created for each index of
each parameter dimension that the trace meets (output channels of a convolution, input columns of a linear
layer, the channels of a norm layer, ...) and, for free parameters used by plain tensor operations (class
tokens, position embeddings, layer scales), for each element. Each operation is handed to its rule
(:mod:`prunekit.surgery.rules`, looked up in :mod:`prunekit.surgery.graph.registry`), which labels the
outputs and couples or pins atoms; an operation without a rule is refused with
:class:`~prunekit.errors.UnsupportedModuleError` naming the module and the operation, before anything is
changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import prunekit.surgery.rules  # noqa: F401  (the rule modules register themselves)
from prunekit.calls import call_model, restore_modes, training_modes
from prunekit.errors import ModelError, PrunekitError, UnsupportedModuleError, inputs_failure
from prunekit.surgery.graph.groups import TraceResult, build_groups
from prunekit.surgery.graph.labels import ParamView, atoms_of, axis_label, compress, const_label
from prunekit.surgery.graph.registry import (
    ModuleRule,
    find_module_rule,
    find_op_rule,
    is_aliasing,
    is_inplace_view,
    op_name,
)
from prunekit.surgery.graph.unionfind import UnionFind
from prunekit.surgery.rules.modules import keep_whole

__all__ = ["Tracer", "trace_groups"]

_ELEMENT_ATOM_LIMIT = 4_000_000


class Tracer(TorchDispatchMode):
    """The dispatch mode that labels every tensor of a forward pass and records couplings and pins.

    Rules read and write through it: :meth:`label` / :meth:`set_label` for tensors, :meth:`pdim` for the
    atoms of a parameter dimension, :meth:`pin` for atoms that must stay, :meth:`union_pairs` (or ``uf``)
    for couplings, :meth:`view_of` to recognise a parameter by its storage.
    """

    def __init__(self, model: nn.Module, strict: bool):
        super().__init__()
        self.uf = UnionFind()
        self.labels: dict[int, tuple[Tensor, np.ndarray]] = {}
        self.layouts: dict[int, tuple[tuple[int, ...], tuple[int, ...], int]] = {}  # size, stride, offset
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
        self.keep_alive: list[Any] = []
        self.module_types = {n: type(m).__name__ for n, m in model.named_modules()}
        self.quiet = 0  # > 0 while a module traced as a whole runs: its operations are not looked at

    # -- atoms ------------------------------------------------------------------------------------------
    def pdim(self, key: str, param: Tensor, dim: int, *, producer: bool = False) -> np.ndarray:
        """The atoms of dimension ``dim`` of parameter ``key`` (created on first use), one per index.
        ``producer=True`` flags them as output channels of the module now running."""
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
        """Keep these atoms (their classes are never removed); NO_ATOM entries are ignored."""
        a = np.asarray(atoms, dtype=np.int64).reshape(-1)
        a = a[a >= 0]
        if a.size:
            self.pinned.append(np.unique(a))

    def union_pairs(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple ``a[i]`` with ``b[i]`` wherever both are atoms."""
        a = np.asarray(a, dtype=np.int64).reshape(-1)
        b = np.asarray(b, dtype=np.int64).reshape(-1)
        ok = (a >= 0) & (b >= 0) & (a != b)
        if ok.any():
            self.uf.union_many(a[ok], b[ok])

    # -- labels -----------------------------------------------------------------------------------------
    def view_of(self, t: Tensor) -> ParamView | None:
        """``t`` as a view of a parameter or buffer of the model (by its storage), or None."""
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:  # noqa: BLE001  (meta or sparse tensors)
            return None
        cands = self.storages.get(ptr)
        if not cands:
            return None
        if len(cands) == 1:
            return ParamView(cands[0][0], cands[0][1], t)
        for name, p in cands:  # several parameters share a storage: pick the one that holds the view
            if p.storage_offset() <= t.storage_offset() < p.storage_offset() + p.numel():
                return ParamView(name, p, t)
        return None

    def label(self, t: Any) -> np.ndarray:
        """The label of any operand: an activation, a parameter (view) or a constant."""
        if not isinstance(t, Tensor):
            return const_label(0)
        hit = self.labels.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        pv = self.view_of(t)
        if pv is None:
            return const_label(t.dim())
        return self.param_label(pv)

    def param_label(self, pv: ParamView) -> np.ndarray:
        """A parameter used by a plain tensor operation: per-dimension atoms when only one dimension is
        non-trivial, otherwise (weak) per-element atoms that later collapse onto the classes they meet."""
        p, t = pv.param, pv.tensor
        big = [j for j in range(p.dim()) if p.shape[j] > 1]
        if not big:
            return const_label(t.dim())
        dm = pv.dim_map()
        if len(big) == 1 and dm is not None:
            j = big[0]
            atoms = self.pdim(pv.key, p, j)
            for i, pj in dm.items():
                if pj == j:
                    return axis_label(i, t.dim(), atoms)
            return const_label(t.dim())
        if p.numel() > _ELEMENT_ATOM_LIMIT or not p.is_contiguous():
            self.notes.append(f"parameter {pv.key} is used by a plain operation and too large to track; fixed")
            for j in big:
                self.pin(self.pdim(pv.key, p, j))
            return const_label(t.dim())
        if pv.key not in self.elem_atoms:
            self.elem_atoms[pv.key] = self.uf.make(p.numel(), weak=True)
            self.param_shapes[pv.key] = tuple(p.shape)
        base = self.elem_atoms[pv.key]
        return compress(pv.flat_index() + base)

    def set_label(self, t: Any, lab: np.ndarray) -> None:
        """Give tensor ``t`` label ``lab`` (left-padded with axes of size 1 to ``t``'s rank; a label of more
        dimensions than ``t`` becomes a constant). Anything but a tensor is ignored."""
        if isinstance(t, Tensor):
            lab = np.asarray(lab, dtype=np.int64)
            if lab.ndim != t.dim():
                lab = (
                    lab.reshape((1,) * (t.dim() - lab.ndim) + lab.shape) if lab.ndim < t.dim() else const_label(t.dim())
                )
            self.labels[id(t)] = (t, lab)
            try:
                self.layouts[id(t)] = (tuple(t.shape), tuple(t.stride()), int(t.storage_offset()))
            except Exception:  # noqa: BLE001  (tensors without strides)
                self.layouts.pop(id(t), None)

    def here(self) -> str:
        """The module now running, for messages: ``name' (Class)`` (the opening quote is the caller's)."""
        name = self.module_stack[-1] if self.module_stack else ""
        return f"{name or '<model>'}' ({self.module_types.get(name, '?')})"

    def unknown(self, name: str, args: tuple, out: Any) -> None:
        """An operation without a rule. If it touches channels: with ``strict``, raise
        :class:`~prunekit.errors.UnsupportedModuleError` (with the way out), else pin them and note it.
        Its outputs become constants."""
        labs = [self.label(a) for a in tree_flatten(args)[0] if isinstance(a, Tensor)]
        if any(atoms_of(lab).size for lab in labs):
            if self.strict:
                mod = self.module_stack[-1] if self.module_stack else ""
                advice = (
                    (
                        f"pass ignore=[{mod!r}] to keep this module whole, or strict=False to keep only the "
                        f"channels it touches"
                    )
                    if mod
                    else (
                        "the operation is in the model's own forward (no submodule to ignore): pass strict=False "
                        "to keep the channels it touches"
                    )
                )
                raise UnsupportedModuleError(
                    f"module '{self.here()} applies the operation aten.{name} to prunable channels, and "
                    f"prunekit does not know how channels flow through it; {advice}"
                )
            for lab in labs:
                self.pin(lab)
            self.notes.append(f"aten.{name} in '{self.here()} is not understood: the channels it touches are kept")
        for o in tree_flatten(out)[0]:
            if isinstance(o, Tensor):
                self.set_label(o, const_label(o.dim()))

    # -- dispatch ---------------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.quiet:  # inside a module traced as a whole (ignored, or with a module rule)
            return func(*args, **kwargs)
        name = op_name(func)
        if is_inplace_view(name) and args and isinstance(args[0], Tensor):
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
                    self.set_label(o, const_label(o.dim()))
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
        self.set_label(out, lab if lab is not None else const_label(out.dim()))
        self.keep_alive.append(out)
        return out

    def propagate(self, func: Any, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        """Label the outputs of operation ``func`` (named ``name``) by its rule, or refuse it
        (:meth:`unknown`) when it has none."""
        if is_aliasing(name) and args and isinstance(args[0], Tensor):
            x = args[0]
            hit = self.labels.get(id(x))
            if (hit is None or hit[0] is not x) and self.view_of(x) is not None:
                return  # a view of a parameter: recognised by its storage where it is used
        rule = find_op_rule(func, name)
        if rule is None:
            self.unknown(name, args, out)
            return
        rule(self, func, args, kwargs, out)


# ------------------------------------------------------------------------------------------------- driver


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
    enabled (so that fused inference fast paths are not taken). Raises :class:`~prunekit.errors.ModelError`
    when ``opaque`` names a module the model does not have, and
    :class:`~prunekit.errors.UnsupportedModuleError` (with ``strict``) on an operation without a rule.
    """
    modes = training_modes(model)
    model.eval()
    tr = Tracer(model, strict)
    handles = []
    calls: list[tuple[str, list[int], int | None]] = []
    stack_inputs: list[list[int]] = []
    closed = set(opaque)
    unknown = closed - set(tr.module_types)
    if unknown:
        raise ModelError(f"modules to keep whole are not in the model: {', '.join(sorted(unknown))}")

    def rule_of(name: str, mod: nn.Module) -> ModuleRule | None:
        if name in closed:
            return keep_whole
        return find_module_rule(mod)

    def pre(name: str, rule: ModuleRule | None) -> Callable:
        def hook(mod: nn.Module, args: tuple, kwargs: dict) -> None:
            tr.module_stack.append(name)
            stack_inputs.append([id(a) for a in tree_flatten(args)[0] if isinstance(a, Tensor)])
            if rule is not None:
                tr.quiet += 1

        return hook

    def post(name: str, rule: ModuleRule | None) -> Callable:
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
            # the summands' ids; for add_ (in place) ``out`` is ``args[0]`` itself, so its first id is its own
            add_src[id(out)] = [id(a) for a in args[:2] if isinstance(a, Tensor)]
        orig_propagate(func, name, args, kwargs, out)

    tr.propagate = propagate  # type: ignore[method-assign]
    try:
        with torch.enable_grad(), tr:
            output = call_model(model, example_inputs)
    except PrunekitError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:  # the model's own failure
        raise inputs_failure(e, example_inputs) from e
    finally:
        for h in handles:
            h.remove()
        restore_modes(modes)
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
    result = build_groups(tr)
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
