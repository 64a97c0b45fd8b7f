"""Token reduction as pure tensor operations: bipartite soft matching (ToMe), attentive token pruning
(EViT), size-aware attention and unmerging.

Every function here takes the hidden states ``x`` of shape ``(B, N, C)`` and a :class:`TokenState`
describing them, and returns new ones; nothing here knows about a model family (see
:mod:`prunekit.dynamic.families`).

Invariant kept by every operation: in each row the real tokens come first and the padding tokens last
(``state.real[b]`` is a prefix of ``True``). A row therefore sees exactly the tokens it would see alone,
whatever else is in the batch, and a padding token is never merged into a real one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TokenState:
    """What the current tokens stand for.

    ``size``: ``(B, N)`` float, how many input tokens each current token represents (1 for padding).
    ``real``: ``(B, N)`` bool, False for padding (a prefix of True per row).
    ``src``: ``(B, N0)`` long, for each of the ``N0`` input tokens the index of the current token that
    carries it (used to unmerge the output back to ``N0`` tokens).
    ``merged``: whether any token was merged or pruned yet (sizes are all one until then).
    """

    size: Tensor
    real: Tensor
    src: Tensor
    merged: bool = False

    @property
    def tokens(self) -> int:
        """The current number of token positions ``N`` (padding included)."""
        return int(self.real.shape[1])


def initial_state(x: Tensor, real: Tensor | None) -> tuple[Tensor, TokenState]:
    """The state of unreduced tokens ``x`` ``(B, N, C)``; ``real`` ``(B, N)`` bool or None (no padding).

    Rows whose real tokens are not a prefix (left padding) are reordered, stably, so that they are; ``src``
    records the reordering so that :func:`unmerge` gives the tokens back in their input order.
    """
    b, n, _ = x.shape
    pos = torch.arange(n, device=x.device).expand(b, n)
    if real is None:
        real = torch.ones(b, n, dtype=torch.bool, device=x.device)
        return x, TokenState(torch.ones(b, n, dtype=x.dtype, device=x.device), real, pos.clone())
    real = real.to(torch.bool)
    if bool((real[:, 1:] & ~real[:, :-1]).any()):  # a real token after a padding token: reorder
        order = torch.sort((~real).to(torch.int8), dim=1, stable=True).indices
        x = x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))
        real = real.gather(1, order)
        src = torch.empty_like(order).scatter_(1, order, pos)
    else:
        src = pos.clone()
    return x, TokenState(torch.ones(b, n, dtype=x.dtype, device=x.device), real, src)


def key_bias(state: TokenState, proportional: bool) -> Tensor | None:
    """Additive attention bias over keys, ``(B, N)``: ``log(size)`` (proportional attention, Bolya et al.
    2023, eq. 1) and ``-inf`` for padding; None when it would be all zeros."""
    pads = not bool(state.real.all())
    if not pads and not (proportional and state.merged):
        return None
    bias = state.size.log() if proportional and state.merged else torch.zeros_like(state.size)
    return bias.masked_fill(~state.real, float("-inf"))


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    heads: int,
    scale: float,
    bias: Tensor | None,
    *,
    need_cls: bool,
    dropout_p: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Multi-head self-attention of projected ``q``, ``k``, ``v`` ``(B, N, H*d)`` with a key bias ``(B, N)``.

    Returns the attention output ``(B, N, H*d)`` (before the output projection), the keys averaged over
    heads ``(B, N, d)`` (ToMe's similarity metric) and, with ``need_cls``, the class token's attention over
    the tokens averaged over heads ``(B, N)`` (EViT's token score), else None.
    """
    b, n, _ = q.shape
    q, k, v = (t.view(b, n, heads, -1).transpose(1, 2) for t in (q, k, v))
    mask = None if bias is None else bias[:, None, None, :].to(q.dtype)
    cls = None
    if need_cls:
        scores = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores + mask
        probs = scores.softmax(-1)
        cls = probs[:, :, 0, :].mean(1)
        if dropout_p:
            probs = F.dropout(probs, dropout_p)
        out = probs @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale)
    return out.transpose(1, 2).reshape(b, n, -1), k.mean(1), cls


def _regather(
    x: Tensor, state: TokenState, keep_index: Tensor, new_pos: Tensor, real: Tensor, size: Tensor
) -> tuple[Tensor, TokenState]:
    c = x.shape[-1]
    x = x.gather(1, keep_index[..., None].expand(-1, -1, c))
    src = new_pos.gather(1, state.src)
    return x, TokenState(size.gather(1, keep_index), real.gather(1, keep_index), src, True)


