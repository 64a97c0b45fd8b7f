"""Dependency tracing, physical channel removal, criteria and allocation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.calibration import collect
from prunekit.criteria import criteria_for, resolve_criterion
from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.surgery import (
    HANDLERS,
    ModuleHandler,
    UnitScorer,
    UnitSet,
    allocate_units,
    analyze,
    apply_plan_,
    apply_structure_record,
    plan_channels,
    structural_allocation,
    structure_record,
)
from prunekit.allocation.units import remove_lowest
from prunekit.surgery.engine import group_unit_sets
from prunekit.surgery.remove import tensor_slots


class Custom(nn.Module):
    """Concatenation, grouped and depthwise convolution, PReLU, a layer-scale parameter, a residual add,
    a transposed convolution and a flatten into a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 8, 1)
        self.g = nn.Conv2d(24, 24, 3, padding=1, groups=4)
        self.gbn = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 48, 3, padding=1, groups=24)
        self.prelu = nn.PReLU(48)
        self.pw = nn.Conv2d(48, 16, 1)
        self.scale = nn.Parameter(torch.rand(16, 1, 1) + 0.5)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.head = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        y = torch.cat([self.a(x), self.b(x)], 1)
        z = F.relu(self.gbn(self.g(y)))
        z = self.prelu(self.dw(z))
        z = self.pw(z) * self.scale + x
        z = self.head(self.up(z))
        z = F.adaptive_avg_pool2d(z, 4).flatten(1)
        return self.fc(z)


def _randomize_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


def _zero_planned(model: nn.Module, plan) -> None:  # noqa: ANN001
    """Set every parameter slice of the units the plan removes to zero."""
    slots = tensor_slots(model)
    with torch.no_grad():
        for key, dims in plan.removal().items():
            t = getattr(slots[key][0].module, slots[key][0].attr)
            if not isinstance(t, nn.Parameter):
                continue
            for d, idx in dims.items():
                t.index_fill_(d, torch.as_tensor(idx, dtype=torch.long), 0.0)


