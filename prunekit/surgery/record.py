"""Save and reload structurally pruned models: a JSON record of the new shapes.

:func:`structure_record` describes what changed (new tensor shapes, changed size attributes, removed
layers, config fields); :func:`apply_structure_record` replays it on a freshly built model so that the
saved state dict loads strictly. The record is independent of how the pruning was decided.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import CheckpointError
from prunekit.surgery.remove import STATE_ATTR, structure_state, tensor_slots

FORMAT = "prunekit-structure/1"


def structure_record(model: nn.Module) -> dict[str, Any] | None:
    """A JSON-able description of the structure of a structurally pruned model; None if it was not."""
    st = model.__dict__.get(STATE_ATTR)
    if not st:
        return None
    slots = tensor_slots(model)
    shapes = {}
    for key in st["original_shapes"]:
        if key in slots:
            shapes[key] = list(getattr(slots[key][0].module, slots[key][0].attr).shape)
        elif (shape := _parametrized_shape(model, key)) is not None:  # a mask on it since: its shape is the same
            shapes[key] = shape
    if not shapes and not st["removed_layers"]:
        return None
    return {
        "format": FORMAT,
        "removed_layers": list(st["removed_layers"]),
        "shapes": shapes,
        "original_shapes": {k: list(v) for k, v in st["original_shapes"].items()},
        "attrs": {k: dict(v) for k, v in st["attrs"].items()},
        "config": dict(st.get("config", {})),
    }


def _parametrized_shape(model: nn.Module, key: str) -> list[int] | None:
    """The shape of tensor ``key`` ("module.attr") when ``attr`` is parametrized (a mask attached after the
    structural change), read from the stored original; None when there is no such tensor."""
    mname, _, attr = key.rpartition(".")
    try:
        mod = model.get_submodule(mname) if mname else model
    except AttributeError:
        return None
    if not parametrize.is_parametrized(mod, attr):
        return None
    return list(cast(Any, mod).parametrizations[attr].original.shape)


def reshape_slot(slots: dict[str, list[Any]], key: str, shape: Any) -> None:
    """Give the tensor behind ``key`` (shared by every slot that holds it) a zero-filled tensor of ``shape``."""
    old = getattr(slots[key][0].module, slots[key][0].attr)
    data = torch.zeros(shape, dtype=old.dtype, device=old.device)
    repl = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
    for s in slots[key]:
        (s.module._parameters if s.is_param else s.module._buffers)[s.attr] = repl


def set_size_attrs(model: nn.Module, attrs: dict[str, dict[str, Any]]) -> None:
    """Set recorded size attributes (``{module name: {attribute: value}}``); lists become tuples."""
    for mname, values in attrs.items():
        try:
            mod = model.get_submodule(mname) if mname else model
        except AttributeError as e:
            raise CheckpointError(f"the structure record names module {mname!r}, which the model does not have") from e
        for k, v in values.items():
            setattr(mod, k, tuple(v) if isinstance(v, list) else v)


def apply_structure_record(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Reshape a freshly built ``model`` (same architecture, unpruned) as the record says, in place.

    Tensors get the recorded shapes (zero-filled: the caller loads the saved weights next), size attributes
    their recorded values, removed layers are removed again. Returns the model.
    """
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"not a prunekit structure record (expected format {FORMAT!r})")
    for name in record.get("removed_layers", []):
        _remove_layer(model, name)
    slots = tensor_slots(model)
    for key, shape in record.get("shapes", {}).items():
        if key not in slots:
            raise CheckpointError(f"the structure record names {key!r}, which the rebuilt model does not have")
        reshape_slot(slots, key, shape)
    set_size_attrs(model, record.get("attrs", {}))
    from prunekit.surgery.mha import adopt_pruned_heads

    for m in model.modules():  # nn.MultiheadAttention that lost heads runs as HeadPrunedMultiheadAttention
        if isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            adopt_pruned_heads(m)
    cfg = record.get("config") or {}
    if cfg and getattr(model, "config", None) is not None:
        for k, v in cfg.items():
            setattr(model.config, k, v)
    st = structure_state(model)
    st["original_shapes"].update({k: list(v) for k, v in record.get("original_shapes", {}).items()})
    st["attrs"].update({k: dict(v) for k, v in record.get("attrs", {}).items()})
    st["removed_layers"] = list(record.get("removed_layers", []))
    st["config"] = dict(cfg)
    return model


def _remove_layer(model: nn.Module, name: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        del parent[int(child)]
    else:
        raise CheckpointError(f"cannot remove layer {name!r}: its parent is not a ModuleList or Sequential")
