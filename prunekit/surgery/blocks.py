"""Head() and Layer() removal: attention heads (GQA aware) and whole blocks.

Both plan first (scores, allocation, validation) and change the model only in :func:`apply_head_plan_` /
:func:`apply_layer_plan_`. Units are scored by any registered criterion valid at their level, reduced as
:mod:`prunekit.surgery.scoring` reduces every physical unit, and allocated by any core allocation
(:mod:`prunekit.allocation.units`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from prunekit.allocation.builtin import Allocation
from prunekit.allocation.units import allocate_units, structural_allocation, unique_names
from prunekit.calls import call_model, eval_mode
from prunekit.criteria.base import Criterion
from prunekit.errors import (
    DataError,
    InvalidSparsityError,
    NothingToPruneError,
    PlanError,
)
from prunekit.padding import real_tokens, token_mask
from prunekit.surgery.attention import AttentionBlock, find_attention, has_attention, overlaps_ignored
from prunekit.surgery.hf import exact_head_notes, fit_head_counts, own_config_, record_head_attrs, renumber_layers
from prunekit.surgery.remove import remove_, size_attrs, structure_state
from prunekit.surgery.scoring import (
    UnitScorer,
    UnitScores,
    UnitSet,
    level_criterion,
    nothing_scored,
    row_scores,
    stack_rows,
)

# ------------------------------------------------------------------------------------------------- heads


@dataclass
class HeadPlan:
    """Which heads :func:`plan_heads` removes: per attention block (``blocks``), the indices of the
    key/value groups it loses (``remove``, each group with the query heads that share it), the ``criterion``
    that scored them, the ``scores`` (one per key/value group of each block) and ``notes`` on what was kept
    and why. Printing it lists the groups and query heads each block loses."""

    blocks: list[AttentionBlock]
    remove: list[np.ndarray]  # per block: key/value groups removed
    notes: list[str] = field(default_factory=list)
    criterion: str = ""
    scores: list[np.ndarray] = field(default_factory=list, repr=False)  # per block: one score per key/value group

    def __str__(self) -> str:
        by = f" (criterion {self.criterion})" if self.criterion else ""
        lines = [f"head plan{by}:"]
        for b, r in zip(self.blocks, self.remove):
            if b.q_per_kv == 1:  # multi-head attention: a group is one head
                lines.append(f"  {b.name}: -{len(r)}/{b.groups} heads")
            else:
                heads = len(r) * b.q_per_kv
                lines.append(
                    f"  {b.name}: -{len(r)}/{b.groups} key/value groups, -{heads}/{b.groups * b.q_per_kv} query heads"
                )
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def head_unit_sets(model: nn.Module, blocks: list[AttentionBlock]) -> list[UnitSet]:
    """Every attention block as a unit set: its key/value groups (with their query heads) spread over the
    slices :meth:`AttentionBlock.unit_removal` names (q/k/v output rows, the output projection's inputs)."""
    canon = {id(t): n for n, t in model.named_parameters()}
    out = []
    for b in blocks:
        labels: dict[tuple[str, int], np.ndarray] = {}
        for u in range(b.groups):
            for key, dims in b.unit_removal([u]).items():
                mod_name, _, attr = key.rpartition(".")
                t = getattr(model.get_submodule(mod_name), attr)
                ck = canon.get(id(t), key)
                for dim, idx in dims.items():
                    lab = labels.setdefault((ck, dim), np.full(t.shape[dim], -1, dtype=np.int64))
                    lab[np.asarray(idx, dtype=np.int64)] = u
        out.append(UnitSet(b.name, b.groups, [(k, d, lab) for (k, d), lab in labels.items()]))
    return out


def plan_heads(
    model: nn.Module,
    sparsity: float,
    *,
    criterion: str | Criterion = "l2",
    allocation: str | Allocation | None = "uniform",
    seed: int = 0,
    calibration: Any = None,
    example_inputs: Any = None,
    loss_fn: Any = None,
    calib_batches: int = 8,
    global_cap: float | None = None,
    exact: bool = False,
    ignored: Iterable[str] = (),
) -> HeadPlan:
    """Remove ``sparsity`` of the key/value groups (with their query heads) of every attention module.

    ``criterion``: any registered criterion whose levels include ``"head"`` (magnitude, l2, taylor, obd,
    wanda, fpgm, ...), reduced over every slice of a key/value group (q/k/v rows, output-projection
    columns; row-native criteria such as FPGM over the q/k/v rows only); ``allocation``: any core
    allocation over the attention blocks (``global_cap``: ``Global.max_sparsity``, default
    ``min(0.9, 2 * sparsity)``); ``calibration`` / ``loss_fn`` / ``calib_batches``: data for data-driven
    criteria; ``example_inputs``: SynFlow's input shape. A Hugging Face model keeps a head count its config
    can state (see :func:`~prunekit.surgery.hf.fit_head_counts`), so that stock ``from_pretrained``
    reloads it; ``exact=True`` keeps the allocation's counts instead. ``ignored``: module names ``ignore=``
    matched; an attention module inside, equal to or containing one keeps all its heads.

    Raises :class:`~prunekit.errors.UnknownNameError` (an unknown criterion, listing those for heads),
    :class:`~prunekit.criteria.CriterionLevelError` (a criterion with no meaning for heads: influence, apoz,
    bn-scale), :class:`~prunekit.errors.NothingToPruneError` (no attention module),
    :class:`~prunekit.errors.MissingDataError` (a data-driven criterion without calibration).
    """
    if not 0 <= sparsity < 1:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity}")
    crit = level_criterion(criterion, "head", "attention heads")
    alloc = structural_allocation(allocation, sparsity, global_cap)
    ignored = list(ignored)
    blocks = find_attention(model, ignored)
    if not blocks and ignored and has_attention(model):
        raise NothingToPruneError(
            f"ignore= ({', '.join(ignored[:4])}) covers every attention module that could lose heads, so Head() has "
            "nothing to remove; ignore fewer modules"
        )
    if not blocks:
        raise NothingToPruneError(
            "no attention module was found for Head(): heads are found in q_proj/k_proj/v_proj/o_proj (LLaMA, "
            "OPT, ...), c_attn/c_proj (GPT-2), query/key/value (BERT), qkv/proj (timm's ViT, DeiT) and "
            "nn.MultiheadAttention (torchvision's ViT); for this model remove channels (l2-channel) or blocks "
            "(layer) instead"
        )
    kept_by_user = [b.name for b in blocks if overlaps_ignored(b.name, ignored) is not None]
    if kept_by_user:
        blocks = [b for b in blocks if b.name not in kept_by_user]
        if not blocks:
            raise NothingToPruneError(
                f"ignore= covers every attention module ({', '.join(kept_by_user[:8])}), so Head() has nothing to "
                f"remove; ignore fewer modules"
            )
    scorer = UnitScorer(
        model,
        crit,
        calibration=calibration,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        max_batches=calib_batches,
        seed=seed,
        level="head",
    )
    scored = scorer.score(head_unit_sets(model, blocks))
    names = unique_names([b.name for b in blocks])
    notes = list(scorer.notes)
    remove = [np.zeros(0, dtype=np.int64) for _ in blocks]
    live = [i for i, u in enumerate(scored) if u.scored.any()]
    if not live:
        raise nothing_scored(crit, "head", "attention heads", notes)
    if len(live) < len(blocks):
        notes.append(
            f"{len(blocks) - len(live)} attention module(s) keep their heads: criterion {crit.name!r} has "
            f"no score for them"
        )
    if live:
        got, _ = allocate_units(
            [names[i] for i in live],
            [scored[i].kept_high() for i in live],
            [scored[i].sizes for i in live],
            [scored[i].scored for i in live],
            sparsity,
            alloc,
        )
        for i, r in zip(live, got):
            remove[i] = r
    scores = [u.kept_high() for u in scored]
    if not exact:
        remove, fit_notes = fit_head_counts(model, blocks, scores, remove)
        notes += fit_notes
    else:
        notes += exact_head_notes(model, blocks, remove)
    total = sum(b.groups for b in blocks)
    removed = sum(len(r) for r in remove)
    if total and removed / total + 1 / total < sparsity:  # short of the request by more than one group
        unit = "heads" if all(b.q_per_kv == 1 for b in blocks) else "key/value groups"
        notes.append(
            f"removed {removed} of {total} {unit} ({removed / total:.0%}) for sparsity {sparsity:g}: every "
            f"attention module keeps at least one {unit[:-1]}"
            + ("" if exact else ", and a Hugging Face config must be able to state the head counts left")
        )
    if kept_by_user:
        notes.append(
            f"{len(kept_by_user)} attention module(s) keep all their heads because ignore= names them: "
            + ", ".join(kept_by_user[:8])
            + (" ..." if len(kept_by_user) > 8 else "")
        )
    return HeadPlan(blocks, remove, notes, crit.name, scores)


