"""Structural pruning of ``nn.MultiheadAttention``: heads, and the width of the residual stream around it.

The stock module ties its inner width (heads x head size) to its input width ``embed_dim``: its packed
input projection must be ``(3 * embed_dim, embed_dim)``. Once heads are removed (or the residual stream
around it loses channels) the two differ, so the module's class is switched in place to
:class:`HeadPrunedMultiheadAttention`, a subclass that computes the same attention with any number of heads
of the same size and any input width. It keeps the stock
call signature (``batch_first``, ``key_padding_mask``, ``attn_mask``, ``need_weights``,
``average_attn_weights``, ``is_causal``), so the model code that calls it is unchanged, and it is still an
``nn.MultiheadAttention`` for ``isinstance`` checks. Saved models get the class back on load from their
tensor shapes (:func:`adopt_pruned_heads`); nothing is unpickled.

Only the packed layout (query, key and value of the same width) without ``add_bias_kv`` / ``add_zero_attn``
can lose heads; other configurations are refused by :func:`check_head_prunable`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import UnsupportedModuleError


def head_prunable(module: nn.MultiheadAttention) -> bool:
    """Packed projections, no extra key/value bias, no zero attention: the layout that can be resized."""
    return bool(
        module._qkv_same_embed_dim
        and module.in_proj_weight is not None
        and module.bias_k is None
        and not module.add_zero_attn
    )


def check_head_prunable(name: str, module: nn.MultiheadAttention) -> None:
    """Refuse (before anything changes) the configurations whose heads cannot be removed."""
    if head_prunable(module):
        return
    if not module._qkv_same_embed_dim or module.in_proj_weight is None:
        raise UnsupportedModuleError(
            f"module '{name}' (nn.MultiheadAttention with kdim/vdim != embed_dim): Head() supports the packed "
            "layout only, where query, key and value have the same width"
        )
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedModuleError(
            f"module '{name}' (nn.MultiheadAttention with add_bias_kv or add_zero_attn): Head() does not support "
            "these options"
        )


def inner_width(module: nn.MultiheadAttention) -> int:
    """Heads x head size: the width of the query / key / value projections."""
    return int(module.in_proj_weight.shape[0]) // 3


def adopt_pruned_heads(module: nn.Module) -> None:
    """Give a packed ``nn.MultiheadAttention`` whose inner width no longer equals its input width the class
    that can run it, and make its size attributes agree with its tensors."""
    if not isinstance(module, nn.MultiheadAttention) or module.in_proj_weight is None:
        return
    inner = inner_width(module)
    e = int(module.out_proj.weight.shape[0])
    module.embed_dim = e
    module.kdim = module.vdim = int(module.in_proj_weight.shape[1])
    if inner == e and type(module) is nn.MultiheadAttention:
        module.head_dim = e // module.num_heads
    else:
        module.num_heads = inner // module.head_dim
        if type(module) is nn.MultiheadAttention:
            module.__class__ = HeadPrunedMultiheadAttention
    module.out_proj.in_features = int(module.out_proj.weight.shape[1])
    module.out_proj.out_features = e


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = not allowed) as an additive float mask; float masks pass through."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose inner width ``num_heads * head_dim`` differs from ``embed_dim`` (heads
    removed, or the residual width around it pruned).

    Same parameters as the stock module (packed ``in_proj_weight`` of shape ``(3 * H * d, embed_dim)``,
    ``out_proj`` from ``H * d`` to ``embed_dim``) and the same forward signature and outputs. Attention is
    computed per head as softmax(q k^T / sqrt(d) + mask) v (Vaswani et al. 2017), through
    ``F.scaled_dot_product_attention`` when no weights are asked for.
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """Attention of ``query`` over ``key`` / ``value`` as ``nn.MultiheadAttention.forward`` computes it:
        returns the output (shaped like ``query``, last axis ``embed_dim``) and the attention weights
        (averaged over heads unless ``average_attn_weights=False``; None unless ``need_weights``)."""
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, n, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        inner = h * d
        w = self.in_proj_weight
        b = self.in_proj_bias
        q = F.linear(query, w[:inner], None if b is None else b[:inner])
        k = F.linear(key, w[inner : 2 * inner], None if b is None else b[inner : 2 * inner])
        v = F.linear(value, w[2 * inner :], None if b is None else b[2 * inner :])
        # (L, N, H*d) -> (N, H, L, d)
        q = q.reshape(tgt, n, h, d).permute(1, 2, 0, 3)
        k = k.reshape(src, n, h, d).permute(1, 2, 0, 3)
        v = v.reshape(src, n, h, d).permute(1, 2, 0, 3)
        mask = _additive(attn_mask, q.dtype)
        if mask is not None:
            mask = mask.reshape(n, h, tgt, src) if mask.dim() == 3 else mask.reshape(1, 1, tgt, src)
        pad = _additive(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.reshape(n, 1, 1, src)
            mask = pad if mask is None else mask + pad
        causal = is_causal and mask is None
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d)
            if causal:
                upper = torch.ones(tgt, src, dtype=torch.bool, device=q.device).triu(1)
                scores = scores.masked_fill(upper, float("-inf"))
            if mask is not None:
                scores = scores + mask
            attn = scores.softmax(-1)
            out = F.dropout(attn, p) @ v if p else attn @ v
        else:
            attn = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=causal)
        out = self.out_proj(out.permute(2, 0, 1, 3).reshape(tgt, n, inner))
        if unbatched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if attn is None:
            return out, None
        weights = attn.mean(1) if average_attn_weights else attn
        return out, (weights.squeeze(0) if unbatched else weights)