def bipartite_merge(
    x: Tensor, metric: Tensor, state: TokenState, r: int | None, *, protect_first: int, ratio: float | None = None
) -> tuple[Tensor, TokenState]:
    """ToMe's bipartite soft matching (Bolya et al. 2023, "Token Merging: Your ViT But Faster", sec. 3).

    Tokens alternate into sets A (even positions) and B (odd); each A token is linked to its most similar B
    token by cosine similarity of ``metric`` ``(B, N, d)``; the ``r`` most similar links are merged by a
    size-weighted average, ``x_b <- (s_b x_b + sum s_a x_a) / (s_b + sum s_a)``, and sizes add. A row merges
    ``min(r, (n_real - protected) // 2)`` tokens, as it would alone; rows of a padded batch drop padding to
    stay the same length. Padding is never a source or a destination of a merge. ``protect_first``: how many
    leading tokens (class, distillation and register tokens) are never merged, neither away nor into (an
    int >= 0; True means 1). With ``ratio`` instead of ``r``, a row merges
    ``floor(ratio * (n_real - protected))`` tokens (same cap), so short and long texts lose the same share.
    """
    b, n, c = x.shape
    p = int(protect_first)
    n_real = state.real.sum(1)
    if ratio is not None:
        want = torch.floor(ratio * (n_real - p).to(torch.float64) + 1e-9).long()
    else:
        want = torch.full_like(n_real, int(r or 0))
    r_row = torch.clamp(torch.minimum(want, torch.div(n_real - p, 2, rounding_mode="floor")), min=0)
    big_r = int(r_row.max())
    if big_r == 0:
        return x, state
    m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    a, bm = m[:, ::2], m[:, 1::2]
    real_a, real_b = state.real[:, ::2], state.real[:, 1::2]
    scores = a @ bm.transpose(-1, -2)  # (B, Na, Nb)
    scores = scores.masked_fill(~real_b[:, None, :], float("-inf"))
    if p > 1:  # protected B tokens (positions 1, 3, ... below p) receive no merge
        scores[:, :, : p // 2] = float("-inf")
    node_max, node_idx = scores.max(-1)
    node_max = node_max.masked_fill(~real_a, float("-inf"))
    if p:  # protected A tokens (positions 0, 2, ... below p) are not merged away
        node_max[:, : (p + 1) // 2] = float("-inf")
    order = torch.sort(node_max, dim=1, descending=True, stable=True).indices
    na = order.shape[1]
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(na, device=x.device).expand(b, na))
    merged_a = rank < r_row[:, None]  # (B, Na)

    w = merged_a.to(x.dtype)
    sa, sb = state.size[:, ::2], state.size[:, 1::2]
    xb_sum = (x[:, 1::2] * sb[..., None]).scatter_add(
        1, node_idx[..., None].expand(-1, -1, c), x[:, ::2] * (sa * w)[..., None]
    )
    sb_new = sb.scatter_add(1, node_idx, sa * w)
    x_full = x.clone()
    x_full[:, 1::2] = xb_sum / sb_new[..., None]
    size_full = state.size.clone()
    size_full[:, 1::2] = sb_new

    keep = torch.ones(b, n, dtype=torch.bool, device=x.device)
    keep[:, ::2] = ~merged_a
    pos = torch.arange(n, device=x.device)
    drop_pads = (big_r - r_row)[:, None]  # the last `drop_pads` tokens of a row are padding (prefix invariant)
    keep &= pos[None, :] < (n - drop_pads)
    new_n = n - big_r
    keep_index = keep.nonzero()[:, 1].view(b, new_n)
    new_pos = keep.long().cumsum(1) - 1
    dst_pos = new_pos.gather(1, 2 * node_idx + 1)
    new_pos[:, ::2] = torch.where(merged_a, dst_pos, new_pos[:, ::2])
    new_pos = torch.where(keep | (pos[None, :] < n_real[:, None]), new_pos, torch.full_like(new_pos, new_n - 1))
    return _regather(x_full, state, keep_index, new_pos, state.real, size_full)


def attentive_prune(
    x: Tensor, cls_attn: Tensor, state: TokenState, keep_rate: float, *, protect: int = 1
) -> tuple[Tensor, TokenState]:
    """EViT's token reorganisation (Liang et al. 2022, "Not All Patches are What You Need", sec. 3).

    Keeps the ``protect`` leading tokens (the class token at position 0, and distillation or register
    tokens after it; ``protect >= 1``) and the ``ceil(keep_rate * (n_real - protect))`` other tokens with
    the highest class-token attention ``cls_attn`` ``(B, N)``; the others are fused into one token, their
    average weighted by that attention (sizes add), placed after the kept ones, so that every input token
    is still carried by some token (unmerging and mean pooling stay defined).
    """
    b, n, c = x.shape
    p = int(protect)
    n_real = state.real.sum(1)
    pos = torch.arange(n, device=x.device)
    cand = state.real & (pos[None, :] >= p)
    k_row = torch.ceil(keep_rate * (n_real - p).to(torch.float64) - 1e-9).long().clamp(min=0)
    drop_row = (n_real - p).clamp(min=0) - k_row
    if int(drop_row.max()) == 0:
        return x, state
    score = cls_attn.masked_fill(~cand, float("-inf"))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, pos.expand(b, n))
    kept = (cand & (rank < k_row[:, None])) | (state.real & (pos[None, :] < p))
    dropped = cand & ~kept
    big_k = int(k_row.max())
    extra = 1
    new_n = p + big_k + extra
    has_fused = dropped.any(1)
    wgt = (cls_attn * dropped).to(x.dtype)
    fused = (x * wgt[..., None]).sum(1) / wgt.sum(1).clamp_min(torch.finfo(x.dtype).tiny)[:, None]
    fused_size = (state.size * dropped).sum(1)
    x_ext = torch.cat([x, fused[:, None, :]], 1)
    size_ext = torch.cat([state.size, torch.where(has_fused, fused_size, torch.ones_like(fused_size))[:, None]], 1)
    real_ext = torch.cat([state.real, has_fused[:, None]], 1)
    # sort keys: kept real tokens by position, the fused token right after them, then enough padding
    pads_needed = (big_k - k_row)[:, None]
    is_pad = ~state.real
    pad_rank = is_pad.long().cumsum(1) - 1
    big = 4 * (n + 1)
    key = torch.full((b, n + extra), big, dtype=torch.long, device=x.device) + torch.arange(n + extra, device=x.device)
    key[:, :n] = torch.where(kept, 2 * pos[None, :], key[:, :n])
    key[:, :n] = torch.where(is_pad & (pad_rank < pads_needed), 2 * pos[None, :] + 2 * n, key[:, :n])
    key[:, n] = 2 * n_real - 1  # the fused token: after the last real position, before any padding
    perm = torch.sort(key, dim=1, stable=True).indices
    keep_index = perm[:, :new_n]
    inv = torch.empty_like(perm).scatter_(1, perm, torch.arange(n + extra, device=x.device).expand(b, -1))
    new_pos = inv[:, :n].clamp(max=new_n - 1)
    new_pos = torch.where(dropped, inv[:, n : n + 1].expand(-1, n), new_pos)
    return _regather(x_ext, state, keep_index, new_pos, real_ext, size_ext)


