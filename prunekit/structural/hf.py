"""Transformers: attention heads (GQA aware), and keeping Hugging Face configs in step with new sizes.

Attention blocks are recognised by their projections, not by class: ``q_proj/k_proj/v_proj/o_proj``
(LLaMA, Qwen2, Mistral, ...), ``c_attn/c_proj`` (GPT-2) and ``query/key/value`` with a sibling
``output.dense`` (BERT). A head unit is one key/value group with all the query heads that share it, so
grouped-query attention stays valid (the ratio of query to key/value heads is unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.errors import UnsupportedModuleError
from prunekit.structural.surgery import Removal, record_attrs, structure_state, _size_attrs


@dataclass
class AttentionBlock:
    """Where the heads of one attention module live. Slices are in output rows of q/k/v and input
    columns of o (for GPT-2's Conv1D the weight is transposed: columns of c_attn, rows of c_proj)."""

    name: str
    module: nn.Module
    style: str  # "llama" | "gpt2" | "bert" | "mha" (nn.MultiheadAttention)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_module: nn.Module
    out_name: str

    @property
    def groups(self) -> int:
        return self.num_kv_heads

    @property
    def q_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    def unit_removal(self, units: list[int]) -> Removal:
        """Tensor-key -> dim -> indices for removing key/value groups ``units`` (with their query heads)."""
        d, g = self.head_dim, self.q_per_kv
        q_idx = np.concatenate([np.arange(u * g * d, (u + 1) * g * d) for u in units]) if units else np.zeros(0, int)
        kv_idx = np.concatenate([np.arange(u * d, (u + 1) * d) for u in units]) if units else np.zeros(0, int)
        n = self.name
        out: Removal = {}
        if self.style == "llama":
            out[f"{n}.q_proj.weight"] = {0: q_idx}
            out[f"{n}.k_proj.weight"] = {0: kv_idx}
            out[f"{n}.v_proj.weight"] = {0: kv_idx}
            for p in ("q_proj", "k_proj", "v_proj"):
                if getattr(self.module, p).bias is not None:
                    out[f"{n}.{p}.bias"] = {0: q_idx if p == "q_proj" else kv_idx}
            out[f"{n}.o_proj.weight"] = {1: q_idx}
        elif self.style == "mha":  # packed in_proj rows [q | k | v], out_proj columns
            inner = self.num_heads * d
            rows = np.concatenate([q_idx, q_idx + inner, q_idx + 2 * inner])
            out[f"{n}.in_proj_weight"] = {0: rows}
            if self.module.in_proj_bias is not None:
                out[f"{n}.in_proj_bias"] = {0: rows}
            out[f"{n}.out_proj.weight"] = {1: q_idx}
        elif self.style == "bert":
            for p in ("query", "key", "value"):
                out[f"{n}.{p}.weight"] = {0: q_idx}
                if getattr(self.module, p).bias is not None:
                    out[f"{n}.{p}.bias"] = {0: q_idx}
            out[f"{self.out_name}.weight"] = {1: q_idx}
        else:  # gpt2: c_attn weight (in, 3E), columns [q | k | v]
            e = self.num_heads * d
            cols = np.concatenate([q_idx, q_idx + e, q_idx + 2 * e])
            out[f"{n}.c_attn.weight"] = {1: cols}
            out[f"{n}.c_attn.bias"] = {0: cols}
            out[f"{n}.c_proj.weight"] = {0: q_idx}
        return out

    def unit_tensors(self, u: int) -> list[tuple[torch.Tensor, int, np.ndarray]]:
        """(tensor, dim, indices) slices that make up one unit, for scoring."""
        rem = self.unit_removal([u])
        out = []
        for key, dims in rem.items():
            mod_name, _, attr = key.rpartition(".")
            t = self.root.get_submodule(mod_name).__getattr__(attr) if self.root is not None else None
            for dim, idx in dims.items():
                out.append((t, dim, idx))
        return out

    root: nn.Module | None = None

    def update_attrs(self, new_heads: int, new_kv: int) -> None:
        m = self.module
        if self.style == "llama":
            for attr, val in (("num_heads", new_heads), ("num_key_value_heads", new_kv)):
                if hasattr(m, attr):
                    setattr(m, attr, val)
        elif self.style == "mha":
            pass  # the module's handler already gave it the class that runs fewer heads during the surgery
        elif self.style == "bert":
            m.num_attention_heads = new_heads
            m.all_head_size = new_heads * self.head_dim
        else:
            m.num_heads = new_heads
            m.split_size = new_heads * self.head_dim


def find_attention(model: nn.Module) -> list[AttentionBlock]:
    """Every attention module of a transformer, by its projections (q/k/v/o as in LLaMA, GPT-2's c_attn,
    BERT's query/key/value) or its class (``nn.MultiheadAttention``, packed layout)."""
    cfg = getattr(model, "config", None)
    out = []
    mods = dict(model.named_modules())
    for name, m in mods.items():
        if isinstance(m, nn.MultiheadAttention):
            from prunekit.structural.mha import check_head_prunable, inner_width

            check_head_prunable(name, m)
            out.append(AttentionBlock(name, m, "mha", inner_width(m) // m.head_dim, inner_width(m) // m.head_dim,
                                      int(m.head_dim), m.out_proj, f"{name}.out_proj"))
            continue
        ch = dict(m.named_children())
        if all(k in ch for k in ("q_proj", "k_proj", "v_proj", "o_proj")):
            hd = int(getattr(m, "head_dim", 0) or getattr(cfg, "head_dim", 0) or 0)
            if not hd:
                raise UnsupportedModuleError(f"module '{name}': cannot tell the head size (no head_dim attribute)")
            h = _rows(f"{name}.q_proj", ch["q_proj"]) // hd
            kv = _rows(f"{name}.k_proj", ch["k_proj"]) // hd
            out.append(AttentionBlock(name, m, "llama", h, kv, hd, ch["o_proj"], f"{name}.o_proj"))
        elif "c_attn" in ch and "c_proj" in ch and hasattr(m, "head_dim") and not getattr(m, "is_cross_attention", False):
            hd = int(m.head_dim)
            h = ch["c_proj"].weight.shape[0] // hd
            out.append(AttentionBlock(name, m, "gpt2", h, h, hd, ch["c_proj"], f"{name}.c_proj"))
        elif all(k in ch for k in ("query", "key", "value")) and hasattr(m, "attention_head_size"):
            parent_name = name.rpartition(".")[0]
            outm = mods.get(f"{parent_name}.output.dense")
            if outm is None:
                raise UnsupportedModuleError(f"module '{name}': no output projection found next to it")
            hd = int(m.attention_head_size)
            h = _rows(f"{name}.query", ch["query"]) // hd
            out.append(AttentionBlock(name, m, "bert", h, h, hd, outm, f"{parent_name}.output.dense"))
    for b in out:
        b.root = model
    return out


# ----------------------------------------------------------------------------------------------- configs


def _layers(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """The main stack of transformer blocks: the longest ModuleList of blocks of one class."""
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    return best


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


def _rows(name: str, mod: nn.Module) -> int:
    """Output rows of a projection found by its attribute name; anything without a weight is refused."""
    from prunekit.layout import weight_layout

    layout = weight_layout(mod)
    w = getattr(mod, "weight", None)
    if layout is None or not isinstance(w, torch.Tensor):
        raise UnsupportedModuleError(
            f"module '{name}' ({type(mod).__name__}) is not a linear or convolution layer with a weight, so its "
            f"heads cannot be counted; use a channel method (l2-channel) for this model"
        )
    return int(w.shape[layout.out_axis])


# the first MLP projection of each family; a fused gate/up projection holds two widths
_MLP_IN = ("mlp.gate_proj", "mlp.up_proj", "intermediate.dense", "mlp.fc1", "mlp.c_fc", "mlp.dense_h_to_4h",
           "mlp.fc_in", "ffn.up_proj")
_MLP_FUSED = ("mlp.gate_up_proj",)


def _mlp_width(layer: nn.Module) -> int | None:
    from prunekit.layout import weight_layout

    ch = dict(layer.named_modules())
    for key in _MLP_IN + _MLP_FUSED:
        mod = ch.get(key)
        layout = weight_layout(mod) if mod is not None else None
        if layout is not None and isinstance(getattr(mod, "weight", None), torch.Tensor):
            width = int(mod.weight.shape[layout.out_axis])
            return width // 2 if key in _MLP_FUSED else width
    return None


def sync_hf_config(model: nn.Module) -> dict[str, Any]:
    """Write the new sizes into ``model.config`` (hidden size, MLP width, heads, key/value heads, layers).

    Sizes that differ between layers cannot be expressed by most configs; they are stored in
    ``config.prunekit_structure`` and reported, and ``prunekit.load_model`` restores them.
    Returns the fields that changed.
    """
    cfg = model.config
    changed: dict[str, Any] = {}

    def put(field_name: str, value: Any) -> None:
        if getattr(cfg, field_name, None) != value:
            setattr(cfg, field_name, value)
            changed[field_name] = value

    try:
        blocks = find_attention(model)
    except UnsupportedModuleError:
        blocks = []
    emb = input_embedding(model)
    old_hidden = getattr(cfg, "hidden_size", None)
    heads_changed = bool(blocks) and any(b.num_heads != getattr(cfg, "num_attention_heads", b.num_heads) for b in blocks)
    hidden_changed = emb is not None and old_hidden is not None and emb.weight.shape[1] != old_hidden
    if (heads_changed or hidden_changed) and blocks and blocks[0].style == "llama":
        # the head size must no longer be derived from hidden_size / num_attention_heads
        put("head_dim", blocks[0].head_dim)
    unexpressible = []
    if (heads_changed or hidden_changed) and blocks and blocks[0].style != "llama":
        unexpressible.append("head size (this config derives it from hidden_size / num_attention_heads)")
    if hidden_changed:
        put("hidden_size", int(emb.weight.shape[1]))
    stack = _layers(model)
    if stack is not None:
        _, layers = stack
        if getattr(cfg, "num_hidden_layers", None) not in (None, len(layers)):
            put("num_hidden_layers", len(layers))
        widths = [w for w in (_mlp_width(layer) for layer in layers) if w is not None]
        if widths:
            if len(set(widths)) == 1:
                field_name = next((f for f in ("n_inner", "ffn_hidden_size") if hasattr(cfg, f)), "intermediate_size")
                if getattr(cfg, field_name, None) != widths[0] and not (
                    field_name == "n_inner" and getattr(cfg, field_name) is None and widths[0] == 4 * cfg.hidden_size
                ):
                    put(field_name, widths[0])
            else:
                changed.setdefault("per_layer", {})["intermediate_size"] = widths
    if blocks:
        heads = [b.num_heads for b in blocks]
        kvs = [b.num_kv_heads for b in blocks]
        if len(set(heads)) == 1 and len(set(kvs)) == 1:
            if getattr(cfg, "num_attention_heads", heads[0]) != heads[0]:
                if hasattr(cfg, "head_dim") and getattr(cfg, "head_dim", None) is None:
                    put("head_dim", blocks[0].head_dim)
                put("num_attention_heads", heads[0])
            if hasattr(cfg, "num_key_value_heads") and cfg.num_key_value_heads != kvs[0]:
                put("num_key_value_heads", kvs[0])
        else:
            changed.setdefault("per_layer", {}).update({"num_attention_heads": heads, "num_key_value_heads": kvs})
    per_layer = changed.pop("per_layer", None)
    st = structure_state(model)
    st["config"].update(changed)
    if unexpressible:
        st["config"]["prunekit_unexpressible"] = unexpressible
        cfg.prunekit_unexpressible = unexpressible
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
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = i


def record_head_attrs(model: nn.Module, blk: AttentionBlock, before: dict) -> None:
    record_attrs(model, blk.name, before, _size_attrs(blk.module))


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
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
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
    out = _size_attrs(module)
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
        _apply_hf_structure(model, record)
    state = _read_safetensors(directory)
    tensors = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers(remove_duplicate=False))
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
                raise CheckpointError(f"{directory}: {k} has shape {tuple(v.shape)} in the file, "
                                      f"{tuple(t.shape)} in the rebuilt model")
            t.copy_(v)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


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


def _apply_hf_structure(model: nn.Module, record: dict[str, Any]) -> None:
    from prunekit.errors import CheckpointError
    from prunekit.structural.record import reshape_slot, set_size_attrs
    from prunekit.structural.surgery import tensor_slots

    slots = tensor_slots(model)
    alias = {}
    for key, sl in slots.items():
        for s in sl:
            alias[f"{s.module_name}.{s.attr}" if s.module_name else s.attr] = key
    for name, shape in record.get("shapes", {}).items():
        key = alias.get(name)
        if key is None:
            raise CheckpointError(f"the structure record names {name!r}, which the rebuilt model does not have")
        reshape_slot(slots, key, shape)
    set_size_attrs(model, record.get("attrs", {}))
