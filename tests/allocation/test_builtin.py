"""Tests of :mod:`prunekit.allocation.builtin`: ERK, LAMP, global, uniform and OWL on hand-computed layers, and
the contract every registered allocation meets."""

import pytest
import torch
from conftest import ThreeLayer
from torch import nn

import prunekit as pk
from prunekit.allocation.builtin import OWL, LayerInfo, outlier_ratio, owl_sparsities, repeated_block
from prunekit.errors import ConfigError


def _toy_layers():
    # (out, in) shapes of a 3-layer MLP: 100 -> 50 -> 50 -> 10
    return [LayerInfo("fc1", (50, 100)), LayerInfo("fc2", (50, 50)), LayerInfo("fc3", (10, 50))]


def test_erk_hand_computed_no_capping():
    # raw ER densities (in+out)/(in*out): 150/5000, 100/2500, 60/500; weights 5000, 2500, 500.
    # eps = 0.2 * 8000 / (150 + 100 + 60) = 1600 / 310
    eps = 1600 / 310
    expected = {"fc1": 1 - eps * 0.03, "fc2": 1 - eps * 0.04, "fc3": 1 - eps * 0.12}
    got = pk.ERK().allocate(_toy_layers(), 0.8)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got["fc1"] == pytest.approx(0.845161, abs=1e-6)


def test_erk_hand_computed_with_capping():
    # at 50%: eps = 4000/310 makes fc3's density 1.55 > 1, so fc3 stays dense (500 weights) and
    # eps = (4000 - 500) / (150 + 100) = 14 over the others: densities 0.42 and 0.56
    got = pk.ERK().allocate(_toy_layers(), 0.5)
    assert got == pytest.approx({"fc1": 0.58, "fc2": 0.44, "fc3": 0.0}, abs=1e-12)
    total = 5000 * got["fc1"] + 2500 * got["fc2"] + 500 * got["fc3"]
    assert total == pytest.approx(0.5 * 8000)


def test_lamp_allocation_hand_computed():
    # layer a: |w| = 1, 2, 3, 4  -> LAMP 1/30, 4/29, 9/25, 1
    # layer b: |w| = 10, 20      -> LAMP 100/500, 1
    # layer c: |w| = 0.5, 5      -> LAMP 0.25/25.25, 1
    # removing 3 of 8 weights globally by LAMP score removes a's 1 (0.033), c's 0.5 (0.0099), a's 2 (0.138)
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([10.0, 20.0])
    c = torch.tensor([0.5, 5.0])
    layers = [LayerInfo(n, tuple(w.shape), w, torch.ones_like(w, dtype=torch.long)) for n, w in zip("abc", (a, b, c))]
    got = pk.LAMP().allocate(layers, 3 / 8)
    assert got == pytest.approx({"a": 0.5, "b": 0.0, "c": 0.5})
    # plain global magnitude would remove 0.5, 1 and 2 too, but at 5/8 it differs: LAMP keeps b's and c's max
    got = pk.LAMP().allocate(layers, 5 / 8)
    assert got["b"] == 0.5 and got["c"] == 0.5 and got["a"] == 0.75


def test_global_allocation_threshold():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([0.5, 5.0])
    layers = [LayerInfo(n, tuple(w.shape), w, torch.ones_like(w, dtype=torch.long)) for n, w in zip("ab", (a, b))]
    assert pk.Global().allocate(layers, 0.5) == pytest.approx({"a": 0.5, "b": 0.5})
    assert pk.Global().allocate(layers, 2 / 6) == pytest.approx({"a": 0.25, "b": 0.5})


def test_global_cap_moves_budget_to_other_layers():
    a = torch.zeros(10)  # all scores zero: plain global would empty it
    b = torch.arange(1, 11, dtype=torch.float)
    layers = [LayerInfo(n, tuple(w.shape), w, torch.ones_like(w, dtype=torch.long)) for n, w in zip("ab", (a, b))]
    got = pk.Global(max_sparsity=0.8).allocate(layers, 0.6)
    assert got["a"] == pytest.approx(0.8) and got["b"] == pytest.approx(0.4)


