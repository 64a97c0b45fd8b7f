"""Export to OpenVINO IR (PyPI ``openvino``), optionally quantised with NNCF (weight-only int8, or int8 weights
and activations calibrated on the user's data), with the inference precision stated and set explicitly and
the CPU plugin's sparse-weight decompression switched on where the model's sparsity makes it pay."""

from __future__ import annotations

import inspect
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prunekit.deploy._common import (
    INPUT_LAYOUT,
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
from prunekit.deploy._kv import (
    KVStep,
    check_kv_steps,
    decide_kv,
    example_ids,
    kv_dynamic_shapes,
    kv_example,
    kv_input_names,
    kv_output_names,
    name_ports,
)
from prunekit.deploy.errors import ExportCheckError, ExportFailedError, UnsupportedRuntimeOptionError, require
from prunekit.deploy.ov_runtime import SPARSE_ALIGN, SPARSE_RATE, TIED_DIMS, OvModule, runtime_config
from prunekit.deploy.report import DeployReport
from prunekit.errors import CheckpointError, ConfigError, DataError, MissingDataError
from prunekit.eval.latency import LatencyComparison, compare_latency

__all__ = [
    "OvModule",
    "PRECISIONS",
    "QUANTIZE_MODES",
    "SPARSE_ALIGN",
    "SPARSE_RATE",
    "TIED_DIMS",
    "export_openvino",
    "load_openvino",
    "runtime_config",
]

QUANTIZE_MODES = (None, "int8-weights", "int8")
PRECISIONS = ("f32", "bf16", "f16")


@contextmanager
def dense_export(dense: nn.Module, build: Callable[[nn.Module], Any]) -> Iterator[tuple[nn.Module, Path, int]]:
    """The dense model exported the same way (``build``) into a temporary folder, for latency baselines:
    yields its prepared copy, the ``.xml`` path and the IR's size in bytes; the folder goes afterwards."""
    dense_prepared, _ = export_copy(dense)
    ov = require("openvino")
    with tempfile.TemporaryDirectory(prefix="prunekit-dense-") as d:
        path = Path(d) / "dense.xml"
        ov.save_model(build(dense_prepared), str(path), compress_to_fp16=False)
        yield dense_prepared, path, files_size([path, path.with_suffix(".bin")])


def load_openvino(path: str | os.PathLike, *, threads: int | None = 1) -> Any:
    """An exported OpenVINO ``.xml`` compiled on the CPU with the settings recorded at export (precision hint,
    sparse-weight decompression; read from ``<name>.report.json``; without it: f32), called like the
    PyTorch model: an :class:`OvModule`, or, for a causal LM exported with its KV cache (inputs
    ``past_key_values.*``), a :class:`prunekit.deploy.OpenVINOCausalLM` (``model(input_ids)`` gives logits,
    ``.generate`` decodes greedily). Raises :class:`~prunekit.errors.CheckpointError` when the file does not
    exist and :class:`~prunekit.deploy.errors.RuntimeMissingError` without openvino."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; export a model first with prunekit.deploy.export_openvino")
    report = report_path_of(path)
    recorded = json.loads(report.read_text()).get("runtime_config", {}) if report.is_file() else {}
    config = runtime_config(
        precision=recorded.get("INFERENCE_PRECISION_HINT", "f32"),
        threads=threads,
        sparse_rate=recorded.get("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"),
    )
    ov = require("openvino")
    graph = ov.Core().read_model(str(path))
    if any(name.startswith("past_key_values.") for port in graph.inputs for name in port.get_names()):
        from prunekit.deploy.openvino_lm import OpenVINOCausalLM

        return OpenVINOCausalLM(path, threads=threads)
    return OvModule(graph, config)


def _convert(model: nn.Module, args: tuple, kwargs: dict, dynamic: bool, shapes: Any = None) -> Any:
    """``model`` through torch.export and openvino.convert_model; ``shapes``: torch.export dynamic shapes
    (default: :func:`~prunekit.deploy._common.dynamic_shapes` when ``dynamic``)."""
    ov = require("openvino")
    if shapes is None and dynamic:
        shapes = dynamic_shapes(model, args, kwargs)
    try:
        # not size-oblivious: a dimension of size 1 in the example stays fixed at 1 (size-oblivious tracing
        # gave Hugging Face models graphs whose output depended on the input values at other batch sizes)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, args, kwargs or None, dynamic_shapes=shapes)
            ov_model = ov.convert_model(program)
    except Exception as e:  # noqa: BLE001 - any converter failure is reported with its reason
        reason = " ".join(str(e).strip().splitlines()[:6])[:1200]
        raise ExportFailedError(
            f"torch.export / openvino.convert_model could not convert {type(model).__name__}: {reason}"
        ) from None
    # the OpenVINO model's inputs take exactly the shapes the exported graph was traced for: dimensions
    # torch.export fixed stay fixed (the converter would leave them open, and other sizes would compute
    # wrong results silently), the dynamic ones stay dynamic
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    traced = []
    same: dict[str, list[list[int]]] = {}  # dynamic dimensions torch.export found equal, by their symbol
    for spec in program.graph_signature.input_specs:
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT:
            val = placeholders[spec.arg.name].meta.get("val") if hasattr(spec.arg, "name") else None
            if isinstance(val, torch.Tensor):
                for j, d in enumerate(val.shape):
                    if not isinstance(d, int):
                        same.setdefault(str(d), []).append([len(traced), j])
                traced.append([d if isinstance(d, int) else -1 for d in val.shape])
    if len(traced) == len(ov_model.inputs):
        ov_model.reshape({i: ov.PartialShape(s) for i, s in enumerate(traced)})
        tied = [group for group in same.values() if len(group) > 1]
        if tied:  # kept in the IR: the CPU plugin does not check that such inputs agree (OvModule does)
            ov_model.set_rt_info(json.dumps(tied), TIED_DIMS)
    layout = input_layout(model, args, kwargs)
    if layout:  # nested inputs: their key paths, so that calls can match them by name
        ov_model.set_rt_info(layout, INPUT_LAYOUT)
    return ov_model


def _takes_attention_mask(model: nn.Module, args: tuple, kwargs: dict) -> bool:
    """Whether the example inputs give ``model`` an ``attention_mask`` tensor (so calls may carry padding)."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError:
        return False
    return torch.is_tensor(bound.get("attention_mask"))


def _finite_attention(model: nn.Module) -> bool:
    """Switch a Hugging Face model (a prunekit export copy) from ``sdpa`` attention to its ``eager`` form, whose
    mask adds the dtype's lowest finite value instead of masking out: a fully masked row then stays finite in
    OpenVINO. True when it switched."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    getattr(model, "set_attn_implementation")("eager")  # noqa: B009 - transformers' method, not in nn.Module's type
    return True


def _calibration_items(calibration: Any, example_inputs: Any) -> list[list[np.ndarray]]:
    """Calibration batches as lists of numpy inputs in the graph's order. Each batch is the model's inputs,
    or ``(inputs, targets)``, or a dict of keyword inputs (``labels`` dropped), as prunekit's calibration."""
    if callable(calibration) and not hasattr(calibration, "__iter__"):
        raise DataError(
            "int8 calibration needs batches of inputs (a list or DataLoader of tensors, (inputs, targets) "
            "pairs or dicts), not a loss function"
        )
    n_expected = len(flat_tensors(*split_inputs(example_inputs)))
    items = []
    for batch in calibration:
        if isinstance(batch, (tuple, list)) and len(batch) == 2 and n_expected == 1 and torch.is_tensor(batch[0]):
            batch = batch[0]  # (inputs, targets)
        if isinstance(batch, dict):
            batch = {k: v for k, v in batch.items() if k != "labels"}
        tensors = flat_tensors(*split_inputs(batch))
        if len(tensors) != n_expected:
            raise DataError(
                f"a calibration batch holds {len(tensors)} input tensor(s), the model takes {n_expected}: "
                "give batches shaped like example_inputs (or (inputs, targets) pairs)"
            )
        items.append([t.detach().cpu().numpy() for t in tensors])
    if not items:
        raise DataError("the calibration data is empty: give at least one batch")
    return items


def _quantize(ov_model: Any, quantize: str | None, calibration: Any, example_inputs: Any, subset_size: int) -> Any:
    if quantize is None:
        return ov_model
    nncf = require("nncf")
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)
    if quantize == "int8-weights":
        return nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    items = _fit_batches(ov_model, _calibration_items(calibration, example_inputs))
    return nncf.quantize(ov_model, nncf.Dataset(items), subset_size=min(subset_size, len(items)))


