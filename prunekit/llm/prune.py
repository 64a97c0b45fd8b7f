"""Unstructured and N:M post-training pruning of causal LMs: magnitude, Wanda, SparseGPT, under any allocation.

``prune_causal_lm(model, "sparsegpt", sparsity=0.5, allocation="lamp", calibration=batches)`` runs the
calibration runner with one solver per Linear of each decoder layer. The allocation decides each matrix's
sparsity before the pruning pass:

* ``uniform``: every matrix at the target (the papers' default).
* ``erk`` and other shape-only allocations: from the matrices' shapes, e.g. ERK density
  ``~ (out + in) / (out * in)`` (:class:`prunekit.allocation.builtin.ERK`).
* ``global``, ``lamp`` and other score-based allocations: a first, read-only pass over the dense model
  gathers every matrix's scores under the solver's own criterion (magnitude ``|W_ij|``, Wanda
  ``|W_ij| * ||X_j||``, SparseGPT's OBS saliency ``w_ij^2 / [H^-1]_jj^2``); the allocation turns them into
  per-matrix sparsities. The scores are kept on the CPU in float32 (4 bytes per pruned weight).
* ``owl``: a first, read-only pass measures the outlier ratio of each OWL block (by default a decoder block,
  all its matrices pooled) on Wanda scores, as in Yin et al. 2023 for every solver, and maps the ratios to
  block sparsities (:class:`prunekit.allocation.builtin.OWL`).

The second pass prunes each matrix at its sparsity. N:M patterns fix every matrix's sparsity, so they take
``uniform`` only (:class:`~prunekit.errors.ConfigError` otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.allocation.builtin import OWL, Allocation, LayerInfo, Uniform, resolve_allocation
from prunekit.apply.solvers import SOLVERS, Solver, WandaSolver, check_pattern, check_sparsity, weight_matrix
from prunekit.calibration.families import family_for, prunable_linears
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    ModelError,
    NothingToPruneError,
    PatternError,
    UnknownNameError,
)
from prunekit.granularity.patterns import NM, Granularity, Unstructured, parse_pattern
from prunekit.llm.runner import InputConsumer, LayerJob, LayerStore, LayerVisitor, RunSummary, run_layerwise
from prunekit.llm.sequential import DEFAULT_MERGE_MIB, resolve_pass_options

__all__ = [
    "DEFAULT_MERGE_MIB",
    "LLMPruneResult",
    "OWL",
    "SharedInputs",
    "SolveVisitor",
    "prune_causal_lm",
    "select_targets",
]


@dataclass
class LLMPruneResult:
    """What a layer-wise pruning run did.

    ``layer_sparsity``: the sparsity each matrix was pruned at (full module name -> fraction);
    ``block_sparsity``: per decoder layer, the share of its pruned matrices' weights removed (0 for a layer
    with none); ``outlier_ratios``: OWL's ratio per block (empty for other allocations).
    """

    method: str
    pattern: str
    layer_sparsity: dict[str, float]
    block_sparsity: list[float]
    notes: list[str] = field(default_factory=list)
    outlier_ratios: dict[str, float] = field(default_factory=dict)
    summaries: list[RunSummary] = field(default_factory=list)
    allocation: str = "uniform"


class SharedInputs:
    """The solvers of one decoder layer, grouped by the input tensor they are fed.

    The runner hands Linears that read the same tensor (q/k/v after the attention norm, gate/up after the MLP
    norm) the same tensor object, in call order; the first matrix of each group gathers the statistics
    (Wanda's column norms, SparseGPT's ``X^T X``) for all of them, so each is accumulated once. Grouping is
    learned on the first batch, from the tensors themselves, never from module names. ``share=False`` keeps
    one accumulator per matrix (the reference path). Raises :class:`~prunekit.errors.ModelError` when a later
    batch feeds a group's members different tensors.
    """

    def __init__(self, solvers: Mapping[str, Solver], *, share: bool = True):
        self.solvers = dict(solvers)
        self.share = share
        self.leader: dict[str, str] = {}
        self._last: dict[str, Tensor] = {}  # leader -> the input it gathered last

    def consumers(self) -> dict[str, InputConsumer]:
        """One consumer per solver, by relative name (for :meth:`LayerVisitor.start`)."""
        return {rel: self._consumer(rel) for rel in self.solvers}

    def _consumer(self, rel: str) -> InputConsumer:
        def consume(x: Tensor) -> None:
            lead = self.leader.get(rel)
            if lead is None:
                found = (other for other, seen in self._last.items() if seen is x) if self.share else iter(())
                lead = self.leader[rel] = next(found, rel)
            if lead == rel:
                self.solvers[rel].add_batch(x)
                self._last[rel] = x
            elif self._last.get(lead) is not x:
                raise ModelError(
                    f"{self.solvers[rel].layer_name} read the same input tensor as {self.solvers[lead].layer_name} "
                    "in the first calibration batch but not in a later one; pass share_inputs=False"
                )

        return consume

    def groups(self) -> list[list[Solver]]:
        """The solvers by group, each group's statistics gatherer first (a solver never fed: alone)."""
        out: dict[str, list[Solver]] = {}
        for rel in self.solvers:
            lead = self.leader.get(rel, rel)
            out.setdefault(lead, [self.solvers[lead]])
            if rel != lead:
                out[lead].append(self.solvers[rel])
        self._last = {}
        return list(out.values())

    def adopt(self) -> list[Solver]:
        """Let every member read its group's statistics (:meth:`Solver.adopt_statistics`); all solvers."""
        for group in self.groups():
            for solver in group[1:]:
                solver.adopt_statistics(group[0])
        return list(self.solvers.values())


