"""The registered criteria: the survey's importance scores, each in one place.

Each scores a weight ``W`` in canonical layout ``[out, in/groups, *kernel]``; statistics are those of
:mod:`prunekit.calibration.collect`. ``n`` is the number of calibration rows (tokens, positions).
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.criteria.base import CRITERIA, Criterion, ScoreInput, criterion, register

__all__ = ["BUILTIN", "lamp_scores"]

ELEMENT = ("element",)


def lamp_scores(squared: Tensor) -> Tensor:
    """LAMP scores of a 1-D tensor of squared magnitudes (or unit scores), same order as the input:
    sorted ascending, ``score(u) = s_u / sum_{v >= u} s_v`` (Lee et al. 2021, "Layer-adaptive Sparsity for
    the Magnitude-based Pruning"); the result has the input's shape and dtype."""
    flat = squared.double()
    order = torch.argsort(flat, stable=True)
    sorted_vals = flat[order]
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_vals, [0]), 0), [0])
    scores_sorted = torch.where(suffix > 0, sorted_vals / suffix, torch.zeros_like(sorted_vals))
    out = torch.empty_like(flat)
    out[order] = scores_sorted
    return out.to(squared.dtype)


# ------------------------------------------------------------------------------------------- data-free


@criterion(
    "magnitude",
    "|w|: weight magnitude; summed over a unit, its L1 norm (Han et al. 2015; Li et al. 2017)",
    paper="Learning both Weights and Connections for Efficient Neural Networks",
    aliases=("l1",),
    power=1.0,
)
def magnitude(s: ScoreInput) -> Tensor:
    """``|w|``. Over a unit the mean ``|w|`` ranks units by their L1 norm (Li et al. 2017, "Pruning Filters
    for Efficient ConvNets")."""
    return s.weight.abs()


@criterion("l2", "w^2: ranks single weights like magnitude and units by their L2 norm", power=2.0)
def l2(s: ScoreInput) -> Tensor:
    """``w^2``; a unit's mean ranks units by their L2 norm (the group-lasso view of DepGraph, Fang et al. 2023)."""
    return s.weight.float().pow(2)


register(
    Criterion(
        "lp",
        lambda s: s.weight.float().abs().pow(3.0),
        "|w|^p with p = 3 (any other p: the name 'l<p>', e.g. 'l0.5', or prunekit.lp(p))",
        power=3.0,
    )
)


@criterion("random", "uniform random scores, seeded per layer: the baseline every criterion must beat")
def random(s: ScoreInput) -> Tensor:
    """Uniform random scores from a generator seeded by (seed, layer name): reproducible."""
    return torch.rand(s.weight.shape, generator=s.generator, dtype=torch.float32).to(s.weight.device)


@criterion(
    "lamp",
    "LAMP: w_u^2 / sum_{v>=u} w_v^2 within a layer, scale-free across layers (Lee et al. 2021)",
    paper="Layer-adaptive Sparsity for the Magnitude-based Pruning",
    contribute=lambda s: s.weight.float().pow(2),
    reduce=lambda sums, sizes: lamp_scores(sums / sizes.clamp_min(1).to(sums.dtype)),
)
def lamp(s: ScoreInput) -> Tensor:
    """Layer-adaptive magnitude score (Lee et al. 2021): with the layer's weights sorted by magnitude,
    ``score(u) = w_u^2 / sum_{v >= u} w_v^2``. Units: the same formula on the units' mean squared weights."""
    return lamp_scores(s.weight.float().pow(2).reshape(-1)).reshape(s.weight.shape)


@criterion(
    "fpgm",
    "distance of a filter to the other filters of its layer: near the geometric median is redundant (He et al. 2019)",
    paper="Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration",
    levels=("channel", "head", "layer"),
    row_native=True,
)
def fpgm(s: ScoreInput) -> Tensor:
    """FPGM (He et al. 2019): filter ``i`` of a layer scores ``sum_j ||F_i - F_j||_2``, the objective the
    geometric median minimises; filters with the smallest sum lie nearest the median and are replaceable by
    the others. Every weight of a filter (row) gets the filter's score."""
    flat = s.weight.detach().double().reshape(s.weight.shape[0], -1)
    dist = torch.cdist(flat.unsqueeze(0), flat.unsqueeze(0)).squeeze(0).sum(1)
    return s.per_output(dist)


