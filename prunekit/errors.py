"""One exception tree for prunekit.

Every error says what was wrong and what to do about it. Catch :class:`PrunekitError` to catch them all;
the subclasses also derive from the matching built-in (``ValueError``, ``KeyError``-like lookups stay
``ValueError`` so that messages are printed verbatim).
"""

from __future__ import annotations

from collections.abc import Iterable


class PrunekitError(Exception):
    """Base class of every error raised by prunekit."""


class ConfigError(PrunekitError, ValueError):
    """A setting passed by the user is invalid (sparsity, pattern, option values)."""


class InvalidSparsityError(ConfigError):
    """A sparsity outside [0, 1) or one that contradicts the chosen pattern."""


class UnknownNameError(ConfigError):
    """A name that no registry knows (method, criterion, allocation, pattern, data source, ...)."""

    def __init__(self, kind: str, name: object, valid: Iterable[str]):
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        super().__init__(
            f"unknown {kind} {name!r}; valid {kind} names are: {', '.join(self.valid) or '(none registered)'}"
        )


class PatternError(ConfigError):
    """A sparsity pattern (granularity) that cannot be applied to a layer, e.g. N:M on a dim not divisible by M."""


class ModelError(PrunekitError, ValueError):
    """Something about the model prevents pruning it."""


class NonFiniteWeightsError(ModelError):
    """A weight tensor holds NaN or infinite values."""


class NothingToPruneError(ModelError):
    """No parameter of the model is selected for pruning."""


class UnsupportedModuleError(ModelError):
    """A module or operation that prunekit cannot handle (yet)."""


class DataError(PrunekitError, ValueError):
    """Data needed by a method is missing, empty or malformed."""


class MissingDataError(DataError):
    """A data-driven method (gradient criteria, calibration) was called without data."""


class PlanError(PrunekitError, ValueError):
    """A pruning plan does not fit the model it is applied to, or its file is invalid."""


class CheckpointError(PrunekitError, ValueError):
    """A saved model or export is missing, corrupt, or of an unknown format."""


class SourceMissingError(PrunekitError, RuntimeError):
    """An offline data or model source is not installed; the message names the command that installs it."""


__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "InvalidSparsityError",
    "MissingDataError",
    "ModelError",
    "NonFiniteWeightsError",
    "NothingToPruneError",
    "PatternError",
    "PlanError",
    "PrunekitError",
    "SourceMissingError",
    "UnknownNameError",
    "UnsupportedModuleError",
    "inputs_failure",
]


def inputs_failure(e: BaseException, inputs: object) -> DataError:
    """The :class:`DataError` for a model that raised ``e`` on ``example_inputs`` ``inputs`` before anything
    changed: the inputs' shape, the failure's first line, and what to do, which depends on the failure (memory:
    a smaller batch; otherwise the inputs' shape, dtype and device)."""
    first = str(e).splitlines()[0] if str(e) else ""
    shape = getattr(inputs, "shape", None)
    what = f"{tuple(shape)} " if shape is not None else ""
    memory = isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "out of memory" in first.lower()
    todo = (
        "it ran out of memory: pass a smaller batch"
        if memory
        else "check their shape, dtype and device: pass a batch the model accepts (token ids, a LongTensor "
        "[batch, seq_len], for a language model)"
    )
    return DataError(f"the model does not run on example_inputs {what}({type(e).__name__}: {first}); {todo}")
