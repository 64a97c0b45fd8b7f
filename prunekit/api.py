"""The one entry point: :func:`prune`."""

from __future__ import annotations

import copy
import math
from typing import Any

from torch import nn

from prunekit.allocation.builtin import resolve_allocation
from prunekit.apply.plan import Pruner, check_seed, split_by_pattern
from prunekit.apply.transaction import transaction
from prunekit.calls import check_device
from prunekit.errors import (
    ConfigError,
    InvalidSparsityError,
    MissingDataError,
    ModelError,
    NothingToPruneError,
    PatternError,
    PrunekitError,
    inputs_failure,
)
from prunekit.eval.latency import compare_latency, time_model
from prunekit.eval.report import (
    ModelStats,
    Report,
    count_params,
    count_params_within,
    layer_stats,
    measure,
    weight_shapes,
)
from prunekit.granularity.patterns import NM, Unstructured, check_sparsity, parse_pattern
from prunekit.methods.base import METHODS, Method, PruneRequest, ScoreMethod, resolve_method
from prunekit.targets import Ignore, Target, check_finite, ignored_modules, select_targets, tied_outside

__all__ = ["prune"]

COMMON_OPTIONS = frozenset(
    {"seed", "prune_classifier", "skip_incompatible", "measure", "measure_latency", "latency_threads"}
)
#: models larger than this are not copied to time the dense model interleaved with the pruned one
INTERLEAVED_TIMING_MAX_BYTES = 2 << 30


