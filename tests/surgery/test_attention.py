"""Tests of :mod:`prunekit.surgery.attention`: attention modules are found by their projections (or their class),
and a head unit (one key/value group with its query heads) names exactly the rows and columns it removes."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.surgery.attention import find_attention
from prunekit.surgery.blocks import apply_head_plan_, plan_heads

transformers = pytest.importorskip("transformers")


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=50,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def test_multihead_attention_heads_are_rows_of_the_packed_projection():
    model = _SelfAttention()
    (blk,) = find_attention(model)
    assert (blk.name, blk.style, blk.num_heads, blk.num_kv_heads, blk.head_dim) == ("attn", "mha", 4, 4, 4)
    assert blk.groups == 4 and blk.q_per_kv == 1 and blk.out_name == "attn.out_proj"
    removal = blk.unit_removal([1])
    # head 1 is rows 4..7 of each of q, k, v in the packed (3 * 16, 16) weight, and columns 4..7 of out_proj
    rows = list(range(4, 8)) + list(range(20, 24)) + list(range(36, 40))
    assert removal["attn.in_proj_weight"][0].tolist() == rows
    assert removal["attn.in_proj_bias"][0].tolist() == rows
    assert removal["attn.out_proj.weight"][1].tolist() == [4, 5, 6, 7]


def test_a_grouped_query_unit_is_one_key_value_head_with_the_query_heads_that_share_it():
    model = _llama()
    (blk,) = find_attention(model)
    assert blk.name == "model.layers.0.self_attn" and blk.style == "llama"
    assert (blk.num_heads, blk.num_kv_heads, blk.head_dim, blk.groups, blk.q_per_kv) == (4, 2, 8, 2, 2)
    removal = blk.unit_removal([1])
    n = "model.layers.0.self_attn"
    assert removal[f"{n}.q_proj.weight"][0].tolist() == list(range(16, 32))  # query heads 2 and 3
    assert removal[f"{n}.k_proj.weight"][0].tolist() == list(range(8, 16))  # key/value head 1
    assert removal[f"{n}.v_proj.weight"][0].tolist() == list(range(8, 16))
    assert removal[f"{n}.o_proj.weight"][1].tolist() == list(range(16, 32))
    assert f"{n}.q_proj.bias" not in removal  # LLaMA's projections have no bias


def test_a_model_without_attention_has_no_blocks_and_a_layout_that_cannot_lose_heads_is_refused():
    assert find_attention(nn.Sequential(nn.Linear(4, 4), nn.ReLU())) == []
    cross = nn.Sequential()
    cross.add_module("attn", nn.MultiheadAttention(16, 2, kdim=8, vdim=8))
    with pytest.raises(pk.UnsupportedModuleError, match="kdim/vdim"):
        find_attention(cross)


def test_unit_tensors_are_the_slices_of_one_head_and_need_the_root_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(8, 2))  # 2 heads of size 4
    att = model[0]
    (blk,) = find_attention(model)
    got = blk.unit_tensors(1)
    assert [(t is att.in_proj_weight, t is att.in_proj_bias, t is att.out_proj.weight, dim) for t, dim, _ in got] == [
        (True, False, False, 0),
        (False, True, False, 0),
        (False, False, True, 1),
    ]
    rows = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # head 1 of q, k and v in the packed in_proj
    assert got[0][2].tolist() == rows and got[1][2].tolist() == rows
    assert got[2][2].tolist() == [4, 5, 6, 7]  # its columns of out_proj
    blk.root = None  # a block built by hand has no model to read its tensors from: refused, not (None, ...)
    with pytest.raises(ConfigError, match="no root model"):
        blk.unit_tensors(0)


def _timm_vit(**kwargs: object) -> nn.Module:
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2, num_classes=5, **kwargs
    ).eval()


def test_timm_attention_heads_are_rows_of_its_qkv_and_removing_one_equals_zeroing_it():
    model = _timm_vit()
    blocks = find_attention(model)
    assert [(b.name, b.style, b.num_heads, b.head_dim) for b in blocks] == [
        ("blocks.0.attn", "packed", 3, 64),
        ("blocks.1.attn", "packed", 3, 64),
    ]
    removal = blocks[0].unit_removal([1])
    rows = list(range(64, 128)) + list(range(256, 320)) + list(range(448, 512))
    assert removal["blocks.0.attn.qkv.weight"][0].tolist() == rows
    assert removal["blocks.0.attn.qkv.bias"][0].tolist() == rows
    assert removal["blocks.0.attn.proj.weight"][1].tolist() == list(range(64, 128))

    x = torch.randn(2, 3, 32, 32)
    reference = _timm_vit()
    plan = plan_heads(model, 0.34)
    removed = [r.tolist() for r in plan.remove]
    assert [len(r) for r in removed] == [1, 1]
    with torch.no_grad():  # the same heads silenced in the dense model: their value rows and proj columns zero
        for b, (head,) in zip(find_attention(reference), removed):
            v = slice(2 * 192 + head * 64, 2 * 192 + (head + 1) * 64)
            b.module.qkv.weight[v] = 0
            b.module.qkv.bias[v] = 0
            b.module.proj.weight[:, head * 64 : (head + 1) * 64] = 0
    apply_head_plan_(model, plan)
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[0].attn.attn_dim == 128
    assert model.blocks[0].attn.qkv.weight.shape == (384, 192) and model.blocks[0].attn.proj.weight.shape == (192, 128)
    torch.testing.assert_close(model(x), reference(x), rtol=1e-4, atol=1e-5)


def test_a_timm_attention_with_something_sized_by_its_heads_is_refused_by_name():
    model = _timm_vit()
    model.blocks[1].attn.register_buffer("per_head", torch.zeros(3))
    with pytest.raises(pk.UnsupportedModuleError, match=r"'blocks.1.attn'.*per_head.*ignore=\['blocks.1.attn'\]"):
        find_attention(model)
    model = _timm_vit(scale_attn_norm=True)  # a norm over all heads' features
    with pytest.raises(pk.UnsupportedModuleError, match="child 'norm' \\(LayerNorm\\)"):
        find_attention(model)
    model = _timm_vit(qk_norm=True)  # a norm over each head's own features follows the heads
    assert [b.style for b in find_attention(model)] == ["packed", "packed"]


def test_an_attention_module_that_cannot_lose_heads_is_passed_over_when_ignore_names_it():
    model = _timm_vit()
    model.blocks[1].attn.register_buffer("per_head", torch.zeros(3))
    x = torch.randn(1, 3, 32, 32)
    report = pk.prune(model, "head", sparsity=0.34, example_inputs=x, ignore=["blocks.1"])
    assert model.blocks[0].attn.num_heads == 2 and model.blocks[1].attn.num_heads == 3
    assert report.after.params < report.before.params
    refused = _timm_vit(scale_attn_norm=True)
    with pytest.raises(pk.NothingToPruneError, match="covers every attention module that could lose heads"):
        pk.prune(refused, "head", sparsity=0.34, example_inputs=x, ignore=["blocks.0.attn", "blocks.1.attn"])
