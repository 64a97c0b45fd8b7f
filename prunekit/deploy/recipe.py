"""Prune + fine-tune + quantise + export as one recipe (the survey's fusion axis, pruning with quantisation).

A recipe is a YAML file (or the same :class:`Recipe` object built in Python) whose stages run in this order:
``prune`` -> ``fine_tune`` (optionally distilling from the dense model) -> ``quantize`` -> ``export``. Every
stage is a typed, frozen dataclass; the whole recipe is validated (names, values, stage order, what each
stage needs, the output folder) before anything runs. Each stage reports the task accuracy (when the recipe
has data), parameters, weight sparsity and latency at the recipe's input shape.

.. code-block:: yaml

    model: prunekit:mnist-cnn
    input_shape: [1, 1, 28, 28]   # optional: built-in, torchvision and timm models carry theirs
    data: mnist
    stages:
      - prune: {method: magnitude, sparsity: 0.9}
      - fine_tune: {epochs: 1, lr: 0.0001, steps_per_epoch: 100, distil: 0.5}
      - quantize: {backend: openvino, mode: int8}
      - export: {to: openvino, out: cnn-int8}
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError, InvalidSparsityError, MissingDataError, UnknownNameError

__all__ = ["DATA", "ExportStage", "FineTuneStage", "PruneStage", "QuantizeStage", "Recipe", "RecipeResult", "STAGES"]

DATA = ("mnist", "fashion-mnist")


@dataclass(frozen=True)
class PruneStage:
    """``pk.prune(model, method, sparsity=..., pattern=..., allocation=..., **options)``."""

    method: str
    sparsity: float
    pattern: str | None = None
    allocation: str | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FineTuneStage:
    """Fine-tuning with the masks on (pruned weights stay zero), with :class:`prunekit.train.Trainer`.
    ``distil`` > 0 mixes in distillation from the dense model (the trainer's ``kd_alpha``, Hinton et al. 2015)."""

    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64
    optimizer: str = "adam"
    steps_per_epoch: int | None = None
    distil: float = 0.0


@dataclass(frozen=True)
class QuantizeStage:
    """``backend: torch, mode: dynamic-int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers
    (int8 weights, activations quantised on the fly). ``backend: openvino``: NNCF at the export stage,
    ``mode: int8`` (weights and activations, calibrated on ``calibration_batches`` batches of 64 training
    inputs) or ``int8-weights``."""

    backend: str
    mode: str
    calibration_batches: int = 8


@dataclass(frozen=True)
class ExportStage:
    """:func:`prunekit.deploy.export_onnx` / :func:`export_openvino` into the folder ``out`` (written whole;
    a non-empty one is refused unless ``overwrite``)."""

    to: str
    out: str
    overwrite: bool = False


STAGES: dict[str, type] = {
    "prune": PruneStage,
    "fine_tune": FineTuneStage,
    "quantize": QuantizeStage,
    "export": ExportStage,
}
_ORDER = list(STAGES)
_QUANT_MODES = {"torch": ("dynamic-int8",), "openvino": ("int8", "int8-weights")}


def _typed(cls: type, where: str, raw: Any) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} takes a mapping of options, got {raw!r}")
    names = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(names)
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {sorted(unknown)}; it accepts: {', '.join(names)}")
    try:
        obj = cls(**raw)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}; it accepts: {', '.join(names)}") from None
    for name, f in names.items():
        value = getattr(obj, name)
        expected: dict[str, type | tuple[type, ...]] = {"int": int, "float": (int, float), "str": str, "bool": bool}
        base = str(f.type).split(" | ")[0]
        if (
            base in expected
            and value is not None
            and not (isinstance(value, expected[base]) and not (base != "bool" and isinstance(value, bool)))
        ):
            raise ConfigError(f"{where}.{name} must be {base}, got {value!r}")
    return obj


def _recorded_shape(model: str) -> tuple[int, ...] | None:
    """The example input shape a saved model's record holds (None: not a saved folder, or none recorded)."""
    from prunekit.serialization import read_record

    if not Path(model).is_dir():
        return None
    shape = read_record(model).get("input_shape")
    return tuple(int(d) for d in shape) if isinstance(shape, list) and shape else None


