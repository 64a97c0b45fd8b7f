"""Deploy pruned models where they run faster: ONNX Runtime, OpenVINO (int8, sparse weights), and sparse
kernels inside PyTorch.

* :func:`export_onnx` / :func:`load_onnx`: torch's ONNX exporter, checked in ONNX Runtime.
"""

from prunekit.deploy.errors import (
    DeviceError,
    ExportCheckError,
    ExportFailedError,
    RuntimeMissingError,
    UnsupportedRuntimeOptionError,
)
from prunekit.deploy.onnx import OrtModule, export_onnx, load_onnx
from prunekit.deploy.report import DeployReport

__all__ = [
    "DeployReport",
    "DeviceError",
    "ExportCheckError",
    "ExportFailedError",
    "OrtModule",
    "RuntimeMissingError",
    "UnsupportedRuntimeOptionError",
    "export_onnx",
    "load_onnx",
]