MODELS = {
    "custom": (lambda: Custom(), (1, 3, 16, 16)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (1, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (1, 3, 32, 32)),
    "densenet121": (lambda: torchvision.models.densenet121(num_classes=10), (1, 3, 32, 32)),
    "shufflenet_v2_x0_5": (lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=10), (1, 3, 32, 32)),
    "resnext50_32x4d": (lambda: torchvision.models.resnext50_32x4d(num_classes=10), (1, 3, 32, 32)),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_removing_zero_channels_keeps_outputs(name: str) -> None:
    torch.manual_seed(0)
    build, shape = MODELS[name]
    model = build().eval()
    _randomize_bn(model)
    x = torch.randn(shape)
    plan = plan_channels(model, x, 0.5)
    assert plan.units_removed > 0
    _zero_planned(model, plan)
    with torch.no_grad():
        before = model(x)
    n0 = sum(p.numel() for p in model.parameters())
    apply_plan_(model, plan)
    with torch.no_grad():
        after = model(x)
    assert after.shape == before.shape
    assert sum(p.numel() for p in model.parameters()) < n0
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


def test_custom_model_attributes_follow_the_tensors() -> None:
    torch.manual_seed(0)
    model = Custom().eval()
    x = torch.randn(1, 3, 16, 16)
    plan = plan_channels(model, x, 0.5)
    apply_plan_(model, plan)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.weight.shape[0] == m.out_channels
            assert m.weight.shape[1] * m.groups == m.in_channels
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.weight.shape[0] == m.running_mean.shape[0]
    assert model.g.groups == 4  # grouped: channels removed uniformly inside every group
    assert model.dw.groups == model.dw.in_channels and model.dw.out_channels == 2 * model.dw.groups
    assert model.prelu.num_parameters == model.prelu.weight.numel() == model.dw.out_channels
    assert model.scale.shape[0] == model.pw.out_channels == model.stem.out_channels
    assert model.fc.in_features == model.head.out_channels * 16
    assert model.fc.out_features == 10
    assert model(x).shape == (1, 10)


def test_resnet_residual_channels_form_one_group() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    tr = analyze(model, torch.randn(1, 3, 32, 32))
    g = tr.group_of("conv1.weight", 0)
    assert g is not None
    keys = {(m.param, m.dim) for m in g.members}
    for k in [("bn1.weight", 0), ("layer1.0.conv2.weight", 0), ("layer1.1.conv2.weight", 0),
              ("layer1.0.conv1.weight", 1), ("layer2.0.downsample.0.weight", 1)]:
        assert k in keys
    assert g.size == 64
    # the classifier's outputs are model outputs: never removable
    assert tr.group_of("fc.weight", 0) is None or not any(tr.group_of("fc.weight", 0).removable)


def test_constant_split_sizes_are_kept() -> None:
    class Splitter(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(4, 4, 1)
            self.c = nn.Conv2d(4, 4, 1)
            self.d = nn.Conv2d(4, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y1, y2 = torch.split(self.a(x), [4, 4], dim=1)
            return self.d(self.b(y1) + self.c(y2))

    model = Splitter()
    x = torch.randn(1, 3, 8, 8)
    tr = analyze(model, x)
    assert not any(tr.group_of("a.weight", 0).removable)
    plan = plan_channels(model, x, 0.5)
    apply_plan_(model, plan)
    assert model.a.out_channels == 8 and model.b.out_channels == 2
    assert model(x).shape == (1, 4, 8, 8)


def test_unknown_operation_is_refused_naming_module_and_op() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.out = nn.Conv2d(8, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            y = torch.fft.fft(y, dim=1).real
            return self.out(y)

    model = Odd()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(UnsupportedModuleError, match="fft") as err:
        plan_channels(model, torch.randn(1, 3, 4, 4), 0.5)
    assert "'<model>' (Odd)" in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_handler_registration_is_validated() -> None:
    with pytest.raises(ConfigError):
        HANDLERS.add("bad-handler", object())  # type: ignore[arg-type]

    class NoTypes(ModuleHandler):
        pass

    with pytest.raises(ConfigError, match="names no module types"):
        HANDLERS.add("no-types", NoTypes())


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


def test_allocations() -> None:
    scores = [np.array([5.0, 1, 3, 2]), np.arange(16, dtype=float)]
    rem = [np.ones(4, bool), np.ones(16, bool)]
    assert remove_lowest(scores[0], rem[0], 0.5).tolist() == [1, 3]
    assert remove_lowest(scores[1], rem[1], 0.5).tolist() == list(range(8))
    assert len(remove_lowest(scores[1], rem[1], 0.5, round_to=8)) == 8
    assert len(remove_lowest(scores[0], rem[0], 0.5, round_to=8)) == 2
    assert 20 - len(remove_lowest(np.arange(20.0), np.ones(20, bool), 0.5, round_to=8)) == 16
    sizes = [np.ones(4), np.ones(16)]
    gl, per = allocate_units(["a", "b"], scores, sizes, rem, 0.5, structural_allocation("global", 0.5, 0.5))
    assert all(len(x) <= 0.5 * len(s) for x, s in zip(gl, scores)) and max(per.values()) <= 0.5
    with pytest.raises(ConfigError, match=r"global_cap must be in \(0, 1\)"):
        structural_allocation("global", 0.5, 1.5)
    with pytest.raises(ConfigError, match="allocation='global'"):  # the cap means nothing to another allocation
        structural_allocation("uniform", 0.5, 0.5)
    assert structural_allocation("global", 0.3).max_sparsity == pytest.approx(0.6)  # the default min(0.9, 2 s)
    assert structural_allocation(pk.Global(max_sparsity=0.4), 0.3).max_sparsity == 0.4  # one meaning of the cap


def test_structure_record_round_trip(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pk.prune(model, "l1-channel", sparsity=0.4, example_inputs=x, round_to=8, measure=False)
    rec = structure_record(model)
    assert rec is not None and rec["shapes"]
    fresh = apply_structure_record(torchvision.models.mobilenet_v2(num_classes=10), rec)
    fresh.load_state_dict(model.state_dict(), strict=True)
    torch.testing.assert_close(fresh.eval()(x), model(x))
    pk.save_model(model, tmp_path / "m")
    loaded = pk.load_model(tmp_path / "m", model=torchvision.models.mobilenet_v2(num_classes=10)).eval()
    torch.testing.assert_close(loaded(x), model(x))
    assert structure_record(torchvision.models.mobilenet_v2()) is None


def test_load_model_rebuilds_a_pruned_torchvision_model_from_its_source(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = pk.build_model("torchvision:resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 32, 32)
    pk.prune(model, "l1-channel", sparsity=0.5, example_inputs=x, measure=False)
    pk.save_model(model, tmp_path / "m")
    loaded = pk.load_model(tmp_path / "m").eval()
    assert loaded.layer1[0].conv1.out_channels == model.layer1[0].conv1.out_channels < 64
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def _with_gradient(w: torch.Tensor, g: torch.Tensor) -> tuple[nn.Linear, object]:
    """A Linear with weight ``w`` and a calibration loss whose gradient for that weight is exactly ``g``."""
    lin = _rows(w.tolist())
    return lin, lambda m: (m.weight * g).sum()


def test_taylor_is_the_squared_sum_of_gradient_times_weight_over_the_unit() -> None:
    lin, loss = _with_gradient(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]),
                               torch.tensor([[1.0, 1.0], [1.0, 3.0], [-2.0, 2.0]]))
    # (1 + 2)^2, (3 - 3)^2, (-1 + 1)^2: signed sums, so opposite contributions cancel
    np.testing.assert_allclose(_unit_scores(lin, "taylor", calibration=loss), [9.0, 0.0, 0.0])


def test_obd_is_half_the_fisher_diagonal_times_squared_weights() -> None:
    lin, loss = _with_gradient(torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]),
                               torch.tensor([[1.0, 1.0], [1.0, 3.0], [-2.0, 2.0]]))
    # h_ii ~ sum of g^2 over the batches (here one); per unit the mean over its 2 weights:
    # 0.5 * (1*1 + 1*4) / 2, 0.5 * (1*9 + 9*1) / 2, 0.5 * (4*.25 + 4*.25) / 2
    np.testing.assert_allclose(_unit_scores(lin, "hessian", calibration=loss), [1.25, 4.5, 0.5])


def test_gradient_criteria_accumulate_over_calibration_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    batches = [(torch.randn(5, 4), torch.randint(0, 2, (5,))) for _ in range(2)]
    st = collect(model, {"0": model[0]}, {"grad", "grad_sq"}, batches)["0"]
    grads = [torch.autograd.grad(F.cross_entropy(model(x), y), model[0].weight)[0] for x, y in batches]
    torch.testing.assert_close(st.grad, grads[0] + grads[1])
    torch.testing.assert_close(st.grad_sq, grads[0].square() + grads[1].square())
    for name in ("taylor-channel", "hessian-channel"):
        m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        pk.prune(m, name, sparsity=0.5, example_inputs=torch.randn(1, 4), calibration=batches, measure=False)
        assert m[0].out_features == 4 and m[2].in_features == 4


def test_global_allocation_on_resnet_respects_the_cap() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():  # make most channels of one group much weaker, so that global ranking targets it
        blk = model.layer2[0]
        blk.conv1.weight[:100].mul_(0.01)
        blk.bn1.weight[:100].mul_(0.01)
        blk.bn1.bias[:100].mul_(0.01)
        blk.conv2.weight[:, :100].mul_(0.01)
    x = torch.randn(1, 3, 32, 32)
    plan = plan_channels(model, x, 0.4, allocation="global", global_cap=0.6)
    fractions = [len(r) / g.size for g, r in zip(plan.groups, plan.remove)]
    assert max(fractions) <= 0.6 + 1e-9
    assert len({round(f, 3) for f in fractions}) > 1  # not uniform
    sizes = [u.sizes for u in UnitScorer(model, resolve_criterion("l2")).score(group_unit_sets(plan.groups))]
    removed = sum(z[r].sum() for z, r in zip(sizes, plan.remove)) / sum(z.sum() for z in sizes)
    assert 0.37 <= removed <= 0.4 + 1e-9  # the budget is counted in weights (each group's count rounds down)
    weak = plan.groups.index(next(g for g in plan.groups if any(m.param == "layer2.0.conv1.weight" and m.dim == 0
                                                                     for m in g.members)))
    assert fractions[weak] == pytest.approx(int(0.6 * 128) / 128)  # the weak layer is stopped at the cap
    apply_plan_(model, plan)
    assert model(x).shape == (1, 10)


def test_round_to_8_gives_channel_counts_that_are_multiples_of_8() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    before = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pk.prune(model, "l2-channel", sparsity=0.3, example_inputs=x, round_to=8, measure=False)
    after = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    changed = [n for n in after if after[n] != before[n]]
    assert changed
    assert all(after[n] % 8 == 0 for n in changed)
    assert model(x).shape == (1, 10)


class HardCoded(nn.Module):
    """A reshape whose channel count is written in the code: removing conv2's channels would break it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.reshape(x.shape[0], 16, -1).mean(-1))


@pytest.mark.parametrize("how", ["apply", "validate_first"])
def test_groups_the_code_fixes_are_found_and_kept(how: str) -> None:
    from prunekit.surgery.engine import validate_plan

    torch.manual_seed(0)
    model = HardCoded().eval()
    x = torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, 0.5)
    assert len(plan.groups) == 2 and plan.units_removed == 16
    conv1_w = model.conv1.weight
    if how == "validate_first":
        assert validate_plan(model, plan) and plan.units_removed == 8
        assert model.conv1.weight is conv1_w and model.conv2.weight.shape[0] == 16  # nothing changed
    apply_plan_(model, plan)
    assert model.conv1.out_channels == 8 and model.conv2.out_channels == 16
    assert any("kept because the model's code fixes their size" in n for n in plan.notes)
    assert model(x).shape == (2, 10)
    # through the API: the same, and the report says so
    model2 = HardCoded().eval()
    rep = pk.prune(model2, "l2-channel", sparsity=0.5, example_inputs=x)
    assert model2.conv1.out_channels == 8 and model2.conv2.out_channels == 16
    assert any("fixes their size" in n for n in rep.notes)


def test_allocations_split_a_concatenation_by_producer() -> None:
    # units 0-3 come from one layer, 4-11 from another; the first layer's units all score lower
    scores = np.arange(12, dtype=float)
    rem = np.ones(12, bool)
    seg = np.array([0] * 4 + [1] * 8)
    assert remove_lowest(scores, rem, 0.5, segments=seg).tolist() == [0, 1, 4, 5, 6, 7]  # half of each segment
    assert remove_lowest(scores, rem, 0.5).tolist() == [0, 1, 2, 3, 4, 5]  # no segments
    g, _ = allocate_units(["cat"], [scores], [np.ones(12)], [rem], 0.5, structural_allocation("global", 0.5, 0.5),
                          segments=[seg])
    assert g[0].tolist() == [0, 1, 4, 5, 6, 7]  # the share holds per segment: segment 0 keeps two units


class Concat(nn.Module):
    """Two branches concatenated into one consumer; branch b's weights are 100x larger than branch a's."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.head = nn.Conv2d(24, 4, 1)
        with torch.no_grad():
            self.b.weight.mul_(100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))))