def apply_head_plan_(model: nn.Module, plan: HeadPlan) -> None:
    """Remove the planned key/value groups (with their query heads) in place: the q/k/v rows and output
    projection columns are sliced (:func:`~prunekit.surgery.remove.remove_`), each block's head counts are
    written into its attributes and the structure record, and a Hugging Face config follows. A plan that
    removes nothing changes nothing. Raises :class:`~prunekit.errors.UnsupportedModuleError` (before any
    change) when a module cannot take its new shapes."""
    removal: dict[str, dict[int, np.ndarray]] = {}
    for b, r in zip(plan.blocks, plan.remove):
        if len(r):
            for key, dims in b.unit_removal(sorted(r.tolist())).items():
                removal.setdefault(key, {}).update(dims)
    if not removal:
        return
    befores = [size_attrs(b.module) for b in plan.blocks]
    remove_(model, removal)
    for b, r, before in zip(plan.blocks, plan.remove, befores):
        if len(r):
            b.update_attrs(b.num_heads - len(r) * b.q_per_kv, b.num_kv_heads - len(r))
            record_head_attrs(model, b, before)
    from prunekit.surgery.changes import sync_config

    sync_config(model)


def apply_head_plan_proved_(
    model: nn.Module, plan: HeadPlan, inputs: Any, apply: Callable[[nn.Module, HeadPlan], None] | None = None
) -> None:
    """:func:`apply_head_plan_`, proved on ``inputs``: the model must still run and give outputs of the same
    shapes. An attention layout whose code does not follow the new head count (a convolution over heads,
    a size it hard-codes) keeps its heads, and the plan's notes say which; if no block can lose heads the
    model is restored and :class:`NothingToPruneError` names the module that broke. ``apply``: the function
    that applies a head plan (default :func:`apply_head_plan_`)."""
    from prunekit.apply.transaction import restore_tree, snapshot_tree
    from prunekit.surgery.engine import single_thread
    from prunekit.surgery.proof import output_shapes, still_runs

    apply = apply or apply_head_plan_
    if inputs is None:
        apply(model, plan)
        return
    with single_thread():
        shapes = output_shapes(model, inputs)
        snap = snapshot_tree(model)
        apply(model, plan)
        where: list[str] = []
        if still_runs(model, inputs, shapes, where):
            return
        restore_tree(snap)
        kept: list[str] = []
        for i, (b, r) in enumerate(zip(plan.blocks, plan.remove)):
            if not len(r):
                continue
            only = HeadPlan(
                plan.blocks, [r if j == i else np.zeros(0, dtype=np.int64) for j in range(len(plan.blocks))]
            )
            snap_one = snapshot_tree(model)
            apply(model, only)
            ok = still_runs(model, inputs, shapes)
            restore_tree(snap_one)
            if not ok:
                kept.append(b.name)
                plan.remove[i] = np.zeros(0, dtype=np.int64)
        if not any(len(r) for r in plan.remove):
            culprit = where[-1] if where else (kept[0] if kept else "<model>")
            raise NothingToPruneError(
                f"removing heads breaks this model's forward pass (in module '{culprit}'): its attention code does not "
                f"follow a smaller head count, so Head() cannot prune it; use a channel method (l2-channel) instead"
            )
        plan.notes.append(
            f"{len(kept)} attention module(s) keep their heads because their code fixes the head "
            f"count: {', '.join(kept[:8])}"
        )
        apply(model, plan)


