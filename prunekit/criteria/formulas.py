"""The formulas of the layer-wise criteria as pure functions from tensors to scores (magnitude, Wanda,
SparseGPT's saliency, FLAP's fluctuation, ShortGPT's block influence, LLM-Pruner's element-wise Taylor
importance), for the layer-wise solvers and the structured language-model methods.

Scores are shaped like what they score; higher means more important (kept).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["block_influence", "fluctuation", "loss_change", "magnitude", "sparsegpt", "wanda"]


def magnitude(weight: Tensor) -> Tensor:
    """``|W_ij|``, shaped like ``weight``: the classic magnitude criterion (Han et al. 2015, "Learning both
    Weights and Connections for Efficient Neural Networks")."""
    return weight.abs()


def wanda(weight: Tensor, sq_norms: Tensor) -> Tensor:
    """Wanda (Sun et al. 2023): ``S_ij = |W_ij| * ||X_j||_2``, with ``sq_norms[j] = sum_t x_tj^2`` [in]
    (or [out, in]: the norms each row reads, for a grouped convolution whose rows see different inputs)."""
    norms = sq_norms.clamp_min(0).sqrt()
    return weight.abs() * (norms if norms.dim() == 2 else norms.unsqueeze(0))


def sparsegpt(weight: Tensor, hinv_diag: Tensor) -> Tensor:
    """SparseGPT / OBS saliency (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be
    Accurately Pruned in One-Shot"): ``w_ij^2 / [H^-1]_jj^2`` (Cholesky-factor diagonal).

    ``weight`` [out, in] with ``hinv_diag`` [in], or a batch of problems [groups, out, in] with [groups, in];
    the scores are shaped like ``weight``."""
    return weight.pow(2) / hinv_diag.pow(2).unsqueeze(-2)


def fluctuation(mean: Tensor, sq_mean: Tensor, weight: Tensor) -> Tensor:
    """FLAP (An et al. 2024): channel ``j`` of an output projection's input scores ``Var(x_j) * ||W_:,j||^2``.

    The variance of a channel over calibration tokens says how much information is lost when it is replaced
    by its mean (which bias compensation adds back); ``mean`` / ``sq_mean`` are E[x_j] and E[x_j^2], both
    [in], ``weight`` is [out, in]; the result is [in] ("Fluctuation-based Adaptive Structured Pruning for
    Large Language Models").
    """
    var = (sq_mean - mean.pow(2)).clamp_min(0)
    return var * weight.float().pow(2).sum(dim=0)


def block_influence(inputs: Tensor, outputs: Tensor) -> Tensor:
    """ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than You
    Expect"): ``BI = 1 - cos(x_in, x_out)`` per token (mean it over tokens per layer).

    ``inputs``, ``outputs``: a block's hidden states [..., hidden]; the result is [...] (the last dim gone).
    """
    return 1.0 - torch.nn.functional.cosine_similarity(inputs.float(), outputs.float(), dim=-1)


def loss_change(weight: Tensor, grad: Tensor, fisher: Tensor | None = None) -> Tensor:
    """LLM-Pruner's element-wise importance (Ma, Fang & Wang 2023, "LLM-Pruner: On the Structural Pruning of
    Large Language Models", Eq. 5): the change of the loss ``L`` when one weight is set to zero, by Taylor
    expansion around the trained weights.

    * first order (``fisher`` None): ``I = |w * dL/dw|``;
    * with the second-order term: ``I = |w * dL/dw - 1/2 * w^2 * F|``, where ``F`` approximates the Hessian's
      diagonal by the Fisher information, ``F = E_n[(dL_n/dw)^2]`` over calibration sequences ``n``.

    ``weight``, ``grad`` and ``fisher`` share one shape; the result has it too (float32 or wider).
    """
    w = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight
    first = w * grad.to(w.dtype)
    if fisher is None:
        return first.abs()
    return (first - 0.5 * w.pow(2) * fisher.to(w.dtype)).abs()
