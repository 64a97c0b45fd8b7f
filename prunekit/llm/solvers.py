"""Per-layer solvers for post-training pruning of language models.

Each solver wraps one prunable matrix (a Linear, or a transformers ``Conv1D`` stored transposed; its axes
come from :mod:`prunekit.layout`, also after a first pruning wrapped the layer in a parametrization). The
calibration runner feeds it that matrix's inputs with :meth:`Solver.add_batch`; :meth:`Solver.prune` then
chooses a keep-mask for a given sparsity and pattern, writes the pruned weight back in place and returns
the mask (True = keep). Scores come from the pure criteria in :mod:`prunekit.llm.criteria`.

Supported patterns: :class:`~prunekit.granularity.Unstructured` and :class:`~prunekit.granularity.NM`
(``n`` kept of every ``m`` consecutive inputs of each output row).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.errors import InvalidSparsityError, ModelError, NonFiniteWeightsError, PatternError
from prunekit.granularity import NM, Granularity, Unstructured
from prunekit.layout import weight_layout
from prunekit.llm import criteria
from prunekit.masks import apply_mask_, assign_weight_, get_mask


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight of ``module`` as the model computes it, as an [out, in] matrix (``Conv1D`` stores
    [in, out]). For a plain weight it is a view and writes go through; use :func:`store_matrix_` to write
    the weight of any layer, parametrized or not."""
    layout = weight_layout(module)
    if layout is None or layout.kind not in ("linear", "hf-conv1d"):
        raise ModelError(
            f"layer-wise solvers prune Linear and transformers Conv1D layers, not {type(module).__name__}; "
            "leave it out of targets="
        )
    if parametrize.is_parametrized(module, "weight"):
        with torch.no_grad():
            return layout.to_canonical(module.weight.detach())
    return layout.to_canonical(module.weight.data)


def store_matrix_(module: nn.Module, matrix: Tensor, keep: Tensor) -> Tensor:
    """Write the pruned [out, in] ``matrix`` (zero where ``keep`` is False) into ``module``'s weight.

    A layer that is already masked keeps its mask, narrowed by ``keep`` (masks only shrink); the weights it
    still keeps take the new values through any parametrization (a mask, ``weight_norm``). Returns the
    keep-mask in force afterwards, as [out, in].
    """
    layout = weight_layout(module)
    assert layout is not None
    if not parametrize.is_parametrized(module, "weight"):
        w = layout.to_canonical(module.weight.data)
        w.copy_((matrix * keep.to(matrix.dtype)).to(w.dtype))
        return keep
    existing = get_mask(module, "weight")
    if existing is not None:
        keep = keep & layout.to_canonical(existing).to(keep.device)
    value = layout.from_canonical(matrix * keep.to(matrix.dtype)).to(module.weight.dtype)
    assign_weight_(module, value.contiguous(), "weight")
    if existing is not None:
        apply_mask_(module, layout.from_canonical(keep).contiguous(), "weight")
    return keep


def check_pattern(pattern: Granularity, name: str, weight: Tensor) -> None:
    """Refuse patterns the layer-wise solvers do not implement, and N:M that does not divide ``in``."""
    if not isinstance(pattern, (Unstructured, NM)):
        raise PatternError(
            f"layer-wise LLM pruning supports unstructured and N:M patterns, not {pattern}; "
            "use pattern=None (unstructured) or e.g. pattern='2:4'"
        )
    pattern.check(name, weight)


def check_sparsity(sparsity: float, pattern: Granularity) -> float:
    """The sparsity to reach: N:M fixes it; otherwise it must lie in [0, 1)."""
    if isinstance(pattern, NM):
        return pattern.fixed_sparsity
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise InvalidSparsityError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask that drops the ``round(sparsity * in)`` lowest scores of every output row (ties: lower index)."""
    k = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        drop = torch.argsort(scores, dim=1, stable=True)[:, :k]
        keep.scatter_(1, drop, False)
    return keep


class Solver:
    """Base class: statistics of one matrix's inputs, then a solve that prunes it in place."""

    name: ClassVar[str] = "solver"

    def __init__(self, module: nn.Module, layer_name: str = ""):
        self.module = module
        self.layer_name = layer_name
        w = weight_matrix(module)
        self.rows, self.columns = w.shape
        self.nsamples = 0

    def add_batch(self, x: Tensor) -> None:
        """Accumulate statistics of inputs ``x`` [..., in] of this matrix."""
        self.nsamples += x.reshape(-1, x.shape[-1]).shape[0]

    def scores(self) -> Tensor:
        """Importance of every weight, shaped like the [out, in] weight (higher = keep)."""
        raise NotImplementedError

    def prune(self, sparsity: float, pattern: Granularity) -> Tensor:
        """Zero the lowest-scoring weights in place; returns the keep-mask (True = kept)."""
        w = weight_matrix(self.module)
        check_pattern(pattern, self.layer_name, w)
        sparsity = check_sparsity(sparsity, pattern)
        scores = self.scores()
        keep = pattern.mask(scores) if isinstance(pattern, NM) else self.unstructured_mask(scores, sparsity)
        return store_matrix_(self.module, w, keep)

    def unstructured_mask(self, scores: Tensor, sparsity: float) -> Tensor:
        return Unstructured().mask(scores, sparsity)

    def free(self) -> None:
        """Drop accumulated statistics (the runner calls this once the layer is solved)."""


