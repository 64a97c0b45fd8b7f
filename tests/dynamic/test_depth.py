"""Dynamic depth (skip_layers_): exactness at zero, KV-cache generation, restoring, refusals."""

from __future__ import annotations

import pytest
import torch

import prunekit.dynamic as dyn
from prunekit.errors import ConfigError, DataError, UnsupportedModuleError
from tests.conftest import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    g = torch.Generator().manual_seed(1)
    calibration = [torch.randint(0, 64, (2, 24), generator=g) for _ in range(4)]
    return model, calibration, dyn.calibrate_router(model, calibration)


@torch.no_grad()
def test_zero_fraction_is_bit_identical_and_restore(llama):
    model, calibration, router = llama
    before = snapshot(model)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    dense = model(ids).logits
    with dyn.skip_layers_(model, router=router, fraction=0.0) as patch:
        assert torch.equal(model(ids).logits, dense)
        assert patch.skipped == 0
    with dyn.skip_layers_(model, router=router, fraction=0.5) as patch:
        out = model(ids, use_cache=False).logits
        assert patch.skipped > 0
        assert not torch.allclose(out, dense)
        assert_unchanged(model, before)
        rep = patch.report()
        assert rep["skipped_per_layer"][0] == 0 and rep["skipped_per_layer"][-1] == 0  # never_skip default
        assert rep["skipped_fraction"] == patch.skipped / patch.token_layers
    assert torch.equal(model(ids).logits, dense)
    assert_unchanged(model, before)


def test_router_threshold_matches_the_calibration_share(llama):
    _, _, router = llama
    scores = router.calibration_scores
    for fraction in (0.1, 0.3):
        tau = router.threshold(fraction, never_skip=[0, 3])
        skipped = int((scores[1:3] < tau).sum())
        assert skipped == round(fraction * scores.numel())
    assert router.threshold(0.0) == float("-inf")


@torch.no_grad()
def test_generation_with_kv_cache_matches_full_forward_passes(llama):
    model, _, router = llama
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(3))
    with dyn.skip_layers_(model, router=router, fraction=0.5) as patch:
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=True)
        uncached = model.generate(ids, max_new_tokens=10, do_sample=False, use_cache=False)
        assert cached.tolist() == uncached.tolist()
        patch.reset_counts()
        out = model(cached[:, :10], use_cache=True)
        cache, steps = out.past_key_values, [out.logits]
        for j in range(10, cached.shape[1]):
            out = model(cached[:, j : j + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            steps.append(out.logits)
        assert patch.skipped > 0  # some steps really skipped layers
        full = model(cached, use_cache=False).logits
        assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


@torch.no_grad()
def test_padded_batch_rows_match_rows_alone(llama):
    model, _, router = llama
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 64, (2, 9), generator=g)
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0  # right padding
    with dyn.skip_layers_(model, router=router, fraction=0.5):
        batch = model(ids, attention_mask=mask, use_cache=False).logits
        alone = model(ids[1:, :6], use_cache=False).logits
    assert torch.allclose(batch[1, :6], alone[0], atol=1e-5)


def test_refusals(llama):
    model, calibration, router = llama
    bert = transformers.BertModel(
        transformers.BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    )
    with pytest.raises(UnsupportedModuleError, match="Llama-style"):
        dyn.skip_layers_(bert, router=router)
    with pytest.raises(ConfigError, match="exactly one"):
        dyn.skip_layers_(model, calibration, router=router)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        dyn.skip_layers_(model, router=router, fraction=1.0)
    with pytest.raises(ConfigError, match="never_skip"):
        dyn.skip_layers_(model, router=router, never_skip=[9])
    with pytest.raises(DataError):
        dyn.calibrate_router(model, [])
    assert dyn.find_patch(model) is None
