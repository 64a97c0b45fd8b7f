"""``prunekit prune``, ``report``, ``methods``, ``criteria``, ``models`` and ``demo``: the masking and structural
pruning of a vision model (like :func:`prunekit.prune`), the measurement of a saved model, and the listings of
what the registries hold."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli._common import calibration_data, console, default_input_shape, err_console, fail, parse_shape
from prunekit.cli.bench import is_results_store, report_results
from prunekit.errors import PrunekitError

# the commands register themselves on the typer application on import; only these names are imported elsewhere
__all__: list[str] = []


def _options(items: list[str] | None) -> dict:
    """``--option key=value`` pairs as Python values (JSON literals: 0.5, true, "text", [1, 2]; else a string)."""
    from prunekit.errors import ConfigError

    options: dict = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option takes key=value, got {item!r} (e.g. --option strict=false)")
        literals = {"True": True, "False": False, "None": None}
        name = key.strip().replace("-", "_")
        if name in _FLAG_OPTIONS:
            flag = _FLAG_OPTIONS[name]
            raise ConfigError(f"--option {name} duplicates the flag {flag}: pass {flag} instead")
        try:
            options[name] = literals[value] if value in literals else json.loads(value)
        except json.JSONDecodeError:
            options[name] = value
    return options


#: settings that `prunekit prune` passes from its own flags, so --option cannot give them again
_FLAG_OPTIONS = {
    "sparsity": "--sparsity",
    "pattern": "--pattern",
    "allocation": "--allocation",
    "ignore": "--ignore",
    "example_inputs": "--input-shape",
    "calibration": "--calibration",
    "seed": "--seed",
    "skip_incompatible": "--skip-incompatible",
    "prune_classifier": "--prune-classifier",
    "measure_latency": "--latency/--no-latency",
}


def prune(
    model: Annotated[
        str,
        typer.Argument(help="torchvision:NAME, timm:NAME, prunekit:NAME (see `prunekit models`) or a saved model dir"),
    ],
    method: Annotated[
        str | None,
        typer.Option("--method", "-m", help="a registered pruning method (see `prunekit methods`; default magnitude)"),
    ] = None,
    criterion: Annotated[
        str | None,
        typer.Option(
            "--criterion",
            "-c",
            help="compose a method from a criterion (see `prunekit criteria`) with "
            "--pattern and --allocation; excludes --method",
        ),
    ] = None,
    sparsity: Annotated[
        float | None,
        typer.Option(
            "--sparsity",
            "-s",
            help="fraction of weights to remove (in [0, 1)); default 0.5, or what an N:M --pattern fixes",
        ),
    ] = None,
    pattern: Annotated[
        str | None,
        typer.Option(
            help="what is removed (unstructured, N:M such as 2:4, RxC blocks such as 4x4, channel: masked "
            "rows; physical: physical-channel, head, layer, embedding)"
        ),
    ] = None,
    allocation: Annotated[
        str | None,
        typer.Option(
            help="how the sparsity is spread over the layers (uniform, global, erk, lamp, owl; default: the method's)"
        ),
    ] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="module name to keep dense (repeatable)")] = None,
    out: Annotated[Path | None, typer.Option(help="output directory (the pruned model and its report)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing output (here a non-empty --out)")] = False,
    sparse: Annotated[bool, typer.Option("--sparse/--dense", help="save in the sparse (bitmask) format")] = False,
    input_shape: Annotated[
        str | None,
        typer.Option(help="example input shape (batch first; default: the one the model carries or its record holds)"),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            help="calibration data set (for data-driven methods: mnist or fashion-mnist; default: the "
            "model's task data)"
        ),
    ] = None,
    calibration_batches: Annotated[int, typer.Option(help="number of calibration batches of 64")] = 8,
    seed: Annotated[
        int, typer.Option(help="random seed (of the example inputs, the calibration draw and the method)")
    ] = 0,
    skip_incompatible: Annotated[bool, typer.Option(help="leave layers that do not fit the pattern dense")] = False,
    prune_classifier: Annotated[bool, typer.Option(help="also prune the final classifier")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time the model (before and after)")] = True,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="a method option key=value, as in Python (repeatable)")
    ] = None,
) -> None:
    """Prune MODEL with METHOD (or a composition: --criterion with --pattern and --allocation), print the
    before/after report and the task metric where prunekit knows it (like prunekit.prune)."""
    import torch

    import prunekit as pk
    from prunekit.errors import ConfigError
    from prunekit.models import is_pretrained, source_of, task_evaluation
    from prunekit.serialization import atomic_directory, check_output_directory, read_record

    try:
        if method is not None and criterion is not None:
            raise ConfigError(
                "pass either --method NAME or --criterion NAME (with --pattern and --allocation), not both"
            )
        if out is not None:
            check_output_directory(out, overwrite=overwrite)
        options = _options(option)
        chosen: str | pk.Pruner = method or "magnitude"
        if criterion is not None:  # a composition without a registered name
            chosen = pk.Pruner(criterion=criterion, granularity=pattern, allocation=allocation)
            pattern = allocation = None
        m_obj = pk.methods.resolve_method(chosen)
        record = read_record(model) if Path(model).is_dir() else None
        m = pk.build_model(model)
        spec = source_of(m) or (record or {}).get("source") or model
        if is_pretrained(m) is False:
            err_console.print(
                f"[yellow]note:[/yellow] {spec} has random-init weights (no pretrained weights found locally), so "
                "accuracy after pruning means nothing; sizes, FLOPs and latency still do",
                highlight=False,
            )
        shape = parse_shape(input_shape) if input_shape else default_input_shape(m, record)
        if shape is None:
            err_console.print(
                f"[yellow]note:[/yellow] no example input shape is known for {spec}: FLOPs and latency are not "
                "measured (pass --input-shape with the shape of one batch the model takes)",
                highlight=False,
            )
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) if shape else None
        task = task_evaluation(spec) if record is None else task_evaluation(record.get("source") or "")
        if calibration:
            calib = calibration_data(calibration, calibration_batches, seed)
        elif m_obj.needs_data and task is not None:
            calib = task[2](calibration_batches, seed)
            err_console.print(
                f"[yellow]note:[/yellow] calibrating on the model's task data ({calibration_batches} "
                "batches of 64 from its training split); pass --calibration to choose",
                highlight=False,
            )
        else:
            calib = None
        metric_before = task[1](m) if task is not None else None
        if sparsity is None:  # 0.5, or what an N:M pattern fixes
            from prunekit.granularity.patterns import NM, parse_pattern

            fixed = parse_pattern(chosen.granularity if isinstance(chosen, pk.Pruner) else pattern)
            sparsity = fixed.fixed_sparsity if isinstance(fixed, NM) else 0.5
        report = pk.prune(
            m,
            chosen,
            sparsity=sparsity,
            pattern=pattern,
            allocation=allocation,
            ignore=ignore or None,
            example_inputs=x,
            calibration=calib,
            seed=seed,
            skip_incompatible=skip_incompatible,
            prune_classifier=prune_classifier,
            measure_latency=latency,
            **options,
        )
        console.print(report)
        payload = report.to_dict()
        if task is not None and metric_before is not None:
            metric_after = task[1](m)
            payload["task"] = {"metric": task[0], "before": metric_before, "after": metric_after}
            console.print(f"{task[0]}: {100 * metric_before:.2f}% -> {100 * metric_after:.2f}%", highlight=False)
        if out is not None:
            pk.squash_masks_(m)
            with atomic_directory(out, overwrite=overwrite) as tmp:
                pk.save_model(
                    m,
                    tmp,
                    sparse=sparse,
                    source=spec if record is None else record.get("source"),
                    report=payload,
                    extra={"input_shape": list(shape) if shape else None},
                )
            console.print(f"saved to {out}")
    except PrunekitError as e:
        fail(e)


def report(
    path: Annotated[
        Path, typer.Argument(help="a saved prunekit model directory, or a results store from `prunekit bench`")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    input_shape: Annotated[
        str | None, typer.Option(help="example input shape (for FLOPs and latency, e.g. 1,3,224,224)")
    ] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time the model")] = True,
    out: Annotated[
        Path | None,
        typer.Option(
            help="output directory (results store only: tables, plots and HTML; default: STORE without "
            "its suffix + -report)"
        ),
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="results store only: the benchmark spec (YAML)")] = None,
) -> None:
    """Measure a saved model (parameters, sparsity per layer, FLOPs, latency, file sizes), or, for a results
    store, write its tables, plots and HTML report."""
    if is_results_store(path):
        report_results(path, out=out, spec=spec)
        return
    import torch

    import prunekit as pk
    from prunekit.eval.report import Report, layer_stats
    from prunekit.serialization import read_record

    try:
        record = read_record(path)
        model = pk.load_model(path)
        shape = parse_shape(input_shape) if input_shape else default_input_shape(model, record)
        x = torch.randn(*shape) if shape else None
        stats = pk.measure(model, x, latency=latency)
        report_file = path / "report.json"
        saved = Report.from_dict(json.loads(report_file.read_text())) if report_file.is_file() else None
        files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
        layers = layer_stats(model, {}, {})
        if as_json:
            from dataclasses import asdict

            print(
                json.dumps(
                    {
                        "record": record,
                        "files": files,
                        "stats": asdict(stats),
                        "layers": [{**asdict(r), "sparsity": r.sparsity} for r in layers],
                        "pruning_report": saved.to_dict() if saved else None,
                    },
                    indent=2,
                    default=str,
                )
            )
            return
        if saved is not None:
            console.print(saved.summary_table())
        t = Table(title=f"{path}  ({record.get('source')})")
        t.add_column("measure")
        t.add_column("value", justify="right")
        for k, v in (
            ("parameters", stats.params),
            ("non-zero parameters", stats.nonzero_params),
            ("FLOPs (dense)", stats.flops),
            ("FLOPs (non-zero only)", stats.effective_flops),
            ("latency ms, median (IQR), 1 thread", None if stats.latency_ms is None else stats.latency_text()),
        ):
            t.add_row(k, "-" if v is None else str(v))
        for name, size in files.items():
            t.add_row(f"file {name}", f"{size} B")
        console.print(t)
        lt = Table(title="per layer")
        for col in ("layer", "shape", "weights", "non-zero", "sparsity"):
            lt.add_column(col, justify="left" if col == "layer" else "right")
        for r in layers:
            lt.add_row(r.name, "x".join(map(str, r.shape)), str(r.params), str(r.nonzero), f"{r.sparsity:.4f}")
        console.print(lt)
    except PrunekitError as e:
        fail(e)


def methods(
    name: Annotated[
        str | None, typer.Argument(help="a method's name: show its options, defaults and paper instead of the lists")
    ] = None,
) -> None:
    """List the registered methods, criteria, allocations, patterns and schedules; with a NAME, that method's
    options (the keyword options of prunekit.prune, --option KEY=VALUE on the command line), defaults and
    paper."""
    from prunekit import ALLOCATIONS, CRITERIA, METHODS
    from prunekit.schedules.builtin import SCHEDULES

    if name is not None:
        from prunekit.api import COMMON_OPTIONS
        from prunekit.methods.base import resolve_method

        try:
            m = resolve_method(name)
        except PrunekitError as err:
            fail(err)
        t = Table(title=f"method {m.name}", title_justify="left", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        t.add_row("description", m.description)
        t.add_row("when", m.when)
        t.add_row("data", "calibration= (needed)" if m.needs_data else "none needed")
        removes = getattr(m, "removes", None)
        t.add_row(
            "removes", removes or ("structure (the model gets smaller)" if m.structural else "weights under masks")
        )
        t.add_row("default pattern", str(m.default_pattern or "unstructured"))
        t.add_row("default allocation", str(m.default_allocation))
        t.add_row("options", ", ".join(sorted(m.options)) or "-")
        t.add_row("options of every method", ", ".join(sorted(COMMON_OPTIONS)))
        if m.paper:
            t.add_row("paper", m.paper)
        console.print(t)
        return

    t = Table(title="methods", title_justify="left")
    for col in ("name", "when", "data", "description"):
        t.add_column(col, style="bold" if col == "name" else None)
    for e in METHODS.entries():
        m = e.obj
        t.add_row(e.name, m.when, "calibration" if m.needs_data else "-", e.description)
    console.print(t)
    for title, reg in (("criteria", CRITERIA), ("allocations", ALLOCATIONS), ("schedules", SCHEDULES)):
        t = Table(title=title, title_justify="left")
        t.add_column("name", style="bold")
        t.add_column("description")
        for entry in reg.entries():
            t.add_row(entry.name, entry.description)
        console.print(t)
    t = Table(title="patterns (granularity)", title_justify="left")
    t.add_column("name", style="bold")
    t.add_column("description")
    t.add_row("unstructured", "single weights (default)")
    t.add_row("N:M", "n kept of every m consecutive input weights, e.g. 2:4, 4:8")
    t.add_row("RxC", "blocks of R x C weights, e.g. 4x4")
    t.add_row("channel", "whole output channels zeroed (masking form)")
    t.add_row("physical-channel", "output channels removed with their dependency group (the model gets smaller)")
    t.add_row("head", "attention heads removed (GQA aware)")
    t.add_row("layer", "whole blocks removed")
    t.add_row("embedding", "hidden dimensions of a transformer removed")
    console.print(t)


def criteria() -> None:
    """List the criteria: the units each has a meaning for (levels) and the statistics it needs (like
    `prunekit methods` for methods). Use one with `prunekit prune MODEL --criterion NAME --pattern P`."""
    from prunekit.criteria import CRITERIA

    t = Table(title="criteria", title_justify="left")
    for col in ("name", "levels", "needs", "description"):
        t.add_column(col, style="bold" if col == "name" else None)
    for e in CRITERIA.entries():
        c = e.obj
        if c.name != e.name:  # an alias
            t.add_row(e.name, "", "", f"alias of {c.name}")
            continue
        order = ("element", "channel", "head", "layer")
        levels = ", ".join(lv for lv in order if lv in c.levels)
        t.add_row(e.name, levels, ", ".join(sorted(c.needs)) or "-", e.description)
    console.print(t)
    console.print("any p > 0: l<p> (e.g. l0.5, l3), |w|^p", highlight=False)


def models() -> None:
    """List the model specs that `prunekit prune` accepts."""
    from prunekit.models import MODELS

    t = Table(title="model specs", title_justify="left")
    t.add_column("spec", style="bold")
    t.add_column("description")
    for e in MODELS.entries():
        t.add_row(f"prunekit:{e.name}", e.description)
    t.add_row(
        "torchvision:NAME", "any torchvision classification model (random init unless its weights are cached locally)"
    )
    t.add_row(
        "timm:NAME",
        "any timm model (needs timm; random init unless its model.safetensors is in the local Hugging Face cache)",
    )
    t.add_row("DIR", "a model saved by `prunekit prune --out DIR` or prunekit.save_model")
    console.print(t)


def demo(
    out: Annotated[Path, typer.Option(help="output directory (the results table and JSON lines)")] = Path(
        "results/demo"
    ),
    sparsities: Annotated[str, typer.Option(help="comma-separated sparsities")] = "0.5,0.8,0.9",
    test_images: Annotated[int, typer.Option(help="MNIST test images to evaluate on")] = 10000,
) -> None:
    """The main job on a built-in default: prune the pretrained MNIST CNN with several methods and
    sparsities, and print accuracy, parameters, FLOPs, latency and file size before and after."""
    from prunekit.demo import run_demo

    try:
        run_demo(out, sparsities=tuple(float(s) for s in sparsities.split(",")), test_images=test_images)
    except PrunekitError as e:
        fail(e)
