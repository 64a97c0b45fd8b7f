"""Transformers (random init from config): heads (GQA), MLP channels, hidden size, layers, round trips."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)

transformers = pytest.importorskip("transformers")


def _build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            num_hidden_layers=4,
            vocab_size=100,
            max_position_embeddings=64,
        )
        return transformers.LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        cfg = transformers.Qwen2Config(
            hidden_size=64,
            num_attention_heads=8,
            num_key_value_heads=2,
            intermediate_size=128,
            num_hidden_layers=4,
            vocab_size=100,
            max_position_embeddings=64,
        )
        return transformers.Qwen2ForCausalLM(cfg).eval()
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_embd=64, n_head=4, n_layer=4, vocab_size=100, n_positions=64)
        ).eval()
    cfg = transformers.BertConfig(
        hidden_size=64,
        num_attention_heads=4,
        intermediate_size=128,
        num_hidden_layers=4,
        vocab_size=100,
        max_position_embeddings=64,
    )
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


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("kind,method", [("llama", "l2-channel"), ("qwen2", "head"), ("qwen2", "l2-channel")])
def test_global_allocation_round_trips_through_the_pruned_loader(kind: str, method: str, tmp_path) -> None:  # noqa: ANN001
    from prunekit.surgery.hf import from_pretrained_pruned

    model = _build(kind)
    if method == "head":  # four key/value groups per layer, so that layers can lose different numbers
        torch.manual_seed(0)
        cfg = transformers.Qwen2Config(
            hidden_size=64,
            num_attention_heads=8,
            num_key_value_heads=4,
            intermediate_size=128,
            num_hidden_layers=4,
            vocab_size=100,
            max_position_embeddings=64,
        )
        model = transformers.Qwen2ForCausalLM(cfg).eval()
        with torch.no_grad():  # one weak layer: one threshold over all layers takes more of its heads
            for p in model.model.layers[0].self_attn.parameters():
                p.mul_(0.1)
    pk.prune(
        model,
        method,
        sparsity=0.5,
        allocation="global",
        example_inputs={"input_ids": IDS},
        measure=False,
        global_cap=0.75,
    )
    per_layer = model.config.prunekit_per_layer
    sizes = per_layer["intermediate_size" if method == "l2-channel" else "num_key_value_heads"]
    assert len(set(sizes)) > 1  # the layers really differ
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path)
    assert type(again) is type(model)
    torch.testing.assert_close(_logits(again), logits, atol=0, rtol=0)
    with pytest.raises(RuntimeError):  # the stock loader cannot build per-layer sizes from the config
        type(model).from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "kind,method", [("gpt2", "head"), ("bert", "head"), ("gpt2", "embedding"), ("bert", "embedding")]
)
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