def prune(
    model: nn.Module,
    method: str | Method | Pruner,
    *,
    sparsity: float | None = None,
    pattern: Any = None,
    allocation: Any = None,
    ignore: Ignore = None,
    example_inputs: Any = None,
    calibration: Any = None,
    **options: Any,
) -> Report:
    """Prune ``model`` in place with ``method`` and return a :class:`Report` of before and after.

    ``method``: a registered name (see ``prunekit methods``), a :class:`Method`, or a :class:`Pruner` (a
    composition of criterion, granularity and allocation without a registered name; ``pattern=`` and
    ``allocation=`` may fill what it was not given and must agree with what it was). ``sparsity``:
    fraction of the selected weights to remove, in [0, 1); optional with a :class:`Pruner` that carries one
    (its ``sparsity``, or its schedule's final sparsity). ``pattern``: what is removed, a granularity or
    its string form ("2:4", "4x4", "channel"; physical: "physical-channel", "head", "layer", "embedding",
    carried out by the structural engine); default the method's (unstructured). A method refuses a pattern
    it cannot honour (:class:`PatternError`, or :class:`~prunekit.criteria.CriterionLevelError` when its
    criterion has no meaning for the pattern's units). ``allocation``: how the sparsity is spread over
    layers ("uniform", "global", "erk", "lamp", "owl", or an object); default the method's. ``ignore``: modules,
    module names or a ``filter_fn(module, name)`` to keep dense; the final classifier is kept dense by
    default (``prune_classifier=True`` prunes it). ``example_inputs``: a batch used to count FLOPs and time
    the model (and by structural methods to trace it); without it, a model that carries its input shape
    (:func:`prunekit.models.input_shape_of`: built-in, torchvision and timm models) is traced and counted on a
    seeded random batch of that shape, and not timed. ``calibration``: batches ``(inputs, targets)`` or a
    loss function ``model -> loss``, for data-driven methods.

    Common options: ``seed`` (0), ``prune_classifier`` (False), ``skip_incompatible`` (False: leave layers
    that do not fit the pattern dense instead of failing), ``measure`` (True: measure FLOPs, file sizes and
    latency before/after; False: count the parameters only, the other figures are None; default None: True,
    except for a causal LM of a known family, whose report stays cheap, counts and per-layer sparsities, and
    whose perplexity is :func:`prunekit.llm.perplexity`'s job), ``measure_latency`` (True when example inputs
    are given), ``latency_threads`` (1). Methods document their own options.

    Latency: the dense model (a copy taken before pruning) and the pruned one are timed interleaved at
    ``latency_threads`` threads (:func:`prunekit.eval.latency.compare_latency`); ``report.latency`` holds the
    paired ratio with its 95% interval and says "faster" or "slower" only when the interval excludes 1.

    Masks are attached as parametrizations, so fine-tuning keeps pruned weights at zero;
    :func:`prunekit.squash_masks_` folds them in. Any error leaves the model exactly as it was.

    Raises :class:`~prunekit.errors.ModelError` when ``model`` is not a module,
    :class:`~prunekit.errors.InvalidSparsityError` for a missing sparsity (an N:M ``pattern`` fixes it: "2:4"
    alone prunes at 0.5) or one outside [0, 1),
    :class:`~prunekit.errors.ConfigError` for options the method does not accept (the message lists those it
    does), :class:`~prunekit.errors.UnknownNameError` for an unknown method, pattern or allocation, and what
    the method raises; every error is a :class:`~prunekit.errors.PrunekitError`.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"prune takes a torch.nn.Module, got {type(model).__name__}; build one from a spec with "
            "pk.build_model('torchvision:resnet18') or pass your own model"
        )
    on_meta = next((n for n, t in model.state_dict(keep_vars=True).items() if t.device.type == "meta"), None)
    if on_meta is not None:
        raise ModelError(
            f"the model's weights are on the meta device ({on_meta}, ...): they hold no values to prune. Load "
            "them first (e.g. from_pretrained without device_map='meta', or model.to_empty(device='cpu') "
            "followed by load_state_dict)"
        )
    if isinstance(method, Pruner):
        given = parse_pattern(pattern) if pattern is not None else None
        if sparsity is None and isinstance(given, NM):  # an N:M pattern given with the pruner fixes it
            sparsity = given.fixed_sparsity
        if sparsity is None:  # the Pruner's own sparsity, or its schedule's final one, or its N:M's
            sparsity = method.target_sparsity(None)
        pattern, allocation, ignore = _from_pruner(method, sparsity, pattern, allocation, ignore, options)
    elif sparsity is None:
        fixed = parse_pattern(pattern)
        if isinstance(fixed, NM):  # an N:M pattern fixes the sparsity (2:4 -> 0.5)
            sparsity = fixed.fixed_sparsity
    if sparsity is None:
        raise InvalidSparsityError(
            "no sparsity given: pass sparsity= (a number in [0, 1), the fraction of the selected weights to remove), "
            "or an N:M pattern, which fixes it"
        )
    m = resolve_method(method)
    unknown = set(options) - COMMON_OPTIONS - set(m.options)
    if unknown:
        hint = ""
        for option in sorted(unknown):  # another method's option: say whose, so the user can switch or drop it
            takers = sorted(n for n in METHODS.names() if option in METHODS.get(n).options)
            if option == "overrides":  # per-layer sparsities: the score methods' option, not every method's
                hint += (
                    f"; overrides= (per-layer sparsities) is an option of {', '.join(takers)}; with {m.name!r} keep "
                    "layers whole with ignore=[...] or spread the sparsity with allocation="
                )
            elif takers:
                hint += f"; {option} is an option of {', '.join(takers)} only"
        raise ConfigError(
            f"unknown option(s) {sorted(unknown)} for method {m.name!r}; it accepts: "
            f"{', '.join(sorted(COMMON_OPTIONS | set(m.options)))}{hint}"
        )
    check_sparsity(sparsity)
    sparsity = float(sparsity)
    if options.get("device") is not None:
        check_device(options["device"])
    gran = parse_pattern(pattern if pattern is not None else m.default_pattern)
    if m.structural and pattern is not None:
        _check_structural_pattern(m, gran)
    named = m
    m = m.for_pattern(gran)
    if m is not named:  # a physical pattern: the structural engine carries out the composition
        unknown = set(options) - COMMON_OPTIONS - set(m.options)
        if unknown:
            raise ConfigError(
                f"option(s) {sorted(unknown)} of method {named.name!r} do not apply to pattern {gran} (physical); "
                f"it accepts: {', '.join(sorted(COMMON_OPTIONS | set(m.options)))}"
            )
        if getattr(gran, "identity_only", False):
            options = {**options, "identity_only": True}
    elif gran.physical and not m.structural:
        raise PatternError(
            f"method {m.name!r} masks weights; pattern {gran} removes units from the architecture. Use a "
            "criterion with that pattern (prunekit.Pruner(criterion=..., granularity=...)) or a structural method "
            "(prunekit methods)"
        )
    if isinstance(gran, NM):
        gran.check_sparsity(sparsity)
        sparsity = gran.fixed_sparsity  # exact (0.333333 given for 2:3 is 1/3)
    # N:M fixes every layer's sparsity: with no allocation given, a registered score method (snip's default is
    # global) takes uniform, the only one that applies; a Pruner's own allocation or an owl-* alias stays asked for
    nm_default = isinstance(gran, NM) and isinstance(m, ScoreMethod) and not isinstance(method, Pruner)
    default_alloc = "uniform" if nm_default else m.default_allocation
    alloc = resolve_allocation(allocation if allocation is not None else default_alloc)
    if isinstance(gran, NM) and alloc.name != "uniform":
        raise ConfigError(f"pattern {gran} fixes every layer's sparsity; allocation must be 'uniform', got {alloc}")
    if isinstance(gran, NM) and options.get("overrides"):
        raise ConfigError(
            f"pattern {gran} fixes every layer's sparsity at {gran.fixed_sparsity:g}; overrides cannot change it "
            "(leave a layer dense with ignore=[name], or use an unstructured pattern with overrides)"
        )
    if m.needs_data and calibration is None and not (example_inputs is not None and _forward_only(named, m)):
        raise MissingDataError(
            f"method {m.name!r} needs data: pass calibration=batches (an iterable of (inputs, targets)) "
            "or calibration=loss_fn (a callable model -> scalar loss)"
        )
    seed = check_seed(options.pop("seed", 0))
    do_measure = _default_measure(model, options.pop("measure", None))
    do_latency = bool(options.pop("measure_latency", True)) and do_measure and example_inputs is not None
    threads = options.pop("latency_threads", 1)
    prune_classifier = bool(options.pop("prune_classifier", False))
    skip_incompatible = bool(options.pop("skip_incompatible", False))
    carried_note = None
    if example_inputs is None:  # a model that carries its input shape (built-in, torchvision, timm) is traced on it
        example_inputs, carried_note = _carried_example(model, seed)

    selection = select_targets(model, ignore, prune_classifier=prune_classifier)
    check_finite(selection.targets)
    targets, ignored = selection.targets, list(selection.ignored)
    if not m.structural:
        targets, misfits = split_by_pattern(targets, gran, skip_incompatible)
        ignored += misfits
    request = PruneRequest(
        sparsity=float(sparsity),
        pattern=gran,
        allocation=alloc,
        targets=targets,
        ignored=ignored,
        ignored_modules=ignored_modules(model, ignore),
        example_inputs=example_inputs,
        calibration=calibration,
        seed=seed,
        options=options,
    )
    m.check_request(model, request)  # what the method refuses from its options, before any time is spent
    # a method that writes only its targets, reported by counts: the rest of the model is counted once, after
    # the call (a model mapped from its checkpoint file then reads its embeddings only after the peak)
    touched = _touched_modules(model, targets) if m.writes_targets_only and not m.structural else None
    counted_before = count_params(model, touched) if touched is not None and not do_measure else None
    try:
        if counted_before is not None:
            before = ModelStats(0, 0)
        else:
            before = measure(model, example_inputs, latency=False) if do_measure else ModelStats(*count_params(model))
    except PrunekitError:
        raise
    except Exception as e:  # the forward pass itself failed: nothing was changed yet
        raise inputs_failure(e, example_inputs) from e
    dense_copy, latency_note = _dense_copy(model) if do_latency else (None, None)
    shapes_before = weight_shapes(model) if m.structural else None
    # the figures after the call are taken inside the transaction too: an error (or Ctrl-C) while measuring
    # or timing the pruned model still gives the model back as it was
    with transaction(model, structural=m.structural, modules=touched):
        outcome = m.run(model, request)
        if shapes_before is not None and sparsity > 0 and weight_shapes(model) == shapes_before:
            why = "; ".join(str(n).splitlines()[0] for n in outcome.notes[:3])
            raise NothingToPruneError(
                f"{m.name} at sparsity {sparsity:g} removed nothing: every layer keeps its shape"
                + (f" ({why})" if why else "")
                + "; the model is unchanged. Pass a larger sparsity"
            )
        if counted_before is not None:  # the untouched tensors' counts are the same after as before
            assert touched is not None
            total, nonzero, total_in, nonzero_in = count_params_within(model, touched)
            after = ModelStats(total, nonzero)
            before = ModelStats(total - total_in + counted_before[0], nonzero - nonzero_in + counted_before[1])
        else:
            after = measure(model, example_inputs, latency=False) if do_measure else ModelStats(*count_params(model))
        comparison = None
        if do_latency:
            if dense_copy is not None:
                comparison = compare_latency(dense_copy, model, example_inputs, threads=threads)
                before.set_timing(comparison.baseline)
                after.set_timing(comparison.candidate)
                del dense_copy
            else:  # too large to copy: the after model alone, with its spread
                after.set_timing(time_model(model, example_inputs, threads=threads))
        ignored += list(outcome.left_dense.items())
        layers = layer_stats(model, outcome.layer_sparsity, dict(ignored), shapes_before)
        unprunable = [] if m.structural else _unprunable_notes(model, request.ignored_modules)
    settings = {
        "method": named.name,
        **({"criterion": str(named.criterion)} if isinstance(named, ScoreMethod) else {}),
        "pattern": str(gran) if not m.structural else f"{getattr(m, 'kind', None) or gran.level} (physical)",
        "allocation": str(alloc),
        "sparsity": float(sparsity),
        "seed": seed,
        **({"overrides": options["overrides"]} if "overrides" in options else {}),
    }
    notes = list(outcome.notes)
    if not m.structural and sparsity > 0 and after.nonzero_params == before.nonzero_params:
        notes.append(
            "nothing was removed: as many non-zero weights after as before (layers that were already at least "
            f"{sparsity:g} sparse keep what they have; see the per-layer sparsity); pass a larger sparsity to "
            "prune further"
        )
    notes += [f"{name}: {why}" for name, why in ignored]
    notes += unprunable
    if calibration is not None:
        notes += _unused_calibration_note(named)
    if latency_note:
        notes.append(latency_note)
    if carried_note:
        notes.append(carried_note)
    return Report(
        method=named.name,
        settings=settings,
        before=before,
        after=after,
        layers=layers,
        notes=notes,
        latency=comparison,
    )


def _touched_modules(model: nn.Module, targets: list[Target]) -> list[nn.Module] | None:
    """The targets' modules, for a method that writes nothing else; None (snapshot and count everything)
    when a tensor outside them shares storage with one inside (tied weights: writing one writes both)."""
    modules = list({id(t.module): t.module for t in targets}.values())
    return None if tied_outside(model, modules) else modules


def _carried_example(model: nn.Module, seed: int) -> tuple[Any, str | None]:
    """A seeded random batch of the shape the model carries (:func:`prunekit.models.input_shape_of`), on the
    model's device, and a note saying so; ``(None, None)`` when the model carries none."""
    from prunekit.models import input_shape_of

    shape = input_shape_of(model)
    if shape is None:
        return None, None
    import torch

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(device)
    note = (
        f"example_inputs: a random batch of the shape the model carries {tuple(shape)}, used as if given (FLOPs "
        "are counted on it; pass example_inputs= to choose them, and to time the model)"
    )
    return x, note


