"""Named pruning methods, composed from the taxonomy's parts and registered by name.

A method is an object with ``run(model, request) -> MethodOutcome``. Most methods score weights and mask
them (:class:`ScoreMethod`: a criterion plus default pattern and allocation); others (post-training solvers,
structural surgery) override ``run``. :func:`prunekit.prune` validates the request, runs the method inside
a transaction and measures the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, is_dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

from prunekit.allocation.builtin import Allocation
from prunekit.apply.plan import Plan, Pruner
from prunekit.criteria import Criterion, resolve_criterion
from prunekit.errors import ConfigError
from prunekit.granularity.patterns import Granularity
from prunekit.registry import Registry
from prunekit.targets import Target, check_untied

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
    "register_physical_composer",
    "resolve_method",
]


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
    """What a method reports back: the sparsity it aimed for per layer, notes, its plan if it made one, and
    the targets it left dense (name -> why), which the report lists with the ignored layers."""

    layer_sparsity: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plan: Plan | None = None
    left_dense: dict[str, str] = field(default_factory=dict)


class Method:
    """Base class of named methods."""

    name: str = "method"
    description: str = ""
    needs_data: bool = False
    structural: bool = False  # changes shapes: prune() snapshots the whole module tree
    #: changes nothing but its targets' modules (their weights and masks): prune() snapshots those only
    writes_targets_only: bool = False
    default_pattern: str | Granularity | None = None
    default_allocation: str | Allocation | None = "uniform"
    options: ClassVar[frozenset[str]] = frozenset()  # method-specific keyword options it accepts
    paper: str = ""
    when: str = "one-shot"  # one-shot | at-init | during-training | post-training

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Prune ``model`` in place as ``request`` says (its sparsity, pattern, allocation and targets) and
        report the per-layer sparsity and notes. :func:`prunekit.prune` calls it inside a transaction, so a
        method may raise any :class:`~prunekit.errors.PrunekitError` and the model is left as it was."""
        raise NotImplementedError

    def for_pattern(self, pattern: Granularity) -> Method:
        """The method that carries out ``pattern`` (by default this one, which checks the pattern itself)."""
        return self

    def check_request(self, model: nn.Module, request: PruneRequest) -> None:
        """Refuse, before :func:`prunekit.prune` spends any time on ``model`` (counting, snapshotting), what
        :meth:`run` would refuse from the request alone; raises a :class:`~prunekit.errors.PrunekitError`.
        The base method refuses, unless it is structural, a target tied to a tensor outside it
        (:func:`prunekit.targets.check_untied`: a mask on it would act on both once squashed)."""
        if not self.structural:
            check_untied(model, request.targets)

    def model_problem(self, model: nn.Module) -> str | None:
        """Why this method cannot act on ``model`` at all, whatever the request (e.g. a run-time gating method
        on a network without the layers it gates), in words that say what it needs; None when it can. Lets a
        caller skip a model before spending time on it; the base method accepts every model."""
        return None


M = TypeVar("M", bound=Method)


def _validate(name: str, obj: Any) -> None:
    if not isinstance(obj, Method) or not callable(getattr(obj, "run", None)):
        raise ConfigError(f"method {name!r} must be a Method instance with a run(model, request) method")


METHODS: Registry[Method] = Registry("method", validate=_validate)


def register_method(name: str, *, aliases: tuple[str, ...] = (), **fields: Any) -> Callable[[type[M]], type[M]]:
    """Class decorator: instantiate the decorated :class:`Method` with ``name`` and ``fields`` and register it
    in :data:`METHODS`. The class docstring's first line is the description unless ``description=`` is given.

    A named method is a small composition of parts plus typed fields, e.g.::

        @register_method("snip", criterion="grad-weight", default_allocation="global", when="at-init")
        class Snip(ScoreMethod):
            \"\"\"|g * w| from calibration data, one global threshold (Lee et al. 2019).\"\"\"
    """

    def deco(cls: type[M]) -> type[M]:
        doc = (cls.__doc__ or "").strip()
        fields.setdefault("description", " ".join(doc.split("\n\n")[0].split()) if doc else "")
        obj = cls(**{"name": name, **fields}) if is_dataclass(cls) else cls()
        if not is_dataclass(cls):
            obj.name = name
            for k, v in fields.items():
                setattr(obj, k, v)
        METHODS.add(name, obj, obj.description, aliases=aliases)
        return cls

    return deco


