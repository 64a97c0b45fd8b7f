"""Export to ONNX with torch's exporter (``torch.onnx.export(dynamo=True)``, PyPI ``onnx`` + ``onnxscript``),
checked in ONNX Runtime against PyTorch's outputs and timed there against the dense model."""

from __future__ import annotations

import inspect
import logging
import os
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.deploy._common import (
    INPUT_LAYOUT,
    RuntimeModule,
    check_batch_dynamic,
    check_export_options,
    check_target,
    compare_outputs,
    dense_original,
    dynamic_shapes,
    export_copy,
    files_size,
    flat_tensors,
    input_layout,
    layer_sparsity,
    reference_outputs,
    report_path_of,
    split_inputs,
    staged_files,
    weight_sparsity,
)
from prunekit.deploy.errors import ExportCheckError, ExportFailedError, UnsupportedRuntimeOptionError, require
from prunekit.deploy.report import DeployReport
from prunekit.eval.latency import LatencyComparison, compare_latency

__all__ = ["OrtModule", "export_onnx", "load_onnx"]

#: the ONNX sparse form costs 4 bytes per value + 8 per int64 index: it is smaller below this density
_SPARSE_DENSITY_LIMIT = 1.0 / 3.0
#: the opset torch's ONNX exporter implements its operators in; it converts its graph from there to the asked one
_EXPORTER_OPSET = 18
#: the lowest opset the exporter was seen to reach by conversion (a Linear-only model; ReLU needs 14, a
#: ReduceMean as in global average pooling 18), tried with torch 2.14 and onnx 1.23: asked for a lower one,
#: the exporter keeps 18
_LOWEST_OPSET = 13


#: numpy element types of ONNX Runtime's input type names
_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


class OrtModule(RuntimeModule):
    """An ONNX Runtime session (CPU) called like the PyTorch model: ``OrtModule(path)(x)`` -> tensor(s)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = 1):
        ort = require("onnxruntime")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 4  # failures are raised as exceptions, not logged
        self_session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        layout = self_session.get_modelmeta().custom_metadata_map.get(INPUT_LAYOUT)
        super().__init__([i.name for i in self_session.get_inputs()], layout)
        self.session = self_session
        self._dtypes = [_ORT_TYPES.get(i.type) for i in self_session.get_inputs()]
        self.path = str(path)
        self.threads = threads

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The session's outputs (numpy arrays) for the numpy inputs, fed by input name in graph order, each
        converted to the element type its graph input takes (float64 to float32, int32 to int64, ...), as
        OpenVINO does."""
        fed = [a if t is None or a.dtype == t else a.astype(t) for a, t in zip(inputs, self._dtypes)]
        return self.session.run(None, dict(zip(self.input_names, fed)))


def load_onnx(path: str | os.PathLike, *, threads: int | None = 1) -> OrtModule:
    """An exported ``.onnx`` file as a callable module running in ONNX Runtime on the CPU at ``threads``
    intra-op threads (None: ONNX Runtime's default). Inputs as the PyTorch model took them; outputs are
    torch tensors (a tuple when the graph has several). Raises :class:`~prunekit.errors.CheckpointError` when
    the file does not exist and :class:`~prunekit.deploy.errors.RuntimeMissingError` without onnxruntime."""
    if not Path(path).is_file():
        from prunekit.errors import CheckpointError

        raise CheckpointError(f"{path} does not exist; export a model first with prunekit.deploy.export_onnx")
    return OrtModule(path, threads=threads)


def _opset_range() -> tuple[int, int]:
    """The opsets :func:`export_onnx` accepts: from the lowest the exporter converts to, to the newest the
    installed onnx knows (the exporter's version converter goes no further)."""
    onnx = require("onnx")
    return _LOWEST_OPSET, int(onnx.defs.onnx_opset_version())


def _opset_advice() -> str:
    low, high = _opset_range()
    return (
        f"torch's ONNX exporter writes opsets {low} to {high} ({high}: the newest the installed onnx knows); it "
        f"implements its operators in opset {_EXPORTER_OPSET} and converts the graph from there, and below "
        f"{_EXPORTER_OPSET} only when every operator of the model has a converter (ReLU needs 14 or more). Pass "
        f"opset= from {_EXPORTER_OPSET} to {high}, or None (the exporter's default)"
    )


def _check_opset(opset: int | None) -> None:
    """Refuse an ``opset`` outside :func:`_opset_range` (before anything is exported or written)."""
    if opset is None:
        return
    low, high = _opset_range()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise UnsupportedRuntimeOptionError(f"opset={opset!r} cannot be exported: {_opset_advice()}")


