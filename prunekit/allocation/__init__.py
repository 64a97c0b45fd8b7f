"""Allocation: how a sparsity budget is spread over layers (uniform, global, ERK, LAMP, OWL, overrides).

:mod:`.builtin` holds the allocations over masked layers, :mod:`.units` the same allocations over physical
units (channel groups, heads, layers).
"""

from prunekit.allocation.builtin import (
    ALLOCATIONS,
    DEFAULT_MAX_SPARSITY,
    ERK,
    LAMP,
    OWL,
    Allocation,
    Global,
    LayerInfo,
    Uniform,
    outlier_ratio,
    owl_sparsities,
    repeated_block,
    resolve_allocation,
    shift_to_target,
)
from prunekit.allocation.units import (
    allocate_units,
    default_global_cap,
    remove_lowest,
    structural_allocation,
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
