"""OpenVINO export: fp32 round trip, int8 with calibration on real MNIST (sparse decompression decided from
the sparsity), the precision hint set explicitly, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'prunekit[deploy]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'prunekit[deploy]')")

import prunekit as pk  # noqa: E402
from prunekit.deploy import UnsupportedRuntimeOptionError, export_openvino, load_openvino  # noqa: E402
from tests.conftest import assert_unchanged, snapshot  # noqa: E402


def _has_amx_int8() -> bool:
    try:
        return "amx_int8" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def test_fp32_round_trip_precision_stated(tmp_path):
    model = _cnn()
    pk.prune(model, "magnitude", sparsity=0.8, prune_classifier=True, measure=False)
    before = snapshot(model)
    x = torch.randn(2, 1, 10, 10)
    report = export_openvino(model, x, tmp_path / "m.xml", measure_latency=False)
    assert_unchanged(model, before)
    assert report.check["passed"] and report.check["max_abs_diff"] <= 1e-4
    assert report.runtime_config["INFERENCE_PRECISION_HINT"] == "f32"
    assert "CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE" not in report.runtime_config  # fp32: it would not pay
    assert (tmp_path / "m.bin").is_file()
    ov_model = load_openvino(tmp_path / "m.xml")
    assert "32" in str(ov_model.property("INFERENCE_PRECISION_HINT"))  # f32, not the plugin's bf16 default
    x4 = torch.randn(4, 1, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(ov_model(x4), model(x4), atol=1e-4, rtol=1e-4)
    saved = json.loads((tmp_path / "m.xml.report.json").read_text())
    assert saved["runtime_config"]["INFERENCE_PRECISION_HINT"] == "f32"


def test_int8_on_real_digits_with_sparse_decompression(tmp_path):
    from prunekit import datasets

    x, y = datasets.load_digits()
    x = x.reshape(len(x), -1).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    pk.prune(model, "magnitude", sparsity=0.9, measure=False)  # the classifier stays dense
    calibration = [(x[i : i + 32], y[i : i + 32]) for i in range(0, 256, 32)]
    test = x[1000:1400]
    report = export_openvino(
        model, test[:2], tmp_path / "q.xml", quantize="int8", calibration=calibration, measure_latency=False
    )
    # int8 activations and Linear layers at 90% zeros: decompression on at the default rate
    assert report.runtime_config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] == pytest.approx(0.7)
    assert report.check["passed"] is None and "int8 weights and activations" in report.precision
    if _has_amx_int8():  # the plugin's sparse int8 kernel exists on AMX CPUs
        assert report.sparse_layers
    q = load_openvino(tmp_path / "q.xml")
    assert q.config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] == pytest.approx(0.7)
    with torch.no_grad():
        got, ref = q(test), model(test)
    assert ((got - ref).norm() / ref.norm()).item() < 0.05  # int8 error, a few percent at most
    assert (got.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.95


def test_refusals(tmp_path):
    model = _cnn()
    x = torch.randn(1, 1, 10, 10)
    before = snapshot(model)
    with pytest.raises(UnsupportedRuntimeOptionError, match="int8-weights"):
        export_openvino(model, x, tmp_path / "a.xml", quantize="int4")
    with pytest.raises(pk.MissingDataError, match="calibration"):
        export_openvino(model, x, tmp_path / "a.xml", quantize="int8")
    with pytest.raises(pk.ConfigError, match="only by quantize='int8'"):
        export_openvino(model, x, tmp_path / "a.xml", calibration=[x])
    with pytest.raises(UnsupportedRuntimeOptionError, match="sparse"):
        export_openvino(model, x, tmp_path / "a.xml", quantize="int8-weights", sparse_weights=True)
    with pytest.raises(UnsupportedRuntimeOptionError, match="precision"):
        export_openvino(model, x, tmp_path / "a.xml", precision="fp8")
    with pytest.raises(pk.CheckpointError, match=r"\.xml"):
        export_openvino(model, x, tmp_path / "a.onnx")
    assert_unchanged(model, before)
    assert list(tmp_path.iterdir()) == []


def test_wrong_input_shape_is_a_data_error_that_names_it(tmp_path):
    model = _cnn()
    with pytest.raises(pk.DataError, match=r"shape \(1, 3, 10, 10\).*Pass an input the model accepts"):
        export_openvino(model, torch.randn(1, 3, 10, 10), tmp_path / "m.xml", measure_latency=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_calls_of_changing_shapes_each_give_their_own_outputs(tmp_path):
    """Repeated calls reuse the request's own input tensors when the shape and dtype fit, and go through
    OpenVINO's input conversion when they do not: every call returns the outputs of its own inputs."""
    model = _cnn().eval()
    export_openvino(model, torch.randn(2, 1, 10, 10), tmp_path / "m.xml", measure_latency=False)
    ov_model = load_openvino(tmp_path / "m.xml")
    for batch in (2, 2, 5, 1, 5, 2):
        x = torch.randn(batch, 1, 10, 10)
        with torch.no_grad():
            torch.testing.assert_close(ov_model(x), model(x), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(ov_model(x.bfloat16()), model(x.bfloat16().float()), atol=1e-4, rtol=1e-4)
    out = ov_model(x)
    kept = out.clone()
    ov_model(torch.randn(2, 1, 10, 10))
    assert torch.equal(out, kept)  # an output is a copy: the next call does not overwrite it
    with pytest.raises(pk.DataError, match="of shape"):
        ov_model(torch.randn(2, 1, 12, 12))


def test_a_sparse_layer_the_kernel_cannot_take_is_named_in_the_notes(tmp_path):
    from prunekit.deploy.openvino import SPARSE_ALIGN

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(100, 2 * SPARSE_ALIGN), nn.ReLU(), nn.Linear(2 * SPARSE_ALIGN, 10))
    pk.prune(model, "magnitude", sparsity=0.9, measure=False)  # the classifier stays dense
    calibration = [(torch.randn(4, 100), None) for _ in range(4)]
    report = export_openvino(
        model, torch.randn(2, 100), tmp_path / "u.xml", quantize="int8", calibration=calibration, measure_latency=False
    )
    assert any(f"multiples of {SPARSE_ALIGN}" in n and "0 (100 inputs)" in n for n in report.notes), report.notes


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 3), nn.Linear(4, 3)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a(a) + self.b(b)


@pytest.mark.parametrize("quantize", [None, "int8"])
def test_inputs_the_graph_ties_must_agree(tmp_path, quantize):
    """Two inputs whose batch the traced graph ties: other equal batches run, unequal ones are refused (the
    CPU plugin itself would return an empty or stale output)."""
    model = _TwoInputs().eval()
    example = (torch.randn(2, 8), torch.randn(2, 4))
    calibration = [(torch.randn(2, 8), torch.randn(2, 4)) for _ in range(3)] if quantize else None
    export_openvino(model, example, tmp_path / "two.xml", quantize=quantize, calibration=calibration,
                    measure_latency=False)  # fmt: skip
    ov_model = load_openvino(tmp_path / "two.xml")
    a, b = torch.randn(5, 8), torch.randn(5, 4)
    with torch.no_grad():
        got, ref = ov_model(a, b), model(a, b)
    assert got.shape == ref.shape
    if quantize is None:  # int8's error on random data is not the point here
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    with pytest.raises(pk.DataError, match="to be equal"):
        ov_model(torch.randn(3, 8), torch.randn(4, 4))
