"""Unstructured and N:M post-training pruning of causal LMs: magnitude, Wanda, SparseGPT, with OWL.

``prune_causal_lm(model, "sparsegpt", sparsity=0.5, pattern=NM(2, 4), calibration=batches)`` runs the
calibration runner with one solver per Linear of each decoder layer. With ``owl=OWL()`` a first,
read-only pass measures each layer's outlier ratio (Wanda scores above ``multiple`` x their mean) and
turns them into per-layer sparsities (Yin et al. 2023); the second pass prunes with them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from prunekit.errors import InvalidSparsityError, NothingToPruneError, UnknownNameError
from prunekit.granularity import NM, Granularity, Unstructured, parse_pattern
from prunekit.llm import criteria
from prunekit.llm.adapters import adapter_for, prunable_linears
from prunekit.llm.runner import InputConsumer, LayerJob, LayerVisitor, RunSummary, run_layerwise
from prunekit.llm.solvers import SOLVERS, Solver, WandaSolver, check_pattern, check_sparsity, weight_matrix


@dataclass(frozen=True)
class OWL:
    """Outlier-weighted layer-wise sparsity (Yin et al. 2023); see :func:`prunekit.llm.criteria.owl_sparsities`.

    ``lam``: the layer sparsities span ``2 * lam`` around the target (their mean); ``multiple``: a score is an outlier
    above ``multiple`` x the mean score of its layer.
    """

    lam: float = 0.08
    multiple: float = 5.0


@dataclass
class LLMPruneResult:
    """What a layer-wise pruning run did: target sparsity per matrix and per decoder layer, and notes."""

    method: str
    pattern: str
    layer_sparsity: dict[str, float]
    block_sparsity: list[float]
    notes: list[str] = field(default_factory=list)
    outlier_ratios: list[float] = field(default_factory=list)
    summaries: list[RunSummary] = field(default_factory=list)


class _OutlierVisitor(LayerVisitor):
    """Read-only pass: the OWL outlier ratio of every decoder layer from its Wanda scores."""

    modifies = False

    def __init__(self, selected: set[str] | None, multiple: float):
        self.selected = selected
        self.multiple = multiple
        self.ratios: list[float] = []
        self._stats: dict[str, WandaSolver] = {}

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        self._stats = {
            rel: WandaSolver(mod, job.full_name(rel))
            for rel, mod in job.linears.items()
            if self.selected is None or job.full_name(rel) in self.selected
        }
        return {rel: s.add_batch for rel, s in self._stats.items()}

    def finish(self, job: LayerJob) -> None:
        scores = [s.scores() for s in self._stats.values()]
        self.ratios.append(criteria.outlier_ratio(scores, self.multiple) if scores else 0.0)
        self._stats = {}


class _SolveVisitor(LayerVisitor):
    """Pruning pass: one solver per selected Linear; solve with the layer's sparsity and pattern."""

    def __init__(
        self,
        solver: type[Solver],
        solver_options: dict[str, Any],
        selected: set[str] | None,
        plan: list[tuple[float, Granularity]],
    ):
        self.solver = solver
        self.options = solver_options
        self.selected = selected
        self.plan = plan
        self.layer_sparsity: dict[str, float] = {}
        self._solvers: dict[str, Solver] = {}

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        self._solvers = {
            rel: self.solver(mod, job.full_name(rel), **self.options)
            for rel, mod in job.linears.items()
            if self.selected is None or job.full_name(rel) in self.selected
        }
        if self.solver.name == "magnitude":
            return {}
        return {rel: s.add_batch for rel, s in self._solvers.items()}

    def finish(self, job: LayerJob) -> None:
        sparsity, pattern = self.plan[job.index]
        for solver in self._solvers.values():
            solver.prune(sparsity, pattern)
            self.layer_sparsity[solver.layer_name] = check_sparsity(sparsity, pattern)
            solver.free()
        self._solvers = {}


def _layer_patterns(pattern: Granularity, sparsities: list[float]) -> list[tuple[float, Granularity]]:
    """Per-layer (sparsity, pattern); N:M under a non-uniform allocation becomes a per-layer n of the same m."""
    if not isinstance(pattern, NM):
        return [(s, pattern) for s in sparsities]
    plan: list[tuple[float, Granularity]] = []
    for s in sparsities:
        n = min(max(round(pattern.m * (1.0 - s)), 1), pattern.m - 1)
        layer_pattern = NM(n, pattern.m)
        plan.append((layer_pattern.fixed_sparsity, layer_pattern))
    return plan


