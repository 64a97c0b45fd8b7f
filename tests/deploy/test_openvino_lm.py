"""OpenVINO export of causal LMs with their key/value cache (``export_openvino(kv_cache=...)``) and greedy
generation through it (``OpenVINOCausalLM``), checked token for token against ``transformers``."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'prunekit[deploy]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'prunekit[deploy]')")
transformers = pytest.importorskip("transformers", reason="causal LM export needs transformers")

import prunekit as pk  # noqa: E402
from prunekit.deploy import OpenVINOCausalLM, UnsupportedRuntimeOptionError, export_openvino  # noqa: E402
from prunekit.errors import ConfigError, ModelError, UnsupportedModuleError  # noqa: E402
from tests.conftest import assert_unchanged, snapshot  # noqa: E402
from tests.llm.conftest import VOCAB, calibration, tiny_model  # noqa: E402

IDS = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))


def _hf_greedy(model, ids, n, mask=None):  # noqa: ANN001, ANN202
    model.generation_config.eos_token_id = None  # exactly n tokens, no stop
    mask = torch.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        return model.generate(
            input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n, pad_token_id=0, use_cache=True
        )


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_greedy_tokens_equal_transformers(tmp_path, family):
    model = tiny_model(family)
    before = snapshot(model)
    report = export_openvino(model, {"input_ids": IDS}, tmp_path / "lm.xml", measure_latency=False)
    assert_unchanged(model, before)
    assert report.check["passed"] and "empty cache" in report.check["steps"]
    assert any("kv_cache=None chose it" in n for n in report.notes)
    assert (
        "inference precision hint f32" in report.precision
        and report.runtime_config["INFERENCE_PRECISION_HINT"] == "f32"
    )
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    assert lm.runtime.input_names[:4] == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key"]
    assert lm.layout == [(2, 16), (2, 16)]
    assert "32" in str(lm.runtime.property("INFERENCE_PRECISION_HINT"))
    got = lm.generate(IDS, 12)
    assert torch.equal(got, _hf_greedy(model, IDS, 12))
    one = IDS[1:, :5]  # another batch size and prompt length than the export's
    assert torch.equal(lm.generate(one, 9), _hf_greedy(model, one, 9))
    with torch.no_grad():
        torch.testing.assert_close(lm(IDS), model(IDS).logits, atol=1e-4, rtol=1e-4)


def test_left_padding_follows_transformers(tmp_path):
    model = tiny_model("llama")
    export_openvino(model, {"input_ids": IDS}, tmp_path / "lm.xml", measure_latency=False)
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    mask = torch.ones_like(IDS)
    mask[0, :3] = 0  # the first row's prompt is 4 tokens, left-padded
    got = lm.generate(IDS, 8, attention_mask=mask)
    want = _hf_greedy(model, IDS, 8, mask)
    assert torch.equal(got[:, IDS.shape[1] :], want[:, IDS.shape[1] :])
    alone = lm.generate(IDS[:1, 3:], 8)  # the padded row alone, unpadded
    assert torch.equal(alone[:, 4:], got[:1, IDS.shape[1] :])


def test_eos_stops_a_row_and_pads_it(tmp_path):
    model = tiny_model("llama")
    export_openvino(model, {"input_ids": IDS}, tmp_path / "lm.xml", measure_latency=False)
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    free = lm.generate(IDS, 6)
    eos = int(free[0, IDS.shape[1] + 1])  # the first row's second new token
    got = lm.generate(IDS, 6, eos_token_id=eos, pad_token_id=0)
    row = got[0, IDS.shape[1] :].tolist()
    assert row[1] == eos and all(t == 0 for t in row[2:])
    if eos not in free[1, IDS.shape[1] :].tolist():  # the other row runs on unchanged
        assert torch.equal(got[1, : free.shape[1]], free[1, : got.shape[1]])


def test_flap_per_layer_widths(tmp_path):
    model = tiny_model("llama", layers=3)
    model.config.num_attention_heads, model.config.num_key_value_heads = 4, 2
    pk.prune(model, "flap", sparsity=0.4, calibration=calibration(), measure_latency=False)
    heads = [layer.self_attn.k_proj.out_features // 16 for layer in model.model.layers]
    widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    assert len(set(widths)) > 1  # the layers differ
    export_openvino(model, {"input_ids": IDS}, tmp_path / "lm.xml", measure_latency=False)
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    assert lm.layout == [(h, 16) for h in heads]
    assert torch.equal(lm.generate(IDS, 10), _hf_greedy(model, IDS, 10))


def test_int8_weights_on_the_kv_route(tmp_path):
    model = tiny_model("llama")
    report = export_openvino(
        model, {"input_ids": IDS}, tmp_path / "lm.xml", quantize="int8-weights", measure_latency=False
    )
    assert report.precision.startswith("int8 weights") and "inference precision hint f32" in report.precision
    assert report.check["passed"] is None and report.check["relative_l2_error"] < 0.05
    fp32 = export_openvino(model, {"input_ids": IDS}, tmp_path / "fp32.xml", measure_latency=False)
    assert report.file_bytes < 0.6 * fp32.file_bytes
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    assert "32" in str(lm.runtime.property("INFERENCE_PRECISION_HINT"))
    assert lm.generate(IDS, 4).shape == (2, IDS.shape[1] + 4)


def test_no_cache_graph_kept_and_same_logits(tmp_path):
    model = tiny_model("llama")
    report = export_openvino(model, {"input_ids": IDS}, tmp_path / "plain.xml", kv_cache=False, measure_latency=False)
    assert report.input_shapes == [list(IDS.shape)]
    plain = pk.deploy.load_openvino(tmp_path / "plain.xml")
    with pytest.raises(ModelError, match="kv_cache=True"):
        OpenVINOCausalLM(tmp_path / "plain.xml")
    export_openvino(model, {"input_ids": IDS}, tmp_path / "kv.xml", kv_cache=True, measure_latency=False)
    kv = OpenVINOCausalLM(tmp_path / "kv.xml")
    torch.testing.assert_close(kv(IDS), plain(input_ids=IDS), atol=1e-5, rtol=1e-5)


def test_latency_is_generation_against_transformers(tmp_path):
    model = tiny_model("llama")
    report = export_openvino(model, IDS, tmp_path / "lm.xml", latency_budget_s=0.3)
    assert list(report.latency) == ["generation vs same model in pytorch"]
    assert report.latency["generation vs same model in pytorch"].candidate.median_ms > 0
    dense = tiny_model("llama", seed=1)
    report = export_openvino(model, IDS, tmp_path / "b.xml", baseline=dense, latency_budget_s=0.3)
    assert sorted(report.latency) == [
        "generation vs dense openvino",
        "generation vs dense pytorch",
        "generation vs same model in pytorch",
    ]
    assert report.dense_file_bytes and report.dense_file_bytes > 0


def test_refusals(tmp_path):
    gpt2 = tiny_model("gpt2")
    with pytest.raises(UnsupportedModuleError, match="llama, qwen2"):
        export_openvino(gpt2, {"input_ids": IDS}, tmp_path / "a.xml", kv_cache=True, measure_latency=False)
    report = export_openvino(gpt2, {"input_ids": IDS}, tmp_path / "g.xml", measure_latency=False)
    assert any("without a KV cache" in n and "llama, qwen2" in n for n in report.notes)
    with pytest.raises(UnsupportedModuleError, match="families llama, qwen2, not 'mistral'"):
        export_openvino(tiny_model("mistral"), IDS, tmp_path / "m.xml", kv_cache=True, measure_latency=False)
    sliding = tiny_model("qwen2", use_sliding_window=True, sliding_window=8)
    with pytest.raises(UnsupportedModuleError, match="full attention"):
        export_openvino(sliding, IDS, tmp_path / "m.xml", kv_cache=True, measure_latency=False)
    with pytest.raises(UnsupportedModuleError, match="not one"):
        export_openvino(torch.nn.Linear(4, 4), torch.randn(2, 4), tmp_path / "l.xml", kv_cache=True)
    llama = tiny_model("llama")
    with pytest.raises(UnsupportedRuntimeOptionError, match="dynamic=True"):
        export_openvino(llama, IDS, tmp_path / "b.xml", kv_cache=True, dynamic=False)
    with pytest.raises(UnsupportedRuntimeOptionError, match="int8-weights"):
        export_openvino(llama, IDS, tmp_path / "b.xml", kv_cache=True, quantize="int8", calibration=[IDS])
    with pytest.raises(ConfigError, match="kv_cache"):
        export_openvino(llama, IDS, tmp_path / "b.xml", kv_cache="yes")
    with pytest.raises(pk.DataError, match="2 or more"):
        export_openvino(llama, IDS[:, :1], tmp_path / "b.xml", measure_latency=False)
    assert not list(tmp_path.glob("b.*"))


def test_load_openvino_gives_the_causal_lm_wrapper_for_a_kv_graph(tmp_path):
    from prunekit.deploy import load_openvino

    model = tiny_model("llama")
    ids = IDS
    path = tmp_path / "lm.xml"
    export_openvino(model, {"input_ids": ids}, path, measure_latency=False)
    loaded = load_openvino(path)
    assert isinstance(loaded, OpenVINOCausalLM)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    torch.testing.assert_close(torch.as_tensor(loaded(ids)), expected, rtol=1e-4, atol=1e-4)


def test_generate_refuses_ids_outside_the_vocabulary_and_right_padding(tmp_path):
    from prunekit.errors import DataError

    model = tiny_model("llama")
    export_openvino(model, {"input_ids": IDS}, tmp_path / "lm.xml", measure_latency=False)
    lm = OpenVINOCausalLM(tmp_path / "lm.xml")
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        lm.generate(IDS + VOCAB, 2)
    with pytest.raises(DataError, match="outside the model's vocabulary"):
        lm(IDS - VOCAB)
    right = torch.ones_like(IDS)
    right[1, -2:] = 0
    with pytest.raises(DataError, match="left padding only"):
        lm.generate(IDS, 2, attention_mask=right)


def test_a_left_padded_row_stays_finite_without_the_cache(tmp_path):
    """The graph without a KV cache on a batch whose second row is left-padded: the real tokens' logits equal
    PyTorch's (fused attention gave NaN for the fully masked padded positions, which spread to the row)."""
    from prunekit.deploy import load_openvino

    model = tiny_model("llama").eval()
    before, attention = snapshot(model), model.config._attn_implementation
    ids = torch.randint(0, VOCAB, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    report = export_openvino(
        model, {"input_ids": ids, "attention_mask": mask}, tmp_path / "m.xml", kv_cache=False, measure_latency=False
    )
    assert_unchanged(model, before)  # the attention form is switched in the exported copy only
    assert model.config._attn_implementation == attention == "sdpa"
    assert any("eager form" in n for n in report.notes)
    mask[1, :3] = 0
    got = load_openvino(tmp_path / "m.xml")(input_ids=ids, attention_mask=mask)
    got = got[0] if isinstance(got, tuple) else got
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got[1, 3:], ref[1, 3:], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    # a graph without an attention mask cannot be given padding: the fused attention stays
    report = export_openvino(model, {"input_ids": ids}, tmp_path / "ids.xml", kv_cache=False, measure_latency=False)
    assert not any("eager form" in n for n in report.notes)
