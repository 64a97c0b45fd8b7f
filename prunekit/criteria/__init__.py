"""Criteria: how importance is scored, one interface for every granularity (see :mod:`.base`)."""

from prunekit.criteria.base import (
    CRITERIA,
    LEVELS,
    Criterion,
    CriterionLevelError,
    ScoreInput,
    criteria_for,
    criterion,
    key_generator,
    lp,
    register,
    resolve_criterion,
)
from prunekit.criteria.builtin import BUILTIN, lamp_scores
from prunekit.criteria.gradients import accumulate_gradients

__all__ = [
    "BUILTIN",
    "CRITERIA",
    "Criterion",
    "CriterionLevelError",
    "LEVELS",
    "ScoreInput",
    "accumulate_gradients",
    "criteria_for",
    "criterion",
    "key_generator",
    "lamp_scores",
    "lp",
    "register",
    "resolve_criterion",
]