def test_a_concatenation_loses_the_same_share_of_every_branch() -> None:
    torch.manual_seed(0)
    model = Concat().eval()
    x = torch.randn(1, 3, 8, 8)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, prune_classifier=False, measure=False)
    assert (model.a.out_channels, model.b.out_channels, model.bn.num_features, model.head.in_channels) == (4, 8, 12, 12)
    assert model(x).shape == (1, 4, 8, 8)


def test_a_restride_that_keeps_the_tensor_keeps_the_coupling() -> None:
    """ConvNeXt's head: LayerNorm over permuted channels, then pooling; the pooling kernel restrides its
    (N, C, 1, 1) result in place, which must not cut the channels off the classifier."""
    from torchvision.models.convnext import LayerNorm2d

    model = nn.Sequential(nn.Conv2d(3, 8, 3), LayerNorm2d(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(8, 4))
    tr = analyze(model.eval(), torch.randn(1, 3, 16, 16))
    g = tr.group_of("0.weight", 0)
    assert g is not None
    assert {(m.param, m.dim) for m in g.members} >= {("1.weight", 0), ("4.weight", 1)} and all(g.removable)


class Reinterpret(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))  # (N, 8)
        y = torch.as_strided(y, (y.shape[0], 4), (8, 2))  # every other channel: the size is in the code
        return torch.cat([y, y], 1) @ self.fc.weight.t()


