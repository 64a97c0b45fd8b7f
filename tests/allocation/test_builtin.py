import pytest
import torch

import prunekit as pk
from prunekit.allocation.builtin import LayerInfo
from prunekit.criteria import lamp_scores


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


def test_lamp_scores_hand_computed():
    # magnitudes 1, 2, 3 -> squares 1, 4, 9; suffix sums 14, 13, 9
    s = lamp_scores(torch.tensor([4.0, 1.0, 9.0]))
    assert s.tolist() == pytest.approx([4 / 13, 1 / 14, 1.0])


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
    layers = [LayerInfo(f"l{i}", s, w.abs().reshape(-1), torch.ones(w.numel(), dtype=torch.long))
              for i, (s, w) in enumerate(zip(shapes, weights))]
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
