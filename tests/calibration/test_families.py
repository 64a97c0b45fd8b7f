"""Tests of :mod:`prunekit.calibration.families`: one family table serves the layer-wise runner, the structured
LLM methods and the generic head/layer path."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calibration.families import FAMILIES, block_list, family_for, family_of, layouts_for
from prunekit.errors import UnsupportedModuleError
from prunekit.surgery import from_pretrained_pruned
from prunekit.surgery.attention import find_attention

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = torch.randint(0, 300, (2, 10), generator=torch.Generator().manual_seed(0))
CALIB = [torch.randint(0, 300, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]


def _tiny(kind: str) -> nn.Module:
    torch.manual_seed(0)
    common = dict(vocab_size=300, num_hidden_layers=2, num_attention_heads=4)
    if kind == "llama":
        return transformers.LlamaForCausalLM(
            transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)
        ).eval()
    if kind == "qwen2":
        return transformers.Qwen2ForCausalLM(
            transformers.Qwen2Config(hidden_size=32, intermediate_size=64, num_key_value_heads=2, **common)
        ).eval()
    if kind == "opt":
        return transformers.OPTForCausalLM(
            transformers.OPTConfig(
                hidden_size=32, ffn_dim=64, word_embed_proj_dim=32, max_position_embeddings=64, **common
            )
        ).eval()
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(
            transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=300, n_positions=64)
        ).eval()
    if kind == "bert":
        return transformers.BertForSequenceClassification(
            transformers.BertConfig(hidden_size=32, intermediate_size=64, **common)
        ).eval()
    raise ValueError(kind)


KINDS = ["llama", "qwen2", "opt", "gpt2", "bert"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_family_table_names_the_blocks_and_attention_the_head_path_finds(kind: str) -> None:
    model = _tiny(kind)
    family = family_of(model)
    path, blocks = block_list(model)
    assert len(blocks) == 2 and model.get_submodule(path) is blocks
    found = find_attention(model)
    assert len(found) == 2  # one attention module per block, found by the family's own layout first
    assert layouts_for(model)[0] in family.layouts
    for i, blk in enumerate(found):
        assert blk.name.startswith(f"{path}.{i}.") and blk.layout == family.layouts[0]
        if family.attention is not None:  # the structured LLM methods cut exactly these modules
            layer = blocks[i]
            assert layer.get_submodule(family.attention.module) is blk.module
            assert layer.get_submodule(family.attention.o) is blk.out_module


def test_every_family_is_listed_once_and_unknown_models_are_refused_by_name() -> None:
    types = [t for f in FAMILIES for t in f.model_types]
    assert len(types) == len(set(types))
    assert family_of(nn.Linear(2, 2)) is None
    with pytest.raises(UnsupportedModuleError, match="supported: .*llama"):
        family_for(nn.Linear(2, 2))
    with pytest.raises(UnsupportedModuleError, match="encoder, not a causal LM"):  # BERT serves the generic path
        family_for(_tiny("bert"))


def test_llm_heads_and_head_cut_the_same_projections_of_a_llama() -> None:
    """Both paths remove whole key/value groups through the projections the family table names."""
    a, b = _tiny("llama"), _tiny("llama")
    pk.prune(a, "llm-heads", sparsity=0.5, calibration=CALIB, measure_latency=False)
    pk.prune(b, "head", sparsity=0.5, example_inputs=IDS, measure_latency=False)
    attn = family_for(a).attention
    for x, y in zip(family_for(a).layer_list(a), family_for(b).layer_list(b)):
        for name in (attn.q, attn.k, attn.v, attn.o):
            assert x.get_submodule(name).weight.shape == y.get_submodule(name).weight.shape
    assert (a.config.num_attention_heads, a.config.num_key_value_heads) == (2, 1)
    assert (b.config.num_attention_heads, b.config.num_key_value_heads) == (2, 1)


def test_opt_heads_found_through_the_family_layout_prune_and_reload(tmp_path) -> None:  # noqa: ANN001
    """OPT names its output projection out_proj: its family's layout finds it for the generic head path; the
    config derives the head size from the hidden size, so the sizes are recorded for prunekit's loader."""
    model = _tiny("opt")
    result = pk.prune(model, "head", sparsity=0.5, example_inputs=IDS, measure_latency=False)
    attn = model.model.decoder.layers[0].self_attn
    assert attn.q_proj.out_features == 16 and attn.out_proj.in_features == 16 and attn.num_heads == 2
    assert any("from_pretrained_pruned" in n for n in result.notes)
    with torch.no_grad():
        logits = model(IDS).logits
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(IDS).logits, logits)


def test_llm_heads_on_opt_refuses_and_points_to_head() -> None:
    model = _tiny("opt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PrunekitError, match="'head' method"):
        pk.prune(model, "llm-heads", sparsity=0.5, calibration=CALIB, measure_latency=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_llm_layers_and_layer_with_block_influence_remove_the_same_blocks() -> None:
    """ShortGPT's block influence is one criterion: the layer-wise runner (llm-layers) and the generic Layer()
    path (criterion "influence") measure it on the same tokens and drop the same decoder layers."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=300,
    )
    a = transformers.LlamaForCausalLM(cfg).eval()
    b = transformers.LlamaForCausalLM(cfg).eval()
    b.load_state_dict(a.state_dict())
    ids = torch.cat(CALIB)
    ra = pk.prune(a, "llm-layers", sparsity=0.5, calibration=[ids], measure_latency=False)
    pk.prune(b, "layer", sparsity=0.5, example_inputs=ids, criterion="influence", measure_latency=False)
    kept_a = [
        torch.equal(x.self_attn.q_proj.weight, y.self_attn.q_proj.weight)
        for x in a.model.layers
        for y in b.model.layers
    ]
    assert a.config.num_hidden_layers == b.config.num_hidden_layers == 3
    assert sum(kept_a) == 3  # each layer a kept is one b kept
    assert any("Block Influence" in n for n in ra.notes)
