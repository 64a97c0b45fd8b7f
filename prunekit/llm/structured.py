"""Structured, physical pruning of causal LMs: attention heads, MLP channels, whole decoder layers.

* ``heads`` and ``mlp`` use FLAP's fluctuation criterion (An et al. 2024, "Fluctuation-based Adaptive
  Structured Pruning for Large Language Models"): an input channel ``j`` of the output projection (``o_proj``
  for heads, ``down_proj`` for the MLP) scores ``Var(x_j) * ||W_:,j||^2`` over the calibration tokens; a head
  scores the sum over its ``head_dim`` channels. Removed channels are replaced by their mean through the
  output projection's bias: ``b' = b + W_:,R E[x_R]`` (bias compensation), where the family can carry that
  bias in its config (LLaMA: ``mlp_bias`` / ``attention_bias``; Gemma-3: ``attention_bias``; OPT: always).
  Alternatively ``criterion="magnitude"`` scores a channel by the norm of its weights (no data needed).
* Grouped-query attention: query heads that share a key-value head form a group. Removal keeps the same
  number of groups and of query heads per group in every layer (``repeat_kv`` needs equal groups), choosing
  the combination whose share of removed attention parameters is closest to ``sparsity``; groups are ranked
  by the sum of their heads' scores, heads within a kept group by their own score.
* ``layers``: ShortGPT (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant Than
  You Expect"): Block Influence ``BI_i = 1 - E_t[cos(x_t^in, x_t^out)]`` of each decoder layer, measured on
  the dense model; the ``round(sparsity * L)`` layers with the lowest BI are removed (criterion
  ``"block-influence"``, the only one for layers).

The cutting itself is the structural engine's (:func:`prunekit.surgery.remove.remove_`: slice the
tensors, update the Linears' size attributes), through the helpers in :mod:`prunekit.llm.removal` (shared
with ``flap``, :mod:`prunekit.llm.flap`, which gives each layer its own widths); this module decides what to
cut and keeps the config in step.

Every layer loses the same number of heads / channels, so the pruned model is an ordinary config of its
family (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``, ``intermediate_size``,
``num_hidden_layers``, ``layer_types`` updated) that ``save_pretrained`` writes and plain
``from_pretrained`` reads back. Calibration runs layer by layer through :mod:`prunekit.llm.runner`, and each
layer is cut before its outputs are recomputed, so later layers are scored on the pruned model's activations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.calibration.families import Family, family_for
from prunekit.criteria import formulas as criteria
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    MissingDataError,
    NothingToPruneError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.llm.removal import (
    ChannelStats,
    bias_possible,
    canonical_weight,
    cut_heads_,
    cut_mlp_channels_,
    ensure_bias,
    head_shape,
    select_gqa_heads,
    set_if_present,
)
from prunekit.llm.runner import InputConsumer, LayerJob, LayerVisitor, run_layerwise
from prunekit.surgery.blocks import overlaps_ignored
from prunekit.surgery.hf import head_config_fields, own_config_, record_hf_structure

__all__ = [
    "CRITERIA",
    "LAYER_CRITERIA",
    "StructuredResult",
    "UNITS",
    "choose_gqa_shape",
    "prune_structured",
    "remove_layers_",
]

UNITS = ("heads", "mlp", "layers")
CRITERIA = ("fluctuation", "magnitude")  # of heads and MLP channels
LAYER_CRITERIA = ("block-influence",)  # of whole decoder layers


@dataclass
class StructuredResult:
    """What was removed: per unit kind, the kept indices per decoder layer (or the removed layers)."""

    unit: str
    params_before: int
    params_after: int
    kept: dict[int, dict[str, list[int]]] = field(default_factory=dict)
    removed_layers: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def removed_fraction(self) -> float:
        """The share of the model's parameters removed (0 for an empty model)."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def choose_gqa_shape(
    n_heads: int, n_kv: int, sparsity: float, allowed: Callable[[int, int], bool] | None = None
) -> tuple[int, int]:
    """(kept key-value groups, kept query heads per group) whose removed share of attention parameters
    (``q``, ``o`` scale with query heads; ``k``, ``v`` with key-value heads) is closest to ``sparsity``.

    ``allowed(heads, kv_heads)`` says which shapes the model's config can state (the dense shape always
    qualifies). Ties prefer keeping more key-value groups. Raises
    :class:`~prunekit.errors.UnsupportedModuleError` when ``n_heads`` is not a multiple of ``n_kv``.
    """
    if n_heads % n_kv:
        raise UnsupportedModuleError(f"{n_heads} query heads do not split into {n_kv} key-value groups")
    per_group = n_heads // n_kv
    dense = 2 * n_heads + 2 * n_kv
    ranked = []
    for groups in range(n_kv, 0, -1):
        for q in range(per_group, 0, -1):
            removed = 1.0 - (2 * groups * q + 2 * groups) / dense
            ranked.append((round(abs(removed - sparsity), 12), -groups, -q))
    for _, groups, q in sorted(ranked):
        if allowed is None or (-groups, -q) == (n_kv, per_group) or allowed(-groups * -q, -groups):
            return -groups, -q
    return n_kv, per_group


