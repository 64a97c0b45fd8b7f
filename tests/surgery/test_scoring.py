"""Tests of :mod:`prunekit.surgery.scoring`: physical channels, heads and layers scored by the one criterion
interface (prunekit.criteria), by hand and end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from unit_models import IDS, IMG_BATCHES, TOKENS, X_IMG, tiny_cnn, tiny_llama

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.criteria import CRITERIA, CriterionLevelError, criteria_for, resolve_criterion
from prunekit.surgery import UnitScorer, UnitSet, plan_channels, plan_layers

transformers = pytest.importorskip("transformers")


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_identical(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        assert after[k].shape == v.shape and torch.equal(after[k], v), k


# ----------------------------------------------------------------------------------- unit scores by hand


def _rows(values: list[list[float]]) -> nn.Linear:
    """A bias-free Linear whose output rows are the units."""
    lin = nn.Linear(len(values[0]), len(values), bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(values))
    return lin


def _unit_scores(model: nn.Module, criterion: str, **kw) -> np.ndarray:  # noqa: ANN003
    n = model.weight.shape[0]
    units = UnitSet("w", n, [("weight", 0, np.arange(n))])
    return UnitScorer(model, resolve_criterion(criterion), **kw).score([units])[0].scores


def test_criteria_by_hand() -> None:
    lin = _rows([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]])
    np.testing.assert_allclose(_unit_scores(lin, "l1"), [3, 1, 2])  # mean |w| of each unit
    np.testing.assert_allclose(_unit_scores(lin, "l2"), [9, 1, 4])  # mean w^2: the L2 order
    lamp = _unit_scores(lin, "lamp")
    assert np.argsort(lamp).tolist() == [1, 2, 0] and lamp[0] == pytest.approx(1.0)
    for name in criteria_for("channel"):
        if resolve_criterion(name).needs:
            with pytest.raises(pk.MissingDataError):
                _unit_scores(lin, name)
        else:
            assert _unit_scores(lin, name).shape == (3,)


def _with_gradient(w: torch.Tensor, g: torch.Tensor) -> tuple[nn.Linear, object]:
    """A Linear with weight ``w`` and a calibration loss whose gradient for that weight is exactly ``g``."""
    lin = _rows(w.tolist())
    return lin, lambda m: (m.weight * g).sum()


def test_taylor_is_the_squared_sum_of_gradient_times_weight_over_the_unit() -> None:
    lin, loss = _with_gradient(
        torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]), torch.tensor([[1.0, 1.0], [1.0, 3.0], [-2.0, 2.0]])
    )
    # (1 + 2)^2, (3 - 3)^2, (-1 + 1)^2: signed sums, so opposite contributions cancel
    np.testing.assert_allclose(_unit_scores(lin, "taylor", calibration=loss), [9.0, 0.0, 0.0])


def test_obd_is_half_the_fisher_diagonal_times_squared_weights() -> None:
    lin, loss = _with_gradient(
        torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]), torch.tensor([[1.0, 1.0], [1.0, 3.0], [-2.0, 2.0]])
    )
    # h_ii ~ sum of g^2 over the batches (here one); per unit the mean over its 2 weights:
    # 0.5 * (1*1 + 1*4) / 2, 0.5 * (1*9 + 9*1) / 2, 0.5 * (4*.25 + 4*.25) / 2
    np.testing.assert_allclose(_unit_scores(lin, "hessian", calibration=loss), [1.25, 4.5, 0.5])


# ------------------------------------------------------------------------------------------ FPGM vs L2


def _fpgm_case() -> nn.Module:
    """Four 1x1 filters over two inputs: A = (10, 0), B = (10, 1), C = (10, -1), D = (0, 1).

    L2: D has the smallest norm (1). FPGM (He et al. 2019) sums each filter's distances to the others:
    A: 1 + 1 + sqrt(101) = 12.05, B: 1 + 2 + 10 = 13, C: 1 + 2 + sqrt(104) = 13.20, D: 30.25; A lies at the
    geometric median of the cluster, so FPGM removes A, which L2 keeps. The consumer's input columns are all
    ones: equal for every unit, they change no L2 order, and FPGM (row-native) does not read them."""
    conv = nn.Conv2d(2, 4, 1, bias=False)
    out = nn.Conv2d(4, 1, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[10.0, 0], [10, 1], [10, -1], [0, 1]]).reshape(4, 2, 1, 1))
        out.weight.fill_(1.0)
    return nn.Sequential(conv, nn.ReLU(), out).eval()


X_FPGM = torch.rand(1, 2, 4, 4)
FPGM_SUMS = [2 + math.sqrt(101), 13.0, 3 + math.sqrt(104), math.sqrt(101) + 10 + math.sqrt(104)]


def test_fpgm_removes_the_filter_at_the_geometric_median_where_l2_removes_the_smallest() -> None:
    plan = plan_channels(_fpgm_case(), X_FPGM, 0.25, criterion="fpgm")
    np.testing.assert_allclose(plan.scores[0], FPGM_SUMS, rtol=1e-6)
    assert plan.remove[0].tolist() == [0]
    assert plan_channels(_fpgm_case(), X_FPGM, 0.25, criterion="l2").remove[0].tolist() == [3]
    kept = {}
    for method in ("fpgm-channel", "l2-channel"):
        model = _fpgm_case()
        pk.prune(model, method, sparsity=0.25, example_inputs=X_FPGM, measure=False)
        kept[method] = model[0].weight.reshape(3, 2).tolist()
    assert kept["fpgm-channel"] == [[10, 1], [10, -1], [0, 1]]  # A removed
    assert kept["l2-channel"] == [[10, 0], [10, 1], [10, -1]]  # D removed


# ---------------------------------------------------------------------------------------- Taylor vs SNIP


def _taylor_case() -> tuple[nn.Module, object]:
    """Rows (1, 2) and (3, -1) with gradients (1, 1) and (1, 3): Taylor (Molchanov et al. 2019) scores a unit
    by the square of its signed sum of g * w, (1 + 2)^2 = 9 and (3 - 3)^2 = 0; grad-weight (SNIP) by the
    mean |g * w|, 1.5 and 3. The consumer's gradient is zero (the loss does not read it)."""
    first, second = nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        second.weight.fill_(1.0)
    g = torch.tensor([[1.0, 1.0], [1.0, 3.0]])
    return nn.Sequential(first, second).eval(), lambda m: (m[0].weight * g).sum()


