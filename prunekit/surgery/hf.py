"""Hugging Face configs kept in step with new sizes, and pruned models saved and reloaded.

What a config can state is asked of the config itself (:func:`head_config_fields`): head plans are moved
to the nearest head count it can express (:func:`fit_head_counts`), and :func:`sync_hf_config` writes the
new sizes. What it cannot state (a head size a family derives from the hidden size, per-layer widths) is
recorded in ``config.prunekit_structure`` and replayed by :func:`from_pretrained_pruned`. Attention modules
are found by :mod:`prunekit.surgery.attention`.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from prunekit.calibration.families import block_list, mlp_inputs
from prunekit.errors import UnsupportedModuleError
from prunekit.surgery.attention import AttentionBlock, find_attention
from prunekit.surgery.remove import record_attrs, size_attrs, structure_state

# ----------------------------------------------------------------------------------------------- configs


def _layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The main stack of transformer blocks: the family's (:func:`~prunekit.calibration.families.block_list`),
    else the longest ModuleList of blocks of one class."""
    return block_list(model)


def input_embedding(model: nn.Module) -> nn.Module | None:
    """The token embedding whose columns are the hidden size, or None: vision and audio encoders answer
    with a patch embedding (no ``weight``) or raise instead of answering."""
    getter = getattr(model, "get_input_embeddings", None)
    if getter is None:
        return None
    try:
        emb = getter()
    except (NotImplementedError, AttributeError):
        return None
    w = getattr(emb, "weight", None)
    return emb if isinstance(w, torch.Tensor) and w.dim() == 2 else None


def _mlp_width(layer: nn.Module, inputs: tuple[tuple[str, bool], ...]) -> int | None:
    """The MLP width of one block, read from the first of ``inputs`` (the family table's MLP input
    projections, :func:`~prunekit.calibration.families.mlp_inputs`) it has; a fused gate/up projection
    holds two widths."""
    from prunekit.layout import weight_layout

    ch = dict(layer.named_modules())
    for key, fused in inputs:
        mod = ch.get(key)
        layout = weight_layout(mod) if mod is not None else None
        w = getattr(mod, "weight", None)
        if layout is not None and isinstance(w, torch.Tensor):
            width = int(w.shape[layout.out_axis])
            return width // 2 if fused else width
    return None


_PRUNEKIT_KEYS = ("prunekit_structure", "prunekit_unexpressible", "prunekit_per_layer")


def _is_hf_config(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "to_dict") and hasattr(obj, "to_json_string")


def own_config_(model: nn.Module) -> None:
    """Give ``model`` its own deep copy of its Hugging Face config before prunekit edits it.

    Models built from one config object (a teacher and a student, ``Model(cfg)`` twice) share it, and so do
    sub-modules that keep ``self.config``; pruning one model must not rewrite the others. Every reference
    inside ``model`` to the old config, or to one of its sub-configs (``text_config`` ...), is pointed at the
    matching part of the copy. The generation config is copied as well.
    """
    old = getattr(model, "config", None)
    if old is None or not _is_hf_config(old):
        return
    memo: dict[int, Any] = {}
    new = copy.deepcopy(old, memo)
    swap: dict[int, Any] = {}
    for key, copied in memo.items():
        if _is_hf_config(copied) or type(copied).__name__ == "GenerationConfig":
            swap[key] = copied
    gen = getattr(model, "generation_config", None)
    if gen is not None and id(gen) not in swap and hasattr(gen, "to_dict"):
        swap[id(gen)] = copy.deepcopy(gen)
    for module in model.modules():
        for k, v in list(vars(module).items()):
            if id(v) in swap:
                module.__dict__[k] = swap[id(v)]
    if model.config is not new:  # a config kept somewhere deepcopy does not reach (a property)
        model.config = new


def _validates(cfg: Any) -> bool:
    """Whether a config passes its class's own checks (the ones save_pretrained and from_pretrained run)."""
    check = getattr(cfg, "validate", None)
    if check is None:
        return True
    try:
        check()
    except Exception:  # noqa: BLE001  strict dataclass validation raises its own error types
        return False
    return True


