import copy

import pytest
import torch
import torchvision
from conftest import SmallCNN, ThreeLayer, assert_unchanged, snapshot
from torch import nn

import prunekit as pk
from prunekit.apply import plan as plan_module


@pytest.fixture(scope="module")
def resnet18_pruned():
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    report = pk.prune(
        model,
        "magnitude",
        sparsity=0.9,
        allocation="global",
        measure_latency=False,
        example_inputs=torch.randn(1, 3, 32, 32),
    )
    return model, report


def test_resnet18_global_magnitude_reaches_target(resnet18_pruned):
    model, report = resnet18_pruned
    pruned = [r for r in report.layers if r.ignored is None]
    assert len(pruned) == 20  # every conv; fc is the classifier
    zeros = sum(r.params - r.nonzero for r in pruned)
    total = sum(r.params for r in pruned)
    assert abs(report.sparsity - 0.9) <= 0.005
    assert zeros / total == pytest.approx(report.sparsity, abs=1e-12)  # the per-layer table sums to the total
    # global allocation is not uniform: layers differ
    assert max(r.sparsity for r in pruned) - min(r.sparsity for r in pruned) > 0.2
    # and the masks really zero what the report says
    conv = model.layer4[1].conv2
    assert (conv.weight == 0).float().mean().item() == pytest.approx(
        next(r.sparsity for r in pruned if r.name == "layer4.1.conv2")
    )
    assert report.after.effective_flops < 0.5 * report.before.effective_flops
    assert report.after.flops == report.before.flops  # masks alone do not change dense execution
    assert report.after.sparse_bytes <= 0.25 * report.after.dense_bytes
    d = report.to_dict()
    assert d["sparsity"] == report.sparsity and len(d["layers"]) == 21
    assert "fc" in str(report) and "final classifier" in str(report)


def _summary_rows(report, *labels):
    """The rows of the report's printed summary whose first cell is one of these labels, as lists of cells."""
    rows = [[cell.strip() for cell in line.strip("│").split("│")] for line in str(report).splitlines()]
    return [r for r in rows if r[0] in labels]


@pytest.mark.parametrize("pattern", ["unstructured", "physical-channel"])
def test_measure_false_counts_the_parameters_and_measures_nothing_else(pattern):
    """measure=False skips FLOPs, file sizes and latency (None, printed as '-'), but the parameter counts it
    reports are true: the same as a measured run's, not 0 -> 0."""
    torch.manual_seed(0)
    model, x = SmallCNN(), torch.randn(2, 4, 8, 8)
    twin = copy.deepcopy(model)
    dense = sum(p.numel() for p in model.parameters())
    report = pk.prune(model, pk.Pruner("l1", pattern), sparsity=0.5, example_inputs=x, measure=False)
    measured = pk.prune(twin, pk.Pruner("l1", pattern), sparsity=0.5, example_inputs=x, measure_latency=False)
    assert report.before.params == dense and report.before.nonzero_params == dense
    assert (report.after.params, report.after.nonzero_params) == (measured.after.params, measured.after.nonzero_params)
    assert report.after.nonzero_params < dense
    if pattern == "physical-channel":  # channels removed: fewer parameters, all of them counted
        assert report.after.params == sum(p.numel() for p in model.parameters()) < dense
    else:  # masked: every parameter is still there, half of the pruned layers' weights at zero
        assert report.after.params == dense and report.model_sparsity > 0
    assert report.model_sparsity == measured.model_sparsity
    for stats in (report.before, report.after):
        assert stats.flops is None and stats.dense_bytes is None and stats.latency_ms is None
    labels = ("parameters", "non-zero parameters", "parameters removed", "sparsity of pruned layers")
    assert _summary_rows(report, *labels) == _summary_rows(measured, *labels)
    assert len(_summary_rows(report, *labels)) == 3
    assert _summary_rows(report, "FLOPs (dense execution)", "file, dense safetensors") == [
        ["FLOPs (dense execution)", "-", "-", "-"],
        ["file, dense safetensors", "-", "-", "-"],
    ]


@pytest.mark.parametrize("allocation", ["uniform", "global", "erk", "lamp"])
def test_each_allocation_meets_target(allocation):
    torch.manual_seed(0)
    model = SmallCNN()
    report = pk.prune(model, "magnitude", sparsity=0.6, allocation=allocation)
    total = sum(r.params for r in report.pruned_layers)
    assert report.sparsity == pytest.approx(0.6, abs=1.5 / total)


