"""Allocation is honoured or refused by name by every language-model method, and OWL is an allocation.

Layer-wise methods x allocations on a tiny random LLaMA: a non-uniform allocation gives per-matrix
sparsities that differ and a model that differs from the uniform one, while the overall sparsity over the
pruned matrices meets the target; refused combinations leave every tensor bit-identical. OWL in the core
path is checked against hand-computed outlier ratios.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.allocation.builtin import OWL, owl_sparsities
from prunekit.errors import ConfigError, PatternError, UnknownNameError
from prunekit.llm.prune import prune_causal_lm
from prunekit.methods import llm as _llm_methods  # noqa: F401  (registers the methods)

from .conftest import VOCAB, transformers

SPARSITY = 0.6
ALLOCATIONS = ["uniform", "erk", "global", "lamp", "owl"]
SOLVERS = ["wanda", "sparsegpt", "magnitude"]  # magnitude: the core's per-matrix method
ALIASES = ["owl-wanda", "owl-sparsegpt", "owl-magnitude"]


def _llama(layers: int = 2) -> nn.Module:
    """Smaller than conftest's tiny model (hidden 32, MLP 64) so that 20 prunings stay within seconds."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(2)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key].shape == value.shape and torch.equal(after[key], value), key


def _decoder_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}


_RUNS: dict[tuple[str, str], tuple[dict[str, torch.Tensor], pk.Report]] = {}


def _pruned(method: str, allocation: str) -> tuple[dict[str, torch.Tensor], pk.Report]:
    """Decoder weights and report of ``method`` under ``allocation`` (each combination pruned once per session)."""
    if (method, allocation) not in _RUNS:
        model = _llama()
        report = pk.prune(
            model, method, sparsity=SPARSITY, allocation=allocation, calibration=_calibration(), measure=False
        )
        pk.squash_masks_(model)
        _RUNS[method, allocation] = (_decoder_weights(model), report)
    return _RUNS[method, allocation]


@pytest.mark.parametrize("allocation", ALLOCATIONS)
@pytest.mark.parametrize("method", SOLVERS)
def test_layerwise_methods_honour_the_allocation(method, allocation):
    weights, report = _pruned(method, allocation)
    targets = {row.name: row.target for row in report.layers if row.target is not None}
    assert set(targets) == set(weights)  # every pruned matrix reports the sparsity it was pruned at
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros / total == pytest.approx(SPARSITY, abs=0.01)
    for name, w in weights.items():  # each matrix reaches its own target (Wanda rounds per output row)
        assert float((w == 0).float().mean()) == pytest.approx(targets[name], abs=1.0 / w.shape[1] + 1e-9), name
    assert report.settings["allocation"] == allocation
    if allocation == "uniform":
        assert set(targets.values()) == {SPARSITY}
        return
    assert len({round(t, 6) for t in targets.values()}) > 1
    uniform, _ = _pruned(method, "uniform")
    assert any(not torch.equal(weights[n], uniform[n]) for n in weights)


@pytest.mark.parametrize("alias", ALIASES)
def test_owl_aliases_are_the_solver_with_owl(alias):
    solver = alias.removeprefix("owl-")
    weights, report = _pruned(alias, "owl")
    reference, _ = _pruned(solver, "owl") if solver != "magnitude" else (None, None)
    if reference is not None:  # bit-identical to the solver with allocation="owl"
        assert all(torch.equal(weights[n], reference[n]) for n in weights)
    assert pk.METHODS.get(alias).default_allocation == "owl"
    uniform, _ = _pruned(solver, "uniform")
    assert any(not torch.equal(weights[n], uniform[n]) for n in weights)
    targets = [row.target for row in report.layers if row.target is not None]
    assert len(set(targets)) == 2  # one sparsity per decoder block (OWL's layer), two blocks


@pytest.mark.parametrize("alias", ALIASES)
def test_owl_aliases_refuse_other_allocations_and_leave_the_model(alias):
    model = _llama()
    before = _state(model)
    for allocation in ("uniform", "erk", "global", "lamp"):
        with pytest.raises(ConfigError, match="allocation='owl'"):
            pk.prune(model, alias, sparsity=SPARSITY, allocation=allocation, calibration=_calibration())
    _assert_identical(model, before)


