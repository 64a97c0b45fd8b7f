"""Tests of :mod:`prunekit.granularity.patterns`: each granularity turns element scores into units and a mask,
by hand (N:M, blocks, channels, ties), and patterns parse from their names."""

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.granularity.patterns import kth_lowest, lowest_k_mask


def test_nm_exact_hand_computed():
    # one output row of 8 inputs, two groups of 4; 2:4 keeps the two largest of each group
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, -1.0, 2.0, 0.0]]).abs()
    mask = pk.NM(2, 4).mask(scores, 0.5)
    assert mask.tolist() == [[False, True, True, False, True, False, True, False]]


def test_nm_conv_groups_run_along_input_channels():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 2, 2)
    mask = pk.NM(2, 4).mask(w.abs(), 0.5)
    groups = mask.movedim(1, -1).reshape(-1, 4)
    assert (groups.sum(dim=1) == 2).all()
    # the kept weights are the two largest of each group of 4 input channels at a fixed (out, kh, kw)
    for o in range(3):
        for i in range(2):
            for j in range(2):
                for g in range(2):
                    block = w[o, 4 * g : 4 * g + 4, i, j].abs()
                    keep = mask[o, 4 * g : 4 * g + 4, i, j]
                    assert set(torch.nonzero(keep).flatten().tolist()) == set(block.topk(2).indices.tolist())


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_on_every_layer_of_a_model(n, m):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 32), nn.Linear(32, 8))
    pk.prune(model, "magnitude", sparsity=1 - n / m, pattern=f"{n}:{m}", example_inputs=torch.randn(1, 8, 6, 6))
    touched = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and pk.get_mask(module) is not None:
            w = module.weight
            zeros = (w.movedim(1, -1) if w.dim() > 2 else w).reshape(-1, m) == 0
            assert (zeros.sum(dim=1) == m - n).all()
            touched += 1
    assert touched == 2  # the classifier (last Linear) stays dense by default


def test_nm_rejects_indivisible_input_dim():
    with pytest.raises(pk.PatternError, match="multiple of 4"):
        pk.NM(2, 4).check("layer", torch.zeros(4, 6))
    with pytest.raises(pk.PatternError):
        pk.NM(4, 2)


def test_nm_sparsity_mismatch():
    with pytest.raises(pk.InvalidSparsityError, match="0.5"):
        pk.NM(2, 4).mask(torch.rand(2, 4), 0.7)


def test_unstructured_exact_count_and_ties():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.5, 2.0, 1.0])
    mask = pk.Unstructured().mask(scores, 0.5)  # remove 3: the 0.5 and the first two tied 1.0s
    assert mask.tolist() == [False, False, True, False, True, True]
    assert lowest_k_mask(torch.tensor([3.0, 1.0, 2.0]), 2).tolist() == [False, True, True]


def test_block_mask_removes_whole_tiles():
    scores = torch.tensor(
        [
            [1.0, 1.0, 9.0, 9.0],
            [1.0, 1.0, 9.0, 9.0],
            [5.0, 5.0, 0.1, 0.1],
            [5.0, 5.0, 0.1, 0.1],
        ]
    )
    mask = pk.Block(2, 2).mask(scores, 0.5)
    expected = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_block_with_edge_tiles():
    scores = torch.arange(15, dtype=torch.float).reshape(3, 5)
    mask = pk.Block(2, 2).mask(scores, 0.4)
    assert mask.shape == (3, 5)
    assert abs((~mask).sum().item() - 6) <= 2  # tiles of 4, 2 and 1 weights: closest count to 6


def test_channel_mask_zeroes_rows():
    w = torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.1, 0.2], [3.0, 3.0]])
    mask = pk.Channel().mask(w.abs(), 0.5)
    assert mask.tolist() == [[False, False], [True, True], [False, False], [True, True]]
    conv = torch.randn(4, 3, 3, 3)
    m = pk.Channel().mask(conv.abs(), 0.25)
    assert m.reshape(4, -1).all(dim=1).sum() == 3 and (~m.reshape(4, -1)).all(dim=1).sum() == 1


def test_parse_pattern():
    assert pk.parse_pattern("2:4") == pk.NM(2, 4)
    assert pk.parse_pattern("4x8") == pk.Block(4, 8)
    assert pk.parse_pattern(None) == pk.Unstructured()
    assert pk.parse_pattern("channel") == pk.Channel()
    with pytest.raises(pk.UnknownNameError, match="N:M"):
        pk.parse_pattern("diagonal")


def test_sparsity_out_of_range():
    for bad in (-0.1, 1.0, 1.5, float("nan"), "0.5"):
        with pytest.raises(pk.InvalidSparsityError):
            pk.Unstructured().mask(torch.rand(4), bad)


