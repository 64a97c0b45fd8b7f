"""The survey's "when to prune" axis: methods at initialisation, during training and after training.

Pruning at initialisation (PaI) methods are one-shot methods (usable through :func:`prunekit.prune`) that
the trainer applies before the first step: ``random``, ``erk``, ``snip``, ``grasp``, ``synflow``.
Methods that act during training are :class:`~prunekit.train.trainer.Callback` objects: ``gmp``,
``slimming``, ``group-lasso``, ``sfp``, ``set``, ``rigl``, ``imp`` (lottery tickets with rewinding) and
``early-bird``. All are registered in :data:`prunekit.METHODS`; calling :func:`prunekit.prune` with a
training-time method explains how to use it with the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
)
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest
from prunekit.train.after import EarlyBird, LotteryTicket
from prunekit.train.at_init import AtInit
from prunekit.train.callbacks import Callback
from prunekit.train.during import GMP, SET, GroupLasso, NetworkSlimming, RigL, SoftFilterPruning

__all__ = ["TrainingMethod", "training_callback"]


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
    (
        "slimming",
        NetworkSlimming,
        "L1 on BN scales, remove channels, fine-tune (Liu et al. 2017)",
        "Learning Efficient Convolutional Networks through Network Slimming",
    ),
    (
        "group-lasso",
        GroupLasso,
        "group-lasso on filters/neurons, remove channels (Wen et al. 2016)",
        "Learning Structured Sparsity in Deep Neural Networks",
    ),
    (
        "sfp",
        SoftFilterPruning,
        "soft filter pruning: zero weak filters each epoch, they may recover (He et al. 2018)",
        "Soft Filter Pruning for Accelerating Deep Convolutional Neural Networks",
    ),
    (
        "set",
        SET,
        "sparse evolutionary training: drop small, grow random (Mocanu et al. 2018)",
        "Scalable training of artificial neural networks with adaptive sparse connectivity",
    ),
    ("rigl", RigL, "drop small, grow by dense gradient, ERK (Evci et al. 2020)", "Rigging the Lottery"),
    (
        "imp",
        LotteryTicket,
        "iterative magnitude pruning with rewinding: lottery tickets (Frankle & Carbin 2019)",
        "The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks",
    ),
    (
        "early-bird",
        EarlyBird,
        "early-bird tickets from BN-mask convergence (You et al. 2020)",
        "Drawing Early-Bird Tickets: Towards More Efficient Training of Deep Networks",
    ),
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
