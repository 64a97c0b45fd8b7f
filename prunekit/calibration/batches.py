"""One calibration adapter: every data-driven part reads calibration data through :class:`Calibration`.

Accepted forms (``calibration=`` of :func:`prunekit.prune`, :class:`prunekit.Pruner` and the solvers):

==============================  ==========================================  ===============================
form                            forward pass (activation statistics)        loss (gradient statistics)
==============================  ==========================================  ===============================
a tensor ``x``                  ``model(x)``: one batch                     token ids ``[B, T]`` and logits
                                                                            ``[B, T, V]``: next-token cross
                                                                            entropy; otherwise refused
``(inputs, targets)``           ``model(inputs)``                           ``loss_fn(out, targets)``, cross
                                                                            entropy by default (shifted by
                                                                            one for ``[B, T]`` token targets)
a dict / ``BatchEncoding``      ``model(**batch)``                          ``out.loss`` (labels given) or
                                                                            next-token cross entropy of
                                                                            ``input_ids``
an iterable of the above        each batch in turn (``max_batches`` cap)    the sum over batches
(list, ``DataLoader``,
``CalibrationSet``)
a callable ``model -> loss``    the callable, without gradients             the callable, once
==============================  ==========================================  ===============================

A tuple of three or more tensors is one batch of positional inputs (``model(*batch)``, no targets).
Positions where a dict batch's ``attention_mask`` is 0 (padding) enter no statistic and no loss:
:meth:`Calibration.forward` publishes the current batch's token mask through :func:`current_token_mask`
so that activation hooks drop those rows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import DataError, MissingDataError, PrunekitError
from prunekit.padding import IGNORE_INDEX, mask_padding_labels, token_mask

__all__ = ["FORMS", "Calibration", "current_token_mask", "next_token_loss", "output_logits"]

FORMS = (
    "a tensor batch, (inputs, targets) pairs, dicts of model inputs (a tokenizer's BatchEncoding), an iterable "
    "of those (a list, a DataLoader, a CalibrationSet), or a callable model -> scalar loss"
)

_TOKENS: list[Tensor | None] = [None]


def current_token_mask() -> Tensor | None:
    """The [batch, seq_len] real-token mask of the batch being run (None: every position is data)."""
    return _TOKENS[0]


@contextlib.contextmanager
def _publish(mask: Tensor | None) -> Iterator[None]:
    old = _TOKENS[0]
    _TOKENS[0] = mask
    try:
        yield
    finally:
        _TOKENS[0] = old


def _is_loss_callable(value: Any) -> bool:
    return callable(value) and not isinstance(value, (Tensor, Mapping, list, tuple)) and not hasattr(value, "__iter__")


def _call(model: nn.Module, inputs: Any) -> Any:
    """The model on one calibration batch's inputs; inputs it cannot run on raise :class:`DataError`."""
    try:
        if isinstance(inputs, Mapping):
            return model(**inputs)
        if isinstance(inputs, tuple):
            return model(*inputs)
        return model(inputs)
    except PrunekitError:
        raise
    except (RuntimeError, TypeError, ValueError, IndexError, AssertionError) as e:  # (assert: a model's input check)
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        first = str(e).splitlines()[0] if str(e) else ""
        raise DataError(
            f"the model does not run on a calibration batch's inputs {shape} ({type(e).__name__}: {first}); "
            "pass batches whose inputs the model accepts (the same form as example_inputs)"
        ) from e


def output_logits(out: Any) -> Tensor:
    """The logits in a model's output: ``out.logits`` (Hugging Face outputs), the first item of a tuple or
    list, or the tensor itself. Raises :class:`~prunekit.errors.DataError` when there is no tensor there."""
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if not isinstance(logits, Tensor):
        raise DataError(f"the model returned {type(out).__name__}, not logits; pass calibration=a loss callable")
    return logits