# ------------------------------------------------------------------------------------------------ layers


@dataclass
class LayerPlan:
    """Which whole blocks :func:`plan_layers` removes: the ``candidates`` (blocks that keep their input
    shape), the blocks to ``remove`` (qualified names such as ``model.layers.3``), whether each candidate is
    an ``identity`` residual (``x + f(x)``), every candidate's score under ``criterion`` (``scores``) and
    ``notes``. Printing it lists the removed blocks with their scores."""

    candidates: list[str]  # names of removable blocks
    remove: list[str]
    identity: dict[str, bool]
    scores: dict[str, float]  # the criterion's score of every candidate block
    notes: list[str] = field(default_factory=list)
    criterion: str = "influence"

    def __str__(self) -> str:
        lines = [f"layer plan: remove {len(self.remove)} of {len(self.candidates)} blocks"]
        lines += [
            f"  - {n} ({self.criterion} {self.scores[n]:.4g}{', identity residual' if self.identity[n] else ''})"
            for n in self.remove
        ]
        return "\n".join(lines)


def _stacks(model: nn.Module) -> list[tuple[str, nn.ModuleList | nn.Sequential]]:
    out: list[tuple[str, nn.ModuleList | nn.Sequential]] = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.ModuleList, nn.Sequential)) and len(m) >= 2:
            kids = list(m)
            types = {type(c) for c in kids}
            if len(types) == 1 and any(True for _ in kids[0].parameters()):
                out.append((name, m))
    return out


