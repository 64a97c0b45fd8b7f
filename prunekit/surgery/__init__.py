"""Structural pruning: dependency groups and physical removal (channels, heads, layers, hidden size).

``analyze`` traces a model into groups of coupled dimensions; ``plan_channels`` / ``plan_heads`` /
``plan_layers`` decide what goes (units scored by any registered criterion through
:mod:`~prunekit.surgery.scoring`, spread by any core allocation through
:mod:`~prunekit.allocation.units`), and the ``apply_*`` functions remove it physically. The named methods
("l1-channel", "head", "layer", "embedding", ...) are registered with :data:`prunekit.METHODS` by
``prunekit.methods.structural``. ``structure_record`` / ``apply_structure_record`` save and restore the
new shapes; ``from_pretrained_pruned`` reloads a pruned Hugging Face model whose config cannot express its
shapes (head sizes, per-layer widths).
"""

from prunekit.allocation.units import allocate_units, structural_allocation
from prunekit.granularity.patterns import Embedding, Head, Layer
from prunekit.surgery.blocks import HeadPlan, LayerPlan, apply_head_plan_, apply_layer_plan_, plan_heads, plan_layers
from prunekit.surgery.engine import (
    StructuralPlan,
    analyze,
    apply_plan_,
    plan_channels,
    prune_channels_,
    validate_plan,
)
from prunekit.surgery.graph import Group, Member, TraceResult, trace_groups
from prunekit.surgery.handlers import HANDLERS, ModuleHandler, register_handler
from prunekit.surgery.hf import from_pretrained_pruned
from prunekit.surgery.record import apply_structure_record, structure_record
from prunekit.surgery.remove import remove_
from prunekit.surgery.scoring import UnitScorer, UnitScores, UnitSet

__all__ = [
    "HANDLERS",
    "Embedding",
    "Group",
    "Head",
    "HeadPlan",
    "Layer",
    "LayerPlan",
    "Member",
    "ModuleHandler",
    "StructuralPlan",
    "TraceResult",
    "UnitScorer",
    "UnitScores",
    "UnitSet",
    "allocate_units",
    "analyze",
    "apply_head_plan_",
    "apply_layer_plan_",
    "apply_plan_",
    "apply_structure_record",
    "from_pretrained_pruned",
    "plan_channels",
    "plan_heads",
    "plan_layers",
    "prune_channels_",
    "register_handler",
    "remove_",
    "structural_allocation",
    "structure_record",
    "trace_groups",
    "validate_plan",
]
