"""The survey's "when to prune" axis: methods at initialisation, during training and after training.

Pruning at initialisation (PaI) methods are one-shot methods (usable through :func:`prunekit.prune`) that
the trainer applies before the first step: ``random``, ``erk``, ``snip``, ``grasp``, ``synflow``.
Methods that act during training are :class:`~prunekit.train.trainer.Callback` objects: ``gmp``,
``slimming``, ``group-lasso``, ``sfp``, ``set``, ``rigl``, ``imp`` (lottery tickets with rewinding) and
``early-bird``. All are registered in :data:`prunekit.METHODS`; calling :func:`prunekit.prune` with a
training-time method explains how to use it with the trainer.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.allocation.builtin import Global
from prunekit.api import prune
from prunekit.apply.masks import apply_mask_, masked_parameters, original_parameter, set_mask_
from prunekit.apply.plan import LayerPlan, Plan, Pruner, element_scores, gather_statistics
from prunekit.criteria import resolve_criterion
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    PatternError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.granularity.patterns import Channel, Unstructured, lowest_k_mask
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest, ScoreMethod, register_method
from prunekit.schedules.builtin import Gradual
from prunekit.targets import Target, select_targets
from prunekit.train.callbacks import Callback

__all__ = [
    "AtInit",
    "DynamicSparse",
    "ERKRandom",
    "EarlyBird",
    "GMP",
    "GraSP",
    "GroupLasso",
    "LotteryTicket",
    "NetworkSlimming",
    "RigL",
    "SET",
    "SoftFilterPruning",
    "SynFlow",
    "TrainingMethod",
    "dense_gradients",
    "drop_and_grow",
    "grasp_importance",
    "synflow_importance",
    "training_callback",
]

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer

# ---- pruning at initialisation: one-shot methods ---------------------------------------------------


def _global_plan(name: str, targets: list[Target], importance: dict[str, Tensor], sparsity: float,
                 allocation: Any, seed: int) -> Plan:
    """Masks from per-weight importance scores (higher = keep) with the given allocation."""
    from prunekit.allocation.builtin import LayerInfo

    infos = [LayerInfo(t.name, tuple(t.weight.shape), importance[t.name].reshape(-1),
                       torch.ones(t.weight.numel(), dtype=torch.long)) for t in targets]
    per_layer = allocation.allocate(infos, sparsity)
    layers = [LayerPlan(t.name, t.param, tuple(t.weight.shape), per_layer[t.name],
                        Unstructured().mask(importance[t.name], min(per_layer[t.name], 1 - 1e-12)).cpu())
              for t in targets]
    return Plan(layers, name, {"sparsity": sparsity, "allocation": str(allocation), "seed": seed})


def _scores_in_stored_layout(criterion: str, model: nn.Module, targets: list[Target], seed: int = 0,
                             **data: Any) -> dict[str, Tensor]:
    """Element scores of ``criterion`` (:mod:`prunekit.criteria`) from the unified statistics collector,
    shaped like each stored weight."""
    crit = resolve_criterion(criterion)
    stats = gather_statistics(crit, model, targets, **data)
    scores = element_scores(crit, targets, stats, seed)
    return {t.name: t.layout.from_canonical(scores[t.name]).contiguous() for t in targets}


def synflow_importance(model: nn.Module, targets: list[Target], example_inputs: Any,
                       masks: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
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


@register_method("synflow", when="at-init", default_allocation="global",
                 paper="Pruning neural networks without any data by iteratively conserving synaptic flow")
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
            raise PatternError(f"synflow prunes single weights in rounds: use pattern=None (unstructured), not "
                               f"{request.pattern}; or prunekit.Pruner(criterion='synflow', granularity=...) for one "
                               "round with another pattern")
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
        plan = Plan([LayerPlan(t.name, t.param, tuple(t.weight.shape), 1 - masks[t.name].float().mean().item(),
                               masks[t.name]) for t in request.targets], self.name, {"rounds": rounds})
        plan.apply_(model)
        return MethodOutcome(plan.layer_sparsity(), [f"synflow: {rounds} rounds, no data used"], plan)


def grasp_importance(model: nn.Module, targets: list[Target], batches: Any, temperature: float = 200.0,
                     loss_fn: Any = None) -> dict[str, Tensor]:
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
    return _scores_in_stored_layout("grasp", model, targets, calibration=batches, loss_fn=loss_fn,
                                    grasp_temperature=temperature)


@register_method("grasp", when="at-init", default_allocation="global", needs_data=True,
                 paper="Picking Winning Tickets Before Training by Preserving Gradient Flow")
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
            raise PatternError(f"grasp scores single weights: use pattern=None (unstructured), not {request.pattern}; "
                               "or prunekit.Pruner(criterion='grasp', granularity=...)")
        scores = grasp_importance(model, request.targets, request.calibration,
                                  float(request.options.get("temperature", 200.0)), request.options.get("loss_fn"))
        plan = _global_plan(self.name, request.targets, scores, request.sparsity,
                            request.allocation or Global(), request.seed)
        plan.apply_(model)
        return MethodOutcome(plan.layer_sparsity(), plan=plan)


@register_method("erk", criterion="random", default_allocation="erk", when="at-init",
                 paper="Rigging the Lottery: Making All Tickets Winners")
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
        self.report = prune(trainer.model, m, sparsity=self.sparsity, calibration=calib, example_inputs=example,
                               measure=False, **self.options)
        trainer.history.notes.append(f"{self.method} at initialisation: sparsity {self.report.sparsity:.4f}")


# ---- during training ------------------------------------------------------------------------------


def _targets(model: nn.Module) -> list[Target]:
    return select_targets(model).targets


class GMP(Callback):
    """Gradual magnitude pruning (Zhu & Gupta 2017): masks follow the cubic schedule from ``start`` to
    ``end`` (fractions of the round's steps), updated every ``frequency`` steps, layer-wise magnitude."""

    def __init__(self, sparsity: float, start: float = 0.1, end: float = 0.7, updates: int = 20,
                 allocation: str = "uniform"):
        if not 0 <= start < end <= 1:
            raise ConfigError("gmp needs 0 <= start < end <= 1 (fractions of training)")
        self.sparsity, self.start, self.end, self.updates, self.allocation = sparsity, start, end, updates, allocation
        self.pruner: Pruner | None = None

    def _pruner(self, trainer: Trainer) -> Pruner:
        if self.pruner is None:
            total = trainer.total_steps
            t0, t1 = int(self.start * total), max(int(self.end * total), int(self.start * total) + 1)
            freq = max(1, (t1 - t0) // self.updates)
            self.pruner = Pruner(allocation=self.allocation, schedule=Gradual(t0, t1, self.sparsity, frequency=freq))
        return self.pruner

    def on_train_begin(self, trainer: Trainer) -> None:
        """Build the pruner with its :class:`~prunekit.schedules.builtin.Gradual` schedule in steps of this round."""
        self._pruner(trainer)

    def on_step_end(self, trainer: Trainer) -> None:
        """Prune to the schedule's sparsity when it acts at this step (masks only shrink) and then zero the
        optimizer state (momentum, Adam moments) at every masked position."""
        if self._pruner(trainer).step(trainer.model, trainer.step) is not None:
            _reset_momentum_of_pruned(trainer)


def _reset_momentum_of_pruned(trainer: Any, positions: dict[int, Tensor] | None = None) -> None:
    """Zero optimizer state (momentum, Adam moments) where weights are masked (or at given positions)."""
    opt = trainer.optimizer
    if opt is None:
        return
    for _, module, pname, mask in masked_parameters(trainer.model):
        p = original_parameter(module, pname)
        where = ~mask if positions is None else positions.get(id(p))
        if where is None:
            continue
        state = opt.state.get(p, {})
        for key in ("momentum_buffer", "exp_avg", "exp_avg_sq"):
            buf = state.get(key)
            if torch.is_tensor(buf) and buf.shape == p.shape:
                buf[where] = 0


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def _bn_channel_masks(model: nn.Module, ratio: float) -> dict[str, Tensor]:
    """Keep-masks of BN channels by a global threshold on |gamma| (network slimming's criterion)."""
    layers = _bn_layers(model)
    if not layers:
        raise ConfigError("this method prunes channels by BatchNorm scales, but the model has no BatchNorm layer")
    scales = torch.cat([m.weight.detach().abs() for _, m in layers])
    gone = lowest_k_mask(scales, round(ratio * len(scales)))
    out, i = {}, 0
    for n, m in layers:
        k = m.weight.numel()
        keep = ~gone[i : i + k]
        if not keep.any():  # never remove a whole layer
            keep[m.weight.detach().abs().argmax()] = True
        out[n] = keep
        i += k
    return out


def _mask_bn_channels(model: nn.Module, masks: dict[str, Tensor]) -> None:
    """Masking form of channel removal through BN: gamma and beta of removed channels are held at zero,
    so the channel's output is zero (before the next layer) whatever the convolution computes."""
    modules = dict(model.named_modules())
    for name, keep in masks.items():
        apply_mask_(modules[name], keep, "weight")
        apply_mask_(modules[name], keep, "bias")


def _remove_bn_channels(trainer: Trainer, ratio: float, label: str) -> None:
    """Remove the channels with the smallest BN scales: physically when the structural engine supports
    the model, otherwise by masking BN gamma/beta (noted in the history)."""
    try:
        from prunekit.methods import structural as _structural  # noqa: F401

        report = prune(trainer.model, "bn-scale-channel", sparsity=ratio, example_inputs=trainer.x[:1],
                          measure=False, allocation=Global(count="units"))
        trainer.history.notes.append(f"{label}: removed channels physically, parameters {report.after.params}")
    except (ImportError, UnknownNameError, UnsupportedModuleError) as e:
        _mask_bn_channels(trainer.model, _bn_channel_masks(trainer.model, ratio))
        trainer.history.notes.append(f"{label}: BN channels masked (structural engine unavailable: {e})")


class NetworkSlimming(Callback):
    """Network slimming (Liu et al. 2017): train with an L1 penalty ``l1 * sum|gamma|`` on BatchNorm
    scales, remove the ``sparsity`` fraction of channels with the smallest |gamma| (global), then fine-tune
    for another round of the same length (``finetune=False`` stops after pruning)."""

    def __init__(self, sparsity: float, l1: float = 1e-4, finetune: bool = True):
        self.sparsity, self.l1, self.finetune, self.pruned = sparsity, l1, finetune, False

    def on_after_backward(self, trainer: Trainer) -> None:
        """Add the L1 subgradient ``l1 * sign(gamma)`` to every BatchNorm scale's gradient (until pruned)."""
        if self.pruned:
            return
        for _, m in _bn_layers(trainer.model):
            w = original_parameter(m, "weight")
            if w.grad is not None:
                w.grad.add_(self.l1 * torch.sign(w.detach()))

    def wants_another_round(self, trainer: Trainer) -> bool:
        """After the first round: remove the channels (physically where the structural engine can, else by
        masking BN), then ask for a fine-tuning round unless ``finetune=False``."""
        if self.pruned:
            return False
        _remove_bn_channels(trainer, self.sparsity, "slimming")
        self.pruned = True
        return self.finetune

    def on_train_end(self, trainer: Trainer) -> None:
        """Remove the channels if training stopped before :meth:`wants_another_round` did."""
        if not self.pruned:
            _remove_bn_channels(trainer, self.sparsity, "slimming")
            self.pruned = True

    def state_dict(self) -> dict[str, Any]:
        """``{"pruned": bool}``."""
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore whether the channels were removed."""
        self.pruned = bool(state["pruned"])


class GroupLasso(Callback):
    """Structured sparsity learning (Wen et al. 2016): the penalty ``lam * sum_g ||W_g||_2`` over output
    channels (filters, neurons) drives whole groups to zero; then the ``sparsity`` fraction of channels
    with the smallest L2 norm per layer is removed and the network fine-tuned for another round."""

    def __init__(self, sparsity: float, lam: float = 1e-4, finetune: bool = True):
        self.sparsity, self.lam, self.finetune, self.pruned = sparsity, lam, finetune, False

    def on_after_backward(self, trainer: Trainer) -> None:
        """Add the group-lasso gradient ``lam * W_g / ||W_g||`` of every output channel (until pruned)."""
        if self.pruned:
            return
        for t in _targets(trainer.model):
            w = original_parameter(t.module, t.param)
            if w.grad is None:
                continue
            layout = t.layout  # output channels are rows of the canonical [out, in, ...] view
            rows = layout.to_canonical(w.detach())
            rows = rows.reshape(rows.shape[0], -1)
            norms = rows.norm(dim=1, keepdim=True).clamp_min(1e-12)
            penalty = (self.lam * rows / norms).reshape(layout.canonical_shape(tuple(w.shape)))
            w.grad.add_(layout.from_canonical(penalty))

    def _prune(self, trainer: Trainer) -> None:
        prune(trainer.model, "magnitude", sparsity=self.sparsity, pattern=Channel(), measure=False)
        self.pruned = True

    def wants_another_round(self, trainer: Trainer) -> bool:
        """After the first round: mask the ``sparsity`` fraction of channels with the smallest L2 norm per
        layer, then ask for a fine-tuning round unless ``finetune=False``."""
        if self.pruned:
            return False
        self._prune(trainer)
        return self.finetune

    def on_train_end(self, trainer: Trainer) -> None:
        """Prune the channels if training stopped before :meth:`wants_another_round` did."""
        if not self.pruned:
            self._prune(trainer)

    def state_dict(self) -> dict[str, Any]:
        """``{"pruned": bool}``."""
        return {"pruned": self.pruned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore whether the channels were pruned."""
        self.pruned = bool(state["pruned"])


class SoftFilterPruning(Callback):
    """Soft filter pruning (He et al. 2018): after every epoch, zero the ``sparsity`` fraction of filters
    with the smallest L2 norm in each convolution, but keep training them (they may recover); at the end
    the zeroed filters are masked for good."""

    def __init__(self, sparsity: float):
        self.sparsity = sparsity

    def _convs(self, model: nn.Module) -> list[Target]:
        return [t for t in _targets(model) if isinstance(t.module, nn.modules.conv._ConvNd)]

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Zero the weakest ``sparsity`` fraction of filters (L2 norm) of every convolution, without a mask."""
        with torch.no_grad():
            for t in self._convs(trainer.model):
                w = original_parameter(t.module, t.param)
                keep = Channel().mask(t.layout.to_canonical(w.detach()).pow(2), self.sparsity)
                w.mul_(t.layout.from_canonical(keep).to(w.dtype))

    def on_train_end(self, trainer: Trainer) -> None:
        """Mask the weakest filters of every convolution for good (channel masks by magnitude)."""
        convs = self._convs(trainer.model)
        if convs:
            names = {t.name for t in convs}
            prune(trainer.model, "magnitude", sparsity=self.sparsity, pattern=Channel(), measure=False,
                     ignore=lambda m, n: n not in names)


def drop_and_grow(weight: Tensor, mask: Tensor, grow_scores: Tensor, k: int) -> Tensor:
    """One dynamic-sparse-training update of one layer (SET, Mocanu et al. 2018; RigL, Evci et al. 2020).

    Drop the ``k`` active weights of smallest magnitude, then grow the ``k`` positions that are inactive
    after the drop with the largest ``grow_scores`` (|gradient| for RigL, random for SET). The number of
    active weights is unchanged. Returns the new keep-mask.
    """
    flat_w, flat_m = weight.detach().reshape(-1).abs(), mask.reshape(-1)
    k = min(k, int(flat_m.sum()), int((~flat_m).sum()))
    if k <= 0:
        return mask.clone()
    drop_scores = torch.where(flat_m, flat_w, torch.full_like(flat_w, float("inf")))
    dropped = lowest_k_mask(drop_scores, k)
    after_drop = flat_m & ~dropped
    g = grow_scores.reshape(-1).to(torch.float32)
    candidates = torch.where(after_drop, torch.full_like(g, float("-inf")), g)
    grown = lowest_k_mask(-candidates, k)
    return (after_drop | grown).reshape(mask.shape)


class DynamicSparse(Callback):
    """Fixed-sparsity training with periodic drop-and-grow (base of SET and RigL).

    Masks start random with ERK layer sparsities; every ``update_every`` steps until ``end`` (fraction of
    the round) a fraction ``zeta_t = drop_fraction/2 * (1 + cos(pi t / T_end))`` of each layer's active
    weights is dropped and as many regrown. Grown weights start at zero; optimizer state is reset where the
    mask changed.
    """

    grow = "random"

    def __init__(self, sparsity: float, update_every: int = 100, drop_fraction: float = 0.3, end: float = 0.75,
                 allocation: str = "erk", seed: int = 0):
        self.sparsity, self.update_every, self.drop_fraction = sparsity, update_every, drop_fraction
        self.end, self.allocation, self.seed = end, allocation, seed
        self.dense_grads: dict[str, Tensor] = {}
        self.updates = 0

    def on_train_begin(self, trainer: Trainer) -> None:
        """Start from random masks at ``sparsity`` with the ``allocation``'s layer sparsities (ERK by default)."""
        prune(trainer.model, "random", sparsity=self.sparsity, allocation=self.allocation, seed=self.seed,
                 measure=False)

    def _is_update(self, trainer: Trainer) -> bool:
        nxt = trainer.step + 1  # the step about to finish
        return nxt % self.update_every == 0 and nxt < self.end * trainer.total_steps

    def on_after_backward(self, trainer: Trainer) -> None:
        """Before an update step of a gradient-growing method (RigL): compute the dense gradients to grow by."""
        if self.grow == "gradient" and self._is_update(trainer):
            self.dense_grads = dense_gradients(trainer.model, *trainer.last_batch)

    def on_step_end(self, trainer: Trainer) -> None:
        """Every ``update_every`` steps until ``end``: drop and regrow ``zeta_t`` of each layer's active
        weights (:func:`drop_and_grow`); grown weights start at 0 and optimizer state is reset where the mask
        changed."""
        if not (trainer.step % self.update_every == 0 and trainer.step < self.end * trainer.total_steps):
            return
        zeta = self.drop_fraction / 2 * (1 + math.cos(math.pi * trainer.step / (self.end * trainer.total_steps)))
        gen = torch.Generator().manual_seed(self.seed * 7919 + trainer.total_steps_done)
        changed: dict[int, Tensor] = {}
        for name, module, pname, mask in list(masked_parameters(trainer.model)):
            w = original_parameter(module, pname)
            k = int(zeta * int(mask.sum()))
            scores = (self.dense_grads[name].abs() if self.grow == "gradient"
                      else torch.rand(mask.shape, generator=gen))
            new = drop_and_grow(w.detach() * mask, mask, scores, k)
            grown = new & ~mask
            with torch.no_grad():
                w[grown] = 0.0
            changed[id(w)] = new ^ mask
            set_mask_(module, new, pname)
        _reset_momentum_of_pruned(trainer, changed)
        self.updates += 1
        self.dense_grads = {}

    def state_dict(self) -> dict[str, Any]:
        """``{"updates": int}``: mask updates done."""
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the count of mask updates."""
        self.updates = int(state["updates"])


def dense_gradients(model: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """d loss / d (masked weight) for every masked layer, including at pruned positions (what RigL grows
    by). One extra forward/backward on the batch, with parametrizations cached so the gradient reaches the
    effective weights."""
    out = {}
    with parametrize.cached():
        layers = [(n, getattr(m, p)) for n, m, p, _ in masked_parameters(model)]
        loss = nn.functional.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, [w for _, w in layers], allow_unused=True)
    for (n, w), g in zip(layers, grads):
        out[n] = torch.zeros_like(w) if g is None else g.detach()
    return out


class SET(DynamicSparse):
    """Sparse Evolutionary Training (Mocanu et al. 2018): drop smallest magnitudes, grow at random."""

    grow = "random"


class RigL(DynamicSparse):
    """Rigging the Lottery (Evci et al. 2020): drop smallest magnitudes, grow where |dense gradient| is
    largest."""

    grow = "gradient"


class LotteryTicket(Callback):
    """Iterative magnitude pruning with weight rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

    Train; prune ``1 - (1 - sparsity)^(1/rounds)`` of the remaining weights (global magnitude); rewind the
    surviving weights (and BN statistics) to their values at ``rewind_step`` of the first round; train
    again; ``rounds`` times. ``rewind_step=0`` is the original lottery ticket (rewind to initialisation).
    """

    def __init__(self, sparsity: float, rounds: int = 3, rewind_step: int = 0, allocation: str = "global"):
        if rounds < 1 or rewind_step < 0:
            raise ConfigError("imp needs rounds >= 1 and rewind_step >= 0")
        self.sparsity, self.rounds, self.rewind_step, self.allocation = sparsity, rounds, rewind_step, allocation
        self.rewind_state: dict[str, Tensor] | None = None
        self.pruned_rounds = 0

    def _snapshot(self, model: nn.Module) -> None:
        self.rewind_state = {k: v.detach().clone() for k, v in _plain_state(model).items()}

    def on_train_begin(self, trainer: Trainer) -> None:
        """With ``rewind_step=0``, keep the initial weights to rewind to."""
        if self.rewind_step == 0:
            self._snapshot(trainer.model)

    def on_step_end(self, trainer: Trainer) -> None:
        """Keep the weights at ``rewind_step`` of the first round to rewind to."""
        if trainer.round == 0 and trainer.step == self.rewind_step and self.rewind_state is None:
            self._snapshot(trainer.model)

    def wants_another_round(self, trainer: Trainer) -> bool:
        """Until ``rounds`` prunings are done: prune to the next sparsity of the geometric schedule (global
        magnitude), rewind the surviving weights and ask for another round. Raises
        :class:`~prunekit.errors.ConfigError` when ``rewind_step`` lies beyond the round."""
        if self.pruned_rounds >= self.rounds:
            return False
        if self.rewind_state is None:
            raise ConfigError(
                f"imp: rewind_step {self.rewind_step} is beyond the {trainer.total_steps} steps of a round"
            )
        self.pruned_rounds += 1
        target = 1.0 - (1.0 - self.sparsity) ** (self.pruned_rounds / self.rounds)
        prune(trainer.model, "magnitude", sparsity=target, allocation=self.allocation, measure=False)
        _rewind(trainer.model, self.rewind_state)
        trainer.history.notes.append(
            f"imp round {self.pruned_rounds}: sparsity {target:.4f}, rewound to step {self.rewind_step}"
        )
        return True

    def state_dict(self) -> dict[str, Any]:
        """The weights to rewind to and the prunings done."""
        return {"rewind_state": self.rewind_state, "pruned_rounds": self.pruned_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the weights to rewind to and the prunings done."""
        self.rewind_state, self.pruned_rounds = state["rewind_state"], int(state["pruned_rounds"])


def _plain_state(model: nn.Module) -> dict[str, Tensor]:
    """Parameters and buffers under their plain names (originals of masked weights), masks excluded."""
    out = {}
    for k, v in model.state_dict().items():
        if k.endswith(".mask") and ".parametrizations." in k:
            continue
        out[k.replace(".parametrizations.", ".").replace(".original", "")] = v
    return out


def _rewind(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (from :func:`_plain_state`) back into the model, keeping its masks."""
    current = model.state_dict()
    with torch.no_grad():
        for k, v in current.items():
            if k.endswith(".mask") and ".parametrizations." in k:
                continue
            plain = k.replace(".parametrizations.", ".").replace(".original", "")
            v.copy_(state[plain])


class EarlyBird(Callback):
    """Early-bird tickets (You et al. 2020): train with network slimming's BN L1 penalty; after each epoch
    take the channel mask at the target ratio (global |gamma| threshold); once the largest normalised
    Hamming distance between the newest mask and the ``window - 1`` before it is below ``epsilon``, the
    ticket has emerged: prune those channels and go on training the pruned network."""

    def __init__(self, sparsity: float, l1: float = 1e-4, window: int = 5, epsilon: float = 0.1):
        self.sparsity, self.l1, self.window, self.epsilon = sparsity, l1, window, epsilon
        self.history: list[Tensor] = []
        self.found_epoch: int | None = None

    def on_after_backward(self, trainer: Trainer) -> None:
        """Network slimming's L1 penalty on BN scales, until the ticket is found."""
        if self.found_epoch is None:
            NetworkSlimming.on_after_backward(self, trainer)  # type: ignore[arg-type]

    @property
    def pruned(self) -> bool:  # for the shared slimming hook
        """Whether the ticket was found and its channels removed."""
        return self.found_epoch is not None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """Take this epoch's channel mask; once the last ``window`` masks differ by less than ``epsilon``
        (recorded as ``metrics["mask_distance"]``), remove those channels."""
        if self.found_epoch is not None:
            return
        masks = _bn_channel_masks(trainer.model, self.sparsity)
        self.history = (self.history + [torch.cat(list(masks.values()))])[-self.window :]
        if len(self.history) == self.window:
            newest = self.history[-1]
            dist = max((newest ^ old).float().mean().item() for old in self.history[:-1])
            metrics["mask_distance"] = dist
            if dist < self.epsilon:
                self.found_epoch = int(metrics["epoch"])
                _remove_bn_channels(trainer, self.sparsity, f"early-bird ticket at epoch {self.found_epoch}")

    def state_dict(self) -> dict[str, Any]:
        """The recent channel masks and the epoch the ticket was found (None before)."""
        return {"history": list(self.history), "found_epoch": self.found_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the recent masks and the epoch the ticket was found."""
        self.history, self.found_epoch = list(state["history"]), state["found_epoch"]


# ---- registration ---------------------------------------------------------------------------------


@dataclass
class TrainingMethod(Method):
    """A method that acts during training: registered for discovery; it runs inside the trainer."""

    name: str = "training"
    description: str = ""
    factory: Any = None
    paper: str = ""
    when: str = "during-training"

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Always raises :class:`~prunekit.errors.ConfigError`, naming how to run the method in the trainer."""
        raise ConfigError(
            f"{self.name!r} prunes during training, not in one call: use "
            f"prunekit.train.Trainer(model, train_data, method={self.name!r}, sparsity={request.sparsity:g}).fit()"
        )


for _name, _factory, _desc, _paper in (
    ("gmp", GMP, "gradual magnitude pruning on the cubic schedule (Zhu & Gupta 2017)", "To prune, or not to prune"),
    ("slimming", NetworkSlimming, "L1 on BN scales, remove channels, fine-tune (Liu et al. 2017)",
     "Learning Efficient Convolutional Networks through Network Slimming"),
    ("group-lasso", GroupLasso, "group-lasso on filters/neurons, remove channels (Wen et al. 2016)",
     "Learning Structured Sparsity in Deep Neural Networks"),
    ("sfp", SoftFilterPruning, "soft filter pruning: zero weak filters each epoch, they may recover (He et al. 2018)",
     "Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks"),
    ("set", SET, "sparse evolutionary training: drop small, grow random (Mocanu et al. 2018)",
     "Scalable training of artificial neural networks with adaptive sparse connectivity"),
    ("rigl", RigL, "drop small, grow by dense gradient, ERK (Evci et al. 2020)", "Rigging the Lottery"),
    ("imp", LotteryTicket, "iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019)",
     "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks"),
    ("early-bird", EarlyBird, "early-bird tickets from BN-mask convergence (You et al. 2020)",
     "Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks"),
):
    METHODS.add(_name, TrainingMethod(_name, _desc, _factory, _paper), _desc)


def training_callback(method: str | Callback | Method, sparsity: float | None, **options: Any) -> Callback:
    """The trainer's view of a method: a callback. One-shot methods run at initialisation (:class:`AtInit`).

    Raises :class:`~prunekit.errors.UnknownNameError` for an unknown name and
    :class:`~prunekit.errors.InvalidSparsityError` for a missing sparsity or one outside [0, 1).
    """
    if isinstance(method, Callback):
        return method
    m = METHODS.resolve(method) if isinstance(method, str) else method
    if sparsity is None:
        raise InvalidSparsityError(f"method {m.name!r} needs sparsity=... (a number in [0, 1))")
    from prunekit.granularity.patterns import check_sparsity

    check_sparsity(sparsity)
    if isinstance(m, TrainingMethod):
        return m.factory(sparsity, **options)
    return AtInit(m.name, sparsity, **options)
