"""The composability contract over the registries (see prunekit.bench.composability).

Every registered criterion x granularity runs on a tiny CNN, a tiny ViT and a tiny Llama; every
allocation runs with a data-free and a data-driven criterion. Each combination either works (the
requested shape was removed and the model still runs) or raises a PrunekitError with the model
bit-identical: no raw exception, no silent substitution.
"""

import pytest
import torch

from prunekit.bench.composability import ALLOCATIONS, GRANULARITIES, markdown, run_matrix, summarise
from prunekit.criteria import BUILTIN


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _failures(cells):
    return [
        f"{c.model} {c.criterion} x {c.granularity} ({c.allocation}): {c.status}: {c.detail}"
        for c in cells
        if c.status in ("raw", "silent")
    ]


def test_every_criterion_at_every_granularity():
    cells = run_matrix(criteria=BUILTIN, granularities=GRANULARITIES, allocations=("uniform",))
    summary = summarise(cells)
    assert not _failures(cells), "\n".join(_failures(cells))
    assert summary["pairs_total"] == len(BUILTIN) * len(GRANULARITIES) == 119
    assert summary["pairs_working"] >= 100, markdown(cells, summary)
    per = summary["criteria_per_granularity"]
    assert per["head"] >= 8 and per["layer"] >= 8, per


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_every_allocation_at_every_granularity(criterion):
    cells = run_matrix(criteria=[criterion], granularities=GRANULARITIES, allocations=ALLOCATIONS)
    assert not _failures(cells), "\n".join(_failures(cells))
    ok = {(c.granularity, c.allocation) for c in cells if c.status == "ok"}
    # N:M fixes every layer's sparsity: only uniform; every other granularity takes every allocation
    for g in GRANULARITIES:
        for a in ALLOCATIONS:
            if g == "2:4" and a != "uniform":
                assert (g, a) not in ok
            else:
                assert (g, a) in ok, (g, a, [c.detail for c in cells if (c.granularity, c.allocation) == (g, a)])
