"""Removing attention heads and MLP channels of one decoder layer, with FLAP's bias compensation.

The parts the structured language-model methods share (``llm-heads`` / ``llm-mlp`` in
:mod:`prunekit.llm.structured`, ``flap`` in :mod:`prunekit.llm.flap`): running channel statistics of an
output projection's inputs, the choice of heads under grouped-query attention, and the cut itself. The
cutting is the structural engine's (:func:`prunekit.surgery.remove.remove_`: slice the tensors, update the
Linears' size attributes); these helpers decide the indices, add the zero biases that compensation needs
and keep the modules' size attributes in step.

Bias compensation (An et al. 2024, "Fluctuation-based Adaptive Structured Pruning for Large Language
Models"): removed input channels ``R`` of an output projection are replaced by their calibration mean,
``b' = b + W[:, R] @ E[x_R]``, so a token whose removed channels sit at their mean gets exactly the dense
output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.calibration.families import MLP, Attention, Family, family_for
from prunekit.errors import UnsupportedModuleError
from prunekit.layout import layer_weight, weight_layout
from prunekit.surgery.remove import remove_

__all__ = [
    "ChannelStats",
    "bias_possible",
    "canonical_weight",
    "cut_heads_",
    "cut_mlp_channels_",
    "ensure_bias",
    "head_shape",
    "row_params",
    "select_gqa_heads",
    "set_if_present",
]


class ChannelStats:
    """Running E[x_j] and E[x_j^2] of a Linear's input channels (float64)."""

    def __init__(self, width: int, device: torch.device):
        self.sum = torch.zeros(width, dtype=torch.float64, device=device)
        self.sq = torch.zeros(width, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: Tensor) -> None:
        """Add a batch of inputs ``x`` [..., width] (any leading shape)."""
        x2 = x.reshape(-1, x.shape[-1]).double()
        self.sum += x2.sum(0)
        self.sq += x2.pow(2).sum(0)
        self.n += x2.shape[0]

    @property
    def mean(self) -> Tensor:
        """E[x_j], [width] float64 (zeros before any input)."""
        return self.sum / max(self.n, 1)

    @property
    def sq_mean(self) -> Tensor:
        """E[x_j^2], [width] float64."""
        return self.sq / max(self.n, 1)


def ensure_bias(linear: nn.Module) -> nn.Module:
    """Give a bias-free Linear a zero bias (so that bias compensation has somewhere to go); a projection that
    has a bias already (a Linear or transformers' Conv1D) is returned as it is. Raises
    :class:`~prunekit.errors.UnsupportedModuleError` for a bias-free projection that is not an ``nn.Linear``."""
    if getattr(linear, "bias", None) is not None and weight_layout(linear) is not None:
        return linear
    if not isinstance(linear, nn.Linear):
        raise UnsupportedModuleError(f"bias compensation handles nn.Linear only, not {type(linear).__name__}")
    w = linear.weight
    linear.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
    return linear


def canonical_weight(module: nn.Module) -> Tensor:
    """``module``'s weight as ``[out, in]`` (an ``nn.Linear``'s as stored, a transformers Conv1D's transposed)."""
    layout = weight_layout(module)
    if layout is None:
        raise UnsupportedModuleError(f"{type(module).__name__} is not a Linear or Conv1D projection")
    return layout.to_canonical(layer_weight(module))


def _drop(layer: nn.Module, removal: dict[str, dict[int, np.ndarray]], name: str, dim: int, index: Tensor) -> None:
    """Add "remove ``index`` along ``dim`` of ``name``'s weight" (and of its bias for output rows) to a plan.
    ``dim``: 0 output rows, 1 input columns, whichever axes the layer stores them on."""
    module = layer.get_submodule(name)
    layout = weight_layout(module)
    if layout is None:
        raise UnsupportedModuleError(f"{name} is a {type(module).__name__}, not a Linear or Conv1D projection")
    removal[f"{name}.weight"] = {layout.out_axis if dim == 0 else layout.in_axis: index.cpu().numpy()}
    if dim == 0 and getattr(module, "bias", None) is not None:
        removal[f"{name}.bias"] = {0: index.cpu().numpy()}


def _compensate(out_proj: nn.Module, removed: Tensor, mean: Tensor) -> None:
    """FLAP bias compensation: ``b += W[:, removed] @ E[x_removed]`` (before the columns are cut; ``W`` as
    ``[out, in]``).

    The sum becomes a new parameter: the old bias may be shared with another model and stays as it was.
    """
    if removed.numel() == 0:
        return
    w = canonical_weight(out_proj).detach()
    delta = w[:, removed].double() @ mean[removed].to(w.device)
    old = layer_weight(out_proj, "bias")
    out_proj.bias = nn.Parameter(old.detach() + delta.to(old.dtype), requires_grad=old.requires_grad)


def set_if_present(module: nn.Module, attr: str, value: int) -> None:
    """``module.<attr> = value`` when ``module`` has that attribute (a size a Hugging Face module keeps)."""
    if hasattr(module, attr):
        setattr(module, attr, value)


def bias_possible(model: nn.Module, part: str, out_proj: nn.Module) -> bool:
    """Whether bias compensation can act on ``out_proj`` (``part``: "attention" or "mlp"): it has a bias
    already, or the family's config can give every layer one (``attention_bias`` / ``mlp_bias``)."""
    if getattr(out_proj, "bias", None) is not None:
        return True
    return family_for(model).bias_field(part) is not None


def row_params(module: nn.Module) -> int:
    """Parameters one output row of a Linear (or Conv1D) carries (its inputs, plus one for a bias)."""
    return int(canonical_weight(module).shape[1]) + (1 if getattr(module, "bias", None) is not None else 0)


