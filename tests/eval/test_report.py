"""prunekit.eval.report: counting parameters as the model computes with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.eval.report import count_nonzero, count_params


def test_count_params_folds_masks_in_and_leaves_buffers_out():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    # BN's running statistics are buffers, not parameters; its bias starts at zero (8 zeros)
    assert count_params(model) == (48 + 8 + 8 + 8 + 32 + 4, 108 - 8)
    pk.prune(model, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    assert any(".parametrizations." in k for k in model.state_dict())  # masked, not folded
    # half of each weight matrix is zero: 24 of 48 and 16 of 32; the mask buffers are not counted
    assert count_params(model) == (108, 108 - 8 - 24 - 16)
    stats = pk.measure(model, latency=False, sizes=False)
    assert (stats.params, stats.nonzero_params) == count_params(model)


def test_report_json_is_written_whole_and_reads_back(tmp_path, monkeypatch):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    report = pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    path = tmp_path / "report.json"
    path.write_text("earlier")
    text = report.to_json(path)
    assert path.read_text() == text and pk.Report.from_dict(json.loads(text)).to_dict() == report.to_dict()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left
    path.write_text("earlier")

    def half_then_fail(self, data, *args, **kwargs):  # the disk fills up in the middle of the file
        with open(self, "w") as f:
            f.write(data[:10])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        report.to_json(path)
    monkeypatch.undo()
    assert path.read_text() == "earlier" and [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_counts_of_a_masked_model_are_every_tensor_once():
    # each masked weight is computed and freed in turn, so the next one may land at its address: the counts
    # identify a masked tensor by its stored original, and count every layer (a tied pair once)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 10))
    report = pk.prune(model, "magnitude", sparsity=0.5, measure=False)
    params = sum(m.weight.numel() + m.bias.numel() for m in model)
    nonzero = sum(int(torch.count_nonzero(m.weight)) + int(torch.count_nonzero(m.bias)) for m in model)
    assert (report.after.params, report.after.nonzero_params) == (params, nonzero)
    assert count_params(model) == (params, nonzero)


def test_count_nonzero_over_many_blocks_equals_torch_count_nonzero():
    # counted in blocks of 2^20 entries: a tensor of several blocks and a ragged end, NaN counted as non-zero
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 3, (3 * (1 << 20) + 12347,), generator=g).float()  # 5 x 631,615
    t[7] = float("nan")
    assert count_nonzero(t) == int(torch.count_nonzero(t))
    assert count_nonzero(t.reshape(-1, 5)[:, 1:]) == int(torch.count_nonzero(t.reshape(-1, 5)[:, 1:]))
    assert count_nonzero(torch.zeros(0)) == 0


def test_counting_some_modules_reads_no_tensor_outside_them(monkeypatch):
    # pk.prune counts a layer-wise method's targets before the call: a model mapped from its checkpoint file
    # must not read its embeddings into memory for it (they are counted once, after the call)
    from prunekit.eval import report

    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3), nn.Linear(3, 2))
    pk.prune(model, "magnitude", sparsity=0.5, ignore=[model[0]], prune_classifier=True, measure=False)
    read = []
    count = report.count_nonzero
    monkeypatch.setattr(report, "count_nonzero", lambda t: read.append(tuple(t.shape)) or count(t))
    params, nonzero = count_params(model, [model[1]])
    assert sorted(read) == [(3,), (3, 4)]  # the bias and the masked weight (computed): not the embedding's
    assert (params, nonzero) == (15, int((model[1].weight != 0).sum()) + int((model[1].bias != 0).sum()))
    read.clear()
    assert count_params(model)[0] == 40 + 15 + 8 and (10, 4) in read


def test_count_params_leaves_out_a_buffer_two_modules_hold():
    from prunekit.eval.report import count_params

    model = nn.Module()
    model.a = nn.Linear(4, 4, bias=False)
    model.b, model.c = nn.Module(), nn.Module()
    shared = torch.arange(100.0)
    model.b.register_buffer("pos", shared)
    model.c.register_buffer("pos", shared)
    assert count_params(model) == (16, 16)


def test_a_flop_counter_failure_on_a_model_that_runs_leaves_flops_out_with_a_warning(monkeypatch):
    import prunekit.eval.report as report

    def broken_counter(model: nn.Module, inputs: object) -> tuple[int, dict[str, int]]:
        raise AssertionError("Expected gradient function to be set")  # torch's module tracker on some models

    monkeypatch.setattr(report, "count_flops", broken_counter)
    model, x = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(3, 4)
    with pytest.warns(RuntimeWarning, match="FLOPs not counted.*Expected gradient function"):
        stats = report.measure(model, x, latency=False)
    assert stats.flops is None and stats.effective_flops is None and stats.params == 58
    with pytest.raises(pk.DataError, match="does not run on example_inputs.*check their shape"):
        report.measure(model, torch.randn(3, 5), latency=False)  # the model itself fails: the inputs are wrong