def test_lamp_method_uses_lamp_allocation():
    torch.manual_seed(0)
    model = ThreeLayer()
    report = pk.prune(model, "lamp", sparsity=0.8, prune_classifier=True)
    assert report.settings["allocation"] == "lamp"
    layers = {r.name: r.sparsity for r in report.layers}
    assert len(set(round(v, 3) for v in layers.values())) > 1


def test_snip_scores_are_abs_grad_times_weight():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    w0 = model[0].weight.detach().clone()
    # hand computation of d loss / d w0 through the linear net
    loss = nn.functional.cross_entropy(model(x), y)
    (g0,) = torch.autograd.grad(loss, model[0].weight)
    expected = (g0 * w0).abs().flatten()
    keep = torch.ones_like(expected, dtype=torch.bool)
    keep[torch.argsort(expected, stable=True)[:6]] = False
    pk.prune(model, "snip", sparsity=0.5, calibration=[(x, y)], measure=False)
    assert torch.equal(pk.get_mask(model[0]).flatten(), keep)
    assert model[0].parametrizations.weight.original.grad is None  # scoring left no gradients behind


def test_snip_with_loss_function():
    torch.manual_seed(0)
    model = ThreeLayer()
    x = torch.randn(8, 100)
    pk.prune(model, "snip", sparsity=0.5, allocation="uniform", calibration=lambda m: m(x).pow(2).mean(), measure=False)
    assert pk.get_mask(model.fc1).float().mean().item() == pytest.approx(0.5)


def test_snip_thresholds_globally_by_default_as_in_its_paper():
    torch.manual_seed(0)
    model = ThreeLayer()
    x = torch.randn(8, 100)
    report = pk.prune(model, "snip", sparsity=0.5, calibration=lambda m: m(x).pow(2).mean(), measure=False)
    assert report.settings["allocation"].startswith("global")
    kept = [pk.get_mask(m).float().mean().item() for m in (model.fc1, model.fc2)]
    assert kept[0] != pytest.approx(kept[1], abs=1e-3)  # one threshold over both layers, not 50% of each
    total = sum(pk.get_mask(m).sum().item() for m in (model.fc1, model.fc2))
    assert total == (100 * 50 + 50 * 50) // 2


def test_random_is_seeded():
    a, b = ThreeLayer(), ThreeLayer()
    base = {k: v.clone() for k, v in a.state_dict().items()}
    b.load_state_dict(base)
    pk.prune(a, "random", sparsity=0.5, seed=3, measure=False)
    pk.prune(b, "random", sparsity=0.5, seed=3, measure=False)
    assert torch.equal(pk.get_mask(a.fc1), pk.get_mask(b.fc1))
    c = ThreeLayer()
    c.load_state_dict(base)
    pk.prune(c, "random", sparsity=0.5, seed=4, measure=False)
    assert not torch.equal(pk.get_mask(a.fc1), pk.get_mask(c.fc1))


def test_pruning_twice_only_shrinks_masks():
    torch.manual_seed(0)
    model = ThreeLayer()
    pk.prune(model, "random", sparsity=0.5, measure=False)
    first = pk.get_mask(model.fc1).clone()
    report = pk.prune(model, "random", sparsity=0.8, measure=False, seed=7)
    second = pk.get_mask(model.fc1)
    assert not (second & ~first).any()
    assert report.sparsity == pytest.approx(0.8, abs=1e-3)


def test_a_second_prune_that_removes_nothing_says_so():
    torch.manual_seed(0)
    model = ThreeLayer()
    first = pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    assert not any("nothing was removed" in n for n in first.notes)
    again = pk.prune(model, "magnitude", sparsity=0.3, measure=False)
    assert again.after.nonzero_params == first.after.nonzero_params
    assert any(n.startswith("nothing was removed") and "0.3" in n for n in again.notes), again.notes
    further = pk.prune(model, "magnitude", sparsity=0.7, measure=False)
    assert not any("nothing was removed" in n for n in further.notes)


