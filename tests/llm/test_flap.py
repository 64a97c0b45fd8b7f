"""FLAP's adaptive structure (prunekit.llm.flap, method "flap"): standardisation and the global ranking by
hand, the parameter accounting, bias compensation, saving and reloading per-layer widths, refusals."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import prunekit as pk
from prunekit.llm import load_causal_lm
from prunekit.llm.flap import flap_removal, flap_scores, prune_flap, standardize
from prunekit.surgery import from_pretrained_pruned

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 300
CALIB = [torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(i)) for i in range(3)]
IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(9))
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _llama(layers: int = 4, seed: int = 0, **kw) -> torch.nn.Module:
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


def _projection_weights(model: torch.nn.Module) -> int:
    return sum(
        getattr(
            getattr(layer, "self_attn" if p.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"), p
        ).weight.numel()
        for layer in model.model.layers
        for p in PROJECTIONS
    )


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


# ------------------------------------------------------------------------------ standardisation, ranking


def test_standardize_subtracts_the_mean_and_divides_by_the_population_std() -> None:
    z = standardize(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    std = math.sqrt(1.25)  # E[(S - 2.5)^2] = (2.25 + 0.25 + 0.25 + 2.25) / 4
    assert torch.allclose(z, torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64) / std)
    assert float(z.mean()) == pytest.approx(0.0, abs=1e-12) and float(z.pow(2).mean()) == pytest.approx(1.0)
    assert torch.equal(standardize(torch.full((3,), 7.0)), torch.zeros(3, dtype=torch.float64))


def test_the_two_readings_of_the_standardisation_by_hand() -> None:
    attention = [torch.tensor([1.0, 3.0, 5.0, 7.0])]  # one layer, 2 key-value groups of 2 channels each
    mlp = [torch.tensor([1.0, 2.0, 3.0])]
    # across layers (one layer here): group sums [4, 12] -> [-1, 1]; channels [1, 2, 3] -> [-1.2247, 0, 1.2247]
    groups, channels = flap_scores(attention, mlp, 2, "across-layers")
    assert torch.allclose(groups[0], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(channels[0], torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64) * math.sqrt(1.5))
    # per-layer: channels [1, 3, 5, 7] -> [-3, -1, 1, 3] / sqrt(5); a group is the mean of its two
    groups, _ = flap_scores(attention, mlp, 2, "per-layer")
    assert torch.allclose(groups[0], torch.tensor([-2.0, 2.0], dtype=torch.float64) / math.sqrt(5))
    # two layers at different scales: across-layers keeps the scale, per-layer removes it
    big = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0])]
    _, glob = flap_scores([None, None], big, 2, "across-layers")
    _, local = flap_scores([None, None], big, 2, "per-layer")
    assert float(glob[0].max()) < float(glob[1].min())
    assert torch.equal(local[0], local[1])
    with pytest.raises(pk.UnknownNameError, match="per-layer"):
        flap_scores(attention, mlp, 2, "per-head")


# Two layers, standardised across layers. Groups (10 parameters each) score [10, 30] and [20, 40]:
# z = [-1.342, 0.447], [-0.447, 1.342]. Channels (1 parameter each) score [1, 2, 3] and [4, 5, 6]:
# z = [-1.464, -0.878, -0.293], [0.293, 0.878, 1.464]. Joint order: ch0.0, g0.0, ch0.1, g1.0, ch0.2,
# ch1.0, g0.1, ch1.1, g1.1, ch1.2. Raw scores would put every channel before every group.
GROUPS, CHANNELS = flap_scores(
    [torch.tensor([10.0, 30.0]), torch.tensor([20.0, 40.0])],  # one channel per group
    [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([4.0, 5.0, 6.0])],
    2,
    "across-layers",
)


@pytest.mark.parametrize(
    "target,groups,channels",
    [
        (1, [[], []], [[0], []]),
        (12, [[0], []], [[0, 1], []]),  # ch0.0 (1) + g0.0 (10) + ch0.1 (1)
        # g1.0 would overshoot 13 and is passed over; ch0.2 is layer 0's last channel; ch1.0 fills
        (13, [[0], []], [[0, 1], [0]]),
        (23, [[0], [0]], [[0, 1], [0]]),  # ch0.0, g0.0, ch0.1, g1.0, (ch0.2 kept), ch1.0
        (24, [[0], [0]], [[0, 1], [0, 1]]),  # everything but one unit of each kind per layer
    ],
)
def test_global_ranking_of_standardised_scores_by_hand(target, groups, channels) -> None:  # noqa: ANN001
    assert torch.allclose(GROUPS[0], torch.tensor([-3.0, 1.0], dtype=torch.float64) / math.sqrt(5))
    assert flap_removal(GROUPS, CHANNELS, [10, 10], [1, 1], target) == (groups, channels)


def test_each_layer_keeps_a_unit_of_each_kind_and_the_cap_is_honoured() -> None:
    with pytest.raises(pk.InvalidSparsityError, match="empty a layer"):
        flap_removal(GROUPS, CHANNELS, [10, 10], [1, 1], 25)  # 24 is all that may go
    # max_share 0.5: at most 1 of 2 groups and 1 of 3 channels per layer
    assert flap_removal(GROUPS, CHANNELS, [10, 10], [1, 1], 12, max_share=0.5) == ([[0], []], [[0], [0]])
    with pytest.raises(pk.InvalidSparsityError, match="at most 0.5"):
        flap_removal(GROUPS, CHANNELS, [10, 10], [1, 1], 23, max_share=0.5)


def test_parts_left_out_are_not_ranked_nor_standardised_with_the_rest() -> None:
    # layer 1's groups left out: layer 0's groups alone standardise to [-1, 1]; layer 1 keeps both
    groups, channels = flap_scores(
        [torch.tensor([10.0, 30.0]), None], [torch.tensor([1.0, 2.0, 3.0])] * 2, 2, "across-layers"
    )
    assert groups[1] is None and torch.allclose(groups[0], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    # pooled channel z = [-1.22, 0, 1.22] in both layers: ch0.0, ch1.0, g0.0, ch0.1, ch1.1, (g0.1 kept) ...
    assert flap_removal(groups, channels, [1, 1], [1, 1], 3) == ([[0], []], [[0], [0]])
    assert flap_removal(groups, channels, [1, 1], [1, 1], 5) == ([[0], []], [[0, 1], [0, 1]])
    with pytest.raises(pk.InvalidSparsityError):  # layer 1's groups cannot help
        flap_removal(groups, channels, [1, 1], [1, 1], 6)


# --------------------------------------------------------------------------- pruning a model with flap


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_removed_parameters_are_accounted_exactly(allocation: str) -> None:
    model = _llama()
    weights = _projection_weights(model)
    result = prune_flap(model, sparsity=0.3, calibration=CALIB, allocation=allocation, progress=False)
    assert result.structure == {"global": "AL-AM", "uniform": "UL-UM"}[allocation]
    assert result.targeted_params == weights  # a bias-free LLaMA: the seven projections' weights
    assert weights - _projection_weights(model) == result.removed_params
    assert result.target_params == round(0.3 * weights)
    channel = 3 * 64  # one MLP channel: a row of gate_proj and of up_proj, a column of down_proj
    if allocation == "global":  # within one channel below the target
        assert 0 <= result.target_params - result.removed_params < channel
    else:  # every layer's MLP count is rounded: within half a channel per layer
        assert abs(result.target_params - result.removed_params) <= 4 * channel / 2
        assert len(set(result.mlp_widths)) == 1 and len(set(result.heads)) == 1
    assert result.mlp_widths == [len(k) for k in result.kept_channels]
    assert result.heads == [len(k) for k in result.kept_heads]


def test_adaptive_and_uniform_remove_the_same_parameters_when_asked_the_same_share() -> None:
    uniform = prune_flap(_llama(), sparsity=0.3, calibration=CALIB, allocation="uniform", progress=False)
    adaptive_model = _llama()
    adaptive = prune_flap(
        adaptive_model, sparsity=uniform.removed_share, calibration=CALIB, allocation="global", progress=False
    )
    assert adaptive.target_params == uniform.removed_params
    assert 0 <= uniform.removed_params - adaptive.removed_params < 3 * 64
    assert len(set(adaptive.mlp_widths)) > 1  # adaptive: the layers differ
    for layer, heads, kv in zip(adaptive_model.model.layers, adaptive.heads, adaptive.kv_heads):
        assert heads == 2 * kv >= 2  # whole key-value groups go: 2 query heads per group everywhere
        assert layer.self_attn.q_proj.out_features == 8 * heads and layer.self_attn.k_proj.out_features == 8 * kv


def _input_means(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """E[x] of every layer's o_proj and down_proj inputs over CALIB, on the dense model."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    handles = []
    for i, layer in enumerate(model.model.layers):
        for key, module in ((f"{i}.o", layer.self_attn.o_proj), (f"{i}.down", layer.mlp.down_proj)):

            def hook(_m, inputs, _out, key=key) -> None:  # noqa: ANN001
                x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
                sums[key] = sums.get(key, 0) + x.sum(0)
                counts[key] = counts.get(key, 0) + x.shape[0]

            handles.append(module.register_forward_hook(hook))
    with torch.no_grad():
        for batch in CALIB:
            model(batch)
    for h in handles:
        h.remove()
    return {k: sums[k] / counts[k] for k in sums}


