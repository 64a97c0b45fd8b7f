"""SparseGPT's column sweep (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
Pruned in One-Shot", Algorithm 1) for one [rows, in] matrix, or several fed the same inputs stacked by rows.

Columns are eliminated left to right with the upper Cholesky factor ``U`` of the damped inverse Hessian:
dropping ``w_q`` adds ``err = w_q / U_qq`` times ``-U_{q, q:}`` to the rest of its row. Updates inside a
column block of ``blocksize`` are applied at once per column; the block's errors reach the later columns in
one product when the block is done. :class:`~prunekit.apply.solvers.SparseGPTSolver` owns the statistics and
the factorisation; this module only sweeps.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.criteria import formulas as criteria
from prunekit.granularity.patterns import NM, Granularity, Unstructured

__all__ = ["block_mask", "sweep_rows"]


def block_mask(W1: Tensor, d: Tensor, pattern: Granularity, segments: list[tuple[int, int, float]]) -> Tensor:
    """Keep-mask of a column block ``W1`` [..., rows, b] before its sweep: unstructured, the lowest OBS
    saliencies of each segment's rows at its sparsity; N:M, all True (groups are chosen during the sweep)."""
    keep1 = torch.ones_like(W1, dtype=torch.bool)
    if isinstance(pattern, NM):
        return keep1
    scores = criteria.sparsegpt(W1, d)
    for r0, r1, sp in segments:
        if sp > 0:
            keep1[..., r0:r1, :] = Unstructured().mask(scores[..., r0:r1, :], sp)
    return keep1


def sweep_rows(
    W: Tensor, U: Tensor, blocksize: int, pattern: Granularity, segments: list[tuple[int, int, float]]
) -> Tensor:
    """SparseGPT's column sweep of one matrix ``W`` [rows, in] (in place) with the upper Cholesky factor ``U``
    of the damped inverse Hessian; returns the keep-mask. The block is worked on transposed ([b, rows]), so
    that each column's update is one rank-1 update of contiguous rows."""
    keep = torch.ones_like(W, dtype=torch.bool)
    cols = W.shape[1]
    nm = pattern if isinstance(pattern, NM) else None
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        U1 = U[i1:i2, i1:i2]
        d = torch.diagonal(U1)
        T = W[:, i1:i2].t().contiguous()  # [b, rows]: column i of the block is the row T[i]
        keep1 = block_mask(W[:, i1:i2], d, pattern, segments).t().contiguous()
        scale = (~keep1).to(T.dtype).div_(d.unsqueeze(1))  # 1 / [H^-1]_ii where the weight goes, else 0
        Err1 = torch.empty_like(T)
        for i in range(i2 - i1):
            if nm is not None and i % nm.m == 0:  # the group's saliencies w^2 / d^2 now, [m, rows]
                group = slice(i, i + nm.m)
                scores = T[group].pow(2).div_(d[group].pow(2).unsqueeze(1))
                # drop the m - n lowest of each row's group, ties lower index first (NM.mask's rule, inlined:
                # this runs once per group of every row block, where its checks cost more than the sort)
                drop = torch.argsort(scores, dim=0, stable=True)[: nm.m - nm.n]
                g = torch.ones_like(scores, dtype=torch.bool).scatter_(0, drop, False)
                keep1[group] = g
                scale[group] = g.logical_not().to(T.dtype).div_(d[group].unsqueeze(1))
            torch.mul(T[i], scale[i], out=Err1[i])
            T[i:].addr_(U1[i, i:], Err1[i], alpha=-1.0)
        W[:, i1:i2] = T.t()
        keep[:, i1:i2] = keep1.t()
        if i2 < cols:
            W[:, i2:].sub_(Err1.t() @ U[i1:i2, i2:])
    W.mul_(keep)
    return keep
