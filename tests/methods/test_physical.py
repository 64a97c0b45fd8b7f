"""Tests of :mod:`prunekit.methods.physical`: any criterion at a physical level (channel, head, layer, embedding)
is a structural method; other levels and criteria without a meaning there are refused by name."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN
from unit_models import IDS, IMG_BATCHES, TOKENS, X_IMG, tiny_cnn, tiny_llama

import prunekit as pk
from prunekit.criteria import CriterionLevelError
from prunekit.methods.physical import PHYSICAL_LEVELS, physical_method

transformers = pytest.importorskip("transformers")


def test_physical_method_runs_any_criterion_at_a_level() -> None:
    model = tiny_llama(layers=4)
    pk.prune(
        model,
        physical_method("head", "taylor"),
        sparsity=0.5,
        example_inputs={"input_ids": IDS},
        calibration=TOKENS,
        measure=False,
    )
    assert model.config.num_key_value_heads == 1
    pk.prune(model, physical_method("layer", "fpgm"), sparsity=0.5, example_inputs={"input_ids": IDS}, measure=False)
    assert model.config.num_hidden_layers == 2
    cnn = tiny_cnn()
    pk.prune(
        cnn,
        physical_method("channel", "wanda"),
        sparsity=0.5,
        example_inputs=X_IMG,
        calibration=IMG_BATCHES,
        measure=False,
    )
    assert cnn.conv2.out_channels == 4
    assert physical_method("channel", "l2").name == "l2-channel"
    with pytest.raises(CriterionLevelError):
        physical_method("head", "apoz")
    with pytest.raises(pk.ConfigError, match="channel, embedding, head, layer"):
        physical_method("block", "l2")


def test_physical_channel_pruner_really_shrinks_the_model():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(1, 4, 6, 6)
    params = sum(p.numel() for p in model.parameters())
    report = pk.prune(
        model, pk.Pruner("fpgm", pk.Channel(physical=True)), sparsity=0.5, example_inputs=x, measure=False
    )
    assert sum(p.numel() for p in model.parameters()) < params
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # no masks: shapes changed
    assert report.settings["pattern"] == "channel (physical)" and report.settings["criterion"] == "fpgm"
    assert model(x).shape == (1, 3)


def test_physical_method_names_its_level_and_criterion():
    assert PHYSICAL_LEVELS == ("channel", "embedding", "head", "layer")
    assert physical_method("channel", "magnitude").name == "l1-channel"  # the named method's own name
    assert physical_method("channel", "obd").name == "hessian-channel"
    m = physical_method("head", "taylor")
    assert m.name == "taylor-head" and m.kind == "head" and m.needs_data
    assert "attention heads" in m.description and m.criterion.name == "taylor"
    assert not physical_method("layer", "magnitude").needs_data
    assert physical_method("embedding", "l2").name == "l2-embedding"