def _trial_config(cfg: Any, fields: dict[str, Any]) -> Any:
    trial = copy.deepcopy(cfg)
    for k in _PRUNEKIT_KEYS:
        if k in trial.__dict__:
            delattr(trial, k)
    for k, v in fields.items():
        setattr(trial, k, v)
    return trial


def _build_on_meta(model: nn.Module, cfg: Any, *, one_layer: bool) -> nn.Module | None:
    """``type(model)(cfg)`` on the meta device (optionally with a single layer); None if the class refuses."""
    if one_layer:
        cfg = copy.deepcopy(cfg)
        if getattr(cfg, "num_hidden_layers", None):
            cfg.num_hidden_layers = 1
        types = getattr(cfg, "layer_types", None)
        if isinstance(types, list) and types:
            cfg.layer_types = types[:1]
    try:
        with torch.device("meta"):
            return type(model)(cfg)
    except Exception:  # noqa: BLE001  a config the family refuses to build
        return None


def head_config_fields(
    model: nn.Module, heads: int, kv_heads: int, head_dim: int, base: Any = None
) -> dict[str, Any] | None:
    """The config fields with which ``model``'s family builds attention of ``heads`` query heads and
    ``kv_heads`` key/value heads of size ``head_dim``; None when its config cannot say that.

    Families differ: LLaMA / Mistral / Qwen3 read an explicit ``head_dim`` (LLaMA still needs
    ``hidden_size % num_attention_heads == 0``), Qwen2 reads ``head_dim`` when the config carries one, and
    BERT / GPT-2 always derive it as ``hidden_size // num_attention_heads``. Rather than a table, the config
    is asked: a copy with the new fields must pass its class's validation and build (one layer, on the meta
    device) attention of exactly those sizes. ``base``: the config to start from (default ``model.config``).
    """
    cfg = model.config if base is None else base
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        return None
    fields: dict[str, Any] = {"num_attention_heads": heads}
    if hasattr(cfg, "num_key_value_heads"):
        fields["num_key_value_heads"] = kv_heads
    elif kv_heads != heads:
        return None
    tries = [fields | {"head_dim": head_dim}] if hasattr(cfg, "head_dim") else [fields, fields | {"head_dim": head_dim}]
    for trial_fields in tries:
        trial = _trial_config(cfg, trial_fields)
        if not _validates(trial):
            continue
        ref = _build_on_meta(model, trial, one_layer=True) or _build_on_meta(model, trial, one_layer=False)
        if ref is None:
            continue
        try:
            blocks = find_attention(ref)
        except UnsupportedModuleError:
            continue
        if blocks and all((b.num_heads, b.num_kv_heads, b.head_dim) == (heads, kv_heads, head_dim) for b in blocks):
            return trial_fields
    return None


def expressible_group_counts(model: nn.Module, block: AttentionBlock) -> list[int]:
    """The numbers of key/value groups (each with all its query heads) that ``block`` may keep so that the
    model's config can still describe it, when every attention module keeps that many; ``[block.groups]``
    (no removal) always qualifies. Models without a Hugging Face config can keep any number."""
    if not _is_hf_config(getattr(model, "config", None)):
        return list(range(1, block.groups + 1))
    out = [
        g
        for g in range(1, block.groups)
        if head_config_fields(model, g * block.q_per_kv, g, block.head_dim) is not None
    ]
    return out + [block.groups]


