"""Tests of :mod:`prunekit.surgery.hf`: head pruning keeps a Hugging Face config that can state the pruned
model, and every pruned model saves and reloads to identical logits: through stock ``from_pretrained`` when
the config states its sizes, else through ``prunekit.surgery.from_pretrained_pruned`` (field report: a GQA
Llama with 6 of 8 heads left and hidden size 64 could be neither saved nor reloaded). ``own_config_`` gives
a model its own copy of a shared config."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.surgery import from_pretrained_pruned, plan_heads
from prunekit.surgery.attention import find_attention
from prunekit.surgery.hf import head_config_fields, own_config_

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
CALIB = [torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(4)]
SPARSITIES = [0.125, 0.25, 0.375, 0.5, 0.75]


def _build(kind: str, layers: int = 2) -> nn.Module:
    torch.manual_seed(0)
    if kind in ("llama-gqa", "llama-mha"):
        cfg = transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=layers,
            num_attention_heads=8,
            num_key_value_heads=4 if kind == "llama-gqa" else 8,
            vocab_size=300,
            max_position_embeddings=64,
        )
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.BertConfig(
        hidden_size=64,
        num_attention_heads=8,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=300,
        max_position_embeddings=64,
    )
    return transformers.BertForMaskedLM(cfg).eval()


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _reload(model: nn.Module, path) -> tuple[nn.Module, str]:  # noqa: ANN001
    """Save, then load with the stock loader when the config states every size, else with prunekit's."""
    model.save_pretrained(path)
    if hasattr(model.config, "prunekit_structure"):
        return from_pretrained_pruned(type(model), path), "prunekit"
    return type(model).from_pretrained(path).eval(), "stock"


def _heads_match_projections(model: nn.Module) -> None:
    cfg = model.config
    for b in find_attention(model):
        assert b.head_dim == cfg.head_dim
        assert b.num_heads == cfg.num_attention_heads and b.num_kv_heads == cfg.num_key_value_heads


def test_gqa_llama_heads_save_and_reload_with_stock_from_pretrained(tmp_path) -> None:  # noqa: ANN001
    """The field case: "head" at 0.25 and "llm-heads" at 0.5 on 8 heads in 4 key/value groups, hidden 64.
    "head" at 0.25 asks for 6 heads, which LlamaConfig cannot state with hidden 64 (6 does not divide 64):
    the nearest count it can state that removes heads is 4 (2 of 4 groups), and the report says so."""
    model = _build("llama-gqa")
    result = pk.prune(model, "head", sparsity=0.25, measure_latency=False, example_inputs=IDS)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 2)
    assert any("0.25 (6 of 8 heads kept), became 0.5" in n and "exact_heads=True" in n for n in result.notes)
    for method, sparsity, kw in (
        ("head", 0.25, {"example_inputs": IDS}),
        ("head", 0.5, {"example_inputs": IDS}),
        ("llm-heads", 0.5, {"calibration": CALIB}),
    ):
        model = _build("llama-gqa")
        pk.prune(model, method, sparsity=sparsity, measure_latency=False, **kw)
        cfg = model.config
        assert 64 % cfg.num_attention_heads == 0  # what LlamaConfig validates
        _heads_match_projections(model)
        logits = _logits(model)
        generated = model.generate(IDS[:1], max_new_tokens=4, do_sample=False)
        path = tmp_path / method
        model.save_pretrained(path)
        again = transformers.LlamaForCausalLM.from_pretrained(path).eval()
        assert torch.equal(_logits(again), logits)
        assert torch.equal(again.generate(IDS[:1], max_new_tokens=4, do_sample=False), generated)
    # llm-heads at 0.5: 4 of 8 heads, 2 of 4 groups (3 heads in 3 groups would be as close, but 64 % 3 != 0)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (4, 2, 8)


@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize(
    "kind,method",
    [
        ("llama-gqa", "head"),
        ("llama-mha", "head"),
        ("bert", "head"),
        ("llama-gqa", "llm-heads"),
        ("llama-mha", "llm-heads"),
    ],
)
def test_every_head_pruned_model_saves_and_reloads_to_identical_logits(
    kind: str, method: str, sparsity: float, tmp_path
) -> None:  # noqa: ANN001
    model = _build(kind)
    kw = {"example_inputs": {"input_ids": IDS}} if method == "head" else {"calibration": CALIB}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        pk.prune(model, method, sparsity=sparsity, measure_latency=False, **kw)
    except pk.NothingToPruneError as e:  # no group removed (rounded down, or back by the config): refused
        assert "cannot state" in str(e) or "smallest sparsity" in str(e)
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
        return
    logits = _logits(model)
    again, loader = _reload(model, tmp_path)
    assert torch.equal(_logits(again), logits)
    if kind.startswith("llama"):  # LlamaConfig states any head count dividing the hidden size: stock reload
        assert loader == "stock"
        _heads_match_projections(model)
        assert 64 % model.config.num_attention_heads == 0
    else:  # BertConfig derives the head size from hidden / heads: no smaller head count can be stated
        heads = find_attention(model)[0].num_heads
        assert heads == 8 - int(sparsity * 8)  # the requested count is kept ...
        assert loader == ("stock" if heads == 8 else "prunekit")  # ... and recorded for prunekit's loader
        assert model.config.num_attention_heads == 8  # the config still builds (it describes the skeleton)


