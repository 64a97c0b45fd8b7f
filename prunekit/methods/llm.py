"""Registration of the language-model methods with :data:`prunekit.methods.base.METHODS`.

Importing this module registers ``wanda``, ``sparsegpt`` (layer-wise, unstructured or N:M, any allocation),
``owl-wanda``, ``owl-sparsegpt``, ``owl-magnitude`` (aliases: the solver with ``allocation="owl"``) and
``llm-heads``, ``llm-mlp``, ``llm-layers`` (structured, physical; allocation ``uniform`` only), ``flap``
(structured, physical, per-layer widths; allocation ``global``, the paper's adaptive structure, or ``uniform``)
and ``llm-pruner`` (LLM-Pruner's gradient-scored coupled groups, physical; allocation ``uniform`` only).
``magnitude`` itself is the core's method (per-matrix magnitude with any pattern), which is the layer-wise
magnitude baseline of the papers. Importing needs only torch; transformers is used by the models passed in.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from prunekit.errors import ConfigError, PatternError
from prunekit.methods.base import METHODS, Method, MethodOutcome, PruneRequest

__all__ = [
    "FlapMethod",
    "LLMPrunerMethod",
    "LM_METHOD_NAMES",
    "LayerwiseLLMMethod",
    "SparseGPTLLMMethod",
    "StructuredLLMMethod",
    "register",
]

_LAYERWISE_OPTIONS = frozenset(
    {"device", "progress", "sequential", "true_sequential", "merge_mib", "spill_activations"}
)


class LayerwiseLLMMethod(Method):
    """Post-training, layer-by-layer pruning of a causal LM's decoder Linears (see :mod:`prunekit.llm.prune`);
    any other model (a CNN, a ViT, an encoder) has every target Linear / Conv pruned by the same solver through
    :func:`prunekit.apply.solve.solve_layerwise` (option ``sequential``: False gathers all statistics in one pass).

    Honours every allocation (uniform, erk, global, lamp, owl, or an Allocation value); N:M takes uniform
    only. With ``owl=True`` the method is an alias of its solver with ``allocation="owl"`` (``owl-wanda`` is
    ``wanda`` with OWL): its default allocation is OWL and any other allocation is refused by name.
    """

    needs_data = True
    structural = False
    writes_targets_only = True
    default_allocation = "uniform"
    options: ClassVar[frozenset[str]] = _LAYERWISE_OPTIONS
    #: what ``prunekit methods NAME`` says the method removes
    removes = "weights: zeroed in place on a causal LM (no masks to squash); on other models, zeroed under masks"

    def __init__(self, name: str, solver: str, owl: bool, description: str, paper: str):
        self.name = name
        self.solver = solver
        self.owl = owl
        self.default_allocation = "owl" if owl else "uniform"
        self.description = description
        self.paper = paper

    @classmethod
    def for_solver(cls, name: str, solver: str, owl: bool, description: str, paper: str) -> LayerwiseLLMMethod:
        """The method of ``solver`` ("magnitude", "wanda", "sparsegpt"): SparseGPT's takes its own options
        (``blocksize``, ``percdamp``) as well."""
        kind = SparseGPTLLMMethod if solver == "sparsegpt" else cls
        return kind(name, solver, owl, description, paper)

    def check_allocation(self, allocation: object) -> None:
        """Refuse an allocation other than OWL for the ``owl-*`` aliases
        (:class:`~prunekit.errors.ConfigError`)."""
        from prunekit.allocation.builtin import OWL

        if self.owl and allocation is not None and not isinstance(allocation, OWL):
            raise ConfigError(
                f"{self.name} is {self.solver} with allocation='owl'; it cannot use allocation {allocation}. "
                f"Pass allocation='owl' (or prunekit.OWL(lam=..., M=...)), or use method {self.solver!r} "
                f"with allocation={str(allocation)!r}"
            )

    def check_request(self, model: nn.Module, request: PruneRequest) -> None:
        """The options :meth:`run` refuses, refused up front: the causal-LM options on another model, and on a
        causal LM ``sequential=False`` and the options the solver or its calibration order does not use
        (:func:`prunekit.llm.prune.resolve_pass_options`); raises :class:`~prunekit.errors.ConfigError`."""
        from prunekit.calibration.families import has_family
        from prunekit.llm.prune import select_targets
        from prunekit.llm.sequential import resolve_pass_options
        from prunekit.targets import check_untied

        opts = request.options
        if not has_family(model):
            lm_only = sorted(k for k in ("true_sequential", "merge_mib", "spill_activations") if k in opts)
            if lm_only:
                raise ConfigError(
                    f"option {lm_only[0]} applies to causal LMs pruned decoder layer by decoder layer; for "
                    f"{type(model).__name__} use sequential=True / False (prunekit.apply.solve)"
                )
            super().check_request(model, request)
            return
        if not opts.get("sequential", True):
            raise ConfigError(
                "a causal LM is pruned one decoder layer after another; sequential=False applies to "
                "other models (prunekit.apply.solve)"
            )
        resolve_pass_options(
            self.solver,
            *(opts.get(k) for k in ("blocksize", "percdamp", "true_sequential", "merge_mib", "spill_activations")),
        )
        pruned = select_targets(model, [t.name for t in request.targets], outside_ok=True)
        check_untied(model, [t for t in request.targets if t.name in pruned])  # the others stay dense

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Prune the request's targets with the solver: a causal LM of a known family decoder layer by
        decoder layer (:func:`prunekit.llm.prune.prune_causal_lm`; targets outside the decoder layers stay
        dense, with a note), any other model with :func:`prunekit.apply.solve.solve_layerwise`.

        Raises :class:`~prunekit.errors.ConfigError` for an allocation an ``owl-*`` alias refuses, and what the
        solvers raise; the options were checked before by :meth:`check_request` (:func:`prunekit.prune` calls
        it first).
        """
        from prunekit.calibration.families import has_family
        from prunekit.llm.prune import prune_causal_lm, select_targets

        opts = request.options
        if not has_family(model):  # any other model (a CNN, a ViT, an encoder): every target Linear / Conv
            from prunekit.apply.solve import solve_layerwise

            self.check_allocation(request.allocation)
            solved = solve_layerwise(
                model,
                self.solver,
                sparsity=request.sparsity,
                pattern=request.pattern,
                calibration=request.calibration,
                targets=request.targets,
                allocation=request.allocation,
                sequential=bool(opts.get("sequential", True)),
                device=opts.get("device"),
                progress=opts.get("progress"),
                **{k: opts[k] for k in ("blocksize", "percdamp") if k in opts},
            )
            return MethodOutcome(layer_sparsity=solved.layer_sparsity, notes=solved.notes)
        names = [t.name for t in request.targets]
        selected = select_targets(model, names, outside_ok=True)
        self.check_allocation(request.allocation)
        result = prune_causal_lm(
            model,
            self.solver,
            sparsity=request.sparsity,
            pattern=request.pattern,
            calibration=request.calibration,
            allocation=request.allocation,
            targets=selected,
            device=opts.get("device"),
            progress=opts.get("progress"),
            **{
                k: opts[k]
                for k in ("blocksize", "percdamp", "true_sequential", "merge_mib", "spill_activations")
                if k in opts
            },
        )
        outside = sorted(set(names) - selected)
        why = "left dense: outside the decoder layers the layer-wise LLM methods prune"
        return MethodOutcome(
            layer_sparsity=result.layer_sparsity, notes=list(result.notes), left_dense=dict.fromkeys(outside, why)
        )