# ----------------------------------------------------------------------------------------- gradients


def _grad(s: ScoreInput, name: str) -> Tensor:
    return s.canonical(s.require("grad", name)).float()


@criterion(
    "grad-weight",
    "|g * w|: connection sensitivity of single weights (SNIP, Lee et al. 2019)",
    paper="SNIP: Single-shot Network Pruning based on Connection Sensitivity",
    needs=("grad",),
    aliases=("snip",),
)
def grad_weight(s: ScoreInput) -> Tensor:
    """``|g * w|`` with ``g`` the loss gradient summed over the calibration batches: the first-order change
    of the loss when ``w`` is set to zero, per weight (SNIP normalises it, which keeps the ranking)."""
    return (_grad(s, "grad-weight") * s.weight.float()).abs()


@criterion(
    "taylor",
    "first-order Taylor of a unit: (sum over the unit of g * w)^2 (Molchanov et al. 2019)",
    paper="Importance Estimation for Neural Network Pruning",
    needs=("grad",),
    contribute=lambda s: _grad(s, "taylor") * s.weight.float(),
    reduce=lambda sums, sizes: sums.square(),
)
def taylor(s: ScoreInput) -> Tensor:
    """Molchanov et al. 2019: removing a unit changes the loss by about ``sum_{w in unit} g w``; its score is
    the square of that signed sum, so a unit's weights can cancel. A single weight scores ``(g w)^2``."""
    return (_grad(s, "taylor") * s.weight.float()).square()


@criterion(
    "obd",
    "Optimal Brain Damage 1/2 h_ii w_i^2 with the empirical Fisher diagonal (LeCun et al. 1990)",
    paper="Optimal Brain Damage",
    needs=("grad_sq",),
    aliases=("hessian", "fisher"),
)
def obd(s: ScoreInput) -> Tensor:
    """OBD saliency ``1/2 h_ii w_i^2``, the Hessian diagonal approximated by the empirical Fisher
    ``h_ii ~ sum_b g_{b,i}^2`` over calibration batches."""
    return 0.5 * s.canonical(s.require("grad_sq", "obd")).float() * s.weight.float().square()


@criterion(
    "synflow",
    "|dR/dw * w| of the all-positive network on all-ones inputs (Tanaka et al. 2020); data-free",
    paper="Pruning neural networks without any data by iteratively conserving synaptic flow",
    needs=("synflow",),
)
def synflow(s: ScoreInput) -> Tensor:
    """SynFlow (Tanaka et al. 2020): ``|dR/dw * w|`` with ``R = 1^T (prod_l |W_l|) 1``; needs only the
    input shape. One scoring round (the method ``synflow`` iterates it)."""
    return (s.canonical(s.require("synflow", "synflow")).float() * s.weight.float()).abs()


@criterion(
    "grasp",
    "gradient-flow preservation w * (H g) (Wang et al. 2020); double back-propagation",
    paper="Picking Winning Tickets Before Training by Preserving Gradient Flow",
    needs=("grasp_hg",),
)
def grasp(s: ScoreInput) -> Tensor:
    """GraSP (Wang et al. 2020): removing ``w`` changes the gradient norm by ``S = -w (H g)``; the weights
    with the largest ``S`` go first, so the importance is ``w (H g)`` (signed)."""
    return s.canonical(s.require("grasp_hg", "grasp")).float() * s.weight.float()


# --------------------------------------------------------------------------------------- activations


@criterion(
    "wanda",
    "|w| * ||x_j||_2: weight times the norm of its input feature (Sun et al. 2023)",
    paper="A Simple and Effective Pruning Approach for Large Language Models",
    needs=("act_norm",),
)
def wanda(s: ScoreInput) -> Tensor:
    """Wanda (Sun et al. 2023): ``S_ij = |W_ij| ||X_j||_2`` over all calibration rows; for a convolution
    ``X_j`` is input channel ``j`` over every position (each kernel tap of the channel shares it)."""
    return s.weight.float().abs() * s.per_input(s.require("act_norm", "wanda").clamp_min(0).sqrt())


