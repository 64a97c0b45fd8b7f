"""Tests of :mod:`prunekit.surgery.blocks`: attention heads (key/value groups with their query heads) and whole
blocks planned, removed physically, and the Hugging Face config kept in step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.surgery import apply_head_plan_, apply_layer_plan_, plan_heads, plan_layers
from prunekit.surgery.blocks import overlaps_ignored

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


def test_gqa_heads_keep_the_group_ratio_and_update_config(tmp_path) -> None:  # noqa: ANN001
    model = _build("qwen2")
    plan = plan_heads(model, 0.5)
    assert all(len(r) == 1 for r in plan.remove)  # 2 key/value groups -> 1 per layer
    assert "-1/2 key/value groups, -4/8 query heads" in str(plan)
    one = plan_heads(_build("llama"), 0.5)  # 4 heads in 2 groups: 2 query heads a group
    assert "-1/2 key/value groups, -2/4 query heads" in str(one)
    mha = plan_heads(_build("gpt2"), 0.25)  # multi-head attention: a group is one head
    assert "-1/4 heads" in str(mha) and "key/value" not in str(mha)
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


def test_layer_removal_updates_config_and_indices() -> None:
    model = _build("qwen2")
    pk.prune(model, "layer", sparsity=0.5, example_inputs={"input_ids": IDS}, measure=False)
    assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
    assert len(model.config.layer_types) == 2
    out = model.generate(IDS, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 15)


def test_a_block_overlaps_an_ignored_module_it_is_inside_equals_or_contains():
    assert overlaps_ignored("model.layers.0", ["model.layers.0.mlp"]) == "model.layers.0.mlp"  # contains
    assert overlaps_ignored("model.layers.0", ["model.layers.0"]) == "model.layers.0"
    assert overlaps_ignored("model.layers.0.mlp", ["model.layers"]) == "model.layers"  # inside
    assert overlaps_ignored("model.layers.10", ["model.layers.1"]) is None  # a prefix of the name is not a parent
    assert overlaps_ignored("model.layers.1", ["model.norm"]) is None
    assert overlaps_ignored("blocks.0", [""]) == ""  # the model itself contains everything


class _Res(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4, bias=False)
        with torch.no_grad():
            self.lin.weight.fill_(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.lin(x))


def test_magnitude_removes_the_blocks_with_the_smallest_mean_weight():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(*[_Res(s) for s in (1.0, 0.1, 2.0, 0.5)]), nn.Linear(4, 2))
    plan = plan_layers(model, torch.randn(3, 4), 0.5, criterion="magnitude")
    assert plan.candidates == ["1.0", "1.1", "1.2", "1.3"]
    assert plan.scores == pytest.approx({"1.0": 1.0, "1.1": 0.1, "1.2": 2.0, "1.3": 0.5})
    assert sorted(plan.remove) == ["1.1", "1.3"]
    apply_layer_plan_(model, plan)
    assert [blk.lin.weight[0, 0].item() for blk in model[1]] == [1.0, 2.0]


def test_head_pruning_on_inputs_the_model_cannot_run_is_a_data_error_and_changes_nothing():
    pytest.importorskip("transformers")
    from unit_models import tiny_llama

    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.DataError, match=r"does not run on example_inputs \(1, 8\).*LongTensor \[batch, seq_len\]"):
        pk.prune(model, "head", sparsity=0.5, example_inputs=torch.randn(1, 8))  # floats, not token ids
    with pytest.raises(pk.DataError, match=r"does not run on example_inputs \(1, 8\)"):
        pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=torch.randn(1, 8))  # the tracer's forward
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
