"""`prunekit dynamic`: the commands mirror prunekit.dynamic and refuse what it refuses."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunekit import datasets
from prunekit.cli import app

runner = CliRunner()


def test_merge_tokens_on_minilm_writes_its_report(tmp_path):
    if not datasets.is_installed("minilm") or not datasets.is_installed("austen"):
        pytest.skip("needs the offline minilm and austen sources: prunekit data install minilm austen")
    out = tmp_path / "tome.json"
    result = runner.invoke(
        app,
        [
            "dynamic",
            "merge-tokens",
            "minilm",
            "--ratio",
            "0.1",
            "--inputs",
            "4",
            "--batch-size",
            "2",
            "--rounds",
            "1",
            "--json-out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    assert res["settings"]["ratio"] == 0.1 and res["inputs"] == 4
    assert len(res["tokens_per_block"]) == 6 and res["tokens_per_block"][-1] < res["tokens_per_block"][0]
    assert 0 < res["token_share"] < 1 and 0 < res["cosine_to_dense"]["mean"] <= 1.0001


def test_refusals_are_messages():
    result = runner.invoke(app, ["dynamic", "merge-tokens", "prunekit:resnet-small", "--r", "2"])
    assert result.exit_code == 2 and "token commands take" in result.output
    result = runner.invoke(app, ["dynamic", "prune-tokens", "torchvision:vit_b_16", "--layers", "3,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
