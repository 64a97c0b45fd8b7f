"""Tests of :mod:`prunekit.im2col`: a convolution is its patches times its weight matrix."""

import pytest
import torch
from torch import nn

from prunekit.im2col import Patches, from_matrix, to_matrix


@pytest.mark.parametrize(
    "conv,shape",
    [
        (nn.Conv2d(8, 12, 3, stride=2, padding=1), (2, 8, 9, 7)),
        (nn.Conv2d(8, 12, (3, 2), padding="same", dilation=2, padding_mode="reflect"), (2, 8, 9, 7)),
        (nn.Conv2d(8, 12, 3, groups=4, padding=1, padding_mode="circular"), (3, 8, 6, 6)),
        (nn.Conv2d(8, 8, 3, groups=8), (3, 8, 6, 6)),
        (nn.Conv1d(6, 4, 3, stride=2, padding=2, padding_mode="replicate"), (2, 6, 11)),
        (nn.Conv1d(6, 4, 3, padding="same"), (6, 11)),
    ],
)
def test_patches_times_the_matrix_is_the_convolution(conv, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    with torch.no_grad():
        y = conv(x) - conv.bias.reshape(-1, *([1] * (conv.weight.dim() - 2)))
    y = y if y.dim() == conv.weight.dim() else y.unsqueeze(0)
    W = to_matrix(conv.weight.detach())
    assert torch.equal(from_matrix(W, conv.weight.shape), conv.weight.detach())
    rows = torch.cat(list(Patches.of(conv).rows(x, chunk_elements=64)))  # small chunks: several per batch
    per = conv.out_channels // conv.groups
    out = torch.cat([rows[:, g] @ W[g * per : (g + 1) * per].T for g in range(conv.groups)], dim=1)
    assert torch.allclose(out, y.flatten(2).transpose(1, 2).reshape(-1, conv.out_channels), atol=1e-5)
