"""Tests of :mod:`prunekit.apply.transaction`: an error inside leaves the module bit-identical (values, masks,
and with ``structural=True`` the very objects, shapes, attributes and classes); success keeps the changes."""

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn

import prunekit as pk
from prunekit.apply.transaction import transaction


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def test_an_error_inside_undoes_value_changes_and_new_masks():
    model = _model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), transaction(model):
        with torch.no_grad():
            model[0].weight.mul_(2.0)
            model[2].bias.zero_()
        pk.apply_mask_(model[2], torch.zeros(2, 4, dtype=torch.bool))
        raise RuntimeError("inside")
    assert_unchanged(model, before)
    assert pk.get_mask(model[2]) is None and type(model[2]) is nn.Linear


def test_a_mask_that_was_there_before_stays_and_keeps_its_values():
    model = _model()
    first = torch.tensor([[True, False, True, True]] * 2)
    pk.apply_mask_(model[2], first)
    before = snapshot(model)
    with pytest.raises(ValueError), transaction(model):
        pk.apply_mask_(model[2], torch.zeros(2, 4, dtype=torch.bool))  # masks only shrink: now all zero
        raise ValueError
    assert torch.equal(pk.get_mask(model[2]), first)
    assert_unchanged(model, before)


def test_success_keeps_the_changes():
    model = _model()
    with transaction(model):
        with torch.no_grad():
            model[0].bias.fill_(1.0)
    assert model[0].bias.tolist() == [1.0] * 4


def test_structural_restores_the_objects_the_surgery_replaced():
    model = _model()
    weight, bias = model[0].weight, model[0].bias
    x = torch.randn(5, 3)
    with torch.no_grad():
        out = model(x)
    with pytest.raises(KeyError), transaction(model, structural=True):
        model[0].weight = nn.Parameter(weight.detach()[:2].clone())  # a smaller layer, as surgery makes it
        model[0].bias = nn.Parameter(bias.detach()[:2].clone())
        model[0].out_features = 2
        model[2] = nn.Identity()
        raise KeyError("inside")
    assert model[0].weight is weight and model[0].bias is bias and model[0].out_features == 4
    assert type(model[2]) is nn.Linear
    with torch.no_grad():
        assert torch.equal(model(x), out)


@pytest.mark.parametrize("spill", [True, False])
def test_a_snapshot_kept_in_a_file_undoes_changes_bit_for_bit(monkeypatch, spill):
    import prunekit.apply.transaction as tx

    monkeypatch.setattr(tx, "SPILL_BYTES", 0 if spill else 1 << 40)
    model = _model()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="inside"), transaction(model):
        with torch.no_grad():
            model[0].weight.mul_(3.0)
            model[0].bias.add_(1.0)
        pk.apply_mask_(model[0], torch.zeros(4, 3, dtype=torch.bool))
        raise RuntimeError("inside")
    assert_unchanged(model, before)
    with transaction(model), torch.no_grad():  # success keeps the change
        model[2].bias.zero_()
    assert torch.count_nonzero(model[2].bias) == 0


def test_a_full_disk_keeps_the_snapshot_in_memory(monkeypatch):
    """A write to the temporary file that fails (a full disk: OSError ENOSPC) part way: the snapshot falls back
    to memory and still undoes the changes."""
    import errno
    import tempfile

    import prunekit.apply.transaction as tx

    monkeypatch.setattr(tx, "SPILL_BYTES", 0)
    make_file = tempfile.TemporaryFile

    class FillingFile:  # the first tensor fits, then the disk is full
        def __init__(self, *args, **kwargs):
            self.file, self.writes = make_file(*args, **kwargs), 0

        def write(self, buffer):
            self.writes += 1
            if self.writes > 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.file.write(buffer)

        def __getattr__(self, name):
            return getattr(self.file, name)

    monkeypatch.setattr(tx.tempfile, "TemporaryFile", FillingFile)
    model = _model()
    before = snapshot(model)
    with pytest.raises(KeyError, match="inside"), transaction(model):
        with torch.no_grad():
            model[0].weight.mul_(3.0)
        raise KeyError("inside")
    assert_unchanged(model, before)


def test_a_transaction_over_some_modules_restores_those_only():
    """``modules=`` snapshots those modules' tensors and nothing else: on failure they come back, while a
    change elsewhere (which the caller promised not to make) is not undone."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"), transaction(model, modules=[model[2]]):
        with torch.no_grad():
            model[2].weight.mul_(0)
            model[2].bias.add_(1)
            model[0].bias.add_(1)
        raise RuntimeError("inside")
    for k in ("2.weight", "2.bias", "0.weight"):
        assert torch.equal(model.state_dict()[k], before[k]), k
    assert torch.equal(model[0].bias, before["0.bias"] + 1)


def test_a_snapshot_file_keeps_any_dtype_layout_and_size_bit_for_bit(monkeypatch):
    # the file holds raw bytes back to back: bfloat16, bool, integer, empty and non-contiguous tensors come
    # back exactly (NaN payloads and signed zeros included)
    import prunekit.apply.transaction as tx

    monkeypatch.setattr(tx, "SPILL_BYTES", 0)
    torch.manual_seed(0)
    module = nn.Module()
    module.a = nn.Parameter(torch.randn(5, 3).to(torch.bfloat16))
    module.b = nn.Parameter(torch.randn(3, 4).t(), requires_grad=False)  # a transposed view
    module.b.data[0, 0], module.b.data[1, 1] = float("nan"), -0.0
    module.register_buffer("mask", torch.rand(6) > 0.5)
    module.register_buffer("steps", torch.arange(4, dtype=torch.int64))
    module.register_buffer("empty", torch.zeros(0, 7))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(KeyError), transaction(module), torch.no_grad():
        for v in module.state_dict().values():
            v.zero_() if v.dtype != torch.bool else v.logical_not_()
        raise KeyError("inside")

    def bits(t):
        return t if t.dtype == torch.bool else t.contiguous().view(torch.uint8)

    for k, v in module.state_dict().items():
        assert v.dtype == before[k].dtype and v.shape == before[k].shape, k
        assert torch.equal(bits(v), bits(before[k])), k