def unmerge(x: Tensor, state: TokenState) -> Tensor:
    """Tokens back at the input length: ``(B, N, C) -> (B, N0, C)``, each input token receiving the
    current token that carries it. A mean over real input tokens of the result is the size-weighted mean
    of the current tokens (what a sentence encoder's mean pooling needs)."""
    return x.gather(1, state.src[..., None].expand(-1, -1, x.shape[-1]))


def real_from_mask(mask: Tensor | None, n: int) -> Tensor | None:
    """Which keys are real tokens, ``(B, N)`` bool, from a padding mask as a model receives it: 2-D
    ``(B, N)`` (1 = token), or 4-D ``(B, 1, Q, N)`` boolean (True = attend) or additive float (0 = attend).
    None when there is no mask or it masks nothing."""
    if mask is None:
        return None
    if mask.dim() == 2:
        real = mask.to(torch.bool) if mask.dtype == torch.bool else mask != 0
    elif mask.dim() == 4:
        m = mask[:, 0]
        if m.dtype == torch.bool:
            real = m.any(-2)
        else:
            real = m.amax(-2) > torch.finfo(m.dtype).min / 2
    else:
        return None
    if real.shape[-1] != n:
        return None
    return None if bool(real.all()) else real


__all__ = [
    "TokenState",
    "attend",
    "attentive_prune",
    "bipartite_merge",
    "initial_state",
    "key_bias",
    "real_from_mask",
    "unmerge",
]
