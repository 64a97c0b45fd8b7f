"""Plan, then apply: a pruning decision that can be printed, saved, replayed, and applied atomically.

:class:`Pruner` composes the taxonomy's parts (criterion, granularity, allocation, schedule) and computes
a :class:`Plan`, the keep-mask of every pruned parameter, without changing the model. ``plan.apply_(model)``
applies it as mask parametrizations; if anything fails, every parameter is left bit-identical to before.
Plans save to JSON (masks bit-packed) and replay on a fresh copy of the model.
"""

from __future__ import annotations

import base64
import io
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn

from prunekit.allocation.builtin import Allocation, LayerInfo, Uniform, resolve_allocation
from prunekit.apply.masks import apply_mask_, get_mask
from prunekit.apply.scores import check_scores, gather_statistics, score_input, without_norm_scale
from prunekit.apply.transaction import transaction
from prunekit.calibration import LayerStats
from prunekit.criteria import Criterion, resolve_criterion
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    NothingToPruneError,
    PatternError,
    PlanError,
)
from prunekit.granularity.patterns import NM, Granularity, Unstructured, check_sparsity, parse_pattern
from prunekit.schedules.builtin import Schedule
from prunekit.targets import Ignore, Target, check_finite, select_targets

__all__ = [
    "LayerPlan",
    "Plan",
    "Pruner",
    "check_seed",
    "split_by_pattern",
]

PLAN_VERSION = 1