#: composes (physical level, criterion) into the method that removes those units; set by
#: :func:`register_physical_composer` from :mod:`prunekit.methods.physical`, which sits above this module
_PHYSICAL_COMPOSER: Callable[[str, Criterion], Method] | None = None


def register_physical_composer(fn: Callable[[str, Criterion], Method]) -> Callable[[str, Criterion], Method]:
    """Decorator: ``fn(level, criterion) -> Method`` carries out physical granularities for
    :meth:`ScoreMethod.for_pattern` (the structural engine registers
    :func:`prunekit.methods.physical.physical_method`)."""
    global _PHYSICAL_COMPOSER
    _PHYSICAL_COMPOSER = fn
    return fn


@dataclass
class ScoreMethod(Method):
    """Score weights with a criterion, allocate sparsity over layers, remove units by the pattern: a
    :class:`~prunekit.apply.plan.Pruner` with defaults.

    Any pattern the criterion has a meaning for is honoured: masking patterns through the pruner, the
    physical ones (``Channel(physical=True)``, ``Head()``, ``Layer()``, ``Embedding()``) through the
    structural engine (:meth:`for_pattern`); any other raises
    :class:`~prunekit.criteria.CriterionLevelError`. Options: ``overrides`` ({layer: sparsity}),
    ``loss_fn`` (``loss_fn(outputs, targets)`` for gradient criteria).
    """

    name: str = "score"
    criterion: str | Criterion = "magnitude"
    description: str = ""
    default_allocation: str | Allocation | None = "uniform"
    default_pattern: str | Granularity | None = None
    needs_data: bool = False
    paper: str = ""
    when: str = "one-shot"
    default_overrides: dict[str, float] | None = None
    options: ClassVar[frozenset[str]] = frozenset({"overrides", "loss_fn"})

    def __post_init__(self) -> None:
        crit = resolve_criterion(self.criterion)
        self.needs_data = self.needs_data or crit.needs_data

    def for_pattern(self, pattern: Granularity) -> Method:
        """The method that carries out ``pattern``: this one for masks; for a physical granularity the
        structural engine's composition of this criterion and that level
        (:func:`prunekit.methods.physical.physical_method`). Raises
        :class:`~prunekit.criteria.CriterionLevelError` when the criterion has no meaning for its units."""
        crit = resolve_criterion(self.criterion)
        crit.check_level(pattern.criterion_level, str(pattern))
        if not pattern.physical:
            return self
        if self.default_overrides:
            raise ConfigError(
                f"overrides ({sorted(self.default_overrides)}) set per-layer sparsities of mask granularities "
                f"(unstructured, N:M, blocks, channel masks); pattern {pattern} removes units physically and does "
                f"not honour them: drop overrides=, keep layers whole with ignore=[...], or use a mask granularity"
            )
        if _PHYSICAL_COMPOSER is None:  # pragma: no cover - prunekit/__init__ imports prunekit.methods.physical
            raise ConfigError(f"pattern {pattern} needs the structural engine: import prunekit first")
        return _PHYSICAL_COMPOSER(pattern.level, crit)

    def pruner(self, request: PruneRequest) -> Pruner:
        """The :class:`~prunekit.apply.plan.Pruner` for ``request``: this method's criterion with the request's
        pattern, allocation, seed and overrides (``options["overrides"]``, else the method's default)."""
        overrides = request.options.get("overrides", self.default_overrides)
        return Pruner(
            criterion=self.criterion,
            granularity=request.pattern,
            allocation=request.allocation,
            overrides=overrides,
            seed=request.seed,
            method_name=self.name,
        )

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Plan with :meth:`pruner` on the request's targets and data, apply the masks, and report the layer
        sparsities, the plan and a note per layer the plan left dense (beyond those already ignored).
        Raises what :meth:`~prunekit.apply.plan.Pruner.plan` raises."""
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
        known = set(request.ignored)
        notes = [f"{name}: {why}" for name, why in plan.ignored if (name, why) not in known]
        return MethodOutcome(plan.layer_sparsity(), notes, plan=plan)


# ---- the named compositions -------------------------------------------------------------------------


@register_method(
    "magnitude", criterion="magnitude", paper="Learning both Weights and Connections for Efficient Neural Networks"
)
class Magnitude(ScoreMethod):
    """|w| (Han et al. 2015); any pattern: unstructured, N:M, block, channel rows, or physical channels,
    heads and hidden size (L1 of the group)."""


@register_method("random", criterion="random", when="at-init")
class Random(ScoreMethod):
    """random scores, seeded: the baseline; at initialisation it is random pruning."""


@register_method(
    "snip",
    criterion="grad-weight",
    default_allocation="global",
    when="at-init",
    paper="SNIP: Single-shot Network Pruning based on Connection Sensitivity",
)
class Snip(ScoreMethod):
    """|g * w| from calibration data (Lee et al. 2019), one global threshold as in the paper; needs
    calibration."""


@register_method(
    "lamp",
    criterion="magnitude",
    default_allocation="lamp",
    paper="Layer-adaptive Sparsity for the Magnitude-based Pruning",
)
class Lamp(ScoreMethod):
    """magnitude with LAMP layer-adaptive sparsity (Lee et al. 2021)."""


@register_method(
    "taylor", criterion="taylor", default_pattern="channel", paper="Importance Estimation for Neural Network Pruning"
)
class Taylor(ScoreMethod):
    """first-order Taylor (sum of g * w over a unit)^2 (Molchanov et al. 2019); output channels by
    default; needs calibration."""


@register_method("obd", criterion="obd", paper="Optimal Brain Damage")
class OBD(ScoreMethod):
    """Optimal Brain Damage 1/2 h_ii w_i^2 with the empirical Fisher diagonal (LeCun et al. 1990); needs
    calibration."""


@register_method(
    "fpgm",
    criterion="fpgm",
    default_pattern="channel",
    paper="Filter Pruning via Geometric Median for Deep Convolutional Neural Networks Acceleration",
)
class FPGM(ScoreMethod):
    """filters nearest the geometric median of their layer go first (He et al. 2019); channels only."""


@register_method(
    "apoz",
    criterion="apoz",
    default_pattern="channel",
    paper="Network Trimming: A Data-Driven Neuron Pruning Approach towards Efficient Deep Architectures",
)
class APoZ(ScoreMethod):
    """channels whose outputs are mostly zero go first (1 - APoZ, Hu et al. 2016); channels only; needs
    calibration."""


def resolve_method(method: str | Method | Pruner) -> Method:
    """A registered name, a :class:`Method`, or a :class:`~prunekit.apply.plan.Pruner` (a composition without a
    registered name: :func:`pruner_method`). Raises :class:`~prunekit.errors.UnknownNameError` for an unknown
    name and :class:`~prunekit.errors.ConfigError` for an object that is not a :class:`Method`."""
    if isinstance(method, str):
        return METHODS.get(method)
    if isinstance(method, Pruner):
        return pruner_method(method)
    _validate(getattr(method, "name", "?"), method)
    return method


def pruner_method(pruner: Pruner) -> ScoreMethod:
    """A :class:`Pruner` as a method for :func:`prunekit.prune`: its criterion, with its granularity and
    allocation as defaults (prune's ``pattern=`` / ``allocation=`` may fill those the pruner was not given,
    and must agree with those it was) and its overrides."""
    crit = resolve_criterion(pruner.criterion)
    return ScoreMethod(
        name=pruner.method_name,
        criterion=crit,
        description=f"a composition: criterion {crit.name}, granularity {pruner.granularity}, "
        f"allocation {pruner.allocation}",
        default_pattern=pruner.granularity,
        default_allocation=pruner.allocation,
        default_overrides=pruner.overrides,
    )