class SparseGPTLLMMethod(LayerwiseLLMMethod):
    """:class:`LayerwiseLLMMethod` of SparseGPT, which also takes ``blocksize`` (columns solved together) and
    ``percdamp`` (damping as a fraction of the mean Hessian diagonal)."""

    options: ClassVar[frozenset[str]] = _LAYERWISE_OPTIONS | {"blocksize", "percdamp"}


class StructuredLLMMethod(Method):
    """Physical removal of attention heads, MLP channels or whole decoder layers (see
    :mod:`prunekit.llm.structured`)."""

    needs_data = True
    structural = True
    default_allocation = "uniform"
    options: ClassVar[frozenset[str]] = frozenset({"criterion", "bias_compensation", "device", "progress"})
    #: what each unit's removal is called in messages
    UNIT_WORDS: ClassVar[dict[str, str]] = {
        "heads": "attention heads",
        "mlp": "MLP channels",
        "layers": "decoder layers",
    }

    def __init__(self, name: str, unit: str, description: str, paper: str):
        self.name = name
        self.unit = unit
        self.description = description
        self.paper = paper

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Remove ``request.sparsity`` of the model's units with :func:`prunekit.llm.structured.prune_structured`
        (the options ``criterion``, ``bias_compensation``, ``device``, ``progress`` pass through).

        Raises :class:`~prunekit.errors.PatternError` for a pattern other than unstructured and
        :class:`~prunekit.errors.ConfigError` for an allocation other than uniform.
        """
        from prunekit.allocation.builtin import Uniform
        from prunekit.granularity.patterns import Unstructured
        from prunekit.llm import structured

        words = self.UNIT_WORDS[self.unit]
        if not isinstance(request.pattern, Unstructured):
            raise PatternError(
                f"{self.name} removes whole {words}, so it takes no pattern (pattern=None or 'unstructured'), "
                f"not {request.pattern}"
            )
        alloc = request.allocation
        if alloc is not None and not isinstance(alloc, Uniform):
            how = (
                "ranks all decoder layers together by Block Influence and removes the lowest share"
                if self.unit == "layers"
                else f"removes the same number of {words} from every decoder layer (so the config states the shape)"
            )
            raise ConfigError(f"{self.name} {how}; it supports allocation='uniform' only, not {alloc!s}")
        opts: dict[str, Any] = dict(request.options)
        result = structured.prune_structured(
            model,
            self.unit,
            sparsity=request.sparsity,
            calibration=request.calibration,
            device=opts.pop("device", None),
            progress=opts.pop("progress", None),
            ignored=request.ignored_modules,
            **opts,
        )
        return MethodOutcome(layer_sparsity={}, notes=result.notes)


class FlapMethod(Method):
    """FLAP (An et al. 2024): fluctuation scores standardised per kind of unit, one global ranking of
    key-value groups and MLP channels over all decoder layers, bias compensation; physical, per-layer widths
    (see :mod:`prunekit.llm.flap`). ``allocation="global"`` (default) is the paper's adaptive AL-AM,
    ``"uniform"`` its UL-UM baseline at the same parameter budget."""

    name = "flap"
    needs_data = True
    structural = True
    default_allocation = "global"
    options: ClassVar[frozenset[str]] = frozenset({"bias_compensation", "standardization", "device", "progress"})
    description = (
        "FLAP adaptive structured pruning: standardised fluctuation scores ranked globally over heads and MLP "
        "channels of all layers, bias compensation; per-layer widths, physical (An et al. 2024)"
    )
    paper = "Fluctuation-based Adaptive Structured Pruning for Large Language Models"

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Remove ``request.sparsity`` of the decoder layers' attention and MLP parameters with
        :func:`prunekit.llm.flap.prune_flap` (options ``bias_compensation``, ``standardization``, ``device``,
        ``progress``).

        Raises :class:`~prunekit.errors.PatternError` for a pattern other than unstructured,
        :class:`~prunekit.errors.ConfigError` for an allocation other than global / uniform, and what
        :func:`~prunekit.llm.flap.prune_flap` raises.
        """
        from prunekit.granularity.patterns import Unstructured
        from prunekit.llm.flap import prune_flap

        if not isinstance(request.pattern, Unstructured):
            raise PatternError(
                f"flap removes whole key-value groups and MLP channels, so it takes no pattern (pattern=None or "
                f"'unstructured'), not {request.pattern}"
            )
        opts = request.options
        result = prune_flap(
            model,
            sparsity=request.sparsity,
            calibration=request.calibration,
            allocation=request.allocation,
            bias_compensation=bool(opts.get("bias_compensation", True)),
            standardization=opts.get("standardization"),
            device=opts.get("device"),
            progress=opts.get("progress"),
            ignored=request.ignored_modules,
        )
        return MethodOutcome(layer_sparsity={}, notes=result.notes)


