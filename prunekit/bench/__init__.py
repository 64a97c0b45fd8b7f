"""Benchmarks: a declarative grid of the survey's comparisons, run resumably into a results store,
then turned into tables, plots and one HTML page.

``load_spec`` reads the YAML; ``run_grid`` executes it (local processes or Ray); ``ResultStore`` holds one
row per finished run; ``write_report`` writes markdown tables, PNG plots and a self-contained HTML page.
"""

from prunekit.bench.execute import DETERMINISTIC_METRICS, point_problem, run_point
from prunekit.bench.runner import BACKENDS, RunSummary, expand, run_grid
from prunekit.bench.spec import BenchSpec, GridPoint, MethodSpec, Skip, Suite, load_spec, parse_spec
from prunekit.bench.store import ResultStore

__all__ = [
    "BACKENDS",
    "BenchSpec",
    "DETERMINISTIC_METRICS",
    "GridPoint",
    "MethodSpec",
    "ResultStore",
    "RunSummary",
    "Skip",
    "Suite",
    "expand",
    "load_spec",
    "parse_spec",
    "point_problem",
    "run_grid",
    "run_point",
    "write_report",
]


def __getattr__(name: str):  # the report pulls in matplotlib: import it only when asked for
    if name == "write_report":
        from prunekit.bench.report import write_report

        return write_report
    raise AttributeError(name)