def _hinv_diag(s: ScoreInput, damp: float = 0.01) -> Tensor:
    xtx = s.require("xtx", "sparsegpt").double()
    n = max(int(s.stats.extra.get("xtx_rows", 0)), 1)
    H = 2.0 * xtx / n
    d = torch.diag(H)
    H = H + (damp * float(d.mean()) + 1e-12) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    L, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        H = H + float(d.mean() + 1e-8) * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
        L = torch.linalg.cholesky(H)
    return torch.diag(torch.cholesky_inverse(L))


@criterion(
    "sparsegpt",
    "OBS saliency w^2 / [H^-1]_jj^2 with H = 2 X^T X / n (Frantar & Alistarh 2023)",
    paper="SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
    needs=("xtx",),
)
def sparsegpt(s: ScoreInput) -> Tensor:
    """The optimal-brain-surgeon saliency SparseGPT ranks by (Frantar & Alistarh 2023; Hassibi & Stork
    1993): ``w_ij^2 / [H^-1]_jj^2`` with the damped ``H = 2 X^T X / n`` of the layer's (im2col) inputs.
    As a score it does not update the remaining weights; the ``sparsegpt`` method's solver does."""
    w = s.weight.float()
    flat = w.reshape(w.shape[0], -1)
    hd = _hinv_diag(s).float().to(w.device)
    if hd.numel() != flat.shape[1]:
        from prunekit.errors import DataError

        raise DataError(f"{s.key}: X^T X has {hd.numel()} features for a weight with {flat.shape[1]} inputs")
    return (flat.square() / hd.square().unsqueeze(0)).reshape(w.shape)


@criterion(
    "fluctuation",
    "FLAP fluctuation Var(x_j) * w_ij^2: what replacing input j by its mean loses (An et al. 2024)",
    paper="Fluctuation-based Adaptive Structured Pruning for Large Language Models",
    needs=("act_norm", "act_mean"),
)
def fluctuation(s: ScoreInput) -> Tensor:
    """FLAP (An et al. 2024): input feature ``j`` of a layer varies over calibration rows by
    ``Var(x_j) = E[x_j^2] - E[x_j]^2``; replacing it by its mean (which a bias can add back) costs about
    ``Var(x_j) ||W_:,j||^2``. Per weight ``Var(x_j) w_ij^2``; summed over a unit of input columns it is FLAP's
    channel score."""
    n = max(s.stats.rows, 1)
    sq = s.require("act_norm", "fluctuation") / n
    mean = s.require("act_mean", "fluctuation") / n
    var = (sq - mean.square()).clamp_min(0)
    return s.per_input(var) * s.weight.float().square()


@criterion(
    "apoz",
    "1 - APoZ: the share of a channel's outputs that are positive (Hu et al. 2016)",
    paper="Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep Architectures",
    needs=("act_zeros",),
    levels=("channel",),
    row_native=True,
)
def apoz(s: ScoreInput) -> Tensor:
    """Network trimming (Hu et al. 2016): a channel whose outputs are mostly zero after the ReLU (a high
    Average Percentage of Zeros) carries little; the score is ``1 - APoZ`` (outputs ``<= 0`` count as zeros)."""
    nonpos = s.require("act_zeros", "apoz")
    return s.per_output(1.0 - nonpos / max(s.stats.out_rows, 1))


@criterion(
    "bn-scale",
    "|gamma| of the normalisation layer a channel feeds (network slimming, Liu et al. 2017)",
    paper="Learning Efficient Convolutional Networks through Network Slimming",
    needs=("bn_gamma",),
    levels=("channel",),
    row_native=True,
)
def bn_scale(s: ScoreInput) -> Tensor:
    """Network slimming (Liu et al. 2017): channel ``c`` scores ``|gamma_c|`` of the normalisation layer its
    output feeds directly. A layer that feeds none cannot be scored (``MissingDataError``)."""
    return s.per_output(s.require("bn_gamma", "bn-scale"))


register(
    Criterion(
        "influence",
        None,
        "block influence 1 - cos(x_in, x_out) of a whole block (ShortGPT, Men et al. 2024); layers only",
        paper="ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
        needs=frozenset(),
        levels=frozenset({"layer"}),
    )
)

#: the names of every built-in criterion (aliases left out)
BUILTIN = tuple(e.name for e in CRITERIA.entries() if e.obj.name == e.name)
