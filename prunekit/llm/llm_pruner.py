"""LLM-Pruner: gradient-based structural pruning of causal LMs (Ma, Fang & Wang 2023, NeurIPS, "LLM-Pruner:
On the Structural Pruning of Large Language Models"), physical removal with the same widths in every layer.

1. Coupled structures (the paper's dependency groups), per decoder layer:

   * a key-value group of the attention: its rows of ``k_proj`` and ``v_proj`` and, for each query head
     that shares it, that head's rows of ``q_proj`` and columns of ``o_proj`` (with multi-head attention a
     group is one head); within a kept group, a query head is its ``q_proj`` rows and ``o_proj`` columns;
   * an MLP channel: its row of each input projection (``gate_proj``, ``up_proj``) and its column of the
     output projection (``down_proj``).

   Removing a structure's slices from every projection together keeps the layer computable.
2. Element-wise importance from the language-model loss ``L`` (next-token cross entropy, the mean over the
   calibration sequences of each sequence's mean over its predicted tokens; the paper uses about ten
   sequences): ``criterion="taylor"`` (default, the paper's first-order "element1") scores a weight
   ``|w * dL/dw|``; ``"taylor2"`` (the paper's "element2") adds the second-order term with the Hessian's
   diagonal approximated by the Fisher information, ``|w * dL/dw - 1/2 * w^2 * E_n[(dL_n/dw)^2]|``, with
   per-sequence gradients ``dL_n/dw`` (:func:`prunekit.criteria.formulas.loss_change`). Biases of the rows
   removed count like weights.
3. Group importance: each structure (one projection's slice) scores the sum of its elements' importance;
   ``aggregation`` combines a group's structures: ``"sum"`` (default), ``"max"``, ``"prod"`` (ranked by the
   sum of the logarithms: the same order, without overflow) or ``"last"`` (only the slice of the
   projection that runs last: the ``o_proj`` columns of a group's heads, the ``down_proj`` column of a
   channel).
4. Uniform structure (the paper's default): every pruned layer keeps the same attention shape (key-value
   groups x query heads per group, the shape closest to ``sparsity`` the config can state) and loses the
   same number of MLP channels, so that ``sparsity`` of the targeted parameters (the attention and MLP
   projections of the pruned layers) is removed as nearly as one MLP channel per layer allows
   (:func:`prunekit.llm.flap.uniform_plan`); each layer drops its lowest-scoring groups, heads and
   channels. With every layer pruned the config states the new sizes and stock ``from_pretrained`` reloads
   the model.
5. ``layers=(start, end)``: only decoder layers ``start <= i < end`` are pruned (the paper keeps the first
   few and the last layers whole, e.g. 4 to 30 of LLaMA-7B's 32); default all. ``sparsity`` is then of the
   pruned layers' projections, and the layers' widths differ, so they are recorded in
   ``config.prunekit_structure`` (reload with :func:`prunekit.surgery.from_pretrained_pruned`).

The gradient pass runs the whole model (forward and backward) on its own device, with float32 parameters (a
half-precision model is cast for the pass and back, which is exact), in eval mode; afterwards every
parameter's ``requires_grad``, ``.grad`` and dtype and every module's train / eval mode are as they were.
The paper then recovers the pruned model with LoRA: :func:`prunekit.llm.recover`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.calibration.families import MLP, Attention, Family, family_for
from prunekit.criteria import formulas as criteria
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    MissingDataError,
    NothingToPruneError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.layout import layer_weight
from prunekit.llm.flap import uniform_plan
from prunekit.llm.removal import cut_heads_, cut_mlp_channels_, head_shape, row_params, select_gqa_heads
from prunekit.llm.runner import as_batches, check_token_batches
from prunekit.padding import token_mask
from prunekit.progress import ProgressBar
from prunekit.surgery.blocks import overlaps_ignored
from prunekit.surgery.hf import own_config_, sync_hf_config

__all__ = [
    "AGGREGATIONS",
    "CRITERIA",
    "LLMPrunerResult",
    "LayerScores",
    "llm_pruner_scores",
    "prune_llm_pruner",
]

#: element-wise importance: first-order Taylor, or first plus the Fisher-approximated second order
CRITERIA = ("taylor", "taylor2")
#: how a group's structures' importances combine
AGGREGATIONS = ("sum", "max", "prod", "last")


@dataclass
class LayerScores:
    """One decoder layer's group importance (float64, higher is kept). ``heads``: [query heads], each head's
    ``q_proj`` rows and ``o_proj`` columns; ``groups``: [key-value heads], each group's ``k_proj`` / ``v_proj``
    rows with all its heads; ``channels``: [MLP width]. None where the layer's part is not pruned."""

    heads: Tensor | None
    groups: Tensor | None
    channels: Tensor | None


