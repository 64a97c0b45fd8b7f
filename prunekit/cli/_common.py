"""What the command modules share: the consoles, errors printed for a person (exit status 2), the advice of
Python-facing messages rewritten into the command line's flags, the parsing of ``--input-shape`` and of
``--calibration`` (an image data set), and ``--json-out FILE`` (checked before the work, written whole)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

__all__ = [
    "calibration_data",
    "check_json_out",
    "cli_hint",
    "console",
    "default_input_shape",
    "err_console",
    "fail",
    "parse_shape",
    "write_json_out",
]

#: standard output of every command (tables, reports)
console = Console()
#: standard error of every command (errors, notes)
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
_CALL_START = re.compile(r"[A-Za-z_][\w.]*\(")


def _python_calls(message: str) -> list[tuple[int, int]]:
    """Spans of the call expressions in ``message`` (name directly followed by a parenthesis, to its match)."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while (m := _CALL_START.search(message, pos)) is not None:
        depth, i = 0, m.end() - 1
        while i < len(message):
            depth += {"(": 1, ")": -1}.get(message[i], 0)
            i += 1
            if depth == 0:
                break
        spans.append((m.start(), i))
        pos = i
    return spans


def _flag_rules(flags: Mapping[str, str]) -> list[tuple[str, str]]:
    """Rewrite rules for a command's own names: ``name=value`` becomes ``--flag value``, a bare ``name=`` or
    the name as a word becomes ``--flag`` (not inside another word, a dotted name or a flag)."""
    rules: list[tuple[str, str]] = []
    for name, flag in flags.items():
        word = rf"(?<![\w.'-]){re.escape(name)}"
        rules += [(rf"{word}=(?=[\s(),;:]|$)", flag), (rf"{word}=", flag + " "), (rf"{word}(?![\w'(=-])", flag)]
    return rules


def cli_hint(message: str, flags: Mapping[str, str] | None = None) -> str:
    """``message`` with its Python keyword advice (``ignore=[...]``, ``skip_incompatible=True``, ...) written as
    the command line's flags (``--ignore NAME``, ``--skip-incompatible``, ...). Only keywords that stand alone
    are rewritten: a whole Python call expression (``pk.prune(model, ..., sparsity=0.5)``) is kept as it is.

    ``flags`` maps a command's own Python names to what the user typed, e.g. ``{"keep_rate": "--keep-rate",
    "prune_tokens_": "prunekit dynamic prune-tokens"}``: ``keep_rate=0.7`` becomes ``--keep-rate 0.7`` and the
    word ``keep_rate`` becomes ``--keep-rate`` (applied before the general rules)."""
    rules = [*_flag_rules(flags or {}), *_CLI_HINTS]

    def rewrite(text: str) -> str:
        for pattern, replacement in rules:
            text = re.sub(pattern, replacement, text)
        return text

    # only keyword hints that stand alone: a Python call expression is kept as it is
    parts, last = [], 0
    for start, end in _python_calls(message):
        parts += [rewrite(message[last:start]), message[start:end]]
        last = end
    message = "".join(parts) + rewrite(message[last:])
    message = message.replace("(overwrite=True in Python) ", "")
    return message.replace("--overwrite (--overwrite in Python)", "--overwrite")


def fail(e: Exception, flags: Mapping[str, str] | None = None) -> NoReturn:
    """Print a prunekit error for a person (its advice in command-line syntax; ``flags``: the command's own
    Python names and the flags they come from, see :func:`cli_hint`) on standard error and end the command
    with exit status 2 (raises :class:`typer.Exit`)."""
    from prunekit.errors import MissingDataError

    text = cli_hint(str(e), flags)
    # the image data sets --calibration takes, where the advice names that option
    names_option = re.search(r"--calibration\b(?!-)", text) is not None
    hint = " (DATA: mnist or fashion-mnist)" if isinstance(e, MissingDataError) and names_option else ""
    err_console.print(f"[bold red]error:[/bold red] {text}{hint}", highlight=False)
    raise typer.Exit(code=2)


def check_json_out(path: Path | None, *, overwrite: bool) -> None:
    """``--json-out FILE``, checked before any work: a folder, a path under a file, or (unless ``overwrite``) an
    existing file is refused with :class:`~prunekit.errors.CheckpointError` (see
    :func:`prunekit.serialization.check_output_file`). Nothing to check when ``path`` is None."""
    if path is not None:
        from prunekit.serialization import check_output_file

        check_output_file(path, overwrite=overwrite)


def write_json_out(path: Path, payload: Any, *, overwrite: bool) -> None:
    """Write ``payload`` as indented JSON to ``path``, whole or not at all (a temporary file renamed into place;
    a special file such as ``/dev/stdout`` is written directly), checked again as :func:`check_json_out` does
    in case the path changed during the work."""
    from prunekit.serialization import atomic_write, check_output_file

    text = json.dumps(payload, indent=2) + "\n"
    check_output_file(path, overwrite=overwrite)
    if path.exists() and not path.is_file():  # a device or a pipe: nothing to replace
        path.write_text(text)
        return
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape`` text (``1,3,224,224`` or ``1x3x224x224``) as a tuple of positive integers; raises
    :class:`typer.BadParameter` for anything else."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"--input-shape takes integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise typer.BadParameter(f"--input-shape takes positive integers like 1,3,224,224, got {text!r}")
    return shape


def default_input_shape(model: Any, record: dict | None = None) -> tuple[int, ...] | None:
    """The example input shape used for a model when the user gives none: the one a saved model's ``record``
    holds, else the one the model carries (every ``prunekit:NAME``, ``torchvision:NAME`` and ``timm:NAME`` model does;
    :func:`prunekit.models.input_shape_of`); None when unknown."""
    if record and record.get("input_shape"):
        return tuple(record["input_shape"])
    from prunekit.models import input_shape_of

    return input_shape_of(model)


def calibration_data(name: str, batches: int, seed: int) -> list:
    """``--calibration NAME``: ``batches`` batches of 64 (images, labels) drawn with ``seed`` from the training
    split of ``mnist`` (normalised as the pretrained CNN expects) or ``fashion-mnist``. Raises
    :class:`prunekit.errors.UnknownNameError` for another name and a missing-source error when it is not
    installed."""
    from prunekit import datasets

    loaders = {
        "mnist": lambda: datasets.load_mnist("train"),
        "fashion-mnist": lambda: datasets.load_fashion_mnist("train"),
    }
    if name not in loaders:
        from prunekit.errors import UnknownNameError

        raise UnknownNameError("calibration set", name, loaders)
    import torch

    x, y = loaders[name]()
    if name == "mnist":
        x = datasets.mnist_normalize(x)
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: batches * 64]
    return [(x[idx[i : i + 64]], y[idx[i : i + 64]]) for i in range(0, len(idx), 64)]
