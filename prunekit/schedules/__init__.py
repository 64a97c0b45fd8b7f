"""Schedules: when pruning happens (one-shot, iterative, gradual). Each is a pure ``sparsity_at(step)``."""

from prunekit.schedules.builtin import (
    SCHEDULES,
    Gradual,
    Iterative,
    OneShot,
    Schedule,
)

__all__ = [
    "Gradual",
    "Iterative",
    "OneShot",
    "SCHEDULES",
    "Schedule",
]