def test_a_strided_view_that_reinterprets_memory_fixes_the_channels() -> None:
    tr = analyze(Reinterpret().eval(), torch.randn(2, 3, 8, 8))
    g = tr.group_of("conv.weight", 0)
    assert g is not None and not any(g.removable)


def test_report_per_layer_rows_say_what_was_removed() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    rep = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=torch.randn(1, 3, 32, 32), measure_latency=False)
    row = {r.name: r for r in rep.layers}["layer1.0.conv1"]
    assert row.shape_before == (64, 64, 3, 3) and row.shape == (32, 32, 3, 3)
    assert row.removed == pytest.approx(0.75) and row.target == pytest.approx(0.5) and row.sparsity == 0.0
    fc = {r.name: r for r in rep.layers}["fc"]
    assert fc.shape_before == (10, 512) and fc.removed == pytest.approx(0.5)
    text = str(rep)
    assert "weights removed" in text and "64x64x3x3 ->" in text
    again = pk.Report.from_dict(rep.to_dict())
    assert {r.name: r.removed for r in again.layers} == {r.name: r.removed for r in rep.layers}


class _FixedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y.reshape(y.shape[0], 16, -1).mean(-1)  # the width is written in the code


class _Nested(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.block = _FixedBlock()
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(torch.relu(self.conv2(torch.relu(self.conv1(x))))))