class _OutlierVisitor(LayerVisitor):
    """Read-only pass: OWL's outlier ratio of every block from the Wanda scores of its matrices.

    A block's ratio is computed, and its scores dropped, as soon as its last matrix has been scored, so for
    blocks inside one decoder layer (the default) only one layer's scores are held at a time.
    """

    modifies = False

    def __init__(self, selected: set[str], owl: OWL, share_inputs: bool = True):
        self.selected = selected
        self.owl = owl
        self.members: dict[str, set[str]] = {}
        for name in selected:
            self.members.setdefault(owl.block(name), set()).add(name)
        self.pending: dict[str, dict[str, Tensor]] = {}
        self.ratios: dict[str, float] = {}
        self.share_inputs = share_inputs
        self._stats = SharedInputs({})

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        solvers = {
            rel: WandaSolver(mod, job.full_name(rel))
            for rel, mod in job.linears.items()
            if job.full_name(rel) in self.selected
        }
        self._stats = SharedInputs(solvers, share=self.share_inputs)
        return self._stats.consumers()

    def finish(self, job: LayerJob) -> None:
        for solver in self._stats.adopt():
            block = self.owl.block(solver.layer_name)
            self.pending.setdefault(block, {})[solver.layer_name] = solver.scores().cpu()
            solver.free()
            if len(self.pending[block]) == len(self.members[block]):
                self.ratios[block] = self.owl.ratio(list(self.pending.pop(block).values()))
        self._stats = SharedInputs({})


class _ScoreVisitor(LayerVisitor):
    """Read-only pass: every selected matrix's scores under the solver's own criterion, kept on the CPU."""

    modifies = False

    def __init__(
        self, solver: type[Solver], solver_options: dict[str, Any], selected: set[str], share_inputs: bool = True
    ):
        self.solver = solver
        self.options = solver_options
        self.selected = selected
        self.share_inputs = share_inputs
        self.scores: dict[str, Tensor] = {}
        self._solvers = SharedInputs({})

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        solvers = {
            rel: self.solver(mod, job.full_name(rel), **self.options)
            for rel, mod in job.linears.items()
            if job.full_name(rel) in self.selected
        }
        self._solvers = SharedInputs(solvers, share=self.share_inputs)
        if self.solver.name == "magnitude":
            return {}
        return self._solvers.consumers()

    def finish(self, job: LayerJob) -> None:
        for solver in self._solvers.adopt():
            self.scores[solver.layer_name] = solver.scores().float().cpu()
            solver.free()
        self._solvers = SharedInputs({})


