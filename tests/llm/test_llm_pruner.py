"""LLM-Pruner (prunekit.llm.llm_pruner, method "llm-pruner"): group scores against a hand computation of
|w * dL/dw|, the removed share, stock save / reload, refusals, and the model's state left as it was."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.criteria.formulas import loss_change
from prunekit.errors import ConfigError, DataError, MissingDataError, NothingToPruneError, UnknownNameError
from prunekit.llm.llm_pruner import llm_pruner_scores, prune_llm_pruner
from prunekit.surgery import from_pretrained_pruned

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 300
CALIB = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
HEAD_DIM = 8


def _llama(layers: int = 3, seed: int = 0, **kw) -> torch.nn.Module:
    """Random LLaMA, hidden 64: 8 query heads in 4 key-value groups (head size 8), MLP width 128."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=4,
        vocab_size=VOCAB,
        **kw,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _logits(model: torch.nn.Module, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def _hand_importance(model: torch.nn.Module, batch: torch.Tensor, second_order: bool) -> dict[str, torch.Tensor]:
    """|w g| (or |w g - w^2 F / 2|) of every decoder projection weight, from transformers' own loss: the
    mean next-token cross entropy of equal-length sequences is the mean of their per-sequence means."""
    model.zero_grad(set_to_none=True)
    model(batch, labels=batch).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if "layers" in n}
    fisher = {n: torch.zeros_like(g) for n, g in grads.items()}
    if second_order:
        for r in range(batch.shape[0]):
            model.zero_grad(set_to_none=True)
            model(batch[r : r + 1], labels=batch[r : r + 1]).loss.backward()
            for n, p in model.named_parameters():
                if n in fisher:
                    fisher[n] += p.grad.pow(2) / batch.shape[0]
    model.zero_grad(set_to_none=True)
    params = dict(model.named_parameters())
    out = {}
    for n, g in grads.items():
        w = params[n].detach()
        out[n] = (w * g - 0.5 * w * w * fisher[n]).abs() if second_order else (w * g).abs()
    return out


