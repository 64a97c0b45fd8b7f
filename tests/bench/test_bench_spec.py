from __future__ import annotations

import pytest

from prunekit.bench import GridPoint, parse_spec
from prunekit.errors import ConfigError


def _spec(**over):
    suite = {
        "models": ["bench:mlp"],
        "data": ["digits"],
        "methods": ["magnitude", "no-such-method"],
        "sparsities": [0.5, 0.9],
        "fine_tune_epochs": [0, 1],
        "seeds": [0, 1],
    }
    suite.update(over)
    return parse_spec({"suites": {"s": suite}})


def test_grid_expands_every_axis_and_skips_missing_methods_with_a_reason():
    points, skips = _spec().suites["s"].points()
    # dense baseline per (fine-tune, seed) + magnitude x 2 sparsities x 2 fine-tune x 2 seeds
    assert len(points) == 4 + 8
    assert len(skips) == 8 and all("not implemented" in s.reason for s in skips)
    assert len({p.key for p in points}) == len(points)


def test_key_is_a_stable_hash_of_the_full_configuration():
    points, _ = _spec().suites["s"].points()
    again, _ = _spec().suites["s"].points()
    assert [p.key for p in points] == [p.key for p in again]
    p = points[-1]
    assert GridPoint.from_config(p.config()) == p
    changed, _ = _spec(lr=0.01).suites["s"].points()
    assert {q.key for q in changed}.isdisjoint({q.key for q in points})


@pytest.mark.parametrize(
    "bad",
    [
        {"sparsities": [1.5]},
        {"methods": [{"method": "magnitude", "schedule": "sometimes"}]},
        {"methods": [{"method": "magnitude", "colour": "red"}]},
        {"surprise": 1},
    ],
)
def test_bad_specs_are_refused_with_a_clear_error(bad):
    with pytest.raises(ConfigError):
        _spec(**bad)


def test_the_shipped_contrast_suites_parse():
    from pathlib import Path

    from prunekit.bench import expand, load_spec

    spec = load_spec(Path(__file__).parents[2] / "benchmarks" / "suites" / "contrasts.yaml")
    assert {
        "unstructured-vs-structured",
        "one-shot-vs-iterative",
        "data-free-vs-data-driven",
        "init-vs-trained",
        "layerwise-vs-global",
        "static-vs-dynamic",
        "fine-tuning",
        "original-vs-transfer",
    } <= set(spec.suites)
    points, skips = expand(spec)
    assert points and all(s.suite == "static-vs-dynamic" for s in skips)
