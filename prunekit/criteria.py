"""Pruning criteria: how importance is scored.

A criterion is a pure function from a weight (and, for data-driven criteria, its accumulated gradient)
to scores shaped like the weight; higher means more important. Criteria that need data declare it, and
:func:`accumulate_gradients` computes what they need from the user's batches or loss function.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.errors import DataError, MissingDataError
from prunekit.registry import Registry


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule. ``fn(weight, grad=..., generator=...) -> scores``."""

    name: str
    fn: Callable[..., Tensor]
    needs_grad: bool = False
    description: str = ""

    def __call__(self, weight: Tensor, *, grad: Tensor | None = None, seed: int = 0, key: str = "") -> Tensor:
        if self.needs_grad and grad is None:
            raise MissingDataError(
                f"criterion {self.name!r} scores weights by their gradient: pass calibration=batches "
                "(an iterable of (inputs, targets)) or calibration=loss_fn (a callable model -> scalar loss)"
            )
        return self.fn(weight.detach(), grad=grad, generator=_generator(seed, key))


CRITERIA: Registry[Criterion] = Registry("criterion")


def criterion(name: str, description: str, *, needs_grad: bool = False, aliases: tuple[str, ...] = ()):
    """Register a scoring function as a :class:`Criterion` under ``name``."""

    def deco(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        CRITERIA.add(name, Criterion(name, fn, needs_grad, description), description, aliases=aliases)
        return fn

    return deco


def _generator(seed: int, key: str) -> torch.Generator:
    # one independent, reproducible stream per (seed, layer name)
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


@criterion("magnitude", "|w|: weight magnitude, L1 (Han et al. 2015)", aliases=("l1",))
def magnitude(weight: Tensor, **_: Any) -> Tensor:
    """Score ``|w|``. Summed over a unit it is the unit's L1 norm (Han et al. 2015; Li et al. 2017)."""
    return weight.abs()


@criterion("l2", "|w|^2: summed over a unit, ranks units by their L2 norm")
def l2(weight: Tensor, **_: Any) -> Tensor:
    """Score ``w**2``; element ranking equals magnitude, unit ranking equals the unit's L2 norm."""
    return weight.pow(2)


def lp(p: float) -> Criterion:
    """A criterion scoring ``|w|**p`` (units rank by their Lp norm), for any p > 0."""
    if p <= 0:
        raise DataError(f"Lp criterion needs p > 0, got {p}")
    return Criterion(f"l{p:g}", lambda weight, **_: weight.abs().pow(p), False, f"|w|^{p:g}")


@criterion("random", "uniform random scores, seeded per layer (the baseline every method must beat)")
def random(weight: Tensor, *, generator: torch.Generator, **_: Any) -> Tensor:
    """Uniform random scores from a generator seeded by (seed, layer name): reproducible."""
    return torch.rand(weight.shape, generator=generator, dtype=torch.float32).to(weight.device)


@criterion(
    "grad-weight",
    "|g * w|: connection sensitivity (SNIP, Lee et al. 2019) / first-order Taylor (Molchanov et al. 2019)",
    needs_grad=True,
    aliases=("snip", "taylor"),
)
def grad_weight(weight: Tensor, *, grad: Tensor, **_: Any) -> Tensor:
    """Score ``|g * w|``, the first-order estimate of the loss change when ``w`` is set to zero.

    SNIP (Lee et al. 2019, "SNIP: Single-shot Network Pruning based on Connection Sensitivity") normalises
    these saliencies, which does not change their ranking.
    """
    return (grad * weight).abs()


@criterion("lamp", "LAMP score w_u^2 / sum_{v>=u} w_v^2 within a layer (Lee et al. 2021)")
def lamp(weight: Tensor, **_: Any) -> Tensor:
    """Layer-adaptive magnitude score (Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning").

    With a layer's weights sorted by magnitude, ``score(u) = w_u^2 / sum_{v >= u} w_v^2``. Within a layer it
    ranks like magnitude; across layers one global threshold on it gives LAMP's layer-wise sparsities.
    """
    return lamp_scores(weight.pow(2).reshape(-1)).reshape(weight.shape)


def lamp_scores(squared: Tensor) -> Tensor:
    """LAMP scores of a 1-D tensor of squared magnitudes (or unit scores), same order as the input."""
    flat = squared.double()
    order = torch.argsort(flat, stable=True)
    sorted_vals = flat[order]
    # suffix sums: sum over v >= u in ascending order
    suffix = torch.flip(torch.cumsum(torch.flip(sorted_vals, [0]), 0), [0])
    scores_sorted = torch.where(suffix > 0, sorted_vals / suffix, torch.zeros_like(sorted_vals))
    out = torch.empty_like(flat)
    out[order] = scores_sorted
    return out.to(squared.dtype)


Batches = Iterable[Any]
LossFn = Callable[[nn.Module], Tensor]


def accumulate_gradients(
    model: nn.Module,
    params: dict[str, Tensor | tuple[nn.Module, str]],
    calibration: Batches | LossFn | None,
    *,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    max_batches: int | None = None,
) -> dict[str, Tensor]:
    """Sum of d loss / d w over the calibration data, for each named parameter in ``params``.

    An entry of ``params`` is a tensor the model uses (a leaf parameter) or a pair ``(module, name)``:
    the gradient with respect to ``module.<name>`` as the model computes it, through any parametrization
    (a mask, ``weight_norm``), shaped like that weight.

    ``calibration`` is either a callable ``model -> scalar loss`` (called once) or an iterable of batches
    ``(inputs, targets)``; the loss is ``loss_fn(outputs, targets)``, cross entropy by default. The model
    runs in eval mode (no dropout, no change to BatchNorm statistics) and every ``.grad`` it had before is
    restored afterwards, so scoring leaves the model exactly as it was.
    """
    if calibration is None:
        raise MissingDataError(
            "this criterion needs gradients: pass calibration=batches (an iterable of (inputs, targets)) "
            "or calibration=loss_fn (a callable taking the model and returning a scalar loss)"
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    saved_grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    saved_req = {n: p.requires_grad for n, p in model.named_parameters()}
    was_training = model.training
    def current(entry: Tensor | tuple[nn.Module, str]) -> Tensor:
        return getattr(entry[0], entry[1]) if isinstance(entry, tuple) else entry

    with torch.no_grad():
        sums = {name: torch.zeros_like(current(t)) for name, t in params.items()}
    batches = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(True)
        if callable(calibration) and not hasattr(calibration, "__iter__"):
            steps: Iterable[Any] = [None]
        else:
            steps = calibration  # type: ignore[assignment]
        for batch in steps:
            if max_batches is not None and batches >= max_batches:
                break
            model.zero_grad(set_to_none=True)
            # computed weights are computed once per step and cached, so their gradient can be read
            with parametrize.cached():
                weights = {name: current(t) for name, t in params.items()}
                for w in weights.values():
                    if w.requires_grad and not w.is_leaf:
                        w.retain_grad()
                if batch is None:
                    loss = calibration(model)  # type: ignore[operator]
                else:
                    inputs, targets = _split_batch(batch)
                    loss = loss_fn(model(inputs), targets)
                if not torch.is_tensor(loss) or loss.numel() != 1:
                    raise DataError("the loss must be a scalar tensor")
                if not torch.isfinite(loss):
                    raise DataError(f"the calibration loss is not finite ({loss.item()}); check the data and model")
                loss.backward()
            for name, w in weights.items():
                if w.grad is not None:
                    sums[name] += w.grad.detach()
            batches += 1
    finally:
        model.train(was_training)
        for n, p in model.named_parameters():
            p.requires_grad_(saved_req[n])
            p.grad = saved_grads[n]
    if batches == 0:
        raise DataError("the calibration data is empty: pass at least one batch")
    return sums


def _split_batch(batch: Any) -> tuple[Any, Any]:
    if isinstance(batch, dict):
        for k in ("labels", "targets", "target", "y"):
            if k in batch:
                return batch.get("inputs", batch.get("x", batch.get("input"))), batch[k]
        raise DataError("a dict batch needs 'inputs' and 'targets' keys")
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise DataError(
        f"a calibration batch must be (inputs, targets); got {type(batch).__name__}. "
        "For another form, pass calibration=loss_fn (a callable model -> scalar loss)"
    )