def _unit_projections(adapter: Family, unit: str) -> list[str]:
    """The projections (relative to a decoder layer) that ``unit`` ("heads" or "mlp") cuts."""
    if unit == "heads":
        attn = adapter.require_attention()
        return [attn.q, attn.k, attn.v, attn.o]
    mlp = adapter.require_mlp()
    return [*mlp.inputs, mlp.output]


def _unit_modules(adapter: Family, unit: str) -> list[str]:
    """What ``ignore=`` may name to keep ``unit`` of a layer: its projections and, for heads, the attention
    module holding them."""
    extra = [adapter.require_attention().module] if unit == "heads" else []
    return extra + _unit_projections(adapter, unit)


class _ChannelVisitor(LayerVisitor):
    """Scores MLP channels or heads of each layer from its output projection's inputs, then cuts them."""

    def __init__(
        self,
        model: nn.Module,
        adapter: Family,
        unit: str,
        sparsity: float,
        criterion: str,
        bias_compensation: bool,
        result: StructuredResult,
        ignored: list[str] | None = None,
    ):
        self.model = model
        self.ignored = list(ignored or [])
        self.kept_whole: list[str] = []  # layers whose unit ignore= names: left as they are
        self.adapter = adapter
        self.unit = unit
        self.criterion = criterion
        self.compensate = bias_compensation
        self.result = result
        self._stats: ChannelStats | None = None
        self._did_bias = False
        cfg = model.config
        if unit == "mlp":
            self.mlp = adapter.require_mlp()
            width = getattr(cfg, self.mlp.config_field, None)
            if width is None:  # a config that leaves the MLP width to its default (GPT-2's n_inner=None)
                width = _mlp_width(model, adapter, self.mlp)
            self.keep_count = width - round(sparsity * width)
            if self.keep_count < 1:
                raise InvalidSparsityError(f"sparsity {sparsity} would remove every MLP channel")
            if self.keep_count == width:
                self.compensate = False  # nothing removed: no bias to add back
            if self.keep_count == width and sparsity > 0:
                raise NothingToPruneError(
                    f"sparsity {sparsity:g} removes round({sparsity:g} x {width}) = 0 of the {width} MLP channels of "
                    f"each layer; the model is unchanged. Pass a sparsity above {0.5 / width:.2g}"
                )
        else:
            self.attn = adapter.require_attention()
            self.n_heads, self.n_kv, self.head_dim = head_shape(model, adapter, self.attn)
            checked: dict[tuple[int, int], bool] = {}

            def allowed(heads: int, kv: int) -> bool:
                if (heads, kv) not in checked:
                    checked[heads, kv] = head_config_fields(model, heads, kv, self.head_dim) is not None
                return checked[heads, kv]

            self.groups, self.per_group = choose_gqa_shape(self.n_heads, self.n_kv, sparsity, allowed)
            per_group = self.n_heads // self.n_kv
            if (self.groups, self.per_group) == (self.n_kv, per_group):
                self.compensate = False  # nothing removed: no bias to add back
            if (self.groups, self.per_group) == (self.n_kv, per_group) and sparsity > 0:
                dense = 2 * self.n_heads + 2 * self.n_kv
                shares = [
                    1.0 - (2 * g * q + 2 * g) / dense
                    for g in range(1, self.n_kv + 1)
                    for q in range(1, per_group + 1)
                    if (g, q) != (self.n_kv, per_group) and allowed(g * q, g)
                ]
                least = (
                    f"; the smallest sparsity that removes heads is just above {min(shares) / 2:.3g} (the smallest "
                    f"share the config can state is {min(shares):.3g})"
                    if shares
                    else ""
                )
                raise NothingToPruneError(
                    f"sparsity {sparsity:g} is closest to removing no attention head ({self.n_heads} query heads in "
                    f"{self.n_kv} key-value groups per layer, in shapes the config can state){least}; the model is "
                    "unchanged"
                )
            self.head_fields = head_config_fields(model, self.groups * self.per_group, self.groups, self.head_dim)

    @property
    def out_name(self) -> str:
        return self.mlp.output if self.unit == "mlp" else self.attn.o

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        if self.criterion != "fluctuation":
            return {}
        w = canonical_weight(job.layer.get_submodule(self.out_name))
        self._stats = ChannelStats(w.shape[1], w.device)
        return {self.out_name: self._stats.add}

    def _channel_scores(self, job: LayerJob) -> Tensor:
        w = canonical_weight(job.layer.get_submodule(self.out_name)).detach()
        if self.criterion == "fluctuation":
            assert self._stats is not None
            return criteria.fluctuation(self._stats.mean.float(), self._stats.sq_mean.float(), w)
        return w.float().pow(2).sum(0)

    def _ignored(self, job: LayerJob) -> bool:
        return any(
            overlaps_ignored(job.full_name(n), self.ignored) is not None for n in _unit_modules(self.adapter, self.unit)
        )

    def finish(self, job: LayerJob) -> None:
        if self.ignored and self._ignored(job):
            self.kept_whole.append(job.prefix)
            self._stats = None
            return
        scores = self._channel_scores(job)
        layer = job.layer
        out = layer.get_submodule(self.out_name)
        part = "mlp" if self.unit == "mlp" else "attention"
        do_bias = self.compensate and self.criterion == "fluctuation" and bias_possible(self.model, part, out)
        mean = None
        if do_bias:
            assert self._stats is not None
            mean = self._stats.mean
        if self.unit == "mlp":
            keep = torch.sort(torch.topk(scores, self.keep_count, sorted=False).indices).values
            kept = {"channels": keep.tolist()}
            removed_mask = torch.ones(scores.numel(), dtype=torch.bool)
            removed_mask[keep.cpu()] = False
            cut_mlp_channels_(layer, self.mlp, removed_mask.nonzero().flatten(), mean)
        else:
            head_scores = scores.reshape(self.n_heads, self.head_dim).sum(1)
            groups, heads = select_gqa_heads(head_scores, self.n_kv, self.groups, self.per_group)
            kept = {"kv_groups": groups, "heads": heads}
            cut_heads_(layer, self.attn, heads, groups, self.head_dim, mean)
        self.result.kept[job.index] = kept
        self._stats = None
        self._did_bias = do_bias

    def update_config(self) -> None:
        cfg = self.model.config
        if self.kept_whole:  # layers now differ: the new sizes are recorded (config.prunekit_structure) instead
            field_name = self.adapter.bias_field("mlp" if self.unit == "mlp" else "attention")
            if self._did_bias and field_name:
                setattr(cfg, field_name, True)
                # the config now gives every layer these biases: the kept layers get zero ones (exact)
                for prefix in self.kept_whole:
                    for name in _unit_projections(self.adapter, self.unit):
                        ensure_bias(self.model.get_submodule(f"{prefix}.{name}"))
            return
        if self.unit == "mlp":
            setattr(cfg, self.mlp.config_field, self.keep_count)
        elif self.head_fields is not None:
            for key, value in self.head_fields.items():
                setattr(cfg, key, value)
        if self._did_bias:
            field_name = self.adapter.bias_field("mlp" if self.unit == "mlp" else "attention")
            if field_name:
                setattr(cfg, field_name, True)


