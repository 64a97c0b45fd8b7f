"""Prefill / decode tokens per second, timed interleaved (prunekit.llm.throughput)."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import ConfigError, DataError  # noqa: E402
from prunekit.llm.throughput import throughput  # noqa: E402
from tests.conftest import assert_unchanged, snapshot
from tests.llm.conftest import tiny_model


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a shared machine's cores are not oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_throughput_measures_every_model_against_the_reference_and_changes_nothing():
    dense, shallow = tiny_model(layers=2), tiny_model(layers=1)
    dense.train()
    state = snapshot(dense)
    res = throughput({"dense": dense, "shallow": shallow}, prompt_len=8, new_tokens=4, repeats=3, warmup=1)
    assert res.reference == "dense" and res.decode_ratio["dense"] == (1.0, 1.0, 1.0)
    for name in ("dense", "shallow"):
        assert len(res.raw[name]["prefill"]) == 3 and len(res.raw[name]["decode"]) == 3
        q1, med, q3 = res.decode_tps[name]
        assert 0 < q1 <= med <= q3
    assert res.parameters["shallow"] < res.parameters["dense"]
    assert res.settings["new_tokens"] == 4 and res.settings["prompt_len"] == 8
    assert dense.training and not shallow.training  # modes restored
    assert_unchanged(dense, state)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"models": {}}, ConfigError),
        ({"reference": "x"}, ConfigError),
        ({"repeats": 0}, ConfigError),
        ({"prompt": torch.zeros(4)}, DataError),
    ],
)
def test_bad_settings_are_refused(kwargs, error):
    models = kwargs.pop("models", {"dense": tiny_model()})
    with pytest.raises(error):
        throughput(models, **kwargs)