@pytest.mark.parametrize("criterion", ["taylor", "taylor2"])
def test_scores_equal_a_hand_computation_over_each_group(criterion):
    model = _llama(layers=2)
    batch = torch.cat(CALIB)  # 6 sequences of 16 tokens, one batch
    scores = llm_pruner_scores(model, [batch], criterion=criterion)
    imp = _hand_importance(model, batch, criterion == "taylor2")
    for i, s in enumerate(scores):
        pre = f"model.layers.{i}."
        q, k, v, o = (imp[f"{pre}self_attn.{p}_proj.weight"] for p in "qkvo")
        gate, up, down = (imp[f"{pre}mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
        heads = torch.tensor([q[h * 8 : (h + 1) * 8].sum() + o[:, h * 8 : (h + 1) * 8].sum() for h in range(8)])
        groups = torch.tensor(
            [
                heads[2 * g : 2 * g + 2].sum() + k[g * 8 : (g + 1) * 8].sum() + v[g * 8 : (g + 1) * 8].sum()
                for g in range(4)
            ]
        )
        channels = gate.sum(1) + up.sum(1) + down.sum(0)
        assert s.heads is not None and s.groups is not None and s.channels is not None
        torch.testing.assert_close(s.heads, heads.double(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(s.groups, groups.double(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(s.channels, channels.double(), rtol=1e-4, atol=1e-9)


def test_batches_and_rows_give_the_same_gradient():
    model = _llama(layers=2)
    split = llm_pruner_scores(model, CALIB)
    joined = llm_pruner_scores(model, [torch.cat(CALIB)])
    for a, b in zip(split, joined):
        torch.testing.assert_close(a.channels, b.channels, rtol=1e-4, atol=1e-9)


def test_loss_change_formula():
    w, g, f = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.5, 3.0, -4.0]), torch.tensor([1.0, 2.0, 0.0])
    assert torch.equal(loss_change(w, g), torch.tensor([1.0, 3.0, 2.0]))
    assert torch.equal(loss_change(w, g, f), torch.tensor([1.0, 4.0, 2.0]))  # |1 - 2|, |-3 - 1|, |-2 - 0|


@pytest.mark.parametrize("aggregation", ["max", "prod", "last"])
def test_other_aggregations_by_hand(aggregation):
    model = _llama(layers=1)
    batch = torch.cat(CALIB)
    (s,) = llm_pruner_scores(model, [batch], aggregation=aggregation)
    imp = _hand_importance(model, batch, False)
    gate, up, down = (imp[f"model.layers.0.mlp.{p}_proj.weight"] for p in ("gate", "up", "down"))
    parts = torch.stack([gate.sum(1), up.sum(1), down.sum(0)], -1).double()
    expected = {"max": parts.max(-1).values, "prod": parts.log().sum(-1), "last": parts[:, -1]}[aggregation]
    assert s.channels is not None
    torch.testing.assert_close(s.channels, expected, rtol=1e-4, atol=1e-7)


def test_removes_the_requested_share_and_the_lowest_groups():
    model = _llama()
    expected = llm_pruner_scores(model, CALIB)
    total = sum(p.numel() for p in model.parameters())
    result = prune_llm_pruner(model, sparsity=0.2, calibration=CALIB)
    per_channel = 3 * 64
    assert result.targeted_params == 3 * (2 * 64 * 64 + 2 * 32 * 64 + 128 * per_channel)  # q, o; k, v (4 groups); MLP
    assert abs(result.removed_params - result.target_params) <= 3 * per_channel / 2  # within half a channel a layer
    assert result.params_after == total - result.removed_params
    assert sum(p.numel() for p in model.parameters()) == result.params_after
    for i, layer in enumerate(model.model.layers):
        kept = result.kept_channels[i]
        assert layer.mlp.down_proj.weight.shape[1] == len(kept) == result.mlp_widths[i]
        ch = expected[i].channels
        assert ch is not None
        gone = sorted(set(range(128)) - set(kept))
        assert max(ch[gone]) <= min(ch[kept])  # the lowest-scoring channels went
        groups = sorted({h // 2 for h in result.kept_heads[i]})
        g = expected[i].groups
        assert g is not None
        dropped = sorted(set(range(4)) - set(groups))
        if dropped:
            assert max(g[dropped]) <= min(g[groups])
    cfg = model.config
    assert cfg.intermediate_size == result.mlp_widths[0]
    assert cfg.num_attention_heads == result.heads[0] and cfg.num_key_value_heads == result.kv_heads[0]


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5])
def test_share_through_prune(sparsity):
    model = _llama(layers=2)
    projections = [m for n, m in model.named_modules() if n.endswith("_proj")]
    before = sum(m.weight.numel() for m in projections)
    pk.prune(model, "llm-pruner", sparsity=sparsity, calibration=CALIB, measure_latency=False)
    after = sum(m.weight.numel() for m in projections)
    removed = 1 - after / before
    # the attention shape is coarse (a whole head's share); the MLP evens out to within one channel per layer
    assert abs(removed * before - sparsity * before) <= 2 * 3 * 64


def test_pruned_model_runs_and_reloads_with_stock_from_pretrained(tmp_path):
    model = _llama()
    result = prune_llm_pruner(model, sparsity=0.25, calibration=CALIB)
    assert len(set(result.mlp_widths)) == 1 and result.mlp_widths[0] < 128
    expected = _logits(model)
    assert torch.isfinite(expected).all()
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(reloaded), expected)
    assert sum(p.numel() for p in reloaded.parameters()) == result.params_after
    assert reloaded.generate(IDS[:1], max_new_tokens=3, do_sample=False).shape == (1, 15)


@pytest.mark.parametrize("training", [False, True])
def test_model_state_is_left_as_it_was(training):
    model = _llama(layers=2)
    model.train(training)
    model.model.layers[1].mlp.train(not training)  # a mixed state survives too
    model.model.embed_tokens.weight.requires_grad_(False)
    model.lm_head.weight.grad = torch.ones_like(model.lm_head.weight)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    prune_llm_pruner(model, sparsity=0.2, calibration=CALIB, criterion="taylor2")
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert torch.equal(model.lm_head.weight.grad, torch.ones_like(model.lm_head.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "lm_head.weight")


def test_half_precision_model_keeps_its_dtype():
    model = _llama(layers=2).to(torch.bfloat16)
    prune_llm_pruner(model, sparsity=0.2, calibration=CALIB)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.isfinite(_logits(model).float()).all()


def test_refusals_name_what_is_supported():
    model = _llama(layers=2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnknownNameError, match="taylor2") as err:
        pk.prune(model, "llm-pruner", sparsity=0.2, calibration=CALIB, criterion="vector")
    assert isinstance(err.value, pk.PrunekitError)
    with pytest.raises(UnknownNameError, match="prod"):
        prune_llm_pruner(model, sparsity=0.2, calibration=CALIB, aggregation="mean")
    with pytest.raises(MissingDataError):
        prune_llm_pruner(model, sparsity=0.2, calibration=None)
    with pytest.raises(ConfigError, match="start"):
        prune_llm_pruner(model, sparsity=0.2, calibration=CALIB, layers=(1, 5))
    with pytest.raises(ConfigError, match="uniform"):
        pk.prune(model, "llm-pruner", sparsity=0.2, calibration=CALIB, allocation="global")
    with pytest.raises(DataError, match="vocabulary"):
        prune_llm_pruner(model, sparsity=0.2, calibration=[torch.full((1, 8), VOCAB)])
    with pytest.raises(NothingToPruneError):
        prune_llm_pruner(model, sparsity=0.2, calibration=CALIB, ignored=["model.layers"])
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_layer_range_keeps_the_outer_layers_whole(tmp_path):
    model = _llama(layers=4)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune_llm_pruner(model, sparsity=0.3, calibration=CALIB, layers=(1, 3))
    assert result.mlp_widths[0] == result.mlp_widths[3] == 128 and result.mlp_widths[1] < 128
    assert result.targeted_params == 2 * (2 * 64 * 64 + 2 * 32 * 64 + 128 * 3 * 64)
    for k, v in model.state_dict().items():
        if k.startswith(("model.layers.0.", "model.layers.3.")):
            assert torch.equal(v, dense[k]), k
    expected = _logits(model)
    model.save_pretrained(tmp_path)
    reloaded = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path).eval()
    assert torch.equal(_logits(reloaded), expected)


def test_ignore_keeps_a_layers_mlp():
    model = _llama(layers=2)
    before = model.model.layers[0].mlp.down_proj.weight.clone()
    pk.prune(model, "llm-pruner", sparsity=0.3, calibration=CALIB, ignore=["model.layers.0.mlp"], measure_latency=False)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, before)
    assert model.model.layers[1].mlp.down_proj.weight.shape[1] < 128
    assert model.model.layers[0].self_attn.q_proj.weight.shape[0] < 64


def test_multi_head_attention_family():
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=2,
        ffn_dim=128,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
    )
    model = transformers.OPTForCausalLM(cfg).eval()
    result = prune_llm_pruner(model, sparsity=0.25, calibration=CALIB)
    assert result.heads == [3, 3] and result.mlp_widths[0] < 128
    assert torch.isfinite(_logits(model)).all()
