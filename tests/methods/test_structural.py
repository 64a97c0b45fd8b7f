"""Tests of :mod:`prunekit.methods.structural`: the named structural methods refuse mask patterns, options and
allocations they cannot honour, and a failure after the surgery restores the model."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN
from torch import nn
from unit_models import IDS, X_IMG, tiny_cnn, tiny_llama

import prunekit as pk

transformers = pytest.importorskip("transformers")


def _vit() -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64).eval()


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k


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


@pytest.mark.parametrize("pattern", ["2:4", "4x4", "channel"])
def test_structural_methods_refuse_mask_patterns(pattern: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    before = _state(model)
    with pytest.raises(pk.PatternError) as info:
        pk.prune(model, "l2-channel", sparsity=0.5, pattern=pattern, example_inputs=torch.randn(2, 8), measure=False)
    msg = str(info.value)
    assert "l2-channel removes channels physically" in msg and 'pk.prune(model, "magnitude"' in msg
    assert f'pattern="{pattern}"' in msg
    _assert_identical(model, before)
    # the advice, followed, masks that pattern
    pk.prune(model, "magnitude", sparsity=0.5, pattern=pattern, measure=False)
    assert model[0].weight.shape == (8, 8) and float((model[0].weight == 0).float().mean()) == 0.5


def test_unknown_options_and_allocations_are_refused_by_name() -> None:
    model = tiny_cnn()
    before = _state(model)
    with pytest.raises(pk.ConfigError, match="round_to"):
        pk.prune(tiny_llama(), "head", sparsity=0.5, example_inputs={"input_ids": IDS}, round_to=8, measure=False)
    with pytest.raises(pk.ConfigError, match="allocation='global'"):
        pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=X_IMG, global_cap=0.5, measure=False)
    _assert_identical(model, before)
    for alloc in ("global", "erk", "lamp"):
        m = tiny_cnn()
        pk.prune(m, "l2-channel", sparsity=0.5, allocation=alloc, example_inputs=X_IMG, measure=False)
        assert m.conv1.out_channels < 8 or m.conv2.out_channels < 8, alloc


def test_structural_methods_refuse_another_kind_of_unit():
    with pytest.raises(pk.PatternError, match="l1-channel"):
        pk.prune(
            SmallCNN(), "l1-channel", sparsity=0.5, pattern="2:4", example_inputs=torch.randn(1, 4, 6, 6), measure=False
        )
