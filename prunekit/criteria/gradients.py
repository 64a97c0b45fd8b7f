"""Summed gradients of chosen weights over calibration data (the first build's gradient pass, kept for
the training-time methods; criteria read gradients through :func:`prunekit.calibration.collect`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.calls import restore_modes, training_modes
from prunekit.errors import DataError, MissingDataError

__all__ = ["accumulate_gradients"]

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

    Raises :class:`~prunekit.errors.MissingDataError` without calibration data, and
    :class:`~prunekit.errors.DataError` when a batch is not ``(inputs, targets)`` (or a dict with inputs and
    labels), the loss is not a finite scalar, or there is no batch.
    """
    if calibration is None:
        raise MissingDataError(
            "this criterion needs gradients: pass calibration=batches (an iterable of (inputs, targets)) "
            "or calibration=loss_fn (a callable taking the model and returning a scalar loss)"
        )
    loss_fn = loss_fn or nn.functional.cross_entropy
    saved_grads = {n: (p.grad.clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    saved_req = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = training_modes(model)

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
            steps = calibration
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
        restore_modes(modes)
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
