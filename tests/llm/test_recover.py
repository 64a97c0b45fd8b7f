"""Recovery fine-tuning (prunekit.llm.recover): exact masks, distillation, save/reload, refusals, CLI."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from tests.conftest import assert_unchanged, snapshot
from tests.llm.conftest import calibration, tiny_model

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft", reason="LoRA recovery needs peft (pip install peft==0.21.2)")

import prunekit as pk  # noqa: E402
from prunekit.apply.masks import apply_mask_, effective_state_dict, get_mask  # noqa: E402
from prunekit.errors import ConfigError, DataError, MissingDataError, PrunekitError, UnknownNameError  # noqa: E402
from prunekit.llm.recover import kd_loss, recover  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread (and a shared machine's cores are not oversubscribed)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _weights(model):
    return {k: v.detach().clone() for k, v in effective_state_dict(model).items() if any(p in k for p in PROJ)}


@pytest.mark.parametrize("squash", [False, True], ids=["masks", "zeros"])
def test_lora_keeps_pruned_weights_exactly_zero_and_changes_the_others(squash):
    torch.manual_seed(0)
    model = tiny_model()
    if squash:  # pruned weights are real zeros, as after squash_masks_ or a reload
        pk.prune(model, "wanda", sparsity=0.5, pattern="2:4", calibration=calibration(), progress=False, measure=False)
        pk.squash_masks_(model)
    else:  # prunekit masks over non-zero stored weights
        for name, mod in model.named_modules():
            if name.endswith(PROJ):
                apply_mask_(mod, torch.rand(mod.weight.shape) > 0.5)
    before = _weights(model)
    report = recover(model, calibration(4, 2, 32, seed=3), "lora", steps=6, lr=1e-2, rank=4, progress=False)
    after = _weights(model)
    assert report.masked_matrices == 14 and report.steps == 6 and len(report.loss_curve) == 6
    assert report.zeros_kept == sum(int((w == 0).sum()) for w in before.values())
    for key, w in before.items():
        pruned = w == 0
        assert 0.4 < pruned.float().mean() < 0.6, key
        assert (after[key][pruned] == 0).all(), f"{key}: a pruned weight was filled in"
        assert (after[key][~pruned] != w[~pruned]).float().mean() > 0.99, f"{key}: kept weights did not train"
    assert not any("lora" in n for n, _ in model.named_modules())  # adapters merged and removed
    assert all(p.requires_grad for p in model.parameters())  # the user's flags restored
    if not squash:
        assert get_mask(model.model.layers[0].self_attn.q_proj) is not None  # masks still in place


def test_kd_lowers_the_kl_to_the_teacher_on_the_training_batch():
    teacher = tiny_model(seed=1)
    student = copy.deepcopy(teacher)
    pk.prune(student, "magnitude", sparsity=0.5, pattern="2:4", measure=False)
    batch = calibration(1, 4, 32, seed=5)

    def kl() -> float:
        with torch.no_grad():
            return float(kd_loss(student(batch[0]).logits, teacher(batch[0]).logits, None, 2.0))

    teacher_state = snapshot(teacher)
    start = kl()
    report = recover(student, batch, "kd", teacher=teacher, steps=15, lr=1e-2, rank=4, temperature=2.0, progress=False)
    assert kl() < 0.7 * start
    assert report.loss_curve[-1] < report.loss_curve[0]
    assert_unchanged(teacher, teacher_state)  # the teacher is only read


def test_recovered_model_saves_and_reloads_to_identical_logits(tmp_path):
    model = tiny_model()
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    pk.squash_masks_(model)
    recover(model, calibration(2, 2, 16), "lora", steps=3, lr=1e-2, progress=False)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = calibration(1, 2, 20, seed=9)[0]
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, reloaded(ids).logits)
    assert (reloaded.model.layers[1].mlp.down_proj.weight == 0).float().mean() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "advice"),
    [
        (None, {"method": "sft"}, UnknownNameError, "kd, lora"),
        ("", {"tokenizer": object()}, DataError, "empty"),
        (["   ", ""], {"tokenizer": object()}, DataError, "empty"),
        ([], {}, DataError, "no batches"),
        ("some text", {}, MissingDataError, "tokenizer="),
        (None, {"method": "kd"}, MissingDataError, "teacher="),
        (None, {"teacher": "self"}, ConfigError, "method='kd'"),
        (None, {"steps": 0}, ConfigError, "steps"),
        (None, {"lr": -1.0}, ConfigError, "lr"),
        (None, {"target_modules": ["nope_proj"]}, ConfigError, "q_proj"),
        ([torch.zeros(2, 8)], {}, DataError, "LongTensor"),
        ([torch.full((1, 8), 10_000)], {}, DataError, "recovery token id 10000 is outside the model's vocabulary"),
    ],
)
def test_bad_inputs_raise_and_leave_the_model_unchanged(data, kwargs, error, advice):
    model = tiny_model()
    state = snapshot(model)
    if data is None:
        data = calibration(1, 1, 16)
    if kwargs.get("teacher") == "self":
        kwargs = {**kwargs, "teacher": tiny_model(seed=2)}
    with pytest.raises(error) as info:
        recover(model, data, progress=False, **kwargs)
    assert isinstance(info.value, PrunekitError) and advice in str(info.value)
    assert_unchanged(model, state)
    assert not any("lora" in n for n, _ in model.named_modules())


def test_a_failure_while_training_leaves_the_model_unchanged():
    model = tiny_model()
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    state = snapshot(model)
    calls = []

    def fail_on_the_second_step(module, args, output):  # a failure after one optimizer step has run
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("a failure in the second training step")

    model.model.layers[0].register_forward_hook(fail_on_the_second_step)
    with pytest.raises(RuntimeError, match="second training step"):
        recover(model, calibration(2, 1, 16), steps=2, progress=False)
    assert len(calls) == 2
    assert_unchanged(model, state)
    assert not any("lora" in n for n, _ in model.named_modules())


def test_cli_recover_writes_the_model_and_refuses_a_non_empty_out(tmp_path):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from tests.llm.test_tasks import _need_austen, tiny_lm, tiny_tokenizer

    _need_austen()
    tok = tiny_tokenizer()
    from prunekit.cli.recover import RECORD_FILE
    from prunekit.cli.recover import recover as recover_cmd

    torch.manual_seed(0)
    src = tmp_path / "pruned"
    model = tiny_lm(len(tok))
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    pk.squash_masks_(model)
    model.save_pretrained(src)
    tok.save_pretrained(src)
    import typer

    app = typer.Typer()
    app.command("recover")(recover_cmd)
    app.command("noop")(lambda: None)
    out = tmp_path / "recovered"
    args = [
        "recover",
        str(src),
        "--train-text",
        "northangerabbey",
        "--steps",
        "2",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--eval-text",
        "persuasion",
        "--eval-tokens",
        "32",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["steps"] == 2 and record["texts"] == ["northangerabbey"] and record["perplexity_after"]["ppl"] > 0
    from prunekit.llm.models import load_causal_lm

    reloaded, _ = load_causal_lm(out)
    w = reloaded.model.layers[0].mlp.up_proj.weight
    assert (w == 0).float().mean() == pytest.approx(0.5, abs=0.01)
    res = CliRunner().invoke(app, args)  # --out is not empty now
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = CliRunner().invoke(app, [*args[:-2], "--recovery-method", "distil", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "kd," in res.output and "lora" in res.output and not (tmp_path / "x").exists()
