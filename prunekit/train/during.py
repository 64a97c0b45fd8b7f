"""Methods that act during training, as trainer callbacks: gradual magnitude pruning (Zhu & Gupta 2017),
Network Slimming (Liu et al. 2017), group lasso (Wen et al. 2016), soft filter pruning (He et al. 2018),
and dynamic sparse training: SET (Mocanu et al. 2018) and RigL (Evci et al. 2020).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.allocation.builtin import Global
from prunekit.api import prune
from prunekit.apply.masks import apply_mask_, masked_parameters, original_parameter, set_mask_
from prunekit.apply.plan import Pruner
from prunekit.errors import (
    ConfigError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.granularity.patterns import Channel, lowest_k_mask
from prunekit.schedules.builtin import Gradual
from prunekit.targets import Target, select_targets
from prunekit.train.callbacks import Callback

__all__ = [
    "bn_channel_masks",
    "remove_bn_channels",
    "DynamicSparse",
    "GMP",
    "GroupLasso",
    "NetworkSlimming",
    "RigL",
    "SET",
    "SoftFilterPruning",
    "dense_gradients",
    "drop_and_grow",
]

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer


# ---- during training ------------------------------------------------------------------------------


def _targets(model: nn.Module) -> list[Target]:
    return select_targets(model).targets


class GMP(Callback):
    """Gradual magnitude pruning (Zhu & Gupta 2017): masks follow the cubic schedule from ``start`` to
    ``end`` (fractions of the round's steps), updated every ``frequency`` steps, layer-wise magnitude."""

    def __init__(
        self, sparsity: float, start: float = 0.1, end: float = 0.7, updates: int = 20, allocation: str = "uniform"
    ):
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


def _bn_layers(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]


def bn_channel_masks(model: nn.Module, ratio: float) -> dict[str, Tensor]:
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


def remove_bn_channels(trainer: Trainer, ratio: float, label: str) -> None:
    """Remove the channels with the smallest BN scales: physically when the structural engine supports
    the model, otherwise by masking BN gamma/beta (noted in the history)."""
    try:
        from prunekit.methods import structural as _structural  # noqa: F401

        report = prune(
            trainer.model,
            "bn-scale-channel",
            sparsity=ratio,
            example_inputs=trainer.x[:1],
            measure=False,
            allocation=Global(count="units"),
        )
        trainer.history.notes.append(f"{label}: removed channels physically, parameters {report.after.params}")
    except (ImportError, UnknownNameError, UnsupportedModuleError) as e:
        _mask_bn_channels(trainer.model, bn_channel_masks(trainer.model, ratio))
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
        remove_bn_channels(trainer, self.sparsity, "slimming")
        self.pruned = True
        return self.finetune

    def on_train_end(self, trainer: Trainer) -> None:
        """Remove the channels if training stopped before :meth:`wants_another_round` did."""
        if not self.pruned:
            remove_bn_channels(trainer, self.sparsity, "slimming")
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
            prune(
                trainer.model,
                "magnitude",
                sparsity=self.sparsity,
                pattern=Channel(),
                measure=False,
                ignore=lambda m, n: n not in names,
            )


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

    def __init__(
        self,
        sparsity: float,
        update_every: int = 100,
        drop_fraction: float = 0.3,
        end: float = 0.75,
        allocation: str = "erk",
        seed: int = 0,
    ):
        self.sparsity, self.update_every, self.drop_fraction = sparsity, update_every, drop_fraction
        self.end, self.allocation, self.seed = end, allocation, seed
        self.dense_grads: dict[str, Tensor] = {}
        self.updates = 0

    def on_train_begin(self, trainer: Trainer) -> None:
        """Start from random masks at ``sparsity`` with the ``allocation``'s layer sparsities (ERK by default)."""
        prune(
            trainer.model, "random", sparsity=self.sparsity, allocation=self.allocation, seed=self.seed, measure=False
        )
        if self.update_every >= self.end * trainer.total_steps:
            import warnings

            warnings.warn(
                f"{type(self).__name__}: no drop-and-grow step will run: updates happen every {self.update_every} "
                f"steps before step {self.end * trainer.total_steps:.0f} (end={self.end} of "
                f"{trainer.total_steps} steps), so the masks stay the random start; train longer or pass a "
                "smaller update_every",
                stacklevel=2,
            )

    def is_update_step(self, trainer: Trainer) -> bool:
        """Whether the step now running (``trainer.step + 1`` once it finishes) drops and regrows weights:
        every ``update_every`` steps, before ``end`` of the training steps."""
        nxt = trainer.step + 1  # the step about to finish
        return nxt % self.update_every == 0 and nxt < self.end * trainer.total_steps

    def on_after_backward(self, trainer: Trainer) -> None:
        """Before an update step of a gradient-growing method (RigL): compute the dense gradients to grow by."""
        if self.grow == "gradient" and self.is_update_step(trainer):
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
            scores = self.dense_grads[name].abs() if self.grow == "gradient" else torch.rand(mask.shape, generator=gen)
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