class SolveVisitor(LayerVisitor):
    """The pruning pass of :func:`~prunekit.llm.runner.run_layerwise`: one ``solver`` per Linear named in
    ``plan`` (qualified name -> sparsity), each solved at its own sparsity with ``pattern`` once its decoder
    layer's calibration inputs are gathered (SparseGPT: Frantar & Alistarh 2023; Wanda: Sun et al. 2023).

    A matrix planned at sparsity 0 is left as it is (no solver, no statistics). Matrices fed the same input
    tensor share one statistics accumulator and are solved together (:class:`SharedInputs`,
    :meth:`~prunekit.apply.solvers.Solver.prune_shared`: SparseGPT factorises their inverse Hessian once);
    ``share_inputs=False`` gathers and solves each alone. ``true_sequential``: each matrix is calibrated on
    inputs computed with the matrices its layer calls before it already pruned (o_proj after q/k/v, the MLP
    after the attention; :mod:`prunekit.llm.runner`); False: every matrix of a layer sees the dense layer's
    inputs (the order of Wanda's and llm-compressor's pipelines). ``layer_sparsity`` holds what each matrix
    reached. :func:`prune_causal_lm` uses it; pass it to ``run_layerwise`` to run the pass with other runner
    options (devices, activation offloading).
    """

    def __init__(
        self,
        solver: type[Solver],
        solver_options: dict[str, Any],
        plan: dict[str, float],
        pattern: Granularity,
        share_inputs: bool = True,
        true_sequential: bool = True,
    ):
        self.solver = solver
        self.options = solver_options
        self.plan = plan
        self.pattern = pattern
        self.share_inputs = share_inputs
        self.sequential = true_sequential
        self.layer_sparsity: dict[str, float] = {}
        self._solvers = SharedInputs({})
        self._solved: set[str] = set()

    wants_outputs = False
    merges_batches = True  # the solvers' statistics are sums over tokens: any batching gives them

    def start(self, job: LayerJob) -> Mapping[str, InputConsumer]:
        """A solver for each planned Linear of ``job``'s layer; its statistics gatherer, by relative name."""
        solvers: dict[str, Solver] = {}
        for rel, mod in job.linears.items():
            name = job.full_name(rel)
            if name not in self.plan:
                continue
            if self.plan[name] > 0.0 or isinstance(self.pattern, NM):
                solvers[rel] = self.solver(mod, name, **self.options)
            else:
                self.layer_sparsity[name] = 0.0
        self._solvers = SharedInputs(solvers, share=self.share_inputs)
        if self.solver.name == "magnitude":
            return {}
        return self._solvers.consumers()

    def solve(self, job: LayerJob, names: list[str], complete: bool) -> None:
        """Prune the matrices ``names`` (relative to the layer) now (true-sequential order, see
        :meth:`LayerVisitor.solve`): a group of shared inputs gathered whole is solved together; a matrix
        pruned in its own pre-hook (``complete`` False) keeps its statistics for the matrices of its group
        that follow, which adopt them."""
        shared = self._solvers
        groups: dict[str, list[str]] = {}
        for rel in names:
            groups.setdefault(shared.leader.get(rel, rel), []).append(rel)
        for lead, members in groups.items():
            if lead in members:
                group = [shared.solvers[lead]] + [shared.solvers[r] for r in members if r != lead]
                self._prune_group(group, keep=not complete)
                continue
            leader = shared.solvers[lead]
            for rel in members:
                shared.solvers[rel].adopt_statistics(leader)
            self._prune_group([shared.solvers[rel] for rel in members])
        self._solved.update(job.full_name(rel) for rel in names)

    def _prune_group(self, group: list[Solver], keep: bool = False) -> None:
        """Solve matrices fed one input (statistics in ``group[0]``); ``keep``: the first keeps them."""
        sparsities = [self.plan[s.layer_name] for s in group]
        self.solver.prune_shared(group, sparsities, self.pattern, keep_statistics=keep)
        for solver, sparsity in zip(group, sparsities):
            self.layer_sparsity[solver.layer_name] = check_sparsity(sparsity, self.pattern)
            if not (keep and solver is group[0]):
                solver.free()

    def finish(self, job: LayerJob) -> None:
        """Solve every matrix of the layer not solved yet at its planned sparsity and pattern, the matrices of
        each group of shared inputs together; record what each reached; free the statistics."""
        for group in self._solvers.groups():
            todo = [s for s in group if s.layer_name not in self._solved]
            if todo and todo[0] is group[0]:
                self._prune_group(todo)
            elif todo:  # members of a group whose leader a sequential pass already solved
                for solver in todo:
                    solver.adopt_statistics(group[0])
                self._prune_group(todo)
            for solver in group:
                solver.free()
        self._solvers = SharedInputs({})
        self._solved = set()


