"""Calling a model on example inputs given in any of the usual forms, in eval mode for a while, and on a device
this machine has (a bottom module: imports only torch and prunekit's errors)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["call_model", "check_device", "eval_mode", "restore_modes", "training_modes"]


def training_modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Every submodule of ``model`` (itself included) with its ``training`` flag, to :func:`restore_modes`."""
    return [(m, m.training) for m in model.modules()]


def restore_modes(modes: list[tuple[nn.Module, bool]]) -> None:
    """Give every module of :func:`training_modes` its own flag back (``model.train(flag)`` would set one flag
    on every submodule: a frozen BatchNorm or dropout kept in eval mode inside a training model would switch)."""
    for module, flag in modes:
        module.training = flag


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model): ...`` runs the block with every module in eval mode and gives each module its
    own train/eval flag back afterwards, also when the block raises."""
    modes = training_modes(model)
    model.eval()
    try:
        yield model
    finally:
        restore_modes(modes)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """Run ``model`` on example inputs given as one tensor, a tuple/list of positional inputs or a dict of
    keyword inputs (a tokenizer's ``BatchEncoding`` included)."""
    if isinstance(inputs, dict) or (hasattr(inputs, "keys") and hasattr(inputs, "__getitem__")):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def check_device(device: Any) -> None:
    """Refuse a ``device=`` that is not a torch device, or one this machine does not have
    (:class:`~prunekit.errors.ConfigError`), before anything runs."""
    import torch

    from prunekit.errors import ConfigError

    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(f"device={device!r} is not a torch device ({e}); pass e.g. 'cpu' or 'cuda:0'") from e
    if d.type == "meta":
        raise ConfigError("device='meta' holds no data to compute on; pass 'cpu' or an accelerator")
    if d.type == "cpu":
        return
    backend = getattr(torch, d.type, None)
    available = getattr(backend, "is_available", None)
    count = getattr(backend, "device_count", None)
    if available is None or not available():
        raise ConfigError(
            f"device={device!r}: no {d.type} device is available here; pass device='cpu', or leave device out "
            "to compute where the model is"
        )
    if d.index is not None and callable(count) and d.index >= count():
        raise ConfigError(f"device={device!r}: this machine has {count()} {d.type} device(s), numbered from 0")
