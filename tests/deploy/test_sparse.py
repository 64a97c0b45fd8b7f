"""sparsify_ / densify_: exact outputs, bit-exact revert, inference mode, a 50%-sparse MLP left dense (the
storage rule), and the 2:4 GPU route (refused on the CPU, tested where CUDA is present)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.deploy import DeviceError, SparseConv1x1, SparseLinear, densify_, semi_structured_, sparsify_
from prunekit.deploy.sparse import SPARSE_STORAGE_LIMIT
from tests.conftest import assert_unchanged, snapshot


def _sparse_mlp(sparsity: float, width: int = 1024) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    pk.prune(model, "magnitude", sparsity=sparsity, measure=False)  # the classifier stays dense
    return model.eval()


def test_very_sparse_layer_swapped_exact_and_reverted_bit_exact():
    model = _sparse_mlp(0.98, width=2048)
    x = torch.randn(1, 2048)
    before = snapshot(model)
    first = model[0]
    with torch.no_grad():
        ref = model(x)
    report = sparsify_(model, x, threads=1, probe_budget_s=0.2)
    # at 98% zeros and 1 thread CSR is several times faster than dense at batch 1 (measured 2-8x): the probe
    # takes it (at 2 threads it measured slower here, and the probe declines)
    assert isinstance(model[0], SparseLinear) and report.swapped[0].name == "0", str(report)
    assert report.swapped[0].speedup > 1.1 and report.swapped[0].format in ("csr", "bsr16", "bsr32")
    assert [d.name for d in report.declined] == ["2"] and "min_sparsity" in report.declined[0].reason
    with torch.inference_mode():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
        model(torch.randn(3, 2048))  # another batch also runs
    assert set(model.state_dict()) == set(before)  # the state dict reads as before
    with pytest.raises(pk.ModelError, match="densify_"):
        model.load_state_dict(before)
    assert densify_(model) == 1
    assert model[0] is first
    assert_unchanged(model, before)
    assert pk.get_mask(model[0]) is not None  # the mask came back with its layer


def test_half_sparse_mlp_is_left_dense_and_the_report_says_why():
    # at 50% zeros a CSR weight (fp32 values + int32 indices) is as large as the dense one, and the blocks are
    # not empty: no sparse form is timed, whatever a probe would measure (CSR was timed 1.6x faster there)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 256))
    pk.prune(model, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    model.eval()
    x = torch.randn(8, 256)
    before = snapshot(model)
    report = sparsify_(model, x, threads=1, probe_budget_s=0.1)
    assert report.swapped == [] and len(report.declined) == 3
    for d in report.declined:
        assert d.reason.startswith("not probed") and "SPARSE_STORAGE_LIMIT" in d.reason, d.reason
        assert "csr 100%" in d.reason and d.candidates == {}  # nothing was timed
    assert SPARSE_STORAGE_LIMIT == 0.5
    assert_unchanged(model, before)
    assert "kept dense - not probed" in str(report)


def test_storage_rule_lets_very_sparse_layers_be_probed():
    # at 90% zeros CSR stores 20% of the dense bytes: the layer is timed (the decision is then the probe's)
    model = _sparse_mlp(0.9, width=256)
    report = sparsify_(model, torch.randn(8, 256), threads=1, probe_budget_s=0.05)
    first = report.layers[0]
    assert "csr" in first.candidates, str(report)
    assert first.format is not None or "probe found no sparse form" in first.reason


def test_conv1x1_sparse_form_matches_dense():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, 1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.9)
    x = torch.randn(2, 64, 5, 5)
    torch.testing.assert_close(SparseConv1x1(conv, "csr")(x), conv(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(SparseConv1x1(conv, "bsr16")(x), conv(x), atol=1e-5, rtol=1e-5)
    lin = nn.Linear(32, 48)
    x3 = torch.randn(2, 3, 32)
    torch.testing.assert_close(SparseLinear(lin, "bsr16")(x3), lin(x3), atol=1e-5, rtol=1e-5)


def test_refusals():
    model = _sparse_mlp(0.9, width=64)
    with pytest.raises(pk.DataError):
        sparsify_(model, None)
    with pytest.raises(pk.DataError):
        sparsify_(model, torch.randn(2, 7))
    with pytest.raises(pk.ConfigError, match="formats"):
        sparsify_(model, torch.randn(2, 64), formats=("coo",))
    with pytest.raises(pk.ConfigError, match="never be slower"):
        sparsify_(model, torch.randn(2, 64), min_speedup=0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_semi_structured_refused_without_cuda():
    model = _sparse_mlp(0.5, width=64)
    before = snapshot(model)
    with pytest.raises(DeviceError, match="CUDA"):
        semi_structured_(model)
    assert_unchanged(model, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="2:4 semi-structured kernels need a CUDA GPU")
def test_semi_structured_on_gpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128))
    pk.prune(model, "magnitude", sparsity=0.5, pattern="2:4", prune_classifier=True, measure=False)
    pk.squash_masks_(model)
    model = model.half().cuda().eval()
    x = torch.randn(64, 256, dtype=torch.half, device="cuda")
    with torch.no_grad():
        ref = model(x)
    backends = ["auto", "cusparselt"]
    if torch.cuda.get_device_capability()[0] == 8:
        backends.append("cutlass")
    else:  # PyTorch's CUTLASS 2:4 kernels exist for Ampere only: refused before anything is swapped
        with pytest.raises(DeviceError, match="Ampere"):
            semi_structured_(model, backend="cutlass")
        assert [type(m) for m in model] == [nn.Linear, nn.ReLU, nn.Linear]  # nothing swapped
    for backend in backends:
        names = semi_structured_(model, backend=backend)
        assert names == ["0", "2"]
        with torch.inference_mode():
            torch.testing.assert_close(model(x), ref, atol=2e-2, rtol=2e-2)
        assert densify_(model) == 2
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # densify_ put the original layers back
    with pytest.raises(pk.ConfigError, match="nn.Sequential"):  # a bare Linear cannot be swapped in place
        semi_structured_(model[0])
    with pytest.raises(pk.ConfigError, match="backend"):
        semi_structured_(model, backend="cublas")


def test_sparsify_refuses_a_bare_layer_it_cannot_swap_in_place():
    layer = _sparse_mlp(0.9, width=64)[0]
    before = snapshot(layer)
    with pytest.raises(pk.ConfigError, match="nn.Sequential"):
        sparsify_(layer, torch.randn(2, 64))
    assert_unchanged(layer, before)


def test_sparsify_takes_one_format_as_a_string_and_refuses_meaningless_budgets():
    model = _sparse_mlp(0.95, width=256)
    report = sparsify_(model, torch.randn(8, 256), formats="csr", probe_budget_s=0.05)
    assert {d.format for d in report.layers if d.format} <= {"csr"}
    densify_(model)
    for bad, word in ((dict(probe_budget_s=-1), "probe_budget_s"), (dict(threads=0), "threads")):
        with pytest.raises(pk.ConfigError, match=word):
            sparsify_(model, torch.randn(8, 256), **bad)
