"""The named structural methods, registered with :data:`prunekit.methods.METHODS`.

For all of them ``sparsity`` is the fraction of each group's units removed: channels of every dependency
group ("*-channel"), key/value groups with their query heads ("head"), blocks of every stack ("layer"),
or hidden dimensions ("embedding"). The model really gets smaller: tensors are sliced and module
attributes (and Hugging Face config fields) updated. "head" keeps a head count the Hugging Face config can
state (option ``exact_heads=True`` keeps the requested count; that model reloads with
``from_pretrained_pruned``). The model's config is copied before it is edited: it may be shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from prunekit.errors import ConfigError
from prunekit.methods import METHODS, Method, MethodOutcome, PruneRequest
from prunekit.structural.blocks import (
    apply_head_plan_,
    apply_head_plan_proved_,
    apply_layer_plan_,
    plan_heads,
    plan_layers,
)
from prunekit.structural.engine import (
    _accumulate_gradients,
    _context,
    apply_plan_,
    check_options,
    layer_sparsity,
    plan_channels,
    single_thread,
)
from prunekit.structural.hf import own_config_

_CHANNEL_OPTIONS = frozenset({"round_to", "global_cap", "strict", "validate", "loss_fn", "calib_batches"})


def _allocation_name(request: PruneRequest) -> str:
    alloc = request.allocation
    name = getattr(alloc, "name", None) or (alloc if isinstance(alloc, str) else "uniform")
    if name not in ("uniform", "global"):
        raise ConfigError(f"structural methods allocate over groups with 'uniform' or 'global'; got {name!r}")
    return name


@dataclass
class StructuralMethod(Method):
    """Physical removal of channels / heads / layers / hidden size, scored by a group criterion."""

    name: str = "structural"
    criterion: str = "l2"
    kind: str = "channel"
    description: str = ""
    needs_data: bool = False
    paper: str = ""
    structural: bool = True
    default_pattern: Any = None
    default_allocation: Any = "uniform"
    options: ClassVar[frozenset[str]] = _CHANNEL_OPTIONS | {"identity_only", "exact_heads"}

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        opts = dict(request.options)
        own_config_(model)  # a config shared with another model (a teacher) must not change with this one
        check_options(opts.get("round_to"), opts.get("global_cap"))
        alloc = _allocation_name(request)
        if self.kind in ("channel", "embedding"):
            targets = [t.name for t in request.targets] if self.kind == "channel" else None
            plan = plan_channels(
                model,
                request.example_inputs,
                request.sparsity,
                criterion=self.criterion,
                allocation=alloc,
                kind=self.kind,
                round_to=opts.get("round_to"),
                global_cap=opts.get("global_cap"),
                targets=targets,
                calibration=request.calibration,
                loss_fn=opts.get("loss_fn"),
                calib_batches=int(opts.get("calib_batches", 8)),
                seed=request.seed,
                strict=bool(opts.get("strict", True)),
                validate=bool(opts.get("validate", True)),
                opaque=request.ignored_modules,
            )
            old = apply_plan_(model, plan)
            notes = [f"{plan.units_removed} {self.kind} units removed from {sum(len(r) > 0 for r in plan.remove)} groups "
                     f"in {plan.seconds:.2f} s"] + plan.notes
            return MethodOutcome(layer_sparsity(model, old, targets), notes)
        if self.kind == "head":
            grads = None
            if self.criterion in ("taylor", "hessian"):
                with single_thread():
                    ctx = _context(model, request.seed)
                    _accumulate_gradients(model, ctx, request.calibration, opts.get("loss_fn"), int(opts.get("calib_batches", 8)))
                grads = ctx.grads if self.criterion == "taylor" else ctx.grad_sq
            hplan = plan_heads(model, request.sparsity, criterion=self.criterion, allocation=alloc, seed=request.seed,
                               grads=grads, global_cap=opts.get("global_cap"),
                               exact=bool(opts.get("exact_heads", False)))
            apply_head_plan_proved_(model, hplan, request.example_inputs, apply=apply_head_plan_)
            ls = {b.name: len(r) / b.groups for b, r in zip(hplan.blocks, hplan.remove)}
            return MethodOutcome(ls, [str(hplan)])
        if self.kind == "layer":
            lplan = plan_layers(model, request.example_inputs, request.sparsity,
                                identity_only=bool(opts.get("identity_only", False)), seed=request.seed)
            apply_layer_plan_(model, lplan)
            return MethodOutcome({n: 1.0 for n in lplan.remove}, [str(lplan)] + lplan.notes)
        raise ConfigError(f"unknown structural kind {self.kind!r}")


_METHODS = [
    StructuralMethod("l1-channel", "l1", "channel",
                     "remove channels physically by group L1 norm (Li et al. 2017)",
                     paper="Pruning Filters for Efficient ConvNets"),
    StructuralMethod("l2-channel", "l2", "channel",
                     "remove channels physically by group L2 norm (DepGraph, Fang et al. 2023)",
                     paper="DepGraph: Towards Any Structural Pruning"),
    StructuralMethod("taylor-channel", "taylor", "channel",
                     "remove channels by first-order Taylor importance (Molchanov et al. 2019); needs calibration",
                     needs_data=True, paper="Importance Estimation for Neural Network Pruning"),
    StructuralMethod("hessian-channel", "hessian", "channel",
                     "remove channels by OBD saliency with the Fisher diagonal (LeCun et al. 1990); needs calibration",
                     needs_data=True, paper="Optimal Brain Damage"),
    StructuralMethod("fpgm-channel", "fpgm", "channel",
                     "remove channels closest to the geometric median of their layer (He et al. 2019)",
                     paper="Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration"),
    StructuralMethod("bn-scale-channel", "bn-scale", "channel",
                     "remove channels with the smallest BN scale |gamma| (network slimming, Liu et al. 2017)",
                     paper="Learning Efficient Convolutional Networks through Network Slimming"),
    StructuralMethod("lamp-channel", "lamp", "channel",
                     "remove channels by LAMP scores of their slices (Lee et al. 2021)",
                     paper="Layer-adaptive Sparsity for the Magnitude-based Pruning"),
    StructuralMethod("random-channel", "random", "channel",
                     "remove random channels physically (seeded): the structural baseline"),
    StructuralMethod("head", "l2", "head",
                     "remove attention heads (GQA aware: key/value groups with their query heads) by L2 norm",
                     paper="Are Sixteen Heads Really Better than One?"),
    StructuralMethod("layer", "influence", "layer",
                     "remove whole blocks with the least influence 1 - cos(in, out) (ShortGPT, Men et al. 2024)",
                     paper="ShortGPT: Layers in Large Language Models are More Redundant Than You Expect"),
    StructuralMethod("embedding", "l2", "embedding",
                     "remove hidden dimensions of a transformer (embedding columns and the residual stream)",
                     paper="DepGraph: Towards Any Structural Pruning"),
]

for _m in _METHODS:
    if _m.name not in METHODS:
        METHODS.add(_m.name, _m, _m.description)
