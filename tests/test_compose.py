"""Composing the parts: any registered criterion with any granularity and allocation, through pk.Pruner,
pk.prune(model, pruner) and the named methods; refusals name what works."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN, ThreeLayer, assert_unchanged, snapshot
from torch import nn

import prunekit as pk
from prunekit.criteria import BUILTIN, CRITERIA, CriterionLevelError

# ---- prune(model, pruner) -----------------------------------------------------------------------------


def test_prune_accepts_a_pruner_with_report_and_transaction():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(4, 4, 6, 6)
    calib = [(x, torch.tensor([0, 1, 2, 0]))]
    report = pk.prune(
        model,
        pk.Pruner(criterion="taylor", granularity="channel", allocation="global"),
        sparsity=0.5,
        calibration=calib,
        example_inputs=x,
        measure_latency=False,
    )
    assert report.settings["criterion"] == "taylor" and report.settings["pattern"] == "channel"
    assert report.settings["allocation"].startswith("global")
    assert report.sparsity == pytest.approx(0.5, abs=0.05)
    # a refusal leaves the model bit-identical
    model = SmallCNN()
    before = snapshot(model)
    with pytest.raises(pk.MissingDataError):
        pk.prune(model, pk.Pruner("wanda"), sparsity=0.5, measure=False)
    assert_unchanged(model, before)


def test_prune_fills_what_the_pruner_was_not_given_and_refuses_clashes():
    model = ThreeLayer()
    report = pk.prune(model, pk.Pruner("magnitude", skip_incompatible=True), sparsity=0.5, pattern="2:4", measure=False)
    assert report.settings["pattern"] == "2:4" and pk.get_mask(model.fc2) is None
    with pytest.raises(pk.ConfigError, match="one place"):
        pk.prune(ThreeLayer(), pk.Pruner("magnitude", "channel"), sparsity=0.5, pattern="2:4", measure=False)
    with pytest.raises(pk.ConfigError, match="one place"):
        pk.prune(
            ThreeLayer(), pk.Pruner("magnitude", allocation="erk"), sparsity=0.5, allocation="global", measure=False
        )
    with pytest.raises(pk.ConfigError, match="accepts"):
        pk.prune(ThreeLayer(), pk.Pruner("magnitude"), sparsity=0.5, colour="red", measure=False)
    overrides = pk.prune(ThreeLayer(), pk.Pruner("magnitude", overrides={"fc1": 0.9}), sparsity=0.5, measure=False)
    assert {r.name: r.target for r in overrides.layers}["fc1"] == pytest.approx(0.9)


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


@pytest.mark.parametrize("name", BUILTIN)
def test_every_criterion_is_reachable_through_a_pruner(name):
    """Each criterion prunes a small CNN at the first masking level it has, or (influence: layers only) is
    refused with the levels it has."""
    crit = CRITERIA.get(name)
    model = _bn_cnn()
    x = torch.randn(4, 4, 6, 6)
    calib = [(x, torch.tensor([0, 1, 2, 0]))]
    level = "unstructured" if "element" in crit.levels else "channel" if "channel" in crit.levels else None
    if level is None:
        with pytest.raises(CriterionLevelError, match="layer"):
            pk.Pruner(name, "channel")
        return
    report = pk.prune(model, pk.Pruner(name, level), sparsity=0.5, calibration=calib, example_inputs=x, measure=False)
    assert report.sparsity == pytest.approx(0.5, abs=0.02), name
    assert report.settings["criterion"] == name
