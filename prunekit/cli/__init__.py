"""The ``prunekit`` command line: one typer application, :data:`app`, whose commands mirror Python calls
(``prunekit COMMAND --help``). The ``prunekit`` console script and ``python -m prunekit`` both run :func:`main`.

One module per command group:

- :mod:`prunekit.cli.prune`: ``prune``, ``report``, ``methods``, ``criteria``, ``models``, ``demo``
- :mod:`prunekit.cli.data`: ``data install``, ``data list``
- :mod:`prunekit.cli.llm`: ``prune-llm``, ``eval-ppl``
- :mod:`prunekit.cli.recover`: ``recover``
- :mod:`prunekit.cli.deploy`: ``export``, ``run``
- :mod:`prunekit.cli.dynamic`: ``dynamic merge-tokens``, ``dynamic prune-tokens``, ``dynamic skip-layers``
- :mod:`prunekit.cli.bench`: ``bench``, ``advise``, ``papers`` (and ``report`` of a results store)

An option name means one thing in every command that has it (tests/test_cli.py checks it). Heavy libraries
(transformers, onnx, openvino, ray, ...) are imported inside the commands that use them, not here.
"""

from __future__ import annotations

import typer

from prunekit.cli import bench, data, deploy, dynamic, llm, prune, recover
from prunekit.cli._common import cli_hint, err_console

__all__ = ["app", "cli_hint", "main"]

#: the ``prunekit`` application; tests run it with ``typer.testing.CliRunner().invoke(app, [...])``
app = typer.Typer(
    name="prunekit",
    help="Prune neural networks: one API for the survey's taxonomy, with real measurements.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("prune")(prune.prune)
app.command("report")(prune.report)
app.command("methods")(prune.methods)
app.command("criteria")(prune.criteria)
app.command("models")(prune.models)
app.command("demo")(prune.demo)
app.add_typer(data.app, name="data")
app.command("prune-llm")(llm.prune_llm)
app.command("eval-ppl")(llm.eval_ppl)
app.command("recover")(recover.recover)
app.command("export")(deploy.export)
app.command("run")(deploy.run)
app.add_typer(dynamic.app, name="dynamic")
app.command("bench")(bench.bench)
app.command("advise")(bench.advise)
app.command("papers")(bench.papers)


def _one_line_summaries(typer_app: typer.Typer) -> None:
    """Give every command a ``short_help``: the first paragraph of its docstring on one line. In the command
    list typer's rich mode keeps a docstring's line breaks, which cut the summaries mid-sentence."""
    import inspect

    for info in typer_app.registered_commands:
        if info.short_help is None and info.callback is not None and info.callback.__doc__:
            first = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0]
            info.short_help = " ".join(first.split())
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _one_line_summaries(group.typer_instance)


_one_line_summaries(app)


_signals: list[int] = []  # SIGTERM received (the CLI layer may re-raise the interrupt as another one)


def _raise_terminated(signum: int, frame: object) -> None:
    """SIGTERM in the main thread: interrupt as Ctrl-C does, so that unfinished outputs are cleaned up."""
    _signals.append(signum)
    raise KeyboardInterrupt


def main() -> None:
    """Entry point of the ``prunekit`` command and of ``python -m prunekit``: every error becomes a message and
    exit status 2 (``PRUNEKIT_DEBUG=1`` shows the traceback of an unexpected one), Ctrl-C exit status 130,
    SIGTERM (``kill``, a job scheduler's stop) exit status 143; after either, no half-written output is left
    (the temporary folders of :func:`prunekit.serialization.atomic_directory` are removed)."""
    import os
    import signal
    import sys

    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        try:
            app()
        except SystemExit as e:  # typer turns an interrupt into exit status 130, silently
            if e.code != 130:
                raise
            raise KeyboardInterrupt from None
    except KeyboardInterrupt:
        err_console.print("interrupted; nothing was written for the unfinished step")
        sys.exit(143 if _signals else 130)
    except Exception as e:  # not a PrunekitError (those are handled per command): still a message, exit 2
        if os.environ.get("PRUNEKIT_DEBUG"):
            raise
        err_console.print(
            f"[bold red]error:[/bold red] {type(e).__name__}: {e}\n(an unexpected failure: run again with "
            "PRUNEKIT_DEBUG=1 for the traceback and report it)",
            highlight=False,
        )
        sys.exit(2)