def test_head_counts_move_to_the_nearest_count_the_config_can_state() -> None:
    model = _build("llama-gqa")  # 4 groups of 2 heads: 1, 2 or 4 groups give 2, 4, 8 heads, which divide 64
    # 0.25 asks for 3 groups: 2 and 4 are as near, and the tie with "remove nothing" goes to removing
    for sparsity, kept_groups in ((0.125, 4), (0.25, 2), (0.5, 2), (0.6, 2), (0.75, 1)):
        plan = plan_heads(model, sparsity)
        assert {b.groups - len(r) for b, r in zip(plan.blocks, plan.remove)} == {kept_groups}
        assert bool(plan.notes) == (sparsity == 0.25)  # moved (6 heads -> 4): says why and what to do
    assert "exact_heads=True" in plan_heads(model, 0.25).notes[0]
    exact = plan_heads(model, 0.25, exact=True)
    assert {len(r) for r in exact.remove} == {1}
    assert len(exact.notes) == 1 and "from_pretrained_pruned" in exact.notes[0]  # 6 heads: prunekit's loader only
    assert not plan_heads(model, 0.5, exact=True).notes  # 4 heads: the config states it, stock reload


def test_exact_heads_keep_the_requested_count_and_reload_through_the_pruned_loader(tmp_path) -> None:  # noqa: ANN001
    model = _build("llama-gqa")
    pk.prune(model, "head", sparsity=0.25, example_inputs=IDS, measure_latency=False, exact_heads=True)
    assert model.model.layers[0].self_attn.q_proj.out_features == 6 * 8
    assert model.config.num_attention_heads == 8  # 6 cannot be stated with hidden size 64: the config still builds
    assert model.config.prunekit_structure["shapes"]
    logits = _logits(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError):  # the stock loader builds 8 heads
        transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(_logits(from_pretrained_pruned(transformers.AutoModelForCausalLM, tmp_path)), logits)


def test_different_head_counts_per_layer_save_and_reload(tmp_path) -> None:  # noqa: ANN001
    model = _build("llama-gqa", layers=4)
    pk.prune(
        model, "head", sparsity=0.5, allocation="global", global_cap=0.75, example_inputs=IDS, measure_latency=False
    )
    assert len(set(model.config.prunekit_per_layer["num_attention_heads"])) > 1
    logits = _logits(model)
    again, loader = _reload(model, tmp_path)
    assert loader == "prunekit" and torch.equal(_logits(again), logits)


def test_a_hidden_size_no_head_count_divides_still_saves(tmp_path) -> None:  # noqa: ANN001
    model = _build("llama-gqa")
    pk.prune(model, "embedding", sparsity=0.3, example_inputs={"input_ids": IDS}, measure_latency=False)
    hidden = model.model.embed_tokens.weight.shape[1]
    assert hidden % 8 != 0  # 45: LlamaConfig refuses hidden_size 45 with 8 heads
    assert model.config.hidden_size == 64
    logits = _logits(model)
    again, loader = _reload(model, tmp_path)
    assert loader == "prunekit" and torch.equal(_logits(again), logits)


def test_head_config_fields_asks_the_family_what_it_can_state() -> None:
    llama = _build("llama-gqa")
    assert head_config_fields(llama, 4, 2, 8) == {"num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}
    assert head_config_fields(llama, 6, 3, 8) is None  # hidden_size 64 % 6 != 0
    assert head_config_fields(llama, 4, 3, 8) is None  # 4 query heads do not split into 3 groups
    bert = _build("bert")
    assert head_config_fields(bert, 8, 8, 8) == {"num_attention_heads": 8}
    assert head_config_fields(bert, 4, 4, 8) is None  # BERT would build heads of size 16
    assert head_config_fields(bert, 4, 2, 8) is None  # no key/value groups in BERT
    qwen3 = transformers.Qwen3ForCausalLM(
        transformers.Qwen3Config(
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=8,
            vocab_size=50,
        )
    )
    assert head_config_fields(qwen3, 6, 3, 8) is not None  # Qwen3 reads an explicit head_dim, no divisibility rule


def _config(kind: str, **extra):  # noqa: ANN003, ANN202
    if kind == "llama":
        return transformers.LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=8,
            num_key_value_heads=4,
            vocab_size=300,
            max_position_embeddings=64,
            **extra,
        )
    return transformers.BertConfig(
        hidden_size=64,
        num_attention_heads=8,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=300,
        max_position_embeddings=64,
        **extra,
    )


def _model(kind: str, cfg, seed: int) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(seed)
    cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.BertForMaskedLM
    return cls(cfg).eval()


def test_own_config_points_every_reference_at_the_copy() -> None:
    cfg = _config("llama")
    model = _model("llama", cfg, 0)
    generation = model.generation_config
    own_config_(model)
    assert model.config is not cfg and model.config.to_dict() == cfg.to_dict()
    assert model.model.config is model.config and model.model.layers[0].self_attn.config is model.config
    assert model.generation_config is not generation and model.generation_config.to_dict() == generation.to_dict()


def test_legacy_checkpoint_names_are_renamed_as_transformers_loads_them(tmp_path) -> None:  # noqa: ANN001
    # transformers 5 saves GPT-NeoX's lm_head.weight as embed_out.weight and renames it on load
    cfg = transformers.GPTNeoXConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    torch.manual_seed(0)
    model = transformers.GPTNeoXForCausalLM(cfg).eval()
    ids = torch.randint(0, 64, (2, 16))
    pk.prune(model, "l1-channel", sparsity=0.25, example_inputs=ids, measure=False)
    model.save_pretrained(tmp_path)
    again = from_pretrained_pruned(transformers.AutoModelForCausalLM, str(tmp_path))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)
