"""Physical removal: slice tensors, keep tied parameters tied, let handlers update module attributes.

:func:`remove_` first computes every new tensor and asks every handler to check the new shapes; only then
does it replace anything, so a refused change leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.errors import ModelError, PlanError
from prunekit.structural.handlers import handler_for

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
    for name, t in list(model.named_parameters(remove_duplicate=True)) + list(model.named_buffers(remove_duplicate=True)):
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


def new_shapes(model: nn.Module, removal: Removal, slots: dict[str, list[_Slot]] | None = None) -> dict[str, tuple[int, ...]]:
    """The shape every tensor of ``removal`` will have; a removal that does not fit raises :class:`PlanError`."""
    slots = tensor_slots(model) if slots is None else slots
    out = {}
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
    # 1. compute new tensors
    new: dict[str, Tensor] = {}
    old_shapes: dict[str, tuple[int, ...]] = {}
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
    per_module: dict[int, tuple[str, nn.Module, dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]] = {}
    for key, slist in slots.items():
        if key not in new:
            continue
        for s in slist:
            entry = per_module.setdefault(id(s.module), (s.module_name, s.module, {}, {}))
            entry[2][s.attr] = shapes[key]
            entry[3][s.attr] = old_shapes[key]
    owner_handlers = []
    for mname, mod, nshapes, oshapes in per_module.values():
        owners = _owners(modules, mname)
        for oname, omod in owners:
            h = handler_for(omod)
            if h is None:
                continue
            prefix = mname[len(oname) + 1:] if oname and mname != oname else ("" if mname == oname else mname)
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
        before = _size_attrs(omod)
        try:
            h.update(omod, rel_old)
        except Exception as e:  # noqa: BLE001
            raise ModelError(f"updating the attributes of {type(omod).__name__} failed after removal: {e}") from e
        record_attrs(model, names.get(id(omod), ""), before, _size_attrs(omod))
    record_shapes(model, old_shapes)
    return old_shapes


def _size_attrs(module: nn.Module) -> dict[str, object]:
    """The plain size attributes of a module (ints and tuples of ints)."""
    out: dict[str, object] = {}
    for k, v in vars(module).items():
        if k.startswith("_") or isinstance(v, bool):
            continue
        if isinstance(v, int) or (isinstance(v, tuple) and all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
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
    st = structure_state(model)
    for k, v in old_shapes.items():
        st["original_shapes"].setdefault(k, list(v))


def record_attrs(model: nn.Module, module_name: str, before: dict, after: dict) -> None:
    changed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in after.items() if before.get(k) != v}
    if changed:
        structure_state(model)["attrs"].setdefault(module_name, {}).update(changed)


def _owners(modules: dict[str, nn.Module], mname: str) -> list[tuple[str, nn.Module]]:
    """The module holding a tensor and its ancestors, innermost first (a handler of an ancestor such as
    MultiheadAttention owns its out_proj). ``modules``: the model's ``dict(named_modules())``."""
    parts = mname.split(".") if mname else []
    return [(n, modules[n]) for n in (".".join(parts[:i]) for i in range(len(parts), -1, -1))]
