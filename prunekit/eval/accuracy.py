"""Top-1 accuracy of a classifier on tensors already prepared (normalised) for it."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.calls import eval_mode

__all__ = ["accuracy"]


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] of ``model`` on ``images`` ``[N, ...]`` with int64 ``labels`` ``[N]``.

    The images go in as they are (normalise them first), ``batch`` at a time, in eval mode and without
    gradients; the model's training mode is restored afterwards. The count of correct predictions is exact,
    so the result does not depend on ``batch`` unless the model's outputs do.
    """
    correct = 0
    with eval_mode(model):
        for i in range(0, len(images), batch):
            correct += int((model(images[i : i + batch]).argmax(1) == labels[i : i + batch]).sum())
    return correct / len(images)
