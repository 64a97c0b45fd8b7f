"""Transformers (random init from config): heads (GQA), MLP channels, hidden size, layers, round trips."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.errors import UnsupportedModuleError
from prunekit.surgery import apply_head_plan_, plan_heads

transformers = pytest.importorskip("transformers")


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                       intermediate_size=128, num_hidden_layers=4, vocab_size=100,
                                       max_position_embeddings=64)
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=2,
                                       intermediate_size=128, num_hidden_layers=4, vocab_size=100,
                                       max_position_embeddings=64)
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=64, n_head=4, n_layer=4, vocab_size=100,
                                                                    n_positions=64)).eval()
    cfg = transformers.BertConfig(hidden_size=64, num_attention_heads=4, intermediate_size=128, num_hidden_layers=4,
                                  vocab_size=100, max_position_embeddings=64)
    return transformers.BertForMaskedLM(cfg).eval()


IDS = torch.randint(0, 100, (1, 12), generator=torch.Generator().manual_seed(0))
CASES = [(k, m) for k in ("llama", "qwen2", "gpt2", "bert") for m in ("l2-channel", "head", "embedding", "layer")]
# stock configs of GPT-2 and BERT derive the head size from hidden_size / num_attention_heads, so a model
# with fewer heads or a smaller hidden size cannot be described by them: those reload via prunekit's record
STOCK_RELOAD = {(k, m) for k, m in CASES if k in ("llama", "qwen2") or m in ("l2-channel", "layer")}


@pytest.mark.parametrize("kind,method", CASES)
def test_prune_runs_and_reloads(kind: str, method: str, tmp_path) -> None:  # noqa: ANN001
    model = _build(kind)
    inputs = {"input_ids": IDS}
    n0 = sum(p.numel() for p in model.parameters())
    report = pk.prune(model, method, sparsity=0.5, example_inputs=inputs, measure_latency=False)
    assert report.after.params < report.before.params
    assert sum(p.numel() for p in model.parameters()) < n0
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    assert logits.shape == (1, 12, 100)
    model.save_pretrained(tmp_path)
    if (kind, method) in STOCK_RELOAD:
        again = type(model).from_pretrained(tmp_path).eval()
    else:
        from prunekit.surgery.hf import from_pretrained_pruned

        again = from_pretrained_pruned(type(model), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=IDS).logits, logits, atol=1e-6, rtol=1e-6)


def test_gqa_heads_keep_the_group_ratio_and_update_config(tmp_path) -> None:  # noqa: ANN001
    model = _build("qwen2")
    plan = plan_heads(model, 0.5)
    assert all(len(r) == 1 for r in plan.remove)  # 2 key/value groups -> 1 per layer
    apply_head_plan_(model, plan)
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.out_features == 4 * attn.head_dim and attn.k_proj.out_features == attn.head_dim
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 1
    assert model.config.head_dim == 8
    assert model(input_ids=IDS).logits.shape == (1, 12, 100)


def test_removing_zeroed_heads_keeps_outputs() -> None:
    model = _build("llama")
    plan = plan_heads(model, 0.5, criterion="random", seed=3)
    with torch.no_grad():
        for b, r in zip(plan.blocks, plan.remove):
            for key, dims in b.unit_removal(sorted(r.tolist())).items():
                mod, _, attr = key.rpartition(".")
                t = getattr(model.get_submodule(mod), attr)
                for d, idx in dims.items():
                    t.index_fill_(d, torch.as_tensor(idx, dtype=torch.long), 0.0)
        before = model(input_ids=IDS).logits
    apply_head_plan_(model, plan)
    with torch.no_grad():
        after = model(input_ids=IDS).logits
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_removing_zeroed_mlp_channels_keeps_outputs() -> None:
    from prunekit.surgery import apply_plan_, plan_channels

    model = _build("llama")
    plan = plan_channels(model, {"input_ids": IDS}, 0.5)
    from prunekit.surgery.remove import tensor_slots

    slots = tensor_slots(model)
    with torch.no_grad():
        for key, dims in plan.removal().items():
            t = getattr(slots[key][0].module, slots[key][0].attr)
            for d, idx in dims.items():
                t.index_fill_(d, torch.as_tensor(idx, dtype=torch.long), 0.0)
        before = model(input_ids=IDS).logits
    apply_plan_(model, plan)
    assert model.model.layers[0].mlp.gate_proj.out_features == 64
    assert model.config.intermediate_size == 64
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, before, atol=1e-5, rtol=1e-5)


def test_layer_removal_updates_config_and_indices() -> None:
    model = _build("qwen2")
    pk.prune(model, "layer", sparsity=0.5, example_inputs={"input_ids": IDS}, measure=False)
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert len(model.config.layer_types) == 2
    out = model.generate(IDS, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 15)


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


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()


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
                att.out_proj.weight[:, h * 8: (h + 1) * 8] = 0
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
        pk.prune(model, "head", sparsity=0.5, example_inputs=torch.randn(1, 4, 16), measure=False, prune_classifier=True)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kind,method", [("llama", "l2-channel"), ("qwen2", "head"), ("qwen2", "l2-channel")])
def test_global_allocation_round_trips_through_the_pruned_loader(kind: str, method: str, tmp_path) -> None:  # noqa: ANN001
    from prunekit.surgery.hf import from_pretrained_pruned

    model = _build(kind)
    if method == "head":  # four key/value groups per layer, so that layers can lose different numbers
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(hidden_size=64, num_attention_heads=8, num_key_value_heads=4,
                                       intermediate_size=128, num_hidden_layers=4, vocab_size=100,
                                       max_position_embeddings=64)
        model = transformers.Qwen2ForCausalLM(cfg).eval()
        with torch.no_grad():  # one weak layer: one threshold over all layers takes more of its heads
            for p in model.model.layers[0].self_attn.parameters():
                p.mul_(0.1)
    pk.prune(model, method, sparsity=0.5, allocation="global", example_inputs={"input_ids": IDS}, measure=False,
             global_cap=0.75)
    per_layer = model.config.prunekit_per_layer
    sizes = per_layer["intermediate_size" if method == "l2-channel" else "num_key_value_heads"]
    assert len(set(sizes)) > 1  # the layers really differ
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path)
    assert type(again) is type(model)
    torch.testing.assert_close(_logits(again), logits, atol=0, rtol=0)
    with pytest.raises(Exception):  # the stock loader cannot build per-layer sizes from the config
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize("kind,method", [("gpt2", "head"), ("bert", "head"), ("gpt2", "embedding"), ("bert", "embedding")])
def test_head_size_the_config_cannot_express_round_trips(kind: str, method: str, tmp_path) -> None:  # noqa: ANN001
    from prunekit.surgery.hf import from_pretrained_pruned

    model = _build(kind)
    pk.prune(model, method, sparsity=0.5, example_inputs={"input_ids": IDS}, measure=False)
    assert model.config.prunekit_structure["attrs"]  # head size differs from hidden / heads
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.bin"))  # safetensors only
    again = from_pretrained_pruned(type(model), tmp_path)
    torch.testing.assert_close(_logits(again), logits, atol=0, rtol=0)


def test_uniform_sizes_need_no_record_and_load_with_either_loader(tmp_path) -> None:  # noqa: ANN001
    from prunekit.surgery.hf import from_pretrained_pruned

    model = _build("qwen2")
    pk.prune(model, "head", sparsity=0.5, example_inputs={"input_ids": IDS}, measure=False)
    assert not hasattr(model.config, "prunekit_structure")
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(_logits(type(model).from_pretrained(tmp_path).eval()), logits, atol=0, rtol=0)
    torch.testing.assert_close(_logits(from_pretrained_pruned(type(model), tmp_path)), logits, atol=0, rtol=0)


class _SelfAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]


def test_flops_of_multihead_attention_are_counted_and_halve_with_half_the_heads() -> None:
    """The fused inference kernel of the stock module is invisible to the FLOP counter; the report turns it
    off, so the dense count includes the attention and half the heads is exactly half the FLOPs."""
    from prunekit.eval.report import count_flops

    torch.manual_seed(0)
    model = _SelfAttention().eval()
    x = torch.randn(2, 5, 16)
    before, _ = count_flops(model, x)
    assert before >= 2 * 2 * 5 * 16 * 64  # at least the four projections
    pk.prune(model, "head", sparsity=0.5, example_inputs=x, measure=False, prune_classifier=True)
    after, _ = count_flops(model, x)
    assert after * 2 == before


def test_a_failure_after_heads_were_removed_restores_the_stock_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunekit.methods.structural as sm

    model = _vit()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    real = sm.apply_head_plan_

    def fail_after(m: nn.Module, plan: object) -> None:
        real(m, plan)
        raise RuntimeError("injected failure after the surgery")

    monkeypatch.setattr(sm, "apply_head_plan_", fail_after)
    with pytest.raises(RuntimeError, match="injected"):
        pk.prune(model, "head", sparsity=0.5, example_inputs=x, measure=False)
    att = model.encoder.layers[0].self_attention
    assert type(att) is nn.MultiheadAttention and att.num_heads == 4 and tuple(att.in_proj_weight.shape) == (96, 32)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_vit_channel_pruning_shrinks_the_residual_stream_through_multihead_attention() -> None:
    from prunekit.eval.report import count_flops
    from prunekit.surgery import apply_structure_record, structure_record
    from prunekit.surgery.mha import HeadPrunedMultiheadAttention

    model = _vit()
    x = torch.randn(2, 3, 32, 32)
    flops0, _ = count_flops(model, x)
    rep = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)
    assert not any("fixes their size" in n for n in rep.notes)
    assert model.hidden_dim == 16 and model.conv_proj.out_channels == 16 and tuple(model.class_token.shape) == (1, 1, 16)
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
