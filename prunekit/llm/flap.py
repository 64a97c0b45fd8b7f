"""FLAP: fluctuation-based adaptive structured pruning of causal LMs (An et al. 2024, AAAI, "Fluctuation-based
Adaptive Structured Pruning for Large Language Models"), physical removal with per-layer widths.

1. Statistics: one read-only pass over the dense model (:func:`prunekit.llm.runner.run_layerwise`) gathers
   E[x] and E[x^2] of the inputs of every decoder layer's attention output projection and MLP output
   projection, over the calibration tokens.
2. Fluctuation: input channel ``j`` of an output projection scores ``S_j = Var(x_j) * ||W_:,j||^2``
   (:func:`prunekit.criteria.formulas.fluctuation`). An MLP channel is one unit. The attention unit is a
   key-value group: its key / value head and the query heads that share it (with multi-head attention,
   a single head), scoring the sum over its query heads' channels. Removing whole groups keeps the same
   number of query heads per key-value head in every layer, which grouped-query attention needs.
3. Standardisation, ``Z = (S - E[S]) / sqrt(E[(S - E[S])^2])`` (the population standard deviation; all-equal
   scores give 0), so that scores of different layers and kinds, whose magnitudes differ, can be compared.
   Two readings (:func:`flap_scores`): ``standardization="per-layer"`` (default) standardises each layer's
   attention channels and its MLP channels within the layer, a group then scoring the mean of its
   channels' values; ``"across-layers"`` standardises each kind (group scores, each the sum of its channels'
   scores, and channel scores) over all layers together, which keeps the layers' differences in scale. On
   SmolLM2-135M the per-layer reading is the one that beats uniform widths (docs/results/llm/flap.md).
4. Adaptive structure, the paper's AL-AM (``allocation="global"``, the default): the units of both kinds
   and all layers are ranked together by ``Z`` and removed lowest first, each weighing the parameters it
   removes (a group of 3 query heads of size 64 in a 576-wide model weighs as much as 170 MLP channels),
   until ``sparsity`` of the targeted parameters (the attention and MLP projections of the decoder
   layers) is removed. A unit whose removal would overshoot the target is passed over for the next ones,
   so the removed count ends below the target by less than one unit of the smallest kind it could still
   take (an MLP channel, in practice). Every layer keeps at least one key-value group and one MLP channel:
   a sparsity that cannot be reached so is refused. ``Global(max_sparsity=c)`` also caps each layer's
   attention and MLP at a removed share ``c``.
5. Uniform structure, the paper's UL-UM (``allocation="uniform"``), for comparison: every layer keeps the
   same attention shape (key-value groups x query heads per group, the shape closest to ``sparsity`` that
   the config can state, :func:`prunekit.llm.structured.choose_gqa_shape`) and loses the same number of
   MLP channels, chosen so that the total removed is closest to the same target; heads and channels are
   chosen within each layer by the same fluctuation scores.
6. Bias compensation: the removed channels' mean inputs are folded into the output projection's bias,
   ``b' = b + W[:, R] @ E[x_R]`` (:mod:`prunekit.llm.removal`), where the family's config can carry that
   bias (LLaMA: ``attention_bias`` / ``mlp_bias``, then every layer gets the bias, zero where nothing was
   removed; OPT: always).

Uniform widths give an ordinary config of the family (``intermediate_size``, head counts), which stock
``from_pretrained`` reads; per-layer widths stay in ``config.prunekit_structure`` and the model reloads
with :func:`prunekit.surgery.from_pretrained_pruned` or :func:`prunekit.llm.load_causal_lm` (safetensors
only, no code from the checkpoint is run).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.allocation.builtin import Allocation, Global, Uniform, resolve_allocation
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
from prunekit.layout import layer_weight
from prunekit.llm.removal import (
    ChannelStats,
    bias_possible,
    cut_heads_,
    cut_mlp_channels_,
    ensure_bias,
    head_shape,
    row_params,
    select_gqa_heads,
)
from prunekit.llm.runner import InputConsumer, LayerJob, LayerVisitor, run_layerwise
from prunekit.llm.structured import choose_gqa_shape
from prunekit.surgery.blocks import overlaps_ignored
from prunekit.surgery.hf import head_config_fields, own_config_, sync_hf_config

__all__ = [
    "FlapResult",
    "STANDARDIZATIONS",
    "STRUCTURES",
    "flap_removal",
    "flap_scores",
    "prune_flap",
    "standardize",
    "uniform_plan",
]

#: the paper's names of the two structures this module builds, by the allocation that selects them
STRUCTURES = {"global": "AL-AM", "uniform": "UL-UM"}
#: the two readings of the paper's standardisation (:func:`flap_scores`)
STANDARDIZATIONS = ("per-layer", "across-layers")


@dataclass
class FlapResult:
    """What :func:`prune_flap` removed.

    ``targeted_params``: parameters of the attention and MLP projections that may be removed (weights, and
    the input projections' biases); ``target_params``: ``round(sparsity * targeted_params)``;
    ``removed_params``: what went. ``heads`` / ``kv_heads`` / ``mlp_widths``: per decoder layer, after;
    ``kept_heads`` / ``kept_channels``: per decoder layer, the original indices of the query heads and MLP
    channels kept (ascending).
    ``params_before`` / ``params_after``: the whole model (bias compensation may add output biases).
    """

    structure: str
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
    notes: list[str] = field(default_factory=list)

    @property
    def removed_share(self) -> float:
        """The share of the targeted parameters removed (the achieved sparsity)."""
        return self.removed_params / self.targeted_params if self.targeted_params else 0.0


def standardize(scores: Tensor) -> Tensor:
    """FLAP's standardisation ``(S - E[S]) / sqrt(E[(S - E[S])^2])`` over every entry of ``scores`` (any
    shape; float64 result of the same shape). Scores that are all equal (or a single one) give zeros."""
    s = scores.double()
    if s.numel() == 0:
        return s
    centred = s - s.mean()
    std = centred.pow(2).mean().sqrt()
    return centred / std if float(std) > 0 else torch.zeros_like(s)


def _kept_limit(n: int, max_share: float | None) -> int:
    """How many of a layer's ``n`` equal units may go: all but one, and at most ``max_share`` of them."""
    limit = n - 1
    if max_share is not None:
        limit = min(limit, math.floor(max_share * n + 1e-9))
    return max(limit, 0)