@dataclass
class LayerPlan:
    """The decision for one parameter: its keep-mask and the sparsity it was given."""

    name: str
    param: str
    shape: tuple[int, ...]
    sparsity: float
    mask: Tensor

    @property
    def achieved(self) -> float:
        """The sparsity the mask reaches: the fraction of its entries that are False."""
        return 1.0 - self.mask.sum().item() / self.mask.numel()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: name, param, shape, sparsity and the mask bit-packed (1 bit per weight) in
        base64."""
        bits = np.packbits(self.mask.reshape(-1).cpu().numpy().astype(np.uint8))
        return {
            "name": self.name,
            "param": self.param,
            "shape": list(self.shape),
            "sparsity": self.sparsity,
            "mask": base64.b64encode(bits.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerPlan:
        """The inverse of :meth:`to_dict`. Raises :class:`~prunekit.errors.PlanError` for a missing field or a
        mask that does not decode to the shape."""
        try:
            shape = tuple(int(s) for s in d["shape"])
            numel = math.prod(shape)
            bits = np.frombuffer(base64.b64decode(d["mask"], validate=True), dtype=np.uint8)
            if len(bits) != (numel + 7) // 8:
                raise ValueError("mask length does not match the shape")
            mask = torch.from_numpy(np.unpackbits(bits, count=numel).astype(bool)).reshape(shape)
            return cls(str(d["name"]), str(d.get("param", "weight")), shape, float(d["sparsity"]), mask)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            name = d.get("name", "?") if isinstance(d, dict) else "?"
            raise PlanError(f"plan entry {name!r} is invalid: {e}; save the plan again with Plan.save") from None


@dataclass
class Plan:
    """Masks for a set of parameters plus how they were chosen. Apply with :meth:`apply_`."""

    layers: list[LayerPlan]
    method: str = "custom"
    settings: dict[str, Any] = field(default_factory=dict)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        """The overall sparsity of the planned parameters, in weights (0 for an empty plan)."""
        total = sum(lp.mask.numel() for lp in self.layers)
        return 1.0 - sum(int(lp.mask.sum()) for lp in self.layers) / total if total else 0.0

    def layer_sparsity(self) -> dict[str, float]:
        """``{module name: sparsity}`` as the allocation gave it (the target, not the achieved value)."""
        return {lp.name: lp.sparsity for lp in self.layers}

    def _resolve(self, model: nn.Module) -> list[tuple[LayerPlan, nn.Module]]:
        modules = dict(model.named_modules())
        out = []
        for lp in self.layers:
            module = modules.get(lp.name)
            if module is None:
                raise PlanError(f"the plan prunes {lp.name!r}, which this model does not have")
            param = getattr(module, lp.param, None)
            if not isinstance(param, Tensor) or tuple(param.shape) != lp.shape:
                got = None if not isinstance(param, Tensor) else tuple(param.shape)
                raise PlanError(f"{lp.name}.{lp.param} has shape {got}, the plan expects {lp.shape}")
            out.append((lp, module))
        return out

    def apply_(self, model: nn.Module) -> nn.Module:
        """Attach every mask to ``model`` (in place) and return it. All-or-nothing: on any error the model is
        unchanged. Raises :class:`~prunekit.errors.PlanError` when the model lacks a planned module or a
        parameter has another shape."""
        resolved = self._resolve(model)  # validate everything before touching anything
        with transaction(model):
            for lp, module in resolved:
                apply_mask_(module, lp.mask, lp.param)
        return model

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the plan (``plan_version``, method, settings, ignored layers, layers)."""
        return {
            "plan_version": PLAN_VERSION,
            "method": self.method,
            "settings": self.settings,
            "ignored": [list(i) for i in self.ignored],
            "layers": [lp.to_dict() for lp in self.layers],
        }

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), default=str))
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """The inverse of :meth:`to_dict`. Raises :class:`~prunekit.errors.PlanError` for another
        ``plan_version`` or corrupt entries."""
        if not isinstance(d, dict) or d.get("plan_version") != PLAN_VERSION:
            raise PlanError("not a prunekit plan (missing or unknown plan_version); write plans with Plan.save")
        layers, settings, ignored = d.get("layers", []), d.get("settings", {}), d.get("ignored", [])
        if not isinstance(layers, list) or not isinstance(settings, dict) or not isinstance(ignored, list):
            raise PlanError(
                "the plan's layers, settings or ignored entries are corrupt; save the plan again with Plan.save"
            )
        return cls(
            layers=[LayerPlan.from_dict(x) for x in layers],
            method=str(d.get("method", "custom")),
            settings=dict(settings),
            ignored=[tuple(i) for i in ignored],
        )

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        """A plan written by :meth:`save`. Raises :class:`~prunekit.errors.PlanError` when the file is missing,
        not JSON or not a plan."""
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            raise PlanError(
                f"no plan file at {path}; write one with Plan.save(path) (or pruner.plan(...).save)"
            ) from None
        except (IsADirectoryError, UnicodeDecodeError) as e:
            raise PlanError(
                f"{path} is not a plan file ({type(e).__name__}); pass the JSON file Plan.save wrote"
            ) from None
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise PlanError(f"{path} is not a valid plan file: {e}; pass the JSON file Plan.save wrote") from None

    def table(self) -> Table:
        """A rich table: per pruned parameter its shape, target and achieved sparsity; the layers left dense
        dim, with the reason in the last column."""
        t = Table(title=f"plan: {self.method}  overall sparsity {self.sparsity:.4f}")
        for col in ("layer", "shape", "target", "sparsity", "note"):
            t.add_column(col, justify="right" if col in ("shape", "target", "sparsity") else "left")
        for lp in self.layers:
            t.add_row(
                f"{lp.name}.{lp.param}", "x".join(map(str, lp.shape)), f"{lp.sparsity:.4f}", f"{lp.achieved:.4f}", ""
            )
        for name, why in self.ignored:
            t.add_row(name, "", "-", "dense", why, style="dim")
        return t

    def __str__(self) -> str:
        buf = io.StringIO()
        Console(file=buf, width=120, force_terminal=False, color_system=None).print(self.table())
        return buf.getvalue()


def _unit_words(g: Granularity) -> str:
    return {
        "element": f"{g} units (single weights, N:M groups, tiles)",
        "channel": f"{g} units (output channels)",
        "head": "attention heads",
        "layer": "whole layers (blocks)",
        "embedding": "hidden dimensions (channels of the residual stream)",
    }.get(g.level, str(g))


def split_by_pattern(
    targets: list[Target], pattern: Granularity, skip_incompatible: bool = False
) -> tuple[list[Target], list[tuple[str, str]]]:
    """Targets that fit ``pattern``, and those that do not (left dense when ``skip_incompatible``).

    Without ``skip_incompatible`` any misfit raises one :class:`~prunekit.errors.PatternError` listing every
    such layer; :class:`~prunekit.errors.NothingToPruneError` when no layer fits.
    """
    fit, ignored, errors = [], [], []
    for t in targets:
        try:
            pattern.check(t.name, t.layout.to_canonical(t.weight.detach()))
            fit.append(t)
        except PatternError as e:
            errors.append(str(e))
            ignored.append((t.name, f"does not fit pattern {pattern}"))
    if errors and not skip_incompatible:
        raise PatternError(f"{len(errors)} layer(s) do not fit pattern {pattern}:\n  " + "\n  ".join(errors))
    if not fit:
        raise NothingToPruneError(f"no layer fits pattern {pattern}; nothing to prune")
    return fit, ignored