def test_bias_compensation_is_exact_on_the_calibration_mean() -> None:
    model = _llama()
    dense = copy.deepcopy(model)
    means = _input_means(dense)
    result = prune_flap(model, sparsity=0.4, calibration=CALIB, progress=False)
    assert model.config.attention_bias and model.config.mlp_bias  # the config states the new biases
    for i, (layer, d) in enumerate(zip(model.model.layers, dense.model.layers)):
        q_cols = torch.tensor([h * 8 + c for h in result.kept_heads[i] for c in range(8)])
        channels = torch.tensor(result.kept_channels[i])
        for pruned, full, mean, kept in (
            (layer.self_attn.o_proj, d.self_attn.o_proj, means[f"{i}.o"], q_cols),
            (layer.mlp.down_proj, d.mlp.down_proj, means[f"{i}.down"], channels),
        ):
            x = mean.float()
            want = full(x)
            assert torch.allclose(pruned(x[kept]), want, atol=1e-5, rtol=1e-5)
            if len(kept) < len(x):  # without the compensation the output differs
                assert not torch.allclose(torch.nn.functional.linear(x[kept], pruned.weight), want, atol=1e-5)


def test_without_bias_compensation_no_bias_is_added() -> None:
    model = _llama()
    result = prune_flap(model, sparsity=0.3, calibration=CALIB, bias_compensation=False, progress=False)
    assert not any(n.endswith(".bias") for n, _ in model.named_parameters())
    assert not model.config.attention_bias and not model.config.mlp_bias
    assert result.removed_params > 0


