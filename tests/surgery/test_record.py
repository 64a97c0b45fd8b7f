"""Tests of :mod:`prunekit.surgery.record`: the structure record of a pruned model rebuilds it on a fresh one."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import prunekit as pk
from prunekit.errors import CheckpointError
from prunekit.surgery import apply_structure_record, remove_, structure_record


def test_structure_record_round_trip(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pk.prune(model, "l1-channel", sparsity=0.4, example_inputs=x, round_to=8, measure=False)
    rec = structure_record(model)
    assert rec is not None and rec["shapes"]
    fresh = apply_structure_record(torchvision.models.mobilenet_v2(num_classes=10), rec)
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), model(x))
    pk.save_model(model, tmp_path / "m")
    loaded = pk.load_model(tmp_path / "m", model=torchvision.models.mobilenet_v2(num_classes=10)).eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert structure_record(torchvision.models.mobilenet_v2()) is None


def test_load_model_rebuilds_a_pruned_torchvision_model_from_its_source(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = pk.build_model("torchvision:resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    pk.prune(model, "l1-channel", sparsity=0.5, example_inputs=x, measure=False)
    pk.save_model(model, tmp_path / "m")
    loaded = pk.load_model(tmp_path / "m").eval()
    assert loaded.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels < 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_the_record_lists_new_and_original_shapes_and_rebuilds_a_fresh_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    assert structure_record(model) is None  # not pruned
    remove_(model, {"0.weight": {0: np.array([1])}, "0.bias": {0: np.array([1])}, "2.weight": {1: np.array([1])}})
    rec = structure_record(model)
    assert rec["format"] == "prunekit-structure/1" and rec["removed_layers"] == []
    assert rec["shapes"] == {"0.weight": [3, 3], "0.bias": [3], "2.weight": [2, 3]}
    assert rec["original_shapes"] == {"0.weight": [4, 3], "0.bias": [4], "2.weight": [2, 4]}
    assert rec["attrs"] == {"0": {"out_features": 3}, "2": {"in_features": 3}}
    assert json.loads(json.dumps(rec)) == rec  # JSON-able
    fresh = apply_structure_record(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), rec)
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert (fresh[0].out_features, fresh[2].in_features) == (3, 3)
    x = torch.randn(5, 3)
    assert torch.equal(fresh(x), model(x))


def test_a_record_that_does_not_fit_is_refused():
    with pytest.raises(CheckpointError, match="not a prunekit structure record"):
        apply_structure_record(nn.Linear(2, 2), {"format": "something else"})
    rec = {"format": "prunekit-structure/1", "shapes": {"9.weight": [1, 1]}}
    with pytest.raises(CheckpointError, match="'9.weight'"):
        apply_structure_record(nn.Sequential(nn.Linear(2, 2)), rec)
