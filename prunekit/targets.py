"""Which parameters are pruned: selection, ignore lists and default ignores."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError, NonFiniteWeightsError, NothingToPruneError
from prunekit.layout import WeightLayout, is_prunable, parametrization_list, weight_layout

__all__ = [
    "Ignore",
    "Selection",
    "Target",
    "all_finite",
    "check_finite",
    "check_untied",
    "ignored_modules",
    "select_targets",
    "state_prefixes",
    "tied_outside",
]

# the torch layer types prunekit prunes; transformers' Conv1D is recognised too (see prunekit.layout)
PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

Ignore = Iterable[nn.Module | str] | Callable[[nn.Module, str], bool] | nn.Module | str | None


@dataclass
class Target:
    """A parameter selected for pruning: ``module.<param>``, ``name`` being the module's qualified name."""

    name: str
    module: nn.Module
    param: str = "weight"

    @property
    def weight(self) -> torch.Tensor:
        """The selected parameter, ``module.<param>``, as stored (a parametrized weight is the masked one)."""
        weight: torch.Tensor = getattr(self.module, self.param)
        return weight

    @property
    def layout(self) -> WeightLayout:
        """Which axes of the weight are its outputs and inputs (see :mod:`prunekit.layout`)."""
        layout = weight_layout(self.module)
        return layout if layout is not None else WeightLayout("linear", 0, 1)

    @property
    def key(self) -> str:
        """``"<module name>.<param>"`` (``"weight"`` for the model itself): the parameter's state-dict key."""
        return f"{self.name}.{self.param}" if self.name else self.param


@dataclass
class Selection:
    """What :func:`select_targets` chose: the ``targets`` to prune, in module order, and the ``ignored``
    prunable layers as ``(module name, reason)`` pairs (ignored by the user, final classifier, shared weight)."""

    targets: list[Target]
    ignored: list[tuple[str, str]]  # (module name, reason)


def _weight_identity(module: nn.Module) -> tuple[int, ...]:
    """What identifies the stored tensors of ``module.weight``: shared weights have the same identity.
    A parametrized weight is computed from one or more originals (``original``, or ``original0``,
    ``original1``, ... under weight_norm); those are what two modules share."""
    if parametrize.is_parametrized(module, "weight"):
        plist = parametrization_list(module, "weight")
        return tuple(id(t) for name, t in plist.named_parameters(recurse=False) if name.startswith("original")) or (
            id(plist),
        )
    return (id(module.weight),)


def _classifier_name(model: nn.Module) -> str | None:
    """The final classifier: the last prunable module in registration order (``fc``, ``classifier.6``,
    ``lm_head``). It is kept dense by default, as in most of the literature."""
    last = None
    for name, module in model.named_modules():
        if is_prunable(module):
            last = name
    return last


def _ignore_items(ignore: Ignore) -> list[Any]:
    """The modules and names of an ``ignore=`` that is not a filter function."""
    if isinstance(ignore, (nn.Module, str)):
        return [ignore]
    try:
        return list(ignore)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            f"ignore= takes modules, module names (a list of them) or a filter_fn(module, name); got {ignore!r}"
        ) from None


def _matcher(ignore: Ignore) -> Callable[[nn.Module, str], bool]:
    if ignore is None:
        return lambda m, n: False
    if callable(ignore) and not isinstance(ignore, nn.Module):
        return ignore
    items = _ignore_items(ignore)
    modules = {id(i) for i in items if isinstance(i, nn.Module)}
    names = [i for i in items if isinstance(i, str)]
    bad = [i for i in items if not isinstance(i, (nn.Module, str))]
    if bad:
        raise ConfigError(f"ignore= takes modules, module names or a filter_fn(module, name); got {bad[0]!r}")

    def match(module: nn.Module, name: str) -> bool:
        if id(module) in modules:
            return True
        # a name matches the module itself and everything below it ("layer1" ignores layer1.0.conv1)
        return any(name == n or name.startswith(n + ".") or name + ".weight" == n for n in names)

    return match


def ignored_modules(model: nn.Module, ignore: Ignore = None) -> list[str]:
    """The outermost modules of any type that ``ignore`` matches (a recurrent layer, a whole block): methods
    that trace the model treat them as opaque, so nothing inside them changes."""
    match = _matcher(ignore)
    out: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(o + ".") for o in out) or (not name and out):
            continue
        if match(module, name):
            out.append(name)
    return out


