"""Hugging Face families with fused projections (q/k/v in one layer, gate/up in one layer), and encoders
whose modules lack the attributes a plain transformer has. Random-init tiny configs, no downloads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.surgery.engine import analyze

transformers = pytest.importorskip("transformers")
T = transformers


def _family(kind: str) -> tuple[nn.Module, str, str]:
    """model, first MLP projection (suffix under each layer), second MLP projection."""
    torch.manual_seed(0)
    if kind == "phi3":  # fused qkv_proj and gate_up_proj (split by chunk(2))
        cfg = T.Phi3Config(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
        return T.Phi3ForCausalLM(cfg), "model.layers.{}.mlp.gate_up_proj", "model.layers.{}.mlp.down_proj"
    if kind == "gpt2":  # fused c_attn (Conv1D)
        cfg = T.GPT2Config(
            n_embd=64, n_head=4, n_layer=2, vocab_size=100, n_positions=64, bos_token_id=1, eos_token_id=2
        )
        return T.GPT2LMHeadModel(cfg), "transformer.h.{}.mlp.c_fc", "transformer.h.{}.mlp.c_proj"
    if kind == "gpt-neox":  # fused query_key_value
        cfg = T.GPTNeoXConfig(
            hidden_size=64,
            num_attention_heads=4,
            intermediate_size=128,
            num_hidden_layers=2,
            vocab_size=100,
            max_position_embeddings=64,
        )
        return T.GPTNeoXForCausalLM(cfg), "gpt_neox.layers.{}.mlp.dense_h_to_4h", "gpt_neox.layers.{}.mlp.dense_4h_to_h"
    if kind == "falcon":  # fused query_key_value, grouped key/value heads
        cfg = T.FalconConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_kv_heads=2,
            new_decoder_architecture=True,
            num_hidden_layers=2,
            vocab_size=100,
        )
        return T.FalconForCausalLM(cfg), "transformer.h.{}.mlp.dense_h_to_4h", "transformer.h.{}.mlp.dense_4h_to_h"
    if kind == "gpt-bigcode":  # fused c_attn with one key/value head (multi-query)
        cfg = T.GPTBigCodeConfig(n_embd=64, n_head=4, n_layer=2, vocab_size=100, n_positions=64)
        return T.GPTBigCodeForCausalLM(cfg), "transformer.h.{}.mlp.c_fc", "transformer.h.{}.mlp.c_proj"
    if kind == "bloom":  # fused query_key_value, heads interleaved
        cfg = T.BloomConfig(hidden_size=64, n_head=4, n_layer=2, vocab_size=100)
        return T.BloomForCausalLM(cfg), "transformer.h.{}.mlp.dense_h_to_4h", "transformer.h.{}.mlp.dense_4h_to_h"
    if kind == "mpt":  # fused Wqkv
        cfg = T.MptConfig(d_model=64, n_heads=4, n_layers=2, vocab_size=100)
        return T.MptForCausalLM(cfg), "transformer.blocks.{}.ffn.up_proj", "transformer.blocks.{}.ffn.down_proj"
    raise AssertionError(kind)


FAMILIES = ["phi3", "gpt2", "gpt-neox", "falcon", "gpt-bigcode", "bloom", "mpt"]
# configs that state the MLP width, so stock from_pretrained reloads the pruned model
STOCK = {"phi3", "gpt2", "gpt-neox", "falcon", "gpt-bigcode"}
IDS = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))


def _out_width(mod: nn.Module) -> int:
    return mod.weight.shape[1] if type(mod).__name__ == "Conv1D" else mod.weight.shape[0]


@pytest.mark.parametrize("kind", FAMILIES)
def test_fused_families_lose_mlp_width_and_reload(kind: str, tmp_path) -> None:  # noqa: ANN001
    model, up_name, down_name = _family(kind)
    model.eval()
    up0 = model.get_submodule(up_name.format(0))
    width0 = _out_width(up0) // (2 if kind == "phi3" else 1)
    report = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs={"input_ids": IDS}, measure_latency=False)
    assert report.after.params < report.before.params
    for layer in range(2):
        up = model.get_submodule(up_name.format(layer))
        down = model.get_submodule(down_name.format(layer))
        fused = 2 if kind == "phi3" else 1
        assert _out_width(up) == fused * width0 // 2
        in_axis = 0 if type(down).__name__ == "Conv1D" else 1
        assert down.weight.shape[in_axis] == width0 // 2
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, 12, 100)
    model.save_pretrained(tmp_path)
    from prunekit.surgery.hf import from_pretrained_pruned

    again = (
        type(model).from_pretrained(tmp_path) if kind in STOCK else from_pretrained_pruned(type(model), tmp_path)
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, logits, atol=1e-5, rtol=1e-5)


def test_fused_gate_up_pairs_channel_i_of_gate_with_channel_i_of_up() -> None:
    model, _, _ = _family("phi3")
    model.eval()
    inter = 128
    trace = analyze(model, {"input_ids": IDS})
    group = trace.group_of("model.layers.0.mlp.gate_up_proj.weight", 0)
    assert group is not None and group.size == inter and all(group.removable)
    for unit in (0, 5, 127):
        idx = group.classes[unit]
        gate_up = sorted(idx[("model.layers.0.mlp.gate_up_proj.weight", 0)].tolist())
        down = idx[("model.layers.0.mlp.down_proj.weight", 1)].tolist()
        assert len(gate_up) == 2 and gate_up[1] - gate_up[0] == inter and down == [gate_up[0]]
    # zero gate row i, up row i and down column i for half the units: removing them changes nothing
    gu = model.model.layers[0].mlp.gate_up_proj.weight
    dn = model.model.layers[0].mlp.down_proj.weight
    with torch.no_grad():
        for i in range(0, inter, 2):
            gu[i].zero_()
            gu[inter + i].zero_()
            dn[:, i].zero_()
        before = model(input_ids=IDS).logits
    pk.prune(
        model,
        "l2-channel",
        sparsity=0.5,
        example_inputs={"input_ids": IDS},
        measure_latency=False,
        ignore=["model.layers.1"],
    )
    assert tuple(model.model.layers[0].mlp.gate_up_proj.weight.shape) == (inter, 64)
    assert tuple(model.model.layers[1].mlp.gate_up_proj.weight.shape) == (2 * inter, 64)  # ignored: kept whole
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before, atol=1e-5, rtol=1e-5)


def _vision(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "vit":  # get_input_embeddings() is a patch embedding without .weight
        return T.ViTModel(
            T.ViTConfig(
                hidden_size=32,
                num_attention_heads=4,
                intermediate_size=64,
                num_hidden_layers=2,
                image_size=32,
                patch_size=8,
            )
        )
    if kind == "convnext":  # get_input_embeddings() raises NotImplementedError
        return T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))
    return T.SwinModel(
        T.SwinConfig(embed_dim=16, depths=[1, 1], num_heads=[2, 2], image_size=32, patch_size=4, window_size=2)
    )


@pytest.mark.parametrize("kind", ["vit", "convnext", "swin"])
def test_encoders_without_token_embeddings_prune(kind: str) -> None:
    model = _vision(kind).eval()
    x = {"pixel_values": torch.randn(1, 3, 32, 32)}
    report = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False, prune_classifier=True)
    assert report.after.params < report.before.params
    model(**x)


def test_heads_that_the_code_fixes_are_refused_by_name_and_the_model_is_kept() -> None:
    cfg = T.ConvBertConfig(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=2,
        embedding_size=32,
        vocab_size=100,
    )
    model = T.ConvBertModel(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.NothingToPruneError, match=r"in module 'encoder\.layer\.0\.attention\.self'"):
        pk.prune(model, "head", sparsity=0.5, example_inputs={"input_ids": IDS[:, :8] % 100}, measure_latency=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.num_attention_heads == 4
