"""``prunekit export``: a saved pruned model to ONNX and OpenVINO, written whole into --out, refusals."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'prunekit[deploy]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'prunekit[deploy]')")

import prunekit as pk
from prunekit.cli import app
from prunekit.deploy import load_onnx

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = pk.build_model("prunekit:lenet5")
    x = torch.randn(1, 1, 28, 28)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
    d = tmp_path_factory.mktemp("saved") / "lenet-half"
    pk.save_model(model, d, source="prunekit:lenet5", extra={"input_shape": [1, 1, 28, 28]})
    return d, model


def test_export_saved_model_to_onnx(saved, tmp_path):
    d, model = saved
    out = tmp_path / "onnx"
    r = runner.invoke(app, ["export", str(d), "--to", "onnx", "--out", str(out), "--no-latency"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.onnx.report.json"]
    report = json.loads((out / "model.onnx.report.json").read_text())
    assert report["check"]["passed"] and report["path"] == str(out / "model.onnx")
    # only the batch is left free: the Linear after the flatten takes no other image size
    assert [d[1:] for d in report["runtime_config"]["dynamic_inputs"].values()] == [[1, 28, 28]]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(load_onnx(out / "model.onnx")(x), model.eval()(x), atol=1e-4, rtol=1e-4)
    # a non-empty --out is refused without --overwrite, and left as it was
    r = runner.invoke(app, ["export", str(d), "--to", "onnx", "--out", str(out), "--no-latency"])
    assert r.exit_code == 2 and "--overwrite" in r.output
    assert (out / "model.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]


def test_export_refusals(saved, tmp_path):
    d, _ = saved
    r = runner.invoke(app, ["export", str(d), "--to", "tflite", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "onnx, openvino" in r.output
    r = runner.invoke(app, ["export", str(d), "--to", "onnx", "--quantize", "int8", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "--to openvino" in r.output
    assert not (tmp_path / "a").exists()


def test_export_opset_is_written_or_refused(saved, tmp_path):
    import onnx

    d, _ = saved
    out = tmp_path / "o17"
    r = runner.invoke(app, ["export", str(d), "--to", "onnx", "--opset", "17", "--out", str(out), "--no-latency"])
    assert r.exit_code == 0, r.output
    assert {o.version for o in onnx.load(str(out / "model.onnx")).opset_import if o.domain in ("", "ai.onnx")} == {17}
    for args in (["--to", "onnx", "--opset", "7"], ["--to", "openvino", "--opset", "17"]):
        r = runner.invoke(app, ["export", str(d), *args, "--out", str(tmp_path / "x"), "--no-latency"])
        assert r.exit_code == 2 and "opset" in r.output, r.output
    assert not (tmp_path / "x").exists()


def test_export_openvino_int8_weights(saved, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'prunekit[deploy]')")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install 'prunekit[deploy]')")
    d, _ = saved
    out = tmp_path / "ov"
    r = runner.invoke(
        app, ["export", str(d), "--to", "openvino", "--quantize", "int8-weights", "--out", str(out), "--no-latency"]
    )
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == ["model.bin", "model.xml", "model.xml.report.json"]
    report = json.loads((out / "model.xml.report.json").read_text())
    assert report["runtime_config"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert report["precision"].startswith("int8 weights")
    # exported from a batch of 1: the batch is fixed at 1, and another batch is refused, not computed wrongly
    assert any("batch was fixed" in n for n in report["notes"])
    from prunekit.deploy import load_openvino

    ov_model = load_openvino(out / "model.xml")
    assert ov_model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(pk.DataError, match="batch of 2 or more"):
        ov_model(torch.randn(2, 1, 28, 28))


def test_export_builtin_model_without_input_shape(tmp_path):
    # a prunekit:NAME model carries its input shape: no --input-shape needed, and not ImageNet's
    out = tmp_path / "lenet"
    r = runner.invoke(app, ["export", "prunekit:lenet-300-100", "--to", "onnx", "--out", str(out), "--no-latency"])
    assert r.exit_code == 0, r.output
    report = json.loads((out / "model.onnx.report.json").read_text())
    assert report["input_shapes"] == [[1, 1, 28, 28]] and report["check"]["passed"]


def test_export_wrong_input_shape_exits_2_with_the_message(tmp_path):
    out = tmp_path / "lenet5"
    args = ["export", "prunekit:lenet5", "--to", "onnx", "--out", str(out), "--input-shape", "1,3,224,224"]
    r = runner.invoke(app, [*args, "--no-latency"])
    text = " ".join(r.output.split())  # the console wraps long lines
    assert r.exit_code == 2, r.output
    assert "shape (1, 3, 224, 224)" in text and "Pass an input the model accepts (--input-shape)" in text
    assert "unexpected failure" not in text
    assert not out.exists()
