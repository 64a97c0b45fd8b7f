"""Tests of :mod:`prunekit.methods.llm`: every LLM method through prunekit.prune on a random-init LLaMA with
grouped-query attention."""

from __future__ import annotations

import pytest
import torch

import prunekit
from prunekit.errors import ConfigError, DataError, InvalidSparsityError, MissingDataError
from prunekit.llm.prune import OWL, prune_causal_lm
from prunekit.methods import llm as _llm_methods  # noqa: F401  (registers the methods)
from tests.llm.conftest import VOCAB, calibration, tiny_model

UNSTRUCTURED = ["magnitude", "wanda", "sparsegpt", "owl-wanda", "owl-sparsegpt", "owl-magnitude"]
STRUCTURED = ["llm-heads", "llm-mlp", "llm-layers", "flap"]


def _decoder_weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in n}


def _generates(model):
    prompt = torch.randint(0, VOCAB, (1, 6), generator=torch.Generator().manual_seed(5))
    out = model.generate(prompt, max_new_tokens=5, do_sample=False)
    assert out.shape == (1, 11)
    with torch.no_grad():
        assert torch.isfinite(model(prompt).logits).all()


def test_all_llm_methods_are_registered():
    for name in UNSTRUCTURED + STRUCTURED:
        assert name in prunekit.METHODS


@pytest.mark.parametrize("name", UNSTRUCTURED)
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_every_unstructured_method_prunes_and_generates(name, pattern):
    model = tiny_model("llama", layers=2)
    if name.startswith("owl") and pattern is not None:  # N:M fixes every matrix's sparsity: OWL is refused
        with pytest.raises(ConfigError, match="allocation"):
            prunekit.prune(model, name, sparsity=0.5, pattern=pattern, calibration=calibration())
        return
    report = prunekit.prune(model, name, sparsity=0.5, pattern=pattern, calibration=calibration())
    weights = _decoder_weights(model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / total == pytest.approx(0.5, abs=0.01 if name.startswith("owl") else 0.005)
    if pattern == "2:4":
        for w in weights.values():
            assert ((w.reshape(w.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    assert model.lm_head.weight.ne(0).all()  # the LM head stays dense
    assert report.method == name
    _generates(model)


@pytest.mark.parametrize("name", STRUCTURED)
def test_every_structured_method_shrinks_and_generates(name):
    model = tiny_model("llama", layers=4)
    before = sum(p.numel() for p in model.parameters())
    prunekit.prune(model, name, sparsity=0.5, calibration=calibration())
    assert sum(p.numel() for p in model.parameters()) < before
    _generates(model)


def test_owl_spreads_sparsity_and_keeps_the_mean():
    model = tiny_model("llama", layers=4)
    result = prune_causal_lm(model, "wanda", sparsity=0.6, calibration=calibration(), allocation=OWL(lam=0.1))
    assert len(set(result.block_sparsity)) > 1
    assert sum(result.block_sparsity) / 4 == pytest.approx(0.6)
    assert max(result.block_sparsity) - min(result.block_sparsity) == pytest.approx(0.2)
    # the layer with the most outliers is pruned least
    ratios = [result.outlier_ratios[f"model.layers.{i}"] for i in range(4)]
    assert result.block_sparsity.index(min(result.block_sparsity)) == ratios.index(max(ratios))


def test_calibration_is_required_and_sparsity_checked():
    model = tiny_model("llama")
    with pytest.raises(MissingDataError):
        prunekit.prune(model, "sparsegpt", sparsity=0.5)
    with pytest.raises(MissingDataError, match="calibration"):
        prunekit.prune(model, "wanda", sparsity=0.5, calibration=[])
    with pytest.raises(InvalidSparsityError):
        prunekit.prune(model, "wanda", sparsity=1.2, calibration=calibration())
    with pytest.raises(InvalidSparsityError):
        prune_causal_lm(model, "wanda", sparsity=0.3, pattern="2:4", calibration=calibration())


def test_failed_run_leaves_the_model_unchanged():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError):
        prunekit.prune(model, "wanda", sparsity=0.5, calibration=[torch.randn(2, 3)])  # not token ids
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma3", "gpt2", "opt"])
def test_sparsegpt_24_on_every_family(family):
    model = tiny_model(family, layers=2)
    result = prune_causal_lm(model, "sparsegpt", pattern="2:4", calibration=calibration(n=2))
    assert result.layer_sparsity and all(s == 0.5 for s in result.layer_sparsity.values())
    _generates(model)
