"""Schedules: when pruning happens (one-shot, iterative, gradual). Each is a pure ``sparsity_at(step)``.
"""

from prunekit.schedules.builtin import (
    SCHEDULES,
    Schedule,
    OneShot,
    Iterative,
    Gradual,
)

__all__ = [
    "Gradual",
    "Iterative",
    "OneShot",
    "SCHEDULES",
    "Schedule",
]
