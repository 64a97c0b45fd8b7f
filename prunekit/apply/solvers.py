"""Per-layer solvers for post-training pruning: magnitude, Wanda, SparseGPT (OBS), for Linear and Conv layers.

Each solver wraps one prunable matrix: a Linear, a transformers ``Conv1D`` stored transposed, or a
``Conv1d`` / ``Conv2d`` seen through im2col (:mod:`prunekit.im2col`: the weight as ``[out, K * in/groups]``
with position-major columns, the input as patch rows); its axes come from :mod:`prunekit.layout`, also after
a first pruning wrapped the layer in a parametrization. The calibration runner of language models
(:mod:`prunekit.llm.runner`) or the generic applier (:mod:`prunekit.apply.solve`) feeds it that layer's inputs with
:meth:`Solver.add_batch`; :meth:`Solver.prune` then chooses a keep-mask for a given sparsity and pattern,
writes the pruned weight back in place and returns the mask (True = keep) as a matrix. Scores come from the
pure criteria in :mod:`prunekit.criteria.formulas`. A grouped convolution (depthwise included) is one problem per
group: each output row reads only its group's inputs.

Supported patterns: :class:`~prunekit.granularity.patterns.Unstructured` and :class:`~prunekit.granularity.patterns.NM`
(``n`` kept of every ``m`` consecutive inputs of each output row; for a convolution, of every ``m``
consecutive input channels at each kernel position, as :class:`~prunekit.granularity.patterns.NM` groups a
``[out, in, kh, kw]`` weight).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
from torch import Tensor, nn

from prunekit.apply.matrix_io import check_inputs, store_matrix_, stored_mask, weight_matrix
from prunekit.apply.obs_sweep import block_mask, sweep_rows
from prunekit.criteria import formulas as criteria
from prunekit.errors import (
    ConfigError,
    DataError,
    InvalidSparsityError,
    ModelError,
    NonFiniteWeightsError,
    PatternError,
)
from prunekit.granularity.patterns import NM, Granularity, Unstructured, row_mask
from prunekit.im2col import Patches, check_matrix_layer, from_matrix
from prunekit.layout import layer_weight, weight_layout
from prunekit.targets import all_finite

__all__ = [
    "MagnitudeSolver",
    "SOLVERS",
    "Solver",
    "SparseGPTSolver",
    "WandaSolver",
    "check_pattern",
    "row_mask",
    "check_sparsity",
    "store_matrix_",
    "stored_mask",
    "weight_matrix",
]


def check_pattern(pattern: Granularity, name: str, weight: Tensor) -> None:
    """Refuse patterns the layer-wise solvers do not implement, and N:M that does not divide ``in``: raises
    :class:`~prunekit.errors.PatternError` for either. ``weight``: the layer's canonical weight."""
    if not isinstance(pattern, (Unstructured, NM)):
        raise PatternError(
            f"layer-wise solvers (magnitude, Wanda, SparseGPT) support unstructured and N:M patterns, not "
            f"{pattern}; use pattern=None (unstructured) or e.g. pattern='2:4'"
        )
    pattern.check(name, weight)


def check_sparsity(sparsity: float, pattern: Granularity) -> float:
    """The sparsity to reach: N:M fixes it; otherwise it must lie in [0, 1), else
    :class:`~prunekit.errors.InvalidSparsityError`."""
    if isinstance(pattern, NM):
        return pattern.fixed_sparsity
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= sparsity < 1.0:
        raise InvalidSparsityError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


_CHECK_DATA = ": check the calibration data and the layers before it (an overflow?)"


