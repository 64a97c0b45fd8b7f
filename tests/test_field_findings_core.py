"""Regressions for findings of a field trial (new users): each test is small and fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.cli import cli_hint


class _Narrow(nn.Module):
    """conv (4 channels, small |gamma|) -> conv (64 channels, large |gamma|): a global channel ranking by
    bn-scale would take every channel of the narrow layer."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.c2, self.b2 = nn.Conv2d(4, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.fc = nn.Linear(64, 3)
        with torch.no_grad():
            self.b1.weight.fill_(0.01)
            self.b2.weight.uniform_(0.5, 1.0)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def test_global_channel_masks_never_empty_a_layer_and_still_meet_the_target():
    torch.manual_seed(0)
    m = _Narrow().eval()
    plan = pk.Pruner("bn-scale", "channel", pk.Global(max_sparsity=0.99)).plan(
        m, sparsity=0.5, example_inputs=torch.randn(2, 3, 8, 8)
    )
    by_name = {lp.name: lp for lp in plan.layers}
    rows = by_name["c1"].mask.reshape(4, -1).any(1)
    assert int(rows.sum()) == 1  # the layer keeps its best channel
    total = sum(lp.mask.numel() for lp in plan.layers)
    zeros = sum(int((~lp.mask).sum()) for lp in plan.layers)
    assert abs(zeros / total - 0.5) < 0.03  # the others make up for it
    plan.apply_(m)
    with torch.no_grad():
        assert float(m(torch.randn(4, 3, 8, 8)).std(0).max()) > 0  # not a constant function


def test_keep_units_keeps_the_best_unit():
    from prunekit.granularity.patterns import Channel, Unstructured

    keep = Channel().keep_units(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([4, 4, 4]), 0.99)
    assert keep.tolist() == [True, False, False]
    assert int(Unstructured().mask(torch.tensor([[1.0, 5.0]]), 0.9).sum()) == 1


def test_report_names_weights_of_unprunable_layer_types():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.mid, self.fc = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 16), nn.Linear(16, 3)

        def forward(self, x):
            o, _ = self.lstm(x)
            return self.fc(torch.relu(self.mid(o[:, -1])))

    r = pk.prune(Net(), "magnitude", sparsity=0.5, measure=False)
    note = next(n for n in r.notes if n.startswith("not pruned:"))
    assert "lstm.weight_ih_l0" in note and "lstm.weight_hh_l0" in note and "% of weights" in note and "LSTM" in note

    mha = nn.Sequential()
    mha.attn, mha.proj = nn.MultiheadAttention(16, 2), nn.Linear(16, 16)
    r = pk.prune(mha, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    note = next(n for n in r.notes if n.startswith("not pruned:"))
    assert "attn.in_proj_weight" in note and "MultiheadAttention" in note and "out_proj" not in note


def test_classification_dicts_without_labels_are_a_data_error():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    m = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 64, (2, 8))
    b = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(pk.DataError, match="add labels"):
        pk.prune(m, "snip", sparsity=0.5, calibration=[b], measure=False)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_prune_takes_the_pruners_sparsity_or_asks_for_one():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    r = pk.prune(m, pk.Pruner("magnitude", sparsity=0.25), measure=False)
    assert r.settings["sparsity"] == 0.25
    r = pk.prune(
        nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)),
        pk.Pruner("magnitude", schedule=pk.Gradual(start=0, end=10, final_sparsity=0.5)),
        measure=False,
    )
    assert r.settings["sparsity"] == 0.5
    with pytest.raises(pk.InvalidSparsityError, match="sparsity="):
        pk.prune(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), pk.Pruner("magnitude"), measure=False)
    with pytest.raises(pk.InvalidSparsityError, match="sparsity="):
        pk.prune(nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)), "magnitude", measure=False)


def test_data_free_criteria_note_unused_calibration_and_bn_scale_runs_on_example_inputs():
    m = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    r = pk.prune(m, "magnitude", sparsity=0.5, calibration=12345, measure=False)
    assert "calibration was not used: criterion 'magnitude' is data-free" in r.notes
    r = pk.prune(
        _Narrow().eval(),
        pk.Pruner("bn-scale", "channel"),
        sparsity=0.5,
        example_inputs=torch.randn(2, 3, 8, 8),
        measure=False,
    )
    assert r.layers and not any("calibration was not used" in n for n in r.notes)


def test_cli_hints_leave_python_calls_alone():
    msg = (
        "l2-channel takes no pattern (pattern=None), not 2:4. To mask a 2:4 pattern instead use a masking "
        'method: pk.prune(model, "magnitude", sparsity=0.5, pattern="2:4")'
    )
    out = cli_hint(msg)
    assert 'pk.prune(model, "magnitude", sparsity=0.5, pattern="2:4")' in out and "(no --pattern)" in out
    assert cli_hint("use prunekit.Pruner(criterion=..., granularity=...) or skip_incompatible=True") == (
        "use prunekit.Pruner(criterion=..., granularity=...) or --skip-incompatible"
    )
    assert cli_hint("--option takes key=value, got 'x' (e.g. --option strict=false)") == (
        "--option takes key=value, got 'x' (e.g. --option strict=false)"
    )
    assert cli_hint("ignore= names no module of the model: 'conv9'") == "--ignore names no module of the model: 'conv9'"
    assert cli_hint("pass sparsity=0.5 or ignore=[...]") == "pass --sparsity 0.5 or --ignore NAME"