def test_unit_sums_and_sizes_hand_computed():
    c = torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.5, 0.5]])
    sums, sizes = pk.Channel().unit_sums(c)
    assert sums.tolist() == [2.0, 1.5] and sizes.tolist() == [3, 3]
    sums, sizes = pk.Block(2, 2).unit_sums(c)  # tiles [[1, -2], [.5, .5]] and the edge tile [[3], [.5]]
    assert sums.tolist() == [0.0, 3.5] and sizes.tolist() == [4, 2]
    sums, sizes = pk.Unstructured().unit_sums(c)
    assert sums.tolist() == c.reshape(-1).tolist() and sizes.tolist() == [1] * 6
    # units() stays the mean of element scores
    assert pk.Channel().units(c.abs())[0].tolist() == pytest.approx([2.0, 0.5])


def test_physical_granularities_parse_and_make_no_masks():
    assert pk.parse_pattern("head") == pk.Head()
    assert pk.parse_pattern("layer") == pk.Layer()
    assert pk.parse_pattern("embedding") == pk.Embedding()
    assert pk.parse_pattern("physical-channel") == pk.Channel(physical=True)
    assert pk.parse_pattern("channel") == pk.Channel() and not pk.Channel().physical
    assert str(pk.Channel(physical=True)) == "physical-channel"
    assert all(g.physical for g in (pk.Head(), pk.Layer(), pk.Embedding(), pk.Channel(physical=True)))
    with pytest.raises(pk.PatternError, match="physical"):
        pk.Channel(physical=True).mask(torch.rand(4, 3), 0.5)
    with pytest.raises(pk.UnknownNameError, match="physical-channel"):
        pk.parse_pattern("heads!")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_kth_lowest_is_torch_kthvalue_with_ties_and_nan(dtype):
    # numpy's selection for float32 / float64, torch's otherwise: the same values, NaN ranking highest
    g = torch.Generator().manual_seed(0)
    values = torch.randint(0, 7, (9, 13), generator=g).to(dtype)  # many ties
    values[2, 3] = values[5, 0] = float("nan")
    values[4, :] = float("nan")
    for k in (1, 5, 13):
        torch.testing.assert_close(
            kth_lowest(values, k, dim=1), values.kthvalue(k, dim=1, keepdim=True).values, equal_nan=True
        )
        assert kth_lowest(values, k, dim=1).dtype == dtype
    for k in (1, 9):
        torch.testing.assert_close(
            kth_lowest(values, k, dim=0), values.kthvalue(k, dim=0, keepdim=True).values, equal_nan=True
        )
    flat = values.reshape(-1)
    for k in (1, 40, 100, flat.numel()):
        got = kth_lowest(values, k)
        assert got.dim() == 0
        torch.testing.assert_close(got, flat.kthvalue(k).values, equal_nan=True)
    t = values.t()  # a strided view
    torch.testing.assert_close(kth_lowest(t, 4, dim=-1), t.kthvalue(4, dim=-1, keepdim=True).values, equal_nan=True)
    with pytest.raises(IndexError):
        kth_lowest(values.float(), values.numel() + 1)


def _stable_lowest(flat: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[torch.argsort(flat, stable=True)[:k]] = True
    return out


@pytest.mark.parametrize("seed", range(20))
def test_lowest_k_mask_ranks_nan_highest_as_a_stable_sort(seed):
    g = torch.Generator().manual_seed(seed)
    flat = torch.randint(0, 4, (30,), generator=g).float()
    flat[torch.randperm(30, generator=g)[: int(torch.randint(1, 30, (1,), generator=g))]] = float("nan")
    for k in range(0, 31):
        assert torch.equal(lowest_k_mask(flat, k), _stable_lowest(flat, k)), k


def test_unstructured_mask_with_mostly_nan_scores_still_drops_the_numbers_first():
    scores = torch.tensor([[float("nan")] * 6 + [1.0, 2.0, 3.0, 4.0]]).reshape(2, 5)
    keep = pk.Unstructured().mask(scores, 0.8)
    assert int((~keep).sum()) == 8
    assert not bool((~keep)[~torch.isnan(scores) & keep].any())
    assert bool((~keep)[~torch.isnan(scores)].all())  # every number is dropped before any NaN


def test_kth_lowest_of_a_zero_dim_tensor():
    assert float(kth_lowest(torch.tensor(3.0), 1)) == 3.0
    assert kth_lowest(torch.tensor(3.0), 1, dim=0).tolist() == [3.0]
    with pytest.raises(IndexError):
        kth_lowest(torch.tensor(3.0), 2)