def select_targets(model: nn.Module, ignore: Ignore = None, *, prune_classifier: bool = False) -> Selection:
    """Every Linear / Conv weight of ``model`` that is not ignored, shared weights counted once.

    ``ignore``: modules, module names (a name also covers everything below it) or a
    ``filter_fn(module, name) -> bool``; the final classifier is left out unless ``prune_classifier``.
    Module names given in ``ignore`` that match nothing raise :class:`~prunekit.errors.ConfigError`, so a
    typo cannot silently prune a layer that was meant to stay dense; so does a module that is not the
    model's own. Raises :class:`~prunekit.errors.NothingToPruneError` when no layer is left.
    """
    match = _matcher(ignore)
    classifier = None if prune_classifier else _classifier_name(model)
    seen: set[tuple[int, ...]] = set()
    targets: list[Target] = []
    ignored: list[tuple[str, str]] = []
    all_names = set()
    for name, module in model.named_modules():
        all_names.add(name)
        if not is_prunable(module) or getattr(module, "weight", None) is None:
            continue
        if match(module, name):
            ignored.append((name, "ignored by the user"))
            continue
        if module.weight.numel() == 0:
            ignored.append((name, f"empty weight {tuple(module.weight.shape)}: nothing to prune"))
            continue
        if name == classifier:
            ignored.append((name, "final classifier, kept dense by default (prune_classifier=True prunes it)"))
            continue
        key = _weight_identity(module)
        if key in seen:
            ignored.append((name, "shares its weight with a layer already selected"))
            continue
        seen.add(key)
        targets.append(Target(name, module))
    if ignore is not None and (not callable(ignore) or isinstance(ignore, nn.Module)):
        items = _ignore_items(ignore)
        own = {id(m) for m in model.modules()}
        if any(isinstance(i, nn.Module) and id(i) not in own for i in items):
            raise ConfigError(
                "ignore= holds a module that is not a module of the model (one of a copy, or of another model); "
                "pass the model's own module or its name, e.g. ignore=['fc']"
            )
        unknown = [
            n
            for n in items
            if isinstance(n, str) and not any(a == n or a.startswith(n + ".") or a + ".weight" == n for a in all_names)
        ]
        if unknown:
            raise ConfigError(f"ignore= names no module of the model: {', '.join(map(repr, unknown))}")
    if not targets:
        why = "; ".join(f"{n or '(model)'}: {r}" for n, r in ignored[:4]) + (" ..." if len(ignored) > 4 else "")
        hints = [
            h
            for h, r in (
                ("check ignore=", "ignored by the user"),
                ("pass prune_classifier=True for a one-layer model", "final classifier"),
            )
            if any(x.startswith(r) for _, x in ignored)
        ]
        raise NothingToPruneError(
            "nothing to prune: the model has no Linear or Conv weight left to prune"
            + (f" ({why})" if ignored else "")
            + (f"; {' or '.join(hints)}" if hints else "")
        )
    return Selection(targets, ignored)


def all_finite(t: torch.Tensor) -> bool:
    """Are all values finite? A finite sum proves it (a NaN or inf element makes the sum NaN or inf) at the
    cost of one reduction; only a non-finite sum (a bad value, or an overflow) needs the elementwise test."""
    t = t.detach()
    if not (t.is_floating_point() or t.is_complex()) or t.numel() == 0 or t.device.type == "meta":
        return True  # integers and bools are finite; a meta tensor holds no values
    if t.element_size() == 1:  # 8-bit floats: no sum kernel; checked as float16 (every fp8 value fits)
        t = t.to(torch.float16)
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_finite(targets: Iterable[Target]) -> None:
    """Refuse NaN / inf weights: every score computed from them would be meaningless.

    Raises :class:`~prunekit.errors.NonFiniteWeightsError` naming the layers that hold one.
    """
    bad = [t.name for t in targets if not all_finite(t.weight)]
    if bad:
        raise NonFiniteWeightsError(
            f"{len(bad)} layer(s) hold NaN or infinite weights: {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Fix or reload the weights before pruning."
        )


def state_prefixes(model: nn.Module, modules: Iterable[nn.Module]) -> tuple[str, ...]:
    """The state-dict key prefixes (``"model.layers.0.mlp.up_proj."``) of ``modules``, submodules of ``model``
    (``""`` for ``model`` itself, which matches every key); ``str.startswith`` takes the tuple."""
    wanted = {id(m) for m in modules}
    return tuple(f"{name}." if name else "" for name, m in model.named_modules() if id(m) in wanted)


def _storage_owners(model: nn.Module) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """For each storage of ``model``'s parameters and buffers (by device and data pointer: pointers on two
    devices may be equal; meta and empty tensors left out): who holds it, as ``(id(module), qualified name)``
    for every path to it (a module reused under two names is listed under both)."""
    owners: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for mname, module in model.named_modules(remove_duplicate=False):
        for table in (module._parameters, module._buffers):
            for tname, t in table.items():
                if t is None or t.device.type == "meta":
                    continue
                ptr = t.untyped_storage().data_ptr()
                if ptr:
                    owners.setdefault((str(t.device), ptr), []).append(
                        (id(module), f"{mname}.{tname}" if mname else tname)
                    )
    return owners


def tied_outside(model: nn.Module, modules: Iterable[nn.Module]) -> list[tuple[str, str]]:
    """Tensors of ``modules`` (submodules of ``model``, with everything under them) that share storage with a
    tensor of ``model`` outside them, as ``(name inside, name outside)`` pairs: tied weights, such as a
    language model's head and its input embedding. Writing one writes the other."""
    return _tied(_storage_owners(model), modules)


def _tied(owners: dict[tuple[str, int], list[tuple[int, str]]], modules: Iterable[nn.Module]) -> list[tuple[str, str]]:
    inside = {id(m) for module in modules for m in module.modules()}
    pairs = []
    for holders in owners.values():
        ins = [name for owner, name in holders if owner in inside]
        outs = [name for owner, name in holders if owner not in inside]
        if ins and outs:
            pairs.append((ins[0], outs[0]))
    return pairs


def check_untied(model: nn.Module, targets: Iterable[Target]) -> None:
    """Refuse to mask a target whose weight is tied to a tensor outside it: the mask would act on the target
    alone until it is squashed, and then on both. Raises :class:`~prunekit.errors.ConfigError` naming the two
    tensors and how to untie them or leave the target out."""
    owners = _storage_owners(model)
    for t in targets:
        pairs = _tied(owners, [t.module])
        if pairs:
            inside, outside = pairs[0]
            raise ConfigError(
                f"{inside} is the same tensor as {outside} (tied weights): a mask on {t.name} would prune "
                f"{outside} too once the masks are squashed, and change the model's outputs. Leave {t.name} out "
                f"(ignore=[{t.name!r}], or prune_classifier=False for a classifier), or untie the two first (give "
                f"{t.name} its own copy: module.weight = nn.Parameter(module.weight.detach().clone()), and set "
                "config.tie_word_embeddings = False on a Hugging Face model)"
            )
