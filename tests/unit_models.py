"""Small models and inputs shared by the unit tests of criteria, structural methods and physical methods: a
two-conv CNN with BatchNorm, a 2-layer grouped-query LLaMA, and seeded inputs for each."""

from __future__ import annotations

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")


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


def tiny_cnn(bn2: bool = True) -> TinyCNN:
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


def tiny_llama(layers: int = 2) -> nn.Module:
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
