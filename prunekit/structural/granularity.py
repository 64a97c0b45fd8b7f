"""Physical granularities: what structural pruning removes from the architecture.

``Channel()`` (filters, channels, neurons) is the core's class; here are the transformer units. Each is a
frozen, typed value; the structural methods read it to decide which groups they act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Head:
    """Attention heads. Grouped-query aware: a unit is one key/value head with all the query heads that
    share it, so the query-per-key/value ratio is kept (Michel et al. 2019, "Are Sixteen Heads Really
    Better than One?")."""

    kind: ClassVar[str] = "head"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Layer:
    """Whole blocks of a stack (transformer blocks, residual blocks) whose input and output shapes agree.
    Blocks that are identity residuals (``x + f(x)``) leave a model that degrades gracefully; others are
    removed only with ``identity_only=False`` (Men et al. 2024, "ShortGPT"; Sajjad et al. 2023)."""

    identity_only: bool = False
    kind: ClassVar[str] = "layer"

    def __str__(self) -> str:
        return self.kind


@dataclass(frozen=True)
class Embedding:
    """The hidden size of a transformer: columns of the token embedding and everything that reads or
    writes the residual stream (norms, projections, the tied output layer)."""

    kind: ClassVar[str] = "embedding"

    def __str__(self) -> str:
        return self.kind
