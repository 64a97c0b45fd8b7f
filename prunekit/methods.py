"""Named pruning methods, composed from the taxonomy's parts and registered by name.

A method is an object with ``run(model, request) -> MethodOutcome``. Most methods score weights and mask
them (:class:`ScoreMethod`: a criterion plus default pattern and allocation); others (post-training solvers,
structural surgery) override ``run``. :func:`prunekit.prune` validates the request, runs the method inside
a transaction and measures the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from prunekit.allocation import Allocation
from prunekit.errors import ConfigError
from prunekit.granularity import Granularity
from prunekit.plan import Plan, Pruner
from prunekit.registry import Registry
from prunekit.targets import Target


@dataclass
class PruneRequest:
    """Everything :func:`prunekit.prune` was asked, validated and resolved to typed values."""

    sparsity: float
    pattern: Granularity
    allocation: Allocation | None
    targets: list[Target]
    ignored: list[tuple[str, str]] = field(default_factory=list)
    ignored_modules: list[str] = field(default_factory=list)  # outermost modules ignore= matched, of any type
    example_inputs: Any = None
    calibration: Any = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodOutcome:
    """What a method reports back: the sparsity it aimed for per layer, notes, and its plan if it made one."""

    layer_sparsity: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plan: Plan | None = None


class Method:
    """Base class of named methods."""

    name: str = "method"
    description: str = ""
    needs_data: bool = False
    structural: bool = False  # changes shapes: prune() snapshots the whole module tree
    default_pattern: str | Granularity | None = None
    default_allocation: str | Allocation | None = "uniform"
    options: ClassVar[frozenset[str]] = frozenset()  # method-specific keyword options it accepts
    paper: str = ""
    when: str = "one-shot"  # one-shot | at-init | during-training | post-training

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        raise NotImplementedError


def _validate(name: str, obj: Any) -> None:
    if not isinstance(obj, Method) or not callable(getattr(obj, "run", None)):
        raise ConfigError(f"method {name!r} must be a Method instance with a run(model, request) method")


METHODS: Registry[Method] = Registry("method", validate=_validate)


@dataclass
class ScoreMethod(Method):
    """Score every weight with a criterion, allocate sparsity over layers, mask by the pattern.

    Options: ``overrides`` ({layer: sparsity}), ``skip_incompatible`` (leave layers that do not fit the
    pattern dense instead of failing), ``loss_fn`` (for gradient criteria on (inputs, targets) batches).
    """

    name: str = "score"
    criterion: str = "magnitude"
    description: str = ""
    default_allocation: str | Allocation | None = "uniform"
    default_pattern: str | Granularity | None = None
    needs_data: bool = False
    paper: str = ""
    when: str = "one-shot"
    options: ClassVar[frozenset[str]] = frozenset({"overrides", "loss_fn"})

    def pruner(self, request: PruneRequest) -> Pruner:
        return Pruner(
            criterion=self.criterion,
            granularity=request.pattern,
            allocation=request.allocation,
            overrides=request.options.get("overrides"),
            seed=request.seed,
            method_name=self.name,
        )

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        plan = self.pruner(request).plan(
            model,
            sparsity=request.sparsity,
            example_inputs=request.example_inputs,
            calibration=request.calibration,
            loss_fn=request.options.get("loss_fn"),
            targets=request.targets,
            ignored=request.ignored,
        )
        plan.apply_(model)
        return MethodOutcome(plan.layer_sparsity(), plan=plan)


for _m in (
    ScoreMethod(
        "magnitude", "magnitude", "|w| (Han et al. 2015); any pattern (unstructured, N:M, block, channel rows)",
        paper="Learning both Weights and Connections for Efficient Neural Networks",
    ),
    ScoreMethod(
        "random", "random", "random scores, seeded: the baseline; at initialisation it is random pruning",
        when="at-init",
    ),
    ScoreMethod(
        "snip", "grad-weight", "|g * w| from calibration data (Lee et al. 2019), one global threshold as in the paper; "
        "needs calibration",
        default_allocation="global",
        needs_data=True,
        when="at-init",
        paper="SNIP: Single-shot Network Pruning based on Connection Sensitivity",
    ),
    ScoreMethod(
        "lamp", "magnitude", "magnitude with LAMP layer-adaptive sparsity (Lee et al. 2021)",
        default_allocation="lamp",
        paper="Layer-adaptive Sparsity for the Magnitude-based Pruning",
    ),
):
    METHODS.add(_m.name, _m, _m.description)


def resolve_method(method: str | Method) -> Method:
    if isinstance(method, str):
        return METHODS.get(method)
    _validate(getattr(method, "name", "?"), method)
    return method