@dataclass
class LLMPrunerResult:
    """What :func:`prune_llm_pruner` removed.

    ``targeted_params``: parameters of the pruned layers' attention and MLP projections (weights, and the
    biases of the rows that can go); ``target_params``: ``round(sparsity * targeted_params)``;
    ``removed_params``: what went. ``heads`` / ``kv_heads`` / ``mlp_widths``: per decoder layer, after;
    ``kept_heads`` / ``kept_channels``: per decoder layer, the original indices kept (ascending); ``scores``:
    per decoder layer, the group importance the choice was made on.
    """

    criterion: str
    aggregation: str
    params_before: int
    params_after: int
    targeted_params: int
    target_params: int
    removed_params: int
    heads: list[int] = field(default_factory=list)
    kv_heads: list[int] = field(default_factory=list)
    mlp_widths: list[int] = field(default_factory=list)
    kept_heads: list[list[int]] = field(default_factory=list)
    kept_channels: list[list[int]] = field(default_factory=list)
    scores: list[LayerScores] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def removed_share(self) -> float:
        """The share of the targeted parameters removed (the achieved sparsity)."""
        return self.removed_params / self.targeted_params if self.targeted_params else 0.0


def _check_names(criterion: str, aggregation: str) -> None:
    if criterion not in CRITERIA:
        raise UnknownNameError(
            "llm-pruner criterion (element-wise Taylor importance: 'taylor' first order, 'taylor2' first "
            "plus second order)",
            criterion,
            CRITERIA,
        )
    if aggregation not in AGGREGATIONS:
        raise UnknownNameError("llm-pruner aggregation", aggregation, AGGREGATIONS)


def _parts(adapter: Family) -> tuple[Attention, MLP]:
    attn, mlp = adapter.attention, adapter.require_mlp()
    if attn is None:
        raise UnsupportedModuleError(
            f"llm-pruner cannot cut the attention of {adapter.family} models by name (fused projections); use "
            "the 'head' method with llm-mlp, or an unstructured method"
        )
    if mlp.fused:
        raise UnsupportedModuleError(f"llm-pruner cannot cut the fused MLP projection of {adapter.family} models")
    return attn, mlp


def _layer_range(layers: Sequence[int] | None, n_layers: int) -> range:
    if layers is None:
        return range(n_layers)
    if (
        isinstance(layers, (str, bytes))
        or len(layers) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers)
    ):
        raise ConfigError(f"layers= takes (start, end), two decoder-layer indices, not {layers!r}")
    start, end = int(layers[0]), int(layers[1])
    if not 0 <= start < end <= n_layers:
        raise ConfigError(
            f"layers=({start}, {end}) must satisfy 0 <= start < end <= {n_layers} (the model's decoder layers); "
            f"the layers start <= i < end are pruned"
        )
    return range(start, end)


def _pruned_parts(
    model: nn.Module, adapter: Family, layers: Sequence[int] | None, ignored: Sequence[str]
) -> tuple[list[bool], list[bool]]:
    """Per decoder layer: whether its attention / its MLP is pruned (in ``layers``, not named by ``ignore=``)."""
    attn, mlp = _parts(adapter)
    n_layers = len(adapter.layer_list(model))
    chosen = _layer_range(layers, n_layers)
    names = [f"{adapter.layers}.{i}" for i in range(n_layers)]

    def free(prefix: str, parts: list[str]) -> bool:
        return all(overlaps_ignored(f"{prefix}.{p}", list(ignored)) is None for p in parts)

    heads_on = [i in chosen and free(n, [attn.module, attn.q, attn.k, attn.v, attn.o]) for i, n in enumerate(names)]
    mlp_on = [i in chosen and free(n, [*mlp.inputs, mlp.output]) for i, n in enumerate(names)]
    return heads_on, mlp_on


