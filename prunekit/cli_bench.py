"""Commands for benchmarks, advice and the paper catalog, to be mounted on the main ``prunekit`` app:

    from prunekit import cli_bench
    app.command("bench")(cli_bench.bench)
    app.command("advise")(cli_bench.advise)
    app.command("papers")(cli_bench.papers)
    # `prunekit report PATH`: a results store (a file) goes to cli_bench.report_results
    if cli_bench.is_results_store(path): cli_bench.report_results(path, out=..., spec=...)

Each also works standalone: ``python -m prunekit.cli_bench bench|advise|papers|report ...``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from prunekit.errors import PrunekitError

console = Console()
err_console = Console(stderr=True)


# advice written for Python callers, rewritten into the command line's flags
_CLI_HINTS: tuple[tuple[str, str], ...] = (
    (r"calibration=batches \([^)]*\)\)? or calibration=loss_fn \([^)]*\)", "--calibration DATA"),
    (r"calibration=batches \([^)]*\)", "--calibration DATA"),
    (r"calibration=loss_fn( \([^)]*\))?", "--calibration DATA"),
    (r"\bignore= (?=names\b)", "--ignore "),
    (r"ignore=\[\.\.\.\]|ignore=", "--ignore NAME"),
    (r"skip_incompatible=True", "--skip-incompatible"),
    (r"prune_classifier=True", "--prune-classifier"),
    (r"overwrite=True", "--overwrite"),
    (r"example_inputs=(a batch)?", "--input-shape"),
    (r"\bcalibration=", "--calibration "),
    (r"\bsparsity=", "--sparsity "),
    (r"\bpattern=None", "no --pattern"),
    (r"\bpattern=", "--pattern "),
    (r"\ballocation=", "--allocation "),
    (r"(?<!--option )\b(strict|criterion|loss_fn|overrides|global_cap|round_to)=", r"--option \1="),
)
# a Python call expression in advice (``pk.prune(model, "magnitude", sparsity=0.5)``): its start; it runs to
# the matching parenthesis and is left as Python (rewriting inside it would mix the two syntaxes)
_CALL_START = r"[A-Za-z_][\w.]*\("


def _python_calls(message: str) -> list[tuple[int, int]]:
    """Spans of the call expressions in ``message`` (name directly followed by a parenthesis, to its match)."""
    import re

    spans: list[tuple[int, int]] = []
    pos = 0
    while (m := re.compile(_CALL_START).search(message, pos)) is not None:
        depth, i = 0, m.end() - 1
        while i < len(message):
            depth += {"(": 1, ")": -1}.get(message[i], 0)
            i += 1
            if depth == 0:
                break
        spans.append((m.start(), i))
        pos = i
    return spans


def cli_hint(message: str) -> str:
    """``message`` with its Python keyword advice (``ignore=[...]``, ``skip_incompatible=True``, ...) written as
    the command line's flags (``--ignore NAME``, ``--skip-incompatible``, ...). Only keywords that stand alone
    are rewritten: a whole Python call expression (``pk.prune(model, ..., sparsity=0.5)``) is kept as it is."""
    import re

    def rewrite(text: str) -> str:
        for pattern, replacement in _CLI_HINTS:
            text = re.sub(pattern, replacement, text)
        return text

    # only keyword hints that stand alone: a Python call expression is kept as it is
    parts, last = [], 0
    for start, end in _python_calls(message):
        parts += [rewrite(message[last:start]), message[start:end]]
        last = end
    message = "".join(parts) + rewrite(message[last:])
    return message.replace("(overwrite=True in Python) ", "").replace("--overwrite (--overwrite in Python)", "--overwrite")


def _fail(e: Exception) -> None:
    """Print a prunekit error for a person (its advice in command-line syntax) and exit with 2."""
    from prunekit.errors import MissingDataError

    text = cli_hint(str(e))
    hint = " (DATA: mnist or fashion-mnist)" if isinstance(e, MissingDataError) else ""
    err_console.print(f"[bold red]error:[/bold red] {text}{hint}", highlight=False)
    raise typer.Exit(code=2)


def is_results_store(path: str | Path) -> bool:
    """True when ``path`` is an SQLite file (a benchmark results store) rather than a saved model folder."""
    p = Path(path)
    if not p.is_file():
        return False
    with p.open("rb") as fh:
        return fh.read(16) == b"SQLite format 3\x00"


def bench(
    spec: Annotated[Path, typer.Argument(help="benchmark spec (YAML), e.g. benchmarks/suites/contrasts.yaml")],
    store: Annotated[Path, typer.Option("--store", help="results store (SQLite); created if missing")] = Path("results/bench.db"),
    suite: Annotated[Optional[list[str]], typer.Option("--suite", help="suite name to run (repeatable; default all)")] = None,
    backend: Annotated[str, typer.Option(help="local (processes) or ray")] = "local",
    jobs: Annotated[int, typer.Option(help="local worker processes (1: in this process)")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local one)")] = None,
    limit: Annotated[Optional[int], typer.Option(help="run at most this many unfinished points")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the grid and what is done, run nothing")] = False,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show a progress bar")] = True,
) -> None:
    """Run a benchmark grid into a results store. Resumable: finished runs are skipped, unfinished rerun."""
    from prunekit.bench import ResultStore, expand, load_spec, run_grid

    try:
        if dry_run:
            points, skips = expand(load_spec(spec), suite)
            done = ResultStore(store).finished_keys() if store.is_file() else set()
            t = Table(title=f"{spec}: {len(points)} grid points, {sum(p.key in done for p in points)} done")
            for col in ("suite", "model", "data", "method", "sparsity", "fine-tune", "calib", "seed", "done"):
                t.add_column(col)
            for p in points:
                t.add_row(p.suite, p.model, p.data + (f" -> {p.transfer}" if p.transfer else ""), p.method.label,
                          f"{p.sparsity:g}", str(p.fine_tune_epochs), str(p.calibration_size), str(p.seed),
                          "yes" if p.key in done else "")
            console.print(t)
            for s in skips:
                console.print(f"skip {s.suite}/{s.config['method']['label']}@{s.config['sparsity']:g}: {s.reason}")
            return
        s = run_grid(spec, store, suites=suite, backend=backend, jobs=jobs, ray_address=ray_address, limit=limit,
                     progress=progress)
        console.print(f"grid of {s.total}: {s.already_done} already done, {s.ran} ran, {len(s.failed)} failed, "
                      f"{len(s.skipped)} skipped (method missing) -> {store}")
        for label, err in s.failed:
            err_console.print(f"failed {label}: {err}")
        reasons = sorted({sk.reason for sk in s.skipped})
        for r in reasons:
            console.print(f"skipped: {r}")
    except PrunekitError as e:
        _fail(e)


def report_results(
    store: Annotated[Path, typer.Argument(help="a results store written by `prunekit bench`")],
    out: Annotated[Optional[Path], typer.Option(help="output folder (default: STORE without suffix + '-report')")] = None,
    spec: Annotated[Optional[Path], typer.Option(help="the benchmark spec, to show each suite's question")] = None,
) -> None:
    """Write markdown tables, PNG plots and one self-contained HTML page from a results store."""
    from prunekit.bench.report import write_report

    try:
        target = out or store.with_name(store.stem + "-report")
        path = write_report(store, target, spec=spec)
        console.print(f"wrote {path} and {path.parent / 'tables.md'}")
    except PrunekitError as e:
        _fail(e)


def advise(
    model: Annotated[str, typer.Option("--model", help="model spec or name (e.g. prunekit:resnet-small, smollm2)")],
    target: Annotated[str, typer.Option(help="latency, size or accuracy")] = "latency",
    hardware: Annotated[str, typer.Option(help="cpu or gpu")] = "cpu",
    data: Annotated[str, typer.Option(help="none, few or full")] = "few",
    retrain: Annotated[str, typer.Option(help="yes or no: can you fine-tune / train?")] = "yes",
    results: Annotated[Optional[Path], typer.Option(help="results store to quote measurements from")] = None,
) -> None:
    """Recommend pruning methods and settings (the survey's recommendations + your measured results)."""
    from prunekit.advise import advise as _advise

    if retrain.lower() not in ("yes", "no"):
        _fail(PrunekitError(f"--retrain must be yes or no, got {retrain!r}"))
    try:
        a = _advise(model, target=target, hardware=hardware, data=data, retrain=retrain.lower() == "yes",
                    results=results)
        console.print(a.to_text(), highlight=False, markup=False)
    except PrunekitError as e:
        _fail(e)


def papers(
    type: Annotated[Optional[str], typer.Option("--type", help="type codes, all required: L F C N H B M E W P; S/U = structured/unstructured")] = None,
    when: Annotated[Optional[str], typer.Option(help="before, during, after, early, dynamic, learning, application, combination, survey, other, toolbox")] = None,
    year: Annotated[Optional[int], typer.Option(help="publication year")] = None,
    since: Annotated[Optional[int], typer.Option(help="this year or later")] = None,
    venue: Annotated[Optional[str], typer.Option(help="venue contains")] = None,
    search: Annotated[Optional[str], typer.Option(help="title / algorithm / application contains")] = None,
    implemented: Annotated[bool, typer.Option("--implemented", help="only papers implemented in prunekit")] = False,
    with_code: Annotated[bool, typer.Option("--with-code", help="only papers with code")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """List papers of the survey's curated lists, filtered (e.g. --type W --when before --year 2023)."""
    import json
    from dataclasses import asdict

    from prunekit import catalog

    try:
        rows = catalog.query(catalog.load(), type=type, when=when, year=year, since=since, venue=venue, text=search,
                             implemented=True if implemented else None, code=True if with_code else None)
    except PrunekitError as e:
        _fail(e)
        return
    if as_json:
        print(json.dumps([asdict(p) for p in rows], indent=1, ensure_ascii=False))
        return
    t = Table(title=f"{len(rows)} papers", title_justify="left")
    for col in ("year", "venue", "type", "when", "title", "algorithm", "code", "prunekit"):
        t.add_column(col, overflow="fold")
    for p in rows:
        t.add_row(str(p.year or ""), p.venue, p.type_text, p.section, p.title, p.algorithm,
                  "yes" if p.code_available else "", ", ".join(p.methods))
    console.print(t)


def _standalone() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
    app.command("bench")(bench)
    app.command("report")(report_results)
    app.command("advise")(advise)
    app.command("papers")(papers)
    return app


if __name__ == "__main__":
    _standalone()()
