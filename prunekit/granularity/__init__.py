"""Granularity: what is removed (the survey's universal / specific speedup axis).

Unstructured weights, N:M groups and blocks become masks; channels, attention heads, whole layers and
embedding dimensions are removed from the architecture by :mod:`prunekit.surgery`. Each is a frozen,
typed value; :func:`parse_pattern` turns the command line's strings into them.
"""

from prunekit.granularity.patterns import (
    NM,
    PATTERN_NAMES,
    Block,
    Channel,
    Embedding,
    Granularity,
    Head,
    Layer,
    Unstructured,
    lowest_k_mask,
    parse_pattern,
)

__all__ = [
    "Block",
    "Channel",
    "Embedding",
    "Granularity",
    "Head",
    "Layer",
    "NM",
    "PATTERN_NAMES",
    "Unstructured",
    "lowest_k_mask",
    "parse_pattern",
]
