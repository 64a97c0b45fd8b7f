"""Streaming a checkpoint layer by layer (prunekit.llm.prune_checkpoint) gives the weights of the same pruning
run in memory, for every family; the source is never touched; refusals come before anything is written."""

from __future__ import annotations

import hashlib

import pytest
import torch

import prunekit as pk
from prunekit.llm import prune_causal_lm, prune_checkpoint
from tests.llm.conftest import FAMILIES, calibration, tiny_model


def _digest(folder) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method, pattern", [("wanda", "2:4"), ("sparsegpt", None)])
def test_streamed_weights_equal_the_in_memory_run(tmp_path, family, method, pattern):
    model = tiny_model(family, layers=3)
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="100KB")  # several shards and an index
    before = _digest(src)
    batches = calibration()
    sparsity = None if pattern else 0.5
    streamed = prune_checkpoint(
        src, tmp_path / "out", method, sparsity=sparsity, pattern=pattern, calibration=batches, progress=False
    )
    in_memory = prune_causal_lm(model, method, sparsity=sparsity, pattern=pattern, calibration=batches, progress=False)
    assert streamed.layer_sparsity == in_memory.layer_sparsity
    again = type(model).from_pretrained(tmp_path / "out").eval()  # what transformers reads back
    mine, theirs = model.state_dict(), again.state_dict()
    assert set(mine) == set(theirs)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine), family
    assert _digest(src) == before  # the source checkpoint is read, never written


def test_refusals_come_before_anything_is_written(tmp_path):
    src = tmp_path / "src"
    tiny_model("llama").save_pretrained(src)
    with pytest.raises(pk.ConfigError, match="layer-wise methods"):
        prune_checkpoint(src, tmp_path / "a", "llm-mlp", sparsity=0.3, calibration=calibration())
    with pytest.raises(pk.CheckpointError, match="folder of its own"):
        prune_checkpoint(src, src, "wanda", sparsity=0.5, calibration=calibration())
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep").write_text("mine")
    with pytest.raises(pk.CheckpointError, match="overwrite"):
        prune_checkpoint(src, out, "wanda", sparsity=0.5, calibration=calibration())
    assert [p.name for p in out.iterdir()] == ["keep"]
    with pytest.raises(pk.MissingDataError):
        prune_checkpoint(src, tmp_path / "b", "wanda", sparsity=0.5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(pk.CheckpointError, match="no safetensors"):
        prune_checkpoint(tmp_path / "empty", tmp_path / "c", "wanda", sparsity=0.5, calibration=calibration())


def test_device_is_passed_to_the_runner_and_an_absent_one_is_refused_first(tmp_path, monkeypatch):
    import prunekit.llm.streaming as streaming

    src = tmp_path / "src"
    tiny_model("llama", layers=2).save_pretrained(src)
    before = _digest(src)
    seen = []
    real = streaming.prune_causal_lm

    def spy(*args, **kwargs):
        seen.append(kwargs.get("device"))
        return real(*args, **kwargs)

    monkeypatch.setattr(streaming, "prune_causal_lm", spy)
    plain = prune_checkpoint(src, tmp_path / "a", "wanda", sparsity=0.5, calibration=calibration(), progress=False)
    on_cpu = prune_checkpoint(
        src, tmp_path / "b", "wanda", sparsity=0.5, calibration=calibration(), progress=False, device="cpu"
    )
    assert seen == [None, "cpu"] and on_cpu.layer_sparsity == plain.layer_sparsity
    a = {p.name: p.read_bytes() for p in (tmp_path / "a").glob("*.safetensors")}
    assert a and a == {p.name: p.read_bytes() for p in (tmp_path / "b").glob("*.safetensors")}
    absent = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(pk.ConfigError, match="device"):
        prune_checkpoint(src, tmp_path / "c", "wanda", sparsity=0.5, calibration=calibration(), device=absent)
    with pytest.raises(pk.ConfigError, match="not a torch device"):
        prune_checkpoint(src, tmp_path / "c", "wanda", sparsity=0.5, calibration=calibration(), device="gpu0")
    assert not (tmp_path / "c").exists() and len(seen) == 2 and _digest(src) == before


def test_prune_llm_stream_on_the_command_line(tmp_path):
    from typer.testing import CliRunner

    from prunekit import datasets
    from prunekit.cli import app

    runner = CliRunner()
    base = ["prune-llm", "smollm2-135m", "--method", "wanda", "--sparsity", "0.5", "--stream"]
    absent = "cuda:0" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    for extra, said in (
        (["--method", "llm-mlp"], "layer-wise"),
        (["--eval-tokens", "64"], "--eval-tokens 0"),
        (["--eval-tokens", "0", "--device", absent], "device="),
    ):
        r = runner.invoke(app, [*base, *extra, "--out", str(tmp_path / "x")], terminal_width=200)
        assert r.exit_code == 2 and said in " ".join(r.output.split()), r.output
    assert not (tmp_path / "x").exists()
    if not datasets.is_installed("smollm2"):
        pytest.skip("SmolLM2-135M is not installed: prunekit data install smollm2")
    args = [*base, "--eval-tokens", "0", "--calibration-samples", "2", "--seq-len", "16", "--no-progress"]
    r = runner.invoke(app, [*args, "--out", str(tmp_path / "s")], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "one decoder layer at a time" in " ".join(r.output.split())
    files = {p.name for p in (tmp_path / "s").iterdir()}
    assert {"config.json", "model.safetensors.index.json", "prunekit_llm.json", "tokenizer.json"} <= files
    again = pytest.importorskip("transformers").AutoModelForCausalLM.from_pretrained(tmp_path / "s")
    w = again.model.layers[3].mlp.up_proj.weight
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


def test_read_tensor_equals_safetensors_for_every_dtype(tmp_path):
    from safetensors.torch import load_file, save_file

    from prunekit.llm.streaming import read_tensor

    g = torch.Generator().manual_seed(0)
    tensors = {
        f"t.{dtype}".replace("torch.", ""): (torch.randn(3, 5, generator=g) * 100).to(dtype)
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8)
    }
    tensors["empty"] = torch.zeros(0, 4)
    tensors["scalar"] = torch.tensor(2.5)
    tensors["mask"] = torch.rand(4, 4, generator=g) > 0.5
    save_file(tensors, str(tmp_path / "a.safetensors"))
    ref = load_file(str(tmp_path / "a.safetensors"))
    for name, t in ref.items():
        got = read_tensor(tmp_path / "a.safetensors", name)
        assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), name
    with pytest.raises(pk.CheckpointError, match="no tensor"):
        read_tensor(tmp_path / "a.safetensors", "missing")


