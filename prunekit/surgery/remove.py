"""Physical removal: slice tensors, keep tied parameters tied, let handlers update module attributes.

:func:`remove_` first computes every new tensor and asks every handler to check the new shapes; only then
does it replace anything, so a refused change leaves the model as it was.

A parametrized weight (a prunekit mask, ``weight_norm``) is computed from stored tensors; a removal may
name it (``conv.weight``) or any of its tensors (``conv.parametrizations.weight.original1``) and all of
them are sliced together so that the kept part of the weight stays what it was (see :class:`_Reparam`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from prunekit.apply.masks import Mask
from prunekit.errors import ModelError, PlanError, UnsupportedModuleError
from prunekit.surgery.handlers import handler_for

Removal = dict[str, dict[int, np.ndarray]]  # tensor key -> dim -> indices to remove


@dataclass
class _Slot:
    module: nn.Module
    module_name: str
    attr: str
    is_param: bool


def tensor_slots(model: nn.Module) -> dict[str, list[_Slot]]:
    """Canonical tensor key (first qualified name, as ``named_parameters`` gives it) -> every place that
    holds the same tensor (tied weights are held by several modules)."""
    canon: dict[int, str] = {}
    for name, t in [*model.named_parameters(remove_duplicate=True), *model.named_buffers(remove_duplicate=True)]:
        canon.setdefault(id(t), name)
    slots: dict[str, list[_Slot]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for attr, t in list(mod._parameters.items()) + list(mod._buffers.items()):
            if t is None or id(t) not in canon:
                continue
            key = canon[id(t)]
            slot = _Slot(mod, mname, attr, attr in mod._parameters)
            if not any(s.module is mod and s.attr == attr for s in slots.get(key, [])):
                slots.setdefault(key, []).append(slot)
    return slots


def _keep_index(n: int, drop: np.ndarray) -> torch.Tensor:
    mask = np.ones(n, dtype=bool)
    mask[np.asarray(drop, dtype=np.int64)] = False
    return torch.from_numpy(np.nonzero(mask)[0])


def _sorted_unique(drop: Any) -> np.ndarray:
    u = np.asarray(drop, dtype=np.int64).reshape(-1)
    return u if u.size < 2 or bool((u[1:] > u[:-1]).all()) else np.unique(u)


@dataclass
class _Reparam:
    """Indices removed from one parametrized weight ``module.<pname>``, along the weight's own dims.

    Masks are sliced like the weight. Under ``weight_norm`` (``w = g * v / ||v||``, the norm taken over
    every dim but ``dim``) ``v`` is sliced like the weight and ``g`` along ``dim``; removing along another
    dim changes ``||v||``, so ``g`` is rescaled to keep ``g / ||v||`` and every kept weight unchanged.
    """

    module_name: str
    module: nn.Module
    pname: str
    dims: dict[int, np.ndarray]

    @property
    def label(self) -> str:
        return f"{self.module_name}.{self.pname}" if self.module_name else self.pname

    def _plist(self) -> parametrize.ParametrizationList:
        """The ParametrizationList that computes ``pname``."""
        return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, self.module.parametrizations)[self.pname])

    def tensors(self) -> list[tuple[str, Tensor]]:
        """(local name under the ParametrizationList, tensor): the stored originals and the masks."""
        plist = self._plist()
        out: list[tuple[str, Tensor]] = [(n, t) for n, t in plist.named_parameters(recurse=False)]
        for i, p in enumerate(plist):
            if isinstance(p, Mask):
                out.append((f"{i}.mask", p.mask))  # a buffer
        return out

    def check(self) -> None:
        plist = self._plist()
        kinds = [type(p).__name__ for p in plist]
        plain = all(isinstance(p, Mask) for p in plist) and hasattr(plist, "original")
        normed = isinstance(plist[0], _WeightNorm) and all(isinstance(p, Mask) for p in list(plist)[1:])
        if not (plain or normed):
            raise UnsupportedModuleError(
                f"{self.label} is computed by parametrizations ({', '.join(kinds)}) that prunekit cannot slice; "
                f"fold them first (torch.nn.utils.parametrize.remove_parametrizations({self.module_name or 'model'}, "
                f"{self.pname!r}, leave_parametrized=True)) or pass ignore=[{self.module_name!r}]"
            )
        w = getattr(self.module, self.pname)
        for d, drop in self.dims.items():
            if d >= w.dim():
                raise PlanError(f"the plan removes along dim {d} of {self.label}, which has shape {tuple(w.shape)}")
            u = _sorted_unique(drop)
            if u.size and (u.min() < 0 or u.max() >= w.shape[d]):
                raise PlanError(f"the plan removes index {int(u.max())} along dim {d} of {self.label} {tuple(w.shape)}")
            if u.size >= w.shape[d]:
                raise PlanError(f"the plan removes every index along dim {d} of {self.label}")

    def _slice(self, t: Tensor, weight_shape: torch.Size) -> Tensor:
        for d, drop in sorted(self.dims.items()):
            if len(drop) and t.dim() == len(weight_shape) and t.shape[d] == weight_shape[d]:
                t = t.index_select(d, _keep_index(t.shape[d], _sorted_unique(drop)).to(t.device))
        return t

    def weight_shape(self) -> tuple[int, ...]:
        w = getattr(self.module, self.pname)
        shape = list(w.shape)
        for d, drop in self.dims.items():
            shape[d] -= _sorted_unique(drop).size
        return tuple(shape)

    def new_tensors(self) -> dict[str, Tensor]:
        """Local name -> the tensor it becomes."""
        plist = self._plist()
        with torch.no_grad():
            wshape = getattr(self.module, self.pname).shape
            out = {n: self._slice(t.detach(), wshape).contiguous() for n, t in self.tensors() if n != "original0"}
            if isinstance(plist[0], _WeightNorm):
                g, v = cast(Tensor, plist.original0).detach(), cast(Tensor, plist.original1).detach()
                dim = plist[0].dim
                norm = torch.norm_except_dim(v, 2, dim).reshape(g.shape)
                safe_norm = torch.where(norm == 0, torch.ones_like(norm), norm)
                scale = torch.where(norm == 0, torch.zeros_like(g), g / safe_norm)
                if dim != -1 and len(self.dims.get(dim % v.dim(), ())):
                    d = dim % v.dim()
                    keep = _keep_index(scale.shape[d], _sorted_unique(self.dims[d])).to(g.device)
                    scale = scale.index_select(d, keep)
                new_norm = torch.norm_except_dim(out["original1"], 2, dim).reshape(scale.shape)
                out["original0"] = (scale * new_norm).contiguous()
        return out


def _reparams(model: nn.Module, removal: Removal, slots: dict[str, list[_Slot]]) -> tuple[Removal, list[_Reparam]]:
    """Split ``removal`` into plain tensors and parametrized weights (named by the weight or by any tensor
    stored under its parametrizations)."""
    modules = dict(model.named_modules(remove_duplicate=False))
    plain: Removal = {}
    found: dict[tuple[int, str], _Reparam] = {}

    def add(mname: str, module: nn.Module, pname: str, dims: dict[int, np.ndarray]) -> None:
        rp = found.setdefault((id(module), pname), _Reparam(mname, module, pname, {}))
        for d, drop in dims.items():
            old = rp.dims.get(d)
            rp.dims[d] = drop if old is None else np.union1d(old, np.asarray(drop, dtype=np.int64))

    for key, dims in removal.items():
        mname, _, attr = key.rpartition(".")
        owner = modules.get(mname)
        if key not in slots and owner is not None and parametrize.is_parametrized(owner, attr):
            add(mname, owner, attr, dims)
            continue
        parts = key.split(".")
        if key in slots and "parametrizations" in parts:
            i = len(parts) - 1 - parts[::-1].index("parametrizations")
            mname, pname = ".".join(parts[:i]), parts[i + 1] if i + 1 < len(parts) else ""
            owner = modules.get(mname)
            if owner is not None and parametrize.is_parametrized(owner, pname):
                # a stored tensor of the weight: its dims are the weight's (g of weight_norm keeps size-1 dims)
                add(mname, owner, pname, dims)
                continue
        plain[key] = dims
    return plain, list(found.values())


def _reparam_keys(rp: _Reparam, slots: dict[str, list[_Slot]]) -> dict[str, str]:
    """Local tensor name under the ParametrizationList -> its canonical tensor key."""
    key_of = {id(getattr(sl[0].module, sl[0].attr)): k for k, sl in slots.items()}
    return {n: key_of[id(t)] for n, t in rp.tensors() if id(t) in key_of}


def new_shapes(
    model: nn.Module, removal: Removal, slots: dict[str, list[_Slot]] | None = None
) -> dict[str, tuple[int, ...]]:
    """The shape every tensor of ``removal`` will have; a removal that does not fit raises :class:`PlanError`."""
    slots = tensor_slots(model) if slots is None else slots
    removal, reparams = _reparams(model, removal, slots)
    out = {}
    for rp in reparams:
        rp.check()
        wshape = getattr(rp.module, rp.pname).shape
        keys = _reparam_keys(rp, slots)
        for n, t in rp.tensors():
            shape = list(t.shape)
            for d, drop in rp.dims.items():
                if t.dim() == len(wshape) and t.shape[d] == wshape[d]:
                    shape[d] -= _sorted_unique(drop).size
            if n in keys:
                out[keys[n]] = tuple(shape)
    for key, dims in removal.items():
        if key not in slots:
            raise PlanError(f"the plan removes indices from {key!r}, which the model does not have")
        t = getattr(slots[key][0].module, slots[key][0].attr)
        shape = list(t.shape)
        for d, drop in dims.items():
            if d >= t.dim():
                raise PlanError(f"the plan removes along dim {d} of {key!r}, which has shape {tuple(t.shape)}")
            u = _sorted_unique(drop)
            if u.size and (u.min() < 0 or u.max() >= t.shape[d]):
                raise PlanError(f"the plan removes index {int(u.max())} along dim {d} of {key!r} {tuple(t.shape)}")
            shape[d] -= u.size
            if shape[d] <= 0:
                raise PlanError(f"the plan removes every index along dim {d} of {key!r}")
        out[key] = tuple(shape)
    return out


def remove_(model: nn.Module, removal: Removal) -> dict[str, tuple[int, ...]]:
    """Remove the given indices in place. Returns the old shape of every tensor that changed."""
    slots = tensor_slots(model)
    shapes = new_shapes(model, removal, slots)
    modules = dict(model.named_modules(remove_duplicate=False))
    removal, reparams = _reparams(model, removal, slots)
    # 1. compute new tensors
    new: dict[str, Tensor] = {}
    old_shapes: dict[str, tuple[int, ...]] = {}
    per_module: dict[int, tuple[str, nn.Module, dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]] = {}
    for rp in reparams:
        keys = _reparam_keys(rp, slots)
        olds = dict(rp.tensors())
        for n, t in rp.new_tensors().items():
            if n in keys:
                new[keys[n]] = t
                old_shapes[keys[n]] = tuple(olds[n].shape)
        # the module's handler checks the weight it computes, by its plain name
        per_module[id(rp.module)] = (
            rp.module_name,
            rp.module,
            {rp.pname: rp.weight_shape()},
            {rp.pname: tuple(getattr(rp.module, rp.pname).shape)},
        )
    for key, dims in removal.items():
        t = getattr(slots[key][0].module, slots[key][0].attr)
        old_shapes[key] = tuple(t.shape)
        data = t.detach()
        live = {d: drop for d, drop in dims.items() if len(drop)}
        if set(live) == {0, 1} and data.dim() == 2 and data.numel() > (1 << 20):  # a big matrix: one 2-D gather
            r = _keep_index(data.shape[0], live[0]).to(data.device)
            c = _keep_index(data.shape[1], live[1]).to(data.device)
            data = data[r[:, None], c[None, :]]
        else:
            for d, drop in sorted(live.items()):
                data = data.index_select(d, _keep_index(data.shape[d], drop).to(data.device))
        new[key] = data.contiguous() if data is not t.detach() else data.clone()
    # 2. let handlers veto
    for key, slist in slots.items():
        if key not in new:
            continue
        for s in slist:
            entry = per_module.setdefault(id(s.module), (s.module_name, s.module, {}, {}))
            entry[2][s.attr] = shapes[key]
            entry[3][s.attr] = old_shapes[key]
    owner_handlers = []
    for mname, _mod, nshapes, oshapes in per_module.values():
        owners = _owners(modules, mname)
        for oname, omod in owners:
            h = handler_for(omod)
            if h is None:
                continue
            prefix = mname[len(oname) + 1 :] if oname and mname != oname else ("" if mname == oname else mname)
            rel = {(f"{prefix}.{k}" if prefix else k): v for k, v in nshapes.items()}
            rel_old = {(f"{prefix}.{k}" if prefix else k): v for k, v in oshapes.items()}
            h.check(oname or "<model>", omod, rel)
            owner_handlers.append((h, omod, rel_old))
            break
    # 3. replace (no failure expected from here on)
    for key, data in new.items():
        old = getattr(slots[key][0].module, slots[key][0].attr)
        if isinstance(old, nn.Parameter):
            repl: Tensor = nn.Parameter(data, requires_grad=old.requires_grad)
        else:
            repl = data
        for s in slots[key]:
            if s.is_param:
                s.module._parameters[s.attr] = repl  # type: ignore[assignment]
            else:
                s.module._buffers[s.attr] = repl
    seen = set()
    names = {id(m): n for n, m in modules.items()}
    for h, omod, rel_old in owner_handlers:
        if id(omod) in seen:
            continue
        seen.add(id(omod))
        before = size_attrs(omod)
        try:
            h.update(omod, rel_old)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"updating the attributes of {type(omod).__name__} failed after removal: {e}") from e
        record_attrs(model, names.get(id(omod), ""), before, size_attrs(omod))
    record_shapes(model, old_shapes)
    return old_shapes


def size_attrs(module: nn.Module) -> dict[str, object]:
    """The plain size attributes of a module (ints and tuples of ints)."""
    out: dict[str, object] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or isinstance(v, bool):
            continue
        if isinstance(v, int) or (
            isinstance(v, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)
        ):
            out[k] = v
    return out


STATE_ATTR = "_prunekit_structure"


def structure_state(model: nn.Module) -> dict:
    """The structural history kept on the model: original shapes, changed attributes, removed layers."""
    st = model.__dict__.get(STATE_ATTR)
    if st is None:
        st = {"original_shapes": {}, "attrs": {}, "removed_layers": [], "config": {}}
        model.__dict__[STATE_ATTR] = st
    return st


def record_shapes(model: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
    """Record ``old_shapes`` (tensor key -> shape before a removal) in the model's structure state as its
    original shapes; a tensor already recorded keeps its first (true original) shape."""
    st = structure_state(model)
    for k, v in old_shapes.items():
        st["original_shapes"].setdefault(k, list(v))


def record_attrs(model: nn.Module, module_name: str, before: dict, after: dict) -> None:
    """Record in the model's structure state the size attributes of module ``module_name`` that differ
    between ``before`` and ``after`` (two :func:`size_attrs` of it); tuples are stored as lists."""
    changed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in after.items() if before.get(k) != v}
    if changed:
        structure_state(model)["attrs"].setdefault(module_name, {}).update(changed)


def _owners(modules: dict[str, nn.Module], mname: str) -> list[tuple[str, nn.Module]]:
    """The module holding a tensor and its ancestors, innermost first (a handler of an ancestor such as
    MultiheadAttention owns its out_proj). ``modules``: the model's ``dict(named_modules())``."""
    parts = mname.split(".") if mname else []
    return [(n, modules[n]) for n in (".".join(parts[:i]) for i in range(len(parts), -1, -1))]
