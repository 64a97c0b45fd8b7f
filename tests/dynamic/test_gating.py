"""FBS and CGNet run-time channel gating: exact at zero, top-k per input, MAC counts, trainer, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.dynamic.gating import CGGate, FBSGate, add_cgnet_, add_fbs_, count_macs
from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.train import TrainConfig, Trainer


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return pk.build_model("prunekit:resnet-small").eval()


def _x(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))


@torch.no_grad()
@pytest.mark.parametrize("kind", ["fbs", "cgnet"])
def test_zero_gating_is_exact_and_remove_restores(kind):
    m, x = _resnet(), _x()
    dense, keys = m(x), set(m.state_dict())
    net = add_fbs_(m, density=1.0) if kind == "fbs" else add_cgnet_(m, gated_share=0.0)
    assert torch.equal(m(x), dense)
    assert set(m.state_dict()) > keys  # the gates are the model's (trainable) parameters
    net.remove()
    assert torch.equal(m(x), dense) and set(m.state_dict()) == keys


@torch.no_grad()
def test_fbs_keeps_at_most_k_channels_per_input():
    m, x = _resnet(), _x()
    net = add_fbs_(m, density=0.25)
    block = m.layers[1]
    seen = {}
    h = block.bn1.register_forward_hook(lambda mod, a, out: seen.setdefault("out", out))
    gate = net.gates["layers.1.conv1"]
    assert isinstance(gate, FBSGate) and gate.k == 8  # ceil(0.25 * 32)
    torch.nn.init.normal_(gate.fc.weight, generator=torch.Generator().manual_seed(3))  # a trained-looking predictor
    m(x)
    h.remove()
    alive = (seen["out"].flatten(2).abs().amax(2) > 0).sum(1)
    assert alive.max() <= 8 and alive.min() >= 1
    chosen = [set((seen["out"][b].flatten(1).abs().amax(1) > 0).nonzero().flatten().tolist()) for b in range(len(x))]
    assert len({frozenset(c) for c in chosen}) > 1  # different inputs keep different channels
    macs = count_macs(m, x)
    assert macs.mean_share < 0.5 and macs.per_input.shape == (4,)


class _ConvFc(nn.Module):
    """A 2->3 channel 3x3 convolution on 4x4 inputs, then a Linear 12->5: MACs countable by hand."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(self.conv(x).flatten(1))


def test_count_macs_by_hand():
    x = torch.randn(2, 2, 4, 4)
    x[1, 1] = 0  # the second input has one all-zero input channel: data zeros save nothing
    c = count_macs(_ConvFc(), x)
    # conv: 2x2 outputs x 9 taps x 3 out x 2 in; fc: 12 x 5
    assert c.dense == 2 * 2 * 9 * 3 * 2 + 60
    assert c.per_input.tolist() == [c.dense, c.dense]


def test_count_macs_skipping_zero_weights_by_hand():
    net = _ConvFc()
    with torch.no_grad():
        net.conv.weight[0, 0] = 0  # output 0 x input 0: all 9 taps zero
        net.conv.weight[1, 1, 0, :2] = 0  # output 1 x input 1: 2 of 9 taps zero
        net.fc.weight[:, 3] = 0  # input feature 3 meets no weight
        net.fc.weight[0, 0] = 0
    x = torch.randn(2, 2, 4, 4)
    x[1, 1] = 0  # the second input has an all-zero input channel: it saves nothing
    c = count_macs(net, x, skip_zero_weights=True)
    conv_nnz = 9 * 3 * 2 - 9 - 2
    fc = 12 * 5 - 5 - 1
    assert c.per_input.tolist() == [4 * conv_nnz + fc, 4 * conv_nnz + fc]
    assert count_macs(net, x).per_input.tolist() == [c.dense, c.dense]  # a dense kernel multiplies the zeros
    assert c.dense == count_macs(net, x).dense == 2 * 2 * 9 * 3 * 2 + 60  # the reference keeps every weight


@torch.no_grad()
def test_count_macs_skipping_zero_weights_equals_the_default_without_zero_weights_fbs():
    m, x = _resnet(), _x()
    net = add_fbs_(m, density=0.25)
    for gate in net.gates.values():  # trained-looking predictors
        torch.nn.init.normal_(gate.fc.weight, generator=torch.Generator().manual_seed(3))
    skipping, default = count_macs(m, x, skip_zero_weights=True), count_macs(m, x)
    assert torch.equal(skipping.per_input, default.per_input) and skipping.mean_share < 0.5
    assert net.skipped_share() == 0.75  # every gated layer computes a quarter of its channels


