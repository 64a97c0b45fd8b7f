"""The trainer's hooks: methods that act during training subclass :class:`Callback`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunekit.train.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Base class for methods that act during training. Every hook is optional."""

    def on_train_begin(self, trainer: Trainer) -> None: ...

    def on_after_backward(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer) -> None: ...

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: Trainer) -> None: ...

    def wants_another_round(self, trainer: Trainer) -> bool:
        """Return True (after preparing the model) to train again from epoch 0 with a fresh optimizer."""
        return False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...