def test_ignore_by_name_module_and_filter():
    model = SmallCNN()
    r = pk.prune(model, "magnitude", sparsity=0.5, ignore=["conv1"], measure=False)
    assert pk.get_mask(model.conv1) is None and pk.get_mask(model.conv2) is not None
    model = SmallCNN()
    pk.prune(model, "magnitude", sparsity=0.5, ignore=[model.conv2], measure=False)
    assert pk.get_mask(model.conv2) is None
    model = SmallCNN()
    pk.prune(model, "magnitude", sparsity=0.5, ignore=lambda m, n: isinstance(m, nn.Conv2d), measure=False)
    assert pk.get_mask(model.conv1) is None and pk.get_mask(model.fc) is not None
    assert any("ignored by the user" in n for n in r.notes)


def test_overrides():
    model = ThreeLayer()
    report = pk.prune(model, "magnitude", sparsity=0.5, overrides={"fc1": 0.9}, prune_classifier=True, measure=False)
    rows = {r.name: r for r in report.layers}
    assert rows["fc1"].sparsity == pytest.approx(0.9)
    assert rows["fc2"].sparsity == pytest.approx(0.5)


# ---- transactional apply -------------------------------------------------------------------------


def test_failure_mid_apply_leaves_model_bit_identical(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    pk.prune(model, "magnitude", sparsity=0.3, ignore=["layer4"], measure=False)  # some masks exist already
    before = snapshot(model)
    calls = {"n": 0}
    real = plan_module.apply_mask_

    def flaky(module, mask, name="weight"):
        calls["n"] += 1
        if calls["n"] == 10:
            raise RuntimeError("injected failure")
        return real(module, mask, name)

    monkeypatch.setattr(plan_module, "apply_mask_", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        pk.prune(model, "magnitude", sparsity=0.9, allocation="global", measure=False)
    assert calls["n"] == 10
    assert_unchanged(model, before)


def test_plan_roundtrip_and_replay(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN()
    fresh = SmallCNN()
    fresh.load_state_dict(model.state_dict())
    pruner = pk.Pruner(criterion="magnitude", granularity="channel", allocation="global", sparsity=0.5)
    plan = pruner.plan(model)
    assert pk.get_mask(model.conv1) is None  # planning changes nothing
    assert "conv2" in str(plan)
    path = plan.save(tmp_path / "plan.json")
    replay = pk.Plan.load(path)
    plan.apply_(model)
    replay.apply_(fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    # channel form: whole output rows are zero
    rows = model.conv2.weight.reshape(16, -1)
    assert ((rows == 0).all(dim=1) | (rows != 0).any(dim=1)).all()
    assert (rows == 0).all(dim=1).any()


def test_plan_refuses_a_model_it_does_not_fit(tmp_path):
    plan = pk.Pruner(sparsity=0.5).plan(SmallCNN())
    other = ThreeLayer()
    before = snapshot(other)
    with pytest.raises(pk.PlanError, match="does not have"):
        plan.apply_(other)
    assert_unchanged(other, before)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(pk.PlanError):
        pk.Plan.load(bad)


def test_pruner_step_follows_schedule():
    model = ThreeLayer()
    pruner = pk.Pruner(schedule=pk.Gradual(start=0, end=10, final_sparsity=0.8, frequency=5), prune_classifier=True)
    seen = {}
    for step in range(12):
        plan = pruner.step(model, step)
        if plan is not None:
            seen[step] = plan.sparsity
    assert set(seen) == {5, 10}  # step 0 targets 0.0
    assert seen[5] == pytest.approx(0.8 - 0.8 * 0.5**3, abs=1e-3)
    assert seen[10] == pytest.approx(0.8, abs=1e-3)


# ---- bad input: clear error, model unchanged -----------------------------------------------------


def _bad_cases():
    nan_model = SmallCNN()
    with torch.no_grad():
        nan_model.conv2.weight[0, 0, 0, 0] = float("nan")
    return [
        ("sparsity 1.0", SmallCNN(), dict(method="magnitude", sparsity=1.0), pk.InvalidSparsityError, "[0, 1)"),
        ("negative sparsity", SmallCNN(), dict(method="magnitude", sparsity=-0.2), pk.InvalidSparsityError, "[0, 1)"),
        (
            "nan sparsity",
            SmallCNN(),
            dict(method="magnitude", sparsity=float("nan")),
            pk.InvalidSparsityError,
            "[0, 1)",
        ),
        (
            "tensor sparsity",
            SmallCNN(),
            dict(method="magnitude", sparsity=torch.tensor(0.5)),
            pk.InvalidSparsityError,
            "pass float(sparsity)",
        ),
        ("unknown method", SmallCNN(), dict(method="magic", sparsity=0.5), pk.UnknownNameError, "magnitude"),
        (
            "unknown pattern",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.5, pattern="zigzag"),
            pk.UnknownNameError,
            "2:4",
        ),
        (
            "unknown allocation",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.5, allocation="fair"),
            pk.UnknownNameError,
            "erk",
        ),
        (
            "N:M indivisible",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.5, pattern="4:8"),
            pk.PatternError,
            "ignore=",
        ),
        (
            "N:M sparsity mismatch",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.7, pattern="2:4"),
            pk.InvalidSparsityError,
            "0.5",
        ),
        ("NaN weights", nan_model, dict(method="magnitude", sparsity=0.5), pk.NonFiniteWeightsError, "conv2"),
        (
            "nothing prunable",
            nn.Sequential(nn.ReLU()),
            dict(method="magnitude", sparsity=0.5),
            pk.NothingToPruneError,
            "nothing to prune",
        ),
        (
            "only a classifier",
            nn.Linear(4, 2),
            dict(method="magnitude", sparsity=0.5),
            pk.NothingToPruneError,
            "prune_classifier",
        ),
        ("snip without data", SmallCNN(), dict(method="snip", sparsity=0.5), pk.MissingDataError, "calibration="),
        ("snip with empty data", SmallCNN(), dict(method="snip", sparsity=0.5, calibration=[]), pk.DataError, "empty"),
        ("unknown option", SmallCNN(), dict(method="magnitude", sparsity=0.5, colour="red"), pk.ConfigError, "accepts"),
        (
            "unknown ignore name",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.5, ignore=["conv9"]),
            pk.ConfigError,
            "conv9",
        ),
        (
            "bad example inputs",
            SmallCNN(),
            dict(method="magnitude", sparsity=0.5, example_inputs=torch.randn(1, 3)),
            pk.DataError,
            "check their shape, dtype and device",
        ),
        (
            "forward out of memory",
            _OutOfMemory(),
            dict(method="magnitude", sparsity=0.5, example_inputs=torch.randn(1, 1, 28, 28)),
            pk.DataError,
            "it ran out of memory: pass a smaller batch",
        ),
    ]


