"""Allocation: how a sparsity budget is spread over layers (uniform, global, ERK, LAMP, OWL, overrides).

:mod:`.builtin` holds the allocations over masked layers, :mod:`.units` the same allocations over physical
units (channel groups, heads, layers).
"""

from prunekit.allocation.builtin import (
    LayerInfo,
    Allocation,
    ALLOCATIONS,
    Uniform,
    DEFAULT_MAX_SPARSITY,
    Global,
    ERK,
    LAMP,
    outlier_ratio,
    owl_sparsities,
    repeated_block,
    shift_to_target,
    OWL,
    resolve_allocation,
)
from prunekit.allocation.units import (
    default_global_cap,
    structural_allocation,
    remove_lowest,
    allocate_units,
    unique_names,
)

__all__ = [
    "ALLOCATIONS",
    "Allocation",
    "DEFAULT_MAX_SPARSITY",
    "ERK",
    "Global",
    "LAMP",
    "LayerInfo",
    "OWL",
    "Uniform",
    "allocate_units",
    "default_global_cap",
    "outlier_ratio",
    "owl_sparsities",
    "remove_lowest",
    "repeated_block",
    "resolve_allocation",
    "shift_to_target",
    "structural_allocation",
    "unique_names",
]
