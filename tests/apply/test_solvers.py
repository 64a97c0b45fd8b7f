"""Tests of :mod:`prunekit.apply.solvers`: exact tests of the layer-wise solvers (magnitude, Wanda, SparseGPT)
on tiny matrices and convolutions."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from prunekit.apply.solvers import MagnitudeSolver, SparseGPTSolver, WandaSolver, row_mask
from prunekit.errors import DataError, InvalidSparsityError, PatternError
from prunekit.granularity.patterns import NM, Block, Unstructured
from prunekit.im2col import Patches, to_matrix


def linear(weight: list[list[float]] | torch.Tensor) -> nn.Linear:
    w = torch.as_tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    return layer


def test_wanda_mask_matches_hand_computation():
    layer = linear([[1.0, -2.0, 3.0, -4.0], [0.5, 5.0, -3.5, 4.0]])
    # one token per input feature: ||X_j|| = (4, 1, 2, 0.25)
    x = torch.diag(torch.tensor([4.0, 1.0, 2.0, 0.25]))
    solver = WandaSolver(layer)
    solver.add_batch(x)
    # |W| * ||X||: row 0 = (4, 2, 6, 1) -> keep cols 0, 2; row 1 = (2, 5, 7, 1) -> keep cols 1, 2
    assert torch.allclose(solver.scores(), torch.tensor([[4.0, 2.0, 6.0, 1.0], [2.0, 5.0, 7.0, 1.0]]))
    keep = solver.prune(0.5, Unstructured())
    expected = torch.tensor([[True, False, True, False], [False, True, True, False]])
    assert torch.equal(keep, expected)
    assert torch.equal(layer.weight.data, torch.tensor([[1.0, 0.0, 3.0, 0.0], [0.0, 5.0, -3.5, 0.0]]))


def test_wanda_differs_from_magnitude_on_the_same_layer():
    w = [[1.0, -2.0, 3.0, -4.0], [0.5, 5.0, -3.5, 4.0]]
    mag = MagnitudeSolver(linear(w))
    keep = mag.prune(0.5, Unstructured())  # whole matrix: drop the four smallest |w| (0.5, 1, 2, 3)
    assert torch.equal(keep, torch.tensor([[False, False, False, True], [False, True, True, True]]))


def test_wanda_nm_hand_computed():
    layer = linear([[1.0, 2.0, 3.0, 4.0, 8.0, 7.0, 6.0, 5.0]])
    solver = WandaSolver(layer)
    solver.add_batch(torch.diag(torch.tensor([4.0, 4.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])))
    # scores (4, 8, 3, 4, 8, 7, 6, 10): 2:4 keeps cols 0/3 tie -> stable drop of lower index, so {1, 3} and {4, 7}
    keep = solver.prune(0.5, NM(2, 4))
    assert keep.tolist() == [[False, True, False, True, True, False, False, True]]


def _identity_inputs(columns: int) -> torch.Tensor:
    # H = 2/n * X^T X = I for n = columns tokens
    return torch.eye(columns) * (columns / 2) ** 0.5


@pytest.mark.parametrize("columns", [64, 300, 577])
def test_sparsegpt_hessian_is_the_running_mean_of_2_x_xT_and_symmetric(columns):
    # wide inputs accumulate the upper blocks only; the Hessian read back is whole and exactly symmetric
    torch.manual_seed(0)
    solver = SparseGPTSolver(nn.Linear(columns, 8, bias=False))
    batches = [torch.randn(2, 50, columns, dtype=torch.float64).float() for _ in range(3)]
    for x in batches:
        solver.add_batch(x)
    X = torch.cat([x.reshape(-1, columns) for x in batches]).double()
    expected = (2.0 / X.shape[0]) * X.t() @ X
    H = solver.H
    assert torch.equal(H, H.t())
    torch.testing.assert_close(H.double(), expected, rtol=1e-5, atol=1e-5)
    solver.add_batch(batches[0])  # and reading it between batches changes nothing that follows
    X = torch.cat([X, batches[0].reshape(-1, columns).double()])
    torch.testing.assert_close(solver.H.double(), (2.0 / X.shape[0]) * X.t() @ X, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("blocksize", [32, 8])
def test_sparsegpt_with_identity_hessian_is_magnitude_pruning(blocksize):
    torch.manual_seed(0)
    w = torch.randn(16, 32)
    layer = linear(w)
    solver = SparseGPTSolver(layer, blocksize=blocksize, percdamp=0.0)
    solver.add_batch(_identity_inputs(32))
    assert torch.allclose(solver.H, torch.eye(32), atol=1e-6)
    keep = solver.prune(0.5, Unstructured())
    # magnitude over the same scope: each column block of `blocksize` columns, all rows
    expected = torch.cat([Unstructured().mask(w[:, i : i + blocksize].abs(), 0.5) for i in range(0, 32, blocksize)], 1)
    assert torch.equal(keep, expected)
    assert torch.equal(layer.weight.data, w * expected)  # no surviving weight was changed


def test_sparsegpt_nm_with_identity_hessian_is_magnitude_nm():
    torch.manual_seed(1)
    w = torch.randn(8, 32)
    layer = linear(w)
    solver = SparseGPTSolver(layer, blocksize=16, percdamp=0.0)
    solver.add_batch(_identity_inputs(32))
    keep = solver.prune(0.5, NM(2, 4))
    assert torch.equal(keep, NM(2, 4).mask(w.abs()))
    assert torch.equal(layer.weight.data, w * keep)


def _reconstruction_errors(pattern, sparsity):
    g = torch.Generator().manual_seed(0)
    out_f, in_f, tokens = 32, 64, 2048
    w = torch.randn(out_f, in_f, generator=g)
    mixing = torch.randn(in_f, in_f, generator=g) / in_f**0.5 + 0.6 * torch.ones(in_f, in_f) / in_f**0.5
    scales = torch.rand(in_f, generator=g) * 3 + 0.1  # unequal feature scales, as in transformer activations
    x = (torch.randn(tokens, in_f, generator=g) @ mixing) * scales
    errors = {}
    for cls in (MagnitudeSolver, WandaSolver, SparseGPTSolver):
        layer = linear(w)
        solver = cls(layer)
        solver.add_batch(x)
        solver.prune(sparsity, pattern)
        errors[cls.name] = torch.linalg.norm(x @ w.T - x @ layer.weight.data.T).item()
    return errors


@pytest.mark.parametrize("pattern,sparsity", [(Unstructured(), 0.5), (NM(2, 4), 0.5), (NM(4, 8), 0.5)])
def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude(pattern, sparsity):
    errors = _reconstruction_errors(pattern, sparsity)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], errors


@pytest.mark.parametrize("cls", [MagnitudeSolver, WandaSolver, SparseGPTSolver])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_pattern_holds_exactly(cls, n, m):
    torch.manual_seed(2)
    layer = linear(torch.randn(24, 64))
    solver = cls(layer)
    solver.add_batch(torch.randn(200, 64))
    keep = solver.prune(1 - n / m, NM(n, m))
    groups = keep.reshape(24, 64 // m, m).sum(-1)
    assert torch.all(groups == n)
    nonzero = (layer.weight.data != 0).reshape(24, 64 // m, m).sum(-1)
    assert torch.all(nonzero <= n)


@pytest.mark.parametrize("cls", [MagnitudeSolver, WandaSolver, SparseGPTSolver])
def test_unstructured_sparsity_is_reached(cls):
    torch.manual_seed(3)
    layer = linear(torch.randn(16, 256))
    solver = cls(layer)
    solver.add_batch(torch.randn(100, 256))
    solver.prune(0.6, Unstructured())
    assert (layer.weight.data == 0).float().mean().item() == pytest.approx(0.6, abs=1 / 256)


def test_sparsegpt_raises_damping_with_a_warning_when_cholesky_fails():
    torch.manual_seed(4)
    layer = linear(torch.randn(4, 8))
    solver = SparseGPTSolver(layer, percdamp=0.0)
    solver.add_batch(torch.ones(5, 8))  # H = 2 * ones: singular, Cholesky fails without damping
    with pytest.warns(RuntimeWarning, match="raised the damping"):
        solver.prune(0.5, Unstructured())
    assert solver.damping_used and solver.damping_used > 0
    assert torch.isfinite(layer.weight).all()


def test_sparsegpt_no_warning_with_default_damping():
    layer = linear(torch.randn(4, 8))
    solver = SparseGPTSolver(layer)
    solver.add_batch(torch.randn(64, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        solver.prune(0.5, Unstructured())


def test_invalid_inputs_are_refused():
    solver = WandaSolver(linear(torch.randn(4, 6)))
    solver.add_batch(torch.randn(3, 6))
    with pytest.raises(InvalidSparsityError):
        solver.prune(1.5, Unstructured())
    with pytest.raises(PatternError):
        solver.prune(0.5, NM(2, 4))  # 6 inputs are not a multiple of 4
    with pytest.raises(PatternError):
        solver.prune(0.5, Block(2, 2))


@pytest.mark.parametrize("cls", [MagnitudeSolver, WandaSolver, SparseGPTSolver])
def test_inputs_of_another_width_are_refused_with_the_width_the_layer_reads(cls):
    solver = cls(nn.Linear(6, 4), "fc")
    with pytest.raises(DataError, match=r"fc reads inputs with 6 features.*shape \(3, 5\)"):
        solver.add_batch(torch.randn(3, 5))
    conv = cls(nn.Conv2d(3, 4, 3), "conv")
    with pytest.raises(DataError, match=r"conv reads inputs with 3 channels.*shape \(2, 4, 8, 8\)"):
        conv.add_batch(torch.randn(2, 4, 8, 8))
    conv.add_batch(torch.randn(3, 8, 8))  # an unbatched input is fine
    assert solver.nsamples == 0 and conv.nsamples == 36


def test_sparsegpt_nm_groups_are_the_granularity_nm_groups():
    # with H = I SparseGPT makes no updates and ranks by |w|: its 2:4 mask must be NM(2, 4) of |W| as
    # prunekit.granularity.patterns groups a [out, in, kh, kw] weight (input channels at each kernel position)
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 6, 3, bias=False)
    dense = conv.weight.detach().clone()
    solver = SparseGPTSolver(conv, "conv")
    solver.H = torch.eye(solver.columns)
    solver.nsamples = 1
    solver.prune(0.5, NM(2, 4))
    expected = NM(2, 4).mask(dense.abs())
    assert torch.equal(conv.weight != 0, expected)
    assert torch.equal(conv.weight.detach(), dense * expected)


def test_wanda_scores_a_conv_by_its_patch_norms():
    torch.manual_seed(2)
    conv = nn.Conv2d(4, 3, 2, bias=False)
    x = torch.randn(5, 4, 6, 6) * torch.tensor([3.0, 1.0, 0.1, 2.0]).reshape(1, 4, 1, 1)
    solver = WandaSolver(conv, "conv")
    solver.add_batch(x)
    rows = torch.cat(list(Patches.of(conv).rows(x)))[:, 0]
    expected = to_matrix(conv.weight.detach()).abs() * rows.pow(2).sum(0).sqrt()
    assert torch.allclose(solver.scores(), expected, rtol=1e-5)
    keep = solver.prune(0.5, Unstructured())
    assert torch.all(keep.sum(1) == 8)  # exactly half of every filter's 16 weights


def test_a_grouped_conv_is_solved_as_its_groups():
    # a conv with groups=2 equals two convs, each on its half of the channels: SparseGPT must prune it so
    # (with 2:4, whose masks are chosen group by group; an unstructured mask is chosen over all groups at once)
    torch.manual_seed(3)
    grouped = nn.Conv2d(8, 6, 3, groups=2, bias=False)
    halves = [nn.Conv2d(4, 3, 3, bias=False) for _ in range(2)]
    with torch.no_grad():
        for g, half in enumerate(halves):
            half.weight.copy_(grouped.weight[3 * g : 3 * g + 3])
    x = torch.randn(6, 8, 7, 7)
    solver = SparseGPTSolver(grouped, "grouped")
    solver.add_batch(x)
    solver.prune(0.5, NM(2, 4))
    for g, half in enumerate(halves):
        s = SparseGPTSolver(half, f"half{g}")
        s.add_batch(x[:, 4 * g : 4 * g + 4])
        s.prune(0.5, NM(2, 4))
        assert torch.allclose(grouped.weight[3 * g : 3 * g + 3], half.weight, atol=1e-5)


def test_a_depthwise_conv_reaches_the_sparsity_over_the_layer():
    torch.manual_seed(3)
    conv = nn.Conv2d(16, 16, 3, groups=16, bias=False)  # 9 weights per filter: half of them cannot be removed
    solver = SparseGPTSolver(conv, "depthwise")
    solver.add_batch(torch.randn(4, 16, 8, 8))
    keep = solver.prune(0.5, Unstructured())
    assert (~keep).sum().item() == 72 and torch.equal(conv.weight != 0, keep.reshape(16, 1, 3, 3))


def test_wanda_row_mask_by_selection_equals_a_stable_sort_with_ties():
    """The row mask is found by selection (kthvalue); it drops exactly what a stable sort's first k would,
    ties (many equal scores, e.g. dead inputs) going lower index first."""
    from prunekit.apply.solvers import row_mask

    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        rows, cols = torch.randint(1, 20, (2,), generator=g).tolist()
        if trial % 2:
            scores = torch.randint(0, 4, (rows, cols), generator=g).float()  # heavy ties
        else:
            scores = torch.rand(rows, cols, generator=g)
        sparsity = torch.rand(1, generator=g).item()
        k = min(round(sparsity * cols), cols - 1)  # a row keeps one
        expected = torch.ones(rows, cols, dtype=torch.bool)
        if k:
            expected.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        got = row_mask(scores, sparsity)
        assert torch.equal(got, expected), (trial, sparsity)
        assert (~got).sum(dim=1).eq(k).all()


def test_wanda_refuses_non_finite_inputs():
    # a NaN k-th score would compare false with everything and drop nothing: the layer would stay dense
    solver = WandaSolver(nn.Linear(5, 2))
    solver.add_batch(torch.full((3, 5), float("nan")))
    with pytest.raises(DataError, match="NaN or inf: check the calibration data"):
        solver.prune(0.5, Unstructured())


@pytest.mark.parametrize("columns", [5, 64, 300])
def test_sparsegpt_inverse_factor_is_the_upper_cholesky_factor_of_the_damped_inverse(columns):
    # U upper triangular with a positive diagonal and U^T U = (H + damp I)^-1: the float64 factor, within
    # float32 rounding, on an ill-conditioned Hessian (a few loud input features)
    torch.manual_seed(0)
    X = torch.randn(4 * columns, columns, dtype=torch.float64) * torch.rand(columns, dtype=torch.float64)
    X[:, : max(1, columns // 20)] *= 40
    H = 2 * X.t() @ X / X.shape[0]
    solver = SparseGPTSolver(nn.Linear(columns, 4, bias=False), percdamp=0.01)
    U = solver._inverse_factor(H.float().clone())
    assert torch.equal(U, torch.triu(U)) and bool((torch.diagonal(U) > 0).all())
    damped = H + 0.01 * torch.diagonal(H).mean() * torch.eye(columns, dtype=torch.float64)
    reference = torch.linalg.cholesky(torch.linalg.inv(damped), upper=True)
    torch.testing.assert_close(U.double(), reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    assert solver.damping_used == 0.01


@pytest.mark.parametrize("seed", range(10))
def test_row_mask_with_nan_rows_matches_a_stable_sort(seed):
    from prunekit.apply.solvers import row_mask

    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (6, 12), generator=g).float()
    scores[torch.rand(6, 12, generator=g) < 0.5] = float("nan")
    for sparsity in (0.25, 0.5, 0.75, 0.9):
        k = round(sparsity * 12)
        expected = torch.ones_like(scores, dtype=torch.bool)
        expected.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
        assert torch.equal(row_mask(scores, sparsity), expected)


def test_all_finite_on_complex_fp8_integer_and_meta_tensors():
    from prunekit.targets import all_finite

    assert not all_finite(torch.tensor([complex(1, float("nan"))]))
    assert not all_finite(torch.tensor([complex(float("inf"), 0)]))
    assert all_finite(torch.tensor([1 + 2j, 3 - 1j]))
    assert not all_finite(torch.tensor([1.0, float("nan")]).to(torch.float8_e4m3fn))
    assert not all_finite(torch.tensor([float("inf")]).to(torch.float8_e5m2))
    assert all_finite(torch.tensor([1.0, -2.0]).to(torch.float8_e5m2))
    assert all_finite(torch.tensor([1, 2]))
    assert all_finite(torch.empty(3, device="meta"))


def test_row_mask_never_empties_a_row():
    scores = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
    assert row_mask(scores, 0.9).sum(dim=1).tolist() == [1, 1, 1, 1]  # round(2.7) = 3 capped at 2
    assert row_mask(torch.rand(3, 1), 0.6).sum(dim=1).tolist() == [1, 1, 1]
    assert (~row_mask(torch.rand(2, 10), 0.7)).sum(dim=1).tolist() == [7, 7]
