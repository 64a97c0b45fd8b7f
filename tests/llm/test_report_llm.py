"""The report pk.prune returns for a causal LM is cheap by default (counts and sparsities); file sizes on request."""

from __future__ import annotations

import copy

import pytest
import torch

import prunekit as pk

from .conftest import calibration, tiny_model


def test_language_model_report_counts_by_default_and_sizes_on_request():
    base = tiny_model("llama")
    cheap = pk.prune(copy.deepcopy(base), "wanda", sparsity=0.5, calibration=calibration(), progress=False)
    assert cheap.after.dense_bytes is None and cheap.after.sparse_bytes is None and cheap.latency is None
    assert cheap.after.nonzero_params < cheap.before.nonzero_params
    assert cheap.layers and all(abs(row.sparsity - 0.5) < 0.02 for row in cheap.layers if row.sparsity)
    full = pk.prune(copy.deepcopy(base), "wanda", sparsity=0.5, calibration=calibration(), progress=False, measure=True)
    assert full.after.sparse_bytes is not None and full.after.sparse_bytes < full.after.dense_bytes
    assert full.after.nonzero_params == cheap.after.nonzero_params


def test_counts_before_pruning_are_the_whole_models():
    """The layer-wise methods count the untouched tensors once, after the call; the figures are the whole
    model's before pruning, also when a target shares its weight with an untouched module (tied)."""
    from prunekit.eval.report import count_params

    for tied in (False, True):
        base = tiny_model("llama", tie_word_embeddings=tied)
        if tied:
            base.tie_weights()
        with torch.no_grad():  # some zeros outside the targets, so that the counts tell them apart
            base.model.embed_tokens.weight[:3] = 0
        expected = count_params(base)
        model = copy.deepcopy(base)
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        report = pk.prune(
            model, "wanda", sparsity=0.5, calibration=calibration(), progress=False, prune_classifier=True
        )
        assert (report.before.params, report.before.nonzero_params) == expected
        assert expected[0] == sum(p.numel() for p in base.parameters())  # a tied matrix counted once
        assert report.after.params == expected[0] and report.after.nonzero_params == count_params(model)[1]


def test_a_target_the_method_leaves_dense_is_reported_with_the_ignored_layers():
    model = tiny_model("llama")
    report = pk.prune(model, "wanda", sparsity=0.5, calibration=calibration(), progress=False, prune_classifier=True)
    head = next(r for r in report.layers if r.name == "lm_head")
    assert head.ignored is not None and "outside the decoder layers" in head.ignored
    assert report.sparsity == pytest.approx(0.5, abs=0.01)  # over the matrices it pruned, not the dense head
    assert any(n.startswith("lm_head: left dense") for n in report.notes)
