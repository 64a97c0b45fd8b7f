from __future__ import annotations

import pytest

from prunekit.advise import advise, model_family
from prunekit.errors import ConfigError


def test_latency_on_cpu_recommends_structured_pruning_and_warns_off_unstructured():
    a = advise("prunekit:resnet-small", target="latency", hardware="cpu", data="few", retrain=True)
    assert a.family == "cnn"
    assert a.recommendations[0].method in ("taylor-channel", "l2-channel")
    assert all(r.available for r in a.recommendations)
    assert any("unstructured" in x for x in a.avoid)


def test_no_data_and_no_retraining_exclude_data_driven_and_training_methods():
    a = advise("prunekit:lenet5", target="size", hardware="cpu", data="none", retrain=False)
    methods = [r.method for r in a.recommendations]
    assert not {"snip", "taylor-channel", "gmp", "imp", "rigl", "sparsegpt", "wanda"} & set(methods)
    gpu = advise("prunekit:lenet5", target="latency", hardware="gpu", data="few", retrain=True)
    assert gpu.recommendations[0].settings.get("pattern") == "2:4"


def test_language_models_get_post_training_methods():
    assert model_family("smollm2-135m") == "llm"
    a = advise("smollm2-135m", target="accuracy", hardware="gpu", data="few", retrain=False)
    assert a.recommendations[0].method == "sparsegpt"


def test_bad_situations_are_refused():
    with pytest.raises(ConfigError):
        advise("x", target="speed")


def test_advice_cites_the_measured_results(tiny_store):
    a = advise("bench:mlp", target="latency", hardware="cpu", data="few", retrain=True, results=tiny_store)
    text = a.to_text()
    assert "measured on this machine" in text
    assert any("structured pruning" in e and "x at batch 1" in e for e in a.evidence)
    assert any(e.startswith("unstructured pruning gave") for e in a.evidence)