def _default_measure(model: nn.Module, given: Any) -> bool:
    """``measure=``: what was given, or by default True except for a causal LM of a known family (counts only:
    its file sizes and a dense copy for latency cost seconds and a model's worth of memory)."""
    if given is not None:
        return bool(given)
    from prunekit.calibration.families import has_family

    return not has_family(model)


def _forward_only(named: Method, m: Method) -> bool:
    """Does the masking composition need one forward pass only (e.g. bn-scale finds its normalisation layers
    by running the model), so that example_inputs can stand in for calibration data?"""
    if not isinstance(named, ScoreMethod) or m is not named:
        return False
    from prunekit.apply.scores import FORWARD_ONLY_STATS
    from prunekit.criteria import resolve_criterion

    needs = resolve_criterion(named.criterion).needs
    return bool(needs) and needs <= FORWARD_ONLY_STATS


def _unused_calibration_note(named: Method) -> list[str]:
    """A note when calibration= was passed to a data-free criterion (not refused: comparison loops pass the
    same data to every method)."""
    if not isinstance(named, ScoreMethod):
        return []
    from prunekit.criteria import resolve_criterion

    crit = resolve_criterion(named.criterion)
    if crit.needs_data:
        return []
    return [f"calibration was not used: criterion {crit.name!r} is data-free"]


