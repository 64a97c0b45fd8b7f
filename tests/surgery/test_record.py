"""Tests of :mod:`prunekit.surgery.record`: the structure record of a pruned model rebuilds it on a fresh one."""

from __future__ import annotations

import torch
import torchvision

import prunekit as pk
from prunekit.surgery import apply_structure_record, structure_record


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
