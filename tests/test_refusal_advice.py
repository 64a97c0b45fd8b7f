"""Every refusal that gives advice is followed here, and the advice must work.

Each case triggers a :class:`PrunekitError` whose message says what to pass or use, checks that the model is
bit-identical after the refusal, then does exactly what the message says and checks that it succeeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
import prunekit.train.methods  # noqa: F401  (registers the training methods)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CumMax(nn.Module):
    """An operation the tracer has no rule for (a running maximum over the channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cummax(x, dim=-1).values


class Odd(nn.Module):
    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.odd = CumMax()
        self.b = nn.Linear(16, 12)
        self.c = nn.Linear(12, 3)
        self.functional = functional

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = torch.cummax(h, dim=-1).values if self.functional else self.odd(h)
        return self.c(torch.relu(self.b(h)))


class MLP(nn.Module):
    def __init__(self, d_in: int = 8) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class KwargModel(nn.Module):
    """Takes keyword inputs and returns plain logits (no ``.loss``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = MLP()

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(x)


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.fc = nn.Linear(16, 12)
        self.head = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(torch.relu(self.proj(x)))
        return self.head(torch.relu(self.fc(h[:, -1])))


X = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 0])
SEQ = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(1))


def _rnn_veto(model: nn.Module) -> None:
    """Surgery that would leave the LSTM's gates and recurrent weights at different sizes."""
    from prunekit.surgery.remove import remove_

    remove_(model, {"lstm.weight_hh_l0": {1: [0]}})


@dataclass
class Case:
    name: str
    build: Callable[[], nn.Module]
    refuse: Callable[[nn.Module], object]
    error: type[pk.PrunekitError]
    advice: str  # the advice, as the message words it
    follow: Callable[[nn.Module], object]
    check: Callable[[nn.Module], bool] = lambda m: True


def _prune(method: str, **kw: object) -> Callable[[nn.Module], object]:
    kw.setdefault("measure_latency", False)
    return lambda m: pk.prune(m, method, **kw)


CASES = [
    Case(
        "unknown op in a submodule: ignore= it",
        Odd,
        _prune("l2-channel", sparsity=0.5, example_inputs=X),
        pk.UnsupportedModuleError,
        "pass ignore=['odd'] to keep this module whole",
        _prune("l2-channel", sparsity=0.5, example_inputs=X, ignore=["odd"]),
        lambda m: m.a.out_features == 16 and m.b.out_features == 6,
    ),
    Case(
        "unknown op in a submodule: strict=False",
        Odd,
        _prune("l2-channel", sparsity=0.5, example_inputs=X),
        pk.UnsupportedModuleError,
        "or strict=False to keep only the channels it touches",
        _prune("l2-channel", sparsity=0.5, example_inputs=X, strict=False),
        lambda m: m.a.out_features == 16 and m.b.out_features == 6,
    ),
    Case(
        "unknown op in the model's own forward: strict=False",
        lambda: Odd(functional=True),
        _prune("l2-channel", sparsity=0.5, example_inputs=X),
        pk.UnsupportedModuleError,
        "no submodule to ignore): pass strict=False",
        _prune("l2-channel", sparsity=0.5, example_inputs=X, strict=False),
        lambda m: m.b.out_features == 6,
    ),
    Case(
        "recurrent layer that cannot take the change: ignore= it",
        LSTMNet,
        _rnn_veto,
        pk.UnsupportedModuleError,
        "Pass ignore=['lstm'] to keep it whole",
        _prune("l2-channel", sparsity=0.5, example_inputs=SEQ, ignore=["lstm"]),
        lambda m: m.lstm.hidden_size == 16 and m.fc.out_features == 6,
    ),
    Case(
        "N:M on a layer it does not divide: ignore= it",
        lambda: MLP(d_in=6),
        _prune("magnitude", sparsity=0.5, pattern="2:4"),
        pk.PatternError,
        "Add it to ignore=[...]",
        _prune("magnitude", sparsity=0.5, pattern="2:4", ignore=["fc1"]),
        lambda m: (m.fc2.weight == 0).float().mean().item() == 0.5,
    ),
    Case(
        "N:M on a layer it does not divide: skip_incompatible",
        lambda: MLP(d_in=6),
        _prune("magnitude", sparsity=0.5, pattern="2:4"),
        pk.PatternError,
        "pass skip_incompatible=True",
        _prune("magnitude", sparsity=0.5, pattern="2:4", skip_incompatible=True),
        lambda m: (m.fc2.weight == 0).float().mean().item() == 0.5,
    ),
    Case(
        "N:M with another sparsity: pass sparsity=",
        MLP,
        _prune("magnitude", sparsity=0.3, pattern="2:4"),
        pk.InvalidSparsityError,
        "pass sparsity=0.5",
        _prune("magnitude", sparsity=0.5, pattern="2:4"),
    ),
    Case(
        "N:M whose sparsity has no short decimal (2:3 fixes 1/3): the printed figure is accepted back",
        lambda: nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3)),
        _prune("magnitude", sparsity=0.3, pattern="2:3"),
        pk.InvalidSparsityError,
        "pass sparsity=0.333333",
        _prune("magnitude", sparsity=0.333333, pattern="2:3"),
        lambda m: float((m[2].weight == 0).float().mean()) == pytest.approx(1 / 3),
    ),
    Case(
        "N:M with a non-uniform allocation: use uniform",
        MLP,
        _prune("magnitude", sparsity=0.5, pattern="2:4", allocation="global"),
        pk.ConfigError,
        "allocation must be 'uniform'",
        _prune("magnitude", sparsity=0.5, pattern="2:4", allocation="uniform"),
    ),
    Case(
        "one-layer model: prune_classifier=True",
        lambda: nn.Sequential(nn.Linear(8, 4)),
        _prune("magnitude", sparsity=0.5),
        pk.NothingToPruneError,
        "pass prune_classifier=True",
        _prune("magnitude", sparsity=0.5, prune_classifier=True),
        lambda m: (m[0].weight == 0).float().mean().item() == 0.5,
    ),
    Case(
        "gradient method without data: pass calibration= batches",
        MLP,
        _prune("snip", sparsity=0.5),
        pk.MissingDataError,
        "pass calibration=batches",
        _prune("snip", sparsity=0.5, calibration=[(X, Y)]),
    ),
    Case(
        "gradient method without data: pass calibration= a loss",
        MLP,
        _prune("snip", sparsity=0.5),
        pk.MissingDataError,
        "calibration=loss_fn",
        _prune("snip", sparsity=0.5, calibration=lambda m: nn.functional.cross_entropy(m(X), Y)),
    ),
    Case(
        "structural without inputs: pass example_inputs=",
        MLP,
        _prune("l2-channel", sparsity=0.5),
        pk.DataError,
        "pass example_inputs=",
        _prune("l2-channel", sparsity=0.5, example_inputs=X),
        lambda m: m.fc1.out_features == 8,
    ),
    Case(
        "dict batches without .loss: pass loss_fn=",
        KwargModel,
        _prune("taylor-channel", sparsity=0.5, example_inputs={"x": X}, calibration=[{"x": X, "labels": Y}]),
        pk.DataError,
        "or pass loss_fn=",
        _prune(
            "taylor-channel",
            sparsity=0.5,
            example_inputs={"x": X},
            calibration=[{"x": X, "labels": Y}],
            loss_fn=lambda out, batch: nn.functional.cross_entropy(out, batch["labels"]),
        ),
        lambda m: m.net.fc1.out_features == 8,
    ),
    Case(
        "synflow without inputs: pass example_inputs=",
        MLP,
        _prune("synflow", sparsity=0.5, rounds=2),
        pk.MissingDataError,
        "pass example_inputs=",
        _prune("synflow", sparsity=0.5, rounds=2, example_inputs=X),
    ),
    Case(
        "synflow with a pattern: use pattern=None",
        MLP,
        _prune("synflow", sparsity=0.5, pattern="4x4", rounds=2, example_inputs=X),
        pk.ConfigError,
        "use pattern=None",
        _prune("synflow", sparsity=0.5, pattern=None, rounds=2, example_inputs=X),
    ),
    Case(
        "grasp with a pattern: use pattern=None",
        MLP,
        _prune("grasp", sparsity=0.5, pattern="4x4", calibration=[(X, Y)]),
        pk.ConfigError,
        "use pattern=None",
        _prune("grasp", sparsity=0.5, pattern=None, calibration=[(X, Y)]),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_refusal_advice_works(case: Case) -> None:
    torch.manual_seed(0)
    model = case.build().eval()
    before = _state(model)
    with pytest.raises(case.error) as info:
        case.refuse(model)
    assert case.advice in str(info.value)
    assert _same(before, _state(model))
    case.follow(model)  # the advice, followed: no error
    assert case.check(model)


def test_head_criterion_advice_works() -> None:
    transformers = pytest.importorskip("transformers")
    from prunekit.criteria import CriterionLevelError
    from prunekit.surgery import apply_head_plan_, plan_heads

    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
        vocab_size=50,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    with pytest.raises(pk.UnknownNameError, match="valid criterion names are: .*l2.*magnitude.*random.*taylor"):
        plan_heads(model, 0.5, criterion="entropy")
    with pytest.raises(CriterionLevelError, match="Criteria for attention heads: .*magnitude"):
        plan_heads(model, 0.5, criterion="influence")  # a layer criterion: the message lists those for heads
    for crit in ("l1", "l2", "random", "magnitude", "fpgm"):
        assert sum(len(r) for r in plan_heads(model, 0.5, criterion=crit).remove) == 1
    apply_head_plan_(model, plan_heads(model, 0.5, criterion="l1"))
    assert model.config.num_key_value_heads == 1


def test_training_method_advice_works() -> None:
    from prunekit.train import TrainConfig, Trainer

    model = MLP()
    with pytest.raises(
        pk.ConfigError, match=r"use prunekit.train.Trainer\(model, train_data, method='gmp', sparsity=0.5\)"
    ):
        pk.prune(model, "gmp", sparsity=0.5, measure=False)
    Trainer(model, (X, Y), config=TrainConfig(epochs=1, batch_size=4, progress=False), method="gmp", sparsity=0.5).fit()


def test_load_model_advice_works(tmp_path) -> None:  # noqa: ANN001
    model = LSTMNet().eval()
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=SEQ, measure_latency=False)
    pk.save_model(model, tmp_path / "m")
    with pytest.raises(pk.CheckpointError, match=r"pass the architecture: load_model\(dir, model=MyNet\(\)\)"):
        pk.load_model(tmp_path / "m")
    again = pk.load_model(tmp_path / "m", model=LSTMNet())
    assert again.lstm.hidden_size == model.lstm.hidden_size == 8
    with torch.no_grad():
        torch.testing.assert_close(again(SEQ), model(SEQ))
