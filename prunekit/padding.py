"""Padding in token batches: which positions hold real tokens.

A tokenizer pads a batch of texts of unequal length and returns ``attention_mask`` (1: a token, 0: padding).
Padding is not data: no calibration statistic (input norms, Hessians, fluctuations, outlier ratios, block
influence) and no loss may count it. These helpers are shared by the layer-wise calibration runner and the
gradient criteria, so that both read the mask the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from prunekit.errors import DataError

__all__ = ["IGNORE_INDEX", "mask_padding_labels", "real_tokens", "token_mask"]

#: the label value that Hugging Face losses (and ``F.cross_entropy``) ignore
IGNORE_INDEX = -100


def token_mask(input_ids: Tensor, attention_mask: Any) -> Tensor | None:
    """``attention_mask`` as a boolean [batch, seq_len] tensor (True: a real token); None when there is no
    padding. A mask of another shape, or with values other than 0 and 1, is a
    :class:`~prunekit.errors.DataError`; so is a mask that is not a tensor."""
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise DataError(f"attention_mask must be a tensor, got {type(attention_mask).__name__}")
    mask = attention_mask.unsqueeze(0) if attention_mask.dim() == 1 else attention_mask
    if tuple(mask.shape) != tuple(input_ids.shape):
        raise DataError(
            f"attention_mask has shape {tuple(mask.shape)} but input_ids {tuple(input_ids.shape)}; pass the "
            "[batch, seq_len] mask the tokenizer returned with these ids"
        )
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise DataError("attention_mask must hold 0 (padding) and 1 (token) only; pass the tokenizer's mask")
        mask = mask != 0
    return None if bool(mask.all()) else mask


def real_tokens(x: Tensor, mask: Tensor | None, where: str = "a layer") -> Tensor:
    """The rows of ``x`` [batch, seq_len, ...] at real token positions, as [tokens, ...]; ``x`` unchanged
    when ``mask`` is None.

    ``mask`` is :func:`token_mask`'s [batch, seq_len] boolean tensor; ``where`` names the layer in the error.
    Raises :class:`~prunekit.errors.DataError` when ``x``'s first two dimensions are not the mask's shape.
    """
    if mask is None:
        return x
    if tuple(x.shape[:2]) != tuple(mask.shape):
        raise DataError(
            f"the inputs of {where} have shape {tuple(x.shape)}, so prunekit cannot tell which of them are padding "
            f"(attention_mask {tuple(mask.shape)}); calibrate with unpadded batches (one sequence per batch, or "
            "sequences of equal length)"
        )
    return x[mask.to(x.device)]


def mask_padding_labels(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a model-input dict whose ``labels`` are ``-100`` wherever ``attention_mask`` is 0, so that
    a Hugging Face loss (and its gradients) ignores the padding. Batches without both keys are returned as
    a plain copy."""
    out = dict(batch)
    labels, attention = out.get("labels"), out.get("attention_mask")
    if isinstance(labels, Tensor) and isinstance(attention, Tensor) and tuple(labels.shape) == tuple(attention.shape):
        out["labels"] = labels.masked_fill(attention.to(labels.device) == 0, IGNORE_INDEX)
    return out
