"""Regressions for field findings on the structural path: ignore= for heads and layers, overrides refused for
physical granularities, plans that remove nothing refused, the identity-residual check, masked models refused
at once, and an explicit Global cap honoured."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.allocation.builtin import Global, LayerInfo
from prunekit.allocation.units import structural_allocation
from prunekit.errors import ConfigError, NothingToPruneError, PrunekitError
from prunekit.surgery.blocks import plan_layers


class Res(nn.Module):
    def __init__(self, d: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.relu(self.lin(x))


class Net(nn.Module):
    def __init__(self, n: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 8)
        self.blocks = nn.Sequential(*[Res() for _ in range(n)])
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.inp(x)))


def _state(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def _llama():
    T = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = T.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    ids = torch.randint(0, 64, (2, 8))
    return T.LlamaForCausalLM(cfg).eval(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


X = torch.randn(4, 8)


def test_residual_block_is_identity_and_identity_only_works() -> None:
    torch.manual_seed(0)
    m = Net()
    assert plan_layers(m, X, 0.5).identity["blocks.0"]  # zero parameters: the block returns its input
    plan = plan_layers(m, X, 0.5, identity_only=True)
    assert all(plan.identity[n] for n in plan.candidates) and len(plan.remove) == 2
    assert not any("not identity residuals" in n for n in plan.notes)


def test_ignore_keeps_blocks_whole_in_layer_pruning() -> None:
    torch.manual_seed(0)
    m = Net()
    keep = [m.blocks[1], m.blocks[2]]
    r = pk.prune(m, "layer", ignore=["blocks.1", "blocks.2.lin"], sparsity=0.5, example_inputs=X, measure=False)
    assert all(any(b is k for b in m.blocks) for k in keep) and len(m.blocks) == 2  # blocks 0 and 3 went
    assert any("ignore=" in n for n in r.notes)
    m2 = Net()
    with pytest.raises(NothingToPruneError, match="ignore="):
        pk.prune(m2, "layer", ignore=["blocks"], sparsity=0.5, example_inputs=X, measure=False)


def test_ignore_keeps_attention_heads_whole() -> None:
    m, b = _llama()
    r = pk.prune(m, "head", ignore=["model.layers.0.self_attn"], sparsity=0.5, example_inputs=b, measure=False)
    assert [layer.self_attn.q_proj.out_features for layer in m.model.layers] == [32, 16]
    assert any("keep all their heads because ignore=" in n for n in r.notes)


def test_overrides_refused_for_physical_granularities() -> None:
    torch.manual_seed(0)
    m = Net()
    before = _state(m)
    for gran in ("physical-channel", "layer"):
        with pytest.raises(ConfigError, match="mask granularities"):
            pk.prune(
                m,
                pk.Pruner("l2" if gran != "layer" else "influence", gran, overrides={"no.such": 0.1}),
                sparsity=0.5,
                example_inputs=X,
                measure=False,
            )
    assert _same(before, _state(m))


def test_plan_that_removes_nothing_is_refused() -> None:
    torch.manual_seed(0)
    m = Net(2)
    before = _state(m)
    with pytest.raises(NothingToPruneError, match="smallest sparsity that removes one is 0.5"):
        pk.prune(m, "layer", sparsity=0.3, example_inputs=X, measure=False)
    assert _same(before, _state(m)) and len(m.blocks) == 2
    lm, b = _llama()
    lbefore = _state(lm)
    with pytest.raises(NothingToPruneError, match="removes no key/value groups"):
        pk.prune(lm, "head", sparsity=0.2, example_inputs=b, measure=False)
    assert _same(lbefore, _state(lm))


def test_masked_model_refused_before_physical_pruning() -> None:
    torch.manual_seed(0)
    m = Net()
    pk.prune(m, "magnitude", sparsity=0.5, example_inputs=X, measure=False)
    with pytest.raises(PrunekitError, match="squash_masks_"):
        pk.prune(m, "l2-channel", sparsity=0.5, example_inputs=X, measure=False)
    pk.squash_masks_(m)
    pk.prune(m, "l2-channel", sparsity=0.5, example_inputs=X, measure=False)


def test_explicit_global_cap_is_honoured() -> None:
    assert structural_allocation(Global(max_sparsity=0.99), 0.3).max_sparsity == 0.99
    assert structural_allocation("global", 0.3).max_sparsity == pytest.approx(0.6)
    assert structural_allocation(Global(), 0.3, global_cap=0.5).max_sparsity == 0.5
    torch.manual_seed(0)
    layers = [LayerInfo(f"l{i}", (4, 3), torch.rand(4) * (i + 1), torch.full((4,), 3)) for i in range(3)]
    assert Global().allocate(layers, 0.6) == Global(max_sparsity=0.99).allocate(layers, 0.6)  # masks: same default
    with pytest.raises(ConfigError):
        Global(max_sparsity=1.5)
