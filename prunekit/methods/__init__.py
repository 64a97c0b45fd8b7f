"""Named pruning methods: small compositions of the taxonomy's parts, registered by name in :data:`METHODS`.

:mod:`.base` holds the method interface and the registry; :mod:`.structural` and :mod:`.llm` register the
structural and language-model methods (imported by :mod:`prunekit`).
"""

from prunekit.methods.base import (
    FPGM,
    METHODS,
    OBD,
    APoZ,
    Lamp,
    M,
    Magnitude,
    Method,
    MethodOutcome,
    PruneRequest,
    Random,
    ScoreMethod,
    Snip,
    Taylor,
    pruner_method,
    register_method,
    resolve_method,
)

__all__ = [
    "APoZ",
    "FPGM",
    "Lamp",
    "M",
    "METHODS",
    "Magnitude",
    "Method",
    "MethodOutcome",
    "OBD",
    "PruneRequest",
    "Random",
    "ScoreMethod",
    "Snip",
    "Taylor",
    "pruner_method",
    "register_method",
    "resolve_method",
]