@pytest.mark.parametrize("method", SOLVERS + ALIASES)
def test_nm_with_a_non_uniform_allocation_is_refused(method):
    model = _llama()
    before = _state(model)
    for allocation in ("erk", "global", "lamp", "owl"):
        with pytest.raises(ConfigError, match="2:4"):
            pk.prune(model, method, sparsity=0.5, pattern="2:4", allocation=allocation, calibration=_calibration())
    with pytest.raises(ConfigError):
        prune_causal_lm(model, "wanda", pattern="2:4", allocation="owl", calibration=_calibration())
    _assert_identical(model, before)


def test_owl_in_the_llm_path_keeps_block_sparsities_and_target():
    model = _llama()
    result = prune_causal_lm(model, "wanda", sparsity=SPARSITY, calibration=_calibration(), allocation=OWL(lam=0.1))
    ratios = [result.outlier_ratios[f"model.layers.{i}"] for i in range(2)]
    expected = owl_sparsities(ratios, SPARSITY, 0.1)  # equal blocks: exactly the paper's mapping
    assert result.block_sparsity == pytest.approx(expected, abs=1e-12)
    assert max(expected) - min(expected) == pytest.approx(0.2)
    assert result.block_sparsity.index(min(result.block_sparsity)) == ratios.index(max(ratios))


def test_global_and_lamp_rank_the_solvers_own_scores():
    # magnitude under global: the same per-matrix sparsities as the core's magnitude + global
    model = _llama()
    result = prune_causal_lm(model, "magnitude", sparsity=SPARSITY, allocation="global")
    _, core = _pruned("magnitude", "global")
    core_targets = {row.name: row.target for row in core.layers if row.target is not None}
    assert result.layer_sparsity == pytest.approx(core_targets)


STRUCTURED = ["llm-heads", "llm-mlp", "llm-layers"]


@pytest.mark.parametrize("method", STRUCTURED)
def test_structured_methods_refuse_what_they_cannot_do(method):
    model = _llama(layers=4)
    before = _state(model)
    config = model.config.to_dict()
    cal = _calibration()
    for allocation in ("erk", "global", "lamp", "owl"):
        with pytest.raises(ConfigError, match="allocation='uniform' only"):
            pk.prune(model, method, sparsity=0.5, allocation=allocation, calibration=cal)
    words = {"llm-heads": "attention heads", "llm-mlp": "MLP channels", "llm-layers": "decoder layers"}[method]
    for pattern in ("2:4", "4x4", "channel"):
        with pytest.raises(PatternError, match=f"removes whole {words}"):
            pk.prune(model, method, sparsity=0.5, pattern=pattern, calibration=cal)
    valid = "block-influence" if method == "llm-layers" else "fluctuation, magnitude"
    with pytest.raises(UnknownNameError, match=valid):
        pk.prune(model, method, sparsity=0.5, criterion="taylor", calibration=cal)
    if method == "llm-layers":
        with pytest.raises(UnknownNameError, match="block-influence"):
            pk.prune(model, method, sparsity=0.5, criterion="fluctuation", calibration=cal)
        with pytest.raises(ConfigError, match="bias_compensation"):
            pk.prune(model, method, sparsity=0.5, bias_compensation=True, calibration=cal)
    else:  # magnitude scores measure no channel means to compensate with
        with pytest.raises(ConfigError, match="fluctuation"):
            pk.prune(model, method, sparsity=0.5, criterion="magnitude", bias_compensation=True, calibration=cal)
    with pytest.raises(ConfigError, match="unknown option"):
        pk.prune(model, method, sparsity=0.5, gqa=True, calibration=cal)
    _assert_identical(model, before)
    assert model.config.to_dict() == config
    if method == "llm-layers":  # the one criterion, named, is accepted
        pk.prune(model, method, sparsity=0.5, criterion="block-influence", calibration=cal, measure=False)
        assert model.config.num_hidden_layers == 2


def test_cli_lists_and_checks_allocations():
    from prunekit.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["prune-llm", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in pk.ALLOCATIONS.names():
        assert name in result.output
    # refused before any model is loaded (the model name does not exist)
    result = runner.invoke(app, ["prune-llm", "no-such-model", "--method", "owl-wanda", "--pattern", "2:4"])
    assert result.exit_code != 0 and "fixes every" in result.output
    result = runner.invoke(app, ["prune-llm", "no-such-model", "--method", "wanda", "-s", "0.5", "--allocation", "x"])
    assert result.exit_code != 0 and "owl" in result.output