def plan_layers(
    model: nn.Module,
    example_inputs: Any,
    sparsity: float,
    *,
    identity_only: bool = False,
    seed: int = 0,
    criterion: str | Criterion = "influence",
    allocation: str | Allocation | None = "uniform",
    calibration: Any = None,
    loss_fn: Any = None,
    calib_batches: int = 8,
    global_cap: float | None = None,
    ignored: Iterable[str] = (),
) -> LayerPlan:
    """Remove ``sparsity`` of the blocks of every stack (rounded down, at least one block kept per stack).

    A block is a candidate when it keeps the shape of its input. ``criterion``: by default the block
    influence of ShortGPT (Men et al. 2024), ``1 - cos(x_in, x_out)`` averaged over tokens / positions on the
    example inputs: blocks that change their input least go first. Any other criterion whose levels include
    ``"layer"`` scores a block from all its parameters (the sum of their contributions, then the
    criterion's unit reduction over the blocks of the stack: the mean ``|w|`` for magnitude, the squared
    signed sum of ``g * w`` for Taylor); FPGM (He et al. 2019) compares the blocks of a stack as vectors,
    ``s_i = sum_j ||theta_i - theta_j||_2`` over their flattened parameters (blocks of equal shapes; this
    copies the stack's parameters). ``allocation``: any core allocation over the stacks (``global_cap``:
    ``Global.max_sparsity``). ``identity_only`` keeps blocks that are not identity residuals
    (``x + f(x)``). ``calibration`` / ``loss_fn`` / ``calib_batches``: data for data-driven criteria.
    ``ignored``: module names ``ignore=`` matched; a block inside, equal to or containing one is kept.

    Raises :class:`~prunekit.errors.DataError` without ``example_inputs``,
    :class:`~prunekit.criteria.CriterionLevelError` for a criterion with no meaning for layers (apoz,
    bn-scale), :class:`~prunekit.errors.NothingToPruneError` when no block keeps its input shape.
    """
    if not 0 <= sparsity < 1:
        raise InvalidSparsityError(f"sparsity must be in [0, 1), got {sparsity}")
    if example_inputs is None:
        raise DataError("Layer() needs example_inputs= to check block shapes and measure block influence")
    crit = level_criterion(criterion, "layer", "whole layers")
    alloc = structural_allocation(allocation, sparsity, global_cap)
    stacks = _stacks(model)
    infl: dict[str, float] = {}
    shape_ok: dict[str, bool] = {}
    identity: dict[str, bool] = {}
    handles = []
    names = {}
    for sname, st in stacks:
        for i, child in enumerate(st):
            names[id(child)] = f"{sname}.{i}" if sname else str(i)
    ids = example_inputs.get("input_ids") if isinstance(example_inputs, Mapping) else None
    tokens = token_mask(ids, example_inputs.get("attention_mask")) if isinstance(ids, Tensor) else None

    def hook(mod: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        n = names[id(mod)]
        ins = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, Tensor) and a.is_floating_point()]
        outs = [o for o in tree_flatten(output)[0] if isinstance(o, Tensor)]
        if not ins or not outs:
            shape_ok[n] = False
            return
        x, y = ins[0], outs[0]
        shape_ok[n] = tuple(x.shape) == tuple(y.shape) and x.dtype == y.dtype
        if shape_ok[n]:
            xf, yf = x.detach().float().reshape(-1, x.shape[-1]), y.detach().float().reshape(-1, y.shape[-1])
            if tokens is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(tokens.shape):
                xf, yf = real_tokens(x.detach().float(), tokens), real_tokens(y.detach().float(), tokens)  # no padding
            elif x.dim() == 4 and x.shape[1] != x.shape[-1]:  # NCHW feature maps: channels as the vector
                xf = x.detach().float().movedim(1, -1).reshape(-1, x.shape[1])
                yf = y.detach().float().movedim(1, -1).reshape(-1, y.shape[1])
            cos = torch.nn.functional.cosine_similarity(xf, yf, dim=-1, eps=1e-8)
            infl[n] = float((1 - cos).mean())
            identity[n] = _is_identity_residual(mod, args, kwargs, x)

    for _, st in stacks:
        for child in st:
            handles.append(child.register_forward_hook(hook, with_kwargs=True))
    try:
        with eval_mode(model), torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    live = []  # (stack name, stack module, block names, candidate mask)
    ignored = list(ignored)
    full = {id(m): n for n, m in model.named_modules()}
    kept_by_user: list[str] = []
    for sname, st in stacks:
        blocks = [f"{sname}.{i}" if sname else str(i) for i in range(len(st))]
        user = [overlaps_ignored(full.get(id(child), b), ignored) is not None for b, child in zip(blocks, st)]
        kept_by_user += [b for b, u in zip(blocks, user) if u]
        cand = np.array(
            [
                bool(shape_ok.get(c)) and (bool(identity.get(c)) or not identity_only) and not u
                for c, u in zip(blocks, user)
            ]
        )
        if cand.any():
            live.append((sname, st, blocks, cand))
    if not live:
        if kept_by_user:
            raise NothingToPruneError(
                f"ignore= covers every block Layer() could remove ({', '.join(kept_by_user[:8])}), so it has "
                f"nothing to remove; ignore fewer modules"
            )
        raise NothingToPruneError("no block of this model keeps its input shape, so Layer() has nothing to remove")
    scores, scored, notes = _layer_scores(
        model,
        crit,
        live,
        infl,
        calibration=calibration,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        calib_batches=calib_batches,
        seed=seed,
    )
    sizes = [np.array([float(sum(p.numel() for p in b.parameters())) for b in st]) for _, st, _, _ in live]
    removable = [cand & ok for (_, _, _, cand), ok in zip(live, scored)]
    if not any(r.any() for r in removable):
        raise nothing_scored(crit, "layer", "whole layers", notes)
    if any((cand & ~ok).any() for (_, _, _, cand), ok in zip(live, scored)):
        notes.append(f"criterion {crit.name!r} has no score for some blocks (no parameter it reads): they are kept")
    ranked = [UnitScores(s, r, z).kept_high() for s, r, z in zip(scores, removable, sizes)]
    got, _ = allocate_units(
        unique_names([sname or "<model>" for sname, _, _, _ in live]), ranked, sizes, removable, sparsity, alloc
    )
    plan = LayerPlan([], [], identity, {}, notes, crit.name)
    for (_, _, blocks, cand), s, r in zip(live, scores, got):
        plan.candidates += [b for b, c in zip(blocks, cand) if c]
        plan.scores.update({b: float(v) for b, v, c in zip(blocks, s, cand) if c})
        plan.remove += sorted((blocks[i] for i in r.tolist()), key=lambda n: plan.scores[n])
    if kept_by_user:
        plan.notes.append(
            f"{len(kept_by_user)} block(s) kept because ignore= names them or a module inside them: "
            + ", ".join(kept_by_user[:8])
            + (" ..." if len(kept_by_user) > 8 else "")
        )
    non_id = [n for n in plan.remove if not identity.get(n)]
    if non_id:
        plan.notes.append(f"{len(non_id)} removed block(s) are not identity residuals (e.g. {non_id[0]})")
    return plan


