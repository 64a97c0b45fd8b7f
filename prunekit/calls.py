"""Calling a model on example inputs given in any of the usual forms (a bottom module: imports only torch)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["call_model"]


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on example inputs given as one tensor, a tuple/list of positional inputs or a dict of
    keyword inputs (a tokenizer's ``BatchEncoding`` included)."""
    if isinstance(inputs, dict) or (hasattr(inputs, "keys") and hasattr(inputs, "__getitem__")):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)
