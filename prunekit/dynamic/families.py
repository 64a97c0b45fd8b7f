"""Transformer blocks that token reduction knows how to run, recognised from their structure.

A family is a small adapter: ``matches(block)`` (from the attributes a block has, not its class name)
and ``run(block, x, bias, need_cls, reduce)``, a re-implementation of the block's forward pass with
size-aware attention and a ``reduce(x, metric, cls_attn)`` step between attention and the MLP (where
ToMe and EViT act). Supported: torchvision ``VisionTransformer`` blocks, timm ``Block`` (ViT and DeiT, with
their class, distillation and register tokens), Hugging Face ViT layers and BERT-style encoder layers
(BERT, RoBERTa, MiniLM and other ``BertLayer`` look-alikes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast

import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.dynamic.tokens import attend

__all__ = ["FAMILIES", "Family", "Reduce", "describe_supported", "find_blocks"]

Reduce = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class Family:
    """One kind of transformer block token reduction can run: how to recognise it (``matches``) and its
    forward pass with a reduce step (``run``: block, tokens ``(B, N, D)``, additive key bias or None, whether
    the class token's attention is needed, ``reduce``), and what its inputs hold."""

    name: str
    matches: Callable[[nn.Module], bool]
    run: Callable[[nn.Module, Tensor, Tensor | None, bool, Reduce], Tensor]
    padding_mask: bool  # the block receives an attention (padding) mask as its second argument
    has_class_token: bool  # position 0 is a class token (protected by default)
    default_metric: str = "keys"  # ToMe's similarity: the attention keys ("keys") or the merged states ("hidden")
    # the model's own count of leading tokens (class, distillation, register) and whether position 0 is a class
    # token, read from the module that holds the blocks; None: ``(1, True)`` or ``(0, False)`` from has_class_token
    prefix: Callable[[nn.Module], tuple[int, bool]] | None = None

    def prefix_of(self, owner: nn.Module) -> tuple[int, bool]:
        """``(leading tokens to protect, whether position 0 is a class token)`` for the blocks held by ``owner``."""
        if self.prefix is not None:
            return self.prefix(owner)
        return (1, True) if self.has_class_token else (0, False)


def _has(m: nn.Module, *paths: str) -> bool:
    for path in paths:
        obj: object = m
        for part in path.split("."):
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
    return True


# torchvision.models.vision_transformer.EncoderBlock ------------------------------------------------------
def _tv_matches(m: nn.Module) -> bool:
    if not _has(m, "ln_1", "self_attention", "ln_2", "mlp", "dropout"):
        return False
    mha = m.self_attention
    return isinstance(mha, nn.MultiheadAttention) and mha.batch_first and mha._qkv_same_embed_dim


class _TVBlock(Protocol):
    """What :func:`_tv_run` reads of a torchvision ``EncoderBlock`` (:func:`_tv_matches` checked it)."""

    ln_1: nn.Module
    self_attention: nn.MultiheadAttention
    dropout: nn.Module
    ln_2: nn.Module
    mlp: nn.Module


def _tv_run(block: nn.Module, x: Tensor, bias: Tensor | None, need_cls: bool, reduce: Reduce) -> Tensor:
    blk = cast(_TVBlock, block)
    mha = blk.self_attention
    y = blk.ln_1(x)
    q, k, v = F.linear(y, mha.in_proj_weight, mha.in_proj_bias).chunk(3, dim=-1)
    heads = mha.num_heads
    p = mha.dropout if mha.training else 0.0
    a, metric, cls = attend(q, k, v, heads, (mha.embed_dim // heads) ** -0.5, bias, need_cls=need_cls, dropout_p=p)
    x = x + blk.dropout(mha.out_proj(a))
    x = reduce(x, metric, cls)
    return x + blk.mlp(blk.ln_2(x))


# transformers ViTLayer (q_proj/k_proj/v_proj/o_proj attention) -------------------------------------------
def _hf_vit_matches(m: nn.Module) -> bool:
    return _has(
        m,
        "layernorm_before",
        "layernorm_after",
        "mlp",
        "dropout",
        "attention.q_proj",
        "attention.k_proj",
        "attention.v_proj",
        "attention.o_proj",
        "attention.num_attention_heads",
        "attention.scaling",
    )


class _HFViTAttention(Protocol):
    """The attention of a Hugging Face ``ViTLayer`` as :func:`_hf_vit_run` reads it."""

    training: bool
    q_proj: nn.Module
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module
    num_attention_heads: int
    scaling: float
    attention_dropout: float


class _HFViTLayer(Protocol):
    """What :func:`_hf_vit_run` reads of a Hugging Face ``ViTLayer`` (:func:`_hf_vit_matches` checked it)."""

    layernorm_before: nn.Module
    attention: _HFViTAttention
    dropout: nn.Module
    layernorm_after: nn.Module
    mlp: nn.Module


def _hf_vit_run(block: nn.Module, x: Tensor, bias: Tensor | None, need_cls: bool, reduce: Reduce) -> Tensor:
    layer = cast(_HFViTLayer, block)
    att = layer.attention
    y = layer.layernorm_before(x)
    p = att.attention_dropout if att.training else 0.0
    a, metric, cls = attend(
        att.q_proj(y),
        att.k_proj(y),
        att.v_proj(y),
        att.num_attention_heads,
        att.scaling,
        bias,
        need_cls=need_cls,
        dropout_p=p,
    )
    x = x + layer.dropout(att.o_proj(a))
    x = reduce(x, metric, cls)
    return x + layer.dropout(layer.mlp(layer.layernorm_after(x)))


# transformers BertLayer and look-alikes (post-norm) --------------------------------------------------------
def _bert_matches(m: nn.Module) -> bool:
    if not _has(
        m,
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.self.scaling",
        "attention.self.num_attention_heads",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate",
        "output.dense",
        "output.LayerNorm",
    ):
        return False
    return not getattr(m, "is_decoder", False) and not getattr(m, "add_cross_attention", False)


class _BertSelfAttention(Protocol):
    """``BertLayer.attention.self`` as :func:`_bert_run` reads it."""

    training: bool
    query: nn.Module
    key: nn.Module
    value: nn.Module
    dropout: nn.Dropout
    num_attention_heads: int
    scaling: float


class _BertAttention(Protocol):
    """``BertLayer.attention``: the self-attention and its output block (dense, dropout, residual, LayerNorm)."""

    self: _BertSelfAttention
    output: nn.Module


class _BertLayer(Protocol):
    """What :func:`_bert_run` reads of a ``BertLayer`` look-alike (:func:`_bert_matches` checked it)."""

    attention: _BertAttention
    intermediate: nn.Module
    output: nn.Module


def _bert_run(block: nn.Module, x: Tensor, bias: Tensor | None, need_cls: bool, reduce: Reduce) -> Tensor:
    layer = cast(_BertLayer, block)
    sa = layer.attention.self
    p = sa.dropout.p if sa.training else 0.0
    a, metric, cls = attend(
        sa.query(x), sa.key(x), sa.value(x), sa.num_attention_heads, sa.scaling, bias, need_cls=need_cls, dropout_p=p
    )
    h = layer.attention.output(a, x)
    h = reduce(h, metric, cls)
    return layer.output(layer.intermediate(h), h)


# timm.models.vision_transformer.Block (ViT, DeiT, DeiT distilled, ViTs with register tokens) ---------------
def _timm_matches(m: nn.Module) -> bool:
    if not _has(
        m,
        "norm1",
        "ls1",
        "drop_path1",
        "norm2",
        "mlp",
        "ls2",
        "drop_path2",
        "attn.qkv",
        "attn.num_heads",
        "attn.head_dim",
        "attn.scale",
        "attn.q_norm",
        "attn.k_norm",
        "attn.attn_drop",
        "attn.norm",
        "attn.proj",
        "attn.proj_drop",
    ):
        return False
    att = cast(nn.Module, m.attn)
    # a gated or rotary attention computes something this re-implementation does not
    plain = getattr(att, "gate", None) is None and not any(hasattr(att, a) for a in ("rope", "rotary_emb"))
    return plain and isinstance(att.qkv, nn.Linear)


class _TimmAttention(Protocol):
    """A timm ``Attention`` as :func:`_timm_run` reads it."""

    training: bool
    qkv: nn.Module
    num_heads: int
    head_dim: int
    scale: float
    q_norm: nn.Module
    k_norm: nn.Module
    attn_drop: nn.Dropout
    norm: nn.Module
    proj: nn.Module
    proj_drop: nn.Module


class _TimmBlock(Protocol):
    """What :func:`_timm_run` reads of a timm ``Block`` (pre-norm, layer scale, stochastic depth)."""

    norm1: nn.Module
    attn: _TimmAttention
    ls1: nn.Module
    drop_path1: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    ls2: nn.Module
    drop_path2: nn.Module


def _timm_run(block: nn.Module, x: Tensor, bias: Tensor | None, need_cls: bool, reduce: Reduce) -> Tensor:
    blk = cast(_TimmBlock, block)
    att = blk.attn
    y = blk.norm1(x)
    b, n, _ = y.shape
    q, k, v = att.qkv(y).view(b, n, 3, att.num_heads, att.head_dim).unbind(2)  # each (B, N, H, d)
    q, k = att.q_norm(q), att.k_norm(k)  # per-head normalisation (identity unless qk_norm)
    p = att.attn_drop.p if att.training else 0.0
    a, metric, cls = attend(
        q.reshape(b, n, -1),
        k.reshape(b, n, -1),
        v.reshape(b, n, -1),
        att.num_heads,
        att.scale,
        bias,
        need_cls=need_cls,
        dropout_p=p,
    )
    x = x + blk.drop_path1(blk.ls1(att.proj_drop(att.proj(att.norm(a)))))
    x = reduce(x, metric, cls)
    return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))


def _timm_prefix(owner: nn.Module) -> tuple[int, bool]:
    n = getattr(owner, "num_prefix_tokens", None)
    if not isinstance(n, int):  # blocks outside a timm VisionTransformer: assume a class token, as timm's default
        return 1, True
    return n, bool(getattr(owner, "has_class_token", n > 0))


FAMILIES: tuple[Family, ...] = (
    Family("timm-vit", _timm_matches, _timm_run, padding_mask=False, has_class_token=True, prefix=_timm_prefix),
    Family("torchvision-vit", _tv_matches, _tv_run, padding_mask=False, has_class_token=True),
    Family("hf-vit", _hf_vit_matches, _hf_vit_run, padding_mask=True, has_class_token=True),
    # post-norm text encoders: the hidden states being merged match better than the layer's input keys
    # (all-MiniLM-L6-v2, 96 Austen sentences, ratio 0.1: mean cosine to dense 0.986 vs 0.953)
    Family("bert-encoder", _bert_matches, _bert_run, padding_mask=True, has_class_token=True, default_metric="hidden"),
)


def find_blocks(model: nn.Module) -> tuple[Family, list[nn.Module], str] | None:
    """The first container (``ModuleList`` / ``Sequential``) of the model whose children are all blocks of
    one supported family: ``(family, blocks, container name)``; None when there is none."""
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.ModuleList, nn.Sequential)) or len(mod) == 0:
            continue
        children = list(mod)
        for fam in FAMILIES:
            if all(fam.matches(c) for c in children):
                return fam, children, name
    return None


def describe_supported() -> str:
    """One sentence naming the supported block families, for error messages."""
    return (
        "torchvision VisionTransformer (vit_b_16, ...), timm VisionTransformer blocks (vit_*, deit_*, deit "
        "distilled, register tokens), Hugging Face ViTModel / ViTForImageClassification, "
        "and BERT-style encoders (BertModel, RobertaModel, all-MiniLM-L6-v2, ...; not decoders or "
        "cross-attention)"
    )
