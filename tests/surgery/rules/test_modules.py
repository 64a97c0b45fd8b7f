"""Tests of :mod:`prunekit.surgery.rules.modules`: recurrent layers, and ignored modules traced as closed boxes.

A recurrent layer's hidden unit j lives in rows g*H + j of every gate, column j of the recurrent weights and
columns d*H + j of the next layer: removing it must keep what the other units compute. A module named by
``ignore=`` is not looked into at all, so an operation the tracer does not know inside it no longer refuses.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)
from prunekit.surgery.engine import analyze
from prunekit.surgery.graph import trace_groups

from .conftest import expect, units


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _flat_weights_follow(rnn: nn.RNNBase) -> bool:
    """The forward reads ``_flat_weights``: they must be the module's own parameters."""
    return all(w is getattr(rnn, n) for w, n in zip(rnn._flat_weights, rnn._flat_weights_names))


# ------------------------------------------------------------------ the rules, on hand-worked cases


class Recurrent(nn.Module):
    def __init__(self, proj_size: int = 0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(2, 3, batch_first=True, proj_size=proj_size)
        self.fc = nn.Linear(proj_size or 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.lstm(x)[0][:, -1])


def test_lstm_hidden_unit_j_is_row_j_of_every_gate() -> None:
    tr = trace_groups(Recurrent(), torch.randn(1, 4, 2))

    def gates(j: int) -> list[int]:
        return [j, 3 + j, 6 + j, 9 + j]  # input, forget, cell, output gates

    assert units(tr, "lstm.weight_hh_l0", 1) == expect(
        *[
            {
                "lstm.weight_ih_l0:0": gates(j),
                "lstm.weight_hh_l0:0": gates(j),
                "lstm.weight_hh_l0:1": [j],
                "lstm.bias_ih_l0:0": gates(j),
                "lstm.bias_hh_l0:0": gates(j),
                "fc.weight:1": [j],
            }
            for j in range(3)
        ]
    )


def test_lstm_with_proj_size_is_kept_whole() -> None:
    tr = trace_groups(Recurrent(proj_size=2), torch.randn(1, 4, 2))
    assert not any(tr.group_of("lstm.weight_hh_l0", 0).removable)
    assert any("is kept whole: it has proj_size" in n for n in tr.notes)


def test_an_ignored_module_is_not_looked_into_and_its_neighbours_keep_their_sizes() -> None:
    tr = trace_groups(Recurrent(), torch.randn(1, 4, 2), opaque=["lstm"])
    assert tr.group_of("lstm.weight_hh_l0", 1) is None  # no atom inside the closed box
    assert units(tr, "fc.weight", 1) == expect(*[{"fc.weight:1": [j]} for j in range(3)], removable=False)
    assert any("module 'lstm' (LSTM) is ignored" in n for n in tr.notes)


# -------------------------------------------------------------------- recurrent layers, end to end


class Encoder(nn.Module):
    """Linear -> recurrent layer -> Linear head on the last step (no normalisation over the hidden units)."""

    def __init__(
        self,
        cell: type[nn.RNNBase],
        d_in: int = 12,
        hidden: int = 16,
        layers: int = 2,
        bidirectional: bool = False,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, 20)
        self.rnn = cell(20, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 5)
        self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(torch.relu(self.proj(x)))
        return self.head(h[:, -1] if self.batch_first else h[-1])


RNN_CASES = [
    (cell, layers, bidir, bf)
    for cell in (nn.RNN, nn.LSTM, nn.GRU)
    for layers, bidir, bf in ((1, False, True), (2, False, False), (2, True, True))
]


@pytest.mark.parametrize("cell,layers,bidir,batch_first", RNN_CASES)
def test_hidden_units_leave_every_gate_and_zero_units_change_nothing(cell, layers, bidir, batch_first) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = Encoder(cell, layers=layers, bidirectional=bidir, batch_first=batch_first).eval()
    x = torch.randn(3, 7, 12) if batch_first else torch.randn(7, 3, 12)
    # zero every slice of half the hidden units: l2 then removes exactly those, and the outputs must not move
    trace = analyze(model, x, opaque=["proj"])
    group = trace.group_of("rnn.weight_hh_l0", 1)
    assert group is not None and all(group.removable)
    assert group.size == 16
    with torch.no_grad():
        for unit in range(0, 16, 2):
            for (param, dim), idx in group.classes[unit].items():
                model.get_parameter(param).index_fill_(dim, torch.as_tensor(idx), 0.0)
        before = model(x)
    report = pk.prune(
        model,
        "l2-channel",
        sparsity=0.5,
        example_inputs=x,
        ignore=["proj"],
        prune_classifier=True,
        measure_latency=False,
    )
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cell]
    nd = 2 if bidir else 1
    rnn = model.rnn
    assert rnn.hidden_size == 8 and rnn.input_size == 20
    for layer in range(layers):
        for s in ["", "_reverse"][:nd]:
            assert tuple(getattr(rnn, f"weight_ih_l{layer}{s}").shape) == (gates * 8, 20 if layer == 0 else nd * 8)
            assert tuple(getattr(rnn, f"weight_hh_l{layer}{s}").shape) == (gates * 8, 8)
            assert tuple(getattr(rnn, f"bias_ih_l{layer}{s}").shape) == (gates * 8,)
    assert model.head.in_features == nd * 8
    assert tuple(model.proj.weight.shape) == (20, 12)  # ignored: kept whole
    assert _flat_weights_follow(rnn)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
    assert any("hidden units 16 -> 8" in n for n in report.notes)


