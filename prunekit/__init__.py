"""prunekit: the taxonomy of neural-network pruning, executable.

One entry point, :func:`prune`, and the parts it is made of, each an axis of the survey's taxonomy:
granularity (what is removed), criteria (how importance is scored), allocation (how sparsity is spread
over layers), schedules (when), masks, and named methods composed from them.
"""

from prunekit.allocation import ALLOCATIONS, ERK, LAMP, OWL, Allocation, Global, Uniform
from prunekit.api import prune
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
from prunekit.granularity import NM, Block, Channel, Embedding, Granularity, Head, Layer, Unstructured, parse_pattern
from prunekit.masks import Mask, apply_mask_, get_mask, remove_masks_, squash_masks_
from prunekit.methods import METHODS, Method, MethodOutcome, PruneRequest, ScoreMethod, register_method
from prunekit.models import build_model
from prunekit.plan import Plan, Pruner
from prunekit.report import Report, measure
from prunekit.schedules import Gradual, Iterative, OneShot, Schedule
from prunekit.serialization import export_sparse, load_model, load_sparse, save_model

__version__ = "0.1.0"

__all__ = [
    "ALLOCATIONS",
    "CRITERIA",
    "ERK",
    "LAMP",
    "METHODS",
    "NM",
    "OWL",
    "Allocation",
    "Block",
    "Channel",
    "CheckpointError",
    "ConfigError",
    "Criterion",
    "Embedding",
    "Head",
    "Layer",
    "DataError",
    "Global",
    "Gradual",
    "Granularity",
    "InvalidSparsityError",
    "Iterative",
    "Mask",
    "Method",
    "MethodOutcome",
    "MissingDataError",
    "ModelError",
    "NonFiniteWeightsError",
    "NothingToPruneError",
    "OneShot",
    "PatternError",
    "Plan",
    "PlanError",
    "PruneRequest",
    "Pruner",
    "PrunekitError",
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
from prunekit import train as _train  # noqa: E402,F401  (registers the training-time methods)
from prunekit.structural import methods as _structural_methods  # noqa: E402,F401  (registers l1-channel, head, ...)
from prunekit.llm import methods as _llm_methods  # noqa: E402,F401  (registers wanda, sparsegpt, owl-*, llm-*)
from prunekit import deploy  # noqa: E402,F401  (prunekit.deploy: exports, sparse execution, recipes)
from prunekit.dynamic import gating as _gating  # noqa: E402,F401  (registers fbs, cgnet)