def select_targets(model: nn.Module, targets: Iterable[str] | None, *, outside_ok: bool = False) -> set[str]:
    """Full names of the decoder-layer Linears to prune (all of them when ``targets`` is None).

    ``targets``: module names (a list, not one string). Raises :class:`~prunekit.errors.ConfigError` for a
    string, a name that is no module of ``model``, and (unless ``outside_ok``, where such names are left out)
    a module that is not a Linear inside the decoder layers; :class:`~prunekit.errors.NothingToPruneError`
    when nothing is left to prune."""
    adapter = family_for(model)
    layers = adapter.layer_list(model)
    available = {f"{adapter.layers}.{i}.{rel}" for i, layer in enumerate(layers) for rel in prunable_linears(layer)}
    example = min(available, key=lambda n: (len(n), n)) if available else f"{adapter.layers}.0.<linear>"
    if targets is None:
        chosen = available
    else:
        if isinstance(targets, (str, bytes)):
            raise ConfigError(f"targets is a list of module names, got the string {targets!r}; pass [{targets!r}]")
        names = list(targets)
        modules = dict(model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ConfigError(
                f"targets names {len(unknown)} module(s) the model does not have (e.g. {unknown[0]!r}); pass full "
                f"module names such as {example!r}"
            )
        outside = [n for n in names if n not in available]
        if outside and not outside_ok:
            raise ConfigError(
                f"{outside[0]!r} is not a Linear inside the decoder layers; the layer-wise LLM methods prune the "
                f"Linears under {adapter.layers}.* (e.g. {example!r}); leave the others out"
            )
        chosen = set(names) & available
    if not chosen:
        raise NothingToPruneError(
            "no Linear inside the decoder layers is selected for pruning "
            f"(the layer-wise LLM methods prune the Linears under {adapter.layers}.*)"
        )
    return chosen


def _walk(model: nn.Module, visitor: LayerVisitor, store: LayerStore | None = None) -> None:
    """Visit every decoder layer without running the model (magnitude needs no inputs)."""
    adapter = family_for(model)
    for i, layer in enumerate(adapter.layer_list(model)):
        if store is not None:
            store.load(i, layer)
        job = LayerJob(i, layer, f"{adapter.layers}.{i}", prunable_linears(layer))
        visitor.start(job)
        visitor.finish(job)
        if store is not None:
            store.release(i, layer, True)


def _matrix_sparsities(
    model: nn.Module,
    method: str,
    allocation: Allocation,
    sparsity: float,
    selected: set[str],
    calibration: Any,
    solver_options: dict[str, Any],
    result: LLMPruneResult,
    run: dict[str, Any],
    share_inputs: bool,
) -> dict[str, float]:
    """The sparsity of every selected matrix under ``allocation`` (a read-only pass where it needs scores)."""
    names = sorted(selected)
    shapes = {n: tuple(weight_matrix(model.get_submodule(n)).shape) for n in names}
    numel = {n: shapes[n][0] * shapes[n][1] for n in names}
    if isinstance(allocation, Uniform):
        return {n: sparsity for n in names}
    if isinstance(allocation, OWL):
        outliers = _OutlierVisitor(selected, allocation, share_inputs)
        result.summaries.append(run_layerwise(model, calibration, outliers, description="owl: outliers", **run))
        block_numel: dict[str, int] = {}
        for n in names:
            block_numel[allocation.block(n)] = block_numel.get(allocation.block(n), 0) + numel[n]
        per_block = allocation.sparsities(outliers.ratios, block_numel, sparsity)
        result.outlier_ratios = dict(outliers.ratios)
        result.notes.append(
            f"OWL (lam={allocation.lam:g}, M={allocation.M:g}) on Wanda scores, per block: "
            + ", ".join(f"{b} {s:.3f}" for b, s in per_block.items())
        )
        return {n: per_block[allocation.block(n)] for n in names}
    if not allocation.needs_scores:
        return allocation.allocate([LayerInfo(n, shapes[n]) for n in names], sparsity)
    scorer = _ScoreVisitor(SOLVERS[method], solver_options, selected, share_inputs)
    if method == "magnitude" and calibration is None:
        _walk(model, scorer)
    else:
        result.summaries.append(
            run_layerwise(model, calibration, scorer, description=f"{allocation}: {method} scores", **run)
        )
    infos = [
        LayerInfo(n, shapes[n], scorer.scores[n].reshape(-1), torch.ones(numel[n], dtype=torch.long)) for n in names
    ]
    del scorer
    return allocation.allocate(infos, sparsity)


def prune_causal_lm(
    model: nn.Module,
    method: str,
    *,
    sparsity: float | None = None,
    pattern: str | Granularity | None = None,
    calibration: Any = None,
    allocation: str | Allocation | None = None,
    targets: Iterable[str] | None = None,
    device: str | torch.device | None = None,
    progress: bool | None = None,
    blocksize: int | None = None,
    percdamp: float | None = None,
    share_inputs: bool = True,
    store: LayerStore | None = None,
    true_sequential: bool | None = None,
    merge_mib: float | None = None,
    spill_activations: bool | None = None,
) -> LLMPruneResult:
    """Prune every (selected) Linear of the decoder layers of ``model`` in place, one layer at a time.

    ``method``: "magnitude", "wanda" or "sparsegpt" (the solver); ``pattern``: None (unstructured) or N:M,
    e.g. "2:4" (then ``sparsity`` is fixed by the pattern); ``allocation``: how ``sparsity`` is spread over
    the matrices, a name in :data:`prunekit.allocation.builtin.ALLOCATIONS` or an
    :class:`~prunekit.allocation.builtin.Allocation` (default uniform; see the module docstring). The overall
    sparsity over the pruned matrices is ``sparsity`` up to rounding (Wanda rounds per output row:
    ``round(s * in)`` weights of each, at most ``in - 1``). ``share_inputs``: matrices of a decoder layer fed the
    same input tensor (q/k/v, gate/up) share one statistics accumulator and, for SparseGPT, one inverse-Hessian
    factorisation and column sweep (:class:`SharedInputs`); False gathers and solves each matrix alone (the
    same masks and, up to float rounding, the same weights, more slowly). ``targets``: full names of the
    decoder-layer Linears to prune (a list; default all of them; anything else is refused, see
    :func:`select_targets`).

    ``blocksize`` (default 128 columns) and ``percdamp`` (default 0.01 of the mean Hessian diagonal) are
    SparseGPT's; the other methods refuse them.

    ``true_sequential`` (Wanda and SparseGPT; default True): each matrix is calibrated on inputs computed with
    the matrices called before it in its decoder layer already pruned (the ``--true-sequential`` order of the
    SparseGPT and GPTQ reference code; Frantar & Alistarh 2023), in one forward pass of the calibration set per
    layer (each batch's pass waits at every Linear until all batches have fed it; :mod:`prunekit.llm.runner`);
    False: all matrices of a layer see the dense layer's inputs (the order of the Wanda reference, of the SparseGPT
    reference without ``--true-sequential``, and of llm-compressor: a statistics pass, then an output pass).
    ``merge_mib`` (either order; default :data:`DEFAULT_MERGE_MIB`, 32):
    consecutive equal-length calibration batches are merged into larger batches while a layer's forward on one
    is estimated to need at most this many MiB; 0 never merges.
    ``spill_activations`` (true-sequential order, CPU; default True): the inputs the passes wait with (all but
    the layer's own input, from each layer's second pause on) stay in a temporary file until the passes go on
    (read back exactly), so that the peak memory stays near the two-pass order's; False keeps them in memory.

    ``store``: where the decoder layers' weights come from and go to when they are not in memory (see
    :func:`prunekit.llm.streaming.prune_checkpoint`); None: the model is in memory.

    Raises :class:`~prunekit.errors.ConfigError` for N:M with an allocation other than uniform,
    :class:`~prunekit.errors.UnknownNameError` for an unknown method or allocation,
    :class:`~prunekit.errors.InvalidSparsityError`, :class:`~prunekit.errors.PatternError`,
    :class:`~prunekit.errors.MissingDataError` (Wanda, SparseGPT and OWL need ``calibration``),
    :class:`~prunekit.errors.ConfigError` for a ``true_sequential`` or ``spill_activations`` that is not a
    bool or a negative ``merge_mib``, for an option the method does not use (``blocksize`` / ``percdamp``
    other than with SparseGPT; the calibration-pass options with magnitude; ``spill_activations`` with
    ``true_sequential=False``), all before the model changes.
    """
    if method not in SOLVERS:
        raise UnknownNameError("layer-wise method", method, SOLVERS)
    granularity = parse_pattern(pattern)
    alloc = resolve_allocation(allocation)
    if isinstance(granularity, NM):
        granularity.check_sparsity(sparsity)
        if not isinstance(alloc, Uniform):
            raise ConfigError(
                f"pattern {granularity} fixes every matrix at {granularity.fixed_sparsity:g} sparsity; allocation "
                f"{alloc} cannot change that (use allocation='uniform', or an unstructured pattern)"
            )
        sparsity = granularity.fixed_sparsity
    if sparsity is None:
        raise InvalidSparsityError("pass sparsity= a fraction in [0, 1) (or an N:M pattern, which fixes it)")
    sparsity = check_sparsity(sparsity, Unstructured())
    true_sequential, merge_mib, spill_activations, options = resolve_pass_options(
        method, blocksize, percdamp, true_sequential, merge_mib, spill_activations
    )
    selected = select_targets(model, targets)
    misfits = []  # N:M that does not divide a matrix's input size: all of them named at once
    group = granularity.m if isinstance(granularity, NM) else 0
    for name in sorted(selected):
        weight = weight_matrix(model.get_submodule(name))
        if group and weight.dim() >= 2 and weight.shape[1] % group:
            misfits.append((name, int(weight.shape[1])))
        else:
            check_pattern(granularity, name, weight)
    if misfits:
        inputs = ", ".join(str(n) for n in sorted({n for _, n in misfits}))
        raise PatternError(
            f"{granularity} needs input sizes that are multiples of {group}; {len(misfits)} of the "
            f"{len(selected)} selected matrices have {inputs} inputs (e.g. {misfits[0][0]}). Choose an N:M whose M "
            "divides every input size (2:4 divides those of the supported families), or leave those matrices "
            "out of the selection"
        )
    adapter = family_for(model)
    n_layers = len(adapter.layer_list(model))
    result = LLMPruneResult(method, str(granularity), {}, [sparsity] * n_layers, allocation=str(alloc))
    run: dict[str, Any] = {"device": device, "progress": progress, "layer_store": store}
    plan = _matrix_sparsities(model, method, alloc, sparsity, selected, calibration, options, result, run, share_inputs)
    wrong = sorted(n for n in selected if not 0.0 <= plan.get(n, -1.0) < 1.0)
    if wrong:  # checked before the pruning pass changes anything
        raise ConfigError(
            f"allocation {alloc} gave no sparsity in [0, 1) for {len(wrong)} matrices (e.g. {wrong[0]}: "
            f"{plan.get(wrong[0])}); an allocation must return one for every layer it is given"
        )
    label = method if isinstance(alloc, Uniform) else f"{alloc}-{method}"
    visitor = SolveVisitor(SOLVERS[method], options, plan, granularity, share_inputs, true_sequential)
    if method == "magnitude":  # no statistics: no pass over the calibration set (OWL's ran in the plan above)
        _walk(model, visitor, store)
        if calibration is not None and not isinstance(alloc, OWL):
            result.notes.append("magnitude reads the weights alone: the calibration data was not used")
    else:
        result.summaries.append(
            run_layerwise(
                model,
                calibration,
                visitor,
                description=label,
                merge_mib=merge_mib,
                spill_activations=spill_activations,
                **run,
            )
        )
    result.layer_sparsity = visitor.layer_sparsity
    if not isinstance(alloc, Uniform):
        values = result.layer_sparsity.values()
        result.notes.append(
            f"allocation {alloc}: {len(values)} matrices at sparsities {min(values):.3f} to {max(values):.3f}"
        )
    pruned = [0.0] * n_layers
    sizes = [0] * n_layers
    prefix = f"{adapter.layers}."
    for name, s in result.layer_sparsity.items():
        index = int(name[len(prefix) :].split(".", 1)[0])
        size = weight_matrix(model.get_submodule(name)).numel()
        pruned[index] += s * size
        sizes[index] += size
    result.block_sparsity = [p / z if z else 0.0 for p, z in zip(pruned, sizes)]
    return result