def next_token_loss(logits: Tensor, ids: Tensor, mask: Tensor | None = None) -> Tensor:
    """Causal language-model loss: cross entropy of ``logits[:, t]`` [B, T, V] against ``ids[:, t + 1]``
    [B, T]; positions whose target is padding (``mask`` False) are ignored."""
    targets = ids.clone()
    if mask is not None:
        targets = targets.masked_fill(~mask.to(targets.device), IGNORE_INDEX)
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), targets[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )


def _is_token_batch(x: Any) -> TypeGuard[Tensor]:
    return isinstance(x, Tensor) and not x.is_floating_point() and not x.is_complex() and x.dim() == 2


@dataclass
class Calibration:
    """Calibration data in any accepted form (see the module docstring), read one way by every part.

    ``loss_fn(outputs, targets) -> scalar`` replaces the default loss for ``(inputs, targets)`` batches
    (and is called as ``loss_fn(outputs, batch)`` for dict batches). ``max_batches`` caps the batches read.

    Raises :class:`~prunekit.errors.MissingDataError` when there is no data and a part needs some,
    :class:`~prunekit.errors.DataError` when a batch has a form no part can read or a loss cannot be formed from it.
    """

    source: Any
    loss_fn: Callable[..., Tensor] | None = None
    max_batches: int | None = None

    @classmethod
    def of(cls, value: Any, *, loss_fn: Any = None, max_batches: int | None = None) -> Calibration:
        """Wrap ``value`` (already a :class:`Calibration` is returned as it is, with the caps given).

        Raises :class:`~prunekit.errors.MissingDataError` for None and :class:`~prunekit.errors.DataError` for
        a string or a value of no accepted form.
        """
        if isinstance(value, Calibration):
            return value
        if value is None:
            raise MissingDataError(f"this part needs calibration data: pass calibration= ({FORMS})")
        if isinstance(value, (str, bytes)):
            raise DataError(f"calibration is a string; pass tokenized batches instead ({FORMS})")
        if not (_is_loss_callable(value) or isinstance(value, (Tensor, Mapping)) or hasattr(value, "__iter__")):
            raise DataError(f"calibration of type {type(value).__name__} is not understood; pass {FORMS}")
        return cls(value, loss_fn, max_batches)

    @property
    def is_loss_callable(self) -> bool:
        """Whether the source is a callable ``model -> scalar loss`` (no batches) rather than data."""
        return _is_loss_callable(self.source)

    def batches(self) -> Iterator[Any]:
        """The batches, one at a time (a bare tensor or dict is one batch), at most ``max_batches``.

        Raises :class:`~prunekit.errors.DataError` for a loss callable (it has no batches), a string batch or
        no batch at all.
        """
        if self.is_loss_callable:
            raise DataError("calibration is a loss callable, which has no batches")
        src = self.source
        if isinstance(src, (Tensor, Mapping)) or (
            isinstance(src, tuple)
            and len(src) == 2
            and isinstance(src[0], Tensor)
            and isinstance(src[1], Tensor)
            and not _same_kind_batches(src)
        ):
            items: Any = [src]
        else:
            items = src
        n = 0
        for batch in items:
            if self.max_batches is not None and n >= self.max_batches:
                break
            if isinstance(batch, (str, bytes)):
                raise DataError(f"a calibration batch is a string; pass tokenized batches instead ({FORMS})")
            n += 1
            yield batch
        if n == 0:
            raise DataError("the calibration data is empty: pass at least one batch")

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, model: nn.Module) -> Iterator[Any]:
        """Run the model over the calibration data (the caller chooses grad mode and installs hooks); yields
        each output. A loss callable is called as it is. Padding is published to hooks while a batch runs."""
        if self.is_loss_callable:
            yield self.source(model)
            return
        for batch in self.batches():
            inputs, _, mask = self._split(batch)
            with _publish(mask):
                yield _call(model, inputs)

    # --------------------------------------------------------------------------------------------- loss
    def losses(self, model: nn.Module) -> Iterator[Tensor]:
        """One scalar loss per batch (a loss callable: one call), with the graph attached; padding enters
        none of them. Raises :class:`~prunekit.errors.DataError` for a non-scalar or non-finite loss, or when
        no loss can be formed from a batch (a tensor without targets that is not token ids, a dict without
        labels or ``input_ids``)."""
        if self.is_loss_callable:
            yield _checked(self.source(model))
            return
        for batch in self.batches():
            inputs, targets, mask = self._split(batch)
            with _publish(mask):
                out = _call(model, inputs)
            yield _checked(self._loss(out, inputs, targets, mask, batch))

    def _split(self, batch: Any) -> tuple[Any, Any, Tensor | None]:
        """(model inputs, targets or None, token mask or None)."""
        if isinstance(batch, Mapping):
            b = dict(batch)
            ids = b.get("input_ids")
            mask = token_mask(ids, b.get("attention_mask")) if isinstance(ids, Tensor) else None
            b = mask_padding_labels(b)
            return b, None, mask
        if isinstance(batch, Tensor):
            return batch, None, None
        if isinstance(batch, (tuple, list)) and len(batch) == 2:
            return batch[0], batch[1], None
        if isinstance(batch, (tuple, list)) and len(batch) == 1:
            return batch[0], None, None
        if isinstance(batch, tuple) and len(batch) > 2:  # the positional inputs of a multi-input model
            return batch, None, None
        raise DataError(f"a calibration batch of type {type(batch).__name__} is not understood; pass {FORMS}")

    def _loss(self, out: Any, inputs: Any, targets: Any, mask: Tensor | None, batch: Any) -> Tensor:
        if isinstance(inputs, Mapping):
            if self.loss_fn is not None:
                return self.loss_fn(out, inputs)
            loss = getattr(out, "loss", None)
            if isinstance(loss, Tensor):
                return loss
            ids = inputs.get("input_ids")
            if _is_token_batch(ids):
                logits = output_logits(out)
                if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(ids.shape):  # [B, T, V]: a language model
                    return next_token_loss(logits, ids, mask)
                raise DataError(
                    f"the model's outputs {tuple(logits.shape)} are not next-token logits [B, T, V] for input_ids "
                    f"{tuple(ids.shape)}, and the dict calibration batch has no labels, so no loss can be formed for a "
                    "gradient criterion: add labels to each batch (so the model returns .loss), or pass loss_fn= "
                    "(loss_fn(outputs, batch)) or calibration=a callable model -> scalar loss"
                )
            raise DataError(
                "a dict calibration batch must make the model return .loss (add labels) or hold "
                "input_ids; or pass loss_fn="
            )
        if targets is None:
            if _is_token_batch(inputs):
                logits = output_logits(out)
                if logits.dim() == 3 and tuple(logits.shape[:2]) == tuple(inputs.shape):
                    return next_token_loss(logits, inputs)
            raise DataError(
                "a tensor calibration batch has no targets, so no loss can be formed for a gradient criterion: "
                "pass (inputs, targets) pairs or calibration=a callable model -> scalar loss"
            )
        if self.loss_fn is not None:
            return self.loss_fn(out, targets)
        logits = output_logits(out)
        if (
            logits.dim() == 3
            and isinstance(targets, Tensor)
            and targets.dim() == 2
            and tuple(logits.shape[:2]) == tuple(targets.shape)
            and _is_token_batch(targets)
        ):
            return next_token_loss(logits, targets)
        try:
            return F.cross_entropy(logits.float(), targets)
        except (RuntimeError, ValueError, IndexError) as e:
            raise DataError(
                f"cross entropy of the model's outputs {tuple(logits.shape)} against the targets "
                f"{tuple(getattr(targets, 'shape', ()))} failed ({e}); pass loss_fn= or a loss callable"
            ) from None


def _same_kind_batches(pair: tuple[Tensor, Tensor]) -> bool:
    """A 2-tuple of tensors is one (inputs, targets) batch unless both are batches of the same form."""
    a, b = pair
    return a.shape == b.shape and a.dtype == b.dtype and a.is_floating_point()


def _checked(loss: Any) -> Tensor:
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise DataError("the calibration loss must be a scalar tensor")
    if not torch.isfinite(loss.detach()).all():
        raise DataError(f"the calibration loss is not finite ({loss.item()}); check the data and the model")
    return loss.reshape(())