class Solver:
    """Base class: statistics of one matrix's inputs, then a solve that prunes it in place."""

    name: ClassVar[str] = "solver"

    def __init__(self, module: nn.Module, layer_name: str = ""):
        check_matrix_layer(module, layer_name)
        self.module = module
        self.layer_name = layer_name
        w = weight_matrix(module)
        self.rows, self.columns = w.shape
        self.nsamples = 0
        #: im2col of a convolution (None for Linear / Conv1D); its groups are solved as separate problems
        self.patches = Patches.of(module)
        self.groups = 1 if self.patches is None else self.patches.groups

    def check_inputs(self, x: Tensor) -> None:
        """Refuse inputs ``x`` of another width than the layer reads (:func:`prunekit.apply.matrix_io.check_inputs`)."""
        check_inputs(self.module, x, self.columns, im2col=self.patches is not None, name=self.layer_name)

    def add_batch(self, x: Tensor) -> None:
        """Accumulate statistics of inputs ``x`` of this layer: [..., in] for a Linear / ``Conv1D``, the
        convolution's input [B, C, *spatial] (or [C, *spatial]) for a convolution (turned into patches).
        Raises :class:`~prunekit.errors.DataError` for inputs of another width (:meth:`check_inputs`)."""
        self.check_inputs(x)
        if self.patches is not None:
            for rows in self.patches.rows(x):
                self.nsamples += rows.shape[0]
            return
        self.nsamples += x.reshape(-1, x.shape[-1]).shape[0]

    def pattern_view(self, matrix: Tensor) -> Tensor:
        """``matrix`` [out, in'] in the layer's canonical weight shape, as granularities check patterns on it
        (N:M must divide a convolution's input channels, not the K * in/groups columns)."""
        if self.patches is None:
            return matrix
        layout = weight_layout(self.module)
        assert layout is not None
        return from_matrix(matrix, layout.canonical_shape(tuple(layer_weight(self.module).shape)))

    def scores(self) -> Tensor:
        """Importance of every weight, shaped like the [out, in] weight (higher = keep)."""
        raise NotImplementedError

    def prune(self, sparsity: float, pattern: Granularity, *, keep_statistics: bool = False) -> Tensor:
        """Zero the lowest-scoring weights in place; returns the keep-mask (True = kept) as [out, in].
        ``keep_statistics``: leave the input statistics in place for matrices fed the same inputs that
        :meth:`adopt_statistics` them afterwards (this base class never consumes them).

        Raises :class:`~prunekit.errors.PatternError` for a pattern other than unstructured / N:M or an N:M
        that does not divide the inputs, :class:`~prunekit.errors.InvalidSparsityError` for a sparsity
        outside [0, 1).
        """
        w = weight_matrix(self.module)
        check_pattern(pattern, self.layer_name, self.pattern_view(w))
        sparsity = check_sparsity(sparsity, pattern)
        scores = self.scores()
        keep = pattern.mask(scores) if isinstance(pattern, NM) else self.unstructured_mask(scores, sparsity)
        return store_matrix_(self.module, w, keep)

    def unstructured_mask(self, scores: Tensor, sparsity: float) -> Tensor:
        """Keep-mask [out, in] for an unstructured pattern: the lowest ``sparsity`` of all the layer's scores
        go (:class:`~prunekit.granularity.patterns.Unstructured`)."""
        return Unstructured().mask(scores, sparsity)

    def free(self) -> None:
        """Drop accumulated statistics (the runner calls this once the layer is solved)."""

    def adopt_statistics(self, source: Solver) -> None:
        """Use the input statistics ``source`` gathered instead of gathering its own: ``source`` solves a
        matrix fed the very same inputs (q/k/v of an attention block, gate/up of a gated MLP), so its
        statistics are this matrix's too. Raises :class:`~prunekit.errors.ModelError` when the two read
        inputs of different widths or layouts."""
        if type(source) is not type(self) or source.columns != self.columns or source.groups != self.groups:
            raise ModelError(
                f"{self.layer_name or 'a layer'} cannot share the input statistics of "
                f"{source.layer_name or 'another layer'}: they read {self.columns} and "
                f"{source.columns} input features"
            )
        self.nsamples = source.nsamples

    @classmethod
    def prune_shared(
        cls, solvers: list[Solver], sparsities: list[float], pattern: Granularity, *, keep_statistics: bool = False
    ) -> list[Tensor]:
        """Prune matrices fed the same inputs, whose statistics ``solvers[0]`` gathered alone, each at its own
        sparsity; returns their keep-masks. The result equals pruning each with statistics of its own (the
        default: every member adopts the first one's statistics, then prunes). ``keep_statistics``: the first
        keeps its statistics for members that follow later. Raises what :meth:`prune` and
        :meth:`adopt_statistics` raise."""
        first = solvers[0]
        for solver in solvers[1:]:
            solver.adopt_statistics(first)
        return [
            solver.prune(sparsity, pattern, keep_statistics=keep_statistics and solver is first)
            for solver, sparsity in zip(solvers, sparsities)
        ]


