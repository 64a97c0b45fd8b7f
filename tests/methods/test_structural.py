"""Tests of :mod:`prunekit.methods.structural`: the named structural methods refuse mask patterns, options and
allocations they cannot honour, and a failure after the surgery restores the model."""

from __future__ import annotations

import pytest
import torch
from conftest import SmallCNN
from torch import nn

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


class TinyCNN(nn.Module):
    def __init__(self, bn2: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8) if bn2 else nn.Identity()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def _cnn(bn2: bool = True) -> TinyCNN:
    torch.manual_seed(0)
    model = TinyCNN(bn2).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    return model


G = torch.Generator().manual_seed(0)
X_IMG = torch.randn(4, 3, 8, 8, generator=G)
IMG_BATCHES = [(X_IMG, torch.randint(0, 4, (4,), generator=G))]


def _llama(layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=layers,
        vocab_size=50,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


IDS = torch.randint(0, 50, (2, 8), generator=G)
TOKENS = [{"input_ids": IDS}]


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
    model = _cnn()
    before = _state(model)
    with pytest.raises(pk.ConfigError, match="round_to"):
        pk.prune(_llama(), "head", sparsity=0.5, example_inputs={"input_ids": IDS}, round_to=8, measure=False)
    with pytest.raises(pk.ConfigError, match="allocation='global'"):
        pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=X_IMG, global_cap=0.5, measure=False)
    _assert_identical(model, before)
    for alloc in ("global", "erk", "lamp"):
        m = _cnn()
        pk.prune(m, "l2-channel", sparsity=0.5, allocation=alloc, example_inputs=X_IMG, measure=False)
        assert m.conv1.out_channels < 8 or m.conv2.out_channels < 8, alloc


def test_structural_methods_refuse_another_kind_of_unit():
    with pytest.raises(pk.PatternError, match="l1-channel"):
        pk.prune(
            SmallCNN(), "l1-channel", sparsity=0.5, pattern="2:4", example_inputs=torch.randn(1, 4, 6, 6), measure=False
        )