_UNPRUNABLE_WHY = {
    nn.MultiheadAttention: "nn.MultiheadAttention's packed projection is not a prunable layer type",
    nn.LSTM: "nn.LSTM is not a prunable layer type for masks (pattern 'physical-channel' shrinks its hidden units)",
    nn.GRU: "nn.GRU is not a prunable layer type for masks",
    nn.RNN: "nn.RNN is not a prunable layer type for masks",
}


def _unprunable_notes(model: nn.Module, ignored_names: list[str]) -> list[str]:
    """Notes naming the weight matrices (2-D or more) the masking method could not prune because their layer
    type is not a prunable one (nn.LSTM, nn.MultiheadAttention's in_proj_weight, ...), with their share of all
    weight matrices. Embeddings, ignored modules and parametrization internals are left out."""
    from torch.nn.utils import parametrize

    from prunekit.layout import is_prunable

    seen: set[int] = set()
    total = 0
    found: list[tuple[str, list[str], int, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList):
            continue
        pruned_here = is_prunable(module)
        skip = (
            pruned_here
            or isinstance(module, (nn.Embedding, nn.EmbeddingBag))
            or any(name == i or name.startswith(i + ".") for i in ignored_names if i)
            or (not name and "" in ignored_names)
        )
        params, size = [], 0
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen or p.dim() < 2 or "weight" not in pname:  # tokens, position tables: not weights
                continue
            seen.add(id(p))
            total += p.numel()
            if not skip:
                params.append(f"{name}.{pname}" if name else pname)
                size += p.numel()
        if pruned_here and parametrize.is_parametrized(module):  # a masked weight lives in its parametrization
            for p in module.parametrizations.parameters():
                if id(p) not in seen and p.dim() >= 2:
                    seen.add(id(p))
                    total += p.numel()
        if params:
            found.append((name, params, size, module))
    by_why: dict[str, tuple[list[str], int]] = {}  # one note per reason (a 12-block ViT: one note, not 12)
    for _name, params, size, module in found:
        why = next(
            (w for t, w in _UNPRUNABLE_WHY.items() if isinstance(module, t)),
            f"{type(module).__name__} is not a prunable layer type (Linear, Conv, transformers' Conv1D)",
        )
        names, n = by_why.get(why, ([], 0))
        by_why[why] = (names + params, n + size)
    notes = []
    for why, (names, n) in by_why.items():
        listed = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        notes.append(f"not pruned: {listed} ({n / max(total, 1):.0%} of weights): {why}")
    return notes


def _from_pruner(
    pruner: Pruner, sparsity: float, pattern: Any, allocation: Any, ignore: Ignore, options: dict[str, Any]
) -> tuple[Any, Any, Ignore]:
    """Fill prune()'s arguments from a :class:`Pruner`; an argument given both ways must agree
    (:class:`ConfigError` otherwise). Edits ``options`` in place (seed, prune_classifier, skip_incompatible)."""

    def clash(what: str, here: Any, there: Any) -> ConfigError:
        return ConfigError(f"the Pruner has {what} {there}, prune() was given {here}: pass it in one place")

    if pattern is not None and "granularity" in pruner.given and parse_pattern(pattern) != pruner.granularity:
        raise clash("granularity", parse_pattern(pattern), pruner.granularity)
    if allocation is not None and "allocation" in pruner.given and resolve_allocation(allocation) != pruner.allocation:
        raise clash("allocation", resolve_allocation(allocation), pruner.allocation)
    if pruner.sparsity is not None and not math.isclose(pruner.sparsity, sparsity, abs_tol=1e-12):
        raise clash("sparsity", sparsity, pruner.sparsity)
    if pruner.ignore is not None:
        if ignore is not None and ignore is not pruner.ignore and ignore != pruner.ignore:
            raise clash("ignore", ignore, pruner.ignore)
        ignore = pruner.ignore
    for key, value, default in (
        ("seed", pruner.seed, 0),
        ("prune_classifier", pruner.prune_classifier, False),
        ("skip_incompatible", pruner.skip_incompatible, False),
    ):
        if value != default:
            if key in options and options[key] != value:
                raise clash(key, options[key], value)
            options[key] = value
    return (
        pattern if pattern is not None else pruner.granularity,
        allocation if allocation is not None else pruner.allocation,
        ignore,
    )


def _check_structural_pattern(m: Method, gran: Any) -> None:
    """A structural method removes one kind of unit; a pattern asking for another is refused."""
    check = getattr(m, "check_pattern", None)
    if check is not None:  # the method says what it removes and which masking method gives that pattern
        check(gran)
        return
    kind = getattr(m, "kind", None)
    if kind is None or isinstance(gran, Unstructured) or (gran.physical and gran.level == kind):
        return
    raise PatternError(
        f"method {m.name!r} removes {kind} units physically; it cannot honour pattern {gran}. Leave pattern unset, "
        f"or use prunekit.Pruner(criterion=..., granularity={gran!s}) for that pattern"
    )


def _dense_copy(model: nn.Module) -> tuple[nn.Module | None, str | None]:
    """A copy of the model before pruning, to time it interleaved with the pruned one (None and a note when
    the model is too large or cannot be copied)."""
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > INTERLEAVED_TIMING_MAX_BYTES:
        return None, (
            f"latency: the model ({size / 2**30:.1f} GiB) is too large to copy, so only the pruned model was timed"
        )
    try:
        return copy.deepcopy(model), None
    except Exception as e:  # a model holding something that cannot be copied
        return None, (
            f"latency: the dense model could not be copied ({type(e).__name__}), so only the pruned one was timed"
        )