def test_initial_state_and_packed_sequence_follow_the_hidden_units() -> None:
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h0 = nn.Linear(4, 16)
            self.c0 = nn.Linear(4, 16)
            self.lstm = nn.LSTM(6, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True)
            state = (self.h0(z).unsqueeze(0), self.c0(z).unsqueeze(0))
            _, (h, _c) = self.lstm(packed, state)
            return self.head(h[-1])

    torch.manual_seed(0)
    model = WithState().eval()
    x, z = torch.randn(2, 5, 6), torch.randn(2, 4)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=(x, z), measure_latency=False)
    assert model.lstm.hidden_size == 8
    assert model.h0.out_features == model.c0.out_features == 8 and model.head.in_features == 8
    assert model(x, z).shape == (2, 3)


def test_fixed_initial_state_keeps_the_layer_whole_and_says_so() -> None:
    class FixedState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 10)
            self.gru = nn.GRU(10, 16, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, _ = self.gru(self.proj(x), torch.zeros(1, x.shape[0], 16))  # a size the code hard-codes
            return self.head(h[:, -1])

    model = FixedState().eval()
    x = torch.randn(2, 5, 6)
    report = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    assert model.gru.hidden_size == 16 and model.gru.input_size == 5 and model.proj.out_features == 5
    assert any("gru (GRU): kept whole, hidden_size 16" in n for n in report.notes)
    assert model(x).shape == (2, 3)


@pytest.mark.filterwarnings("ignore:LSTM with projections")
def test_lstm_with_projection_is_kept_whole() -> None:
    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 10)
            self.lstm = nn.LSTM(10, 16, proj_size=8, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(self.proj(x))[0][:, -1])

    model = Projected().eval()
    x = torch.randn(2, 5, 6)
    before = _state(model)
    with pytest.raises(pk.NothingToPruneError):  # proj feeds the LSTM, which keeps every size
        pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    assert _same(before, _state(model))
    trace = analyze(model, x)
    assert any("lstm' (LSTM) is kept whole: it has proj_size" in n for n in trace.notes)


# ----------------------------------------------------------------- the field case: LSTM, LayerNorm, head


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32)
        self.lstm = nn.LSTM(32, 64, num_layers=2, batch_first=True)
        self.ln = nn.LayerNorm(64)
        self.fc = nn.Linear(64, 48)
        self.head = nn.Linear(48, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(torch.relu(self.proj(x)))
        return self.head(torch.relu(self.fc(self.ln(h[:, -1]))))


def test_lstm_encoder_loses_hidden_units_and_says_so() -> None:
    torch.manual_seed(0)
    model = LSTMNet().eval()
    x = torch.randn(3, 10, 32)
    n0 = sum(p.numel() for p in model.parameters())
    report = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    lstm = model.lstm
    assert lstm.hidden_size == 32 and lstm.input_size == 16
    for layer in range(2):
        assert tuple(getattr(lstm, f"weight_ih_l{layer}").shape) == (128, 16 if layer == 0 else 32)
        assert tuple(getattr(lstm, f"weight_hh_l{layer}").shape) == (128, 32)
    assert model.ln.normalized_shape == (32,) and model.fc.in_features == 32 and model.proj.out_features == 16
    assert sum(p.numel() for p in model.parameters()) < n0
    assert model(torch.randn(4, 7, 32)).shape == (4, 6)
    assert (
        "lstm (LSTM): hidden units 64 -> 32 (every gate, the recurrent weights and the next layer's inputs)"
        in report.notes
    )


@pytest.mark.parametrize("ignore", ["name", "module", "filter_fn"])
def test_ignored_lstm_is_kept_whole_by_name_object_or_filter(ignore) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = LSTMNet().eval()
    x = torch.randn(3, 10, 32)
    lstm_before = {k: v.clone() for k, v in model.lstm.state_dict().items()}
    arg = {"name": ["lstm"], "module": [model.lstm], "filter_fn": lambda m, n: isinstance(m, nn.LSTM)}[ignore]
    report = pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, ignore=arg, measure_latency=False)
    assert _same(lstm_before, model.lstm.state_dict())
    assert model.lstm.hidden_size == 64 and model.lstm.input_size == 32
    # its inputs and outputs keep their sizes
    assert model.proj.out_features == 32 and model.ln.normalized_shape == (64,)
    assert model.fc.out_features == 24  # the rest is pruned
    assert any("lstm (LSTM): kept whole" in n for n in report.notes)
    assert model(torch.randn(4, 7, 32)).shape == (4, 6)


# ------------------------------------------------------------------ ignored modules, end to end


def test_ignored_module_is_not_traced_and_its_parameters_keep_their_sizes() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.inner = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
            self.b = nn.Linear(8, 8)
            self.d = nn.Linear(8, 12)
            self.c = nn.Linear(12, 3)
            self.b.weight = self.inner[0].weight  # shared with the ignored module

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.relu(self.d(torch.relu(self.b(self.inner(self.a(x)))))))

    model = Tied().eval()
    x = torch.randn(2, 8)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, ignore=["inner"], measure_latency=False)
    assert tuple(model.inner[0].weight.shape) == (8, 8) and model.a.out_features == 8
    assert model.b.weight is model.inner[0].weight and model.b.out_features == 8  # tied to it: kept
    assert model.d.out_features == 6
    assert model(x).shape == (2, 3)
