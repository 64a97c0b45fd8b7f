"""Composing the parts: any registered criterion with any granularity and allocation, through pk.Pruner,
pk.prune(model, pruner) and the named methods; refusals name what works."""

from __future__ import annotations


import pytest
import torch
from conftest import SmallCNN, ThreeLayer, assert_unchanged, snapshot
from torch import nn

import prunekit as pk
from prunekit.methods.base import register_physical_composer
from prunekit.methods.physical import physical_method as structural_physical_method
from prunekit.criteria import BUILTIN, CRITERIA, CriterionLevelError


def _linear_stack() -> nn.Sequential:
    return nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 2, bias=False))


# ---- granularity: units from contributions ------------------------------------------------------------


def test_unit_sums_and_sizes_hand_computed():
    c = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, 0.5]])
    sums, sizes = pk.Channel().unit_sums(c)
    assert sums.tolist() == [2.0, 1.5] and sizes.tolist() == [3, 3]
    sums, sizes = pk.Block(2, 2).unit_sums(c)  # tiles [[1, -2], [.5, .5]] and the edge tile [[3], [.5]]
    assert sums.tolist() == [0.0, 3.5] and sizes.tolist() == [4, 2]
    sums, sizes = pk.Unstructured().unit_sums(c)
    assert sums.tolist() == c.reshape(-1).tolist() and sizes.tolist() == [1] * 6
    # units() stays the mean of element scores
    assert pk.Channel().units(c.abs())[0].tolist() == pytest.approx([2.0, 0.5])


def test_physical_granularities_parse_and_make_no_masks():
    assert pk.parse_pattern("head") == pk.Head()
    assert pk.parse_pattern("layer") == pk.Layer()
    assert pk.parse_pattern("embedding") == pk.Embedding()
    assert pk.parse_pattern("physical-channel") == pk.Channel(physical=True)
    assert pk.parse_pattern("channel") == pk.Channel() and not pk.Channel().physical
    assert str(pk.Channel(physical=True)) == "physical-channel"
    assert all(g.physical for g in (pk.Head(), pk.Layer(), pk.Embedding(), pk.Channel(physical=True)))
    with pytest.raises(pk.PatternError, match="physical"):
        pk.Channel(physical=True).mask(torch.rand(4, 3), 0.5)
    with pytest.raises(pk.UnknownNameError, match="physical-channel"):
        pk.parse_pattern("heads!")


# ---- Pruner: criterion units, levels ------------------------------------------------------------------


def test_taylor_channel_score_is_the_squared_signed_sum():
    model = _linear_stack()
    G = torch.tensor([[2.0, -2.0, 0.5], [0.5, 0.5, 0.5], [0.9, 0.0, 0.0]])
    with torch.no_grad():
        model[0].weight.fill_(1.0)
    loss = lambda m: (m[0].weight * G).sum()  # noqa: E731  (dL/dW = G)
    # (sum g w)^2 per row: 0.25, 2.25, 0.81 -> row 0 goes; mean |g w| would drop row 2 (0.3 < 1.5)
    plan = pk.Pruner("taylor", "channel").plan(model, sparsity=1 / 3, calibration=loss)
    assert pk.Channel().units(plan.layers[0].mask.float())[0].tolist() == [0.0, 1.0, 1.0]
    plan = pk.Pruner("grad-weight", "channel").plan(model, sparsity=1 / 3, calibration=loss)
    assert pk.Channel().units(plan.layers[0].mask.float())[0].tolist() == [1.0, 1.0, 0.0]


def test_lamp_normalises_units_within_each_layer():
    model = nn.Sequential(nn.Linear(2, 4, bias=False), nn.Linear(2, 4, bias=False), nn.Linear(4, 1))
    with torch.no_grad():
        rows = torch.tensor([1.0, 2.0, 3.0, 4.0]).sqrt()[:, None].expand(4, 2)
        model[0].weight.copy_(rows * 1e-2)  # tiny layer
        model[1].weight.copy_(rows)
    kept = lambda p: [int(lp.mask.all(1).sum()) for lp in p.layers]  # noqa: E731
    # LAMP unit scores are 1/10, 2/9, 3/7, 1 in both layers: a global threshold takes two rows from each
    assert kept(pk.Pruner("lamp", "channel", "global").plan(model, sparsity=0.5)) == [2, 2]
    # plain L2 takes the tiny layer's rows first
    assert kept(pk.Pruner("l2", "channel", "global").plan(model, sparsity=0.5))[0] < 2


def test_criterion_levels_are_checked_for_the_granularity():
    with pytest.raises(CriterionLevelError, match="channel") as info:
        pk.Pruner("fpgm", "unstructured")
    assert isinstance(info.value, pk.PrunekitError) and "magnitude" in str(info.value)
    with pytest.raises(CriterionLevelError):
        pk.Pruner("apoz", "2:4")
    with pytest.raises(CriterionLevelError):
        pk.Pruner("influence", "channel")
    with pytest.raises(CriterionLevelError, match="head"):
        pk.Pruner("apoz", pk.Head())
    pk.Pruner("fpgm", pk.Channel())  # channels: fine
    pk.Pruner("influence", pk.Layer())


