"""``prunekit export`` and ``prunekit run``: the command-line forms of :func:`prunekit.deploy.export_onnx` /
:func:`prunekit.deploy.export_openvino` and of :class:`prunekit.deploy.recipe.Recipe`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prunekit.cli._common import (
    calibration_data,
    check_json_out,
    console,
    default_input_shape,
    err_console,
    fail,
    parse_shape,
    write_json_out,
)
from prunekit.errors import PrunekitError

# the commands register themselves on the typer application on import; only these names are imported elsewhere
__all__: list[str] = []

#: the runtimes ``prunekit export --to`` accepts
RUNTIMES = ("onnx", "openvino")


def export(
    model: Annotated[
        str,
        typer.Argument(help="torchvision:NAME, timm:NAME, prunekit:NAME (see `prunekit models`) or a saved model dir"),
    ],
    to: Annotated[str, typer.Option("--to", help="onnx or openvino")],
    out: Annotated[
        Path,
        typer.Option(
            help="output directory (model.onnx or model.xml/.bin, and the report beside it: model.onnx.report.json)"
        ),
    ],
    quantize: Annotated[
        str | None,
        typer.Option(help="openvino only: int8-weights (weight-only) or int8 (weights and activations, calibrated)"),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="calibration data set (--quantize int8 only: mnist or fashion-mnist; default: the model's task data)"
        ),
    ] = None,
    calibration_batches: Annotated[int, typer.Option(help="number of calibration batches of 64")] = 8,
    precision: Annotated[str, typer.Option(help="openvino only: inference precision hint f32, bf16 or f16")] = "f32",
    sparse_weights: Annotated[
        bool | None,
        typer.Option(
            "--sparse-weights/--no-sparse-weights",
            help="openvino only: CPU sparse-weight decompression (default: on for int8 with >= 70%-sparse "
            "Linear layers)",
        ),
    ] = None,
    sparse_rate: Annotated[
        float, typer.Option(help="openvino only: zeros from which a layer runs the sparse kernel")
    ] = 0.7,
    sparse_initializers: Annotated[
        bool,
        typer.Option(
            "--sparse-initializers/--dense-initializers",
            help="onnx only: store weights under 1/3 density in ONNX's sparse form (smaller file)",
        ),
    ] = True,
    opset: Annotated[
        int | None,
        typer.Option(help="onnx only: the ONNX opset to write (13 to the installed onnx's newest; default: 18)"),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="example input shape (batch first; default: the one the model carries or its record holds)"),
    ] = None,
    dynamic: Annotated[
        bool, typer.Option("--dynamic/--static", help="keep input dimensions dynamic or fix the example's")
    ] = True,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="dense model to time against (a spec or saved dir; default: a saved model's recorded source)"
        ),
    ] = None,
    latency: Annotated[
        bool, typer.Option("--latency/--no-latency", help="time the model (against the dense model and PyTorch)")
    ] = True,
    threads: Annotated[int, typer.Option(help="threads for the runtimes and PyTorch while timing")] = 1,
    latency_budget: Annotated[float, typer.Option(help="seconds of interleaved timing per comparison")] = 3.0,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output (here a non-empty --out)")] = False,
    seed: Annotated[int, typer.Option(help="random seed (of the example inputs and calibration sample)")] = 0,
) -> None:
    """Export MODEL to ONNX (checked in ONNX Runtime) or OpenVINO IR (optionally int8 with NNCF), print the
    report and write it with the model into --out (like prunekit.deploy.export_onnx / export_openvino)."""
    import torch

    import prunekit as pk
    from prunekit.deploy import export_onnx, export_openvino, report_path_of
    from prunekit.errors import DataError, UnknownNameError
    from prunekit.models import source_of, task_evaluation
    from prunekit.serialization import atomic_directory, check_output_directory, read_record

    try:
        if to not in RUNTIMES:
            raise UnknownNameError("export runtime (--to)", to, RUNTIMES)
        if to == "onnx":
            given = [
                flag
                for flag, value in (
                    ("--quantize", quantize),
                    ("--calibration", calibration),
                    ("--sparse-weights", sparse_weights),
                )
                if value is not None
            ]
            if precision != "f32":
                given.append("--precision")
            if sparse_rate != 0.7:
                given.append("--sparse-rate")
            if given:
                raise pk.ConfigError(
                    f"{', '.join(given)} apply(ies) to --to openvino only; ONNX export is fp32 "
                    "(drop them, or export with --to openvino)"
                )
        elif not sparse_initializers:
            raise pk.ConfigError("--dense-initializers applies to --to onnx only")
        elif opset is not None:
            raise pk.ConfigError("--opset applies to --to onnx only (OpenVINO IR has no opset to choose)")
        check_output_directory(out, overwrite=overwrite)
        record = read_record(model) if Path(model).is_dir() else None
        m = pk.build_model(model)
        spec = source_of(m) or (record or {}).get("source") or model
        shape = parse_shape(input_shape) if input_shape else default_input_shape(m, record)
        if shape is None:
            raise DataError(
                f"no example input shape is known for {model}: pass --input-shape with the shape of one batch "
                "the model takes (integers, batch first, comma-separated)"
            )
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        base, label = None, ""
        if baseline is not None:
            base, label = pk.build_model(baseline), f"--baseline {baseline}"
        elif record is not None and record.get("source") and latency:
            base, label = pk.build_model(record["source"]), f"the saved model's dense source {record['source']}"
            err_console.print(
                f"[yellow]note:[/yellow] timing against the dense source model {record['source']} "
                "(pass --baseline to choose)",
                highlight=False,
            )
        calib = None
        if quantize == "int8":
            task = task_evaluation(spec)
            if calibration:
                calib = calibration_data(calibration, calibration_batches, seed)
            elif task is not None:
                calib = task[2](calibration_batches, seed)
                err_console.print(
                    f"[yellow]note:[/yellow] calibrating on the model's task data ({calibration_batches} "
                    "batches of 64 from its training split); pass --calibration to choose",
                    highlight=False,
                )
        elif calibration:
            raise pk.ConfigError(
                "--calibration is used only by --quantize int8 (int8 activations): drop it or pass --quantize int8"
            )
        with atomic_directory(out, overwrite=overwrite) as tmp:
            if to == "onnx":
                report = export_onnx(
                    m,
                    x,
                    tmp / "model.onnx",
                    baseline=base,
                    baseline_label=label,
                    dynamic=dynamic,
                    sparse_initializers=sparse_initializers,
                    opset=opset,
                    measure_latency=latency,
                    threads=threads,
                    latency_budget_s=latency_budget,
                )
            else:
                report = export_openvino(
                    m,
                    x,
                    tmp / "model.xml",
                    quantize=quantize,
                    calibration=calib,
                    precision=precision,
                    sparse_weights=sparse_weights,
                    sparse_rate=sparse_rate,
                    dynamic=dynamic,
                    baseline=base,
                    baseline_label=label,
                    measure_latency=latency,
                    threads=threads,
                    latency_budget_s=latency_budget,
                )
            report.path = report.path.replace(str(tmp), str(out))
            report.files = [f.replace(str(tmp), str(out)) for f in report.files]
            report.to_json(report_path_of(tmp / Path(report.path).name))
        console.print(str(report), highlight=False, markup=False, soft_wrap=True)
        console.print(f"saved to {out}")
    except PrunekitError as e:
        fail(e)


def run(
    recipe: Annotated[
        Path,
        typer.Argument(
            help="a recipe YAML file: model, input_shape, data, stages (prune, fine_tune, quantize, export)"
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would run and run nothing (the recipe, validated)")
    ] = False,
    json_out: Annotated[
        Path | None,
        typer.Option(
            "--json-out",
            help="write the result as JSON to this file (the stage table; checked before the recipe runs; an "
            "existing file is refused unless --overwrite)",
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="replace an existing output (here the --json-out file; the export folder has the recipe's own "
            "`overwrite: true`)"
        ),
    ] = False,
) -> None:
    """Run a prune -> fine-tune -> quantise -> export recipe (like prunekit.deploy.Recipe.from_yaml(path).run()),
    validated whole before anything runs; prints accuracy, parameters, sparsity and latency after each stage."""
    import json

    from prunekit.deploy.recipe import Recipe

    try:
        check_json_out(json_out, overwrite=overwrite)  # before the recipe runs
        r = Recipe.from_yaml(recipe)
        if dry_run:
            console.print(json.dumps(r.to_dict(), indent=2), highlight=False, markup=False)
            console.print("the recipe is valid")
            return
        result = r.run()
        console.print(str(result), highlight=False, markup=False, soft_wrap=True)
        if json_out is not None:
            write_json_out(json_out, json.loads(json.dumps(result.to_dict(), default=str)), overwrite=overwrite)
    except PrunekitError as e:
        fail(e)
