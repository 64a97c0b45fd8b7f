"""The trainer's hooks: methods that act during training subclass :class:`Callback`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class for methods that act during training. Every hook is optional."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """Before the first step and before the optimizer exists: prune at initialisation or install
        parametrizations here (the optimizer is built afterwards, so it sees them)."""

    def on_round_begin(self, trainer: Trainer) -> None:
        """When a round starts from its first step (``trainer.round`` 0, 1, ...; not when resuming mid-round
        from a checkpoint): after round 0's :meth:`on_train_begin`, or after the :meth:`wants_another_round`
        that asked for this round pruned and rewound the model, before any of its steps."""

    def on_after_backward(self, trainer: Trainer) -> None:
        """Between ``loss.backward()`` and ``optimizer.step()``: gradients are ready (add a regulariser's
        gradient, read dense gradients)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After the optimizer step (``trainer.step`` already counts it): update masks here."""

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        """After each epoch, with that epoch's ``metrics`` (train loss, validation loss / accuracy when there
        is validation data, sparsity); call ``trainer.stop()`` to end training."""

    def on_train_end(self, trainer: Trainer) -> None:
        """Once, after the last round (also after an early stop)."""

    def wants_another_round(self, trainer: Trainer) -> bool:
        """Return True (after preparing the model) to train again from epoch 0 with a fresh optimizer."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must hold to resume this callback exactly (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, when training resumes from a checkpoint."""