def _linear_params(layer: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    """``{"<name>.weight": ..., "<name>.bias": ...}`` of the projections ``names``; their weights must be
    plain parameters (a parametrized or quantized weight has no gradient of its own)."""
    found: dict[str, nn.Parameter] = {}
    for name in names:
        module = layer.get_submodule(name)
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not weight.is_floating_point():
            raise UnsupportedModuleError(
                f"llm-pruner needs the gradient of {name}'s weight, which is not a floating-point parameter "
                f"({type(weight).__name__}); remove masks or parametrizations, or dequantize, first"
            )
        found[f"{name}.weight"] = weight
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            found[f"{name}.bias"] = bias
    return found


def _sequence_losses(model: nn.Module, batch: dict[str, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    """Per sequence of ``batch``: its mean next-token cross entropy over predicted real tokens, [B], and
    whether it has any such token, [B] bool."""
    ids = batch["input_ids"].to(device)
    mask = batch.get("attention_mask")
    kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": False}
    if mask is not None:
        mask = mask.to(device)
        kwargs["attention_mask"] = mask
    logits = model(**kwargs).logits.float()
    real = token_mask(ids, mask)
    if real is None:  # no padding
        real = torch.ones_like(ids, dtype=torch.bool)
    valid = (real[:, 1:] & real[:, :-1]).float()
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    counts = valid.sum(1)
    per_seq = (ce.view_as(valid) * valid).sum(1) / counts.clamp_min(1)
    return per_seq, counts > 0


def _gradients(
    model: nn.Module,
    calibration: Any,
    params: dict[str, nn.Parameter],
    second_order: bool,
    progress: bool | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
    """``dL/dw`` of every tensor in ``params`` (``L``: the mean over sequences of their mean next-token cross
    entropy) and, with ``second_order``, ``E_n[(dL_n/dw)^2]`` over sequences ``n``. float32, on the
    parameters' devices. Leaves the model as it found it (requires_grad, .grad, dtypes, train / eval)."""
    batches = as_batches(calibration)
    check_token_batches(model, batches)
    if second_order:  # per-sequence gradients: one sequence at a time
        batches = [
            {k: v[r : r + 1] for k, v in b.items()} for b in batches for r in range(int(b["input_ids"].shape[0]))
        ]
    names, tensors = list(params), list(params.values())
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    cast = [(t, t.dtype) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]
    cast = [(t, d) for t, d in cast if d != torch.float32]
    device = next(model.parameters()).device
    grad_sum = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in tensors]
    fisher = [torch.zeros_like(g) for g in grad_sum] if second_order else None
    n_seq = 0
    try:
        for t, _ in cast:
            t.data = t.data.float()
        for p, _ in flags:
            p.requires_grad_(False)
        for p in tensors:
            p.requires_grad_(True)
        model.eval()
        with torch.enable_grad(), ProgressBar("llm-pruner gradients", len(batches), enabled=progress) as bar:
            for batch in batches:
                losses, has = _sequence_losses(model, batch, device)
                bar.advance()
                if not bool(has.any()):
                    continue
                n_seq += int(has.sum())
                grads = torch.autograd.grad(losses[has].sum(), tensors, allow_unused=True)
                for i, g in enumerate(grads):
                    if g is None:
                        continue
                    grad_sum[i] += g.float()
                    if fisher is not None:
                        fisher[i] += g.float().pow(2)
    finally:
        for t, dtype in cast:
            t.data = t.data.to(dtype)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, training in modes:
            m.training = training
    if n_seq == 0:
        raise MissingDataError(
            "llm-pruner scores by the language-model loss, which needs calibration sequences of at least two "
            "real tokens; pass longer calibration= token batches [batch, seq_len]"
        )
    grad = {n: g / n_seq for n, g in zip(names, grad_sum)}
    return grad, None if fisher is None else {n: f / n_seq for n, f in zip(names, fisher)}


def _aggregate(structures: Tensor, aggregation: str) -> Tensor:
    """Combine structure importances along the last dim ([..., structures] -> [...]), in execution order."""
    if aggregation == "sum":
        return structures.sum(-1)
    if aggregation == "max":
        return structures.max(-1).values
    if aggregation == "prod":
        return structures.log().sum(-1)
    return structures[..., -1]


def _layer_scores(
    importance: dict[str, Tensor],
    attn: Attention,
    mlp: MLP,
    shape: tuple[int, int, int],
    heads_on: bool,
    mlp_on: bool,
    aggregation: str,
) -> LayerScores:
    """Group importance of one layer from its projections' element importance (keys ``"<name>.weight"``,
    ``"<name>.bias"``)."""

    def rows(name: str) -> Tensor:
        r = importance[f"{name}.weight"].double().sum(1)
        bias = importance.get(f"{name}.bias")
        return r if bias is None else r + bias.double()

    def columns(name: str) -> Tensor:
        return importance[f"{name}.weight"].double().sum(0)

    heads = groups = channels = None
    if heads_on:
        n_heads, n_kv, head_dim = shape
        per = n_heads // n_kv
        q = rows(attn.q).reshape(n_heads, head_dim).sum(1)
        o = columns(attn.o).reshape(n_heads, head_dim).sum(1)
        k = rows(attn.k).reshape(n_kv, head_dim).sum(1)
        v = rows(attn.v).reshape(n_kv, head_dim).sum(1)
        heads = _aggregate(torch.stack([q, o], -1), aggregation)
        if aggregation == "last":  # the o_proj columns of the group's heads
            groups = o.reshape(n_kv, per).sum(1)
        else:
            groups = _aggregate(
                torch.cat([q.reshape(n_kv, per), k[:, None], v[:, None], o.reshape(n_kv, per)], 1), aggregation
            )
    if mlp_on:
        channels = _aggregate(torch.stack([*(rows(n) for n in mlp.inputs), columns(mlp.output)], -1), aggregation)
    return LayerScores(heads, groups, channels)


def llm_pruner_scores(
    model: nn.Module,
    calibration: Any,
    *,
    criterion: str = "taylor",
    aggregation: str = "sum",
    layers: Sequence[int] | None = None,
    ignored: Sequence[str] | None = None,
    progress: bool | None = None,
) -> list[LayerScores]:
    """LLM-Pruner's group importance of every decoder layer's key-value groups, query heads and MLP channels
    (module docstring), without changing the model.

    ``calibration``: token batches [batch, seq_len] (see :func:`prunekit.llm.runner.as_batches`);
    ``criterion``: one of :data:`CRITERIA`; ``aggregation``: one of :data:`AGGREGATIONS`; ``layers``:
    (start, end) of the decoder layers scored (default all); ``ignored``: module names whose layers' attention
    or MLP are not scored; ``progress``: a bar over the calibration batches (None: on a terminal). Returns
    one :class:`LayerScores` per decoder layer (None fields where not scored).

    Raises :class:`~prunekit.errors.UnknownNameError` for another criterion or aggregation,
    :class:`~prunekit.errors.ConfigError` for a bad ``layers``, :class:`~prunekit.errors.MissingDataError`
    without calibration, :class:`~prunekit.errors.UnsupportedModuleError` for fused projections, layers whose
    heads already differ or weights that are not plain parameters.
    """
    _check_names(criterion, aggregation)
    if calibration is None:
        raise MissingDataError(
            "llm-pruner scores weights by the gradient of the language-model loss on calibration= token batches "
            "[batch, seq_len] (the paper uses about ten sequences)"
        )
    adapter = family_for(model)
    attn, mlp = _parts(adapter)
    shape = head_shape(model, adapter, attn, "llm-pruner")
    heads_on, mlp_on = _pruned_parts(model, adapter, layers, list(ignored or []))
    return _scores(model, adapter, calibration, criterion, aggregation, shape, heads_on, mlp_on, progress)


def _scores(
    model: nn.Module,
    adapter: Family,
    calibration: Any,
    criterion: str,
    aggregation: str,
    shape: tuple[int, int, int],
    heads_on: list[bool],
    mlp_on: list[bool],
    progress: bool | None = None,
) -> list[LayerScores]:
    attn, mlp = _parts(adapter)
    decoder = list(adapter.layer_list(model))
    params: dict[str, nn.Parameter] = {}
    for i, layer in enumerate(decoder):
        names = ([attn.q, attn.k, attn.v, attn.o] if heads_on[i] else []) + (
            [*mlp.inputs, mlp.output] if mlp_on[i] else []
        )
        params.update({f"{i}.{k}": p for k, p in _linear_params(layer, names).items()})
    grad, fisher = _gradients(model, calibration, params, criterion == "taylor2", progress)
    out = []
    for i in range(len(decoder)):
        prefix = f"{i}."
        importance = {
            key[len(prefix) :]: criteria.loss_change(
                p.detach(), grad[key], None if fisher is None else fisher[key]
            ).cpu()
            for key, p in params.items()
            if key.startswith(prefix)
        }
        out.append(_layer_scores(importance, attn, mlp, shape, heads_on[i], mlp_on[i], aggregation))
    return out


def prune_llm_pruner(
    model: nn.Module,
    *,
    sparsity: float,
    calibration: Any,
    criterion: str = "taylor",
    aggregation: str = "sum",
    layers: Sequence[int] | None = None,
    ignored: Sequence[str] | None = None,
    progress: bool | None = None,
) -> LLMPrunerResult:
    """Remove ``sparsity`` (a fraction in [0, 1)) of the pruned decoder layers' attention and MLP parameters
    with LLM-Pruner (module docstring), physically and in place; every pruned layer keeps the same widths.

    ``calibration``: token batches [batch, seq_len]; ``criterion``: one of :data:`CRITERIA` (default
    "taylor"); ``aggregation``: one of :data:`AGGREGATIONS` (default "sum"); ``layers``: (start, end), the
    decoder layers ``start <= i < end`` pruned (default all); ``ignored``: module names (``ignore=``) whose
    layers' attention or MLP are left whole and not counted; ``progress``: a bar over the calibration batches
    (None: on a terminal). Recover afterwards with
    :func:`prunekit.llm.recover` (LoRA, as the paper does).

    Raises, before anything changes: :class:`~prunekit.errors.UnknownNameError` for another criterion or
    aggregation; :class:`~prunekit.errors.InvalidSparsityError` for a sparsity outside [0, 1) or one that
    would empty the MLP; :class:`~prunekit.errors.ConfigError` for a bad ``layers``;
    :class:`~prunekit.errors.MissingDataError` without calibration;
    :class:`~prunekit.errors.UnsupportedModuleError` for fused projections, layers that already differ, or
    weights that are not plain parameters; :class:`~prunekit.errors.NothingToPruneError` when ``layers`` and
    ``ignored`` leave nothing to prune.
    """
    _check_names(criterion, aggregation)
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if calibration is None:
        raise MissingDataError(
            "llm-pruner scores weights by the gradient of the language-model loss on calibration= token batches "
            "[batch, seq_len] (the paper uses about ten sequences)"
        )
    adapter = family_for(model)
    attn, mlp = _parts(adapter)
    n_heads, n_kv, head_dim = head_shape(model, adapter, attn, "llm-pruner")
    per = n_heads // n_kv
    decoder = list(adapter.layer_list(model))
    heads_on, mlp_on = _pruned_parts(model, adapter, layers, list(ignored or []))
    if not any(heads_on) and not any(mlp_on):
        raise NothingToPruneError(
            "layers= and ignore= leave no decoder layer's attention or MLP to prune: llm-pruner has nothing to remove"
        )
    for i, layer in enumerate(decoder):  # weights without gradients are refused before the plan
        _linear_params(layer, ([attn.q, attn.k, attn.v, attn.o] if heads_on[i] else []))
        _linear_params(layer, ([*mlp.inputs, mlp.output] if mlp_on[i] else []))
    q_head = [
        head_dim * (row_params(ly.get_submodule(attn.q)) + layer_weight(ly.get_submodule(attn.o)).shape[0])
        for ly in decoder
    ]
    kv_head = [
        head_dim * (row_params(ly.get_submodule(attn.k)) + row_params(ly.get_submodule(attn.v))) for ly in decoder
    ]
    widths = [int(layer_weight(ly.get_submodule(mlp.output)).shape[1]) for ly in decoder]
    channel_params = [
        sum(row_params(ly.get_submodule(n)) for n in mlp.inputs)
        + int(layer_weight(ly.get_submodule(mlp.output)).shape[0])
        for ly in decoder
    ]
    targeted = sum(n_heads * q + n_kv * kv for q, kv, on in zip(q_head, kv_head, heads_on) if on)
    targeted += sum(w * c for w, c, on in zip(widths, channel_params, mlp_on) if on)
    target = round(sparsity * targeted)
    (groups_kept, per_kept), mlp_count = uniform_plan(
        model,
        sparsity,
        target,
        (n_heads, n_kv, head_dim),
        heads_on,
        mlp_on,
        q_head,
        kv_head,
        widths,
        channel_params,
    )
    shape = (n_heads, n_kv, head_dim)
    scores = _scores(model, adapter, calibration, criterion, aggregation, shape, heads_on, mlp_on, progress)
    own_config_(model)  # the config may be shared with another model (a teacher); edit a copy
    params_before = sum(p.numel() for p in model.parameters())
    removed_params = 0
    kept_heads: list[list[int]] = []
    kept_channels: list[list[int]] = []
    for i, layer in enumerate(decoder):
        heads, channels = list(range(n_heads)), list(range(widths[i]))
        s = scores[i]
        if heads_on[i] and (groups_kept, per_kept) != (n_kv, per):
            assert s.heads is not None and s.groups is not None
            kept_groups, heads = select_gqa_heads(s.heads, n_kv, groups_kept, per_kept, s.groups)
            cut_heads_(layer, attn, heads, kept_groups, head_dim)
            removed_params += (n_heads - len(heads)) * q_head[i] + (n_kv - len(kept_groups)) * kv_head[i]
        if mlp_on[i] and mlp_count:
            assert s.channels is not None
            keep = torch.topk(s.channels, widths[i] - mlp_count, sorted=False).indices
            gone_mask = torch.ones(widths[i], dtype=torch.bool)
            gone_mask[keep] = False
            cut_mlp_channels_(layer, mlp, gone_mask.nonzero().flatten())
            channels = (~gone_mask).nonzero().flatten().tolist()
            removed_params += mlp_count * channel_params[i]
        kept_heads.append(heads)
        kept_channels.append(channels)
    sync_hf_config(model)  # stock sizes where the widths are uniform, else config.prunekit_structure
    result = LLMPrunerResult(
        criterion=criterion,
        aggregation=aggregation,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        targeted_params=targeted,
        target_params=target,
        removed_params=removed_params,
        heads=[layer_weight(ly.get_submodule(attn.q)).shape[0] // head_dim for ly in decoder],
        kv_heads=[layer_weight(ly.get_submodule(attn.k)).shape[0] // head_dim for ly in decoder],
        mlp_widths=[int(layer_weight(ly.get_submodule(mlp.output)).shape[1]) for ly in decoder],
        kept_heads=kept_heads,
        kept_channels=kept_channels,
        scores=scores,
    )
    pruned = [i for i in range(len(decoder)) if heads_on[i] or mlp_on[i]]
    result.notes = [
        f"llm-pruner ({criterion}, {aggregation}): removed {removed_params} of {targeted} attention and MLP "
        f"parameters ({100 * result.removed_share:.2f}%, target {target}) in decoder layers {_spans(pruned)}"
    ]
    if any(heads_on):
        result.notes.append(
            f"kept {groups_kept} of {n_kv} key-value groups x {per_kept} of {per} query heads in every pruned attention"
        )
    if any(mlp_on):
        width = widths[mlp_on.index(True)]
        result.notes.append(f"kept {width - mlp_count} of {width} MLP channels in every pruned MLP")
    if getattr(model.config, "prunekit_structure", None):
        result.notes.append(
            "the layers' widths differ (layers= or ignore= kept some whole), so they are recorded in "
            "config.prunekit_structure: reload with prunekit.surgery.from_pretrained_pruned"
        )
    result.notes.append(f"parameters {result.params_before} -> {result.params_after}")
    return result


def _spans(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    spans: list[str] = []
    start = prev = None
    for i in [*indices, None]:
        if i is not None and prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            spans.append(f"{start}-{prev}" if prev != start else f"{start}")
        start = prev = i
    return ", ".join(spans)