def test_physical_pruner_is_not_a_mask_plan():
    with pytest.raises(pk.ConfigError, match="prunekit.prune"):
        pk.Pruner("l2", "physical-channel").plan(SmallCNN(), sparsity=0.5)


def test_channel_repruning_takes_dead_rows_first():
    model = SmallCNN()
    pk.prune(model, pk.Pruner("random", "channel"), sparsity=0.25, measure=False, seed=1)
    first = {n: pk.get_mask(m).clone() for n, m in model.named_children() if pk.get_mask(m) is not None}
    assert sorted(first) == ["conv1", "conv2", "fc"]
    pk.prune(model, pk.Pruner("random", "channel"), sparsity=0.5, measure=False, seed=2)
    for name in first:
        m = getattr(model, name)
        mask = pk.get_mask(m)
        assert not (mask & ~first[name]).any()  # only shrinks
        rows = mask.reshape(mask.shape[0], -1).all(1)
        assert int((~rows).sum()) == round(0.5 * mask.shape[0]), name  # the earlier rows count towards the target


# ---- prune(model, pruner) -----------------------------------------------------------------------------


def test_prune_accepts_a_pruner_with_report_and_transaction():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(4, 4, 6, 6)
    calib = [(x, torch.tensor([0, 1, 2, 0]))]
    report = pk.prune(model, pk.Pruner(criterion="taylor", granularity="channel", allocation="global"),
                      sparsity=0.5, calibration=calib, example_inputs=x, measure_latency=False)
    assert report.settings["criterion"] == "taylor" and report.settings["pattern"] == "channel"
    assert report.settings["allocation"].startswith("global")
    assert report.sparsity == pytest.approx(0.5, abs=0.05)
    # a refusal leaves the model bit-identical
    model = SmallCNN()
    before = snapshot(model)
    with pytest.raises(pk.MissingDataError):
        pk.prune(model, pk.Pruner("wanda"), sparsity=0.5, measure=False)
    assert_unchanged(model, before)


def test_prune_fills_what_the_pruner_was_not_given_and_refuses_clashes():
    model = ThreeLayer()
    report = pk.prune(model, pk.Pruner("magnitude", skip_incompatible=True), sparsity=0.5, pattern="2:4",
                      measure=False)
    assert report.settings["pattern"] == "2:4" and pk.get_mask(model.fc2) is None
    with pytest.raises(pk.ConfigError, match="one place"):
        pk.prune(ThreeLayer(), pk.Pruner("magnitude", "channel"), sparsity=0.5, pattern="2:4", measure=False)
    with pytest.raises(pk.ConfigError, match="one place"):
        pk.prune(ThreeLayer(), pk.Pruner("magnitude", allocation="erk"), sparsity=0.5, allocation="global",
                 measure=False)
    with pytest.raises(pk.ConfigError, match="accepts"):
        pk.prune(ThreeLayer(), pk.Pruner("magnitude"), sparsity=0.5, colour="red", measure=False)
    overrides = pk.prune(ThreeLayer(), pk.Pruner("magnitude", overrides={"fc1": 0.9}), sparsity=0.5, measure=False)
    assert {r.name: r.target for r in overrides.layers}["fc1"] == pytest.approx(0.9)


def _bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval()


@pytest.mark.parametrize("name", BUILTIN)
def test_every_criterion_is_reachable_through_a_pruner(name):
    """Each criterion prunes a small CNN at the first masking level it has, or (influence: layers only) is
    refused with the levels it has."""
    crit = CRITERIA.get(name)
    model = _bn_cnn()
    x = torch.randn(4, 4, 6, 6)
    calib = [(x, torch.tensor([0, 1, 2, 0]))]
    level = "unstructured" if "element" in crit.levels else "channel" if "channel" in crit.levels else None
    if level is None:
        with pytest.raises(CriterionLevelError, match="layer"):
            pk.Pruner(name, "channel")
        return
    report = pk.prune(model, pk.Pruner(name, level), sparsity=0.5, calibration=calib, example_inputs=x,
                      measure=False)
    assert report.sparsity == pytest.approx(0.5, abs=0.02), name
    assert report.settings["criterion"] == name


# ---- named methods ------------------------------------------------------------------------------------