def _mlp_width(model: nn.Module, adapter: Family, mlp: Any) -> int:
    """The MLP width of the first decoder layer, read from its output projection's input dimension."""
    return int(canonical_weight(adapter.layer_list(model)[0].get_submodule(mlp.output)).shape[1])


class _InfluenceVisitor(LayerVisitor):
    """Read-only pass: ShortGPT's Block Influence of each layer."""

    modifies = False

    def __init__(self) -> None:
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def observe(self, job: LayerJob, inputs: Tensor, outputs: Tensor) -> None:
        bi = criteria.block_influence(inputs, outputs)
        self.sums[job.index] = self.sums.get(job.index, 0.0) + float(bi.double().sum())
        self.counts[job.index] = self.counts.get(job.index, 0) + bi.numel()

    def influence(self) -> list[float]:
        return [self.sums[i] / self.counts[i] for i in sorted(self.sums)]


def remove_layers_(model: nn.Module, drop: list[int]) -> None:
    """Physically delete decoder layers ``drop`` (indices) and renumber the rest (config, cache indices, layer
    types). Raises :class:`~prunekit.errors.InvalidSparsityError` when ``drop`` names every layer and
    :class:`~prunekit.errors.UnsupportedModuleError` for a model of no known causal-LM family."""
    own_config_(model)
    adapter = family_for(model)
    layers = adapter.layer_list(model)
    keep = [i for i in range(len(layers)) if i not in set(drop)]
    if not keep:
        raise InvalidSparsityError("cannot remove every decoder layer")
    new_layers = nn.ModuleList([layers[i] for i in keep])
    for new_idx, layer in enumerate(new_layers):
        for module in layer.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                set_if_present(module, "layer_idx", new_idx)
    adapter.set_layer_list(model, new_layers)
    cfg: Any = model.config
    cfg.num_hidden_layers = len(keep)
    layer_types = getattr(cfg, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        cfg.layer_types = [layer_types[i] for i in keep]


def prune_structured(
    model: nn.Module,
    unit: str,
    *,
    sparsity: float,
    calibration: Any = None,
    criterion: str | None = None,
    bias_compensation: bool | None = None,
    device: str | None = None,
    progress: bool | None = None,
    ignored: list[str] | None = None,
) -> StructuredResult:
    """Remove ``sparsity`` of the heads' / MLP's parameters, or of the decoder layers, physically and in place.

    ``criterion``: for heads and MLP channels one of :data:`CRITERIA` (default "fluctuation"), for layers
    one of :data:`LAYER_CRITERIA` (default "block-influence"). ``bias_compensation``: heads and MLP with the
    fluctuation criterion only (default True there). Raises :class:`~prunekit.errors.UnknownNameError` for
    an unknown unit or criterion (with the valid names), :class:`~prunekit.errors.ConfigError` for
    ``bias_compensation`` where it cannot apply, :class:`~prunekit.errors.InvalidSparsityError` for a
    sparsity outside [0, 1), before anything changes.

    ``ignored``: module names (``ignore=``): a decoder layer whose attention (heads), MLP (mlp) or whole
    self (layers) lies inside, equals or contains one of them is left as it is. The other layers still lose
    the same count, so the config then cannot state the widths: they are recorded in
    ``config.prunekit_structure`` (reload with :func:`prunekit.surgery.from_pretrained_pruned`).
    :class:`~prunekit.errors.NothingToPruneError` when ``ignored`` covers every layer.
    """
    if unit not in UNITS:
        raise UnknownNameError("structured unit", unit, UNITS)
    valid = LAYER_CRITERIA if unit == "layers" else CRITERIA
    criterion = valid[0] if criterion is None else criterion
    if criterion not in valid:
        raise UnknownNameError(f"criterion for removing {unit}", criterion, valid)
    if unit == "layers" and bias_compensation is not None:
        raise ConfigError("bias_compensation applies to heads and MLP channels; whole layers are removed without it")
    if criterion == "magnitude" and bias_compensation:
        raise ConfigError(
            "bias compensation adds back the removed channels' mean inputs, which only the fluctuation criterion "
            "measures; pass criterion='fluctuation', or bias_compensation=False with criterion='magnitude'"
        )
    bias_compensation = criterion == "fluctuation" if bias_compensation is None else bool(bias_compensation)
    if not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity!r}")
    adapter = family_for(model)
    ignored = list(ignored or [])
    layer_names = [f"{adapter.layers}.{i}" for i in range(len(adapter.layer_list(model)))]
    if ignored:
        words = {"layers": "decoder layer", "heads": "attention module", "mlp": "MLP"}[unit]
        if unit == "layers":
            covered = [overlaps_ignored(n, ignored) is not None for n in layer_names]
        else:
            parts = _unit_modules(adapter, unit)
            covered = [any(overlaps_ignored(f"{n}.{p}", ignored) is not None for p in parts) for n in layer_names]
        if all(covered):
            raise NothingToPruneError(
                f"ignore= covers every {words} of the model ({', '.join(ignored[:4])}), so llm-{unit} has nothing to "
                "remove; ignore fewer modules"
            )
    own_config_(model)  # the config may be shared with another model (a teacher); edit a copy
    result = StructuredResult(unit, _count(model), 0)
    if unit == "layers":
        n_layers = len(layer_names)
        if round(sparsity * n_layers) == 0 and sparsity > 0:
            raise NothingToPruneError(
                f"sparsity {sparsity:g} removes round({sparsity:g} x {n_layers}) = 0 of the {n_layers} decoder "
                f"layers; the model is unchanged. Pass a sparsity above {0.5 / n_layers:.2g}"
            )
        visitor = _InfluenceVisitor()
        run_layerwise(model, calibration, visitor, device=device, progress=progress, description="block influence")
        bi = visitor.influence()
        n_drop = round(sparsity * n_layers)
        candidates = [i for i in range(n_layers) if overlaps_ignored(layer_names[i], ignored) is None]
        if len(candidates) < n_layers:
            kept = ", ".join(n for n in layer_names if n not in [layer_names[i] for i in candidates])
            result.notes.append(
                f"{n_layers - len(candidates)} decoder layer(s) kept because ignore= names them or a "
                f"module inside them: {kept}"
            )
        if n_drop > len(candidates):
            raise NothingToPruneError(
                f"sparsity {sparsity:g} removes {n_drop} of {n_layers} decoder layers, but ignore= leaves only "
                f"{len(candidates)} removable; lower the sparsity or ignore fewer layers"
            )
        drop = sorted(sorted(candidates, key=lambda i: (bi[i], i))[:n_drop])
        remove_layers_(model, drop)
        result.removed_layers = drop
        result.scores = bi
        result.notes.append(f"Block Influence per layer: {', '.join(f'{b:.4f}' for b in bi)}; removed {drop}")
    else:
        if criterion == "fluctuation" and calibration is None:
            raise MissingDataError(
                "the fluctuation criterion needs calibration= token batches [batch, seq_len]; "
                "or pass criterion='magnitude' to rank by weight norms without data"
            )
        visitor_c = _ChannelVisitor(model, adapter, unit, sparsity, criterion, bias_compensation, result, ignored)
        if criterion == "fluctuation":
            run_layerwise(model, calibration, visitor_c, device=device, progress=progress, description=f"llm-{unit}")
        else:
            for i, layer in enumerate(adapter.layer_list(model)):
                visitor_c.finish(LayerJob(i, layer, f"{adapter.layers}.{i}", {}))
        visitor_c.update_config()
        if visitor_c.kept_whole:
            what = "attention heads" if unit == "heads" else "MLP channels"
            result.notes.append(
                f"{len(visitor_c.kept_whole)} decoder layer(s) keep their {what} "
                f"because ignore= names them: {', '.join(visitor_c.kept_whole[:8])}; layers now differ, so the "
                "sizes are recorded in config.prunekit_structure: reload with prunekit.surgery.from_pretrained_pruned"
            )
        if unit == "heads" and visitor_c.head_fields is None:
            result.notes.append(
                f"{type(model.config).__name__} cannot state {visitor_c.groups * visitor_c.per_group} heads of size "
                f"{visitor_c.head_dim}: the sizes are recorded; reload with prunekit.surgery.from_pretrained_pruned"
            )
        where = "in every layer not named by ignore=" if visitor_c.kept_whole else "in every layer"
        if unit == "heads":
            result.notes.append(
                f"kept {visitor_c.groups} of {visitor_c.n_kv} key-value groups x {visitor_c.per_group} of "
                f"{visitor_c.n_heads // visitor_c.n_kv} query heads {where}"
            )
        else:
            result.notes.append(f"kept {visitor_c.keep_count} MLP channels {where}")
        part = "mlp" if unit == "mlp" else "attention"
        if bias_compensation and criterion == "fluctuation" and not visitor_c._did_bias:
            config: Any = model.config
            result.notes.append(f"no bias compensation: {config.model_type} has no {part} output bias")
    record_hf_structure(model)  # what the config cannot state travels in config.prunekit_structure
    result.params_after = _count(model)
    result.notes.append(
        f"parameters {result.params_before} -> {result.params_after} ({100 * result.removed_fraction:.1f}% removed)"
    )
    return result
