"""Physical removal of heads, MLP channels and layers; save_pretrained / from_pretrained round trips."""

from __future__ import annotations

import pytest
import torch

from prunekit.errors import UnsupportedModuleError
from prunekit.llm.structured import choose_gqa_shape, prune_structured, remove_layers_

from .conftest import VOCAB, calibration, tiny_model

transformers = pytest.importorskip("transformers")


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
@pytest.mark.parametrize("unit,sparsity", [("heads", 0.5), ("mlp", 0.3), ("layers", 0.5)])
def test_structured_round_trip_gives_identical_logits(tmp_path, family, unit, sparsity):
    model = tiny_model(family, layers=4)
    result = prune_structured(model, unit, sparsity=sparsity, calibration=calibration())
    assert result.params_after < result.params_before
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
    expected = _logits(model, ids)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(reloaded, ids), expected)
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after
    assert reloaded.generate(ids[:1], max_new_tokens=3, do_sample=False).shape == (1, 15)


def test_heads_respect_grouped_query_attention():
    model = tiny_model("llama", layers=2)  # 4 query heads in 2 key-value groups, head_dim 16
    prune_structured(model, "heads", sparsity=0.5, calibration=calibration())
    cfg = model.config
    # half of the attention parameters: one whole key-value group with its two query heads
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 16)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == cfg.num_attention_heads * 16
    assert attn.k_proj.out_features == attn.v_proj.out_features == cfg.num_key_value_heads * 16
    assert attn.o_proj.in_features == cfg.num_attention_heads * 16
    assert attn.num_key_value_groups == cfg.num_attention_heads // cfg.num_key_value_heads


def test_choose_gqa_shape():
    # SmolLM2: 9 query heads, 3 key-value heads; attention params ~ 2 * 9 + 2 * 3 = 24 head units
    assert choose_gqa_shape(9, 3, 0.0) == (3, 3)
    assert choose_gqa_shape(9, 3, 0.2) == (3, 2)  # 25% removed
    assert choose_gqa_shape(9, 3, 0.3) == (2, 3)  # 33% removed
    assert choose_gqa_shape(4, 4, 0.5) == (2, 1)  # multi-head attention: 4 -> 2 heads


