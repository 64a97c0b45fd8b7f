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
    with pytest.raises(pk.CheckpointError, match="another folder"):
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
