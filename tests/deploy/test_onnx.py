"""ONNX export: round trips in ONNX Runtime against PyTorch (masked, structurally pruned, Hugging Face),
the user's model untouched, and refusals."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("onnx", reason="onnx is not installed (pip install 'prunekit[deploy]')")
pytest.importorskip("onnxscript", reason="onnxscript is not installed (pip install 'prunekit[deploy]')")
pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'prunekit[deploy]')")

import prunekit as pk  # noqa: E402
from prunekit.deploy import (  # noqa: E402
    ExportCheckError,
    ExportFailedError,
    UnsupportedRuntimeOptionError,
    compare_outputs,
    export_onnx,
    load_onnx,
)
from tests.conftest import assert_unchanged, snapshot  # noqa: E402


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def test_masked_model_exports_folded_copy_and_leaves_masks(tmp_path):
    model = _cnn()
    pk.prune(model, "magnitude", sparsity=0.9, prune_classifier=True, measure=False)
    before = snapshot(model)
    x = torch.randn(2, 1, 12, 12)
    report = export_onnx(model, x, tmp_path / "m.onnx", latency_budget_s=0.05)
    assert_unchanged(model, before)  # masks still attached, nothing changed
    assert pk.get_mask(model[0]) is not None
    model(x)  # the user's model still runs after its copy was squashed
    assert report.check["passed"] and report.check["max_abs_diff"] <= 1e-4
    assert report.weight_sparsity > 0.8
    # the file runs at another batch size (dynamic batch) and matches PyTorch
    ort = load_onnx(tmp_path / "m.onnx")
    x5 = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(ort(x5), model(x5), atol=1e-4, rtol=1e-4)
    # sparse initializers shrink the file below the dense original's (exported for the latency comparison)
    import onnx

    assert len(onnx.load(str(tmp_path / "m.onnx")).graph.sparse_initializer) >= 2
    weight_bytes = 4 * sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert report.dense_file_bytes - report.file_bytes > 0.5 * weight_bytes  # 90% zeros: values + indices ~0.3x
    # latency against the dense original (masks off) in ONNX Runtime and PyTorch, and the model's own PyTorch form
    assert report.baseline.startswith("the model with its prunekit masks taken off")
    assert set(report.latency) == {"vs dense onnxruntime", "vs dense pytorch", "vs same model in pytorch"}
    assert all(c.candidate.median_ms > 0 and c.baseline.median_ms > 0 for c in report.latency.values())
    saved = json.loads((tmp_path / "m.onnx.report.json").read_text())
    assert saved["format"] == "onnx" and saved["check"]["passed"] and "vs dense pytorch" in saved["latency"]


def test_hugging_face_causal_lm_logits(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    ids = torch.randint(0, 64, (2, 8))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    report = export_onnx(model, inputs, tmp_path / "lm.onnx", measure_latency=False)
    assert report.check["passed"]
    assert model.config.use_cache  # the user's config is untouched
    ort = load_onnx(tmp_path / "lm.onnx")
    ids3 = torch.randint(0, 64, (1, 11))  # another batch and sequence length
    with torch.no_grad():
        ref = model(input_ids=ids3, attention_mask=torch.ones_like(ids3), use_cache=False).logits
    torch.testing.assert_close(ort(input_ids=ids3, attention_mask=torch.ones_like(ids3)), ref, atol=1e-4, rtol=1e-4)


class _Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace it
            return x * 2
        return x


def test_refusals_leave_files_alone(tmp_path):
    model = _cnn()
    x = torch.randn(1, 1, 8, 8)
    target = tmp_path / "m.onnx"
    target.write_bytes(b"keep")
    with pytest.raises(pk.CheckpointError, match="overwrite=True"):
        export_onnx(model, x, target, measure_latency=False)
    assert target.read_bytes() == b"keep"
    with pytest.raises(pk.CheckpointError, match=r"\.onnx"):
        export_onnx(model, x, tmp_path / "m.txt", measure_latency=False)
    with pytest.raises(ExportFailedError, match="could not export"):
        export_onnx(_Branchy(), torch.randn(2, 3), tmp_path / "b.onnx", measure_latency=False)
    assert not (tmp_path / "b.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no partial folders left behind
    with pytest.raises(pk.DataError):
        export_onnx(model, None, tmp_path / "n.onnx")
    report = tmp_path / "r.onnx.report.json"  # an existing report is an output too
    report.write_text("mine")
    with pytest.raises(pk.CheckpointError, match=r"r\.onnx\.report\.json already exists"):
        export_onnx(model, x, tmp_path / "r.onnx", measure_latency=False)
    assert report.read_text() == "mine" and not (tmp_path / "r.onnx").exists()
    with pytest.raises(pk.CheckpointError, match="plain is a file"):
        (tmp_path / "plain").write_text("x")
        export_onnx(model, x, tmp_path / "plain" / "m.onnx", measure_latency=False)


@pytest.mark.parametrize(
    "bad, word",
    [
        (dict(atol=-1), "atol"),
        (dict(rtol=float("nan")), "rtol"),
        (dict(dynamic="no"), "dynamic"),
        (dict(latency_budget_s=-1), "latency_budget_s"),
        (dict(threads=0), "threads"),
    ],
)
def test_meaningless_options_are_refused_before_anything_is_written(tmp_path, bad, word):
    with pytest.raises(pk.ConfigError, match=word):
        export_onnx(_cnn(), torch.randn(1, 1, 8, 8), tmp_path / "m.onnx", **bad)
    assert not list(tmp_path.iterdir())


def test_exports_of_one_name_to_two_runtimes_keep_both_reports(tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'prunekit[deploy]')")
    from prunekit.deploy import export_openvino, report_path_of

    model, x = _cnn(), torch.randn(1, 1, 8, 8)
    export_onnx(model, x, tmp_path / "m.onnx", measure_latency=False)
    export_openvino(model, x, tmp_path / "m.xml", measure_latency=False)
    assert (
        json.loads(report_path_of(tmp_path / "m.onnx").read_text())["format"]
        != json.loads(report_path_of(tmp_path / "m.xml").read_text())["format"]
    )


def test_output_check_compares_elementwise():
    ref = [torch.tensor([1.0, 2.0])]
    assert compare_outputs(ref, [torch.tensor([1.0, 2.0001]).numpy()], atol=1e-3, rtol=0)["passed"]
    bad = compare_outputs(ref, [torch.tensor([1.0, 2.1]).numpy()], atol=1e-3, rtol=0)
    assert not bad["passed"] and bad["max_abs_diff"] == pytest.approx(0.1, abs=1e-6)
    assert not compare_outputs(ref, [torch.tensor([1.0, float("nan")]).numpy()], atol=1, rtol=0)["passed"]
    assert issubclass(ExportCheckError, pk.PrunekitError)


def test_opset_is_written_as_asked_or_refused_before_anything_is_written(tmp_path):
    import onnx

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(2, 6)
    # 17 is below the exporter's own opset (18): it converts the graph, and the file and report say 17
    report = export_onnx(mlp, x, tmp_path / "m17.onnx", opset=17, measure_latency=False)
    opsets = {o.domain: o.version for o in onnx.load(str(tmp_path / "m17.onnx")).opset_import}
    assert report.runtime_config["opset"] == 17 and opsets.get("", opsets.get("ai.onnx")) == 17
    newest = onnx.defs.onnx_opset_version()
    # out of the range the exporter reaches: refused up front, naming the range; nothing written
    for bad in (3, newest + 1):
        with pytest.raises(UnsupportedRuntimeOptionError, match=rf"opset={bad} .*opsets 13 to {newest}"):
            export_onnx(mlp, x, tmp_path / f"m{bad}.onnx", opset=bad, measure_latency=False)
    # in the range, but this model's pooling (ReduceMean) has no converter below 18: refused, not kept at 18
    with pytest.raises(UnsupportedRuntimeOptionError, match=r"could not convert .* to opset 17 .*from 18"):
        export_onnx(_cnn(), torch.randn(2, 1, 8, 8), tmp_path / "cnn.onnx", opset=17, measure_latency=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m17.onnx", "m17.onnx.report.json"]


def test_wrong_input_shape_is_a_data_error_that_names_it(tmp_path):
    model = pk.build_model("prunekit:lenet5")
    before = snapshot(model)
    with pytest.raises(
        pk.DataError, match=r"shape \(1, 3, 224, 224\).*\(1, 1, 28, 28\)\. Pass an input the model accepts"
    ):
        export_onnx(model, torch.randn(1, 3, 224, 224), tmp_path / "m.onnx", measure_latency=False)
    assert list(tmp_path.iterdir()) == []  # nothing half-written
    assert_unchanged(model, before)


class _ThreeInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.lin(a) + 2 * b + 3 * c


def test_keyword_inputs_are_matched_by_name_in_every_runtime(tmp_path):
    from prunekit.deploy import load_onnx

    model = _ThreeInputs().eval()
    x, y, z = (torch.randn(2, 4) for _ in range(3))
    export_onnx(model, (x, y, z), tmp_path / "three.onnx", measure_latency=False)
    runtimes = [load_onnx(tmp_path / "three.onnx")]
    try:
        from prunekit.deploy import export_openvino, load_openvino

        export_openvino(model, (x, y, z), tmp_path / "three.xml", measure_latency=False)
        runtimes.append(load_openvino(tmp_path / "three.xml"))
    except pk.PrunekitError:  # openvino not installed: ONNX Runtime alone
        pass
    with torch.no_grad():
        ref = model(x, c=z, b=y)
    for rt in runtimes:
        torch.testing.assert_close(rt(x, c=z, b=y), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rt(c=z, a=x, b=y), ref, atol=1e-5, rtol=1e-5)
        with pytest.raises(pk.DataError, match="no input 'd'"):
            rt(x, y, d=z)


class _NestedInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4)

    def forward(self, x: torch.Tensor, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.a(x) + self.b(feats["u"]) - self.c(feats["v"])


@pytest.mark.parametrize("dynamic", [True, False])
def test_nested_inputs_are_matched_by_key_in_every_runtime(tmp_path, dynamic):
    from prunekit.deploy import load_onnx

    model = _NestedInputs().eval()
    x, u, v = (torch.randn(3, 6) for _ in range(3))
    example = {"x": x, "feats": {"v": v, "u": u}}  # keys in another order than the calls below
    export_onnx(model, example, tmp_path / "n.onnx", dynamic=dynamic, measure_latency=False)
    runtimes = [load_onnx(tmp_path / "n.onnx")]
    try:
        from prunekit.deploy import export_openvino, load_openvino

        export_openvino(model, example, tmp_path / "n.xml", dynamic=dynamic, measure_latency=False)
        runtimes.append(load_openvino(tmp_path / "n.xml"))
    except pk.PrunekitError:  # openvino not installed: ONNX Runtime alone
        pass
    with torch.no_grad():
        ref = model(x, {"u": u, "v": v})
    export_onnx(model, (x, {"u": u, "v": v}), tmp_path / "p.onnx", dynamic=dynamic, measure_latency=False)
    runtimes.append(load_onnx(tmp_path / "p.onnx"))  # the dict as the last positional input
    for rt in runtimes:
        torch.testing.assert_close(rt(x, {"u": u, "v": v}), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rt(feats={"u": u, "v": v}, x=x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rt(x.double(), {"u": u, "v": v}), ref, atol=1e-5, rtol=1e-5)  # converted
        with pytest.raises(pk.DataError, match="by key path"):
            rt(x, {"u": u, "w": v})