@torch.no_grad()
def test_count_macs_skipping_zero_weights_on_cgnet_reads_the_first_p_input_channels():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    torch.manual_seed(0)
    m, x = Net().eval(), torch.randn(3, 8, 5, 5).abs() + 0.1
    net = add_cgnet_(m, gated_share=0.5, base=0.25)
    next(iter(net.gates.values())).delta.fill_(0.5)
    skipping, default = count_macs(m, x, skip_zero_weights=True), count_macs(m, x)
    assert torch.allclose(skipping.per_input, default.per_input, rtol=1e-12)  # no zero weight, no zero input
    share = net.skipped_share()
    assert share is not None and 0 < share < 1
    conv = 5 * 5 * 9 * 4 * (2 + (1 - share) * 6)  # partial sum over 2 of 8 input channels, the rest where open
    assert torch.allclose(skipping.per_input.mean(), torch.tensor(conv + 12, dtype=torch.float64))
    x[0, 1] = 0  # an all-zero channel among the first p is still read: data zeros save nothing
    skipping, default = count_macs(m, x, skip_zero_weights=True), count_macs(m, x)
    open_ch = next(iter(net.gates.values())).last_open_channels
    assert open_ch is not None
    by_hand = 5 * 5 * 9 * (2 + open_ch * 6).sum(1) + 12  # per input, from the gates' own decisions
    assert torch.allclose(default.per_input, by_hand.double()) and torch.allclose(skipping.per_input, by_hand.double())


