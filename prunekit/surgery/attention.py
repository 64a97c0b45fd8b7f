"""Attention modules of transformers, found by their projections: where their heads live.

Attention blocks are recognised by their projections, not by class, through the attention layouts of the
family table (:mod:`prunekit.calibration.families`, shared with the layer-wise runner and the structured
language-model methods; the model's own family first): ``q_proj/k_proj/v_proj/o_proj`` (LLaMA, Qwen2,
Mistral, ...), ``q_proj/k_proj/v_proj/out_proj`` (OPT), ``c_attn/c_proj`` (GPT-2) and ``query/key/value``
with a sibling ``output.dense`` (BERT), ``qkv/proj`` (timm's vision transformers); ``nn.MultiheadAttention``
by its class. A head unit is one key/value group with all the query heads that share it, so grouped-query
attention stays valid (the ratio of query to key/value heads is unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from prunekit.calibration.families import AttentionLayout, layouts_for
from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.surgery.remove import Removal

__all__ = ["AttentionBlock", "find_attention", "has_attention", "overlaps_ignored"]


@dataclass
class AttentionBlock:
    """Where the heads of one attention module live. Slices are in output rows of q/k/v and input
    columns of o (for GPT-2's Conv1D the weight is transposed: columns of c_attn, rows of c_proj).
    ``style``: "llama" | "gpt2" | "bert" | "packed" (timm's one ``qkv`` Linear) | "mha"
    (``nn.MultiheadAttention``)."""

    name: str
    module: nn.Module
    style: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_module: nn.Module
    out_name: str
    layout: AttentionLayout | None = None  # the family table's layout that found it (None: nn.MultiheadAttention)

    @property
    def groups(self) -> int:
        """The number of head units: key/value groups (each with the query heads that share it)."""
        return self.num_kv_heads

    @property
    def q_per_kv(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    def unit_removal(self, units: list[int]) -> Removal:
        """Tensor-key -> dim -> indices for removing key/value groups ``units`` (with their query heads)."""
        d, g = self.head_dim, self.q_per_kv
        q_idx = np.concatenate([np.arange(u * g * d, (u + 1) * g * d) for u in units]) if units else np.zeros(0, int)
        kv_idx = np.concatenate([np.arange(u * d, (u + 1) * d) for u in units]) if units else np.zeros(0, int)
        n = self.name
        out: Removal = {}
        if self.style == "llama":
            lay = self.layout or AttentionLayout("qkvo", "q_proj", "k_proj", "v_proj", "o_proj")
            out[f"{n}.{lay.q}.weight"] = {0: q_idx}
            out[f"{n}.{lay.k}.weight"] = {0: kv_idx}
            out[f"{n}.{lay.v}.weight"] = {0: kv_idx}
            for p in (lay.q, lay.k, lay.v):
                if getattr(self.module, p).bias is not None:
                    out[f"{n}.{p}.bias"] = {0: q_idx if p == lay.q else kv_idx}
            out[f"{n}.{lay.o}.weight"] = {1: q_idx}
        elif self.style == "mha":  # packed in_proj rows [q | k | v], out_proj columns
            inner = self.num_heads * d
            rows = np.concatenate([q_idx, q_idx + inner, q_idx + 2 * inner])
            out[f"{n}.in_proj_weight"] = {0: rows}
            if self.module.in_proj_bias is not None:
                out[f"{n}.in_proj_bias"] = {0: rows}
            out[f"{n}.out_proj.weight"] = {1: q_idx}
        elif self.style == "packed":  # one qkv Linear: rows [q | k | v], proj columns (timm)
            lay = self.layout or AttentionLayout("packed", "qkv", "qkv", "qkv", "proj")
            inner = self.num_heads * d
            rows = np.concatenate([q_idx, q_idx + inner, q_idx + 2 * inner])
            out[f"{n}.{lay.q}.weight"] = {0: rows}
            if getattr(self.module, lay.q).bias is not None:
                out[f"{n}.{lay.q}.bias"] = {0: rows}
            out[f"{n}.{lay.o}.weight"] = {1: q_idx}
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
        """(tensor, dim, indices) slices that make up one unit, for scoring. Raises
        :class:`~prunekit.errors.ConfigError` for a block without ``root`` (one not found by
        :func:`find_attention`), which has no tensors to read."""
        if self.root is None:
            raise ConfigError(
                f"attention block '{self.name}' has no root model to read its tensors from; find it with "
                f"find_attention(model)"
            )
        rem = self.unit_removal([u])
        out = []
        for key, dims in rem.items():
            mod_name, _, attr = key.rpartition(".")
            t = cast(torch.Tensor, self.root.get_submodule(mod_name).__getattr__(attr))
            for dim, idx in dims.items():
                out.append((t, dim, idx))
        return out

    root: nn.Module | None = None

    def update_attrs(self, new_heads: int, new_kv: int) -> None:
        """Write the new head counts into the module's own size attributes (after its heads were removed)."""
        m: Any = self.module  # a transformers class (no stubs): its size attributes are plain ints
        if self.style == "llama":
            for attr, val in (("num_heads", new_heads), ("num_key_value_heads", new_kv)):
                if hasattr(m, attr):
                    setattr(m, attr, val)
        elif self.style == "packed":
            m.num_heads = new_heads
            if isinstance(getattr(m, "attn_dim", None), int):
                m.attn_dim = new_heads * self.head_dim
        elif self.style == "mha":
            pass  # the module's handler already gave it the class that runs fewer heads during the surgery
        elif self.style == "bert":
            m.num_attention_heads = new_heads
            m.all_head_size = new_heads * self.head_dim
        else:
            m.num_heads = new_heads
            m.split_size = new_heads * self.head_dim


def overlaps_ignored(name: str, ignored: Iterable[str]) -> str | None:
    """The ``ignore=`` module that ``name`` (a block) lies inside, equals or contains; None when none does.
    The model itself (name "") contains everything."""
    for ig in ignored:
        if ig == name or not ig or not name or name.startswith(ig + ".") or ig.startswith(name + "."):
            return ig
    return None


def find_attention(model: nn.Module, ignored: Iterable[str] = ()) -> list[AttentionBlock]:
    """Every attention module of a transformer, by its projections (the family table's layouts: q/k/v/o as
    in LLaMA or OPT, GPT-2's c_attn, BERT's query/key/value, timm's qkv/proj) or its class
    (``nn.MultiheadAttention``). Raises :class:`~prunekit.errors.UnsupportedModuleError` for a module of a known
    layout whose heads cannot be removed (its head size unknown, or something else sized by its heads),
    unless ``ignored`` (module names ``ignore=`` matched) covers it: such a module is left out."""
    cfg = getattr(model, "config", None)
    out = []
    mods = dict(model.named_modules())
    layouts = layouts_for(model)
    ignored = list(ignored)
    for name, m in mods.items():
        try:
            block = _block_of(name, m, layouts, cfg, mods)
        except UnsupportedModuleError:
            if overlaps_ignored(name, ignored) is not None:
                continue  # kept whole by the user: its heads are not touched, whatever its layout
            raise
        if block is not None:
            block.root = model
            out.append(block)
    return out


def _block_of(
    name: str, m: nn.Module, layouts: tuple[AttentionLayout, ...], cfg: Any, mods: dict[str, nn.Module]
) -> AttentionBlock | None:
    """The :class:`AttentionBlock` of module ``name`` when it is an attention module, else None."""
    if isinstance(m, nn.MultiheadAttention):
        from prunekit.surgery.mha import check_head_prunable, inner_width

        check_head_prunable(name, m)
        heads = inner_width(m) // m.head_dim
        return AttentionBlock(name, m, "mha", heads, heads, int(m.head_dim), m.out_proj, f"{name}.out_proj")
    ch = dict(m.named_children())
    layout = next((lay for lay in layouts if lay.matches(ch, m)), None)
    return None if layout is None else _attention_block(name, m, ch, layout, cfg, mods)


def _attention_block(
    name: str, m: nn.Module, ch: dict[str, nn.Module], layout: AttentionLayout, cfg: Any, mods: dict[str, nn.Module]
) -> AttentionBlock:
    """The :class:`AttentionBlock` of module ``name`` found by ``layout``; its head size from the module's
    attribute (else ``config.head_dim``), its head counts from the projections' rows."""
    hd = int(getattr(m, layout.head_dim_attr, 0) or (getattr(cfg, "head_dim", 0) if layout.style == "qkvo" else 0) or 0)
    if not hd:
        raise UnsupportedModuleError(
            f"module '{name}': cannot tell the head size (no {layout.head_dim_attr} attribute)"
        )
    if layout.style == "qkvo":
        h = _rows(f"{name}.{layout.q}", ch[layout.q]) // hd
        kv = _rows(f"{name}.{layout.k}", ch[layout.k]) // hd
        return AttentionBlock(name, m, "llama", h, kv, hd, ch[layout.o], f"{name}.{layout.o}", layout)
    if layout.style == "packed":
        return _packed_block(name, m, ch, layout, hd)
    if layout.style == "gpt2":
        h = cast(torch.Tensor, ch[layout.o].weight).shape[0] // hd
        return AttentionBlock(name, m, "gpt2", h, h, hd, ch[layout.o], f"{name}.{layout.o}", layout)
    parent_name = name.rpartition(".")[0]
    out_name = f"{parent_name}.{layout.o}" if parent_name else layout.o
    outm = mods.get(out_name)
    if outm is None:
        raise UnsupportedModuleError(f"module '{name}': no output projection found next to it ({out_name})")
    h = _rows(f"{name}.{layout.q}", ch[layout.q]) // hd
    return AttentionBlock(name, m, "bert", h, h, hd, outm, out_name, layout)


#: children of a packed (timm) attention module that head removal leaves as they are: dropouts, and norms
#: over one head's features (q_norm / k_norm); ``norm`` (over all heads) only when it is an identity
_PACKED_SPECTATORS = (nn.Dropout, nn.Identity)


def _packed_block(
    name: str, m: nn.Module, ch: dict[str, nn.Module], layout: AttentionLayout, hd: int
) -> AttentionBlock:
    """The :class:`AttentionBlock` of a packed ``qkv`` / ``proj`` attention module (timm's ``Attention``);
    raises :class:`~prunekit.errors.UnsupportedModuleError` when something besides the two projections
    depends on the head count (a parameter of the module itself, such as a relative-position table per head,
    a norm over all heads, a gate), since removing heads would leave it the wrong size."""
    heads = int(cast(Any, m).num_heads)
    qkv, proj = cast(nn.Linear, ch[layout.q]), cast(nn.Linear, ch[layout.o])
    why = None
    own = [n for n, _ in m.named_parameters(recurse=False)] + [n for n, _ in m.named_buffers(recurse=False)]
    if own:
        why = f"it holds {', '.join(own[:3])} itself, which head removal would not resize"
    elif qkv.out_features != 3 * heads * hd or proj.in_features != heads * hd:
        why = (
            f"its {layout.q} has {qkv.out_features} outputs and {layout.o} {proj.in_features} inputs, not "
            f"3 x and 1 x {heads} heads x {hd}"
        )
    elif getattr(m, "gate", None) is not None:
        why = "it has a gate sized by its heads"
    else:
        for child_name, child in ch.items():
            if child_name in (layout.q, layout.o) or isinstance(child, _PACKED_SPECTATORS):
                continue
            shape = getattr(child, "normalized_shape", None)
            if child_name in ("q_norm", "k_norm") and tuple(shape or ()) == (hd,):
                continue  # normalises each head on its own
            if any(True for _ in child.parameters()):
                why = f"its child '{child_name}' ({type(child).__name__}) may depend on the head count"
                break
    if why:
        raise UnsupportedModuleError(
            f"attention module '{name}' ({type(m).__name__}) cannot lose heads: {why}. Keep it with "
            f"ignore=['{name}'], or remove channels instead (l2-channel)"
        )
    return AttentionBlock(name, m, "packed", heads, heads, hd, proj, f"{name}.{layout.o}", layout)


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


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` has an attention module of a known layout, one that cannot lose heads included."""
    try:
        return bool(find_attention(model))
    except UnsupportedModuleError:
        return True