class LLMPrunerMethod(Method):
    """LLM-Pruner (Ma, Fang & Wang 2023): coupled groups (key-value groups with their query heads, MLP
    channels) scored by the first- or second-order Taylor change of the language-model loss, the same widths
    removed from every pruned layer; physical (see :mod:`prunekit.llm.llm_pruner`). LoRA recovery afterwards:
    :func:`prunekit.llm.recover`."""

    name = "llm-pruner"
    needs_data = True
    structural = True
    default_allocation = "uniform"
    options: ClassVar[frozenset[str]] = frozenset({"criterion", "aggregation", "layers", "progress"})
    description = (
        "LLM-Pruner: attention groups and MLP channels with their coupled slices, scored by the Taylor change of "
        "the LM loss (|w*g|, optionally second order), the same widths removed from every layer; physical "
        "(Ma et al. 2023)"
    )
    paper = "LLM-Pruner: On the Structural Pruning of Large Language Models"

    def run(self, model: nn.Module, request: PruneRequest) -> MethodOutcome:
        """Remove ``request.sparsity`` of the decoder layers' attention and MLP parameters with
        :func:`prunekit.llm.llm_pruner.prune_llm_pruner` (options ``criterion``: "taylor" or "taylor2",
        ``aggregation``: "sum", "max", "prod" or "last", ``layers``: (start, end), ``progress``).

        Raises :class:`~prunekit.errors.PatternError` for a pattern other than unstructured,
        :class:`~prunekit.errors.ConfigError` for an allocation other than uniform, and what
        :func:`~prunekit.llm.llm_pruner.prune_llm_pruner` raises.
        """
        from prunekit.allocation.builtin import Uniform
        from prunekit.granularity.patterns import Unstructured
        from prunekit.llm.llm_pruner import prune_llm_pruner

        if not isinstance(request.pattern, Unstructured):
            raise PatternError(
                "llm-pruner removes whole key-value groups, query heads and MLP channels, so it takes no pattern "
                f"(pattern=None or 'unstructured'), not {request.pattern}"
            )
        alloc = request.allocation
        if alloc is not None and not isinstance(alloc, Uniform):
            raise ConfigError(
                "llm-pruner removes the same heads and MLP channels from every pruned layer (so the config states "
                f"the shape); it supports allocation='uniform' only, not {alloc!s}"
            )
        opts = request.options
        result = prune_llm_pruner(
            model,
            sparsity=request.sparsity,
            calibration=request.calibration,
            criterion=opts.get("criterion", "taylor"),
            aggregation=opts.get("aggregation", "sum"),
            layers=opts.get("layers"),
            ignored=request.ignored_modules,
            progress=opts.get("progress"),
        )
        return MethodOutcome(layer_sparsity={}, notes=result.notes)


