"""Training-time pruning: a small trainer with hooks, and the methods of the survey's "when" axis."""

from prunekit.train.after import EarlyBird, LotteryTicket
from prunekit.train.at_init import AtInit
from prunekit.train.callbacks import Callback
from prunekit.train.during import GMP, SET, GroupLasso, NetworkSlimming, RigL, SoftFilterPruning, drop_and_grow
from prunekit.train.methods import training_callback  # also registers the training-time methods
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