def test_a_checkpoint_with_per_layer_widths_streams(tmp_path):
    from prunekit.surgery import from_pretrained_pruned

    model = tiny_model("llama", layers=3)
    pk.prune(model, "flap", sparsity=0.35, calibration=calibration(), measure=False)  # widths differ by layer
    model.save_pretrained(tmp_path / "src")
    assert model.config.prunekit_structure  # the config cannot state the widths
    batches = calibration(seed=5)
    prune_checkpoint(tmp_path / "src", tmp_path / "out", "wanda", sparsity=0.5, calibration=batches, progress=False)
    prune_causal_lm(model, "wanda", sparsity=0.5, calibration=batches, progress=False)
    again = from_pretrained_pruned(type(model), str(tmp_path / "out"))
    mine, theirs = model.state_dict(), again.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_an_out_that_holds_the_source_is_refused_and_owl_aliases_stream(tmp_path):
    parent = tmp_path / "work"
    src = parent / "src"
    tiny_model("llama").save_pretrained(src)
    (parent / "notes.txt").write_text("mine")
    for out in (parent, src / "inside"):  # replacing the parent would delete the source
        with pytest.raises(pk.CheckpointError, match="folder of its own"):
            prune_checkpoint(src, out, "wanda", sparsity=0.5, calibration=calibration(), overwrite=True)
    assert (parent / "notes.txt").read_text() == "mine" and (src / "config.json").is_file()
    with pytest.raises(pk.ConfigError, match="torch.dtype"):
        prune_checkpoint(src, tmp_path / "d", "wanda", sparsity=0.5, calibration=calibration(), dtype="float16")
    result = prune_checkpoint(src, tmp_path / "owl", "owl-wanda", sparsity=0.5, calibration=calibration())
    assert result.allocation.startswith("owl")


def test_streaming_takes_the_solver_options_and_targets_of_the_in_memory_run(tmp_path):
    model = tiny_model("llama", layers=2)
    src = tmp_path / "src"
    model.save_pretrained(src)
    batches = calibration()
    targets = ["model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj"]
    options = {"blocksize": 16, "percdamp": 0.05, "targets": targets}
    streamed = prune_checkpoint(src, tmp_path / "out", "sparsegpt", sparsity=0.5, calibration=batches, **options)
    in_memory = prune_causal_lm(model, "sparsegpt", sparsity=0.5, calibration=batches, progress=False, **options)
    assert sorted(streamed.layer_sparsity) == sorted(in_memory.layer_sparsity) == sorted(targets)
    again = type(model).from_pretrained(tmp_path / "out").eval()
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(pk.ConfigError, match="blocksize is a SparseGPT option"):
        prune_checkpoint(src, tmp_path / "w", "wanda", sparsity=0.5, calibration=batches, blocksize=16)
    assert not (tmp_path / "w").exists()


def test_the_record_is_written_inside_the_output_and_a_source_s_is_not_copied(tmp_path):
    import json

    from prunekit.llm.streaming import RECORD

    src = tmp_path / "src"
    tiny_model("llama", layers=1).save_pretrained(src)
    (src / RECORD).write_text(json.dumps({"method": "an earlier run"}))
    prune_checkpoint(src, tmp_path / "a", "magnitude", sparsity=0.5, record={"source": "tiny"})
    record = json.loads((tmp_path / "a" / RECORD).read_text())
    assert record["source"] == "tiny" and record["streamed"] is True and record["pattern"] == "unstructured"
    prune_checkpoint(src, tmp_path / "b", "magnitude", sparsity=0.5)
    assert not (tmp_path / "b" / RECORD).exists()
