"""The report pk.prune returns for a causal LM is cheap by default (counts and sparsities); file sizes on request."""

from __future__ import annotations

import copy

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
