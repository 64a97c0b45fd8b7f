"""Tests of :mod:`prunekit.surgery.mha`: ``nn.MultiheadAttention`` loses heads (and residual width) physically,
runs as :class:`HeadPrunedMultiheadAttention` with the stock module's outputs, and refuses layouts it cannot
resize before any change."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import UnsupportedModuleError
from prunekit.surgery.mha import (
    HeadPrunedMultiheadAttention,
    adopt_pruned_heads,
    check_head_prunable,
    head_prunable,
    inner_width,
)


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()


@pytest.mark.parametrize("batch_first", [True, False])
def test_head_pruned_multihead_attention_computes_what_the_stock_module_does(batch_first: bool) -> None:
    from prunekit.surgery.mha import HeadPrunedMultiheadAttention

    torch.manual_seed(0)
    stock = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    ours = copy.deepcopy(stock)
    ours.__class__ = HeadPrunedMultiheadAttention
    n, tgt, src = 3, 5, 7
    q = torch.randn((n, tgt, 16) if batch_first else (tgt, n, 16))
    kv = torch.randn((n, src, 16) if batch_first else (src, n, 16))
    pad = torch.zeros(n, src, dtype=torch.bool)
    pad[1, -2:] = True
    cases = [
        {},
        {"key_padding_mask": pad},
        {"attn_mask": torch.rand(tgt, src) > 0.7},
        {"attn_mask": torch.randn(tgt, src)},
        {"attn_mask": torch.rand(n * 4, tgt, src) > 0.8, "key_padding_mask": pad},
        {"need_weights": False},
        {"average_attn_weights": False},
    ]
    with torch.no_grad():
        for kw in cases:
            a, wa = stock(q, kv, kv, **kw)
            b, wb = ours(q, kv, kv, **kw)
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
            assert (wa is None) == (wb is None)
            if wa is not None:
                torch.testing.assert_close(wb, wa, atol=1e-5, rtol=1e-5)
        x = torch.randn(tgt, 16)  # unbatched
        torch.testing.assert_close(ours(x, x, x)[0], stock(x, x, x)[0], atol=1e-5, rtol=1e-5)


def test_multihead_attention_heads_are_removed_physically_and_exactly() -> None:
    from prunekit.surgery import apply_structure_record, structure_record
    from prunekit.surgery.mha import HeadPrunedMultiheadAttention

    model = _vit()
    gone = [1, 3]  # zero these heads everywhere: they score lowest, and removing them changes nothing
    with torch.no_grad():
        for blk in model.encoder.layers:
            att = blk.self_attention
            for h in gone:
                for part in range(3):
                    rows = slice(part * 32 + h * 8, part * 32 + (h + 1) * 8)
                    att.in_proj_weight[rows] = 0
                    att.in_proj_bias[rows] = 0
                att.out_proj.weight[:, h * 8 : (h + 1) * 8] = 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    n0 = sum(p.numel() for p in model.parameters())
    pk.prune(model, "head", sparsity=0.5, example_inputs=x, measure=False)
    for blk in model.encoder.layers:
        att = blk.self_attention
        assert type(att) is HeadPrunedMultiheadAttention and isinstance(att, nn.MultiheadAttention)
        assert (att.num_heads, att.head_dim, att.embed_dim) == (2, 8, 32)
        assert tuple(att.in_proj_weight.shape) == (48, 32) and tuple(att.out_proj.weight.shape) == (32, 16)
    assert sum(p.numel() for p in model.parameters()) < n0
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    # the structure record rebuilds it: shapes, head count and class come back, nothing is unpickled
    rebuilt = apply_structure_record(_vit(), structure_record(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert type(rebuilt.encoder.layers[0].self_attention) is HeadPrunedMultiheadAttention
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), after)


class _CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mem = x[..., :8]
        return self.attn(x, mem, mem)[0]


def test_multihead_attention_layouts_without_packed_projections_are_refused_before_any_change() -> None:
    model = _CrossAttention().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModuleError, match="kdim/vdim"):
        pk.prune(
            model, "head", sparsity=0.5, example_inputs=torch.randn(1, 4, 16), measure=False, prune_classifier=True
        )
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_vit_channel_pruning_shrinks_the_residual_stream_through_multihead_attention() -> None:
    from prunekit.eval.report import count_flops
    from prunekit.surgery import apply_structure_record, structure_record
    from prunekit.surgery.mha import HeadPrunedMultiheadAttention

    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    flops0, _ = count_flops(model, x)
    rep = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
    assert not any("fixes their size" in n for n in rep.notes)
    assert (
        model.hidden_dim == 16 and model.conv_proj.out_channels == 16 and tuple(model.class_token.shape) == (1, 1, 16)
    )
    assert tuple(model.encoder.pos_embedding.shape[-1:]) == (16,)
    for blk in model.encoder.layers:
        att = blk.self_attention
        assert type(att) is HeadPrunedMultiheadAttention
        assert (att.embed_dim, att.num_heads, att.head_dim) == (16, 4, 8)  # inner width kept: whole heads only
        assert tuple(att.in_proj_weight.shape) == (96, 16) and tuple(att.out_proj.weight.shape) == (16, 32)
        assert blk.mlp[0].out_features == 32
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 1000)
    assert count_flops(model, x)[0] < 0.6 * flops0
    rebuilt = apply_structure_record(_vit(), structure_record(model))
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), out)


def test_only_the_packed_layout_can_lose_heads():
    packed = nn.MultiheadAttention(8, 2)
    assert head_prunable(packed) and inner_width(packed) == 8
    check_head_prunable("ok", packed)
    cross = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
    biased = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    assert not head_prunable(cross) and not head_prunable(biased)
    with pytest.raises(UnsupportedModuleError, match="'x' .*kdim/vdim"):
        check_head_prunable("x", cross)
    with pytest.raises(UnsupportedModuleError, match="add_bias_kv"):
        check_head_prunable("y", biased)


def test_a_module_that_lost_a_head_computes_the_stock_module_without_that_head():
    """Head 1 of 2 (size 4) removed from the packed projections and out_proj: the result is what the stock
    module gives with head 1's columns of out_proj set to zero (its contribution left out)."""
    torch.manual_seed(0)
    stock = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    reference = copy.deepcopy(stock)
    with torch.no_grad():
        reference.out_proj.weight[:, 4:8] = 0
    keep = [0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19]  # head 0's rows of q, k and v
    pruned = copy.deepcopy(stock)
    pruned.in_proj_weight = nn.Parameter(stock.in_proj_weight.detach()[keep].clone())
    pruned.in_proj_bias = nn.Parameter(stock.in_proj_bias.detach()[keep].clone())
    pruned.out_proj.weight = nn.Parameter(stock.out_proj.weight.detach()[:, :4].clone())
    adopt_pruned_heads(pruned)
    assert type(pruned) is HeadPrunedMultiheadAttention
    assert (pruned.num_heads, pruned.head_dim, pruned.embed_dim, inner_width(pruned)) == (1, 4, 8, 4)
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x, x, x)[0], reference(x, x, x)[0], atol=1e-6, rtol=1e-5)
    adopt_pruned_heads(stock)  # nothing removed: the stock class stays
    assert type(stock) is nn.MultiheadAttention and stock.num_heads == 2
