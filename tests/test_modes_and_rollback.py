"""Each module keeps its own train/eval flag through pruning, and a call that fails after the method ran (while
the pruned model is measured) still gives the model back as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.calls import eval_mode, restore_modes, training_modes


def _frozen_bn_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)
    )
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    return model


def _calibration() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(2)]


def test_eval_mode_gives_every_module_its_flag_back_also_on_error():
    model = _frozen_bn_model()
    before = [m.training for m in model.modules()]
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            raise RuntimeError("inside")
    assert [m.training for m in model.modules()] == before
    modes = training_modes(model)
    model.train()
    assert model[1].training
    restore_modes(modes)
    assert [m.training for m in model.modules()] == before


@pytest.mark.parametrize("method", ["snip", "wanda", "sparsegpt", "taylor", "magnitude"])
def test_pruning_keeps_each_modules_train_eval_flag(method):
    model = _frozen_bn_model()
    before = {name: m.training for name, m in model.named_modules()}
    pk.prune(model, method, sparsity=0.5, calibration=_calibration(), measure=False, prune_classifier=True)
    after = {name: m.training for name, m in model.named_modules()}
    # mask parametrizations add modules; every module that was there keeps its flag
    assert {name: after[name] for name in before} == before
    assert model.training and not model[1].training


def test_a_failed_language_model_prune_restores_weights_and_modes():
    pytest.importorskip("transformers")
    from unit_models import tiny_llama

    model = tiny_llama()
    model.train()
    model.model.layers[0].mlp.eval()  # one submodule in its own mode
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def fail(*_args):
        raise RuntimeError("the second decoder layer failed")

    handle = model.model.layers[1].register_forward_pre_hook(fail)
    calibration = [torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(s)) for s in range(2)]
    with pytest.raises(RuntimeError, match="second decoder layer"):
        pk.prune(model, "wanda", sparsity=0.5, calibration=calibration, progress=False)
    handle.remove()
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


class _FailsWhenPruned(nn.Linear):
    """Runs while its weight holds no zero; the forward of the pruned layer raises."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((self.weight == 0).any()):
            raise RuntimeError("this layer cannot run pruned")
        return super().forward(x)


def test_an_error_while_measuring_the_pruned_model_gives_the_model_back():
    torch.manual_seed(0)
    model = nn.Sequential(_FailsWhenPruned(8, 16), nn.ReLU(), nn.Linear(16, 4))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.PrunekitError):
        pk.prune(model, "magnitude", sparsity=0.5, example_inputs=torch.randn(2, 8))
    assert set(model.state_dict()) == set(state)  # no mask left behind
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(hasattr(m, "parametrizations") for m in model.modules())
