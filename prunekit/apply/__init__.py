"""Appliers: what carries out a pruning decision.

:mod:`.masks` (keep-masks as parametrizations), :mod:`.plan` (plan, then apply, atomically),
:mod:`.solve` (layer-wise reconstruction: magnitude, Wanda, SparseGPT on any model) and
:mod:`.transaction` (any error inside leaves the model as it was). Physical removal is
:mod:`prunekit.surgery`.
"""