def flap_scores(
    attention: Sequence[Tensor | None],
    mlp: Sequence[Tensor | None],
    groups: int,
    standardization: str = "per-layer",
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """Standardised scores of every layer's key-value groups and MLP channels (FLAP's standardisation).

    ``attention[l]``: the fluctuation scores of layer ``l``'s attention output projection's input channels,
    [query heads * head_dim] with the heads of each of the ``groups`` key-value groups adjacent; ``mlp[l]``:
    of its MLP channels, [channels]; None leaves that part of the layer out (it is returned as None).

    * ``"per-layer"`` (default): each layer's attention channels and its MLP channels are standardised within
      the layer; a group scores the mean of its channels' standardised scores. Layers whose activations
      differ in scale then compete on equal terms.
    * ``"across-layers"``: a group scores the sum of its channels' scores; group scores are standardised over all
      layers' groups, channel scores over all layers' channels (:func:`standardize`).

    Returns ([groups] or None per layer, [channels] or None per layer), float64. Raises
    :class:`~prunekit.errors.UnknownNameError` for another ``standardization``.
    """
    if standardization not in STANDARDIZATIONS:
        raise UnknownNameError("flap standardization", standardization, STANDARDIZATIONS)
    if standardization == "per-layer":
        return (
            [None if a is None else standardize(a).reshape(groups, -1).mean(1) for a in attention],
            [None if m is None else standardize(m) for m in mlp],
        )
    sums = [None if a is None else a.double().reshape(groups, -1).sum(1) for a in attention]
    return _standardize_pooled(sums), _standardize_pooled(list(mlp))


def _standardize_pooled(scores: list[Tensor | None]) -> list[Tensor | None]:
    """:func:`standardize` over the entries of every tensor together, returned split as they came."""
    present = [s.reshape(-1) for s in scores if s is not None]
    if not present:
        return list(scores)
    z = iter(standardize(torch.cat(present)).split([s.numel() for s in present]))
    return [None if s is None else next(z) for s in scores]


def flap_removal(
    group_scores: Sequence[Tensor | None],
    channel_scores: Sequence[Tensor | None],
    group_params: Sequence[int],
    channel_params: Sequence[int],
    target: int,
    max_share: float | None = None,
) -> tuple[list[list[int]], list[list[int]]]:
    """FLAP's adaptive structure search (AL-AM): which key-value groups and MLP channels each layer loses.

    ``group_scores[l]``: the standardised scores of layer ``l``'s key-value groups, [groups];
    ``channel_scores[l]``: of its MLP channels, [channels] (:func:`flap_scores`); None leaves that part of the
    layer out (``ignore=``). ``group_params[l]`` / ``channel_params[l]``: the parameters one unit of the layer
    removes. All units are ranked together (ties: groups before channels, then layer and index order) and
    removed lowest first while the removed parameters stay within ``target``; a unit that would overshoot is
    passed over. Each layer keeps one unit of each kind, and at most ``max_share`` (a fraction) of its units
    of a kind go.

    Returns the removed group indices and the removed channel indices per layer (ascending). Raises
    :class:`~prunekit.errors.InvalidSparsityError` when ``target`` exceeds what may go under those limits.
    """
    n_layers = len(group_scores)
    if not (len(channel_scores) == len(group_params) == len(channel_params) == n_layers):
        raise ConfigError("flap_removal needs one entry per layer in each of its four sequences")
    kinds = (group_scores, channel_scores)
    sizes = (group_params, channel_params)
    units: list[tuple[int, int, int]] = []  # (kind, layer, index) in tie-break order
    z_parts: list[Tensor] = []
    limits: dict[tuple[int, int], int] = {}
    for kind, scores in enumerate(kinds):
        present = [(i, s.reshape(-1)) for i, s in enumerate(scores) if s is not None]
        if not present:
            continue
        z_parts.append(torch.cat([s.double() for _, s in present]))
        for i, s in present:
            units += [(kind, i, j) for j in range(s.numel())]
            limits[kind, i] = _kept_limit(s.numel(), max_share)
    most = sum(limit * sizes[kind][i] for (kind, i), limit in limits.items())
    if target > most:
        raise InvalidSparsityError(
            f"removing {target} parameters would empty a layer's attention or MLP: at most {most} can go while "
            "every layer keeps one key-value group and one MLP channel"
            + (f" and loses at most {max_share:g} of each" if max_share is not None else "")
            + "; lower the sparsity"
        )
    removed: list[list[list[int]]] = [[[] for _ in range(n_layers)] for _ in kinds]
    if target <= 0 or not units:
        return removed[0], removed[1]
    z = torch.cat(z_parts)
    taken = 0
    for u in torch.argsort(z, stable=True).tolist():
        kind, i, j = units[u]
        size = sizes[kind][i]
        if len(removed[kind][i]) >= limits[kind, i] or taken + size > target:
            continue
        removed[kind][i].append(j)
        taken += size
        if taken == target:
            break
    return [sorted(r) for r in removed[0]], [sorted(r) for r in removed[1]]


class _FluctuationPass(LayerVisitor):
    """Read-only pass: per layer, the mean inputs and fluctuation scores of both output projections."""

    modifies = False

    def __init__(self, attn_out: str, mlp_out: str):
        self.names = (attn_out, mlp_out)
        self.stats: tuple[ChannelStats, ChannelStats] | None = None
        self.means: dict[int, tuple[Tensor, Tensor]] = {}
        self.scores: dict[int, tuple[Tensor, Tensor]] = {}

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        widths = [layer_weight(job.layer.get_submodule(n)) for n in self.names]
        self.stats = (
            ChannelStats(widths[0].shape[1], widths[0].device),
            ChannelStats(widths[1].shape[1], widths[1].device),
        )
        return {self.names[0]: self.stats[0].add, self.names[1]: self.stats[1].add}

    def finish(self, job: LayerJob) -> None:
        assert self.stats is not None
        scores = []
        for name, st in zip(self.names, self.stats):
            w = layer_weight(job.layer.get_submodule(name)).detach()
            scores.append(criteria.fluctuation(st.mean, st.sq_mean, w).double().cpu())
        self.means[job.index] = (self.stats[0].mean.cpu(), self.stats[1].mean.cpu())
        self.scores[job.index] = (scores[0], scores[1])
        self.stats = None


def _structure(allocation: str | Allocation | None) -> tuple[str, float | None]:
    alloc = resolve_allocation("global" if allocation is None else allocation)
    if isinstance(alloc, Uniform):
        return "UL-UM", None
    if isinstance(alloc, Global):
        if alloc.count != "weights":
            raise ConfigError(
                "flap weighs attention groups against MLP channels by the parameters each removes, so it takes "
                f"Global(count='weights') only, not count={alloc.count!r}"
            )
        return "AL-AM", None if alloc.max_sparsity is None else float(alloc.max_sparsity)
    raise ConfigError(
        f"flap builds FLAP's adaptive structure (allocation='global', the paper's AL-AM) or the uniform one "
        f"(allocation='uniform', UL-UM); it cannot use allocation {alloc}"
    )


def _complement(removed: list[int], n: int) -> list[int]:
    gone = set(removed)
    return [i for i in range(n) if i not in gone]


def prune_flap(
    model: nn.Module,
    *,
    sparsity: float,
    calibration: Any,
    allocation: str | Allocation | None = "global",
    bias_compensation: bool = True,
    standardization: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    ignored: list[str] | None = None,
) -> FlapResult:
    """Remove ``sparsity`` (a fraction in [0, 1)) of the decoder layers' attention and MLP parameters with
    FLAP (module docstring), physically and in place.

    ``calibration``: token batches [batch, seq_len] (see :func:`prunekit.llm.runner.as_batches`);
    ``allocation``: "global" or a :class:`~prunekit.allocation.Global` (adaptive, AL-AM) or "uniform"
    (UL-UM); ``bias_compensation``: fold the removed channels' mean inputs into the output biases;
    ``standardization``: one of :data:`STANDARDIZATIONS` (default "per-layer"), adaptive structure only;
    ``ignored``: module names (``ignore=``) whose layers' attention or MLP are left whole and not counted.

    Raises, before anything changes: :class:`~prunekit.errors.InvalidSparsityError` for a sparsity outside
    [0, 1) or one that would empty a layer's attention or MLP; :class:`~prunekit.errors.ConfigError` for an
    allocation other than those or a standardization with the uniform structure;
    :class:`~prunekit.errors.UnknownNameError` for an unknown allocation or standardization name;
    :class:`~prunekit.errors.MissingDataError` without calibration;
    :class:`~prunekit.errors.UnsupportedModuleError` for a family whose heads or MLP cannot be cut by name,
    or layers that already differ; :class:`~prunekit.errors.NothingToPruneError` when ``ignored`` covers
    every layer.
    """
    structure, max_share = _structure(allocation)
    if standardization is not None and standardization not in STANDARDIZATIONS:
        raise UnknownNameError("flap standardization", standardization, STANDARDIZATIONS)
    if structure == "UL-UM" and standardization is not None:
        raise ConfigError(
            "standardization decides how flap ranks units across layers (allocation='global'); the uniform "
            "structure ranks each layer's units by their raw scores, so it takes no standardization"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if calibration is None:
        raise MissingDataError(
            "flap scores channels by their fluctuation over calibration= token batches [batch, seq_len]"
        )
    adapter = family_for(model)
    attn, mlp = adapter.attention, adapter.require_mlp()
    if attn is None:  # heads of any size are recorded when the config cannot state them: no head_dim check
        raise UnsupportedModuleError(
            f"flap cannot cut the attention of {adapter.family} models by name (fused projections); use the "
            "'head' method with llm-mlp, or an unstructured method"
        )
    if mlp.fused:
        raise UnsupportedModuleError(f"flap cannot cut the fused MLP projection of {adapter.family} models")
    n_heads, n_kv, head_dim = head_shape(model, adapter, attn, "flap")
    per = n_heads // n_kv
    layers = list(adapter.layer_list(model))
    names = [f"{adapter.layers}.{i}" for i in range(len(layers))]
    ignored = list(ignored or [])

    def free(prefix: str, parts: list[str]) -> bool:
        return all(overlaps_ignored(f"{prefix}.{p}", ignored) is None for p in parts)

    heads_on = [free(n, [attn.module, attn.q, attn.k, attn.v, attn.o]) for n in names]
    mlp_on = [free(n, [*mlp.inputs, mlp.output]) for n in names]
    if not any(heads_on) and not any(mlp_on):
        raise NothingToPruneError(
            "ignore= covers the attention and MLP of every decoder layer: flap has nothing to remove"
        )
    q_head = [
        head_dim * (row_params(ly.get_submodule(attn.q)) + layer_weight(ly.get_submodule(attn.o)).shape[0])
        for ly in layers
    ]
    kv_head = [
        head_dim * (row_params(ly.get_submodule(attn.k)) + row_params(ly.get_submodule(attn.v))) for ly in layers
    ]
    group_params = [per * q + kv for q, kv in zip(q_head, kv_head)]
    widths = [int(layer_weight(ly.get_submodule(mlp.output)).shape[1]) for ly in layers]
    channel_params = [
        sum(row_params(ly.get_submodule(n)) for n in mlp.inputs)
        + int(layer_weight(ly.get_submodule(mlp.output)).shape[0])
        for ly in layers
    ]
    targeted = sum(n_kv * g for g, on in zip(group_params, heads_on) if on)
    targeted += sum(w * c for w, c, on in zip(widths, channel_params, mlp_on) if on)
    target = round(sparsity * targeted)
    shape = (n_kv, per)
    mlp_count = 0
    if structure == "UL-UM":
        shape, mlp_count = uniform_plan(
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
    else:  # a dry run on zero scores: an unreachable target is refused before the calibration pass
        flap_removal(
            [torch.zeros(n_kv) if on else None for on in heads_on],
            [torch.zeros(w) if on else None for w, on in zip(widths, mlp_on)],
            group_params,
            channel_params,
            target,
            max_share,
        )
    own_config_(model)  # the config may be shared with another model (a teacher); edit a copy
    params_before = sum(p.numel() for p in model.parameters())
    visitor = _FluctuationPass(attn.o, mlp.output)
    run_layerwise(model, calibration, visitor, device=device, progress=progress, description="flap")
    head_scores = [visitor.scores[i][0].reshape(n_heads, head_dim).sum(1) for i in range(len(layers))]
    gone_groups: list[list[int]] = [[] for _ in layers]
    gone_channels: list[list[int]] = [[] for _ in layers]
    if structure == "AL-AM":
        group_z, channel_z = flap_scores(
            [visitor.scores[i][0] if on else None for i, on in enumerate(heads_on)],
            [visitor.scores[i][1] if on else None for i, on in enumerate(mlp_on)],
            n_kv,
            standardization or "per-layer",
        )
        gone_groups, gone_channels = flap_removal(
            group_z,
            channel_z,
            group_params,
            channel_params,
            target,
            max_share,
        )
    compensate = {
        part: bias_compensation and bias_possible(model, part, layers[0].get_submodule(out))
        for part, out in (("attention", attn.o), ("mlp", mlp.output))
    }
    removed_params = 0
    kept_heads: list[list[int]] = []
    kept_channels: list[list[int]] = []
    for i, layer in enumerate(layers):
        attn_mean, mlp_mean = visitor.means[i]
        heads, gone = list(range(n_heads)), torch.zeros(0, dtype=torch.long)
        if heads_on[i]:
            if structure == "AL-AM":
                groups = _complement(gone_groups[i], n_kv)
                heads = [g * per + h for g in groups for h in range(per)]
            else:
                groups, heads = select_gqa_heads(head_scores[i], n_kv, shape[0], shape[1])
            if len(heads) < n_heads:
                cut_heads_(layer, attn, heads, groups, head_dim, attn_mean if compensate["attention"] else None)
                removed_params += (n_heads - len(heads)) * q_head[i] + (n_kv - len(groups)) * kv_head[i]
        if mlp_on[i]:
            if structure == "AL-AM":
                gone = torch.tensor(gone_channels[i], dtype=torch.long)
            else:
                keep = torch.topk(visitor.scores[i][1], widths[i] - mlp_count, sorted=False).indices
                gone = torch.tensor(_complement(keep.tolist(), widths[i]), dtype=torch.long)
            if gone.numel():
                cut_mlp_channels_(layer, mlp, gone, mlp_mean if compensate["mlp"] else None)
                removed_params += gone.numel() * channel_params[i]
        kept_heads.append(heads)
        kept_channels.append(_complement(gone.tolist(), widths[i]))
    notes = _finish_config(model, adapter, layers, bias_compensation, compensate)
    result = FlapResult(
        structure=structure,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
        targeted_params=targeted,
        target_params=target,
        removed_params=removed_params,
        heads=[layer_weight(ly.get_submodule(attn.q)).shape[0] // head_dim for ly in layers],
        kv_heads=[layer_weight(ly.get_submodule(attn.k)).shape[0] // head_dim for ly in layers],
        mlp_widths=[int(layer_weight(ly.get_submodule(mlp.output)).shape[1]) for ly in layers],
        kept_heads=kept_heads,
        kept_channels=kept_channels,
    )
    result.notes = [
        f"flap {structure}: removed {removed_params} of {targeted} attention and MLP parameters "
        f"({100 * result.removed_share:.2f}%, target {target})",
        f"query heads per layer: {result.heads}; key-value heads per layer: {result.kv_heads}",
        f"MLP channels per layer: {result.mlp_widths}",
        *notes,
        f"parameters {result.params_before} -> {result.params_after}",
    ]
    return result


def uniform_plan(
    model: nn.Module,
    sparsity: float,
    target: int,
    head_shape_: tuple[int, int, int],
    heads_on: list[bool],
    mlp_on: list[bool],
    q_head: list[int],
    kv_head: list[int],
    widths: list[int],
    channel_params: list[int],
) -> tuple[tuple[int, int], int]:
    """Uniform widths (FLAP's UL-UM, also LLM-Pruner's): (kept key-value groups, query heads per group) of every
    layer and the MLP channels every layer loses, so that the parameters removed come closest to ``target``.

    ``head_shape_``: (query heads, key-value heads, head size); ``heads_on`` / ``mlp_on``: per decoder layer,
    whether its attention / MLP is pruned; ``q_head`` / ``kv_head``: per layer, the parameters one query head
    / one key-value head carries; ``widths``: MLP widths; ``channel_params``: parameters per MLP channel. The
    attention shape is the one closest to ``sparsity`` that the config can state
    (:func:`prunekit.llm.structured.choose_gqa_shape`); the MLP makes up the rest. Raises
    :class:`~prunekit.errors.InvalidSparsityError` for a target that empties the MLP and
    :class:`~prunekit.errors.UnsupportedModuleError` when the pruned layers' MLP widths already differ."""
    n_heads, n_kv, head_dim = head_shape_
    shape = (n_kv, n_heads // n_kv)
    attn_layers = [i for i, on in enumerate(heads_on) if on]
    if attn_layers:
        checked: dict[tuple[int, int], bool] = {}

        def allowed(heads: int, kv: int) -> bool:
            if (heads, kv) not in checked:
                checked[heads, kv] = head_config_fields(model, heads, kv, head_dim) is not None
            return checked[heads, kv]

        shape = choose_gqa_shape(n_heads, n_kv, sparsity, allowed)
        free = choose_gqa_shape(n_heads, n_kv, sparsity)
        smaller = [(g, q) for g in range(1, n_kv + 1) for q in range(1, n_heads // n_kv + 1) if g * q < n_heads]
        if shape != free and not any(allowed(g * q, g) for g, q in smaller):
            shape = free  # the config states no smaller attention at all (OPT): the sizes are recorded instead
    g, q = shape
    attn_removed = sum((n_heads - g * q) * q_head[i] + (n_kv - g) * kv_head[i] for i in attn_layers)
    mlp_layers = [i for i, on in enumerate(mlp_on) if on]
    if not mlp_layers:
        return shape, 0
    if len({(widths[i], channel_params[i]) for i in mlp_layers}) != 1:
        raise UnsupportedModuleError(
            "flap with allocation='uniform' removes the same MLP channels from every layer, but the layers' MLP "
            f"widths already differ ({sorted({widths[i] for i in mlp_layers})}); use allocation='global'"
        )
    width, per_channel = widths[mlp_layers[0]], channel_params[mlp_layers[0]]
    count = max(0, round((target - attn_removed) / (len(mlp_layers) * per_channel)))
    if count > width - 1:
        raise InvalidSparsityError(
            f"sparsity {sparsity:g} with uniform widths would remove {count} of the {width} MLP channels of every "
            "layer, emptying it; lower the sparsity"
        )
    return shape, count


def _finish_config(
    model: nn.Module, adapter: Family, layers: list[nn.Module], asked: bool, compensated: dict[str, bool]
) -> list[str]:
    """Bias fields, then the sizes: a stock config where the widths are uniform, else a structure record."""
    cfg: Any = model.config  # a Hugging Face config: its fields depend on the family
    attn, mlp = adapter.attention, adapter.require_mlp()
    assert attn is not None  # prune_flap checked
    notes = []
    for part, projections in (("attention", [attn.q, attn.k, attn.v, attn.o]), ("mlp", [*mlp.inputs, mlp.output])):
        if asked and not compensated[part]:
            notes.append(f"no bias compensation for the {part}: {cfg.model_type} has no {part} output bias")
        field_name = adapter.bias_field(part)
        out = projections[-1]
        if field_name and not getattr(cfg, field_name, False):
            if any(getattr(ly.get_submodule(out), "bias", None) is not None for ly in layers):
                setattr(cfg, field_name, True)  # every layer then has these biases: zero ones where none was added
                for ly in layers:
                    for name in projections:
                        ensure_bias(ly.get_submodule(name))
    sync_hf_config(model)  # works on its own copy of the config
    if getattr(model.config, "prunekit_structure", None):
        notes.append(
            "the layers' widths differ, so they are recorded in config.prunekit_structure: reload with "
            "prunekit.surgery.from_pretrained_pruned or prunekit.llm.load_causal_lm"
        )
    else:
        notes.append("uniform widths: the config states them, so stock from_pretrained reloads the model")
    return notes
