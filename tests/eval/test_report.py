"""prunekit.eval.report: counting parameters as the model computes with them."""

from __future__ import annotations

import torch
from torch import nn

import prunekit as pk
from prunekit.eval.report import count_params


def test_count_params_folds_masks_in_and_leaves_buffers_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    # BN's running statistics are buffers, not parameters; its bias starts at zero (8 zeros)
    assert count_params(model) == (48 + 8 + 8 + 8 + 32 + 4, 108 - 8)
    pk.prune(model, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    assert any(".parametrizations." in k for k in model.state_dict())  # masked, not folded
    # half of each weight matrix is zero: 24 of 48 and 16 of 32; the mask buffers are not counted
    assert count_params(model) == (108, 108 - 8 - 24 - 16)
    stats = pk.measure(model, latency=False, sizes=False)
    assert (stats.params, stats.nonzero_params) == count_params(model)
