"""Tests of :mod:`prunekit.methods.base`: named methods are compositions registered by decorator; a score method
refuses patterns its criterion has no meaning for and hands physical patterns to the structural composer."""

import pytest
import torch
from conftest import SmallCNN, ThreeLayer, assert_unchanged, snapshot
from torch import nn

import prunekit as pk
from prunekit.criteria import CRITERIA, CriterionLevelError
from prunekit.methods.base import register_physical_composer
from prunekit.methods.physical import physical_method as structural_physical_method


def test_named_methods_are_compositions_registered_by_decorator():
    for name, crit in (
        ("magnitude", "magnitude"),
        ("snip", "grad-weight"),
        ("taylor", "taylor"),
        ("obd", "obd"),
        ("fpgm", "fpgm"),
        ("apoz", "apoz"),
        ("erk", "random"),
        ("lamp", "magnitude"),
    ):
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
        pk.METHODS.remove("test-l3-channel")
    assert "test-l3-channel" not in pk.METHODS
    with pytest.raises(pk.UnknownNameError, match="test-l3-channel"):
        pk.METHODS.remove("test-l3-channel")


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
        pk.prune(
            SmallCNN(), "synflow", sparsity=0.5, pattern="head", example_inputs=torch.randn(1, 4, 6, 6), measure=False
        )


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
            model.fc = nn.Linear(16, 4)  # removes something, as a structural method does (8 -> 4 units)
            model.head = nn.Linear(4, 3)
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
        pk.prune(
            SmallCNN(),
            pk.Pruner("taylor", "physical-channel"),
            sparsity=0.5,
            measure=False,
            calibration=[(torch.randn(2, 4, 6, 6), torch.tensor([0, 1]))],
        )
        assert (seen["level"], seen["criterion"]) == ("channel", "taylor")
        pk.prune(SmallCNN(), pk.Pruner("l2", "embedding"), sparsity=0.5, measure=False)
        assert (seen["level"], seen["criterion"]) == ("embedding", "l2")
    finally:
        register_physical_composer(structural_physical_method)