class _ConverterLog(logging.Handler):
    """Collects the reasons the exporter's version converter logs (as warnings with an exception) while the
    graph is converted to the asked opset; held on the ``onnxscript`` logger during an export."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the last line of a logged exception (the converter's reason)."""
        if record.exc_info and record.exc_info[1] is not None:
            lines = str(record.exc_info[1]).strip().splitlines()
            self.reasons.append(lines[-1][:300] if lines else type(record.exc_info[1]).__name__)


def _to_onnx_file(
    model: nn.Module, args: tuple, kwargs: dict, path: Path, *, dynamic: bool = True, opset: int | None = None
) -> None:
    """Export ``model`` (eval mode, no masks) to ``path`` with torch's ONNX exporter. Raises
    :class:`ExportFailedError` with the exporter's reason, and :class:`UnsupportedRuntimeOptionError` (nothing
    saved) when the exporter could not convert the graph to ``opset``."""
    require("onnx")
    require("onnxscript")
    if args and isinstance(args[-1], dict):  # torch's exporter would read a trailing dict as keyword inputs
        sig = inspect.signature(model.forward)
        if not any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
            args, kwargs = (), dict(sig.bind(*args, **kwargs).arguments)
    shapes = dynamic_shapes(model, args, kwargs) if dynamic else None
    log = _ConverterLog()
    converter_logger = logging.getLogger("onnxscript")
    converter_logger.addHandler(log)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model,
                args,
                None,
                kwargs=kwargs or None,
                dynamo=True,
                dynamic_shapes=shapes,
                verbose=False,
                opset_version=opset,
            )  # None: the exporter's default
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported with its reason
        reason = str(e).strip().splitlines()
        hint = " Try dynamic=False (fixed input shapes)." if dynamic else ""
        raise ExportFailedError(
            f"torch.onnx.export could not export {type(model).__name__}: {' '.join(reason[:6])[:1200]}.{hint}"
        ) from None
    finally:
        converter_logger.removeHandler(log)
    assert program is not None  # the dynamo exporter always returns its program
    written = _opset_of(program.model_proto)
    if opset is not None and written != opset:
        # the exporter keeps its own opset, with a logged warning only, when it cannot convert the graph
        why = f": {log.reasons[-1]}" if log.reasons else ""
        raise UnsupportedRuntimeOptionError(
            f"torch's ONNX exporter could not convert {type(model).__name__} to opset {opset} (its graph stays at "
            f"opset {written}{why}); nothing was written. {_opset_advice()}"
        )
    layout = input_layout(model, args, kwargs)
    if layout:  # nested inputs: their key paths, so that calls can match them by name
        program.model.metadata_props[INPUT_LAYOUT] = layout
    program.save(str(path))