def _fit_batches(ov_model: Any, items: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Calibration batches cut along the batch dimension to the size the graph was traced for (a model
    exported from a batch of 1 takes batches of 1). Raises :class:`DataError` when they cannot fit."""
    ov = require("openvino")
    shapes = [port.get_partial_shape() for port in ov_model.inputs]
    out = []
    for item in items:
        if all(s.compatible(ov.PartialShape(list(a.shape))) for s, a in zip(shapes, item)):
            out.append(item)
            continue
        fixed = shapes[0][0].get_length() if shapes[0].rank.is_static and shapes[0][0].is_static else None
        n = item[0].shape[0] if item[0].ndim else 0
        if not fixed or n % fixed:
            raise DataError(
                f"calibration batches of shape {[list(a.shape) for a in item]} do not fit the exported "
                f"inputs {[str(s) for s in shapes]}; give batches shaped like example_inputs"
            )
        for i in range(0, n, fixed):
            out.append([a[i : i + fixed] for a in item])
    return out


def _reshape_static(ov_model: Any, args: tuple, kwargs: dict) -> None:
    shapes = [list(t.shape) for t in flat_tensors(args, kwargs)]
    if len(shapes) == len(ov_model.inputs):
        ov_model.reshape({i: s for i, s in enumerate(shapes)})


_PRECISION_TEXT = {
    None: "fp32 weights and activations",
    "int8-weights": (
        "int8 weights (asymmetric, per channel; NNCF compress_weights), activations at the inference precision"
    ),
    "int8": "int8 weights and activations (NNCF post-training quantisation, calibrated)",
}


def export_openvino(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike,
    *,
    quantize: str | None = None,
    calibration: Any = None,
    precision: str = "f32",
    sparse_weights: bool | None = None,
    sparse_rate: float = SPARSE_RATE,
    dynamic: bool = True,
    baseline: nn.Module | None = None,
    baseline_label: str = "the baseline= model",
    subset_size: int = 300,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    measure_latency: bool = True,
    threads: int = 1,
    latency_budget_s: float = 3.0,
    overwrite: bool = False,
    kv_cache: bool | None = None,
) -> DeployReport:
    """Export ``model`` to OpenVINO IR at ``path`` (``.xml``, with its ``.bin``), optionally quantised, and report.

    The model is converted from ``torch.export`` (a copy: masks folded, eval mode, ``use_cache=False`` for
    Hugging Face models) with ``openvino.convert_model`` and saved with fp32 weights (no silent fp16).
    ``quantize``: None (fp32), ``"int8-weights"`` (NNCF ``compress_weights``, INT8_ASYM: weights only, no
    data needed) or ``"int8"`` (NNCF ``quantize``: int8 weights and activations, calibrated on
    ``calibration``: batches as prunekit takes them, ``(inputs, targets)`` pairs, input tensors or dicts, at
    most ``subset_size`` of them). ``precision``: the CPU plugin's ``INFERENCE_PRECISION_HINT`` for what is not
    int8, set explicitly (``"f32"`` by default; ``"bf16"``, ``"f16"`` when asked), because the plugin's own
    default on AMX CPUs is bf16.

    ``sparse_weights``: set ``CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE = sparse_rate`` so that int8 fully
    connected layers with at least that share of zeros run on the CPU plugin's sparse kernel (AMX CPUs).
    None decides: on when ``quantize="int8"`` and some Linear weight has at least ``sparse_rate`` zeros
    (it pays there: 1.5-2.0x at 90% measured; it does nothing for fp32 or weight-only int8). True with
    another ``quantize`` is refused. The report names the layers the plugin really ran sparse.

    ``dynamic``: keep every input dimension the model lets vary dynamic (True; ``torch.export.Dim.AUTO``;
    the IR's inputs take exactly the traced shapes, so shapes the trace fixed are refused with a
    :class:`~prunekit.errors.DataError` rather than computed wrongly; a dimension of size 1 in the example
    stays fixed at 1, so export with a batch of 2 or more to keep the batch dynamic; a dynamic batch is checked
    by running the IR at twice the example's batch) or fix the example's shapes (False, often faster for small
    models). The exported model is run on ``example_inputs``; an fp32 export must match PyTorch within
    ``|ov - torch| <= atol + rtol * |torch|`` (else :class:`~prunekit.deploy.errors.ExportCheckError`, nothing
    written); a
    quantised or reduced-precision one reports its error without a threshold. Latency as in
    :func:`prunekit.deploy.export_onnx`: against the dense model exported the same way (``baseline=``, or a
    masked model's dense original) in OpenVINO, the dense model in PyTorch fp32 and the model's own PyTorch
    form, interleaved at ``threads`` threads.

    ``kv_cache`` (Hugging Face causal LMs of the families in :data:`prunekit.deploy._kv.KV_FAMILIES`): True
    exports the decoding step with its key/value cache as explicit tensors (inputs ``input_ids [batch, seq]``,
    ``attention_mask [batch, past + seq]``, ``position_ids [batch, seq]``, ``past_key_values.{i}.key`` /
    ``.value [batch, kv_heads_i, past, head_dim]`` with ``past`` >= 0; outputs ``logits [batch, seq,
    vocab]`` and ``present.{i}.key`` / ``.value [batch, kv_heads_i, past + seq, head_dim]``), run by
    :class:`prunekit.deploy.OpenVINOCausalLM` (greedy ``generate``). ``example_inputs`` are then the
    ``input_ids`` (a tensor, or a dict holding them) of a batch of 2 or more with 2 or more tokens; the
    graph is traced continuing a cache of those ids, checked there, from an empty cache and for a one-token
    step, and latency is that of greedy generation of 8 tokens after them (against ``transformers``
    ``generate`` with its cache). None (default): True for a causal LM of a supported family exported with
    ``dynamic=True`` and ``quantize`` None or ``"int8-weights"``, else False (the graph returns the logits of
    the whole sequence without a cache; a note says why). False: always the graph without a cache.

    Writes ``path``, its ``.bin`` and ``<name>.report.json`` (the runtime settings that
    :func:`load_openvino` applies) all or nothing. Raises
    :class:`~prunekit.deploy.errors.UnsupportedRuntimeOptionError` for an unknown ``quantize`` / ``precision``
    or ``sparse_weights=True`` without int8 activations, :class:`~prunekit.errors.MissingDataError` for
    ``quantize="int8"`` without ``calibration``, :class:`~prunekit.errors.ConfigError` for calibration given to
    a mode that does not use it (and for ``sparse_rate`` outside (0, 1), ``threads`` < 1, a non-bool
    ``dynamic``, a negative ``atol`` / ``rtol`` or a ``latency_budget_s`` <= 0),
    :class:`~prunekit.deploy.errors.RuntimeMissingError` without openvino / nncf,
    :class:`~prunekit.deploy.errors.ExportFailedError` when the model cannot be converted,
    :class:`~prunekit.errors.UnsupportedModuleError` for ``kv_cache=True`` on a model that is not a causal LM
    of a supported family (the message names them), and
    :class:`~prunekit.deploy.errors.UnsupportedRuntimeOptionError` for ``kv_cache=True`` with
    ``dynamic=False`` or ``quantize="int8"``.
    """
    if quantize not in QUANTIZE_MODES:
        raise UnsupportedRuntimeOptionError(
            f"quantize={quantize!r} is not supported; choose None (fp32), 'int8-weights' (weight-only int8) or "
            "'int8' (int8 weights and activations, needs calibration=)"
        )
    if precision not in PRECISIONS:
        raise UnsupportedRuntimeOptionError(
            f"precision={precision!r} is not supported; choose one of {', '.join(PRECISIONS)}"
        )
    if quantize == "int8" and calibration is None:
        raise MissingDataError(
            "quantize='int8' calibrates the activation ranges on data: pass calibration= (batches "
            "of inputs or (inputs, targets) pairs, e.g. a few hundred samples of the training set)"
        )
    if quantize != "int8" and calibration is not None:
        raise ConfigError(
            f"calibration= is used only by quantize='int8' (int8 activations); with quantize={quantize!r} "
            "it would be ignored: drop it or pass quantize='int8'"
        )
    if sparse_weights and quantize != "int8":
        raise UnsupportedRuntimeOptionError(
            "OpenVINO's sparse-weight decompression runs int8 fully connected layers only (int8 weights and "
            "activations): pass quantize='int8' with calibration=, or sparse_weights=None/False"
        )
    if not 0 < sparse_rate < 1:
        raise ConfigError(f"sparse_rate must lie in (0, 1), got {sparse_rate}")
    check_export_options(dynamic=dynamic, atol=atol, rtol=rtol, threads=threads, latency_budget_s=latency_budget_s)
    kv_on, kv_note = decide_kv(model, kv_cache, dynamic=dynamic, quantize=quantize)
    ov = require("openvino")
    if quantize is not None:
        require("nncf")
    target = check_target(path, ".xml", overwrite=overwrite, companions=(".bin",))
    args, kwargs = split_inputs(example_inputs)
    prepared, notes = export_copy(model)
    kv_step = KVStep(prepared) if kv_on else None
    graph: nn.Module = prepared if kv_step is None else kv_step
    prompt = torch.empty(0)
    if kv_step is not None:
        notes = [n for n in notes if not n.startswith("Hugging Face config.use_cache")]
        prompt = example_ids(args, kwargs)
        args, kwargs = kv_example(kv_step, prompt), {}
    if kv_note:
        notes.append(kv_note)
    eager = kv_step is None and _takes_attention_mask(prepared, args, kwargs)
    if eager and _finite_attention(prepared):
        notes.append(
            "attention exported in its eager form (softmax over a finite mask value), as the graph takes an "
            "attention mask: OpenVINO's fused attention gives NaN for the fully masked positions of a "
            "left-padded row, which then spread to its tokens (about 6% slower on SmolLM2's 512-token prefill)"
        )
    ref = reference_outputs(graph, args, kwargs)
    linear_sparsity = {
        n: s for n, s in layer_sparsity(prepared).items() if isinstance(prepared.get_submodule(n), nn.Linear)
    }
    if sparse_weights is None:
        sparse_on = quantize == "int8" and any(s >= sparse_rate for s in linear_sparsity.values())
        why = (
            f"int8 weights and activations with Linear layers at >= {100 * sparse_rate:.0f}% zeros"
            if sparse_on
            else "it pays only for int8 weights and activations"
            if quantize != "int8"
            else f"no Linear layer has {100 * sparse_rate:.0f}% zeros"
        )
    else:
        sparse_on, why = bool(sparse_weights), "asked for (sparse_weights=" + str(sparse_weights) + ")"
    config = runtime_config(precision=precision, threads=threads, sparse_rate=sparse_rate if sparse_on else None)
    notes.append(f"sparse-weight decompression {'on' if sparse_on else 'off'}: {why}")

    def build(m: nn.Module) -> Any:
        if kv_on:
            step = KVStep(m)
            ov_model = _convert(step, kv_example(step, prompt), {}, dynamic, kv_dynamic_shapes(step.n_layers))
            name_ports(ov_model, kv_input_names(step.n_layers), kv_output_names(step.n_layers))
            return _quantize(ov_model, quantize, None, None, subset_size)
        if eager:
            _finite_attention(m)
        converted = _convert(m, args, kwargs, dynamic)
        ov_model = _quantize(converted, quantize, calibration, example_inputs, subset_size)
        for key in (TIED_DIMS, INPUT_LAYOUT):  # kept through quantisation
            if converted.has_rt_info(key) and not ov_model.has_rt_info(key):
                ov_model.set_rt_info(converted.get_rt_info(key).astype(str), key)
        if not dynamic:
            _reshape_static(ov_model, args, kwargs)
        return ov_model

    ov_model = build(prepared)
    report_path = report_path_of(target)
    with staged_files(target) as tmp:
        out = tmp / target.name
        ov.save_model(ov_model, str(out), compress_to_fp16=False)
        compiled = OvModule(out, config)
        got = compiled.run([t.detach().cpu().numpy() for t in flat_tensors(args, kwargs)])
        hint = str(compiled.property("INFERENCE_PRECISION_HINT"))
        if precision not in hint.replace("float32", "f32").replace("bfloat16", "bf16").replace("float16", "f16"):
            raise UnsupportedRuntimeOptionError(
                f"the CPU plugin compiled at {hint} although {precision} was asked; this CPU cannot run {precision}"
            )
        check = compare_outputs(ref, got, atol=atol, rtol=rtol)
        if kv_step is not None:
            check = check_kv_steps(kv_step, compiled.run, prompt, check, atol=atol, rtol=rtol)
        exact = quantize is None and precision == "f32"
        if exact and not check["passed"]:
            raise ExportCheckError(
                f"OpenVINO's outputs differ from PyTorch's beyond atol={atol}, rtol={rtol} (max |diff| "
                f"{check['max_abs_diff']:.3g}); nothing was written"
            )
        batch_fixed = [
            str(p.get_partial_shape())
            for p in compiled.compiled.inputs
            if p.get_partial_shape().rank.is_static
            and p.get_partial_shape().rank.get_length()
            and p.get_partial_shape()[0].is_static
        ]
        if dynamic and batch_fixed:
            notes.append(
                f"input shapes {', '.join(batch_fixed)}: the batch was fixed while tracing (a batch of 1 "
                "fixes it); export with a batch of 2 or more to keep it dynamic"
            )
        elif dynamic:
            notes.append(
                check_batch_dynamic(
                    compiled.run,
                    flat_tensors(args, kwargs),
                    got,
                    atol=atol,
                    rtol=rtol,
                    quantized=not (quantize is None and precision == "f32"),
                    fresh_run=lambda inputs: OvModule(out, config).run(inputs),
                )
            )
        if not exact:
            check["passed"] = None
            check["note"] = "quantised or reduced precision: the error is reported, not held to atol/rtol"
        sparse_layers = compiled.sparse_layers()
        inputs_of = {n: int(getattr(prepared.get_submodule(n), "in_features", 0)) for n in linear_sparsity}
        unaligned = [
            f"{n} ({inputs_of[n]} inputs)"
            for n, sp in linear_sparsity.items()
            if sp >= sparse_rate and inputs_of[n] % SPARSE_ALIGN
        ]
        if sparse_on and unaligned:
            notes.append(
                f"Linear layers at >= {100 * sparse_rate:.0f}% zeros left on the dense kernel, the sparse one "
                f"taking only input sizes that are multiples of {SPARSE_ALIGN} (measured with OpenVINO 2026.4): "
                + ", ".join(unaligned)
            )
        if sparse_on and not sparse_layers:
            notes.append(
                "the CPU plugin ran no layer on its sparse kernel (it needs int8 AMX support and layers "
                f"over the rate {sparse_rate:g})"
            )
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
        if measure_latency and kv_on:
            from prunekit.deploy.openvino_lm import measure_generation

            latency, dense_bytes = measure_generation(
                prepared, out, dense, build, prompt, config, threads, latency_budget_s
            )
        elif measure_latency:
            latency, dense_bytes = _measure(
                prepared, compiled, dense, build, args, kwargs, config, threads, latency_budget_s
            )
        files = [out, out.with_suffix(".bin")]
        report = DeployReport(
            runtime=f"openvino {ov.get_version()} (CPU plugin)",
            format="openvino-ir",
            path=str(target),
            files=[str(target.parent / p.name) for p in files] + [str(report_path)],
            file_bytes=files_size(files),
            precision=f"{_PRECISION_TEXT[quantize]}; inference precision hint {precision}"
            + ("; key/value cache at the inference precision" if kv_on else ""),
            runtime_config=config,
            weight_sparsity=weight_sparsity(prepared),
            sparse_layers=sparse_layers,
            sparse_note="OpenVINO layer names run by the CPU plugin's sparse int8 kernel"
            if sparse_on
            else "sparse-weight decompression off",
            check=check,
            input_shapes=[list(t.shape) for t in flat_tensors(args, kwargs)],
            threads=threads,
            baseline=baseline_text,
            dense_file_bytes=dense_bytes,
            latency=latency,
            notes=notes + ([f"quantised with nncf {require('nncf').__version__}"] if quantize else []),
        )
        report.to_json(tmp / report_path.name)
    return report


def _measure(
    prepared: nn.Module,
    compiled: OvModule,
    dense: nn.Module | None,
    build: Any,
    args: tuple,
    kwargs: dict,
    config: dict,
    threads: int,
    budget_s: float,
) -> tuple[dict[str, LatencyComparison], int | None]:
    if kwargs and args:
        raise DataError(
            "latency needs example inputs in one form (a tensor, a tuple or a dict); pass "
            "measure_latency=False or one form"
        )
    inputs = kwargs if kwargs else (args[0] if len(args) == 1 else args)
    timed = partial(compare_latency, threads=threads, budget_s=budget_s)
    latency: dict[str, LatencyComparison] = {}
    dense_bytes = None
    if dense is not None:
        with dense_export(dense, build) as (dense_prepared, dense_path, dense_bytes):
            dense_compiled = OvModule(dense_path, config)
            latency["vs dense openvino"] = timed(dense_compiled, compiled, inputs)
            latency["vs dense pytorch"] = timed(dense_prepared, compiled, inputs)
    latency["vs same model in pytorch"] = timed(prepared, compiled, inputs)
    return latency, dense_bytes
