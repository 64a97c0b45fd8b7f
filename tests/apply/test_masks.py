import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.apply.masks import effective_state_dict


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