def fit_head_counts(
    model: nn.Module, blocks: list[AttentionBlock], scores: list[np.ndarray], remove: list[np.ndarray]
) -> tuple[list[np.ndarray], list[str]]:
    """Move a uniform head plan to the nearest group count the config can express.

    Ties go to the count that removes less, except that a tie with keeping every group goes to the count
    that removes some: asking for a sparsity the config cannot state gives the nearest one it can, not a
    no-op (8 heads at 0.25 on a hidden size of 64 give 4 heads, since 6 do not divide 64). The moved sparsity
    is said in the report's notes, with ``exact_heads=True`` as the way to keep the requested count.

    When the config can express no smaller count at all (BERT, GPT-2: the head size is derived from the
    hidden size), or when layers lose different numbers, the plan is kept as it is: such a model saves
    with its shapes recorded and reloads through :func:`from_pretrained_pruned`. Returns the plan and notes.
    """
    shapes = {(b.groups, b.q_per_kv, b.head_dim, b.style) for b in blocks}
    counts = {len(r) for r in remove}
    if not blocks or len(shapes) != 1 or len(counts) != 1 or not _is_hf_config(getattr(model, "config", None)):
        return remove, []
    b0 = blocks[0]
    want = b0.groups - counts.pop()
    if want == b0.groups:
        return remove, []
    allowed = expressible_group_counts(model, b0)
    if want in allowed:
        return remove, []
    cls = type(model.config).__name__
    heads = want * b0.q_per_kv
    if allowed == [b0.groups]:
        return remove, [
            (
                f"{cls} cannot state {heads} head{'' if heads == 1 else 's'} of size {b0.head_dim}; the new sizes are "
                "recorded in config.prunekit_structure: reload with prunekit.surgery.from_pretrained_pruned"
            )
        ]
    keep = min(allowed, key=lambda g: (abs(g - want), g == b0.groups, -g))
    new_remove = [
        np.sort(np.argsort(s, kind="stable")[: b.groups - keep]).astype(np.int64) for b, s in zip(blocks, scores)
    ]
    options = ", ".join(f"{1 - g / b0.groups:g}" for g in allowed)
    asked = 1 - want / b0.groups
    note = (
        f"{cls} cannot state {heads} heads of size {b0.head_dim} (hidden size "
        f"{getattr(model.config, 'hidden_size', '?')}): the head sparsity the allocation gave, {asked:g} "
        f"({heads} of {b0.num_heads} heads kept), became {1 - keep / b0.groups:g}, "
        f"keeping {keep * b0.q_per_kv} heads ({keep} of {b0.groups} "
        f"key/value groups) per layer so that stock from_pretrained reloads the model; sparsities it can "
        f"state: {options}; option exact_heads=True keeps {heads} heads (reload with "
        "prunekit.surgery.from_pretrained_pruned)"
    )
    return new_remove, [note]


def exact_head_notes(model: nn.Module, blocks: list[AttentionBlock], remove: list[np.ndarray]) -> list[str]:
    """For a head plan kept as the allocation gave it (``exact_heads=True``): a note when the Hugging Face
    config cannot state the result, so that the user knows the model reloads with
    :func:`from_pretrained_pruned` only; no note when it can (or nothing is removed, or there is no config)."""
    if not _is_hf_config(getattr(model, "config", None)) or not any(len(r) for r in remove):
        return []
    shapes = {(b.groups - len(r), b.q_per_kv, b.head_dim) for b, r in zip(blocks, remove)}
    if len(shapes) == 1:
        groups, per, dim = shapes.pop()
        if head_config_fields(model, groups * per, groups, dim) is not None:
            return []
        what = f"{groups * per} heads of size {dim}"
    else:
        what = "different head counts in different layers"
    return [
        (
            f"{type(model.config).__name__} cannot state {what} (exact_heads=True): the new sizes are recorded "
            "in config.prunekit_structure; reload with prunekit.surgery.from_pretrained_pruned (stock "
            "from_pretrained builds the old sizes)"
        )
    ]