def check_seed(seed: Any) -> int:
    """``seed`` as an int; :class:`~prunekit.errors.ConfigError` for anything that is not an integer (a
    string, a float)."""
    try:
        return operator.index(seed)
    except TypeError:
        raise ConfigError(f"seed must be an integer, e.g. seed=0; got {seed!r}") from None


@dataclass
class Pruner:
    """Compose the parts: ``Pruner(criterion, granularity, allocation, schedule).plan(model, ...)``.

    ``criterion``: a registered name (``prunekit criteria``), ``"l<p>"`` or a :class:`Criterion`;
    ``granularity``: a :class:`Granularity` or its string form ("2:4", "4x4", "channel", and the physical
    "physical-channel", "head", "layer", "embedding"); ``allocation``: a registered name or
    :class:`Allocation`; ``overrides``: ``{module name: sparsity}`` fixed per layer (the allocation spreads
    the target over the other layers); ``schedule``: when to prune, for :meth:`step` in a training loop.

    How scores become a mask: the statistics the criterion needs are gathered for the pruned layers
    (:func:`prunekit.calibration.collect`, from ``calibration`` / ``example_inputs`` / ``loss_fn``).
    Single weights and N:M groups are ranked by the element scores (:meth:`Criterion.element`); tiles and
    channels by :meth:`Criterion.unit` of the summed contributions (:meth:`Criterion.contribution`) of
    their weights, so a unit's score is the criterion's, not an average of element scores (first-order
    Taylor squares the signed sum; LAMP normalises within the layer). Weights pruned earlier rank first
    (masks only shrink).

    A physical granularity cannot be a mask plan: pass the pruner to :func:`prunekit.prune`, which carries
    it out with the structural engine. Raises :class:`~prunekit.criteria.CriterionLevelError` when the
    criterion has no meaning for the granularity's units, :class:`~prunekit.errors.ConfigError` for N:M with
    an allocation other than uniform (and for malformed overrides, schedule or seed).
    """

    criterion: str | Criterion = "magnitude"
    granularity: str | Granularity | None = None
    allocation: str | Allocation | None = None
    sparsity: float | None = None
    schedule: Schedule | None = None
    overrides: dict[str, float] | None = None
    ignore: Ignore = None
    prune_classifier: bool = False
    skip_incompatible: bool = False
    seed: int = 0
    method_name: str = "custom"

    def __post_init__(self) -> None:
        #: which of granularity / allocation the caller chose (prunekit.prune may fill the others)
        self.given = frozenset(n for n in ("granularity", "allocation") if getattr(self, n) is not None)
        self.criterion = resolve_criterion(self.criterion)
        self.granularity = parse_pattern(self.granularity)
        self.allocation = resolve_allocation(self.allocation)
        self.criterion.check_level(self.granularity.criterion_level, _unit_words(self.granularity))
        if isinstance(self.granularity, NM) and not isinstance(self.allocation, Uniform):
            raise ConfigError(
                f"pattern {self.granularity} fixes every layer at {self.granularity.fixed_sparsity:g} sparsity; "
                f"allocation {self.allocation} cannot change that (use allocation='uniform')"
            )
        if self.overrides is not None and not isinstance(self.overrides, Mapping):
            raise ConfigError(
                f"overrides takes {{module name: sparsity}}, e.g. overrides={{'features.0': 0.3}}; "
                f"got {type(self.overrides).__name__}"
            )
        if self.schedule is not None and not isinstance(self.schedule, Schedule):
            raise ConfigError(
                f"schedule takes a Schedule object, e.g. schedule=prunekit.Gradual(start=0, end=1000, "
                f"final_sparsity=0.8), prunekit.Iterative(...) or prunekit.OneShot(...); got {self.schedule!r}"
            )
        check_seed(self.seed)
        for name, s in (self.overrides or {}).items():
            try:
                check_sparsity(s)
            except InvalidSparsityError as e:
                raise InvalidSparsityError(f"override for {name!r}: {e}") from None

    @property
    def physical(self) -> bool:
        """Does the granularity change the architecture (carried out by :func:`prunekit.prune`)?"""
        return self.granularity.physical  # type: ignore[union-attr]

    def target_sparsity(self, sparsity: float | None) -> float:
        """The sparsity to plan for: ``sparsity``, else the pruner's, else the schedule's final one, else an
        N:M pattern's fixed one. Raises :class:`~prunekit.errors.InvalidSparsityError` when there is none, it
        is outside [0, 1), or it contradicts an N:M pattern."""
        if sparsity is None:
            sparsity = (
                self.sparsity
                if self.sparsity is not None
                else (self.schedule.final_sparsity if self.schedule is not None else None)
            )
        g = self.granularity
        if sparsity is None and isinstance(g, NM):
            sparsity = g.fixed_sparsity
        if sparsity is None:
            raise InvalidSparsityError("no sparsity given: pass sparsity=... (a number in [0, 1))")
        check_sparsity(sparsity)
        if isinstance(g, NM):
            g.check_sparsity(sparsity)
            return g.fixed_sparsity
        return float(sparsity)

    def select(self, model: nn.Module) -> tuple[list[Target], list[tuple[str, str]]]:
        """The parameters this pruner would prune, and those it leaves dense with the reason.

        Raises :class:`~prunekit.errors.ConfigError` for a physical granularity, and what
        :func:`~prunekit.targets.select_targets` and :func:`split_by_pattern` raise.
        """
        self._masking_only()
        sel = select_targets(model, self.ignore, prune_classifier=self.prune_classifier)
        targets, ignored = split_by_pattern(sel.targets, self.granularity, self.skip_incompatible)  # type: ignore[arg-type]
        return targets, sel.ignored + ignored

    def _masking_only(self) -> None:
        if self.physical:
            raise ConfigError(
                f"granularity {self.granularity} removes units from the architecture, which a mask plan cannot "
                f"describe: run it with prunekit.prune(model, pruner, sparsity=..., example_inputs=...)"
            )

    def plan(
        self,
        model: nn.Module,
        *,
        sparsity: float | None = None,
        example_inputs: Any = None,
        calibration: Any = None,
        loss_fn: Any = None,
        targets: list[Target] | None = None,
        ignored: list[tuple[str, str]] | None = None,
    ) -> Plan:
        """Compute the masks (the model is not changed).

        ``calibration``: data for data-driven criteria, in any form :class:`prunekit.calibration.Calibration`
        reads; ``example_inputs``: a batch (SynFlow uses only its shape); ``loss_fn(outputs, targets)``
        replaces the default loss of gradient criteria. Raises :class:`~prunekit.errors.MissingDataError`
        or :class:`~prunekit.errors.DataError` when the criterion cannot get its statistics from what was
        passed, :class:`~prunekit.errors.ConfigError` for overrides naming layers that are not pruned (and for a
        physical granularity), :class:`~prunekit.errors.InvalidSparsityError` as :meth:`target_sparsity` does.
        """
        self._masking_only()
        sparsity = self.target_sparsity(sparsity)
        if targets is None:
            targets, ignored = self.select(model)
        check_finite(targets)
        crit: Criterion = self.criterion  # type: ignore[assignment]
        gran: Granularity = self.granularity  # type: ignore[assignment]
        overrides = dict(self.overrides or {})
        unknown = set(overrides) - {t.name for t in targets}
        if unknown:
            raise ConfigError(f"overrides name layers that are not pruned: {sorted(unknown)}")
        stats = gather_statistics(
            crit, model, targets, calibration=calibration, example_inputs=example_inputs, loss_fn=loss_fn
        )
        targets, ignored = without_norm_scale(crit, targets, stats, list(ignored or []))
        by_element = isinstance(gran, (Unstructured, NM))
        unit_scores: dict[str, Tensor] = {}
        unit_sizes: dict[str, Tensor] = {}
        existing: dict[str, Tensor | None] = {}
        for t in targets:
            old = get_mask(t.module, t.param)
            prev = None if old is None else t.layout.to_canonical(old.to(torch.bool))
            existing[t.name] = prev
            s_in = score_input(crit, t, stats.get(t.name) or LayerStats(t.name), self.seed)
            if by_element:
                s = crit.element(s_in)
                check_scores(crit, t, s)
                if prev is not None:  # already pruned weights go first: masks only shrink
                    s = torch.where(prev.to(s.device), s, torch.full_like(s, float("-inf")))
                unit_scores[t.name], unit_sizes[t.name] = gran.units(s)
                continue
            c = crit.contribution(s_in)
            check_scores(crit, t, c)
            if prev is not None:  # pruned weights add nothing to their unit
                c = torch.where(prev.to(c.device), c, torch.zeros_like(c))
            sums, sizes = gran.unit_sums(c)
            us = crit.unit(sums, sizes)
            if prev is not None:  # units pruned whole go first
                alive, _ = gran.unit_sums(prev.to(torch.float32))
                us = torch.where(alive.to(us.device) > 0, us, torch.full_like(us, float("-inf")))
            unit_scores[t.name], unit_sizes[t.name] = us, sizes
        free = [t for t in targets if t.name not in overrides]
        if isinstance(gran, NM):
            layer_sparsity = {t.name: gran.fixed_sparsity for t in targets}
        else:
            layer_sparsity = self._allocate_keeping_a_unit(free, sparsity, unit_scores, unit_sizes)
            layer_sparsity.update(overrides)
        layers = []
        for t in targets:
            s_l = layer_sparsity[t.name]
            shape = torch.Size(t.layout.canonical_shape(tuple(t.weight.shape)))
            mask = gran.mask_units(
                unit_scores[t.name],
                unit_sizes[t.name],
                shape,
                None if isinstance(gran, NM) else min(max(s_l, 0.0), 1.0 - 1e-12),  # type: ignore[arg-type]
            )
            prev = existing[t.name]
            if prev is not None:  # a pattern that keeps a group whole can keep an already-pruned weight
                mask = mask & prev.to(mask.device)
            mask = t.layout.from_canonical(mask).contiguous()
            layers.append(LayerPlan(t.name, t.param, tuple(t.weight.shape), float(s_l), mask.cpu()))
        settings = {
            "criterion": crit.name,
            "pattern": str(gran),
            "allocation": str(self.allocation),
            "sparsity": sparsity,
            "seed": self.seed,
        }
        if overrides:
            settings["overrides"] = overrides
        return Plan(layers, self.method_name, settings, list(ignored or []))

    def _allocate_keeping_a_unit(
        self, free: list[Target], sparsity: float, unit_scores: dict[str, Tensor], unit_sizes: dict[str, Tensor]
    ) -> dict[str, float]:
        """The allocation's per-layer sparsity over ``free``, with no layer emptied: a mask keeps at least a
        layer's highest-scoring unit (:meth:`Granularity.keep_units`), so a layer the allocation would empty
        is held at that floor and the rest of the target is spread again over the other layers (their
        allocation at the adjusted target), which meets the overall target as closely as they allow."""
        size = {t.name: float(unit_sizes[t.name].double().sum()) for t in free}
        total = sum(size.values())
        held: dict[str, float] = {}  # layer -> sparsity at its floor (all but its best unit)
        while True:
            rest = [t for t in free if t.name not in held]
            rest_size = sum(size[t.name] for t in rest)
            target = sparsity
            if held and rest_size > 0:
                removed = sum(held[n] * size[n] for n in held)
                target = min(max((sparsity * total - removed) / rest_size, 0.0), 1.0 - 1e-9)
            infos = [
                LayerInfo(
                    t.name,
                    tuple(t.layout.canonical_shape(tuple(t.weight.shape))),
                    unit_scores[t.name],
                    unit_sizes[t.name],
                )
                for t in rest
            ]
            out = self.allocation.allocate(infos, target) if infos else {}  # type: ignore[union-attr]
            newly = {}
            for t in rest:
                w = size[t.name]
                best = float(unit_sizes[t.name][int(torch.argmax(unit_scores[t.name]))])
                if w > 0 and out[t.name] * w > w - best / 2:  # the rounding would remove every unit
                    newly[t.name] = (w - best) / w
            if not newly or len(newly) == len(rest):
                return {**out, **held, **newly}
            held.update(newly)

    def step(self, model: nn.Module, step: int, **kwargs: Any) -> Plan | None:
        """In a training loop: prune to ``schedule.sparsity_at(step)`` when the schedule acts at ``step``.

        Returns the applied plan, or None when nothing changed at this step. Masks only shrink. Raises
        :class:`~prunekit.errors.ConfigError` without a schedule.
        """
        if self.schedule is None:
            raise ConfigError("Pruner.step needs a schedule (e.g. Gradual(start, end, final_sparsity))")
        if not self.schedule.acts_at(step):
            return None
        target = self.schedule.sparsity_at(step)
        if target <= 0.0:
            return None
        plan = self.plan(model, sparsity=target, **kwargs)
        plan.apply_(model)
        return plan
