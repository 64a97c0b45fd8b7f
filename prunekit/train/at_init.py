"""Pruning at initialisation (PaI): one-shot methods usable through :func:`prunekit.prune` that the trainer
applies before the first step: SynFlow (Tanaka et al. 2020), GraSP (Wang et al. 2020), random with ERK
(Evci et al. 2020), and :class:`AtInit`, the callback that runs any one-shot method at step 0.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from prunekit.allocation.builtin import Global
from prunekit.api import prune
from prunekit.apply.masks import original_parameter
from prunekit.apply.plan import LayerPlan, Plan
from prunekit.apply.scores import element_scores, gather_statistics
from prunekit.criteria import resolve_criterion
from prunekit.errors import (
    ConfigError,
    PatternError,
)
from prunekit.granularity.patterns import Unstructured
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest, ScoreMethod, register_method
from prunekit.targets import Target
from prunekit.train.callbacks import Callback

__all__ = [
    "AtInit",
    "ERKRandom",
    "GraSP",
    "SynFlow",
    "grasp_importance",
    "synflow_importance",
]

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer


# ---- pruning at initialisation: one-shot methods ---------------------------------------------------


def _global_plan(
    name: str, targets: list[Target], importance: dict[str, Tensor], sparsity: float, allocation: Any, seed: int
) -> Plan:
    """Masks from per-weight importance scores (higher = keep) with the given allocation."""
    from prunekit.allocation.builtin import LayerInfo

    infos = [
        LayerInfo(
            t.name,
            tuple(t.weight.shape),
            importance[t.name].reshape(-1),
            torch.ones(t.weight.numel(), dtype=torch.long),
        )
        for t in targets
    ]
    per_layer = allocation.allocate(infos, sparsity)
    layers = [
        LayerPlan(
            t.name,
            t.param,
            tuple(t.weight.shape),
            per_layer[t.name],
            Unstructured().mask(importance[t.name], min(per_layer[t.name], 1 - 1e-12)).cpu(),
        )
        for t in targets
    ]
    return Plan(layers, name, {"sparsity": sparsity, "allocation": str(allocation), "seed": seed})


def _scores_in_stored_layout(
    criterion: str, model: nn.Module, targets: list[Target], seed: int = 0, **data: Any
) -> dict[str, Tensor]:
    """Element scores of ``criterion`` (:mod:`prunekit.criteria`) from the unified statistics collector,
    shaped like each stored weight."""
    crit = resolve_criterion(criterion)
    stats = gather_statistics(crit, model, targets, **data)
    scores = element_scores(crit, targets, stats, seed)
    return {t.name: t.layout.from_canonical(scores[t.name]).contiguous() for t in targets}


def synflow_importance(
    model: nn.Module, targets: list[Target], example_inputs: Any, masks: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """SynFlow scores ``|dR/dw * w|`` with ``R = 1^T (prod_l |W_l|) 1`` (Tanaka et al. 2020, "Pruning
    neural networks without any data by iteratively conserving synaptic flow"): the ``synflow`` criterion.

    Data-free: the input is all ones, shaped like ``example_inputs`` (token ids are used as given: an
    embedding lookup has no all-ones input); every parameter is replaced by its absolute value and the
    network runs in float64, eval mode, on a copy (:func:`prunekit.calibration.collect`). ``masks``
    (``{target name: keep-mask}`` shaped like the stored weight) zero weights first, as SynFlow's rounds do.
    Returns ``{target name: scores}`` shaped like each stored weight. Raises
    :class:`~prunekit.errors.MissingDataError` without ``example_inputs``.
    """
    work, wtargets = model, targets
    if masks:
        work = copy.deepcopy(model)
        modules = dict(work.named_modules())
        wtargets = [Target(t.name, modules[t.name], t.param) for t in targets]
        with torch.no_grad():
            for t in wtargets:
                if t.name in masks:
                    p = original_parameter(t.module, t.param)
                    p.mul_(masks[t.name].to(device=p.device, dtype=p.dtype))
    return _scores_in_stored_layout("synflow", work, wtargets, example_inputs=example_inputs)


@register_method(
    "synflow",
    when="at-init",
    default_allocation="global",
    paper="Pruning neural networks without any data by iteratively conserving synaptic flow",
)
class SynFlow(Method):
    """data-free iterative synaptic-flow scores |dR/dw * w| (Tanaka et al. 2020); needs example_inputs.

    ``rounds`` rounds of scoring (the ``synflow`` criterion) and global pruning with the exponential
    schedule ``s_k = 1 - (1 - s)^(k / rounds)``; weights pruned in a round are zero in the next. Option:
    ``rounds`` (100). Unstructured only (:class:`PatternError` otherwise).
    """

    options: ClassVar[frozenset[str]] = frozenset({"rounds"})

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Prune ``model`` in place in ``rounds`` rounds of SynFlow scoring and global (or the request's)
        allocation. Raises :class:`~prunekit.errors.PatternError` for a pattern other than unstructured,
        :class:`~prunekit.errors.ConfigError` for ``rounds`` < 1 and
        :class:`~prunekit.errors.MissingDataError` without example inputs."""
        if not isinstance(request.pattern, Unstructured):
            raise PatternError(
                f"synflow prunes single weights in rounds: use pattern=None (unstructured), not "
                f"{request.pattern}; or prunekit.Pruner(criterion='synflow', granularity=...) for one "
                "round with another pattern"
            )
        rounds = int(request.options.get("rounds", 100))
        if rounds < 1:
            raise ConfigError("synflow needs rounds >= 1")
        masks: dict[str, Tensor] = {t.name: torch.ones_like(t.weight, dtype=torch.bool) for t in request.targets}
        alloc = request.allocation or Global()
        for k in range(1, rounds + 1):
            s_k = 1.0 - (1.0 - request.sparsity) ** (k / rounds)
            scores = synflow_importance(model, request.targets, request.example_inputs, masks)
            scores = {n: torch.where(masks[n].to(s.device), s, torch.full_like(s, -1.0)) for n, s in scores.items()}
            plan = _global_plan(self.name, request.targets, scores, s_k, alloc, request.seed)
            masks = {lp.name: lp.mask & masks[lp.name].cpu() for lp in plan.layers}
        plan = Plan(
            [
                LayerPlan(
                    t.name, t.param, tuple(t.weight.shape), 1 - masks[t.name].float().mean().item(), masks[t.name]
                )
                for t in request.targets
            ],
            self.name,
            {"rounds": rounds},
        )
        plan.apply_(model)
        return MethodOutcome(plan.layer_sparsity(), [f"synflow: {rounds} rounds, no data used"], plan)


def grasp_importance(
    model: nn.Module, targets: list[Target], batches: Any, temperature: float = 200.0, loss_fn: Any = None
) -> dict[str, Tensor]:
    """GraSP (Wang et al. 2020, "Picking Winning Tickets Before Training by Preserving Gradient Flow"): the
    ``grasp`` criterion.

    The score of removing ``w`` is ``S = -w * (H g)``, with ``g`` the loss gradient and ``H g`` the
    Hessian-gradient product (double back-propagation, under the math attention kernel so that fused
    attention does not stop it); the weights with the *largest* S are removed, so the importance returned
    here is ``-S = w * (H g)``. For ``(inputs, targets)`` batches of a classifier the logits are divided by
    ``temperature`` as in the paper; other forms (token batches, dicts with labels, a loss callable, or
    ``loss_fn``) use their loss as it is. Eval mode; the model's gradients and mode are restored. Returns
    ``{target name: scores}`` shaped like each stored weight; raises :class:`~prunekit.errors.DataError`
    for data no loss can be formed from.
    """
    return _scores_in_stored_layout(
        "grasp", model, targets, calibration=batches, loss_fn=loss_fn, grasp_temperature=temperature
    )


@register_method(
    "grasp",
    when="at-init",
    default_allocation="global",
    needs_data=True,
    paper="Picking Winning Tickets Before Training by Preserving Gradient Flow",
)
class GraSP(Method):
    """gradient-flow preserving scores -w*(Hg) (Wang et al. 2020); needs calibration.

    One shot at initialisation with global allocation; unstructured only. Options: ``temperature`` (200,
    for ``(inputs, targets)`` batches of a classifier), ``loss_fn``.
    """

    options: ClassVar[frozenset[str]] = frozenset({"temperature", "loss_fn"})

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Score with :func:`grasp_importance` on the request's calibration data and prune once with global
        (or the request's) allocation. Raises :class:`~prunekit.errors.PatternError` for a pattern other than
        unstructured and :class:`~prunekit.errors.DataError` / :class:`~prunekit.errors.MissingDataError` for
        calibration no loss can be formed from."""
        if not isinstance(request.pattern, Unstructured):
            raise PatternError(
                f"grasp scores single weights: use pattern=None (unstructured), not {request.pattern}; "
                "or prunekit.Pruner(criterion='grasp', granularity=...)"
            )
        scores = grasp_importance(
            model,
            request.targets,
            request.calibration,
            float(request.options.get("temperature", 200.0)),
            request.options.get("loss_fn"),
        )
        plan = _global_plan(
            self.name, request.targets, scores, request.sparsity, request.allocation or Global(), request.seed
        )
        plan.apply_(model)
        return MethodOutcome(plan.layer_sparsity(), plan=plan)


@register_method(
    "erk",
    criterion="random",
    default_allocation="erk",
    when="at-init",
    paper="Rigging the Lottery: Making All Tickets Winners",
)
class ERKRandom(ScoreMethod):
    """random masks with Erdos-Renyi-Kernel layer sparsities (Evci et al. 2020)."""


class AtInit(Callback):
    """Apply a one-shot method before the first training step (pruning at initialisation)."""

    def __init__(self, method: str, sparsity: float, calibration_batches: int = 10, **options: Any):
        self.method, self.sparsity, self.n, self.options = method, sparsity, calibration_batches, options
        self.report: Any = None

    def on_train_begin(self, trainer: Trainer) -> None:
        """Prune ``trainer.model`` with the method before the optimizer exists, on ``calibration_batches``
        training batches when the method needs data; the report is kept in ``self.report``."""
        m = METHODS.get(self.method)
        calib = trainer.calibration_batches(self.n) if m.needs_data else None
        example = trainer.x[:1]
        self.report = prune(
            trainer.model,
            m,
            sparsity=self.sparsity,
            calibration=calib,
            example_inputs=example,
            measure=False,
            **self.options,
        )
        trainer.history.notes.append(f"{self.method} at initialisation: sparsity {self.report.sparsity:.4f}")
