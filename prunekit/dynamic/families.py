"""Transformer blocks that token reduction knows how to run, recognised from their structure.

A family is a small adapter: ``matches(block)`` (from the attributes a block has, not its class name)
and ``run(block, x, bias, need_cls, reduce)``, a re-implementation of the block's forward pass with
size-aware attention and a ``reduce(x, metric, cls_attn)`` step between attention and the MLP (where
ToMe and EViT act). Supported: torchvision ``VisionTransformer`` blocks, Hugging Face ViT layers and
BERT-style encoder layers (BERT, RoBERTa, MiniLM and other ``BertLayer`` look-alikes).
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


FAMILIES: tuple[Family, ...] = (
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
        "torchvision VisionTransformer (vit_b_16, ...), Hugging Face ViTModel / ViTForImageClassification, "
        "and BERT-style encoders (BertModel, RobertaModel, all-MiniLM-L6-v2, ...; not decoders or "
        "cross-attention)"
    )