_LAYERWISE = (
    (
        "wanda",
        "wanda",
        False,
        "Wanda |W| * ||X|| per output row, layer by layer (Sun et al. 2023); needs calibration",
        "A Simple and Effective Pruning Approach for Large Language Models",
    ),
    (
        "sparsegpt",
        "sparsegpt",
        False,
        "SparseGPT OBS reconstruction with the inverse Hessian (Frantar & Alistarh 2023); needs calibration",
        "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot",
    ),
    (
        "owl-wanda",
        "wanda",
        True,
        "Wanda with OWL outlier-weighted layer sparsity (Yin et al. 2023)",
        "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity",
    ),
    (
        "owl-sparsegpt",
        "sparsegpt",
        True,
        "SparseGPT with OWL outlier-weighted layer sparsity (Yin et al. 2023)",
        "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity",
    ),
    (
        "owl-magnitude",
        "magnitude",
        True,
        "layer-wise magnitude with OWL outlier-weighted layer sparsity",
        "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity",
    ),
)

_STRUCTURED = (
    (
        "llm-heads",
        "heads",
        "remove attention heads (GQA aware) by FLAP fluctuation or magnitude, with bias compensation; physical",
        "Fluctuation-based Adaptive Structured Pruning for Large Language Models",
    ),
    (
        "llm-mlp",
        "mlp",
        "remove MLP intermediate channels by FLAP fluctuation or magnitude, with bias compensation; physical",
        "Fluctuation-based Adaptive Structured Pruning for Large Language Models",
    ),
    (
        "llm-layers",
        "layers",
        "remove whole decoder layers with the lowest Block Influence 1 - cos(x_in, x_out) (ShortGPT); physical",
        "ShortGPT: Layers in Large Language Models are More Redundant Than You Expect",
    ),
)


def _add(name: str, method: Method, description: str) -> None:
    if name in METHODS:
        if isinstance(METHODS.get(name), (LayerwiseLLMMethod, StructuredLLMMethod, FlapMethod, LLMPrunerMethod)):
            return  # registered by an earlier import
        raise ConfigError(f"method {name!r} is already registered by another module; the LLM method cannot be added")
    METHODS.add(name, method, description)


def register() -> None:
    """Add the LLM methods to the registry (idempotent). Raises :class:`~prunekit.errors.ConfigError` when
    another module registered one of their names."""
    for name, solver, owl, description, paper in _LAYERWISE:
        _add(name, LayerwiseLLMMethod.for_solver(name, solver, owl, description, paper), description)
    for name, unit, description, paper in _STRUCTURED:
        _add(name, StructuredLLMMethod(name, unit, description, paper), description)
    _add(FlapMethod.name, FlapMethod(), FlapMethod.description)
    _add(LLMPrunerMethod.name, LLMPrunerMethod(), LLMPrunerMethod.description)


register()

#: every method name that prunes a causal LM (``magnitude`` is the core's per-matrix baseline)
LM_METHOD_NAMES: tuple[str, ...] = (
    "magnitude",
    *(entry[0] for entry in _LAYERWISE),
    *(entry[0] for entry in _STRUCTURED),
    FlapMethod.name,
    LLMPrunerMethod.name,
)