def _blank_and_relu_zeros(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0] = 0  # a blank input
    x[1, ..., : x.shape[-1] // 2] = 0  # half of the pixels blank
    return x


@torch.no_grad()
@pytest.mark.parametrize("spec", ["prunekit:lenet-300-100", "prunekit:resnet-small"])
def test_a_dense_network_costs_exactly_its_dense_macs_whatever_the_data(spec):
    torch.manual_seed(0)
    m = pk.build_model(spec).eval()
    x = _blank_and_relu_zeros(_x())
    for skip in (False, True):  # ReLU zeros and blank pixels are data, never a saving
        c = count_macs(m, x, skip_zero_weights=skip)
        assert c.per_input.tolist() == [c.dense] * len(x)
    if spec == "prunekit:lenet-300-100":
        assert c.dense == 784 * 300 + 300 * 100 + 100 * 10


@torch.no_grad()
def test_zero_weights_save_only_when_skipped():
    torch.manual_seed(0)
    m = pk.build_model("prunekit:lenet-300-100").eval()
    g = torch.Generator().manual_seed(2)
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    for lin in linears:  # an unstructured mask, about half the weights
        lin.weight.mul_((torch.rand(lin.weight.shape, generator=g) > 0.5).float())
    x = _blank_and_relu_zeros(_x())
    kernel, sparse = count_macs(m, x), count_macs(m, x, skip_zero_weights=True)
    nonzero = sum(int(torch.count_nonzero(lin.weight)) for lin in linears)
    assert kernel.per_input.tolist() == [kernel.dense] * len(x)
    assert sparse.per_input.tolist() == [nonzero] * len(x) and nonzero < 0.6 * kernel.dense


class _Chain(nn.Module):
    """conv1 (ungated) -> conv2 -> conv3 (FBS-gated), each with BN and ReLU, then pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv3, self.bn3 = nn.Conv2d(6, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


@torch.no_grad()
def test_fbs_gates_forced_off_give_the_count_by_hand():
    torch.manual_seed(0)
    m = _Chain().eval()
    net = add_fbs_(m, density=0.5)
    g2, g3 = net.gates["conv2"], net.gates["conv3"]
    assert isinstance(g2, FBSGate) and isinstance(g3, FBSGate) and (g2.k, g3.k) == (3, 2)
    for gate, bias in ((g2, [6.0, 5.0, 4.0, 1.0, 2.0, 3.0]), (g3, [1.0, 4.0, 3.0, 2.0])):
        gate.fc.weight.fill_(1e-3)  # equal rows: the biases rank the channels (conv2 keeps 0, 1, 2; conv3 1, 2)
        gate.fc.bias.copy_(torch.tensor(bias))
    x = _blank_and_relu_zeros(torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(4)))
    pos = 6 * 6 * 9  # output positions x taps
    by_hand = (
        pos * 4 * 1  # conv1: every channel
        + 4 * 6  # conv2's predictor reads conv2's 4 inputs
        + pos * 3 * 4  # conv2: 3 kept outputs from 4 inputs
        + 3 * 4  # conv3's predictor reads the 3 channels conv2 computed
        + pos * 2 * 3  # conv3: 2 kept outputs from the 3 channels conv2 computed
        + 2 * 3  # the head reads the 2 channels conv3 computed
    )
    dense = pos * 4 + pos * 6 * 4 + pos * 4 * 6 + 4 * 3
    for skip in (False, True):  # no zero weight: both counts agree
        c = count_macs(m, x, skip_zero_weights=skip)
        assert c.per_input.tolist() == [by_hand] * len(x) and c.dense == dense
    assert net.skipped_share() == (3 / 6 + 2 / 4) / 2  # the gates' state is the counted pass's, not the probe's
    with torch.no_grad():
        m.conv3.weight[1, 0] = 0  # 9 taps of a kept output on a kept input
        m.conv3.weight[0, 1] = 0  # 9 taps of a suppressed output: not computed anyway
    assert count_macs(m, x, skip_zero_weights=True).per_input.tolist() == [by_hand - 6 * 6 * 9] * len(x)
    assert count_macs(m, x).per_input.tolist() == [by_hand] * len(x)


def test_gating_methods_say_which_models_they_cannot_act_on():
    fbs, cgnet = pk.METHODS.get("fbs"), pk.METHODS.get("cgnet")
    assert fbs.model_problem(_resnet()) is None and cgnet.model_problem(_resnet()) is None
    mlp = pk.build_model("prunekit:lenet-300-100")
    problem = fbs.model_problem(mlp)
    assert problem and "BatchNorm2d" in problem
    with pytest.raises(UnsupportedModuleError) as err:
        add_fbs_(mlp, density=0.5)
    assert str(err.value) == problem  # one message: the check and the installer cannot drift
    assert "Conv2d" in (cgnet.model_problem(mlp) or "")
    assert pk.METHODS.get("magnitude").model_problem(mlp) is None


@torch.no_grad()
def test_cgnet_gate_closed_is_the_partial_sum_and_open_is_dense():
    conv = nn.Conv2d(8, 4, 3, padding=1)
    gate = CGGate(conv, base=0.25).eval()
    x = torch.randn(2, 8, 5, 5)
    full = conv(x)
    gate.delta.fill_(-1e9)
    assert torch.allclose(gate.gate(conv, x, full), full, atol=1e-6)
    gate.delta.fill_(1e9)
    partial = nn.functional.conv2d(x[:, :2], conv.weight[:, :2], conv.bias, padding=1)
    assert torch.allclose(gate.gate(conv, x, full), partial, atol=1e-6)
    assert gate.last_open.tolist() == [0.0, 0.0]


@pytest.mark.parametrize("kind", ["fbs", "cgnet"])
def test_trainer_trains_the_gates(kind):
    m = pk.build_model("prunekit:resnet-small")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    trainer = Trainer(m, (x, y), method=kind, sparsity=0.5, config=TrainConfig(epochs=1, batch_size=32, progress=False))
    trainer.fit()
    net = trainer.callbacks[0].net
    assert net is not None and net.kind == kind
    gate = next(iter(net.gates.values()))
    before = gate.fc.bias if kind == "fbs" else gate.delta
    assert not torch.equal(before, torch.ones_like(before) if kind == "fbs" else torch.zeros_like(before))
    macs = count_macs(m, x[:8])
    assert 0 < macs.mean_share < 1


def test_refusals():
    with pytest.raises(ConfigError, match="Trainer"):
        pk.prune(_resnet(), "fbs", sparsity=0.5)
    no_bn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(UnsupportedModuleError):
        add_fbs_(no_bn, density=0.5)
    m = _resnet()
    with pytest.raises(ConfigError):
        add_fbs_(m, density=0.0)
    add_fbs_(m, density=0.5)
    with pytest.raises(ConfigError, match="already"):
        add_cgnet_(m, gated_share=0.5)