def test_uniform():
    assert pk.Uniform().allocate(_toy_layers(), 0.3) == {"fc1": 0.3, "fc2": 0.3, "fc3": 0.3}


def test_allocations_registered_and_contract():
    # every registered allocation meets the overall target on a toy model within one weight
    torch.manual_seed(0)
    shapes = [(50, 100), (50, 50), (10, 50)]
    weights = [torch.randn(s) for s in shapes]
    layers = [
        LayerInfo(f"l{i}", s, w.abs().reshape(-1), torch.ones(w.numel(), dtype=torch.long))
        for i, (s, w) in enumerate(zip(shapes, weights))
    ]
    for name in pk.ALLOCATIONS.names():
        alloc = pk.ALLOCATIONS.get(name)()
        got = alloc.allocate(layers, 0.7)
        removed = sum(got[layer.name] * layer.numel for layer in layers)
        assert removed == pytest.approx(0.7 * 8000, abs=1.0), name
        assert all(0.0 <= v < 1.0 for v in got.values()), name


def test_global_counts_weights_or_units():
    import torch

    from prunekit.allocation.builtin import Global, LayerInfo

    # layer a: 4 units of 10 weights with low scores; layer b: 4 units of 1 weight with high scores
    a = LayerInfo("a", (4, 10), torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.full((4,), 10))
    b = LayerInfo("b", (4, 1), torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.ones(4, dtype=torch.long))
    by_weight = Global(max_sparsity=0.99).allocate([a, b], 0.5)  # 22 of 44 weights: 2 units of a
    by_unit = Global(max_sparsity=0.99, count="units").allocate([a, b], 0.5)  # 4 of 8 units: all of a but capped
    assert by_weight == {"a": 0.5, "b": 0.0}
    assert by_unit["a"] > by_weight["a"]
    assert by_unit["a"] * 4 + by_unit["b"] * 4 == pytest.approx(4, abs=1)
    with pytest.raises(pk.ConfigError):
        Global(count="bytes")


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


def test_owl_sparsities_keep_the_mean_and_favour_outlier_layers():
    s = owl_sparsities([0.01, 0.05, 0.03, 0.02], 0.6, lam=0.08)
    assert sum(s) / len(s) == pytest.approx(0.6)
    assert max(s) - min(s) == pytest.approx(0.16)
    assert s[1] == min(s) and s[0] == max(s)  # most outliers -> least pruned
    assert owl_sparsities([0.02, 0.02], 0.5) == [0.5, 0.5]


def test_outlier_ratio_hand_computed():
    scores = [torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 31.0])]  # mean 4
    assert outlier_ratio(scores, multiple=5.0) == pytest.approx(0.1)  # 31 > 5 * 4 = 20
    assert outlier_ratio(scores, multiple=10.0) == 0.0


def _cnn() -> nn.Sequential:
    """Three 4->4 3x3 convolutions (144 weights each) and a classifier the pruner leaves dense."""
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.Flatten(),
        nn.Linear(4, 2),
    )
    with torch.no_grad():
        for conv in (model[0], model[2], model[4]):
            conv.weight.fill_(1.0)
        model[0].weight.view(-1)[[3, 70]] = 100.0  # mean 342/144 = 2.375: 2 weights above 5 x mean
        model[2].weight.view(-1)[[0, 9, 20, 50, 99, 143]] = -50.0  # mean 438/144: 6 above 5 x mean
    return model  # model[4]: all ones, no weight above 5 x mean


def test_owl_core_matches_hand_computed_ratios():
    model = _cnn()
    plan = pk.Pruner("magnitude", allocation=OWL(lam=0.1)).plan(model, sparsity=0.5)
    ratios = [2 / 144, 6 / 144, 0.0]
    expected = owl_sparsities(ratios, 0.5, lam=0.1)
    # by hand: d = 0.2 * r / max(r) = (1/15, 1/5, 0), mean 4/45; sparsity = 1 - (d - 4/45 + 0.5)
    assert expected == pytest.approx([47 / 90, 35 / 90, 53 / 90], abs=1e-12)
    # (the ratios are float32 shares, as in the LLM path: equal to 1e-6)
    assert plan.layer_sparsity() == pytest.approx({"0": 47 / 90, "2": 35 / 90, "4": 53 / 90}, abs=1e-6)
    assert [lp.name for lp in plan.layers] == ["0", "2", "4"]  # the classifier stays dense
    assert plan.sparsity == pytest.approx(0.5, abs=1 / 432)
    assert plan.settings["allocation"] == "owl"
    # through prunekit.prune with the registered name (lam = 0.08)
    report = pk.prune(_cnn(), "magnitude", sparsity=0.5, allocation="owl", measure=False)
    targets = [r.target for r in report.layers if r.target is not None]
    assert targets == pytest.approx(owl_sparsities(ratios, 0.5), abs=1e-6)


