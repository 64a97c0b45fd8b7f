"""Attention blocks found by :func:`prunekit.surgery.attention.find_attention`: the tensors of one head unit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.surgery.attention import find_attention


def test_unit_tensors_are_the_slices_of_one_head_and_need_the_root_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(8, 2))  # 2 heads of size 4
    att = model[0]
    (blk,) = find_attention(model)
    got = blk.unit_tensors(1)
    assert [(t is att.in_proj_weight, t is att.in_proj_bias, t is att.out_proj.weight, dim) for t, dim, _ in got] == [
        (True, False, False, 0), (False, True, False, 0), (False, False, True, 1)]
    rows = [4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23]  # head 1 of q, k and v in the packed in_proj
    assert got[0][2].tolist() == rows and got[1][2].tolist() == rows
    assert got[2][2].tolist() == [4, 5, 6, 7]  # its columns of out_proj
    blk.root = None  # a block built by hand has no model to read its tensors from: refused, not (None, ...)
    with pytest.raises(ConfigError, match="no root model"):
        blk.unit_tensors(0)