class MagnitudeSolver(Solver):
    """Layer-wise magnitude pruning: score ``|W_ij|``, lowest removed over the whole matrix (or per N:M group)."""

    name = "magnitude"

    def scores(self) -> Tensor:
        return criteria.magnitude(weight_matrix(self.module).float())


class WandaSolver(Solver):
    """Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

    Score ``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||`` is the norm of input feature ``j`` over all
    calibration tokens; the lowest scores are removed *per output row* (unstructured) or per N:M group.
    """

    name = "wanda"

    def __init__(self, module: nn.Module, layer_name: str = ""):
        super().__init__(module, layer_name)
        self.sq_norms = torch.zeros(self.columns, dtype=torch.float64, device=module.weight.device)

    def add_batch(self, x: Tensor) -> None:
        x2 = x.reshape(-1, x.shape[-1])
        self.nsamples += x2.shape[0]
        self.sq_norms += x2.double().pow(2).sum(dim=0)

    def scores(self) -> Tensor:
        return criteria.wanda(weight_matrix(self.module).float(), self.sq_norms.float())

    def unstructured_mask(self, scores: Tensor, sparsity: float) -> Tensor:
        return row_mask(scores, sparsity)

    def free(self) -> None:
        self.sq_norms = self.sq_norms.new_empty(0)


