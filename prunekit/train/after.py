"""Methods that find a mask from training and train it again: iterative magnitude pruning with rewinding
(lottery tickets, Frankle & Carbin 2019) and early-bird tickets from BN-mask convergence (You et al. 2020).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from prunekit.api import prune
from prunekit.errors import (
    ConfigError,
)
from prunekit.layout import is_parametrization_key, plain_key
from prunekit.train.callbacks import Callback
from prunekit.train.during import NetworkSlimming, bn_channel_masks, remove_bn_channels

__all__ = [
    "EarlyBird",
    "LotteryTicket",
]

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer


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
        if k.endswith(".mask") and is_parametrization_key(k):
            continue
        out[plain_key(k)] = v
    return out


def _rewind(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state`` (from :func:`_plain_state`) back into the model, keeping its masks."""
    current = model.state_dict()
    with torch.no_grad():
        for k, v in current.items():
            if k.endswith(".mask") and is_parametrization_key(k):
                continue
            plain = plain_key(k)
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
        masks = bn_channel_masks(trainer.model, self.sparsity)
        self.history = (self.history + [torch.cat(list(masks.values()))])[-self.window :]
        if len(self.history) == self.window:
            newest = self.history[-1]
            dist = max((newest ^ old).float().mean().item() for old in self.history[:-1])
            metrics["mask_distance"] = dist
            if dist < self.epsilon:
                self.found_epoch = int(metrics["epoch"])
                remove_bn_channels(trainer, self.sparsity, f"early-bird ticket at epoch {self.found_epoch}")

    def state_dict(self) -> dict[str, Any]:
        """The recent channel masks and the epoch the ticket was found (None before)."""
        return {"history": list(self.history), "found_epoch": self.found_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the recent masks and the epoch the ticket was found."""
        self.history, self.found_epoch = list(state["history"]), state["found_epoch"]
