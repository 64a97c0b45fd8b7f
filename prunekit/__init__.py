"""prunekit: the taxonomy of neural-network pruning, executable.

One entry point, :func:`prune`, and the parts it is made of, each an axis of the survey's taxonomy:
granularity (what is removed), criteria (how importance is scored), allocation (how sparsity is spread
over layers), schedules (when), masks, and named methods composed from them.
"""

from prunekit.allocation.builtin import ALLOCATIONS, ERK, LAMP, OWL, Allocation, Global, Uniform
from prunekit.api import prune
from prunekit.apply.masks import Mask, apply_mask_, get_mask, remove_masks_, squash_masks_
from prunekit.apply.plan import Plan, Pruner
from prunekit.criteria import CRITERIA, Criterion, lp
from prunekit.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    InvalidSparsityError,
    MissingDataError,
    ModelError,
    NonFiniteWeightsError,
    NothingToPruneError,
    PatternError,
    PlanError,
    PrunekitError,
    SourceMissingError,
    UnknownNameError,
    UnsupportedModuleError,
)
from prunekit.eval.report import Report, measure
from prunekit.granularity.patterns import (
    NM,
    Block,
    Channel,
    Embedding,
    Granularity,
    Head,
    Layer,
    Unstructured,
    parse_pattern,
)
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest, ScoreMethod, register_method
from prunekit.models import build_model, load_model, save_model
from prunekit.schedules.builtin import Gradual, Iterative, OneShot, Schedule
from prunekit.serialization import export_sparse, load_sparse

__version__ = "0.1.0"

__all__ = [
    "ALLOCATIONS",
    "Allocation",
    "Block",
    "CRITERIA",
    "Channel",
    "CheckpointError",
    "ConfigError",
    "Criterion",
    "DataError",
    "ERK",
    "Embedding",
    "Global",
    "Gradual",
    "Granularity",
    "Head",
    "InvalidSparsityError",
    "Iterative",
    "LAMP",
    "Layer",
    "METHODS",
    "Mask",
    "Method",
    "MethodOutcome",
    "MissingDataError",
    "ModelError",
    "NM",
    "NonFiniteWeightsError",
    "NothingToPruneError",
    "OWL",
    "OneShot",
    "PatternError",
    "Plan",
    "PlanError",
    "PruneRequest",
    "PrunekitError",
    "Pruner",
    "Report",
    "Schedule",
    "ScoreMethod",
    "SourceMissingError",
    "Uniform",
    "UnknownNameError",
    "Unstructured",
    "UnsupportedModuleError",
    "apply_mask_",
    "build_model",
    "export_sparse",
    "get_mask",
    "load_model",
    "load_sparse",
    "lp",
    "measure",
    "parse_pattern",
    "prune",
    "register_method",
    "remove_masks_",
    "save_model",
    "squash_masks_",
]
from prunekit import deploy  # noqa: E402,F401  (prunekit.deploy: exports, sparse execution, recipes)
from prunekit import train as _train  # noqa: E402,F401  (registers the training-time methods)
from prunekit.dynamic import gating as _gating  # noqa: E402,F401  (registers fbs, cgnet)
from prunekit.methods import llm as _llm_methods  # noqa: E402,F401  (registers wanda, sparsegpt, owl-*, llm-*)
from prunekit.methods import physical as _physical  # noqa: E402,F401  (any criterion at a physical granularity)
from prunekit.methods import structural as _structural_methods  # noqa: E402,F401  (registers l1-channel, head, ...)
