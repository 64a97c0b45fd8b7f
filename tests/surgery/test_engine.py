"""Tests of :mod:`prunekit.surgery.engine`: channel groups analysed, planned and removed physically (outputs
kept when the removed channels are zero), sizes the code fixes found and kept, allocation over groups."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.criteria import resolve_criterion
from prunekit.errors import UnsupportedModuleError
from prunekit.surgery import (
    UnitScorer,
    analyze,
    apply_plan_,
    plan_channels,
)
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
    for k in [
        ("bn1.weight", 0),
        ("layer1.0.conv2.weight", 0),
        ("layer1.1.conv2.weight", 0),
        ("layer1.0.conv1.weight", 1),
        ("layer2.0.downsample.0.weight", 1),
    ]:
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
    weak = plan.groups.index(
        next(g for g in plan.groups if any(m.param == "layer2.0.conv1.weight" and m.dim == 0 for m in g.members))
    )
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


def test_a_failing_submodule_points_at_the_groups_that_break_it() -> None:
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
    hook = model.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))  # a probe: one run
    apply_plan_(model, plan)
    hook.remove()
    assert (model.conv1.out_channels, model.conv2.out_channels, model.block.conv.out_channels) == (8, 8, 16)
    assert model(x).shape == (2, 10)
    assert 1 <= calls["n"] <= 4