class _OutOfMemory(SmallCNN):
    """A model whose forward pass runs out of memory, as a too large batch would."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


@pytest.mark.parametrize("case", _bad_cases(), ids=lambda c: c[0])
def test_bad_input_clear_error_model_unchanged(case):
    _, model, kwargs, error, phrase = case
    before = snapshot(model)
    method = kwargs.pop("method")
    with pytest.raises(error) as info:
        pk.prune(model, method, **kwargs)
    assert phrase in str(info.value)
    assert isinstance(info.value, pk.PrunekitError)
    assert_unchanged(model, before)


def test_skip_incompatible_leaves_misfits_dense():
    model = SmallCNN()  # conv1 has 4 input channels, fc 16: 4:8 fits only fc... and conv2 (8)
    report = pk.prune(model, "magnitude", sparsity=0.5, pattern="4:8", skip_incompatible=True, measure=False)
    assert pk.get_mask(model.conv1) is None
    assert pk.get_mask(model.conv2) is not None and pk.get_mask(model.fc) is not None
    assert any("does not fit pattern 4:8" in n for n in report.notes)


def test_methods_registry_contract():
    # every registered method prunes a small model to its target through the one entry point
    checked = []
    for name in pk.METHODS.names():
        method = pk.METHODS.get(name)
        if method.structural or method.when == "during-training":
            continue
        torch.manual_seed(0)
        model = SmallCNN()
        x = torch.randn(4, 4, 6, 6)
        calib = [(x, torch.tensor([0, 1, 2, 0]))]
        try:
            report = pk.prune(model, name, sparsity=0.5, calibration=calib, example_inputs=x, measure_latency=False)
        except pk.ModelError:
            continue  # e.g. a language-model method on a CNN: refused clearly, fine
        assert report.sparsity == pytest.approx(0.5, abs=0.02), name
        assert method.description, name
        checked.append(name)
    assert {"magnitude", "random", "snip", "lamp", "erk", "grasp", "synflow"} <= set(checked)


def test_structural_failure_mid_surgery_restores_model(monkeypatch):
    from prunekit.surgery import remove as surgery

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    expected = model(x)
    before = snapshot(model)
    seen = {}

    real = surgery.record_shapes

    def flaky(m, old_shapes):
        if m is not model:  # the engine first tries its plan on a data-free copy
            return real(m, old_shapes)
        seen["out"] = m.layer1[0].conv1.out_channels  # the surgery has already replaced tensors and attributes
        raise RuntimeError("injected failure")

    monkeypatch.setattr(surgery, "record_shapes", flaky)
    with pytest.raises(RuntimeError, match="injected"):
        pk.prune(model, "l1-channel", sparsity=0.5, example_inputs=x, measure=False)
    assert seen["out"] == 32
    assert_unchanged(model, before)
    assert model.layer1[0].conv1.out_channels == 64 and model.fc.in_features == 512
    assert torch.equal(model(x), expected)


def test_a_model_that_carries_its_input_shape_is_traced_and_counted_on_it():
    model = pk.build_model("prunekit:lenet5")
    report = pk.prune(model, "l1-channel", sparsity=0.5)  # no example_inputs: the carried (1, 1, 28, 28)
    assert report.after.params < report.before.params
    assert report.before.flops and report.after.flops and report.after.flops < report.before.flops
    assert report.before.latency_ms is None  # random inputs are not timed
    assert any("the model carries (1, 1, 28, 28)" in n for n in report.notes)
    bare = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    with pytest.raises(pk.DataError, match="pass example_inputs="):  # nothing carried: nothing guessed
        pk.prune(bare, "l1-channel", sparsity=0.5)


def test_an_nm_pattern_alone_fixes_the_sparsity():
    """``pattern="2:4"`` without ``sparsity``: every group of 4 input weights keeps 2 (sparsity 0.5)."""
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    pk.prune(model, "magnitude", pattern="2:4", measure=False)
    pk.squash_masks_(model)
    w = model[0].weight
    assert torch.equal((w.reshape(-1, 4) != 0).sum(1), torch.full((w.numel() // 4,), 2))
    assert bool(torch.all(model[2].weight != 0))  # the classifier stays dense by default
    with pytest.raises(pk.InvalidSparsityError, match="N:M pattern, which fixes it"):
        pk.prune(ThreeLayer(), "magnitude", measure=False)
    for pruner, pattern in ((pk.Pruner("magnitude"), "2:4"), (pk.Pruner("magnitude", granularity="2:4"), None)):
        model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
        pk.prune(model, pruner, pattern=pattern, measure=False)
        assert float((model[0].weight == 0).float().mean()) == 0.5


def test_a_target_tied_to_a_tensor_outside_it_is_refused():
    """A head tied to the input embedding: masking the head would prune the embedding too once squashed."""
    import transformers

    cfg = transformers.LlamaConfig(
        hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, num_hidden_layers=1,
        vocab_size=64, tie_word_embeddings=True,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    before = snapshot(model)
    with pytest.raises(pk.ConfigError, match="lm_head.weight is the same tensor as model.embed_tokens.weight"):
        pk.prune(model, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    assert_unchanged(model, before)
    assert pk.targets.tied_outside(model, [model.lm_head]) == [("lm_head.weight", "model.embed_tokens.weight")]
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)  # the head left dense: the decoder is pruned
    assert model.lm_head.weight is model.model.embed_tokens.weight
    shared = nn.Linear(8, 8)  # one module called twice is not a tie
    twice = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(8, 2))
    pk.prune(twice, "magnitude", sparsity=0.5, measure=False)
    assert float((twice[0].weight == 0).float().mean()) == 0.5


@pytest.mark.parametrize("method", ["magnitude", "l2-channel", "wanda"])
def test_a_model_on_the_meta_device_is_refused_before_anything_runs(method):
    with torch.device("meta"):
        model = SmallCNN()
    with pytest.raises(pk.ModelError, match=r"meta device \(conv1.weight, ...\).*Load them first"):
        pk.prune(model, method, sparsity=0.5, example_inputs=torch.randn(1, 4, 8, 8), calibration=[])
    assert all(t.device.type == "meta" for t in model.state_dict().values())