def _layer_scores(
    model: nn.Module,
    crit: Criterion,
    live: list,
    infl: dict[str, float],
    *,
    calibration: Any,
    example_inputs: Any,
    loss_fn: Any,
    calib_batches: int,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """One score per block of every live stack (and which blocks have one): block influence, the stack's
    blocks as the rows of one matrix (row-native criteria: FPGM), or the criterion reduced over each
    block's parameters."""
    if crit.name == "influence":
        return (
            [np.array([infl.get(b, 0.0) for b in blocks]) for _, _, blocks, _ in live],
            [np.array([b in infl for b in blocks]) for _, _, blocks, _ in live],
            [],
        )
    if crit.row_native:
        return (
            [row_scores(crit, stack_rows(list(st)), sname or "<model>", seed) for sname, st, _, _ in live],
            [np.ones(len(st), dtype=bool) for _, st, _, _ in live],
            [],
        )
    canon = {id(t): n for n, t in model.named_parameters()}
    sets = []
    for sname, st, _, _ in live:
        members: list[tuple[str, int | None, np.ndarray]] = [
            (canon[id(p)], None, np.array([i])) for i, b in enumerate(st) for p in b.parameters() if id(p) in canon
        ]
        sets.append(UnitSet(sname or "<model>", len(st), members))
    scorer = UnitScorer(
        model,
        crit,
        calibration=calibration,
        example_inputs=example_inputs,
        loss_fn=loss_fn,
        max_batches=calib_batches,
        seed=seed,
        level="layer",
    )
    got = scorer.score(sets)
    return [u.scores for u in got], [u.scored for u in got], list(scorer.notes)


def _is_identity_residual(mod: nn.Module, args: tuple, kwargs: dict, x: Tensor) -> bool:
    """Whether ``mod`` is ``x + f(x)`` (possibly several such steps), tested on a copy whose every
    parameter is zero: an identity residual then returns its input unchanged. The copy carries no hooks
    (:func:`plan_layers` calls this from a forward hook, which the copy must not run again)."""
    try:
        m = copy.deepcopy(mod)
        for sub in m.modules():
            for hooks in (
                "_forward_hooks",
                "_forward_pre_hooks",
                "_forward_hooks_with_kwargs",
                "_forward_pre_hooks_with_kwargs",
                "_forward_hooks_always_called",
            ):
                d = getattr(sub, hooks, None)
                if d is not None:
                    d.clear()
        with torch.no_grad():
            for p in m.parameters():
                p.zero_()
            out = m(*args, **kwargs)
        out = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)][0]
        return bool(torch.allclose(out, x, atol=1e-6))
    except Exception:  # noqa: BLE001
        return False


