"""ignore= is honoured by the structured language-model methods (llm-heads, llm-mlp, llm-layers)."""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.surgery import from_pretrained_pruned

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

CALIB = [torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
IDS = torch.randint(0, 300, (1, 8), generator=torch.Generator().manual_seed(9))


def _llama(layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize(
    "method,ignore",
    [
        ("llm-mlp", "model.layers.0"),
        ("llm-mlp", "model.layers.0.mlp.down_proj"),
        ("llm-heads", "model.layers.0"),
        ("llm-heads", "model.layers.0.self_attn"),
    ],
)
def test_ignored_layers_keep_their_units_and_the_model_reloads(method: str, ignore: str, tmp_path) -> None:  # noqa: ANN001
    model = _llama()
    dense0 = {k: v.clone() for k, v in model.model.layers[0].state_dict().items()}
    result = pk.prune(model, method, sparsity=0.5, calibration=CALIB, ignore=[ignore], measure_latency=False)
    layer0, layer1 = model.model.layers[0], model.model.layers[1]
    part = "mlp" if method == "llm-mlp" else "self_attn"
    for k, v in layer0.state_dict().items():
        if k.startswith(part) and k in dense0:
            assert torch.equal(v, dense0[k]), k  # bit-identical: ignore= kept it
        elif k.startswith(part):  # bias compensation made the config give every layer a bias: a zero one here
            assert k.endswith(".bias") and not v.any(), k
    if method == "llm-mlp":
        assert layer0.mlp.down_proj.in_features == 64 and layer1.mlp.down_proj.in_features == 32
    else:
        assert layer0.self_attn.q_proj.out_features == 32 and layer1.self_attn.q_proj.out_features < 32
    assert any("ignore=" in n for n in result.notes)
    with torch.no_grad():
        logits = model(IDS).logits
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, logits)


def test_llm_layers_never_removes_an_ignored_layer() -> None:
    for ignored in range(4):
        model = _llama(4)
        first = {i: layer.self_attn.q_proj.weight.clone() for i, layer in enumerate(model.model.layers)}
        pk.prune(
            model,
            "llm-layers",
            sparsity=0.5,
            calibration=CALIB,
            ignore=[f"model.layers.{ignored}"],
            measure_latency=False,
        )
        assert len(model.model.layers) == 2
        assert any(torch.equal(layer.self_attn.q_proj.weight, first[ignored]) for layer in model.model.layers)


@pytest.mark.parametrize("method", ["llm-mlp", "llm-heads", "llm-layers"])
def test_ignore_covering_every_layer_is_refused_with_the_model_unchanged(method: str) -> None:
    model = _llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.NothingToPruneError, match="ignore"):
        pk.prune(model, method, sparsity=0.5, calibration=CALIB, ignore=["model.layers"], measure_latency=False)
    assert model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_llm_layers_refuses_when_ignore_leaves_too_few_layers() -> None:
    model = _llama(4)
    with pytest.raises(pk.NothingToPruneError, match="lower the sparsity"):
        pk.prune(
            model,
            "llm-layers",
            sparsity=0.75,
            calibration=CALIB,
            ignore=["model.layers.0", "model.layers.1"],
            measure_latency=False,
        )
    assert len(model.model.layers) == 4