def _save_with_tokenizer(model: torch.nn.Module, path) -> None:  # noqa: ANN001
    """save_pretrained with a word-level tokenizer: Austen's most frequent words, the rest unknown."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    model.save_pretrained(path)
    vocab = {f"t{i}": i for i in range(VOCAB)}
    for i, word in enumerate("the to and of a her I in was it she not that be".split()):
        vocab[word] = vocab.pop(f"t{i + 1}")
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="t0")
    tok.save_pretrained(path)


def test_per_layer_widths_save_and_reload_with_identical_logits(tmp_path) -> None:  # noqa: ANN001
    model = _llama()
    result = pk.prune(model, "flap", sparsity=0.35, calibration=CALIB, measure_latency=False)
    widths = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    heads = [layer.self_attn.q_proj.out_features for layer in model.model.layers]
    assert len(set(widths)) > 1 and str(widths) in " ".join(result.notes)
    logits = _logits(model)
    _save_with_tokenizer(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "prunekit_structure" in config and "auto_map" not in config  # shapes recorded, no code to run
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path)
    assert [layer.mlp.down_proj.in_features for layer in again.model.layers] == widths
    assert [layer.self_attn.q_proj.out_features for layer in again.model.layers] == heads
    assert torch.equal(_logits(again), logits)
    loaded, _ = load_causal_lm(tmp_path)  # prunekit's loader reads the record as well
    assert torch.equal(_logits(loaded), logits)


def test_the_command_line_prunes_saves_and_evaluates_per_layer_widths(tmp_path) -> None:  # noqa: ANN001
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from prunekit import datasets
    from prunekit.cli import app

    if not datasets.is_installed("austen"):
        pytest.skip("the Austen novels are not installed: prunekit data install austen")
    src, out = tmp_path / "tiny", tmp_path / "pruned"
    _save_with_tokenizer(_llama(), src)
    common = ["--calibration-samples", "4", "--seq-len", "32", "--eval-tokens", "128", "--no-progress"]
    res = CliRunner().invoke(app, ["prune-llm", str(src), "--method", "flap", "-s", "0.35", *common, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "prunekit_structure" in json.loads((out / "config.json").read_text())
    model, _ = load_causal_lm(out)
    assert len({layer.mlp.down_proj.in_features for layer in model.model.layers}) > 1
    res = CliRunner().invoke(app, ["eval-ppl", str(out), "--max-tokens", "128", "--seq-len", "32"])
    assert res.exit_code == 0, res.output


def test_uniform_widths_give_a_stock_config(tmp_path) -> None:  # noqa: ANN001
    model = _llama()
    result = pk.prune(model, "flap", sparsity=0.3, calibration=CALIB, allocation="uniform", measure_latency=False)
    assert result.settings["allocation"] == "uniform"
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert "prunekit_structure" not in config
    assert config["intermediate_size"] == model.model.layers[0].mlp.down_proj.in_features < 128
    stock = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert torch.equal(_logits(stock), logits)


@pytest.mark.parametrize("family", ["mistral", "qwen2", "gemma3", "opt"])
def test_other_families_reload_with_identical_logits(family: str, tmp_path) -> None:  # noqa: ANN001
    from tests.llm.conftest import calibration, tiny_model

    model = tiny_model(family, layers=3)
    result = pk.prune(model, "flap", sparsity=0.3, calibration=calibration(), measure_latency=False)
    ids = calibration(n=1, seed=7)[0]
    with torch.no_grad():
        logits = model(ids).logits
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, logits)
    if family in ("mistral", "qwen2"):  # no config field gives their output projections a bias
        assert any("no bias compensation" in n for n in result.notes)


def test_ignored_layers_keep_their_widths_and_are_not_counted() -> None:
    model = _llama()
    dense0 = _state(model.model.layers[0])
    result = prune_flap(model, sparsity=0.3, calibration=CALIB, ignored=["model.layers.0"], progress=False)
    assert result.targeted_params == _projection_weights(_llama()) * 3 // 4
    assert result.heads[0] == 8 and result.mlp_widths[0] == 128
    for k, v in model.model.layers[0].state_dict().items():
        assert torch.equal(v, dense0[k]) if k in dense0 else (k.endswith(".bias") and not v.any()), k


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        ({"sparsity": 0.995}, pk.InvalidSparsityError, "empty a layer"),
        ({"sparsity": 0.97, "allocation": "uniform"}, pk.InvalidSparsityError, "emptying it"),
        ({"sparsity": 0.6, "allocation": pk.Global(max_sparsity=0.5)}, pk.InvalidSparsityError, "at most 0.5"),
        ({"sparsity": 1.0}, pk.InvalidSparsityError, r"\[0, 1\)"),
        ({"sparsity": 0.3, "allocation": "erk"}, pk.ConfigError, "allocation='global'"),
        ({"sparsity": 0.3, "allocation": pk.Global(count="units")}, pk.ConfigError, "count='weights'"),
        ({"sparsity": 0.3, "allocation": "no-such"}, pk.UnknownNameError, "uniform"),
        ({"sparsity": 0.3, "structure": "AL-MM"}, pk.ConfigError, "unknown option"),
        ({"sparsity": 0.3, "standardization": "per-head"}, pk.UnknownNameError, "per-layer"),
        (
            {"sparsity": 0.3, "allocation": "uniform", "standardization": "per-layer"},
            pk.ConfigError,
            "no standardization",
        ),
        ({"sparsity": 0.5, "pattern": "2:4", "allocation": "uniform"}, pk.PatternError, "no pattern"),
        ({"sparsity": 0.3, "calibration": None}, pk.MissingDataError, "calibration"),
        ({"sparsity": 0.3, "ignore": ["model.layers"]}, pk.NothingToPruneError, "ignore="),
    ],
)
def test_refusals_leave_the_model_unchanged(kwargs, error, match) -> None:  # noqa: ANN001
    model = _llama()
    before = _state(model)
    kwargs = {"calibration": CALIB, **kwargs}
    with pytest.raises(error, match=match):
        pk.prune(model, "flap", measure_latency=False, **kwargs)
    assert _unchanged(model, before)


def test_a_model_whose_heads_already_differ_is_refused() -> None:
    model = _llama()
    prune_flap(model, sparsity=0.35, calibration=CALIB, progress=False)
    with pytest.raises(pk.UnsupportedModuleError, match="flap needs the same heads"):
        prune_flap(model, sparsity=0.1, calibration=CALIB, progress=False)


def test_flap_is_registered_with_the_adaptive_allocation_by_default() -> None:
    method = pk.METHODS.get("flap")
    assert method.default_allocation == "global" and method.structural and method.needs_data