def apply_layer_plan_(model: nn.Module, plan: LayerPlan) -> None:
    """Remove the planned blocks (highest index first, so that names stay valid)."""
    own_config_(model)  # the config (layer_types below) may be shared with another model
    st = structure_state(model)

    def key(n: str) -> tuple[str, int]:
        p, _, i = n.rpartition(".")
        return p, int(i)

    for n in sorted(plan.remove, key=key, reverse=True):
        parent_name, idx = key(n)
        parent = model.get_submodule(parent_name) if parent_name else model
        if not isinstance(parent, (nn.ModuleList, nn.Sequential)):
            raise PlanError(
                f"the layer plan removes block {n!r}, but {parent_name or 'the model'!r} is a "
                f"{type(parent).__name__}, not a ModuleList or Sequential of blocks"
            )
        del parent[idx]
        st["removed_layers"].append(n)
        _rename_after_removal(st, parent_name, idx)
    renumber_layers(model)
    if getattr(model, "config", None) is not None and hasattr(model.config, "to_dict"):
        cfg: Any = model.config  # a transformers config (no stubs)
        types = getattr(cfg, "layer_types", None)
        stack_removed = sorted((key(n)[1] for n in plan.remove), reverse=True)
        if isinstance(types, list) and len(types) == getattr(cfg, "num_hidden_layers", -1):
            types = list(types)
            for i in stack_removed:
                if i < len(types):
                    del types[i]
            cfg.layer_types = types
            st["config"]["layer_types"] = types
        from prunekit.surgery.changes import sync_config

        sync_config(model)


def _rename_after_removal(st: dict, parent: str, idx: int) -> None:
    prefix = f"{parent}." if parent else ""

    def rn(name: str) -> str | None:
        if not name.startswith(prefix):
            return name
        rest = name[len(prefix) :]
        head, dot, tail = rest.partition(".")
        if not head.isdigit():
            return name
        i = int(head)
        if i == idx:
            return None
        if i > idx:
            return f"{prefix}{i - 1}{dot}{tail}"
        return name

    st["original_shapes"] = {n2: v for n, v in st["original_shapes"].items() if (n2 := rn(n)) is not None}
    st["attrs"] = {n2: v for n, v in st["attrs"].items() if (n2 := rn(n)) is not None}