def test_owl_pools_blocks_and_meets_the_target_in_weights():
    def info(name, scores):
        return LayerInfo(name, tuple(scores.shape), scores, torch.ones_like(scores, dtype=torch.long))

    ones = torch.ones
    outliers = torch.cat([ones(96), torch.full((4,), 100.0)])  # 4 of 100 above 5 x mean
    layers = [
        info("blocks.0.a", outliers),
        info("blocks.0.b", ones(100)),  # block 0: 4 / 200 outliers
        info("blocks.1.a", ones(50)),  # block 1: none
        info("head", torch.cat([ones(47), torch.full((3,), 100.0)])),  # its own block: 3 / 50
    ]
    assert [repeated_block(layer.name) for layer in layers] == ["blocks.0", "blocks.0", "blocks.1", "head"]
    got = OWL().allocate(layers, 0.5)
    assert got["blocks.0.a"] == got["blocks.0.b"]
    removed = sum(got[layer.name] * layer.numel for layer in layers)
    assert removed == pytest.approx(0.5 * 300)  # overall sparsity in weights, with blocks of 200, 50, 50
    raw = owl_sparsities([4 / 200, 0.0, 3 / 50], 0.5)  # the paper's values, shifted by one constant
    shift = got["blocks.0.a"] - raw[0]
    assert [got["blocks.1.a"] - shift, got["head"] - shift] == pytest.approx(raw[1:], abs=1e-6)
    assert shift != 0.0  # unequal blocks: the plain mapping would miss the target
    assert got["head"] < got["blocks.0.a"] < got["blocks.1.a"]  # more outliers, fewer removed
    per_weight = OWL(block_of=None).allocate(layers, 0.5)  # every weight its own layer
    assert per_weight["blocks.0.a"] < per_weight["blocks.0.b"]
    # weights removed earlier score -inf and are left out of the ratio
    kept = torch.cat([ones(9), torch.full((1,), 100.0)])  # mean 10.9: one of ten above 5 x mean
    assert OWL().ratio([torch.cat([kept, torch.full((5,), float("-inf"))])]) == pytest.approx(0.1)


def test_owl_refuses_bad_options_and_nm():
    for bad in ({"lam": -0.1}, {"M": 0.0}, {"max_sparsity": 1.5}):
        with pytest.raises(ConfigError):
            OWL(**bad)
    with pytest.raises(ConfigError, match="2:4"):
        pk.Pruner("magnitude", "2:4", allocation="owl")


@pytest.mark.parametrize(
    "alloc", [pk.Global(), pk.Global(count="units"), pk.LAMP(), pk.OWL()], ids=["global", "global-units", "lamp", "owl"]
)
def test_score_based_allocations_refuse_layers_without_scores(alloc):
    # Global and LAMP once failed inside with an AttributeError / TypeError on the missing scores
    assert alloc.needs_scores
    with pytest.raises(pk.ConfigError, match=r"LayerInfo\.unit_scores"):
        alloc.allocate(_toy_layers(), 0.5)


@pytest.mark.parametrize("alloc", [pk.Global(), pk.LAMP()], ids=["global", "lamp"])
def test_weight_counting_allocations_refuse_scores_without_unit_sizes(alloc):
    scored = [LayerInfo(layer.name, layer.shape, torch.rand(layer.numel)) for layer in _toy_layers()]
    with pytest.raises(pk.ConfigError, match=r"LayerInfo\.unit_sizes"):
        alloc.allocate(scored, 0.5)