def test_taylor_cancels_within_a_unit_where_grad_weight_does_not() -> None:
    kept = {}
    for crit in ("taylor", "grad-weight"):
        model, loss = _taylor_case()
        pk.prune(
            model,
            "taylor-channel",
            criterion=crit,
            sparsity=0.5,
            example_inputs=torch.randn(1, 2),
            calibration=loss,
            measure=False,
        )
        kept[crit] = model[0].weight.tolist()
    assert kept["taylor"] == [[1.0, 2.0]]  # (3 - 3)^2 = 0: the second row goes
    assert kept["grad-weight"] == [[3.0, -1.0]]  # mean |g w| 1.5 < 3: the first row goes


# ------------------------------------------------------------------------------------------- every level


def _kwargs(crit: str, inputs: object, calibration: object) -> dict:
    return {"criterion": crit, "sparsity": 0.5, "example_inputs": inputs, "calibration": calibration, "measure": False}


def test_every_channel_criterion_removes_channels() -> None:
    names = criteria_for("channel")
    assert len(names) >= 16 and {"fpgm", "apoz", "bn-scale", "wanda", "sparsegpt", "synflow", "grasp"} <= set(names)
    for crit in names:
        model = tiny_cnn()
        pk.prune(model, "l2-channel", **_kwargs(crit, X_IMG, IMG_BATCHES))
        assert (model.conv1.out_channels, model.conv2.out_channels, model.fc.in_features) == (4, 4, 4), crit
        assert model(X_IMG).shape == (4, 4)


def test_every_head_criterion_removes_heads() -> None:
    names = criteria_for("head")
    assert len(names) >= 8 and "fpgm" in names and "taylor" in names and "influence" not in names
    for crit in names:
        model = tiny_llama()
        pk.prune(model, "head", **_kwargs(crit, {"input_ids": IDS}, TOKENS))
        attn = model.model.layers[0].self_attn
        shapes = (attn.k_proj.out_features, attn.q_proj.out_features, model.config.num_key_value_heads)
        assert shapes == (8, 16, 1), crit
        assert model(input_ids=IDS).logits.shape == (2, 8, 50)


def test_every_layer_criterion_removes_layers() -> None:
    names = criteria_for("layer")
    assert len(names) >= 8 and {"influence", "fpgm", "taylor", "magnitude"} <= set(names)
    for crit in names:
        model = tiny_llama(layers=4)
        pk.prune(model, "layer", **_kwargs(crit, {"input_ids": IDS}, TOKENS))
        assert len(model.model.layers) == 2 and model.config.num_hidden_layers == 2, crit
        assert model(input_ids=IDS).logits.shape == (2, 8, 50)