def test_removing_dead_mlp_channels_leaves_outputs_unchanged():
    model = tiny_model("llama", layers=2)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.down_proj.weight[:, :32] = 0  # 32 of 128 channels contribute nothing
    ids = torch.randint(0, VOCAB, (1, 10))
    before = _logits(model, ids)
    prune_structured(model, "mlp", sparsity=0.25, calibration=calibration(), bias_compensation=False)
    assert model.config.intermediate_size == 96
    for layer in model.model.layers:
        assert layer.mlp.down_proj.weight.ne(0).any(0).all()  # exactly the dead channels were removed
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_mlp_channels_of_conv1d_and_config_default_widths(tmp_path, family):
    # GPT-2 keeps its projections in transformers' Conv1D ([in, out]) and leaves n_inner=None (4 x n_embd)
    model = tiny_model(family, layers=2)
    ids = torch.randint(0, VOCAB, (1, 10), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():  # a quarter of the channels contribute nothing: exactly those go, outputs stay
        for layer in model.model.decoder.layers if family == "opt" else model.transformer.h:
            if family == "gpt2":
                width = layer.mlp.c_proj.weight.shape[0]
                layer.mlp.c_proj.weight[: width // 4] = 0
            else:
                width = layer.fc2.weight.shape[1]
                layer.fc2.weight[:, : width // 4] = 0
    before = _logits(model, ids)
    result = prune_structured(model, "mlp", sparsity=0.25, calibration=calibration(), bias_compensation=False)
    assert result.params_after < result.params_before
    torch.testing.assert_close(_logits(model, ids), before, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(reloaded, ids), _logits(model, ids))
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after


def test_bias_compensation_reduces_the_error():
    ids = calibration(n=2, seed=3)
    errors = {}
    for compensate in (False, True):
        model = tiny_model("llama", layers=2)
        with torch.no_grad():  # give the MLP channels a non-zero mean so that compensation has work to do
            for layer in model.model.layers:
                layer.mlp.up_proj.weight.add_(0.05)
                layer.mlp.gate_proj.weight.add_(0.05)
        dense = [_logits(model, b) for b in ids]
        prune_structured(model, "mlp", sparsity=0.5, calibration=ids, bias_compensation=compensate)
        assert model.config.mlp_bias is compensate
        errors[compensate] = sum(float((_logits(model, b) - d).pow(2).mean()) for b, d in zip(ids, dense))
    assert errors[True] < errors[False]


def test_layer_removal_renumbers_and_updates_config():
    model = tiny_model("gemma3", layers=4)
    types = list(model.config.layer_types)
    remove_layers_(model, [1, 2])
    assert model.config.num_hidden_layers == 2
    assert model.config.layer_types == [types[0], types[3]]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    out = model.generate(torch.randint(0, VOCAB, (1, 4)), max_new_tokens=3, do_sample=False)  # KV cache works
    assert out.shape == (1, 7)


def test_block_influence_removes_the_least_influential_layer():
    model = tiny_model("llama", layers=3)
    with torch.no_grad():  # layer 1 becomes the identity: Block Influence 0
        model.model.layers[1].self_attn.o_proj.weight.zero_()
        model.model.layers[1].mlp.down_proj.weight.zero_()
    result = prune_structured(model, "layers", sparsity=0.34, calibration=calibration())
    assert result.removed_layers == [1]
    assert result.scores[1] == pytest.approx(0.0, abs=1e-6)


def test_gpt2_heads_are_refused_clearly():
    model = tiny_model("gpt2")
    with pytest.raises(UnsupportedModuleError, match="heads"):
        prune_structured(model, "heads", sparsity=0.5, calibration=calibration())


def test_choose_gqa_shape_skips_shapes_the_config_cannot_state() -> None:
    assert choose_gqa_shape(8, 4, 0.5) == (3, 1)  # the closest share of parameters, with no constraint
    assert choose_gqa_shape(8, 4, 0.5, lambda heads, kv: 64 % heads == 0) == (2, 2)
    assert choose_gqa_shape(8, 4, 0.5, lambda heads, kv: False) == (4, 2)  # nothing stateable: keep all


@pytest.mark.parametrize(
    ("method", "sparsity", "phrase"),
    [
        ("llm-layers", 0.1, "removes round(0.1 x 2) = 0 of the 2 decoder layers"),
        ("llm-mlp", 0.003, "removes round(0.003 x 128) = 0 of the 128 MLP channels of each layer"),
        ("llm-heads", 0.01, "closest to removing no attention head"),
        ("flap", 0.001, "flap at sparsity 0.001 removed nothing: every layer keeps its shape"),
        ("llm-pruner", 0.001, "llm-pruner at sparsity 0.001 removed nothing"),
    ],
)
def test_a_sparsity_too_small_to_remove_a_unit_is_refused_and_the_model_is_unchanged(method, sparsity, phrase):
    from conftest import assert_unchanged, snapshot

    import prunekit as pk

    model = tiny_model()
    before = snapshot(model)
    with pytest.raises(pk.NothingToPruneError, match="the model is unchanged") as info:
        pk.prune(model, method, sparsity=sparsity, calibration=calibration(), progress=False)
    assert phrase in str(info.value)
    assert_unchanged(model, before)
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())  # no bias compensation left behind


@pytest.mark.parametrize("method", ["llm-heads", "llm-mlp"])
def test_sparsity_zero_changes_nothing_not_even_bias_compensation(method):
    from conftest import assert_unchanged, snapshot

    import prunekit as pk

    model = tiny_model()
    before = snapshot(model)
    pk.prune(model, method, sparsity=0.0, calibration=calibration(), progress=False)
    assert_unchanged(model, before)
    assert not model.config.attention_bias and not model.config.mlp_bias
