"""Hashes for provenance: record exactly which data (tensor or text) a result was computed on."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["sha256_of_tensor", "text_hash"]


def sha256_of_tensor(t: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, so a result can record exactly which data it used."""
    x = torch.as_tensor(t).detach().cpu().contiguous()
    digest = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|".encode())
    flat = x.reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def text_hash(s: str) -> str:
    """SHA-256 of a text's UTF-8 bytes (records which calibration or evaluation text was used)."""
    return hashlib.sha256(s.encode("utf-8")).hexdigest()
