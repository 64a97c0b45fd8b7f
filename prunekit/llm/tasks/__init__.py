"""Zero-shot evaluation of an in-memory causal LM through lm-eval-harness (PyPI ``lm-eval``), used as a library.

``evaluate_tasks(model, tokenizer, tasks=["austen_lastword", "austen_cloze"])`` wraps the model in
lm-eval's ``HFLM`` (no copy, no reload) and runs ``lm_eval.simple_evaluate`` on

* prunekit's two offline tasks, ordinary lm-eval task configs shipped in this folder
  (``austen_lastword.yaml``: LAMBADA-style last-word prediction, 200 items; ``austen_cloze.yaml``:
  four-way next-sentence cloze, 200 items), whose data are built deterministically from a locally installed
  Austen novel (*Persuasion*, never used for calibration or recovery in prunekit's benchmarks) by
  :mod:`prunekit.llm.tasks.austen`. lm-eval's own command line runs them too:
  ``lm_eval --model hf --model_args pretrained=DIR --include_path <this folder> --tasks austen_cloze``;
* any task of lm-eval's registry (``hellaswag``, ``lambada_openai``, ...) when its dataset can be downloaded.

Results are accuracies (``acc``; ``acc_norm`` for multiple choice, normalised by the choice's length in
bytes) and, for the last-word task, the perplexity of the target word, each with lm-eval's standard error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.calls import restore_modes, training_modes
from prunekit.errors import ConfigError, SourceMissingError, UnknownNameError

__all__ = ["OFFLINE_TASKS", "TASKS_DIR", "TaskResults", "evaluate_tasks"]

TASKS_DIR = Path(__file__).parent
OFFLINE_TASKS = ("austen_lastword", "austen_cloze")
_KINDS = {"austen_lastword": "lastword", "austen_cloze": "cloze"}


@dataclass
class TaskResults:
    """Per task: ``metrics[task][name]`` (e.g. ``acc``, ``acc_stderr``, ``acc_norm``, ``perplexity``),
    ``items[task]`` (how many were evaluated), and where each task's data came from (``data[task]``: for the
    offline tasks the source text, its SHA-256 and the items' SHA-256)."""

    metrics: dict[str, dict[str, float]]
    items: dict[str, int]
    seconds: float
    settings: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field."""
        return {
            "metrics": self.metrics,
            "items": self.items,
            "seconds": self.seconds,
            "settings": self.settings,
            "data": self.data,
        }

    def __str__(self) -> str:
        lines = []
        for task, m in self.metrics.items():
            shown = ", ".join(
                f"{k} {v:.4f}" + (f" ± {m[k + '_stderr']:.4f}" if isinstance(m.get(k + "_stderr"), float) else "")
                for k, v in m.items()
                if not k.endswith("_stderr") and isinstance(v, float)
            )
            lines.append(f"{task} ({self.items.get(task, '?')} items): {shown}")
        return "\n".join(lines)


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise SourceMissingError(
            "zero-shot evaluation needs the PyPI package lm-eval: `pip install lm-eval==0.4.13`"
        ) from None
    return lm_eval


def _task_manager(names: Sequence[str]) -> Any:
    from lm_eval.tasks import TaskManager

    only_offline = all(n in OFFLINE_TASKS or n == "prunekit_austen" for n in names)
    # lm-eval's own registry takes ~20 s to index; it is read only when a task of it is asked for
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=not only_offline)


def evaluate_tasks(
    model: nn.Module,
    tokenizer: Any,
    tasks: Sequence[str] = OFFLINE_TASKS,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    max_length: int | None = None,
    bootstrap_iters: int = 1000,
    seed: int = 0,
) -> TaskResults:
    """Zero-shot (or ``num_fewshot``-shot) lm-eval tasks on ``model`` as it is in memory.

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel``), dense or pruned, on any device.
        tokenizer: its tokenizer.
        tasks: task names: ``austen_lastword``, ``austen_cloze`` (offline) or any lm-eval task (needs its
            dataset from the hub).
        limit: evaluate only the first ``limit`` items of each task (for quick checks; lm-eval marks such
            results as not comparable).
        batch_size: sequences per forward pass; ``max_length``: context limit (default: the model's).
        bootstrap_iters: resamples for the standard error of non-mean metrics (perplexity).

    Returns a :class:`TaskResults`. The model is evaluated in eval mode and returned to its mode; its
    weights are not touched.

    Raises:
        UnknownNameError: a task no registry knows (names the offline tasks). ConfigError: no task, or a
        count below 1. SourceMissingError: lm-eval not installed, or a hub task whose dataset cannot be
        downloaded (no network).
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    names = list(dict.fromkeys(tasks))
    if not names:
        raise ConfigError(f"pass at least one task, e.g. tasks={list(OFFLINE_TASKS)}")
    for key, value in (("batch_size", batch_size), ("limit", limit), ("max_length", max_length)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ConfigError(f"{key} takes a whole number >= 1, got {value!r}")
    if num_fewshot is not None and (not isinstance(num_fewshot, int) or num_fewshot < 0):
        raise ConfigError(f"num_fewshot takes a whole number >= 0, got {num_fewshot!r}")
    if model is None or not hasattr(model, "config"):
        raise ConfigError(
            f"evaluate_tasks takes a Hugging Face causal LM (a PreTrainedModel), got {type(model).__name__}"
        )
    lm_eval = _lm_eval()
    ours = [n for n in names if n.startswith(("austen_", "prunekit_")) and n not in (*OFFLINE_TASKS, "prunekit_austen")]
    if ours:  # a misspelt offline task: refused without indexing lm-eval's registry (~20 s)
        raise UnknownNameError("lm-eval task", ours[0], [*OFFLINE_TASKS, "(or any task of lm-eval's registry)"])
    manager = _task_manager(names)
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UnknownNameError("lm-eval task", unknown[0], [*OFFLINE_TASKS, "(or any task of lm-eval's registry)"])
    try:
        manager.load(names)  # builds the offline data, downloads hub data: fails here, before the model runs
    except Exception as e:  # datasets/hub errors have no common base class
        hub = [n for n in names if n not in OFFLINE_TASKS]
        raise SourceMissingError(
            f"could not load the data of task(s) {', '.join(hub or names)} ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); hub tasks need network access to the Hugging Face "
            f"hub; the offline tasks are {', '.join(OFFLINE_TASKS)} (they need `prunekit data install austen`)"
        ) from e
    from lm_eval.models.huggingface import HFLM

    modes = training_modes(model)
    model.eval()
    quiet = [logging.getLogger(n) for n in ("lm_eval", "lm-eval")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            num_fewshot=num_fewshot,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
        seconds = time.perf_counter() - t0
    finally:
        restore_modes(modes)
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    metrics: dict[str, dict[str, float]] = {}
    items: dict[str, int] = {}
    for task, values in out["results"].items():
        metrics[task] = {
            key.split(",")[0]: float(v) if isinstance(v, (int, float)) else v for key, v in values.items() if "," in key
        }
        n = out.get("n-samples", {}).get(task, {})
        items[task] = int(n.get("effective", n.get("original", 0)) or 0)
    data: dict[str, Any] = {}
    for task in names:
        if task in _KINDS:
            from prunekit.llm.tasks.austen import data_record

            data[task] = data_record(_KINDS[task])
    settings = {
        "tasks": names,
        "limit": limit,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "bootstrap_iters": bootstrap_iters,
        "seed": seed,
        "lm_eval": getattr(lm_eval, "__version__", "?"),
    }
    return TaskResults(metrics, items, seconds, settings, data)
