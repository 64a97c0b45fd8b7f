"""A tiny, seeded benchmark grid shared by the bench tests: sklearn digits, a small MLP, seconds in all."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_SPEC = """
suites:
  tiny:
    question: unstructured vs structured, one-shot vs iterative, on digits
    survey: structured pruning is faster; iterative keeps more accuracy
    models: [bench:mlp]
    data: [digits]
    methods:
      - {method: magnitude, label: unstructured}
      - {method: l2-channel, label: structured}
      - {method: magnitude, schedule: "iterative:2", label: iterative (2 steps)}
      - {method: snip, label: SNIP at init}
      - {method: not-a-method-yet, label: missing}
    sparsities: [0.5, 0.8, 0.9]
    pretrain_epochs: 1
    fine_tune_epochs: [2]
    calibration_size: [64]
"""


@pytest.fixture(scope="session")
def tiny_spec(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("spec") / "tiny.yaml"
    path.write_text(TINY_SPEC)
    return path


@pytest.fixture(scope="session")
def tiny_store(tiny_spec: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny grid run once, uninterrupted, in this process."""
    from prunekit.bench import run_grid

    store = tmp_path_factory.mktemp("store") / "results.db"
    summary = run_grid(tiny_spec, store, progress=False)
    assert not summary.failed, summary.failed
    return store