class MagnitudeSolver(Solver):
    """Layer-wise magnitude pruning: score ``|W_ij|``, lowest removed over the whole matrix (or per N:M
    group) (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural Networks")."""

    name = "magnitude"

    def scores(self) -> Tensor:
        """``|W_ij|`` of the [out, in] weight matrix (float32); needs no inputs."""
        return criteria.magnitude(weight_matrix(self.module).float())


class WandaSolver(Solver):
    """Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models").

    Score ``S_ij = |W_ij| * ||X_j||_2`` where ``||X_j||`` is the norm of input feature ``j`` over all
    calibration tokens; the lowest scores are removed *per output row* (unstructured) or per N:M group.
    For a convolution the features are the im2col columns (an input channel at a kernel position, norms
    over every batch x output position); ``sq_norms`` is [in'] or, for a grouped convolution,
    [groups, in'] (each output row reads its group's inputs).
    """

    name = "wanda"

    def __init__(self, module: nn.Module, layer_name: str = ""):
        super().__init__(module, layer_name)
        shape = (self.columns,) if self.groups == 1 else (self.groups, self.columns)
        self.sq_norms = torch.zeros(shape, dtype=torch.float64, device=layer_weight(module).device)

    def add_batch(self, x: Tensor) -> None:
        """Add the squared inputs ``x`` (shaped as :meth:`Solver.add_batch` says) to ``sq_norms``. Raises
        :class:`~prunekit.errors.DataError` for inputs of another width."""
        self.check_inputs(x)
        if self.patches is not None:
            for rows in self.patches.rows(x):  # [n, groups, in']
                self.nsamples += rows.shape[0]
                sums = rows.double().pow(2).sum(dim=0)
                self.sq_norms += sums[0] if self.groups == 1 else sums
            return
        x2 = x.reshape(-1, x.shape[-1])
        self.nsamples += x2.shape[0]
        x2 = x2 if x2.dtype in (torch.float32, torch.float64) else x2.float()
        # float32 column sums over at most 8,192 rows at a time (as the paper's code sums in float32), added
        # up in float64: a tenth of the time of a float64 reduction, rounding bounded by the block length
        for part in x2.split(8192):
            self.sq_norms += part.square().sum(dim=0).double()

    def scores(self) -> Tensor:
        """``|W_ij| * ||X_j||_2`` shaped [out, in] (float32), each row with its own group's norms. Raises
        :class:`~prunekit.errors.DataError` when the inputs held NaN or inf (no ranking exists)."""
        if not torch.isfinite(self.sq_norms).all():
            raise DataError(f"Wanda: the inputs of {self.layer_name or 'a layer'} hold NaN or inf" + _CHECK_DATA)
        norms = self.sq_norms.float()
        if norms.dim() == 2:  # grouped convolution: the norms of each row's own group
            norms = norms.repeat_interleave(self.rows // self.groups, dim=0)
        return criteria.wanda(weight_matrix(self.module).float(), norms)

    def unstructured_mask(self, scores: Tensor, sparsity: float) -> Tensor:
        """Keep-mask [out, in] that drops the lowest ``round(sparsity * in)`` scores of every output row, as
        Wanda compares weights per output."""
        return row_mask(scores, sparsity)

    def free(self) -> None:
        """Drop the input norms."""
        self.sq_norms = self.sq_norms.new_empty(0)

    def adopt_statistics(self, source: Solver) -> None:
        """Read ``source``'s input norms (by reference: Wanda only reads them)."""
        super().adopt_statistics(source)
        assert isinstance(source, WandaSolver)
        self.sq_norms = source.sq_norms


#: inputs at least this wide accumulate SparseGPT's Hessian by its upper blocks (narrower: one full product)
_SYMMETRIC_BLOCKS_FROM = 256


class SparseGPTSolver(Solver):
    """SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot").

    With ``H = 2 X X^T / n`` (inputs as columns) the layer-wise problem ``min ||W X - W' X||^2`` is solved
    approximately column by column with optimal-brain-surgeon updates: removing ``w_q`` (score
    ``w_q^2 / [H^-1]_qq^2``) changes the not yet processed weights of its row by
    ``-(w_q / [H^-1]_qq) * H^-1_{q,:}``. The inverse Hessian is used through the upper Cholesky factor of
    ``H^-1`` so that eliminating columns left to right needs no re-inversion; updates are applied lazily
    inside column blocks of ``blocksize`` and flushed to the rest of the matrix once per block. The mask is
    chosen adaptively per block (unstructured: the lowest ``sparsity`` fraction of the block; N:M: the
    lowest ``m - n`` of each group, chosen when the group is reached). ``H`` is damped by
    ``percdamp * mean(diag H)``; if the Cholesky factorisation fails the damping is raised tenfold (with a
    warning) until it succeeds. This is the optimal brain surgeon of Hassibi & Stork 1993 ("Second order
    derivatives for network pruning: Optimal Brain Surgeon") applied row-wise with a shared Hessian.

    For a convolution the inputs are its im2col patches (:mod:`prunekit.im2col`), so ``H`` is
    [K * in/groups, K * in/groups]; a grouped convolution keeps one ``H`` per group ([groups, in', in']) and
    solves each group's rows against its own, all groups in one batched pass (an unstructured block mask is
    chosen over the block of every group at once, so the sparsity is met over the layer, not rounded per
    group: a depthwise filter has only ``K`` weights). N:M runs over the position-major columns, so its groups
    are the input channels at one kernel position (:class:`~prunekit.granularity.patterns.NM`'s groups); an
    unstructured mask is chosen over the columns in channel-major order (``weight.flatten(1)``, as in the
    reference implementation), so that every column block mixes kernel positions and can drop the positions
    whose inputs are weak (border padding, 1x1 feature maps) instead of an equal share of each. Raises
    :class:`~prunekit.errors.ModelError` when no input reached the layer or ``H`` cannot be factorised,
    :class:`~prunekit.errors.DataError` for NaN / inf inputs, ``NonFiniteWeightsError`` for such results,
    :class:`~prunekit.errors.PatternError` when ``blocksize`` is not a multiple of an N:M pattern's ``m``, and
    :class:`~prunekit.errors.ConfigError` (at construction) for a ``blocksize`` that is not a positive integer
    or a negative ``percdamp``.
    """

    name = "sparsegpt"

    def __init__(self, module: nn.Module, layer_name: str = "", *, blocksize: int = 128, percdamp: float = 0.01):
        super().__init__(module, layer_name)
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ConfigError(
                f"blocksize must be a positive integer (columns solved together, e.g. 128), got {blocksize!r}"
            )
        if isinstance(percdamp, bool) or not isinstance(percdamp, (int, float)) or not 0.0 <= percdamp:
            raise ConfigError(
                f"percdamp must be a number >= 0 (damping as a fraction of the mean Hessian diagonal, e.g. 0.01), "
                f"got {percdamp!r}"
            )
        self.blocksize = blocksize
        self.percdamp = percdamp
        self._H: Tensor | None = None  # allocated when first read or fed: a layer's matrices wait their turn
        self._lower_stale = False
        self.damping_used: float | None = None

    @property
    def H(self) -> Tensor:
        """The running Hessian ``2 X X^T / n``, symmetric ([in', in'] or [groups, in', in'], float32; zeros
        before any input). :meth:`add_batch` accumulates only its upper triangle (by column blocks); the lower
        one is filled in from it when ``H`` is next read."""
        H = self._accumulator()
        if self._lower_stale:
            H.copy_(torch.triu(H) + torch.triu(H, 1).transpose(-2, -1))
            self._lower_stale = False
        return H

    @H.setter
    def H(self, value: Tensor) -> None:
        self._H = value
        self._lower_stale = False

    def _accumulator(self) -> Tensor:
        """``H`` as it is being accumulated (its lower triangle possibly stale), allocated when first needed."""
        if self._H is None:
            shape = (self.columns, self.columns) if self.groups == 1 else (self.groups, self.columns, self.columns)
            self._H = torch.zeros(shape, dtype=torch.float32, device=layer_weight(self.module).device)
        return self._H

    def add_batch(self, x: Tensor) -> None:
        """Fold inputs ``x`` (shaped as :meth:`Solver.add_batch` says) into the running ``H = 2 X X^T / n``
        (float32, [in', in'], or [groups, in', in'] for a grouped convolution). Raises
        :class:`~prunekit.errors.DataError` for inputs of another width."""
        self.check_inputs(x)
        if self.patches is not None:
            for rows in self.patches.rows(x):
                self._add_rows(rows)
            return
        x2 = x.reshape(-1, x.shape[-1]).float()
        k = x2.shape[0]
        if k == 0:
            return
        H = self._accumulator()
        # the running mean H <- H n/(n + k) + 2/(n + k) X^T X, scaled inside the product
        beta = self.nsamples / (self.nsamples + k)
        self.nsamples += k
        alpha = 2.0 / self.nsamples
        n = x2.shape[1]
        # wide inputs: only the 4 column blocks on and above the diagonal (28% fewer operations). Either way the
        # upper triangle counts; the lower one is filled in from it when H is read (exactly symmetric)
        if n < _SYMMETRIC_BLOCKS_FROM:
            H.addmm_(x2.t(), x2, beta=beta, alpha=alpha)
        else:
            b = -(-n // 4)
            for i in range(0, n, b):
                H[i : i + b, i:].addmm_(x2[:, i : i + b].t(), x2[:, i:], beta=beta, alpha=alpha)
        self._lower_stale = True

    def _add_rows(self, rows: Tensor) -> None:
        """Accumulate patch rows [n, groups, in'] of a convolution into ``H`` (running mean of ``2 x x^T``)."""
        k = rows.shape[0]
        if k == 0:
            return
        self.H.mul_(self.nsamples / (self.nsamples + k))
        self.nsamples += k
        r = rows.float() * math.sqrt(2.0 / self.nsamples)
        if self.H.dim() == 2:
            r = r[:, 0]
            self.H.addmm_(r.t(), r)
        else:
            r = r.transpose(0, 1)  # [groups, n, in']
            self.H.baddbmm_(r.transpose(1, 2), r)

    def _batched(self, W: Tensor) -> Tensor:
        """``W`` [out, in'] as [groups, out/groups, in'] for a grouped convolution (a view), else as it is."""
        return W if self.groups == 1 else W.reshape(self.groups, self.rows // self.groups, W.shape[-1])

    def _factor(self, H: Tensor) -> Tensor:
        """:meth:`_inverse_factor` of ``H`` [in', in'], or of each group's ``H`` [groups, in', in']."""
        if H.dim() == 2:
            return self._inverse_factor(H)
        return torch.stack([self._inverse_factor(h) for h in H])

    def _inverse_factor(self, H: Tensor) -> Tensor:
        """Upper Cholesky factor ``U`` of ``(H + damp I)^-1``, raising ``damp`` until the factorisation succeeds;
        ``H`` [in, in] is overwritten (the callers hand it over). ``H^-1`` is never formed: with ``J`` the index
        reversal and ``J H J = L L^T``, ``U = J L^-1 J`` (upper, positive diagonal): one factorisation and one
        triangular solve, closer to the float64 factor than factorise, invert, factorise again."""
        H.copy_(H.flip((-2, -1)))  # J H J
        diagonal = torch.diagonal(H)
        undamped = diagonal.clone()
        mean_diag = torch.mean(undamped).item()
        fractions = [self.percdamp] + [max(self.percdamp, 1e-4) * 10.0**i for i in range(1, 7)]
        for frac in fractions:
            diagonal.copy_(undamped).add_(frac * mean_diag)
            L, info = torch.linalg.cholesky_ex(H)
            if info.item() == 0:
                inverse = torch.eye(H.shape[-1], dtype=H.dtype, device=H.device)
                torch.linalg.solve_triangular(L, inverse, upper=False, out=inverse)  # L^-1, in place
                del L
                U = inverse.flip((-2, -1))
                del inverse
                if all_finite(U):
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
        if not all_finite(self.H):
            raise DataError(f"SparseGPT: the inputs of {self.layer_name or 'a layer'} hold NaN or inf" + _CHECK_DATA)
        W = self._batched(weight_matrix(self.module).float().clone())
        H = self.H.clone()
        dead = torch.diagonal(H, dim1=-2, dim2=-1) == 0
        torch.diagonal(H, dim1=-2, dim2=-1)[dead] = 1.0
        W.masked_fill_(dead.unsqueeze(-2), 0.0)
        U = self._factor(H)
        return criteria.sparsegpt(W, torch.diagonal(U, dim1=-2, dim2=-1)).reshape(self.rows, self.columns)

    def _check_ready(self, sparsity: float, pattern: Granularity) -> float:
        """Refuse what :meth:`prune` refuses before anything changes; the sparsity to reach."""
        check_pattern(pattern, self.layer_name, self.pattern_view(weight_matrix(self.module)))
        sparsity = check_sparsity(sparsity, pattern)
        if isinstance(pattern, NM) and self.blocksize % pattern.m:
            raise PatternError(f"SparseGPT blocksize {self.blocksize} must be a multiple of m={pattern.m}")
        if self.nsamples == 0:
            raise ModelError(f"SparseGPT: no calibration inputs reached {self.layer_name or 'this layer'}")
        if not all_finite(self.H):
            raise DataError(f"SparseGPT: the inputs of {self.layer_name or 'a layer'} hold NaN or inf" + _CHECK_DATA)
        return sparsity

    def prune(self, sparsity: float, pattern: Granularity, *, keep_statistics: bool = False) -> Tensor:
        """Solve the layer-wise problem (see the class docstring), write the updated weights in place and
        return the keep-mask [out, in]. Consumes ``H`` unless ``keep_statistics`` (then the solve works on a
        copy, for matrices that :meth:`adopt_statistics` it afterwards). Raises what the class docstring
        lists, and what :meth:`Solver.prune` raises for the pattern and sparsity."""
        sparsity = self._check_ready(sparsity, pattern)
        w_view = weight_matrix(self.module)
        W = w_view.float().clone()
        order = self._channel_major(pattern)
        if order is None:
            H = self.H.clone() if keep_statistics else self._take_hessian()
            keep = self._solve(self._batched(W), H, sparsity, pattern).reshape(W.shape)
        else:  # a convolution's unstructured mask: columns solved channel-major, then put back
            H = self.H.clone() if keep_statistics else self._take_hessian()
            Hp = H[..., order, :][..., order]
            del H
            Wp = self._batched(W)[..., order]
            kept = self._solve(Wp, Hp, sparsity, pattern)
            self._batched(W)[..., order] = Wp
            keep = torch.empty_like(W, dtype=torch.bool)
            self._batched(keep)[..., order] = kept
        if not all_finite(W):
            raise NonFiniteWeightsError(f"SparseGPT produced non-finite weights in {self.layer_name or 'a layer'}")
        return store_matrix_(self.module, W.to(w_view.dtype), keep)

    def adopt_statistics(self, source: Solver) -> None:
        """Take a copy of ``source``'s Hessian (the solve changes the Hessian it is given)."""
        super().adopt_statistics(source)
        assert isinstance(source, SparseGPTSolver)
        self.H = source.H.clone()

    @classmethod
    def prune_shared(
        cls, solvers: list[Solver], sparsities: list[float], pattern: Granularity, *, keep_statistics: bool = False
    ) -> list[Tensor]:
        """Prune Linears fed the same inputs against the Hessian ``solvers[0]`` gathered: one damped inverse
        Hessian factorisation for all of them, and one column sweep over their rows stacked (each row's OBS
        updates involve only its own row, so stacking changes nothing; an unstructured block mask is still
        chosen within each matrix, at its own sparsity). Equals :meth:`prune` of each with its own copy of
        the statistics, up to float rounding of the stacked products. Convolutions, and members with other
        block sizes or damping, take the generic path (:meth:`Solver.prune_shared`). ``keep_statistics``:
        the first keeps its Hessian (the solve works on a copy). Raises what :meth:`prune` raises, before any
        weight changes."""
        first = solvers[0]
        assert isinstance(first, SparseGPTSolver)
        members = [s for s in solvers if isinstance(s, SparseGPTSolver)]
        if (
            len(members) != len(solvers)
            or any(s.patches is not None for s in members)
            or any((s.blocksize, s.percdamp) != (first.blocksize, first.percdamp) for s in members)
        ):
            return super().prune_shared(solvers, sparsities, pattern, keep_statistics=keep_statistics)
        for s in members[1:]:
            Solver.adopt_statistics(s, first)  # widths and sample count; the Hessian stays the first's
        reached = [first._check_ready(sparsities[0], pattern)]  # the shared Hessian is checked once
        reached += [check_sparsity(sp, pattern) for sp in sparsities[1:]]
        for s in members[1:]:
            check_pattern(pattern, s.layer_name, weight_matrix(s.module))
        views = [weight_matrix(s.module) for s in members]
        W = torch.cat([v.float() for v in views])
        segments, row = [], 0
        for v, sp in zip(views, reached):
            segments.append((row, row + v.shape[0], sp))
            row += v.shape[0]
        H = first.H.clone() if keep_statistics else first._take_hessian()
        keep = first._solve(W, H, reached[0], pattern, segments)
        if not all_finite(W):
            names = ", ".join(s.layer_name or "a layer" for s in members)
            raise NonFiniteWeightsError(f"SparseGPT produced non-finite weights in {names}")
        for s in members[1:]:
            s.damping_used = first.damping_used
            s.free()
        return [
            store_matrix_(s.module, W[r0:r1].to(v.dtype), keep[r0:r1])
            for s, v, (r0, r1, _) in zip(members, views, segments)
        ]

    def _channel_major(self, pattern: Granularity) -> Tensor | None:
        """For an unstructured mask of a convolution with a kernel > 1: the position-major column of each
        channel-major column (``order[c * K + k] = k * C + c``); None otherwise."""
        if self.patches is None or isinstance(pattern, NM):
            return None
        positions = math.prod(self.patches.kernel)
        if positions == 1:
            return None
        channels = self.columns // positions
        return torch.arange(self.columns, device=self.H.device).reshape(positions, channels).t().reshape(-1)

    def _take_hessian(self) -> Tensor:
        """Hand ``H`` over to the solve (the solver keeps no reference, so the solve can free it early)."""
        H = self.H
        self.H = H.new_empty(0)
        return H

    def _solve(
        self,
        W: Tensor,
        H: Tensor,
        sparsity: float,
        pattern: Granularity,
        segments: list[tuple[int, int, float]] | None = None,
    ) -> Tensor:
        """Prune ``W`` [rows, in'] in place against ``H`` [in', in'] (consumed), or a batch of such problems
        ([groups, rows, in'] against [groups, in', in']); returns the keep-mask shaped like ``W``.
        ``segments``: ``(first row, end row, sparsity)`` of matrices stacked in ``W`` whose unstructured block
        masks are chosen separately (default: all rows at ``sparsity``)."""
        dead = torch.diagonal(H, dim1=-2, dim2=-1) == 0
        torch.diagonal(H, dim1=-2, dim2=-1)[dead] = 1.0
        W.masked_fill_(dead.unsqueeze(-2), 0.0)
        U = self._factor(H)
        del H
        segments = segments if segments is not None else [(0, W.shape[-2], sparsity)]
        if W.dim() == 2:
            return sweep_rows(W, U, self.blocksize, pattern, segments)
        keep = torch.ones_like(W, dtype=torch.bool)
        cols = W.shape[-1]
        for i1 in range(0, cols, self.blocksize):
            i2 = min(i1 + self.blocksize, cols)
            W1 = W[..., i1:i2].clone()
            U1 = U[..., i1:i2, i1:i2]
            d = torch.diagonal(U1, dim1=-2, dim2=-1)
            Err1 = torch.zeros_like(W1)
            keep1 = block_mask(W1, d, pattern, segments)
            for i in range(i2 - i1):
                if isinstance(pattern, NM) and i % pattern.m == 0:
                    group = slice(i, i + pattern.m)
                    scores = criteria.sparsegpt(W1[..., group], d[..., group])
                    keep1[..., group] = pattern.mask(scores.reshape(-1, pattern.m)).reshape(scores.shape)
                w = W1[..., i]
                q = w * keep1[..., i]
                err = (w - q) / d[..., i, None]
                W1[..., i:].sub_(err.unsqueeze(-1) * U1[..., i, i:].unsqueeze(-2))
                W1[..., i] = q
                Err1[..., i] = err
            W[..., i1:i2] = W1
            keep[..., i1:i2] = keep1
            if i2 < cols:
                W[..., i2:].sub_(Err1 @ U[..., i1:i2, i2:])
        W.mul_(keep)
        return keep

    def free(self) -> None:
        """Drop the Hessian."""
        self.H = torch.empty(0, dtype=torch.float32, device=layer_weight(self.module).device)


SOLVERS: dict[str, type[Solver]] = {cls.name: cls for cls in (MagnitudeSolver, WandaSolver, SparseGPTSolver)}
