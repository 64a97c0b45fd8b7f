"""The OpenVINO CPU runtime as prunekit compiles and calls it: :class:`OvModule` (a compiled IR called like the
PyTorch model), :func:`runtime_config` (the plugin settings, precision stated explicitly) and the constants
that describe the CPU plugin's sparse int8 kernel and the IR's record of tied input dimensions."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from prunekit.deploy._common import INPUT_LAYOUT, RuntimeModule
from prunekit.deploy.errors import require
from prunekit.errors import DataError

__all__ = ["SPARSE_ALIGN", "SPARSE_RATE", "TIED_DIMS", "OvModule", "runtime_config"]

#: weight sparsity from which the CPU plugin's sparse int8 kernel is switched on (measured on an AMX CPU with
#: OpenVINO 2026.4: 1.1-1.7x at 70% zeros, 1.5-2.0x at 90%; nothing on weight-only int8 or fp32)
SPARSE_RATE = 0.7
#: the CPU plugin's sparse int8 kernel runs a fully connected layer only when its input size is a multiple of
#: this (measured with OpenVINO 2026.4: 768 and 832 inputs ran sparse, 784 and 800 did not)
SPARSE_ALIGN = 64
#: the IR's runtime-info key listing input dimensions that must be equal: ``[[[input, dim], ...], ...]``
TIED_DIMS = "prunekit_tied_dims"


class OvModule(RuntimeModule):
    """An OpenVINO compiled model (CPU) called like the PyTorch model, returning torch tensors."""

    def __init__(self, model_or_path: Any, config: dict[str, Any]):
        ov = require("openvino")
        core = ov.Core()
        model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
        self_compiled = core.compile_model(model, "CPU", config)
        names = []
        for i, inp in enumerate(self_compiled.inputs):
            try:
                names.append(inp.get_any_name())
            except RuntimeError:
                names.append(f"input{i}")
        super().__init__(
            names, model.get_rt_info(INPUT_LAYOUT).astype(str) if model.has_rt_info(INPUT_LAYOUT) else None
        )
        self.compiled = self_compiled
        self.request = self_compiled.create_infer_request()
        self.config = dict(config)
        self._accepted: set[tuple] = set()  # input shapes and dtypes already checked against the IR
        self._own: list[np.ndarray] | None = None
        self._n_outputs = len(self_compiled.outputs)
        self._tied = json.loads(model.get_rt_info(TIED_DIMS).astype(str)) if model.has_rt_info(TIED_DIMS) else []

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The compiled model's outputs (numpy copies) for the numpy inputs. Raises
        :class:`~prunekit.errors.DataError` for an input whose shape the IR does not accept (a dimension the
        export fixed).

        Inputs of the shape and dtype of the request's own input tensors are copied into them and the request
        is run as it is, which skips the Python-side input conversion of ``InferRequest.infer(inputs)`` (about
        60 us a call, as much as a small model's whole inference); other inputs go through that conversion."""
        ov = require("openvino")
        key = tuple((a.shape, a.dtype.str) for a in inputs)
        if key not in self._accepted:
            for name, port, a in zip(self.input_names, self.compiled.inputs, inputs):
                if not port.get_partial_shape().compatible(ov.PartialShape(list(a.shape))):
                    raise DataError(
                        f"the exported model takes {name} of shape {port.get_partial_shape()}, got {list(a.shape)}; "
                        "export with an example of the shape you will run (a dimension of size 1 in the example is "
                        "fixed at 1: export with a batch of 2 or more to keep the batch dynamic)"
                    )
            for group in self._tied:
                sizes = {inputs[i].shape[j] for i, j in group if i < len(inputs) and j < inputs[i].ndim}
                if len(sizes) > 1:
                    where = ", ".join(f"{self.input_names[i]} dim {j}" for i, j in group)
                    raise DataError(
                        f"the exported model needs {where} to be equal (the traced graph ties them), got sizes "
                        f"{sorted(sizes)}; pass inputs that agree, e.g. the same batch size for every input"
                    )
            self._accepted.add(key)
        if self._own is None:  # numpy views of the request's input tensors, kept until an inference replaces them
            try:
                self._own = [self.request.get_input_tensor(i).data for i in range(len(inputs))]
            except RuntimeError:  # a dynamic input before its first inference has no tensor yet
                self._own = []
        own = self._own
        if len(own) == len(inputs) and all(o.shape == a.shape and o.dtype == a.dtype for o, a in zip(own, inputs)):
            for o, a in zip(own, inputs):
                o[...] = a
            self.request.infer()
        else:
            self._own = None  # the request may hold other input tensors after this call
            self.request.infer(inputs)
        return [self.request.get_output_tensor(i).data.copy() for i in range(self._n_outputs)]

    def property(self, name: str) -> Any:
        """A property of the compiled model, e.g. ``"INFERENCE_PRECISION_HINT"`` (``get_property``)."""
        return self.compiled.get_property(name)

    def sparse_layers(self) -> list[str]:
        """OpenVINO layers that ran on a sparse kernel (read from the executed graph after an inference)."""
        out = []
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "primitiveType" in info and "sparse" in info["primitiveType"].astype(str).lower():
                out.append(op.get_friendly_name().split("/")[0])
        return out


def runtime_config(
    *, precision: str = "f32", threads: int | None = 1, sparse_rate: float | None = None
) -> dict[str, Any]:
    """The CPU plugin settings prunekit compiles with: the inference precision hint set explicitly (the
    plugin's default on AMX / AVX-512-BF16 CPUs is bf16), latency mode with one stream, ``threads`` threads,
    and ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE`` when ``sparse_rate`` is given."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    if sparse_rate is not None:
        config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = float(sparse_rate)
    return config
