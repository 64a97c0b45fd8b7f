"""The named structural methods, registered with :data:`prunekit.methods.base.METHODS`.

For all of them ``sparsity`` is the share of each unit set removed: channels of every dependency group
("*-channel"), key/value groups with their query heads ("head"), blocks of every stack ("layer"), or hidden
dimensions ("embedding"); with ``allocation="global"`` (or erk, lamp, ...) the sets share one budget counted
in weights (see :mod:`prunekit.allocation.units`). The model really gets smaller: tensors are sliced
and module attributes (and Hugging Face config fields) updated. "head" keeps a head count the Hugging Face
config can state (option ``exact_heads=True`` keeps the requested count; that model reloads with
``from_pretrained_pruned``). The model's config is copied before it is edited: it may be shared.

Each method scores its units with one registered criterion (:mod:`prunekit.criteria`), reduced as
:mod:`prunekit.surgery.scoring` reduces every physical unit; the option ``criterion=`` replaces it by any
criterion valid at the method's level. A structural method takes no mask pattern: it removes its own units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError, NothingToPruneError, PatternError, PrunekitError
from prunekit.granularity.patterns import NM, Unstructured, parse_pattern
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest
from prunekit.surgery.blocks import (
    apply_head_plan_,
    apply_head_plan_proved_,
    apply_layer_plan_,
    plan_heads,
    plan_layers,
)
from prunekit.surgery.changes import layer_sparsity
from prunekit.surgery.engine import apply_plan_, check_options, plan_channels
from prunekit.surgery.hf import own_config_
from prunekit.surgery.scoring import level_criterion

__all__ = ["LEVEL", "OPTIONS", "StructuralMethod", "UNIT_WORDS"]

_DATA = frozenset({"criterion", "loss_fn", "calib_batches", "global_cap"})
#: the options each kind of unit honours (anything else is refused by prunekit.prune, naming these)
OPTIONS = {
    "channel": _DATA | {"round_to", "strict", "validate"},
    "embedding": _DATA | {"round_to", "strict", "validate"},
    "head": _DATA | {"exact_heads"},
    "layer": _DATA | {"identity_only"},
}
#: the criterion level of each kind of unit
LEVEL = {"channel": "channel", "embedding": "channel", "head": "head", "layer": "layer"}
UNIT_WORDS = {
    "channel": "channels",
    "embedding": "hidden dimensions",
    "head": "attention heads",
    "layer": "whole blocks",
}


def _own_kind(pattern: Any, kind: str) -> bool:
    """Is ``pattern`` the physical granularity of ``kind`` (``Head()``, ``Layer()``, ``Embedding()``,
    ``Channel(physical=True)``)? The masking ``Channel()`` / "channel" is not."""
    if isinstance(pattern, str) or pattern is None:
        return False
    level = getattr(pattern, "level", None) or getattr(pattern, "kind", None)
    return level == kind and bool(getattr(pattern, "physical", kind != "channel"))


@dataclass
class StructuralMethod(Method):
    """Physical removal of channels / heads / layers / hidden size, scored by one criterion.

    ``criterion``: the default criterion (a registered name or :class:`~prunekit.criteria.Criterion`);
    ``kind``: "channel", "embedding", "head" or "layer". Options: see :data:`OPTIONS`.
    """

    name: str = "structural"
    criterion: str | Criterion = "l2"
    kind: str = "channel"
    description: str = ""
    needs_data: bool = False
    paper: str = ""
    structural: bool = True
    default_pattern: Any = None
    default_allocation: Any = "uniform"

    @property
    def options(self) -> frozenset[str]:  # type: ignore[override]  # read-only everywhere; depends on kind
        """The options this method's kind of unit honours (:data:`OPTIONS`)."""
        return OPTIONS[self.kind]

    def check_pattern(self, pattern: Any) -> None:
        """Refuse every pattern but this method's own units: a structural method removes
        {channels, heads, blocks, hidden dimensions} physically and masks nothing. Raises
        :class:`~prunekit.errors.PatternError` pointing at the masking method for that pattern."""
        if pattern is None or isinstance(pattern, Unstructured) or _own_kind(pattern, self.kind):
            return
        gran = parse_pattern(pattern)
        if isinstance(gran, Unstructured) or _own_kind(gran, self.kind):
            return
        words = UNIT_WORDS[self.kind]
        sparsity = f"{gran.fixed_sparsity:g}" if isinstance(gran, NM) else "0.5"
        raise PatternError(
            f"{self.name} removes {words} physically (the model gets smaller), so it takes no pattern "
            f"(pattern=None), not {gran}. To mask a {gran} pattern instead use a masking method: "
            f'pk.prune(model, "magnitude", sparsity={sparsity}, pattern="{gran}")'
            f"{' (zeroes whole output rows, shapes unchanged)' if str(gran) == 'channel' else ''}"
        )

    def resolve_criterion(self, options: dict[str, Any]) -> Criterion:
        """The criterion to score with: option ``criterion=`` or the method's own, checked for its level.
        Raises :class:`~prunekit.errors.UnknownNameError` / :class:`~prunekit.criteria.CriterionLevelError`
        listing what works."""
        return level_criterion(options.get("criterion") or self.criterion, LEVEL[self.kind], UNIT_WORDS[self.kind])

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Plan the removal of ``request.sparsity`` of each unit set with the structural engine
        (:mod:`prunekit.surgery`), then cut the model's tensors and modules; the per-layer result is the
        share of each layer's (or set's) units removed.

        Raises :class:`~prunekit.errors.PatternError` for a mask pattern, :class:`~prunekit.errors.ConfigError`
        for options this kind does not honour, :class:`~prunekit.errors.PrunekitError` for a model that
        carries masks, :class:`~prunekit.errors.NothingToPruneError` when the sparsity removes no unit (with
        the smallest sparsity that would), and what the engine raises.
        """
        self.check_pattern(request.pattern)
        opts = dict(request.options)
        unknown = set(opts) - self.options
        if unknown:
            raise ConfigError(
                f"unknown option(s) {sorted(unknown)} for method {self.name!r}; it accepts: "
                f"{', '.join(sorted(self.options))}"
            )
        crit = self.resolve_criterion(opts)
        check_options(opts.get("round_to"), opts.get("global_cap"))
        _refuse_masked(model)
        data = {
            "calibration": request.calibration,
            "loss_fn": opts.get("loss_fn"),
            "calib_batches": int(opts.get("calib_batches", 8)),
            "seed": request.seed,
        }
        own_config_(model)  # a config shared with another model (a teacher) must not change with this one
        if self.kind in ("channel", "embedding"):
            targets = [t.name for t in request.targets] if self.kind == "channel" else None
            plan = plan_channels(
                model,
                request.example_inputs,
                request.sparsity,
                criterion=crit,
                allocation=request.allocation,
                kind=self.kind,
                round_to=opts.get("round_to"),
                global_cap=opts.get("global_cap"),
                targets=targets,
                strict=bool(opts.get("strict", True)),
                validate=bool(opts.get("validate", True)),
                opaque=request.ignored_modules,
                **data,
            )
            if not plan.units_removed:
                raise _nothing_removed(
                    request.sparsity,
                    [g.size for g in plan.groups],
                    UNIT_WORDS[self.kind],
                    "channel group" if self.kind == "channel" else "hidden-size group",
                )
            old = apply_plan_(model, plan)
            groups = sum(len(r) > 0 for r in plan.remove)
            notes = [
                (
                    f"{plan.units_removed} {self.kind} units removed from {groups} groups by {crit.name} in "
                    f"{plan.seconds:.2f} s"
                ),
                *plan.notes,
            ]
            return MethodOutcome(layer_sparsity(model, old, targets), notes)
        if self.kind == "head":
            hplan = plan_heads(
                model,
                request.sparsity,
                criterion=crit,
                allocation=request.allocation,
                example_inputs=request.example_inputs,
                global_cap=opts.get("global_cap"),
                exact=bool(opts.get("exact_heads", False)),
                ignored=request.ignored_modules,
                **data,
            )
            if not any(len(r) for r in hplan.remove):
                raise _nothing_removed(
                    request.sparsity,
                    [b.groups for b in hplan.blocks],
                    "key/value groups",
                    "attention module",
                    extra=hplan.notes,
                )
            apply_head_plan_proved_(model, hplan, request.example_inputs, apply=apply_head_plan_)
            ls = {b.name: len(r) / b.groups for b, r in zip(hplan.blocks, hplan.remove)}
            return MethodOutcome(ls, [str(hplan)])
        if self.kind == "layer":
            lplan = plan_layers(
                model,
                request.example_inputs,
                request.sparsity,
                criterion=crit,
                allocation=request.allocation,
                identity_only=bool(opts.get("identity_only", False)),
                global_cap=opts.get("global_cap"),
                ignored=request.ignored_modules,
                **data,
            )
            if not lplan.remove:
                sizes: dict[str, int] = {}
                for n in lplan.candidates:
                    parent = n.rpartition(".")[0]
                    sizes[parent] = sizes.get(parent, 0) + 1
                raise _nothing_removed(request.sparsity, list(sizes.values()), "blocks", "stack", extra=lplan.notes)
            apply_layer_plan_(model, lplan)
            return MethodOutcome({n: 1.0 for n in lplan.remove}, [str(lplan)] + lplan.notes)
        raise ConfigError(f"unknown structural kind {self.kind!r}; use one of: {', '.join(OPTIONS)}")


def _refuse_masked(model: nn.Module) -> None:
    """Physical pruning of a model that carries masks is refused at once (before any tracing), naming the fix:
    its masked weights are parametrizations the structural engine does not slice."""
    from torch.nn.utils import parametrize

    from prunekit.apply.masks import get_mask

    # prunekit's masks only: other parametrizations (weight_norm, spectral_norm) are sliced by the surgery
    masked = [
        n
        for n, m in model.named_modules()
        if parametrize.is_parametrized(m) and any(get_mask(m, t) is not None for t in m.parametrizations.keys())
    ]
    if masked:
        raise PrunekitError(
            f"the model carries masks ({len(masked)} module(s), e.g. {masked[0]!r}; see prunekit.get_mask): "
            f"physical pruning slices plain weights, so call pk.squash_masks_(model) first (masked weights become "
            f"real zeros), then prune physically"
        )


def _nothing_removed(
    sparsity: float, sizes: list[int], words: str, what: str, extra: list[str] | None = None
) -> NothingToPruneError:
    """The refusal for a structural plan that removes no unit: the sparsity is too low for the unit counts
    (every set keeps at least one unit and loses ``floor(sparsity * n)``). Names the smallest sparsity that
    removes one unit."""
    biggest = max(sizes) if sizes else 0
    rounded = [n for n in (extra or []) if "cannot state" in n and "became" in n]
    if rounded:  # the allocation removed some, the config's head counts rounded it back to none
        return NothingToPruneError(f"sparsity {sparsity:g} removes no {words}: {rounded[0]}; the model is unchanged")
    if biggest < 2:
        why = f"every {what} has at most one of its {words} left (at least one is kept), so none can be removed"
    else:
        why = (
            f"the largest {what} has {biggest} {words}, so sparsity={sparsity:g} rounds down to 0 of them; "
            f"the smallest sparsity that removes one is {1 / biggest:.4g} (uniform allocation)"
        )
    more = [n for n in (extra or []) if "keep" in n or "kept" in n]
    return NothingToPruneError(
        f"sparsity {sparsity:g} removes no {words}: {why}; the model is unchanged" + (f" ({more[0]})" if more else "")
    )


_METHODS = [
    StructuralMethod(
        "l1-channel",
        "magnitude",
        "channel",
        "remove channels physically by group L1 norm (mean |w| of each group's units; Li et al. 2017)",
        paper="Pruning Filters for Efficient ConvNets",
    ),
    StructuralMethod(
        "l2-channel",
        "l2",
        "channel",
        "remove channels physically by group L2 norm (mean w^2 of each group's units; DepGraph, Fang et al. 2023)",
        paper="DepGraph: Towards Any Structural Pruning",
    ),
    StructuralMethod(
        "taylor-channel",
        "taylor",
        "channel",
        "remove channels by first-order Taylor importance (Molchanov et al. 2019); needs calibration",
        needs_data=True,
        paper="Importance Estimation for Neural Network Pruning",
    ),
    StructuralMethod(
        "hessian-channel",
        "obd",
        "channel",
        "remove channels by OBD saliency with the Fisher diagonal (LeCun et al. 1990); needs calibration",
        needs_data=True,
        paper="Optimal Brain Damage",
    ),
    StructuralMethod(
        "fpgm-channel",
        "fpgm",
        "channel",
        "remove channels closest to the geometric median of their layer's filters (He et al. 2019)",
        paper="Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration",
    ),
    StructuralMethod(
        "bn-scale-channel",
        "bn-scale",
        "channel",
        "remove channels with the smallest BN scale |gamma| (network slimming, Liu et al. 2017); groups "
        "that feed no normalisation layer are kept whole",
        paper="Learning Efficient Convolutional Networks through Network Slimming",
    ),
    StructuralMethod(
        "lamp-channel",
        "lamp",
        "channel",
        "remove channels by LAMP scores of their groups' units (Lee et al. 2021)",
        paper="Layer-adaptive Sparsity for the Magnitude-based Pruning",
    ),
    StructuralMethod(
        "random-channel", "random", "channel", "remove random channels physically (seeded): the structural baseline"
    ),
    StructuralMethod(
        "head",
        "l2",
        "head",
        "remove attention heads (GQA aware: key/value groups with their query heads) by L2 norm; "
        "criterion= any head criterion",
        paper="Are Sixteen Heads Really Better than One?",
    ),
    StructuralMethod(
        "layer",
        "influence",
        "layer",
        "remove whole blocks with the least influence 1 - cos(in, out) (ShortGPT, Men et al. 2024); "
        "criterion= any layer criterion",
        paper="ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
    ),
    StructuralMethod(
        "embedding",
        "l2",
        "embedding",
        "remove hidden dimensions of a transformer (embedding columns and the residual stream)",
        paper="DepGraph: Towards Any Structural Pruning",
    ),
]

for _m in _METHODS:
    if _m.name not in METHODS:
        METHODS.add(_m.name, _m, _m.description)