@dataclass(frozen=True)
class Recipe:
    """A prune -> fine-tune -> quantise -> export recipe; see the module docstring. ``model``: a spec as
    :func:`prunekit.build_model` takes it; ``input_shape``: the example batch (latency is timed on it; None:
    the shape the built model carries, as every ``prunekit:``, ``torchvision:`` and ``timm:`` model and a
    saved model's record do);
    ``data``: ``mnist`` or ``fashion-mnist`` for fine-tuning, calibration and accuracy (None: the model's
    own task data, known for ``prunekit:mnist-cnn``); ``eval_images``: test images for the accuracy."""

    model: str
    input_shape: tuple[int, ...] | None
    stages: tuple[Any, ...]
    data: str | None = None
    eval_images: int = 2000
    seed: int = 0
    threads: int = 1

    @classmethod
    def from_dict(cls, raw: Any) -> Recipe:
        """Parse and validate a recipe mapping (as read from YAML). Raises
        :class:`~prunekit.errors.ConfigError` naming the offending field and what it accepts,
        :class:`~prunekit.errors.UnknownNameError` for an unknown stage, and what :meth:`validate` raises."""
        if not isinstance(raw, dict):
            raise ConfigError(f"a recipe is a mapping with model, input_shape, stages; got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"recipe: unknown key(s) {sorted(unknown)}; it accepts: {', '.join(sorted(known))}")
        for key in ("model", "stages"):
            if key not in raw:
                raise ConfigError(f"recipe: {key} is required")
        if not isinstance(raw["stages"], list) or not raw["stages"]:
            raise ConfigError(
                "recipe: stages must be a non-empty list such as [{prune: {method: magnitude, sparsity: 0.5}}]"
            )
        stages = []
        for i, item in enumerate(raw["stages"]):
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(f"stages[{i}] must be one mapping {{stage: options}}, got {item!r}")
            ((name, options),) = item.items()
            if name not in STAGES:
                raise UnknownNameError("recipe stage", name, STAGES)
            stages.append(_typed(STAGES[name], f"stages[{i}].{name}", options))
        shape = raw.get("input_shape")
        ok = isinstance(shape, (list, tuple)) and shape and all(isinstance(s, int) and s > 0 for s in shape)
        if shape is not None and not ok:
            raise ConfigError(
                f"recipe: input_shape takes positive integers such as [1, 1, 28, 28] (or leave it out for a model "
                f"that carries its shape), got {shape!r}"
            )
        recipe = cls(**{**raw, "input_shape": tuple(shape) if shape else None, "stages": tuple(stages)})
        recipe.validate()
        return recipe

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> Recipe:
        """Read and validate the recipe YAML file at ``path`` (see :meth:`from_dict`). Raises
        :class:`~prunekit.errors.ConfigError` when the file is missing or not valid YAML."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"recipe file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"recipe file {path} is not valid YAML: {e}") from None
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as the mapping :meth:`from_dict` reads (stages as ``{stage name: options}``)."""
        d = asdict(self)
        d["input_shape"] = list(self.input_shape) if self.input_shape else None
        d["stages"] = [{_name(s): asdict(s)} for s in self.stages]
        return d

    def validate(self) -> None:
        """Check everything that can be checked without running: names, values, stage order, what each stage
        needs (data, an export after an OpenVINO quantisation) and the output folder. Raises
        :class:`~prunekit.errors.UnknownNameError` for an unknown model spec, data set, method, backend, mode or
        export target, :class:`~prunekit.errors.InvalidSparsityError`, :class:`~prunekit.errors.MissingDataError`
        for a stage that needs data the recipe does not have, :class:`~prunekit.errors.ConfigError` for other
        invalid values or orders, and :class:`~prunekit.errors.CheckpointError` for a non-empty export folder
        without ``overwrite``."""
        from prunekit.methods.base import resolve_method
        from prunekit.models import MODELS, task_evaluation
        from prunekit.serialization import check_output_directory

        if self.model.startswith("prunekit:"):
            MODELS.get(self.model.split(":", 1)[1])
        elif not (self.model.startswith(("torchvision:", "timm:")) or Path(self.model).is_dir()):
            raise UnknownNameError(
                "model spec", self.model, ["torchvision:NAME", "timm:NAME", "prunekit:NAME", "a saved model directory"]
            )
        if self.data is not None and self.data not in DATA:
            raise UnknownNameError("recipe data", self.data, DATA)
        if self.eval_images < 1 or self.threads < 1:
            raise ConfigError("eval_images and threads must be at least 1")
        names = [_name(s) for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"each stage may appear once, got {names}")
        if names != sorted(names, key=_ORDER.index):
            raise ConfigError(f"stages run in the order {' -> '.join(_ORDER)}; got {' -> '.join(names)}")
        has_data = self.data is not None or task_evaluation(self.model) is not None
        by = {_name(s): s for s in self.stages}
        if (p := by.get("prune")) is not None:
            resolve_method(p.method)
            if not 0 <= p.sparsity < 1:
                raise InvalidSparsityError(f"stages.prune.sparsity must lie in [0, 1), got {p.sparsity}")
        if (f := by.get("fine_tune")) is not None:
            if not has_data:
                raise MissingDataError("fine_tune needs data: set data: mnist or fashion-mnist in the recipe")
            if (
                f.epochs < 1
                or f.lr <= 0
                or f.batch_size < 1
                or not 0 <= f.distil <= 1
                or f.optimizer not in ("sgd", "adam")
            ):
                raise ConfigError(
                    "fine_tune: epochs and batch_size >= 1, lr > 0, distil in [0, 1], optimizer sgd or adam"
                )
        q, e = by.get("quantize"), by.get("export")
        if q is not None:
            if q.backend not in _QUANT_MODES:
                raise UnknownNameError("quantize backend", q.backend, _QUANT_MODES)
            if q.mode not in _QUANT_MODES[q.backend]:
                raise UnknownNameError(f"quantize mode for backend {q.backend}", q.mode, _QUANT_MODES[q.backend])
            if q.backend == "openvino" and (e is None or e.to != "openvino"):
                raise ConfigError(
                    "quantize with backend openvino happens when exporting: add an export stage "
                    "{export: {to: openvino, out: DIR}}"
                )
            if q.backend == "torch" and e is not None:
                raise ConfigError(
                    "a model quantised by torch (quantize_dynamic) cannot be exported to ONNX or "
                    "OpenVINO here; quantise with backend openvino and export to openvino instead"
                )
            if q.mode == "int8" and not has_data:
                raise MissingDataError("quantize mode int8 calibrates on data: set data: mnist or fashion-mnist")
            if q.calibration_batches < 1:
                raise ConfigError("quantize.calibration_batches must be at least 1")
        if e is not None:
            if e.to not in ("onnx", "openvino"):
                raise UnknownNameError("export target", e.to, ("onnx", "openvino"))
            if not e.overwrite:
                out = Path(e.out)
                if out.is_dir() and any(out.iterdir()):
                    raise CheckpointError(
                        f"export.out {out} already exists and is not empty; choose another folder or set "
                        "`overwrite: true` in the export stage (ExportStage(overwrite=True) in Python)"
                    )
            check_output_directory(e.out, overwrite=e.overwrite)

    def run(self) -> RecipeResult:
        """Run the stages in order and return a :class:`RecipeResult` (also written into the export folder as
        ``recipe.json`` when there is an export stage)."""
        return _run(self)


def _name(stage: Any) -> str:
    return next(k for k, v in STAGES.items() if isinstance(stage, v))


@dataclass
class RecipeResult:
    """One row per stage (``start`` is the model as built): accuracy (None without data), parameters, weight
    sparsity, latency in ms at the input shape, seconds the stage took, notes; and the export's report."""

    recipe: dict[str, Any]
    stages: list[dict[str, Any]]
    export: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: the recipe, the stage rows and the export report."""
        return asdict(self)

    def __str__(self) -> str:
        rows = ["stage        accuracy  params      zeros   latency ms  seconds  notes"]
        for s in self.stages:
            acc = f"{100 * s['accuracy']:.2f}%" if s.get("accuracy") is not None else "-"
            lat = f"{s['latency_ms']:.3f}" if s.get("latency_ms") is not None else "-"
            zeros = f"{100 * s['weight_sparsity']:5.1f}%" if s.get("weight_sparsity") is not None else "     -"
            params = f"{s['params']:,}" if s.get("params") is not None else "-"
            rows.append(
                f"{s['stage']:<12} {acc:>8}  {params:>10}  {zeros}"
                f"  {lat:>10}  {s['seconds']:7.1f}  {'; '.join(s.get('notes', []))}"
            )
        return "\n".join(rows)


_Split = tuple[torch.Tensor, torch.Tensor]  # images (N, 1, 28, 28), int64 labels (N,)


def _data(recipe: Recipe) -> tuple[_Split, _Split, str] | None:
    from prunekit import datasets

    spec = recipe.model
    if recipe.data is None and spec != "prunekit:mnist-cnn":
        return None
    name = recipe.data or "mnist"
    load = datasets.load_mnist if name == "mnist" else datasets.load_fashion_mnist
    (x, y), (xt, yt) = load("train"), load("test")
    note = f"{name}: train split for fine-tuning / calibration, first {recipe.eval_images} test images for accuracy"
    if spec == "prunekit:mnist-cnn" and name == "mnist":  # the pretrained CNN's own input transform
        x, xt = datasets.mnist_normalize(x), datasets.mnist_normalize(xt)
        note += " (mnist_normalize'd, as the pretrained CNN expects)"
    return (x, y), (xt[: recipe.eval_images], yt[: recipe.eval_images]), note


def _row(
    stage: str,
    model: nn.Module,
    x: torch.Tensor,
    test: _Split | None,
    threads: int,
    start: float,
    notes: list[str],
    eval_batch: int = 500,
) -> dict[str, Any]:
    from prunekit.deploy._common import weight_sparsity
    from prunekit.eval.accuracy import accuracy
    from prunekit.eval.latency import time_model

    params = sum(p.numel() for p in model.parameters())
    sparsity = weight_sparsity(model)
    qlinear = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    if qlinear:  # torch-quantised Linear layers keep their weights packed, outside parameters()
        ws = [m.weight().int_repr() for m in qlinear]
        params += sum(w.numel() + m.out_features for w, m in zip(ws, qlinear))
        zeros = sum(int((w == 0).sum()) for w in ws)
        others = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
        zeros += sum(int((w == 0).sum()) for w in others)
        sparsity = zeros / (sum(w.numel() for w in ws) + sum(w.numel() for w in others))
    # 500 at a time, as before: a torch-quantised model's outputs depend on the batch (activation ranges); an
    # exported model at the batch it was exported with (a batch of 1 is fixed in the graph)
    acc = accuracy(model, *test, batch=eval_batch) if test is not None else None
    return {
        "stage": stage,
        "accuracy": acc,
        "params": params or None,
        "weight_sparsity": sparsity,
        "latency_ms": time_model(model, x, threads=threads).median_ms,
        "seconds": round(time.perf_counter() - start, 2),
        "notes": notes,
    }


def _run(recipe: Recipe) -> RecipeResult:
    from prunekit.api import prune
    from prunekit.apply.masks import squash_masks_
    from prunekit.methods.base import resolve_method
    from prunekit.models import build_model, input_shape_of
    from prunekit.progress import ProgressBar

    recipe.validate()
    torch.manual_seed(recipe.seed)
    data = _data(recipe)
    test = data[1] if data else None
    t0 = time.perf_counter()
    model = build_model(recipe.model).eval()
    shape = recipe.input_shape or input_shape_of(model) or _recorded_shape(recipe.model)
    if shape is None:
        raise ConfigError(
            f"recipe: {recipe.model} carries no input shape; add input_shape: [batch, ...] (e.g. [1, 3, 224, 224])"
        )
    dense = copy.deepcopy(model)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(recipe.seed))
    start_notes = [data[2]] if data else ["no data: accuracy not measured"]
    rows = [_row("start", model, x, test, recipe.threads, t0, start_notes)]
    export_report = None
    by = {_name(s): s for s in recipe.stages}
    with ProgressBar("recipe", len(recipe.stages)) as bar:
        for stage in recipe.stages:
            name, t0, notes = _name(stage), time.perf_counter(), []
            if name == "prune":
                calib = None
                if data is not None and resolve_method(stage.method).needs_data:
                    (xtr, ytr) = data[0]
                    calib = [(xtr[i : i + 64], ytr[i : i + 64]) for i in range(0, 512, 64)]
                prune(
                    model,
                    stage.method,
                    sparsity=stage.sparsity,
                    pattern=stage.pattern,
                    allocation=stage.allocation,
                    example_inputs=x,
                    calibration=calib,
                    measure=False,
                    seed=recipe.seed,
                    **stage.options,
                )
                notes.append(f"{stage.method} at {stage.sparsity:g}")
            elif name == "fine_tune":
                from prunekit.train import TrainConfig, Trainer

                assert data is not None  # validate() refuses fine_tune without data
                cfg = TrainConfig(
                    epochs=stage.epochs,
                    lr=stage.lr,
                    batch_size=stage.batch_size,
                    optimizer=stage.optimizer,
                    steps_per_epoch=stage.steps_per_epoch,
                    kd_alpha=stage.distil,
                    weight_decay=0.0,
                    lr_schedule="constant",
                    seed=recipe.seed,
                    progress=False,
                )
                Trainer(model, data[0], None, cfg, teacher=dense if stage.distil > 0 else None).fit()
                model.eval()
                notes.append(
                    f"{stage.epochs} epoch(s), masks kept"
                    + (f", distilled (alpha {stage.distil:g})" if stage.distil else "")
                )
            elif name == "quantize" and stage.backend == "torch":
                from torch.ao.quantization import quantize_dynamic

                squash_masks_(model)  # quantize_dynamic matches nn.Linear exactly: a masked layer would be skipped
                model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
                notes.append("torch quantize_dynamic: Linear int8 weights, activations quantised on the fly")
            elif name == "quantize":
                notes.append(f"NNCF {stage.mode} applied at the export stage")
            elif name == "export":

                def finish(ev: nn.Module, report: dict[str, Any], folder: Path, t0: float = t0) -> None:
                    # inside the export's temporary folder: the folder appears only once this succeeds
                    row = _row("export", ev, x, test, recipe.threads, t0, [f"{report['to']}: {report['precision']}"],
                               eval_batch=len(x))  # fmt: skip
                    rows.append({**row, "params": None, "weight_sparsity": report["weight_sparsity"]})
                    done = RecipeResult(recipe.to_dict(), rows, report)
                    (folder / "recipe.json").write_text(json.dumps(done.to_dict(), indent=2, default=str))

                export_report = _export(recipe, stage, by.get("quantize"), model, dense, x, data, finish)
                bar.advance(1, f"recipe: {name}")
                continue
            rows.append(_row(name, model, x, test, recipe.threads, t0, notes))
            bar.advance(1, f"recipe: {name}")
    return RecipeResult(recipe.to_dict(), rows, export_report)


def _export(
    recipe: Recipe,
    stage: ExportStage,
    quant: QuantizeStage | None,
    model: nn.Module,
    dense: nn.Module,
    x: torch.Tensor,
    data: tuple[_Split, _Split, str] | None,
    finish: Callable[[nn.Module, dict[str, Any], Path], None],
) -> dict[str, Any]:
    """Export into ``stage.out`` through a temporary folder; ``finish(runtime module, report, folder)`` runs
    in that folder before it takes the place of ``stage.out``, so a failure there leaves nothing behind."""
    from prunekit.deploy._common import RuntimeModule, report_path_of
    from prunekit.deploy.onnx import export_onnx, load_onnx
    from prunekit.deploy.openvino import export_openvino, load_openvino
    from prunekit.serialization import atomic_directory

    with atomic_directory(stage.out, overwrite=stage.overwrite) as tmp:
        if stage.to == "onnx":
            report = export_onnx(
                model,
                x,
                tmp / "model.onnx",
                baseline=dense,
                baseline_label="the recipe's dense model",
                threads=recipe.threads,
            )
        else:
            calib = None
            if quant is not None and quant.mode == "int8":
                assert data is not None  # validate() refuses int8 calibration without data
                xtr, ytr = data[0]
                g = torch.Generator().manual_seed(recipe.seed)
                idx = torch.randperm(len(xtr), generator=g)[: 64 * quant.calibration_batches]
                calib = [(xtr[idx[i : i + 64]], ytr[idx[i : i + 64]]) for i in range(0, len(idx), 64)]
            report = export_openvino(
                model,
                x,
                tmp / "model.xml",
                quantize=quant.mode if quant else None,
                calibration=calib,
                baseline=dense,
                baseline_label="the recipe's dense model",
                threads=recipe.threads,
            )
        report.path = report.path.replace(str(tmp), str(stage.out))
        report.files = [f.replace(str(tmp), str(stage.out)) for f in report.files]
        report.to_json(report_path_of(tmp / ("model.onnx" if stage.to == "onnx" else "model.xml")))
        module: RuntimeModule
        if stage.to == "onnx":
            module = load_onnx(tmp / "model.onnx", threads=recipe.threads)
        else:
            module = load_openvino(tmp / "model.xml", threads=recipe.threads)
        out = {**report.to_dict(), "to": stage.to}
        finish(module, out, tmp)
    return out
