"""Scoring functions of post-training LLM pruning: pure functions from tensors to scores.

Scores are shaped like what they score; higher means more important (kept).
"""

from __future__ import annotations

import torch
from torch import Tensor


def magnitude(weight: Tensor) -> Tensor:
    """``|W_ij|``: the classic magnitude criterion."""
    return weight.abs()


def wanda(weight: Tensor, sq_norms: Tensor) -> Tensor:
    """Wanda (Sun et al. 2023): ``S_ij = |W_ij| * ||X_j||_2``, with ``sq_norms[j] = sum_t x_tj^2``."""
    return weight.abs() * sq_norms.clamp_min(0).sqrt().unsqueeze(0)


def sparsegpt(weight: Tensor, hinv_diag: Tensor) -> Tensor:
    """SparseGPT / OBS saliency (Frantar & Alistarh 2023): ``w_ij^2 / [H^-1]_jj^2`` (Cholesky-factor diagonal)."""
    return weight.pow(2) / hinv_diag.pow(2).unsqueeze(0)


def outlier_ratio(scores: list[Tensor], multiple: float = 5.0) -> float:
    """OWL's layer-wise outlier distribution (Yin et al. 2023): share of scores above ``multiple`` x their mean.

    ``scores`` are the Wanda scores of every matrix of one decoder layer, pooled together.
    """
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    if flat.numel() == 0:
        return 0.0
    return float((flat > multiple * flat.mean()).float().mean())


def owl_sparsities(ratios: list[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """OWL (Yin et al. 2023, "Outlier Weighed Layerwise Sparsity"): non-uniform sparsity from outlier ratios.

    Layers with more outliers keep more weights. The ratios ``D_l`` are mapped linearly onto densities in
    ``[0, 2 * lam]``, shifted so the mean density is ``1 - sparsity``: ``S_l = 1 - (d_l - mean(d) + 1 - S)``
    with ``d_l = 2 lam (D_l - min D) / (max D - min D)``. The layer sparsities span ``2 lam`` and their mean
    is ``S`` (so with equal parameter counts per layer the overall sparsity is the requested one).
    """
    if not ratios:
        return []
    t = torch.tensor(ratios, dtype=torch.float64)
    spread = (t.max() - t.min()).item()
    d = torch.zeros_like(t) if spread == 0 else (t - t.min()) * (2 * lam / spread)
    density = d - d.mean() + (1.0 - sparsity)
    return [float(min(max(1.0 - x, 0.0), 1.0)) for x in density]


def fluctuation(mean: Tensor, sq_mean: Tensor, weight: Tensor) -> Tensor:
    """FLAP (An et al. 2024): channel ``j`` of an output projection's input scores ``Var(x_j) * ||W_:,j||^2``.

    The variance of a channel over calibration tokens says how much information is lost when it is replaced
    by its mean (which bias compensation adds back); ``mean`` / ``sq_mean`` are E[x_j] and E[x_j^2].
    """
    var = (sq_mean - mean.pow(2)).clamp_min(0)
    return var * weight.float().pow(2).sum(dim=0)


def block_influence(inputs: Tensor, outputs: Tensor) -> Tensor:
    """ShortGPT (Men et al. 2024): ``BI = 1 - cos(x_in, x_out)`` per token (mean it over tokens per layer)."""
    return 1.0 - torch.nn.functional.cosine_similarity(inputs.float(), outputs.float(), dim=-1)
