"""prunekit.models: the network classes (shapes, sizes, state-dict keys) and the prunekit:NAME registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit import datasets
from prunekit.models import MODELS, build_model, input_shape_of, is_pretrained, source_of, task_evaluation
from prunekit.models.nets import MLP, BasicBlock, DigitCNN, LeNet5, LeNet300100, SmallCNN, SmallResNet, TinyCNN


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "make,inputs,outputs",
    [
        (DigitCNN, (3, 1, 28, 28), (3, 10)),
        (lambda: DigitCNN(num_classes=5, input_size=32, in_channels=3), (2, 3, 32, 32), (2, 5)),
        (LeNet300100, (2, 1, 28, 28), (2, 10)),
        (LeNet5, (2, 1, 28, 28), (2, 10)),
        (SmallResNet, (2, 1, 28, 28), (2, 10)),
        (lambda: BasicBlock(4, 8, stride=2), (2, 4, 28, 28), (2, 8, 14, 14)),
        (lambda: MLP(784, (256, 128), 10), (2, 1, 28, 28), (2, 10)),
        (lambda: SmallCNN(1, 10), (2, 1, 28, 28), (2, 10)),
        (TinyCNN, (4, 4, 8, 8), (4, 3)),
    ],
)
def test_shapes_as_documented(make, inputs: tuple[int, ...], outputs: tuple[int, ...]) -> None:
    model = make().eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(*inputs)).shape) == outputs


def test_parameter_counts_by_hand() -> None:
    assert _params(LeNet300100()) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10  # 266,610
    assert _params(LeNet5()) == (6 * 25 + 6) + (16 * 6 * 25 + 16) + (400 * 120 + 120) + (120 * 84 + 84) + (84 * 10 + 10)
    assert _params(DigitCNN()) == (32 * 9 + 32) + (64 * 32 * 9 + 64) + (3136 * 128 + 128) + (128 * 10 + 10)  # 421,642
    assert _params(MLP(64, (8,), 3)) == 64 * 8 + 8 + 8 * 3 + 3


def test_digit_cnn_has_ccexams_state_dict_keys() -> None:
    model = DigitCNN()
    keys = [k for k in model.state_dict() if k.endswith("weight")]
    assert keys == ["features.0.weight", "features.3.weight", "classifier.0.weight", "classifier.2.weight"]
    assert model.classifier[0].in_features == 3136


def test_residual_blocks() -> None:
    assert isinstance(BasicBlock(8, 8).shortcut, nn.Identity)
    assert isinstance(BasicBlock(8, 16).shortcut, nn.Sequential)
    resnet = SmallResNet(blocks=2)
    assert sum(isinstance(m, BasicBlock) for m in resnet.modules()) == 6
    # the composability contract counts TinyCNN's removable blocks by their class name
    assert sum(type(m).__name__ == "_Block" for m in TinyCNN().modules()) == 2


def test_registry_builds_every_prunekit_model() -> None:
    assert {"mnist-cnn", "lenet-300-100", "lenet5", "resnet-small"} <= set(MODELS.names())
    for name, cls in (
        ("lenet-300-100", LeNet300100),
        ("lenet5", LeNet5),
        ("resnet-small", SmallResNet),
        ("mnist-cnn", DigitCNN),
    ):
        model = build_model(f"prunekit:{name}", pretrained=False)
        assert type(model) is cls
        assert source_of(model) == f"prunekit:{name}" and is_pretrained(model) is False


def test_every_built_model_carries_an_input_shape_it_runs_on() -> None:
    for name in MODELS.names():
        model = build_model(f"prunekit:{name}", pretrained=False).eval()
        shape = input_shape_of(model)
        assert shape is not None and shape[0] == 1, name
        with torch.no_grad():
            assert model(torch.randn(*shape)).shape == (1, 10), name
    assert input_shape_of(build_model("prunekit:lenet-300-100")) == (1, 1, 28, 28)
    assert input_shape_of(LeNet300100(in_features=20)) == (1, 20)
    assert input_shape_of(DigitCNN(input_size=32, in_channels=3)) == (1, 3, 32, 32)
    assert input_shape_of(build_model("torchvision:resnet18", pretrained=False)) == (1, 3, 224, 224)
    assert input_shape_of(nn.Linear(3, 4)) is None  # nothing is guessed


def test_mnist_cnn_task_evaluation_is_the_pretrained_accuracy() -> None:
    if not (datasets.is_installed("mnist") and datasets.is_installed("ccexam")):
        pytest.skip("needs the mnist and ccexam sources: prunekit data install mnist ccexam")
    description, evaluate, calibration = task_evaluation("prunekit:mnist-cnn")
    model = build_model("prunekit:mnist-cnn")
    assert is_pretrained(model) and "MNIST test" in description
    assert evaluate(model) == 0.9905  # ccexam's published 99.05%: 9,905 of 10,000 test images
    batches = calibration(2, 0)
    assert [tuple(x.shape) for x, _ in batches] == [(64, 1, 28, 28)] * 2
    assert task_evaluation("prunekit:lenet5") is None


def test_timm_models_build_prune_save_and_reload(tmp_path) -> None:
    pytest.importorskip("timm")
    import prunekit as pk
    from prunekit.errors import UnknownNameError

    model = build_model("timm:test_vit").eval()  # no hub here: random init, said so
    assert source_of(model) == "timm:test_vit" and is_pretrained(model) is False
    shape = input_shape_of(model)
    assert shape == (1, *model.pretrained_cfg["input_size"])
    x = torch.randn(*shape)
    before = sum(p.numel() for p in model.parameters())
    pk.prune(model, "l1-channel", sparsity=0.3, example_inputs=x, measure=False)
    assert sum(p.numel() for p in model.parameters()) < before  # channels physically removed
    with torch.no_grad():
        out = model(x)
    pk.save_model(model, tmp_path / "vit")
    again = build_model(str(tmp_path / "vit"))  # rebuilt from the recorded timm:test_vit, then reshaped
    with torch.no_grad():
        assert torch.equal(again(x), out)
    with pytest.raises(UnknownNameError, match="timm model"):
        build_model("timm:no_such_model")
