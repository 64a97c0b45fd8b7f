"""Tests of :mod:`prunekit.apply.masks`: masks as parametrizations survive training, only shrink, squash or
undo exactly, and work under other parametrizations (weight_norm)."""

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.nn.utils.parametrizations import _WeightNorm, orthogonal, weight_norm

import prunekit as pk
from prunekit.apply.masks import assign_weight_, effective_state_dict, get_mask


def _normed_conv(dim=0, groups=1):
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=groups), dim=dim)
    with torch.no_grad():  # g differs from ||v||, so a slip in either shows in the weight
        conv.parametrizations.weight.original0.mul_(1.5)
    return conv


def _masked_linear():
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    mask = torch.rand(4, 8) > 0.5
    pk.apply_mask_(layer, mask)
    return layer, mask


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_masks_survive_training(opt):
    layer, mask = _masked_linear()
    original = layer.parametrizations.weight.original.detach().clone()
    make = {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        "adam": lambda p: torch.optim.Adam(p, lr=0.05, weight_decay=1e-2),
    }[opt]
    optimizer = make(layer.parameters())
    for _ in range(5):
        optimizer.zero_grad()
        layer(torch.randn(16, 8)).pow(2).sum().backward()
        optimizer.step()
    assert (layer.weight[~mask] == 0).all()
    assert not torch.equal(layer.weight[mask], original[mask])  # the kept weights did train


def test_squash_and_remove():
    layer, mask = _masked_linear()
    dense = layer.parametrizations.weight.original.detach().clone()
    assert pk.remove_masks_(layer) == 1
    assert torch.equal(layer.weight, dense)  # undo: the original values are back
    pk.apply_mask_(layer, mask)
    assert pk.squash_masks_(layer) == 1
    assert pk.get_mask(layer) is None
    assert torch.equal(layer.weight, dense * mask)
    assert isinstance(layer.weight, nn.Parameter)


def test_masks_only_shrink():
    layer, mask = _masked_linear()
    other = torch.ones(4, 8, dtype=torch.bool)
    other[0] = False
    pk.apply_mask_(layer, other)
    assert torch.equal(pk.get_mask(layer), mask & other)
    assert len(layer.parametrizations.weight) == 1


def test_effective_state_dict_has_plain_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    pk.apply_mask_(model[0], torch.eye(4, dtype=torch.bool))
    sd = effective_state_dict(model)
    assert set(sd) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    assert torch.count_nonzero(sd["0.weight"]) <= 4


def test_mask_shape_mismatch():
    with pytest.raises(pk.PlanError, match="does not fit"):
        pk.apply_mask_(nn.Linear(4, 4), torch.ones(3, 4, dtype=torch.bool))


def test_removing_masks_from_a_deep_copy_leaves_the_original_masked() -> None:
    """torch gives a deep copy of a parametrized module the same generated class; removing a parametrization
    deletes the tensor's property from that class. prunekit removes it from a class of the module's own."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    pk.prune(model, "magnitude", sparsity=0.5, measure_latency=False)
    x = torch.randn(3, 8)
    out = model(x)
    for remove in (pk.squash_masks_, pk.remove_masks_):
        twin = copy.deepcopy(model)
        remove(twin)
        assert torch.equal(model(x), out) and pk.get_mask(model[0]) is not None  # the original is intact
        assert type(twin[0]) is nn.Linear
    pk.squash_masks_(model)
    assert torch.equal(model(x), out) and type(model[0]) is nn.Linear


def test_squash_folds_the_mask_into_g_and_v_without_nan():
    conv = _normed_conv(dim=0)
    pk.prune(conv, "magnitude", sparsity=0.5, pattern="channel", prune_classifier=True, measure=False)
    masked = conv.weight.detach().clone()
    assert int((masked.reshape(8, -1) == 0).all(1).sum()) == 4  # whole normalised slices are zero
    assert pk.squash_masks_(conv) == 1
    plist = conv.parametrizations.weight
    assert len(plist) == 1 and isinstance(plist[0], _WeightNorm)  # weight_norm stays
    assert torch.isfinite(conv.weight).all()
    assert torch.allclose(conv.weight, masked, atol=1e-6)
    assert bool((conv.weight[masked == 0] == 0).all())


def test_remove_masks_restores_the_weight_norm_weight_exactly():
    conv = _normed_conv(dim=2)
    before = snapshot(conv)
    dense = conv.weight.detach().clone()
    pk.prune(conv, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    assert pk.remove_masks_(conv) == 1
    assert torch.equal(conv.weight, dense)
    assert_unchanged(conv, before)


def test_assign_weight_through_weight_norm_and_masks():
    conv = _normed_conv(dim=0)
    pk.apply_mask_(conv, torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.3)
    value = torch.randn(conv.weight.shape)
    value[3] = 0  # a whole normalised slice
    assign_weight_(conv, value)
    assert torch.isfinite(conv.weight).all()
    assert torch.allclose(conv.weight, value * get_mask(conv), atol=1e-6)
    assert float(conv.parametrizations.weight.original0.detach()[3].abs().sum()) == 0.0


def test_a_parametrization_that_cannot_store_a_value_is_refused():
    layer = orthogonal(nn.Linear(4, 4))
    pk.apply_mask_(layer, torch.ones(4, 4, dtype=torch.bool))
    before = snapshot(layer)
    with pytest.raises(pk.UnsupportedModuleError, match="remove_parametrizations"):
        assign_weight_(layer, torch.randn(4, 4) * 3)  # not orthogonal
    assert_unchanged(layer, before)
