"""``prunekit bench``, ``advise`` and ``papers``: benchmark grids into a results store, recommendations backed by
measured results, and the survey's paper catalog; also the results-store half of ``prunekit report``
(:func:`is_results_store`, :func:`report_results`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli._common import console, err_console, fail
from prunekit.errors import PrunekitError

__all__ = ["advise", "bench", "is_results_store", "papers", "report_results"]


def is_results_store(path: str | Path) -> bool:
    """True when ``path`` is an SQLite file (a benchmark results store) rather than a saved model folder."""
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def bench(
    spec: Annotated[Path, typer.Argument(help="benchmark spec (YAML), e.g. benchmarks/suites/contrasts.yaml")],
    store: Annotated[Path, typer.Option("--store", help="results store (SQLite); created if missing")] = Path(
        "results/bench.db"
    ),
    suite: Annotated[
        list[str] | None, typer.Option("--suite", help="suite name to run (repeatable; default all)")
    ] = None,
    backend: Annotated[str, typer.Option(help="local (processes) or ray")] = "local",
    jobs: Annotated[int, typer.Option(help="local worker processes (1: in this process)")] = 1,
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: start a local one)")] = None,
    limit: Annotated[int | None, typer.Option(help="run at most this many unfinished points")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="show what would run and run nothing (the grid and what is done)")
    ] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
) -> None:
    """Run a benchmark grid into a results store. Resumable: finished runs are skipped, unfinished rerun.
    Exit status 1 when a run failed (the others are kept), 2 for a refused spec."""
    from prunekit.bench import ResultStore, expand, load_spec, run_grid

    try:
        if dry_run:
            points, skips = expand(load_spec(spec), suite)
            done = ResultStore(store).finished_keys() if store.is_file() else set()
            t = Table(title=f"{spec}: {len(points)} grid points, {sum(p.key in done for p in points)} done")
            for col in ("suite", "model", "data", "method", "sparsity", "fine-tune", "calib", "seed", "done"):
                t.add_column(col)
            for p in points:
                t.add_row(
                    p.suite,
                    p.model,
                    p.data + (f" -> {p.transfer}" if p.transfer else ""),
                    p.method.label,
                    f"{p.sparsity:g}",
                    str(p.fine_tune_epochs),
                    str(p.calibration_size),
                    str(p.seed),
                    "yes" if p.key in done else "",
                )
            console.print(t)
            for skip in skips:
                console.print(
                    f"skip {skip.suite}/{skip.config['method']['label']}@{skip.config['sparsity']:g}: {skip.reason}"
                )
            return
        s = run_grid(
            spec,
            store,
            suites=suite,
            backend=backend,
            jobs=jobs,
            ray_address=ray_address,
            limit=limit,
            progress=progress,
        )
        console.print(
            f"grid of {s.total}: {s.already_done} already done, {s.ran} ran, {len(s.failed)} failed, "
            f"{len(s.skipped)} skipped (method missing or not applicable to the model) -> {store}"
        )
        for label, err in s.failed:
            err_console.print(f"failed {label}: {err}")
        reasons = sorted({sk.reason for sk in s.skipped})
        for r in reasons:
            console.print(f"skipped: {r}")
        if s.failed:
            raise typer.Exit(code=1)
    except PrunekitError as e:
        fail(e)


def report_results(store: Path, out: Path | None = None, spec: Path | None = None) -> None:
    """``prunekit report STORE``: write markdown tables, PNG plots and one self-contained HTML page from the
    results store ``store`` into ``out`` (default: STORE without its suffix + ``-report``); ``spec``, the
    benchmark spec, adds each suite's question. A refused store ends the command with exit status 2."""
    from prunekit.bench.report import write_report

    try:
        target = out or store.with_name(store.stem + "-report")
        path = write_report(store, target, spec=spec)
        console.print(f"wrote {path} and {path.parent / 'tables.md'}")
    except PrunekitError as e:
        fail(e)


def advise(
    model: Annotated[str, typer.Option("--model", help="model spec or name (e.g. prunekit:resnet-small, smollm2)")],
    target: Annotated[str, typer.Option(help="latency, size or accuracy")] = "latency",
    hardware: Annotated[str, typer.Option(help="cpu or gpu")] = "cpu",
    data: Annotated[str, typer.Option(help="none, few or full")] = "few",
    retrain: Annotated[str, typer.Option(help="yes or no: can you fine-tune / train?")] = "yes",
    results: Annotated[Path | None, typer.Option(help="results store to quote measurements from")] = None,
) -> None:
    """Recommend pruning methods and settings (the survey's recommendations + your measured results)."""
    from prunekit.advise import advise as _advise

    if retrain.lower() not in ("yes", "no"):
        fail(PrunekitError(f"--retrain must be yes or no, got {retrain!r}"))
    try:
        a = _advise(
            model, target=target, hardware=hardware, data=data, retrain=retrain.lower() == "yes", results=results
        )
        console.print(a.to_text(), highlight=False, markup=False)
    except PrunekitError as e:
        fail(e)


def papers(
    type: Annotated[
        str | None,
        typer.Option("--type", help="type codes, all required: L F C N H B M E W P; S/U = structured/unstructured"),
    ] = None,
    when: Annotated[
        str | None,
        typer.Option(
            help="before, during, after, early, dynamic, learning, application, combination, survey, other, toolbox"
        ),
    ] = None,
    year: Annotated[int | None, typer.Option(help="publication year")] = None,
    since: Annotated[int | None, typer.Option(help="this year or later")] = None,
    venue: Annotated[str | None, typer.Option(help="venue contains")] = None,
    search: Annotated[str | None, typer.Option(help="title / algorithm / application contains")] = None,
    implemented: Annotated[bool, typer.Option("--implemented", help="only papers implemented in prunekit")] = False,
    with_code: Annotated[bool, typer.Option("--with-code", help="only papers with code")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """List papers of the survey's curated lists, filtered (e.g. --type W --when before --year 2023)."""
    import json
    from dataclasses import asdict

    from prunekit import catalog

    try:
        rows = catalog.query(
            catalog.load(),
            type=type,
            when=when,
            year=year,
            since=since,
            venue=venue,
            text=search,
            implemented=True if implemented else None,
            code=True if with_code else None,
        )
    except PrunekitError as e:
        fail(e)
    if as_json:
        print(json.dumps([asdict(p) for p in rows], indent=1, ensure_ascii=False))
        return
    t = Table(title=f"{len(rows)} papers", title_justify="left")
    for col in ("year", "venue", "type", "when", "title", "algorithm", "code", "prunekit"):
        t.add_column(col, overflow="fold")
    for p in rows:
        t.add_row(
            str(p.year or ""),
            p.venue,
            p.type_text,
            p.section,
            p.title,
            p.algorithm,
            "yes" if p.code_available else "",
            ", ".join(p.methods),
        )
    console.print(t)
