"""Deploy pruned models where they run faster: ONNX Runtime, OpenVINO (int8, sparse weights), and sparse
kernels inside PyTorch.

* :func:`export_onnx` / :func:`load_onnx`: torch's ONNX exporter, checked in ONNX Runtime.
* :func:`export_openvino` / :func:`load_openvino`: OpenVINO IR, fp32 or NNCF int8, precision set explicitly,
  sparse int8 kernels where the sparsity pays; causal LMs with their key/value cache, run greedily by
  :class:`OpenVINOCausalLM`.
* :func:`sparsify_` / :func:`densify_`: CSR / BSR kernels per layer where a timing probe shows a gain.
* :func:`semi_structured_`: 2:4 sparse Linear layers on NVIDIA GPUs.
* :func:`compare_outputs`: the check every export runs (tolerances, max and relative error).
* :class:`Recipe`: prune -> fine-tune -> quantise -> export from a YAML file (``prunekit run``).
"""

from prunekit.deploy._common import compare_outputs, report_path_of
from prunekit.deploy.errors import (
    DeviceError,
    ExportCheckError,
    ExportFailedError,
    RuntimeMissingError,
    UnsupportedRuntimeOptionError,
)
from prunekit.deploy.onnx import OrtModule, export_onnx, load_onnx
from prunekit.deploy.openvino import OvModule, export_openvino, load_openvino
from prunekit.deploy.openvino_lm import OpenVINOCausalLM
from prunekit.deploy.recipe import ExportStage, FineTuneStage, PruneStage, QuantizeStage, Recipe, RecipeResult
from prunekit.deploy.report import DeployReport
from prunekit.deploy.sparse import (
    LayerDecision,
    SparseConv1x1,
    SparseExecution,
    SparseLinear,
    SparsifyReport,
    densify_,
    semi_structured_,
    sparsify_,
)

__all__ = [
    "DeployReport",
    "DeviceError",
    "ExportCheckError",
    "ExportFailedError",
    "ExportStage",
    "FineTuneStage",
    "LayerDecision",
    "OpenVINOCausalLM",
    "OrtModule",
    "OvModule",
    "PruneStage",
    "QuantizeStage",
    "Recipe",
    "RecipeResult",
    "RuntimeMissingError",
    "SparseConv1x1",
    "SparseExecution",
    "SparseLinear",
    "SparsifyReport",
    "UnsupportedRuntimeOptionError",
    "compare_outputs",
    "densify_",
    "export_onnx",
    "export_openvino",
    "load_onnx",
    "load_openvino",
    "report_path_of",
    "semi_structured_",
    "sparsify_",
]
