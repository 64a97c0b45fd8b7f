"""Tests of :mod:`prunekit.apply.obs_sweep`: SparseGPT's column sweep on hand-checkable and random cases."""

import torch

from prunekit.apply.obs_sweep import block_mask, sweep_rows
from prunekit.granularity.patterns import NM, Unstructured


def _factor(H: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)


def _reference(W: torch.Tensor, U: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The OBS sweep column by column with a fixed mask, written plainly (no blocks, no transposes)."""
    W = W.clone()
    for i in range(W.shape[1]):
        err = W[:, i] * (~keep[:, i]) / U[i, i]
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return W * keep


def test_with_an_identity_hessian_the_sweep_is_magnitude_pruning():
    W = torch.tensor([[4.0, -1.0, 3.0, 0.5], [0.1, 2.0, -5.0, 1.0]])
    U = torch.eye(4)
    w = W.clone()
    keep = sweep_rows(w, U, 4, NM(2, 4), [(0, 2, 0.5)])
    assert torch.equal(keep, torch.tensor([[True, False, True, False], [False, True, True, False]]))
    assert torch.equal(w, W * keep)  # nothing to compensate: the inputs are uncorrelated
    w = W.clone()
    keep = sweep_rows(w, U, 4, Unstructured(), [(0, 2, 0.5)])
    assert int(keep.sum()) == 4 and torch.equal(keep, W.abs() >= 2.0)


def test_the_sweep_matches_a_plain_obs_loop_and_rows_are_independent():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 8, generator=g)
    H = 2 * X.t() @ X / 64 + 0.01 * torch.eye(8)
    U = _factor(H)
    W = torch.randn(6, 8, generator=g)
    stacked = W.clone()
    keep = sweep_rows(stacked, U, 4, NM(2, 4), [(0, 3, 0.5), (3, 6, 0.5)])
    torch.testing.assert_close(stacked, _reference(W, U, keep), rtol=1e-5, atol=1e-6)
    top, bottom = W[:3].clone(), W[3:].clone()
    keep_top = sweep_rows(top, U, 4, NM(2, 4), [(0, 3, 0.5)])
    keep_bottom = sweep_rows(bottom, U, 4, NM(2, 4), [(0, 3, 0.5)])
    assert torch.equal(keep, torch.cat([keep_top, keep_bottom]))
    torch.testing.assert_close(stacked, torch.cat([top, bottom]), rtol=1e-5, atol=1e-6)
    assert (keep.reshape(6, 2, 4).sum(-1) == 2).all()


def test_unstructured_block_masks_are_chosen_per_segment_at_its_own_sparsity():
    W1 = torch.arange(1.0, 17.0).reshape(4, 4)
    d = torch.ones(4)
    keep = block_mask(W1, d, Unstructured(), [(0, 2, 0.5), (2, 4, 0.25)])
    assert int(keep[:2].sum()) == 4 and int(keep[2:].sum()) == 6
    assert not keep[0].any() and keep[1].all()  # the lowest half of the first matrix's block: its first row
    assert block_mask(W1, d, NM(2, 4), [(0, 4, 0.5)]).all()  # N:M groups are chosen during the sweep