def sync_hf_config(model: nn.Module) -> dict[str, Any]:
    """Write the new sizes into ``model.config`` (hidden size, MLP width, heads, key/value heads, layers).

    The model first gets its own copy of the config (:func:`own_config_`). A field is written only when the
    config then still passes its class's validation (so ``save_pretrained`` and ``from_pretrained`` accept
    it) and, for heads, builds attention of exactly the pruned sizes. What the config cannot state (a head
    size a family derives from the hidden size, sizes that differ between layers) is recorded in
    ``config.prunekit_structure``, which :func:`from_pretrained_pruned` replays. Returns the fields that changed.
    """
    own_config_(model)
    cfg: Any = model.config  # a transformers config (no stubs)
    changed: dict[str, Any] = {}
    unexpressible: list[str] = []
    per_layer: dict[str, list[int]] = {}

    def put(fields: dict[str, Any], what: str) -> bool:
        fields = {k: v for k, v in fields.items() if getattr(cfg, k, None) != v}
        if not fields:
            return True
        if not _validates(_trial_config(cfg, fields)):
            unexpressible.append(what)
            return False
        for k, v in fields.items():
            setattr(cfg, k, v)
        changed.update(fields)
        return True

    try:
        blocks = find_attention(model)
    except UnsupportedModuleError:
        blocks = []
    stack = _layers(model)
    if stack is not None:
        _, layers = stack
        if getattr(cfg, "num_hidden_layers", None) not in (None, len(layers)):
            put({"num_hidden_layers": len(layers)}, f"{len(layers)} layers")
        inputs = mlp_inputs(model)
        widths = [w for w in (_mlp_width(layer, inputs) for layer in layers) if w is not None]
        if widths:
            if len(set(widths)) == 1:
                field_name = next((f for f in ("n_inner", "ffn_hidden_size") if hasattr(cfg, f)), "intermediate_size")
                if getattr(cfg, field_name, None) != widths[0] and not (
                    field_name == "n_inner" and getattr(cfg, field_name) is None and widths[0] == 4 * cfg.hidden_size
                ):
                    put({field_name: widths[0]}, f"{field_name} {widths[0]}")
            else:
                per_layer["intermediate_size"] = widths
    emb = input_embedding(model)
    emb_w = cast(torch.Tensor, emb.weight) if emb is not None else None  # input_embedding checked: a 2-D tensor
    old_hidden = getattr(cfg, "hidden_size", None)
    hidden_changed = emb_w is not None and old_hidden is not None and emb_w.shape[1] != old_hidden
    if hidden_changed and emb_w is not None:
        put({"hidden_size": int(emb_w.shape[1])}, f"hidden_size {int(emb_w.shape[1])}")
    if blocks:
        heads = [b.num_heads for b in blocks]
        kvs = [b.num_kv_heads for b in blocks]
        dims = {b.head_dim for b in blocks}
        if len(set(heads)) == 1 and len(set(kvs)) == 1 and len(dims) == 1:
            stated = (getattr(cfg, "num_attention_heads", None), getattr(cfg, "num_key_value_heads", kvs[0]))
            if stated != (heads[0], kvs[0]) or hidden_changed:
                fields = head_config_fields(model, heads[0], kvs[0], blocks[0].head_dim)
                if fields is None:
                    unexpressible.append(f"{heads[0]} heads ({kvs[0]} key/value heads) of size {blocks[0].head_dim}")
                else:
                    put(fields, f"{heads[0]} heads of size {blocks[0].head_dim}")
        else:
            per_layer.update({"num_attention_heads": heads, "num_key_value_heads": kvs})
    st = structure_state(model)
    st["config"].update(changed)
    if unexpressible:
        note = [f"{type(cfg).__name__} cannot state: {', '.join(unexpressible)}"]
        st["config"]["prunekit_unexpressible"] = note
        cfg.prunekit_unexpressible = note
    if per_layer:
        st["config"]["prunekit_per_layer"] = per_layer
        cfg.prunekit_per_layer = per_layer
    record_hf_structure(model)
    return changed


def renumber_layers(model: nn.Module) -> None:
    """After blocks were removed: ``layer_idx`` attributes (used by key/value caches) count 0, 1, ... again
    and per-layer config lists (``layer_types``) follow."""
    stack = _layers(model)
    if stack is None:
        return
    _, layers = stack
    for i, layer in enumerate(layers):
        for m in layer.modules():
            attn: Any = m  # a transformers module (no stubs): layer_idx is a plain int attribute
            if hasattr(attn, "layer_idx") and isinstance(attn.layer_idx, int):
                attn.layer_idx = i