class SparseGPTSolver(Solver):
    """SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot").

    With ``H = 2 X X^T / n`` (inputs as columns) the layer-wise problem ``min ||W X - W' X||^2`` is solved
    approximately column by column with optimal-brain-surgeon updates: removing ``w_q`` (score
    ``w_q^2 / [H^-1]_qq^2``) changes the not yet processed weights of its row by
    ``-(w_q / [H^-1]_qq) * H^-1_{q,:}``. The inverse Hessian is used through the upper Cholesky factor of
    ``H^-1`` so that eliminating columns left to right needs no re-inversion; updates are applied lazily
    inside column blocks of ``blocksize`` and flushed to the rest of the matrix once per block. The mask is
    chosen adaptively per block (unstructured: the lowest ``sparsity`` fraction of the block; N:M: the
    lowest ``m - n`` of each group, chosen when the group is reached). ``H`` is damped by
    ``percdamp * mean(diag H)``; if the Cholesky factorisation fails the damping is raised tenfold (with a
    warning) until it succeeds.
    """

    name = "sparsegpt"

    def __init__(self, module: nn.Module, layer_name: str = "", *, blocksize: int = 128, percdamp: float = 0.01):
        super().__init__(module, layer_name)
        if blocksize < 1:
            raise ValueError("blocksize must be a positive integer")
        if not 0.0 <= percdamp:
            raise ValueError("percdamp must be >= 0")
        self.blocksize = blocksize
        self.percdamp = percdamp
        self.H = torch.zeros(self.columns, self.columns, dtype=torch.float32, device=module.weight.device)
        self.damping_used: float | None = None

    def add_batch(self, x: Tensor) -> None:
        x2 = x.reshape(-1, x.shape[-1]).float()
        k = x2.shape[0]
        if k == 0:
            return
        self.H.mul_(self.nsamples / (self.nsamples + k))
        self.nsamples += k
        x2 = x2 * math.sqrt(2.0 / self.nsamples)
        self.H.addmm_(x2.t(), x2)

    def _inverse_factor(self, H: Tensor) -> Tensor:
        """Upper Cholesky factor of ``(H + damp I)^-1``, raising ``damp`` until the factorisation succeeds."""
        mean_diag = torch.mean(torch.diag(H)).item()
        fractions = [self.percdamp] + [max(self.percdamp, 1e-4) * 10.0**i for i in range(1, 7)]
        eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        for frac in fractions:
            damped = H + (frac * mean_diag) * eye
            L, info = torch.linalg.cholesky_ex(damped)
            if info.item() == 0:
                Hinv = torch.cholesky_inverse(L)
                U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
                if info.item() == 0 and torch.isfinite(U).all():
                    if frac != self.percdamp:
                        warnings.warn(
                            f"SparseGPT: the Cholesky factorisation of the Hessian of {self.layer_name or 'a layer'} "
                            f"failed with damping {self.percdamp:g} * mean(diag H); raised the damping to {frac:g}",
                            RuntimeWarning,
                            stacklevel=3,
                        )
                    self.damping_used = frac
                    return U
        raise ModelError(
            f"SparseGPT: the Hessian of {self.layer_name or 'a layer'} is not positive definite even with damping "
            f"{fractions[-1]:g}; its calibration inputs may be degenerate or non-finite"
        )

    def scores(self) -> Tensor:
        """OBS saliency ``w_ij^2 / [H^-1]_jj^2`` of every weight of the dense matrix, [out, in] (higher = keep).

        ``[H^-1]_jj`` is the diagonal of the upper Cholesky factor of the damped inverse Hessian, as in
        :meth:`prune` (which ranks the weights of each column block after the updates of the blocks before
        it; these scores are before any update). Leaves the statistics in place. Raises
        :class:`~prunekit.errors.ModelError` when no input reached the layer or ``H`` cannot be factorised.
        """
        if self.nsamples == 0:
            raise ModelError(f"SparseGPT: no calibration inputs reached {self.layer_name or 'this layer'}")
        if not torch.isfinite(self.H).all():
            raise NonFiniteWeightsError(f"SparseGPT: the inputs of {self.layer_name or 'a layer'} hold NaN or inf")
        W = weight_matrix(self.module).float().clone()
        H = self.H.clone()
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        return criteria.sparsegpt(W, torch.diag(self._inverse_factor(H)))

    def prune(self, sparsity: float, pattern: Granularity) -> Tensor:
        w_view = weight_matrix(self.module)
        check_pattern(pattern, self.layer_name, w_view)
        sparsity = check_sparsity(sparsity, pattern)
        if isinstance(pattern, NM) and self.blocksize % pattern.m:
            raise PatternError(f"SparseGPT blocksize {self.blocksize} must be a multiple of m={pattern.m}")
        if self.nsamples == 0:
            raise ModelError(f"SparseGPT: no calibration inputs reached {self.layer_name or 'this layer'}")
        if not torch.isfinite(self.H).all():
            raise NonFiniteWeightsError(f"SparseGPT: the inputs of {self.layer_name or 'a layer'} hold NaN or inf")
        W = w_view.float().clone()
        H = self.H
        self.H = H.new_empty(0)
        dead = torch.diag(H) == 0
        H[dead, dead] = 1.0
        W[:, dead] = 0.0
        U = self._inverse_factor(H)
        del H
        keep = torch.ones_like(W, dtype=torch.bool)
        cols = self.columns
        for i1 in range(0, cols, self.blocksize):
            i2 = min(i1 + self.blocksize, cols)
            W1 = W[:, i1:i2].clone()
            U1 = U[i1:i2, i1:i2]
            d = torch.diag(U1)
            Err1 = torch.zeros_like(W1)
            keep1 = torch.ones_like(W1, dtype=torch.bool)
            if not isinstance(pattern, NM) and sparsity > 0:
                keep1 = Unstructured().mask(criteria.sparsegpt(W1, d), sparsity)
            for i in range(i2 - i1):
                if isinstance(pattern, NM) and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    keep1[:, group] = pattern.mask(criteria.sparsegpt(W1[:, group], d[group]))
                w = W1[:, i]
                q = w * keep1[:, i]
                err = (w - q) / d[i]
                W1[:, i:].sub_(err.unsqueeze(1) * U1[i, i:].unsqueeze(0))
                W1[:, i] = q
                Err1[:, i] = err
            W[:, i1:i2] = W1
            keep[:, i1:i2] = keep1
            if i2 < cols:
                W[:, i2:].sub_(Err1 @ U[i1:i2, i2:])
        W.mul_(keep)
        if not torch.isfinite(W).all():
            raise NonFiniteWeightsError(f"SparseGPT produced non-finite weights in {self.layer_name or 'a layer'}")
        return store_matrix_(self.module, W.to(w_view.dtype), keep)

    def free(self) -> None:
        self.H = self.H.new_empty(0)


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (MagnitudeSolver, WandaSolver, SparseGPTSolver)}