def select_gqa_heads(
    head_scores: Tensor, n_kv: int, groups: int, per_group: int, group_scores: Tensor | None = None
) -> tuple[list[int], list[int]]:
    """(kept key-value groups, kept query heads) of one layer: the ``groups`` groups with the highest score,
    and in each the ``per_group`` best heads. ``head_scores``: [query heads]; ``group_scores``: [n_kv], the
    groups' own scores (default: the sum of their heads' scores). Returns ascending indices."""
    per = head_scores.numel() // n_kv
    if group_scores is None:
        group_scores = head_scores.reshape(n_kv, per).sum(1)
    kept_groups = torch.sort(torch.topk(group_scores, groups, sorted=False).indices).values.tolist()
    heads: list[int] = []
    for g in kept_groups:
        top = torch.topk(head_scores[g * per : (g + 1) * per], per_group, sorted=False).indices
        heads += [g * per + int(h) for h in torch.sort(top).values]
    return kept_groups, heads


def _complement(keep: Tensor, width: int) -> Tensor:
    mask = torch.ones(width, dtype=torch.bool)
    mask[keep] = False
    return mask.nonzero().flatten()


def cut_mlp_channels_(layer: nn.Module, mlp: MLP, removed: Tensor, mean: Tensor | None = None) -> None:
    """Physically remove the intermediate channels ``removed`` (indices, [k]) of one decoder layer's MLP:
    rows of its input projections, columns of its output projection.

    ``mean``: E[x] of the output projection's inputs ([width], float64) for FLAP's bias compensation
    (``b += W[:, removed] @ mean[removed]``; the input projections get zero biases so that the family's
    ``mlp_bias`` can state the layer); None removes without compensation. Raises
    :class:`~prunekit.errors.UnsupportedModuleError` when compensation meets a projection that is not an
    ``nn.Linear``.
    """
    out = layer.get_submodule(mlp.output)
    if mean is not None:
        _compensate(ensure_bias(out), removed.to(layer_weight(out).device), mean)
        for name in mlp.inputs:
            ensure_bias(layer.get_submodule(name))
    removal: dict[str, dict[int, np.ndarray]] = {}
    _drop(layer, removal, mlp.output, 1, removed)
    for name in mlp.inputs:
        _drop(layer, removal, name, 0, removed)
    remove_(layer, removal)
    mlp_module = layer.get_submodule(mlp.output.rpartition(".")[0]) if "." in mlp.output else layer
    set_if_present(mlp_module, "intermediate_size", int(canonical_weight(out).shape[1]))


def cut_heads_(
    layer: nn.Module,
    attn: Attention,
    heads: list[int],
    groups: list[int],
    head_dim: int,
    mean: Tensor | None = None,
) -> None:
    """Physically keep only query heads ``heads`` and key-value groups ``groups`` (ascending indices) of one
    decoder layer: rows of the query / key / value projections, columns of the output projection; the
    attention module's head counts follow. Every kept group must keep the same number of query heads (the
    caller's choice, e.g. :func:`select_gqa_heads`).

    ``mean``: E[x] of the output projection's inputs ([query heads * head_dim], float64) for FLAP's bias
    compensation (the query / key / value projections get zero biases so that ``attention_bias`` can state
    the layer); None removes without compensation.
    """
    out = layer.get_submodule(attn.o)
    n_q = layer_weight(layer.get_submodule(attn.q)).shape[0]
    n_kv = layer_weight(layer.get_submodule(attn.k)).shape[0]
    q_rows = torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])
    kv_rows = torch.cat([torch.arange(g * head_dim, (g + 1) * head_dim) for g in groups])
    removed, kv_removed = _complement(q_rows, n_q), _complement(kv_rows, n_kv)
    if mean is not None:
        _compensate(ensure_bias(out), removed.to(layer_weight(out).device), mean)
        for name in (attn.q, attn.k, attn.v):
            ensure_bias(layer.get_submodule(name))
    removal: dict[str, dict[int, np.ndarray]] = {}
    _drop(layer, removal, attn.o, 1, removed)
    _drop(layer, removal, attn.q, 0, removed)
    _drop(layer, removal, attn.k, 0, kv_removed)
    _drop(layer, removal, attn.v, 0, kv_removed)
    remove_(layer, removal)
    module = layer.get_submodule(attn.module)
    set_if_present(module, "num_key_value_groups", len(heads) // len(groups))
    for attr, value in (("num_heads", len(heads)), ("num_key_value_heads", len(groups))):
        set_if_present(module, attr, value)


def head_shape(model: nn.Module, adapter: Family, attn: Attention, method: str = "llm-heads") -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of the decoder layers, read from their projections; every
    layer must have the same, else :class:`UnsupportedModuleError` naming ``method`` (before anything changes)."""
    cfg: Any = model.config  # a Hugging Face config: its fields depend on the family
    shapes = set()
    for layer in adapter.layer_list(model):
        module = layer.get_submodule(attn.module)
        head_dim = int(getattr(module, "head_dim", 0) or getattr(cfg, "head_dim", 0) or 0)
        if not head_dim:
            head_dim = cfg.hidden_size // cfg.num_attention_heads
        q = layer_weight(layer.get_submodule(attn.q)).shape[0]
        k = layer_weight(layer.get_submodule(attn.k)).shape[0]
        if q % head_dim or k % head_dim:
            raise UnsupportedModuleError(
                f"{attn.q} has {q} rows, which is not a whole number of heads of size {head_dim}"
            )
        shapes.add((q // head_dim, k // head_dim, head_dim))
    if len(shapes) != 1:
        raise UnsupportedModuleError(
            f"{method} needs the same heads in every layer to start from, but the decoder layers already differ "
            f"({sorted(shapes)}); prune heads with the 'head' method instead, or start from the dense model"
        )
    return shapes.pop()
