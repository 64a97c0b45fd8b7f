"""Run a benchmark grid into a results store, resumably, on local processes or a Ray cluster.

The runner expands the suites, drops the points that already have a row in the store, and executes the
rest; every finished run is written by the driver in its own transaction. Killing the runner at any moment
loses at most the runs in flight, and a restart runs exactly those again (each run is seeded, so its
deterministic metrics are the same). Backends: ``local`` (``jobs=1`` runs in this process, more uses a pool
of spawned processes) and ``ray`` (``ray.init(address)``; no address starts a local cluster).

A point is skipped with its reason, not run, when its method is missing or cannot act on the point's model
(:func:`~prunekit.bench.execute.point_problem`: e.g. the run-time gating methods ``fbs`` and ``cgnet`` on a
model without Conv2d+BatchNorm pairs); no other method is substituted. For run-time methods the grid's
sparsity is the method's own per-input quantity (``fbs``: share of a gated layer's output channels
suppressed per input; ``cgnet``: target share of gated output elements that skip their remaining input
channels), and what they save is recorded as mean MACs per input over the test set next to the dense
MACs; ``sparsity`` in a row stays the share of zero weights. :mod:`prunekit.bench.execute` defines each.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from prunekit.bench.execute import point_problem, run_point
from prunekit.bench.spec import BenchSpec, GridPoint, Skip, load_spec
from prunekit.bench.store import ResultStore
from prunekit.errors import ConfigError

__all__ = ["BACKENDS", "RunSummary", "expand", "run_grid"]

BACKENDS = ("local", "ray")


@dataclass
class RunSummary:
    """What :func:`run_grid` did: grid points in all (``total``), those the store already had
    (``already_done``), those run now (``ran``), the ``failed`` ones as ``(label, first line of the error)``
    and the points the spec ``skipped`` with their reasons."""

    total: int = 0
    already_done: int = 0
    ran: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (label, error)
    skipped: list[Skip] = field(default_factory=list)


def expand(spec: BenchSpec, suites: Sequence[str] | None = None) -> tuple[list[GridPoint], list[Skip]]:
    """Every grid point of the selected ``suites`` (default all) and the combinations skipped with a reason:
    a method prunekit does not have, or one that cannot act on the point's model (:func:`point_problem`).

    Raises :class:`~prunekit.errors.ConfigError` for a suite the spec does not have.
    """
    points, skips = [], []
    for suite in spec.select(list(suites) if suites else None):
        p, s = suite.points()
        skips += s
        for point in p:
            problem = point_problem(point)
            if problem:
                skips.append(Skip(point.key, point.suite, point.config(), problem))
            else:
                points.append(point)
    return points, skips


def _safe_run(point: GridPoint, cache_dir: str | None) -> tuple[str, dict[str, Any] | None, str | None]:
    try:
        return point.key, run_point(point, cache_dir), None
    except Exception as e:  # noqa: BLE001  (a failed run is recorded with its reason, the grid goes on)
        return point.key, None, f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"


def _local(points: list[GridPoint], jobs: int, cache_dir: str | None) -> Iterator[tuple[str, Any, str | None]]:
    if jobs <= 1:
        for p in points:
            yield _safe_run(p, cache_dir)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_safe_run, p, cache_dir) for p in points]
        for f in as_completed(futures):
            yield f.result()


def _ray(
    points: list[GridPoint], address: str | None, cache_dir: str | None, num_cpus: int | None
) -> Iterator[tuple[str, Any, str | None]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs the ray package: pip install 'ray==2.60.0'") from None
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_safe_run)
        pending = [remote.remote(p, cache_dir) for p in points]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                yield ray.get(ref)
    finally:
        if started:
            ray.shutdown()


def run_grid(
    spec: BenchSpec | str | Path,
    store: ResultStore | str | Path,
    *,
    suites: Sequence[str] | None = None,
    backend: str = "local",
    jobs: int = 1,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    limit: int | None = None,
    on_result: Callable[[GridPoint, dict[str, Any] | None, str | None], None] | None = None,
) -> RunSummary:
    """Run every unfinished point of the selected suites; returns what was done.

    ``cache_dir``: where pre-trained dense models are shared between points (default: beside the store).
    ``limit``: run at most this many points (for smoke tests).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(spec, BenchSpec):
        spec = load_spec(spec)
    own = not isinstance(store, ResultStore)
    st = store if isinstance(store, ResultStore) else ResultStore(store)
    try:
        points, skips = expand(spec, suites)
        st.add_skips(skips)
        done = st.finished_keys()
        todo = [p for p in points if p.key not in done]
        if limit is not None:
            todo = todo[:limit]
        summary = RunSummary(
            total=len(points), already_done=len(points) - len([p for p in points if p.key not in done]), skipped=skips
        )
        cache = str(cache_dir) if cache_dir is not None else str(st.path.parent / (st.path.stem + "-cache"))
        by_key = {p.key: p for p in todo}
        if backend == "local":
            results = _local(todo, jobs, cache)
        else:
            results = _ray(todo, ray_address, cache, ray_num_cpus)
        with Progress(
            TextColumn("[bold]bench"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            disable=not progress,
        ) as bar:
            task = bar.add_task("grid", total=len(points), completed=summary.already_done, info="")
            for key, result, error in results:
                point = by_key[key]
                if error is None and result is not None:
                    st.add_run(point, result, backend)
                    summary.ran += 1
                else:
                    first = (error or "").splitlines()[0]
                    st.add_skips([Skip(key, point.suite, point.config(), f"failed: {first}")])
                    summary.failed.append((f"{point.suite}/{point.method.label}@{point.sparsity:g}", first))
                if on_result is not None:
                    on_result(point, result, error)
                bar.update(task, advance=1, info=f"{point.suite}: {point.method.label} @ {point.sparsity:g}")
        return summary
    finally:
        if own:
            st.close()
