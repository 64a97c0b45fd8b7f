"""Building models from spec strings: the registry of ``prunekit:NAME`` models, torchvision classifiers and
timm models (pretrained only from the local cache), the pretrained ccexam MNIST CNN, and how each known task is
evaluated."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from prunekit.datasets.locate import source_path
from prunekit.datasets.registry import CCEXAM_WEIGHTS
from prunekit.errors import CheckpointError, ConfigError, UnknownNameError
from prunekit.eval.accuracy import accuracy
from prunekit.models.nets import DigitCNN, LeNet5, LeNet300100, SmallResNet
from prunekit.registry import Registry

__all__ = [
    "MODELS",
    "build_from_spec",
    "input_shape_of",
    "is_pretrained",
    "load_ccexam_mnist_cnn",
    "source_of",
    "task_evaluation",
]

#: ``prunekit:NAME`` models: a name maps to ``factory(pretrained) -> nn.Module``; the module carries the shape of
#: one example input as ``example_input_shape`` (read by :func:`input_shape_of`).
MODELS: Registry[Callable[[bool], nn.Module]] = Registry("model")


def source_of(model: nn.Module) -> str | None:
    """The spec a model was built from, if it was built by :func:`build_model`."""
    return getattr(model, "_prunekit_source", None)


def input_shape_of(model: nn.Module) -> tuple[int, ...] | None:
    """The shape of one example input batch the model takes (batch 1), when the model carries it: every
    ``prunekit:NAME`` model and every ``torchvision:NAME`` / ``timm:NAME`` model built by :func:`build_model`
    does (timm's from the model's ``pretrained_cfg``); None
    otherwise (prunekit does not guess a shape)."""
    shape = getattr(model, "example_input_shape", None)
    return tuple(int(d) for d in shape) if isinstance(shape, (tuple, list)) and shape else None


def _tag(model: nn.Module, spec: str, pretrained: bool, input_shape: tuple[int, ...] | None = None) -> nn.Module:
    model._prunekit_source = spec  # type: ignore[assignment]
    model._prunekit_pretrained = pretrained  # type: ignore[assignment]
    if input_shape is not None:
        model.example_input_shape = input_shape  # type: ignore[assignment]
    return model


@MODELS.register("mnist-cnn", "pretrained MNIST CNN from PyPI ccexam (2 conv + 2 linear, 99% test accuracy)")
def _mnist_cnn(pretrained: bool) -> nn.Module:
    return load_ccexam_mnist_cnn() if pretrained else DigitCNN()


MODELS.add("lenet-300-100", lambda pretrained: LeNet300100(), "LeNet-300-100 MLP for 28x28 inputs (random init)")
MODELS.add("lenet5", lambda pretrained: LeNet5(), "LeNet-5-style CNN for 28x28 inputs (random init)")
MODELS.add(
    "resnet-small", lambda pretrained: SmallResNet(), "ResNet-8 (3 stages, width 16) for 28x28 inputs (random init)"
)


def _torchvision(name: str, pretrained: bool, seed: int = 0) -> tuple[nn.Module, bool]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise UnknownNameError("torchvision model", name, torchvision.models.list_models(module=torchvision.models))
    torch.manual_seed(seed)
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    model = torchvision.models.get_model(name, weights=None, **extra)
    if not pretrained:
        return model, False
    weights = torchvision.models.get_model_weights(name).DEFAULT
    local = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not local.is_file():
        return model, False
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt cache file
        raise CheckpointError(f"cannot read cached weights {local}: {e}") from e
    state = {k: v for k, v in state.items() if not k.startswith("aux")}
    model.load_state_dict(state)
    return model, True


def _timm(name: str, pretrained: bool, seed: int = 0) -> tuple[nn.Module, bool, tuple[int, ...]]:
    """A timm model, its pretrained flag and its input shape; pretrained weights only from the local Hugging
    Face cache (a ``model.safetensors`` file: nothing is downloaded, no pickle is read)."""
    try:
        import timm
    except ImportError:
        raise ConfigError("timm:NAME models need the timm package: pip install 'timm==1.0.29'") from None
    if not name or not timm.is_model(name.split(".", 1)[0]):  # "NAME.TAG" names a pretrained tag of NAME
        import difflib

        names = timm.list_models()
        close = difflib.get_close_matches(name, names, n=8, cutoff=0.6)
        raise UnknownNameError("timm model", name, close or names[:8] + ["... (timm.list_models() has them all)"])
    torch.manual_seed(seed)
    local = _timm_cached_weights(name) if pretrained else None
    if local is None:
        model = timm.create_model(name, pretrained=False)
    else:
        model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": local})
    cfg = getattr(model, "pretrained_cfg", None)
    size = (cfg.get("input_size") if isinstance(cfg, dict) else None) or (3, 224, 224)
    return model, local is not None, (1, *(int(d) for d in size))


def _timm_cached_weights(name: str) -> str | None:
    import timm
    from huggingface_hub import try_to_load_from_cache

    repo = timm.models.get_pretrained_cfg(name)
    hub_id = repo.hf_hub_id if repo is not None else None
    if not hub_id:
        return None
    hit = try_to_load_from_cache(hub_id, "model.safetensors")
    return hit if isinstance(hit, str) else None


def build_from_spec(spec: str, *, pretrained: bool = True) -> nn.Module:
    """Build the model a registered spec names (``torchvision:NAME``, ``timm:NAME``, ``prunekit:NAME``; see
    :mod:`prunekit.models`). Raises :class:`~prunekit.errors.UnknownNameError` listing the specs, and
    :class:`~prunekit.errors.ConfigError` for ``timm:NAME`` when timm is not installed."""
    if spec.startswith("torchvision:"):
        name = spec.split(":", 1)[1]
        model, loaded = _torchvision(name, pretrained)
        # torchvision's classifiers take ImageNet crops: 224x224, inception_v3 299x299
        return _tag(model, spec, loaded, (1, 3, 299, 299) if name == "inception_v3" else (1, 3, 224, 224))
    if spec.startswith("timm:"):
        model, loaded, shape = _timm(spec.split(":", 1)[1], pretrained)
        return _tag(model, spec, loaded, shape)
    if spec.startswith("prunekit:"):
        return _tag(MODELS.get(spec.split(":", 1)[1])(pretrained), spec, pretrained)
    raise UnknownNameError(
        "model spec",
        spec,
        ["torchvision:NAME", "timm:NAME", *(f"prunekit:{n}" for n in MODELS.names()), "a saved model directory"],
    )


def is_pretrained(model: nn.Module) -> bool | None:
    """Whether :func:`build_model` loaded pretrained weights (None: not built by it)."""
    return getattr(model, "_prunekit_pretrained", None)


def task_evaluation(spec: str) -> tuple[str, Callable[[nn.Module], float], Callable[[int, int], list]] | None:
    """How prunekit evaluates the model a spec names, when it knows: ``(description, evaluate, calibration)``.

    ``evaluate(model)`` returns the task metric (top-1 accuracy in [0, 1] on real held-out data) and
    ``calibration(n_batches, seed)`` draws batches ``(inputs, targets)`` from the task's training split,
    prepared exactly as the model expects them. Only ``prunekit:mnist-cnn`` has one today: the MNIST test
    set (10,000 images, ``mnist_normalize``d as the pretrained CNN expects).
    """
    if spec != "prunekit:mnist-cnn":
        return None
    from prunekit.datasets import load_mnist, mnist_normalize

    def evaluate(model: nn.Module) -> float:
        x, y = load_mnist("test")
        return accuracy(model, mnist_normalize(x), y, batch=1000)

    def calibration(n_batches: int, seed: int) -> list:
        x, y = load_mnist("train")
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: n_batches * 64]
        return [(mnist_normalize(x[idx[i : i + 64]]), y[idx[i : i + 64]]) for i in range(0, len(idx), 64)]

    return "MNIST test accuracy (10,000 images, mnist_normalize'd)", evaluate, calibration


def load_ccexam_mnist_cnn() -> DigitCNN:
    """ccexam's pretrained MNIST CNN in eval mode; feed it ``mnist_normalize(images)`` (99.05% test).

    Only the state dict is read (``weights_only``), into prunekit's own :class:`~prunekit.models.nets.DigitCNN`;
    raises CheckpointError when the file is corrupt or its weights do not fit.
    """
    path = source_path("ccexam", CCEXAM_WEIGHTS)
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises various errors on corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load weights: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = DigitCNN()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit DigitCNN: {exc}") from exc
    return model.eval()
