"""Errors of the deploy package: each a :class:`prunekit.errors.PrunekitError` with advice."""

from __future__ import annotations

from types import ModuleType

from prunekit.errors import ConfigError, ModelError, PrunekitError, SourceMissingError


class RuntimeMissingError(SourceMissingError):
    """An optional runtime (onnx, onnxruntime, openvino, nncf) is not installed; the message names the pip command."""


class ExportCheckError(ModelError):
    """The exported model does not compute what the PyTorch model computes (outputs differ beyond the tolerance)."""


class ExportFailedError(ModelError):
    """The exporter could not trace or convert the model; the message carries the exporter's reason."""


class UnsupportedRuntimeOptionError(ConfigError):
    """An option the chosen runtime cannot honour (a quantisation mode, a precision, a device)."""


class DeviceError(PrunekitError, RuntimeError):
    """The operation needs a device (a CUDA GPU) that is not present."""


def require(module: str, *, package: str | None = None) -> ModuleType:
    """Import and return the optional module ``module``; a missing one raises :class:`RuntimeMissingError`
    naming ``pip install 'prunekit[deploy]'`` and the package itself."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise RuntimeMissingError(
            f"{module} is not installed ({e}); install the deploy runtimes with pip install 'prunekit[deploy]' "
            f"(or pip install {package or module})"
        ) from None


__all__ = [
    "DeviceError",
    "ExportCheckError",
    "ExportFailedError",
    "RuntimeMissingError",
    "UnsupportedRuntimeOptionError",
    "require",
]
