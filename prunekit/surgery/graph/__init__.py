"""Dependency tracing at the dispatcher level: which slices of which parameters are coupled.

A forward pass with example inputs runs under a dispatch mode (:mod:`~prunekit.surgery.graph.tracer`).
Every tensor carries a *label* (:mod:`~prunekit.surgery.graph.labels`): an integer array broadcastable to
its shape whose entries are *atoms*, one for each index of each parameter dimension the trace meets.
Operations propagate labels (views reshape them, ``cat`` concatenates them, ``permute`` moves them) and
*couple* atoms (a residual add, a layer consuming a channel) in a union-find
(:mod:`~prunekit.surgery.graph.unionfind`), each by its rule (:mod:`prunekit.surgery.rules`, registered in
:mod:`~prunekit.surgery.graph.registry`). After the trace, every class of the union-find is one removable
unit: it names the indices of every parameter dimension that must go together; units that share a
parameter dimension form a :class:`Group` (:mod:`~prunekit.surgery.graph.groups`). This is the
dependency-graph idea of DepGraph (Fang et al. 2023, "DepGraph: Towards Any Structural Pruning"), computed
per index on the dispatcher's closed set of aten operations instead of on a module graph.

Operations that constrain channels in a way physical removal cannot follow (a view that splits a channel
dimension, a slice with constant bounds, a constant tensor of fixed size) *pin* the atoms involved: they
are never removed. Operations the tracer does not know refuse with
:class:`~prunekit.errors.UnsupportedModuleError` naming the module and the operation, before anything is
changed.
"""

from prunekit.surgery.graph.groups import Group, Member, TraceResult
from prunekit.surgery.graph.registry import module_rule, op_rule
from prunekit.surgery.graph.tracer import trace_groups

__all__ = ["Group", "Member", "TraceResult", "module_rule", "op_rule", "trace_groups"]