@pytest.mark.parametrize(
    "method,inputs,refused",
    [
        ("l2-channel", X_IMG, ["influence"]),
        ("head", {"input_ids": IDS}, ["influence", "apoz", "bn-scale"]),
        ("layer", {"input_ids": IDS}, ["apoz", "bn-scale"]),
    ],
)
def test_criteria_without_a_meaning_at_a_level_are_refused(method: str, inputs: object, refused: list[str]) -> None:
    model = tiny_cnn() if method == "l2-channel" else tiny_llama(layers=4)
    before = _state(model)
    level = {"l2-channel": "channel", "head": "head", "layer": "layer"}[method]
    assert set(refused) == {n for n in CRITERIA.names() if level not in resolve_criterion(n).levels} & set(
        criteria_for("channel") + criteria_for("head") + criteria_for("layer")
    )
    for crit in refused:
        with pytest.raises(CriterionLevelError) as info:
            pk.prune(model, method, sparsity=0.5, example_inputs=inputs, criterion=crit, measure=False)
        assert isinstance(info.value, pk.PrunekitError) and "magnitude" in str(info.value)  # lists what works
        _assert_identical(model, before)
    with pytest.raises(pk.UnknownNameError, match="valid criterion names are: .*magnitude"):
        pk.prune(model, method, sparsity=0.5, example_inputs=inputs, criterion="entropy", measure=False)
    _assert_identical(model, before)


def test_bn_scale_keeps_groups_without_a_norm_layer_whole_and_says_so() -> None:
    model = tiny_cnn(bn2=False)
    report = pk.prune(model, "bn-scale-channel", sparsity=0.5, example_inputs=X_IMG, measure=False)
    assert model.conv1.out_channels == 4 and model.conv2.out_channels == 8  # no fallback to another criterion
    assert any("kept whole" in n and "bn-scale" in n and "normalisation" in n for n in report.notes)
    gammas = tiny_cnn(bn2=False).bn1.weight.detach()
    assert torch.equal(model.bn1.weight.detach(), gammas[gammas.argsort()[4:].sort().values])  # the largest |gamma|


# ----------------------------------------------------------------------------------------- whole blocks


def test_layer_fpgm_compares_whole_blocks() -> None:
    """Blocks 0, 1, 2 are copies of one block; block 3 differs: the copies sit at the geometric median
    (FPGM removes them first), while magnitude removes the block with the smallest weights."""
    model = tiny_llama(layers=4)
    with torch.no_grad():
        for i in (1, 2):
            for p, q in zip(model.model.layers[i].parameters(), model.model.layers[0].parameters()):
                p.copy_(q)
        for p in model.model.layers[3].parameters():
            p.mul_(0.5)
    ids = {"input_ids": IDS}
    fpgm = plan_layers(model, ids, 0.5, criterion="fpgm")
    assert fpgm.scores["model.layers.0"] == pytest.approx(fpgm.scores["model.layers.1"])
    assert set(fpgm.remove) <= {"model.layers.0", "model.layers.1", "model.layers.2"} and len(fpgm.remove) == 2
    assert "model.layers.3" in plan_layers(model, ids, 0.25, criterion="magnitude").remove


def test_taylor_unit_score_is_the_squared_gradient_of_a_gate_on_the_unit_bias_included() -> None:
    """Molchanov et al. 2019: a unit's first-order Taylor score is ``(dL/dc)^2`` for a gate ``c`` (= 1) on its
    output, i.e. the squared sum of ``g * w`` over every parameter of the unit, its bias included. Through a
    ReLU the gate on the pre-activation equals the gate on the consumer's input, so the coupled group's sum
    (producer row + bias + consumer column) is twice the gate's gradient: the scores are ``4 (dL/dc)^2``."""
    from prunekit.surgery import UnitScorer, UnitSet

    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        model[0].bias.uniform_(-1, 1)  # biases that matter
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    gate = torch.ones(5, requires_grad=True)
    loss = nn.functional.cross_entropy(model[2](torch.relu(model[0](x) * gate)), y)
    (g_gate,) = torch.autograd.grad(loss, gate)
    labels = np.arange(5)
    units = UnitSet("hidden", 5, [("0.weight", 0, labels), ("0.bias", 0, labels), ("2.weight", 1, labels)])
    got = UnitScorer(model, resolve_criterion("taylor"), calibration=[(x, y)]).score([units])[0].scores
    assert np.allclose(got, 4 * g_gate.double().square().numpy(), rtol=1e-4, atol=1e-12)
    no_bias = UnitSet("hidden", 5, [("0.weight", 0, labels), ("2.weight", 1, labels)])
    partial = UnitScorer(model, resolve_criterion("taylor"), calibration=[(x, y)]).score([no_bias])[0].scores
    assert not np.allclose(partial, got, rtol=1e-3)  # the bias term is what makes the sum the gate's gradient
