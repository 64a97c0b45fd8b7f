"""prunekit never edits an object the pruned model shares with another model: configs (and the sub-modules'
references to them), generation configs, parameters tied across models.

Field report: a teacher and a student built from one Hugging Face config object; pruning the student's heads
rewrote the teacher's config, so the teacher no longer saved and reloaded.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.errors import PrunekitError

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
CALIB = [torch.randint(0, 300, (1, 24), generator=torch.Generator().manual_seed(i)) for i in range(3)]


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


def _logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _prune(student: nn.Module, method: str) -> None:
    kw = {"calibration": CALIB} if method.startswith("llm-") else {"example_inputs": {"input_ids": IDS}}
    pk.prune(student, method, sparsity=0.5, measure_latency=False, **kw)


def test_pruning_the_student_leaves_the_teacher_s_config_alone(tmp_path) -> None:  # noqa: ANN001
    """The field case: LlamaForCausalLM(cfg) twice, "head" at 0.5 on the student."""
    cfg = _config("llama")
    teacher, student = _model("llama", cfg, 0), _model("llama", cfg, 1)
    pk.prune(student, "head", sparsity=0.5, example_inputs=IDS, measure_latency=False)
    assert (teacher.config.num_attention_heads, teacher.config.num_key_value_heads) == (8, 4)
    assert teacher.config is cfg and teacher.model.layers[0].self_attn.q_proj.out_features == 64
    assert (student.config.num_attention_heads, student.config.num_key_value_heads) == (4, 2)
    for name, model in (("teacher", teacher), ("student", student)):
        path = tmp_path / name
        model.save_pretrained(path)
        again = transformers.LlamaForCausalLM.from_pretrained(path).eval()
        assert torch.equal(_logits(again), _logits(model)), name


CASES = [("llama", m) for m in ("head", "llm-heads", "llm-mlp", "l2-channel", "embedding", "layer", "llm-layers")]
CASES += [("bert", m) for m in ("head", "l2-channel", "embedding", "layer")]


@pytest.mark.parametrize("kind,method", CASES)
def test_a_shared_config_is_copied_before_it_is_edited(kind: str, method: str) -> None:
    cfg = _config(kind)
    dense = cfg.to_dict()
    teacher, student = _model(kind, cfg, 0), _model(kind, cfg, 1)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_logits = _logits(teacher)
    _prune(student, method)
    assert cfg.to_dict() == dense and teacher.config is cfg  # the teacher's config is untouched
    assert all(torch.equal(v, teacher_state[k]) for k, v in teacher.state_dict().items())
    assert torch.equal(_logits(teacher), teacher_logits)
    assert student.config is not cfg and student.config.to_dict() != dense  # the student has its own, updated
    for name, module in student.named_modules():  # sub-modules read the student's config, not the teacher's
        held = module.__dict__.get("config")
        assert held is None or held is student.config, name
    assert student(input_ids=IDS).logits.shape == teacher_logits.shape


@pytest.mark.parametrize("method", ["llm-heads", "llm-mlp"])
def test_a_refused_method_changes_neither_model(method: str) -> None:
    cfg = _config("bert")
    teacher, student = _model("bert", cfg, 0), _model("bert", cfg, 1)
    dense = cfg.to_dict()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(PrunekitError):
        _prune(student, method)  # BERT is not a causal LM: the layer-wise methods refuse it
    assert cfg.to_dict() == dense and teacher.config is cfg
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())


def test_parameters_tied_across_models_are_not_changed() -> None:
    """The student borrows the teacher's embedding and an output-projection bias (``attention_bias``);
    "embedding" slices the student's copy, FLAP's bias compensation adds to a new bias."""
    cfg = _config("llama", attention_bias=True)
    teacher, student = _model("llama", cfg, 0), _model("llama", cfg, 1)
    student.model.embed_tokens.weight = teacher.model.embed_tokens.weight
    student.model.layers[0].self_attn.o_proj.bias = teacher.model.layers[0].self_attn.o_proj.bias
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    _prune(student, "llm-heads")
    assert not torch.equal(student.model.layers[0].self_attn.o_proj.bias, state["model.layers.0.self_attn.o_proj.bias"])
    _prune(student, "embedding")
    assert student.model.embed_tokens.weight.shape[1] < 64
    assert all(torch.equal(v, state[k]) for k, v in teacher.state_dict().items())
