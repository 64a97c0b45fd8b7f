"""Progress for long work: a bar where a person watches a terminal, log lines elsewhere.

``enabled=None`` (the default everywhere in prunekit) shows a bar when standard error is a terminal and
otherwise writes a few ``logging`` lines (logger ``prunekit``, level INFO) so that a log file or a notebook
still says how far the work got; ``True`` forces the bar, ``False`` is silent.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["ProgressBar"]

logger = logging.getLogger("prunekit")


def _attached_to_terminal() -> bool:
    """True when standard error is an interactive terminal."""
    stream = sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


class ProgressBar:
    """One task with ``total`` steps. Use as a context manager and call :meth:`advance` after each step."""

    def __init__(self, description: str, total: int, *, enabled: bool | None = None, log_every: float = 0.1):
        self.description = description
        self.total = max(int(total), 0)
        self.done = 0
        self.mode = ("bar" if _attached_to_terminal() else "log") if enabled is None else ("bar" if enabled else "off")
        self._log_every = max(1, round(self.total * log_every)) if self.total else 1
        self._start = 0.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> ProgressBar:
        self._start = time.perf_counter()
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(  # on standard error, as the terminal test reads it: stdout stays the program's
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
                console=Console(file=sys.stderr),
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total)
        elif self.mode == "log":
            logger.info("%s: %d steps", self.description, self.total)
        return self

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        """Count ``steps`` more steps as done; ``description`` replaces the bar's label."""
        self.done += steps
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, advance=steps, description=description)  # None keeps the label
        elif self.mode == "log" and (self.done % self._log_every == 0 or self.done == self.total):
            logger.info(
                "%s: %d/%d (%.1f s)",
                description or self.description,
                self.done,
                self.total,
                time.perf_counter() - self._start,
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.__exit__(exc_type, exc, tb)