def record_head_attrs(model: nn.Module, blk: AttentionBlock, before: dict) -> None:
    """Record in the model's structure state the size attributes of ``blk``'s module that changed since
    ``before`` (a :func:`~prunekit.surgery.remove.size_attrs` taken before its heads were removed)."""
    record_attrs(model, blk.name, before, size_attrs(blk.module))


# ------------------------------------------------------------------------------------- save and reload

HF_FORMAT = "prunekit-hf-structure/1"
HF_CONFIG_KEY = "prunekit_structure"


def hf_structure_diff(model: nn.Module) -> dict[str, Any] | None:
    """What a model freshly built from ``model.config`` would get wrong: the tensor shapes and module size
    attributes (head size, per-layer widths) that the config cannot express. None when it builds exactly.

    The reference model is built on the meta device (no memory, no initialisation cost).
    """
    import copy

    cfg = copy.deepcopy(model.config)
    if hasattr(cfg, HF_CONFIG_KEY):
        delattr(cfg, HF_CONFIG_KEY)
    try:
        with torch.device("meta"):
            ref = type(model)(cfg)
    except Exception as e:  # noqa: BLE001  a config the class refuses (e.g. hidden size not divisible by heads)
        return {"format": HF_FORMAT, "error": f"{type(e).__name__}: {e}"}
    ref_tensors = dict(ref.named_parameters(remove_duplicate=False)) | dict(ref.named_buffers(remove_duplicate=False))
    shapes: dict[str, list[int]] = {}
    missing: list[str] = []
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(
        model.named_buffers(remove_duplicate=False)
    ):
        r = ref_tensors.get(name)
        if r is None:
            missing.append(name)
        elif tuple(r.shape) != tuple(t.shape):
            shapes[name] = list(t.shape)
    ref_mods = dict(ref.named_modules())
    attrs: dict[str, dict[str, Any]] = {}
    for mname, mod in model.named_modules():
        rm = ref_mods.get(mname)
        if rm is None:
            continue
        mine, theirs = _plain_attrs(mod), _plain_attrs(rm)
        diff = {k: (list(v) if isinstance(v, tuple) else v) for k, v in mine.items() if theirs.get(k, v) != v}
        if diff:
            attrs[mname] = diff
    if not shapes and not attrs and not missing:
        return None
    out: dict[str, Any] = {"format": HF_FORMAT, "shapes": shapes, "attrs": attrs}
    if missing:
        out["error"] = f"the config builds a model without {missing[0]} (and {len(missing) - 1} more)"
    return out


def _plain_attrs(module: nn.Module) -> dict[str, Any]:
    """Size attributes and derived numbers (a head size's ``scaling``) of a module."""
    out = size_attrs(module)
    for k, v in vars(module).items():
        if not k.startswith("_") and isinstance(v, float):
            out[k] = v
    return out


def record_hf_structure(model: nn.Module) -> None:
    """Store :func:`hf_structure_diff` in ``model.config`` (removed when the config says it all), so that
    ``save_pretrained`` writes it into config.json for :func:`from_pretrained_pruned`."""
    diff = hf_structure_diff(model)
    if diff is None:
        if hasattr(model.config, HF_CONFIG_KEY):
            delattr(model.config, HF_CONFIG_KEY)
    else:
        setattr(model.config, HF_CONFIG_KEY, diff)