def select_targets(model: nn.Module, targets: Iterable[str] | None) -> set[str]:
    """Full names of the decoder-layer Linears to prune (all of them when ``targets`` is None)."""
    adapter = adapter_for(model)
    layers = adapter.layer_list(model)
    available = {f"{adapter.layers}.{i}.{rel}" for i, layer in enumerate(layers) for rel in prunable_linears(layer)}
    if targets is None:
        chosen = available
    else:
        chosen = set(targets) & available
    if not chosen:
        raise NothingToPruneError(
            "no Linear inside the decoder layers is selected for pruning "
            f"(the layer-wise LLM methods prune the Linears under {adapter.layers}.*)"
        )
    return chosen


def prune_causal_lm(
    model: nn.Module,
    method: str,
    *,
    sparsity: float | None = None,
    pattern: str | Granularity | None = None,
    calibration: Any = None,
    owl: OWL | None = None,
    targets: Iterable[str] | None = None,
    device: str | None = None,
    progress: bool | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> LLMPruneResult:
    """Prune every (selected) Linear of the decoder layers of ``model`` in place, one layer at a time.

    ``method``: "magnitude", "wanda" or "sparsegpt"; ``pattern``: None (unstructured) or N:M, e.g. "2:4"
    (then ``sparsity`` is fixed by the pattern); ``owl``: spread the sparsity over layers by OWL.
    """
    if method not in SOLVERS:
        raise UnknownNameError("layer-wise method", method, SOLVERS)
    granularity = parse_pattern(pattern)
    if isinstance(granularity, NM):
        if sparsity is not None and abs(sparsity - granularity.fixed_sparsity) > 1e-9:
            raise InvalidSparsityError(
                f"pattern {granularity} fixes the sparsity at {granularity.fixed_sparsity:g}; "
                f"pass sparsity={granularity.fixed_sparsity:g} (or leave it out)"
            )
        sparsity = granularity.fixed_sparsity
    if sparsity is None:
        raise InvalidSparsityError("pass sparsity= a fraction in [0, 1) (or an N:M pattern, which fixes it)")
    sparsity = check_sparsity(sparsity, Unstructured())
    selected = select_targets(model, targets)
    for name in sorted(selected):
        check_pattern(granularity, name, weight_matrix(model.get_submodule(name)))
    adapter = adapter_for(model)
    n_layers = len(adapter.layer_list(model))
    result = LLMPruneResult(method, str(granularity), {}, [sparsity] * n_layers)
    label = f"{'owl-' if owl else ''}{method}"
    if owl is not None:
        outliers = _OutlierVisitor(selected, owl.multiple)
        result.summaries.append(
            run_layerwise(model, calibration, outliers, device=device, progress=progress, description="owl: outliers")
        )
        result.outlier_ratios = outliers.ratios
        result.block_sparsity = criteria.owl_sparsities(outliers.ratios, sparsity, owl.lam)
        result.notes.append(
            f"OWL (lambda={owl.lam}, M={owl.multiple}) layer sparsities: "
            + ", ".join(f"{s:.3f}" for s in result.block_sparsity)
        )
    plan = _layer_patterns(granularity, result.block_sparsity)
    result.block_sparsity = [s for s, _ in plan]
    if isinstance(granularity, NM) and owl is not None:
        result.notes.append("N:M under OWL: per-layer n of " + ", ".join(str(p) for _, p in plan))
    options: dict[str, Any] = {"blocksize": blocksize, "percdamp": percdamp} if method == "sparsegpt" else {}
    visitor = _SolveVisitor(SOLVERS[method], options, selected, plan)
    if method == "magnitude" and calibration is None:
        layers = adapter.layer_list(model)
        for i, layer in enumerate(layers):
            job = LayerJob(i, layer, f"{adapter.layers}.{i}", prunable_linears(layer))
            visitor.start(job)
            visitor.finish(job)
    else:
        result.summaries.append(
            run_layerwise(model, calibration, visitor, device=device, progress=progress, description=label)
        )
    result.layer_sparsity = visitor.layer_sparsity
    return result
