"""Tiny random-init causal LMs of every supported family, built from configs (no download)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="LLM tests need transformers (pip install transformers)")

VOCAB = 96


def tiny_config(family: str, layers: int = 2, **overrides):
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=layers, max_position_embeddings=128)
    if family == "llama":  # LLaMA with grouped-query attention: 4 query heads share 2 key-value heads
        cfg = transformers.LlamaConfig(**common, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    elif family == "mistral":
        cfg = transformers.MistralConfig(
            **common, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, sliding_window=16
        )
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(**common, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)
    elif family == "gemma3":
        cfg = transformers.Gemma3TextConfig(
            **common,
            intermediate_size=128,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"] * (layers // 2) + ["sliding_attention"] * (layers % 2),
        )
    elif family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=layers, n_head=4, n_positions=128)
    elif family == "opt":
        cfg = transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=64,
            num_hidden_layers=layers,
            ffn_dim=128,
            num_attention_heads=4,
            max_position_embeddings=128,
            word_embed_proj_dim=64,
        )
    else:
        raise ValueError(family)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def tiny_model(family: str = "llama", layers: int = 2, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_config(family, layers, **overrides))
    return model.eval()


def calibration(n: int = 3, batch: int = 2, seq: int = 24, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (batch, seq), generator=g) for _ in range(n)]


FAMILIES = ["llama", "mistral", "qwen2", "gemma3", "gpt2", "opt"]
