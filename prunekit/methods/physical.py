"""Any criterion at a physical granularity: the structural engine as a core :class:`~prunekit.methods.base.Method`.

``physical_method("head", "taylor")`` is the method that removes attention heads scored by first-order
Taylor; ``pk.Pruner(criterion=..., granularity=pk.Head())`` and ``pk.prune(model, pruner, ...)`` run it. Its
``run(model, request)`` reads ``request.calibration``, ``request.example_inputs``, ``request.allocation``
(any core allocation; ``global_cap`` is ``Global.max_sparsity``) and ``request.options`` (those of
:data:`prunekit.methods.structural.OPTIONS` for the level), exactly as the named structural methods do.
"""

from __future__ import annotations

from prunekit.criteria.base import Criterion
from prunekit.errors import ConfigError
from prunekit.methods.base import Method, register_physical_composer
from prunekit.methods.structural import LEVEL, OPTIONS, UNIT_WORDS, StructuralMethod
from prunekit.surgery.scoring import level_criterion

__all__ = ["PHYSICAL_LEVELS", "physical_method"]

#: the levels a physical method removes (the structural kinds)
PHYSICAL_LEVELS = tuple(OPTIONS)
_DEFAULT_NAMES = {
    ("channel", "magnitude"): "l1-channel",
    ("channel", "l2"): "l2-channel",
    ("channel", "taylor"): "taylor-channel",
    ("channel", "obd"): "hessian-channel",
    ("channel", "fpgm"): "fpgm-channel",
    ("channel", "bn-scale"): "bn-scale-channel",
    ("channel", "lamp"): "lamp-channel",
    ("channel", "random"): "random-channel",
}


@register_physical_composer
def physical_method(level: str, criterion: str | Criterion) -> Method:
    """The structural method that removes ``level`` units ("channel": channel groups, "head": attention
    heads, "layer": whole blocks, "embedding": hidden dimensions) scored by ``criterion`` (a registered
    name, ``"l<p>"`` or a :class:`~prunekit.criteria.Criterion`).

    Raises :class:`~prunekit.errors.ConfigError` for another level,
    :class:`~prunekit.errors.UnknownNameError` for an unknown criterion and
    :class:`~prunekit.criteria.CriterionLevelError` for one with no meaning at that level (both list the
    criteria that work there).
    """
    if level not in OPTIONS:
        raise ConfigError(f"physical level {level!r} is not one of: {', '.join(PHYSICAL_LEVELS)}")
    crit = level_criterion(criterion, LEVEL[level], UNIT_WORDS[level])
    name = _DEFAULT_NAMES.get((level, crit.name), f"{crit.name}-{level}")
    return StructuralMethod(
        name=name,
        criterion=crit,
        kind=level,
        description=f"remove {UNIT_WORDS[level]} physically, scored by {crit.name}",
        needs_data=bool(crit.needs - {"synflow", "bn_gamma"}),
        paper=crit.paper,
    )