def from_pretrained_pruned(model_class: Any, path: str, *, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a structurally pruned Hugging Face model written by ``save_pretrained``.

    ``model_class``: the model class (``GPT2LMHeadModel``) or an Auto class (``AutoModelForCausalLM``).
    The model is built from the saved config, reshaped as its ``prunekit_structure`` entry records (head
    sizes and per-layer widths that the config cannot express), and the safetensors weights are loaded
    strictly (no pickle is read). Models whose config expresses every shape also load with the stock
    ``from_pretrained``; this loader accepts both.
    """
    from pathlib import Path

    from transformers import AutoConfig

    from prunekit.errors import CheckpointError

    directory = Path(path)
    config = AutoConfig.from_pretrained(str(directory))
    record = getattr(config, HF_CONFIG_KEY, None)
    if record is not None and (not isinstance(record, dict) or record.get("format") != HF_FORMAT):
        raise CheckpointError(f"{directory}: config.{HF_CONFIG_KEY} is not a prunekit record (format {HF_FORMAT!r})")
    if record and record.get("error"):
        raise CheckpointError(f"{directory}: the pruned model cannot be rebuilt from its config: {record['error']}")
    model = model_class.from_config(config) if hasattr(model_class, "from_config") else model_class(config)
    if record:
        apply_hf_structure(model, record)
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
    state = _checkpoint_names_to_model(model, _read_safetensors(directory), set(tensors), directory)
    unexpected = sorted(set(state) - set(tensors))
    if unexpected:
        raise CheckpointError(f"{directory}: weights {unexpected[:5]} do not belong to {type(model).__name__}")
    loaded_ids = {id(tensors[k]) for k in state}
    persistent = set(model.state_dict().keys())
    missing = [k for k in persistent if k not in state and id(tensors.get(k)) not in loaded_ids]
    if missing:
        raise CheckpointError(f"{directory}: the saved weights lack {missing[:5]}")
    with torch.no_grad():
        for k, v in state.items():
            t = tensors[k]
            if tuple(t.shape) != tuple(v.shape):
                raise CheckpointError(
                    f"{directory}: {k} has shape {tuple(v.shape)} in the file, {tuple(t.shape)} in the rebuilt model"
                )
            t.copy_(v)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _checkpoint_names_to_model(
    model: nn.Module, state: dict[str, torch.Tensor], names: set[str], directory: Any
) -> dict[str, torch.Tensor]:
    """The saved tensors under the model's own names. transformers >= 5 saves some parameters under their
    legacy checkpoint names (GPT-NeoX's ``lm_head.weight`` as ``embed_out.weight``) and renames them when it
    loads; the same renamings (``transformers.conversion_mapping``) are applied here, to names the model does
    not have only. Weight merges and splits are not (a key they would produce stays unknown and is refused)."""
    if all(k in names for k in state):
        return state
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightRenaming

    from prunekit.errors import CheckpointError

    renamings = [t for t in get_model_conversion_mapping(cast(Any, model)) if isinstance(t, WeightRenaming)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        if key not in names:
            for t in renamings:
                new, hit = t.rename_source_key(key)
                if hit is not None and new in names:
                    name = new
                    break
        if name in out:
            raise CheckpointError(f"{directory}: the weights {key!r} and another saved tensor both name {name!r}")
        out[name] = value
    return out


def _read_safetensors(directory: Any) -> dict[str, torch.Tensor]:
    import json

    from safetensors.torch import load_file

    from prunekit.errors import CheckpointError

    single = directory / "model.safetensors"
    if single.is_file():
        return load_file(str(single))
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(load_file(str(directory / f)))
        return out
    raise CheckpointError(f"{directory} holds no safetensors weights (model.safetensors); save with safe_serialization")


def apply_hf_structure(model: nn.Module, record: dict[str, Any]) -> None:
    """Reshape a model freshly built from its config as its ``config.prunekit_structure`` ``record`` says (per
    tensor shapes and size attributes the config cannot state), in place. New tensors are zero-filled on the
    device of the ones they replace (``meta`` stays ``meta``). Raises
    :class:`~prunekit.errors.CheckpointError` when the record names a tensor or module the model lacks."""
    from prunekit.errors import CheckpointError
    from prunekit.surgery.record import reshape_slot, set_size_attrs
    from prunekit.surgery.remove import tensor_slots

    slots = tensor_slots(model)
    alias = {}
    for key, sl in slots.items():
        for s in sl:
            alias[f"{s.module_name}.{s.attr}" if s.module_name else s.attr] = key
    for name, shape in record.get("shapes", {}).items():
        slot_key = alias.get(name)
        if slot_key is None:
            raise CheckpointError(f"the structure record names {name!r}, which the rebuilt model does not have")
        reshape_slot(slots, slot_key, shape)
    set_size_attrs(model, record.get("attrs", {}))