def test_named_methods_are_compositions_registered_by_decorator():
    for name, crit in (("magnitude", "magnitude"), ("snip", "grad-weight"), ("taylor", "taylor"), ("obd", "obd"),
                       ("fpgm", "fpgm"), ("apoz", "apoz"), ("erk", "random"), ("lamp", "magnitude")):
        m = pk.METHODS.get(name)
        assert isinstance(m, pk.ScoreMethod) and str(pk.criteria.resolve_criterion(m.criterion)) == crit, name
        assert m.description and m.needs_data == CRITERIA.get(crit).needs_data, name

    @pk.register_method("test-l3-channel", criterion="l3", default_pattern="channel")
    class L3Channel(pk.ScoreMethod):
        """L3 norm of output rows (a test composition)."""

    try:
        m = pk.METHODS.get("test-l3-channel")
        assert m.description == "L3 norm of output rows (a test composition)."
        report = pk.prune(ThreeLayer(), "test-l3-channel", sparsity=0.5, measure=False)
        assert report.settings["pattern"] == "channel"
    finally:
        pk.METHODS._entries.pop("test-l3-channel")


def test_a_score_method_refuses_a_pattern_its_criterion_has_no_meaning_for():
    model = SmallCNN()
    before = snapshot(model)
    with pytest.raises(CriterionLevelError, match="fpgm"):
        pk.prune(model, "fpgm", sparsity=0.5, pattern="2:4", measure=False)
    assert_unchanged(model, before)
    report = pk.prune(model, "fpgm", sparsity=0.5, measure=False)  # its default pattern: channels
    assert report.settings["pattern"] == "channel"


def test_a_masking_method_refuses_a_physical_pattern():
    with pytest.raises(pk.PatternError, match="head"):
        pk.prune(SmallCNN(), "synflow", sparsity=0.5, pattern="head", example_inputs=torch.randn(1, 4, 6, 6),
                 measure=False)


def test_physical_patterns_run_through_the_structural_composition():
    """A score method given a physical pattern hands (level, criterion) to physical_method; a stub stands in
    for the structural engine here (its own tests prove the surgery)."""
    seen = {}

    class Stub(pk.Method):
        name = "stub-physical"
        structural = True
        options = frozenset({"identity_only"})

        def run(self, model, request):
            seen["request"] = request
            return pk.MethodOutcome({}, ["stub"])

    def physical_method(level, criterion):
        seen["level"], seen["criterion"] = level, criterion.name
        return Stub()

    register_physical_composer(physical_method)
    try:
        report = pk.prune(SmallCNN(), "magnitude", sparsity=0.5, pattern=pk.Head(), measure=False)
        assert (seen["level"], seen["criterion"]) == ("head", "magnitude")
        assert report.method == "magnitude" and report.settings["pattern"] == "head (physical)"
        pk.prune(SmallCNN(), pk.Pruner("influence", pk.Layer(identity_only=True)), sparsity=0.5, measure=False)
        assert (seen["level"], seen["criterion"]) == ("layer", "influence")
        assert seen["request"].options["identity_only"] is True
        pk.prune(SmallCNN(), pk.Pruner("taylor", "physical-channel"), sparsity=0.5, measure=False,
                 calibration=[(torch.randn(2, 4, 6, 6), torch.tensor([0, 1]))])
        assert (seen["level"], seen["criterion"]) == ("channel", "taylor")
        pk.prune(SmallCNN(), pk.Pruner("l2", "embedding"), sparsity=0.5, measure=False)
        assert (seen["level"], seen["criterion"]) == ("embedding", "l2")
    finally:
        register_physical_composer(structural_physical_method)


def test_structural_methods_refuse_another_kind_of_unit():
    with pytest.raises(pk.PatternError, match="l1-channel"):
        pk.prune(SmallCNN(), "l1-channel", sparsity=0.5, pattern="2:4", example_inputs=torch.randn(1, 4, 6, 6),
                 measure=False)


def test_physical_channel_pruner_really_shrinks_the_model():
    torch.manual_seed(0)
    model = SmallCNN()
    x = torch.randn(1, 4, 6, 6)
    params = sum(p.numel() for p in model.parameters())
    report = pk.prune(model, pk.Pruner("fpgm", pk.Channel(physical=True)), sparsity=0.5, example_inputs=x,
                      measure=False)
    assert sum(p.numel() for p in model.parameters()) < params
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # no masks: shapes changed
    assert report.settings["pattern"] == "channel (physical)" and report.settings["criterion"] == "fpgm"
    assert model(x).shape == (1, 3)


def test_lamp_allocation_prunes_again_to_the_new_target():
    """Weights removed earlier score -inf; LAMP is computed over the units still alive, so a second LAMP
    pruning reaches its target (before, (-inf)^2 made the removed weights the most important)."""
    torch.manual_seed(0)
    model = ThreeLayer()
    pk.prune(model, "lamp", sparsity=0.5, prune_classifier=True, measure=False)
    first = {n: pk.get_mask(m).clone() for n, m in model.named_children()}
    report = pk.prune(model, "lamp", sparsity=0.8, prune_classifier=True, measure=False)
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)
    assert all(not (pk.get_mask(m) & ~first[n]).any() for n, m in model.named_children())
