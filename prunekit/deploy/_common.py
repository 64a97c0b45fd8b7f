"""What the exporters share: a prepared copy of the user's model, inputs and outputs as flat tensor lists,
runtime sessions wrapped as modules (so :func:`prunekit.eval.latency.compare_latency` times them), the output
check, and files written whole or not at all."""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from prunekit.apply.masks import masked_parameters, remove_masks_, squash_masks_
from prunekit.errors import CheckpointError, ConfigError, DataError, ModelError
from prunekit.serialization import make_folder

__all__ = [
    "INPUT_LAYOUT",
    "RuntimeModule",
    "check_batch_dynamic",
    "check_export_options",
    "check_target",
    "compare_outputs",
    "dense_original",
    "dynamic_shapes",
    "export_copy",
    "files_size",
    "flat_outputs",
    "flat_tensors",
    "input_layout",
    "layer_sparsity",
    "reference_outputs",
    "split_inputs",
    "staged_files",
    "tensor_paths",
    "weight_sparsity",
]


def check_export_options(*, dynamic: Any, atol: Any, rtol: Any, threads: Any, latency_budget_s: Any) -> None:
    """Refuse export options that cannot mean anything, before any work: ``dynamic`` not a bool, a negative or
    non-finite ``atol`` / ``rtol``, ``threads`` < 1, a ``latency_budget_s`` that is not a positive number of
    seconds. Raises :class:`~prunekit.errors.ConfigError` naming the option and what it takes."""
    if not isinstance(dynamic, bool):
        raise ConfigError(f"dynamic is True (any batch size) or False (the example's), got {dynamic!r}")
    for name, v in (("atol", atol), ("rtol", rtol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            raise ConfigError(f"{name} is a finite tolerance >= 0 (e.g. 1e-4), got {v!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer of at least 1, got {threads!r}")
    ok = isinstance(latency_budget_s, (int, float)) and not isinstance(latency_budget_s, bool)
    if not ok or not 0 < latency_budget_s < float("inf"):
        raise ConfigError(
            f"latency_budget_s is the time in seconds the latency measurement may take, > 0, got {latency_budget_s!r}"
            " (measure_latency=False skips the measurement)"
        )


def split_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """Example inputs in the forms :func:`prunekit.calls.call_model` takes, as ``(args, kwargs)``."""
    if example_inputs is None:
        raise DataError(
            "example_inputs is required to export a model: pass a batch as the model takes it "
            "(a tensor, a tuple of tensors or a dict of keyword tensors)"
        )
    if isinstance(example_inputs, dict) or (hasattr(example_inputs, "keys") and hasattr(example_inputs, "__getitem__")):
        return (), {k: example_inputs[k] for k in example_inputs.keys()}
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def _varying_dims(t: Tensor) -> dict[int, Any]:
    """The dimensions an export leaves free: the batch (dim 0), and the sequence of integer token ids
    ``[batch, seq_len]``. Image sizes and channels stay as the example has them: a model whose Linear follows
    a flatten accepts no other size, and marking them free only defers the failure to the runtime."""
    auto = torch.export.Dim.AUTO
    if t.dim() == 0:
        return {}
    dims = {0: auto}
    if t.dim() == 2 and not t.is_floating_point():
        dims[1] = auto
    return dims


def dynamic_shapes(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any] | None:
    """The batch dimension of every tensor input (and the sequence of token-id inputs) marked ``Dim.AUTO``
    (see :func:`_varying_dims`): torch.export keeps them dynamic where the model lets them vary."""
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs)
    except TypeError as e:
        from prunekit.errors import DataError

        raise DataError(f"the example inputs do not fit the model's forward signature: {e}") from None
    shapes: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = inspect.signature(model.forward).parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            shapes[name] = tuple(_varying_dims(v) if torch.is_tensor(v) else None for v in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            shapes[name] = {k: (_varying_dims(v) if torch.is_tensor(v) else None) for k, v in value.items()}
        elif isinstance(value, _CONTAINERS):  # a dict or tuple argument: its tensors' dimensions, in its shape
            shapes[name] = pytree.tree_map(lambda v: _varying_dims(v) if torch.is_tensor(v) else None, value)
        else:
            shapes[name] = _varying_dims(value) if torch.is_tensor(value) else None
    return shapes


#: key, in an exported model file's metadata, of the layout of its nested inputs (:func:`input_layout`)
INPUT_LAYOUT = "prunekit_input_layout"
_CONTAINERS = (dict, list, tuple)


def tensor_paths(params: Sequence[str], args: tuple, kwargs: dict) -> list[tuple[str, Tensor]]:
    """Every tensor among ``args`` (named by the forward's positional parameters ``params``) and ``kwargs``,
    with its key path (``"['feats']['u']"``), in the order an export flattens them."""
    named: dict[str, Any] = {params[i] if i < len(params) else f"*{i}": a for i, a in enumerate(args)}
    named.update(kwargs)
    leaves, _ = pytree.tree_flatten_with_path(named)
    return [(pytree.keystr(path), v) for path, v in leaves if isinstance(v, Tensor)]


def input_layout(model: nn.Module, args: tuple, kwargs: dict) -> str | None:
    """For inputs nested in containers (a dict or tuple argument): JSON text of the forward's positional
    parameter names and the key path of every tensor in the graph's order, which the runtime modules use to
    match a call's nested inputs by name; None when every input is a tensor (matched by position and name)."""
    if not any(isinstance(v, _CONTAINERS) for v in (*args, *kwargs.values())):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    params = [n for n, p in inspect.signature(model.forward).parameters.items() if p.kind in kinds]
    return json.dumps({"params": params, "paths": [path for path, _ in tensor_paths(params, args, kwargs)]})


def flat_tensors(args: tuple, kwargs: dict) -> list[Tensor]:
    """The tensors among ``args`` then ``kwargs`` in order (what an exported graph takes as inputs)."""
    leaves = pytree.tree_leaves((args, kwargs))
    return [t for t in leaves if isinstance(t, Tensor)]


def flat_outputs(out: Any) -> list[Tensor]:
    """A model's output (a tensor, tuples, dicts, Hugging Face ``ModelOutput``) as its flat list of tensors."""
    return [t for t in pytree.tree_leaves(out) if isinstance(t, Tensor)]


def _private_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` that shares no class with it.

    ``copy.deepcopy`` keeps the class torch creates for each parametrized module (``ParametrizedLinear``),
    and taking a parametrization off deletes the weight's property from that class: squashing the masks
    of a plain deep copy would break the original. Each parametrized module of the copy gets its own
    class here, so the copy can be squashed or unmasked freely.
    """
    from torch.nn.utils import parametrize

    try:
        dup = copy.deepcopy(model)
    except Exception as e:  # noqa: BLE001 - a model that cannot be copied is refused, not changed in place
        raise ModelError(f"cannot copy the model to export it without changing yours: {e}") from None
    for module in dup.modules():
        if parametrize.is_parametrized(module):
            cls = type(module)
            module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))
    return dup


def export_copy(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` ready to export, and notes saying what was changed in it.

    The copy is in eval mode, with prunekit masks folded into plain weights (:func:`prunekit.squash_masks_`)
    and, for a Hugging Face model, ``config.use_cache = False`` (the graph returns the logits, no KV cache).
    The user's model is not touched.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"export takes a torch.nn.Module, got {type(model).__name__}")
    notes: list[str] = []
    prepared = _private_copy(model)
    masked = len(list(masked_parameters(prepared)))
    if masked:
        squash_masks_(prepared)
        notes.append(f"{masked} prunekit mask(s) folded into plain weights in a copy (your model keeps its masks)")
    prepared.eval()
    config = getattr(prepared, "config", None)
    if config is not None and getattr(config, "use_cache", False):
        config.use_cache = False
        notes.append(
            "Hugging Face config.use_cache set to False in the exported copy: the graph returns the "
            "outputs without a KV cache"
        )
    return prepared, notes


def dense_original(model: nn.Module) -> nn.Module | None:
    """The dense original of a masked model (a copy with every prunekit mask taken off), or None when the
    model carries no masks."""
    if not any(True for _ in masked_parameters(model)):
        return None
    dense = _private_copy(model)
    remove_masks_(dense)
    return dense.eval()


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """Fraction of exact zeros in each Linear / Conv weight of ``model`` (masks counted as applied)."""
    out: dict[str, float] = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = module.weight.detach()
            out[name] = 1.0 - torch.count_nonzero(w).item() / w.numel() if w.numel() else 0.0
    return out


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of exact zeros over all Linear / Conv weights of ``model``."""
    total = zeros = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = module.weight.detach()
            total += w.numel()
            zeros += w.numel() - int(torch.count_nonzero(w))
    return zeros / total if total else 0.0


def reference_outputs(model: nn.Module, args: tuple, kwargs: dict) -> list[Tensor]:
    """The PyTorch model's outputs on ``(args, kwargs)`` as a flat list of float32 tensors (no gradients).

    Raises :class:`~prunekit.errors.DataError` naming the input shapes given (and the one the model carries,
    :func:`prunekit.models.input_shape_of`, when known) when the model cannot run on them: a wrong shape is
    the user's input, not a failure of the exporter.
    """
    try:
        with torch.no_grad():
            out = model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - whatever the forward pass raises on these inputs is reported
        from prunekit.errors import PrunekitError
        from prunekit.models import input_shape_of

        if isinstance(e, PrunekitError):
            raise
        given = ", ".join(str(tuple(t.shape)) for t in flat_tensors(args, kwargs)) or "no tensor"
        carried = input_shape_of(model)
        known = f"; this model was built for inputs of shape {carried}" if carried else ""
        reason = " ".join(str(e).strip().splitlines()[:3])[:400] or type(e).__name__
        raise DataError(
            f"the model cannot run on the example input of shape {given} ({reason}){known}. Pass an input the "
            "model accepts (example_inputs=a batch)"
        ) from None
    return [t.detach().float() for t in flat_outputs(out)]


def compare_outputs(ref: Sequence[Tensor], got: Sequence[Any], *, atol: float, rtol: float) -> dict[str, Any]:
    """Compare runtime outputs with PyTorch's: max absolute difference, relative L2 error and whether
    ``|got - ref| <= atol + rtol * |ref|`` holds everywhere (``passed``)."""
    if len(ref) != len(got):
        raise ModelError(
            f"the exported model returns {len(got)} output(s), PyTorch {len(ref)}: they cannot be compared"
        )
    max_abs, rel, passed = 0.0, 0.0, True
    for r, g in zip(ref, got):
        g = torch.as_tensor(np.asarray(g)).to(torch.float32)
        r = r.to(torch.float32)
        if g.shape != r.shape:
            raise ModelError(f"an exported output has shape {tuple(g.shape)}, PyTorch's {tuple(r.shape)}")
        if not torch.isfinite(g).all():
            passed = False
            max_abs = float("inf")
            continue
        diff = (g - r).abs()
        max_abs = max(max_abs, float(diff.max()) if diff.numel() else 0.0)
        rel = max(rel, float(diff.norm() / r.norm().clamp_min(1e-12)))
        passed = passed and bool((diff <= atol + rtol * r.abs()).all())
    return {"max_abs_diff": max_abs, "relative_l2_error": rel, "atol": atol, "rtol": rtol, "passed": passed}


def check_batch_dynamic(
    run: Any,
    tensors: list[Tensor],
    first: Sequence[Any],
    *,
    atol: float,
    rtol: float,
    quantized: bool = False,
    fresh_run: Any = None,
) -> str:
    """Run the exported model on the example inputs stacked with a variant of them (rolled along the last
    dimension) along the batch dimension and check that each half of every batched output equals the output
    of that half alone (``|a - b| <= atol + rtol|a|``;
    for a quantised model, whose kernels may round one step differently at another batch size, a relative
    L2 difference under 1%: a batch fixed while tracing differs by far more). A graph that claims a dynamic
    batch but fixed it while tracing fails here instead of computing wrong results later. ``fresh_run``, when
    given, runs a newly compiled model, whose first inference is then at the doubled batch (OpenVINO's
    results were seen to depend on the shape of the first inference). Returns a note;
    raises :class:`~prunekit.deploy.errors.ExportCheckError` with advice when the check fails."""
    from prunekit.deploy.errors import ExportCheckError

    n = tensors[0].shape[0] if tensors and tensors[0].dim() else None
    if not n or any(t.dim() == 0 or t.shape[0] != n for t in tensors):
        return "batch check skipped: the inputs do not share a leading batch dimension"
    advice = (
        "export with a batch of 2 or more (example_inputs), or with dynamic=False (fixed shapes, "
        "run at the example's batch size only)"
    )
    # the second half holds other values (each input rolled along its last dimension), so that a graph
    # mixing samples cannot pass by returning the same output twice
    other = [t.roll(1, dims=-1) if t.dim() > 1 else t for t in tensors]
    try:
        doubled = run([torch.cat([t, o]).detach().cpu().numpy() for t, o in zip(tensors, other)])
        second = run([o.detach().cpu().numpy() for o in other])
        doubled_first = (fresh_run or run)([torch.cat([t, o]).detach().cpu().numpy() for t, o in zip(tensors, other)])
    except Exception as e:  # noqa: BLE001 - a runtime failure at another batch size is the finding
        raise ExportCheckError(
            f"the exported graph fails at batch {2 * n} although its batch is dynamic "
            f"({str(e).splitlines()[0][:200]}); {advice}"
        ) from None
    for a, a2, b, bf in zip(first, second, doubled, doubled_first):
        a, a2, b, bf = np.asarray(a), np.asarray(a2), np.asarray(b), np.asarray(bf)
        if b.ndim and b.shape[0] == 2 * n and a.shape[0] == n:
            for half, ref in ((b[:n], a), (b[n:], a2), (bf[:n], a), (bf[n:], a2)):
                if half.shape != ref.shape:
                    same = False
                elif quantized:
                    same = float(np.linalg.norm(half - ref)) <= 0.01 * max(float(np.linalg.norm(ref)), 1e-12)
                else:
                    same = bool(np.allclose(half, ref, atol=atol, rtol=rtol))
                if not same:
                    raise ExportCheckError(
                        f"the exported graph computes other values at batch {2 * n} than at "
                        f"batch {n} (its batch was fixed while tracing); {advice}"
                    )
    return f"checked at batch {n} and {2 * n}: same outputs per sample"


class RuntimeModule(nn.Module):
    """A compiled runtime model called like the PyTorch model it came from (same positional / keyword
    inputs), returning torch tensors: one tensor, or a tuple when the graph has several outputs.

    Subclasses implement :meth:`run` on the flat list of numpy inputs.
    """

    def __init__(self, input_names: Sequence[str], layout: str | None = None):
        super().__init__()
        self.input_names = list(input_names)
        #: the export's record of nested inputs (:func:`input_layout`): parameter names and key paths
        self.layout: dict[str, list[str]] | None = json.loads(layout) if layout else None

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:  # pragma: no cover - abstract
        """The runtime's outputs for the flat list of numpy inputs, in the graph's input order."""
        raise NotImplementedError

    def _nested(self, args: tuple, kwargs: dict) -> list[Tensor]:
        """The graph's inputs from a call with nested inputs, matched by their key paths."""
        if self.layout is None:
            raise DataError(
                "this exported model was called with nested inputs (a dict, list or tuple), and its file records "
                "no layout to match them by name (export it again with this version of prunekit), so pass its "
                f"inputs as tensors, in order: {', '.join(self.input_names)}"
            )
        pairs = tensor_paths(self.layout["params"], args, kwargs)
        given = dict(pairs)
        want = self.layout["paths"]
        if len(given) != len(pairs) or set(given) != set(want):
            raise DataError(
                f"the exported model takes the tensors {', '.join(want)} (by key path), got {', '.join(given)}"
            )
        return [given[p] for p in want]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the runtime with the inputs as the PyTorch model takes them; torch tensors come back. Tensor
        keyword inputs are matched to the graph's inputs by name, after the positional ones; nested inputs (a
        dict or tuple argument) by their key paths, as the export recorded them. Raises
        :class:`~prunekit.errors.DataError` for a keyword the graph has no input of (or one given twice) and
        when the number of tensor inputs is not the graph's."""
        if any(isinstance(v, _CONTAINERS) for v in (*args, *kwargs.values())):
            tensors = self._nested(args, kwargs)
        elif all(isinstance(a, Tensor) for a in args):
            kwargs = {k: v for k, v in kwargs.items() if isinstance(v, Tensor)}  # flags and None: constants
            rest = self.input_names[len(args) :]
            unknown = sorted(set(kwargs) - set(rest))
            if unknown:
                raise DataError(
                    f"the exported model has no input {unknown[0]!r} after its {len(args)} positional one(s) (not "
                    f"an input, or given twice); its inputs, in order: {', '.join(self.input_names)}"
                )
            tensors = list(args) + [kwargs[name] for name in rest if name in kwargs]
        else:
            tensors = flat_tensors(args, kwargs)
        if len(tensors) != len(self.input_names):
            raise DataError(
                f"the exported model takes {len(self.input_names)} input(s) ({', '.join(self.input_names)}), "
                f"got {len(tensors)}"
            )
        # numpy has no bfloat16: such inputs go in as float32, which the runtime converts as it does float64
        arrays = [(t.float() if t.dtype == torch.bfloat16 else t).detach().cpu().numpy() for t in tensors]
        outs = [torch.from_numpy(np.asarray(o)) for o in self.run(arrays)]
        return outs[0] if len(outs) == 1 else tuple(outs)


def report_path_of(model_file: str | os.PathLike) -> Path:
    """Where an export's report lies: beside the model file, named after it (``lenet.onnx`` ->
    ``lenet.onnx.report.json``, ``lenet.xml`` -> ``lenet.xml.report.json``), so two runtimes' exports of one
    name do not share a report."""
    path = Path(model_file)
    return path.with_name(path.name + ".report.json")


def check_target(path: str | os.PathLike, suffix: str, *, overwrite: bool, companions: Sequence[str] = ()) -> Path:
    """The output file ``path`` (its suffix must be ``suffix``), refused when it, its report
    (:func:`report_path_of`) or a companion file (``path`` with each suffix of ``companions``) exists without
    ``overwrite``."""
    path = Path(path)
    if path.suffix != suffix:
        raise CheckpointError(f"the output file must end in {suffix}, got {path}; e.g. {path.with_suffix(suffix)}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give a file path such as {path / ('model' + suffix)}")
    for existing in (path, report_path_of(path), *(path.with_suffix(s) for s in companions)):
        if existing.exists() and not overwrite:
            raise CheckpointError(
                f"{existing} already exists; choose another path or pass overwrite=True to replace it"
            )
    return path


@contextmanager
def staged_files(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; every file written into it is moved next to ``target``
    (same names) when the block ends without an error, and nothing is left behind when it fails."""
    make_folder(target.parent)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial"))
    try:
        yield tmp
        for f in sorted(tmp.iterdir()):
            os.replace(f, target.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def files_size(paths: Sequence[Path]) -> int:
    """The total size in bytes of the files among ``paths`` that exist."""
    return sum(p.stat().st_size for p in paths if p.is_file())
