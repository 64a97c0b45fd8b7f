"""Training-time pruning: a small trainer with hooks, and the methods of the survey's "when" axis."""

from prunekit.train import methods as _methods  # noqa: F401  (registers the methods)
from prunekit.train.callbacks import Callback
from prunekit.train.methods import (
    GMP,
    SET,
    AtInit,
    EarlyBird,
    GroupLasso,
    LotteryTicket,
    NetworkSlimming,
    RigL,
    SoftFilterPruning,
    drop_and_grow,
    training_callback,
)
from prunekit.train.trainer import History, TrainConfig, Trainer

__all__ = [
    "AtInit",
    "Callback",
    "EarlyBird",
    "GMP",
    "GroupLasso",
    "History",
    "LotteryTicket",
    "NetworkSlimming",
    "RigL",
    "SET",
    "SoftFilterPruning",
    "TrainConfig",
    "Trainer",
    "drop_and_grow",
    "training_callback",
]