def test_a_failing_submodule_points_at_the_groups_that_break_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import prunekit.surgery.engine as eng

    torch.manual_seed(0)
    model = _Nested().eval()
    x = torch.randn(2, 3, 8, 8)
    plan = plan_channels(model, x, 0.5)
    assert plan.units_removed == 24
    # the failing forward names the module it failed in (one with a tensor in the culprit group)
    from prunekit.apply.transaction import restore_tree, snapshot_tree
    from prunekit.surgery.remove import remove_

    snap = snapshot_tree(model)
    remove_(model, plan.removal())
    where: list[str] = []
    # the hard-coded reshape still runs on 8 channels but hands fc 16 features: fc is where it breaks
    assert not eng.still_runs(model, plan.check_inputs, plan.check_shapes, where) and where == ["fc"]
    restore_tree(snap)
    assert not torch.nn.modules.module._global_forward_hooks  # the tracking hooks are gone
    # following the error needs fewer probes than bisecting blindly, and finds the same group
    calls = {"n": 0}
    real = eng._probe

    def counting(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(eng, "_probe", counting)
    apply_plan_(model, plan)
    assert (model.conv1.out_channels, model.conv2.out_channels, model.block.conv.out_channels) == (8, 8, 16)
    assert model(x).shape == (2, 10)
    assert calls["n"] <= 4