def _opset_of(proto: Any) -> int | None:
    """The default-domain (``ai.onnx``) opset an ONNX ``ModelProto`` imports."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _sparsify_initializers(path: Path) -> list[str]:
    """Rewrite the initializers of ``path`` whose ONNX sparse form (values + int64 linear indices) is smaller
    than the dense one (density below 1/3) as ``sparse_initializer``s; returns their names. ONNX Runtime
    densifies them when it loads the model, so only the file shrinks. Models saved with external data (over
    2 GB) are left as they are."""
    onnx = require("onnx")
    from onnx import numpy_helper

    if path.with_name(path.name + ".data").exists():  # over 2 GB: weights live in external data, left as they are
        return []
    proto = onnx.load(str(path))
    graph = proto.graph
    keep, converted = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind != "f" or arr.size < 64:
            keep.append(init)
            continue
        nz = np.flatnonzero(arr.reshape(-1))
        if nz.size >= _SPARSE_DENSITY_LIMIT * arr.size:
            keep.append(init)
            continue
        values = numpy_helper.from_array(arr.reshape(-1)[nz], init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), init.name + "_indices")
        graph.sparse_initializer.append(onnx.helper.make_sparse_tensor(values, indices, list(arr.shape)))
        converted.append(init.name)
    if converted:
        del graph.initializer[:]
        graph.initializer.extend(keep)
        onnx.save(proto, str(path))
    return converted


def _onnx_files(path: Path) -> list[Path]:
    data = path.with_name(path.name + ".data")
    return [path, data] if data.is_file() else [path]


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    baseline: nn.Module | None = None,
    baseline_label: str = "the baseline= model",
    dynamic: bool = True,
    sparse_initializers: bool = True,
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    measure_latency: bool = True,
    threads: int = 1,
    latency_budget_s: float = 3.0,
    overwrite: bool = False,
) -> DeployReport:
    """Export ``model`` to the ONNX file ``path`` (``.onnx``), check it in ONNX Runtime and report.

    ``model``: any module prunekit can prune (structurally pruned, masked, Hugging Face). It is not touched:
    a copy is exported with prunekit masks folded into plain weights, in eval mode, and for Hugging Face
    models with ``use_cache=False`` (the graph returns the outputs, no KV cache). ``example_inputs``: a batch
    as the model takes it (a tensor such as ``(N, C, H, W)``, a tuple, or a dict of keyword tensors such as
    ``input_ids`` ``(N, T)``). With ``dynamic=True`` every input dimension the model lets vary (batch,
    sequence, image size) stays dynamic in the graph (``torch.export.Dim.AUTO``); ``False`` fixes the
    example's shapes. A dynamic batch is checked by running the file at twice the example's batch (with
    other values in the second half); from a batch of 1 a Hugging Face model's graph was seen to name the
    batch dynamic yet fix it inside, which fails this check (:class:`ExportCheckError`): export with a
    batch of 2 or more. ``sparse_initializers``: store weights whose density is below 1/3 in ONNX's sparse
    form, which shrinks the file (ONNX Runtime densifies them on load; speed is unchanged). ``opset``: the ONNX
    opset to write (None: the exporter's default). Torch's exporter implements its operators in opset 18 and
    converts the graph to the asked one, up to the newest the installed onnx knows and down to 13 only when
    every operator of the model has a converter; an opset it cannot reach is refused, never replaced.

    The exported file is run in ONNX Runtime (CPU) on ``example_inputs`` and every output must satisfy
    ``|ort - torch| <= atol + rtol * |torch|`` (fp32 exports), else :class:`ExportCheckError` and nothing is
    written. With ``measure_latency`` the exported model is timed interleaved (:func:`prunekit.eval.latency.
    compare_latency`, ``threads`` threads, batch as given, about ``latency_budget_s`` seconds per pair)
    against the dense model exported the same way in ONNX Runtime, against the dense model in PyTorch,
    and against its own PyTorch form. The dense model is ``baseline`` (e.g. a copy taken before pruning;
    ``baseline_label`` names it in the report), else, for a masked model, the model with its masks taken
    off; a structurally pruned model needs ``baseline=`` for the dense comparisons.

    Writes ``path`` (plus ``path.data`` for models over 2 GB) and ``<name>.report.json`` beside it, all or
    nothing; an existing ``path`` is refused unless ``overwrite``. Returns a :class:`DeployReport`.
    Raises :class:`~prunekit.deploy.errors.RuntimeMissingError` without onnx / onnxscript / onnxruntime,
    :class:`~prunekit.deploy.errors.ExportFailedError` when torch's exporter cannot trace the model,
    :class:`~prunekit.deploy.errors.ExportCheckError` when ONNX Runtime's outputs differ from PyTorch's,
    :class:`~prunekit.errors.CheckpointError` for a target path that is not a new ``.onnx`` file (without
    ``overwrite``), :class:`~prunekit.errors.ConfigError` for ``threads`` < 1, a non-bool ``dynamic``, a
    negative ``atol`` / ``rtol`` or a ``latency_budget_s`` <= 0,
    :class:`~prunekit.deploy.errors.UnsupportedRuntimeOptionError` for an ``opset`` the exporter cannot write
    (outside the range it names, or one it cannot convert this model to) and
    :class:`~prunekit.errors.DataError` for missing example inputs or ones the model cannot run on.
    """
    ort = require("onnxruntime")
    require("onnx")
    check_export_options(dynamic=dynamic, atol=atol, rtol=rtol, threads=threads, latency_budget_s=latency_budget_s)
    _check_opset(opset)
    target = check_target(path, ".onnx", overwrite=overwrite)
    args, kwargs = split_inputs(example_inputs)
    prepared, notes = export_copy(model)
    ref = reference_outputs(prepared, args, kwargs)
    report_path = report_path_of(target)
    with staged_files(target) as tmp:
        out = tmp / target.name
        _to_onnx_file(prepared, args, kwargs, out, dynamic=dynamic, opset=opset)
        converted = _sparsify_initializers(out) if sparse_initializers else []
        if converted:
            notes.append(
                f"{len(converted)} weight(s) stored as ONNX sparse initializers (density < 1/3); ONNX "
                "Runtime densifies them on load"
            )
        session = OrtModule(out, threads=threads)
        got = session.run([t.detach().cpu().numpy() for t in flat_tensors(args, kwargs)])
        check = compare_outputs(ref, got, atol=atol, rtol=rtol)
        if not check["passed"]:
            raise ExportCheckError(
                f"ONNX Runtime's outputs differ from PyTorch's beyond atol={atol}, rtol={rtol} (max |diff| "
                f"{check['max_abs_diff']:.3g}); nothing was written. Report it with the model, or pass larger "
                "atol/rtol if that difference is acceptable for your use"
            )
        fixed = [f"{i.name} {i.shape}" for i in session.session.get_inputs() if i.shape and isinstance(i.shape[0], int)]
        if dynamic and fixed:
            notes.append(
                f"inputs {', '.join(fixed)}: the batch was fixed while tracing; export with a batch of 2 "
                "or more to keep it dynamic"
            )
        elif dynamic:
            notes.append(check_batch_dynamic(session.run, flat_tensors(args, kwargs), got, atol=atol, rtol=rtol))
        dense = baseline if baseline is not None else dense_original(model)
        baseline_text = (
            baseline_label
            if baseline is not None
            else "the model with its prunekit masks taken off (its dense original)"
            if dense is not None
            else "none (pass baseline= / --baseline: the dense model, e.g. a copy taken before pruning)"
        )
        latency: dict[str, LatencyComparison] = {}
        dense_bytes: int | None = None
        if measure_latency:
            latency, dense_bytes = _measure(
                prepared, session, dense, args, kwargs, dynamic, opset, threads, latency_budget_s
            )
        import onnx

        opset_used = _opset_of(onnx.load(str(out), load_external_data=False))
        report = DeployReport(
            runtime=f"onnxruntime {ort.__version__} (CPUExecutionProvider)",
            format="onnx",
            path=str(target),
            files=[str(target.parent / p.name) for p in _onnx_files(out)] + [str(report_path)],
            file_bytes=files_size(_onnx_files(out)),
            precision="fp32 weights and activations",
            runtime_config={
                "intra_op_num_threads": threads,
                "graph_optimization_level": "ORT_ENABLE_ALL",
                "opset": opset_used,
                "dynamic_inputs": _dynamic_dims(session),
            },
            weight_sparsity=weight_sparsity(prepared),
            sparse_layers=[],
            sparse_note="ONNX Runtime's CPU kernels run every layer dense: sparsity shrinks the file "
            "(sparse initializers), speed comes from structural pruning",
            check=check,
            input_shapes=[list(t.shape) for t in flat_tensors(args, kwargs)],
            threads=threads,
            baseline=baseline_text,
            dense_file_bytes=dense_bytes,
            latency=latency,
            notes=notes + [f"layer sparsity: {_sparsity_text(prepared)}"],
        )
        report.to_json(tmp / report_path.name)
    return report


def _dynamic_dims(session: OrtModule) -> dict[str, list[str | int]]:
    return {i.name: list(i.shape) for i in session.session.get_inputs()}


def _sparsity_text(model: nn.Module) -> str:
    per = layer_sparsity(model)
    sparse = {k: v for k, v in per.items() if v > 0.01}
    if not sparse:
        return "every weight dense"
    return ", ".join(f"{k or '(root)'} {100 * v:.0f}%" for k, v in list(sparse.items())[:12]) + (
        f", ... ({len(sparse)} layers)" if len(sparse) > 12 else ""
    )


def _measure(
    prepared: nn.Module,
    session: OrtModule,
    dense: nn.Module | None,
    args: tuple,
    kwargs: dict,
    dynamic: bool,
    opset: int | None,
    threads: int,
    budget_s: float,
) -> tuple[dict[str, LatencyComparison], int | None]:
    inputs = kwargs if kwargs and not args else (args if len(args) != 1 or kwargs else args[0])
    if kwargs and args:
        from prunekit.errors import DataError

        raise DataError(
            "latency needs example inputs as one form (a tensor, a tuple, or a dict); pass "
            "measure_latency=False or one form"
        )
    latency: dict[str, LatencyComparison] = {}
    dense_bytes = None
    timed = partial(compare_latency, threads=threads, budget_s=budget_s)
    if dense is not None:
        dense_prepared, _ = export_copy(dense)
        with tempfile.TemporaryDirectory(prefix="prunekit-dense-") as d:
            dense_path = Path(d) / "dense.onnx"
            _to_onnx_file(dense_prepared, args, kwargs, dense_path, dynamic=dynamic, opset=opset)
            dense_bytes = files_size(_onnx_files(dense_path))
            dense_session = OrtModule(dense_path, threads=threads)
            latency["vs dense onnxruntime"] = timed(dense_session, session, inputs)
            latency["vs dense pytorch"] = timed(dense_prepared, session, inputs)
    latency["vs same model in pytorch"] = timed(prepared, session, inputs)
    return latency, dense_bytes
