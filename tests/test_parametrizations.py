"""Masks and surgery on weights that already carry a parametrization (weight_norm, as in wav2vec2's
positional convolution, whose weight is computed from ``original0 = g`` and ``original1 = v``)."""

import numpy as np
import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm, orthogonal, weight_norm

import prunekit as pk
from prunekit.apply.masks import Mask, assign_weight_, get_mask
from prunekit.surgery.remove import new_shapes, remove_


def _normed_conv(dim=0, groups=1):
    torch.manual_seed(0)
    conv = weight_norm(nn.Conv1d(8, 8, 3, padding=1, groups=groups), dim=dim)
    with torch.no_grad():  # g differs from ||v||, so a slip in either shows in the weight
        conv.parametrizations.weight.original0.mul_(1.5)
    return conv


class AudioEncoder(nn.Module):
    """Conv feature extractor, projection, a grouped weight-normed positional conv, feed-forward, head."""

    def __init__(self):
        super().__init__()
        self.feat = nn.Sequential(nn.Conv1d(1, 16, 10, stride=5), nn.GELU(), nn.Conv1d(16, 16, 3, stride=2), nn.GELU())
        self.proj = nn.Linear(16, 24)
        self.pos = weight_norm(nn.Conv1d(24, 24, 5, padding=2, groups=4), name="weight", dim=2)
        self.ff = nn.Sequential(nn.Linear(24, 48), nn.GELU(), nn.Linear(48, 24))
        self.out = nn.Linear(24, 6)

    def forward(self, wav):
        h = self.proj(self.feat(wav.unsqueeze(1)).transpose(1, 2))
        h = h + nn.functional.gelu(self.pos(h.transpose(1, 2))).transpose(1, 2)
        return self.out(h + self.ff(h))


@pytest.mark.parametrize("dim", [0, 2, None])
def test_magnitude_masks_the_weight_norm_weight(dim):
    conv = _normed_conv(dim)
    g = conv.parametrizations.weight.original0.detach().clone()
    v = conv.parametrizations.weight.original1.detach().clone()
    dense = conv.weight.detach().clone()
    pk.prune(conv, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    plist = conv.parametrizations.weight
    assert isinstance(plist[0], _WeightNorm) and isinstance(plist[1], Mask)  # the mask comes after
    assert torch.equal(plist.original0, g) and torch.equal(plist.original1, v)  # nothing stored changed
    mask = get_mask(conv)
    assert int(mask.sum()) == dense.numel() // 2
    assert torch.equal(conv.weight, dense * mask)
    assert torch.equal(mask, dense.abs() >= dense.abs().flatten().kthvalue(dense.numel() // 2 + 1).values)


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


def test_gradient_criterion_reads_the_computed_weight():
    """SNIP scores |dL/dw * w| with w the weight as computed (here g * v / ||v||)."""
    conv = _normed_conv(dim=0)
    x, y = torch.randn(4, 8, 6), torch.randn(4, 8, 6)

    def loss(model):
        return (model(x) - y).pow(2).mean()

    w = conv.weight.detach().clone().requires_grad_(True)
    grad = torch.autograd.grad((nn.functional.conv1d(x, w, conv.bias, padding=1) - y).pow(2).mean(), w)[0]
    expected = (grad * w.detach()).abs()
    k = expected.numel() // 2
    pk.prune(conv, "snip", sparsity=0.5, calibration=loss, prune_classifier=True, measure=False)
    mask = get_mask(conv)
    assert torch.equal(mask, ~pk.granularity.lowest_k_mask(expected.reshape(-1), k).reshape(mask.shape))


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


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_surgery_slices_g_and_v_consistently(dim):
    """Removing output channels and an input channel of a weight-normed conv: g and v are sliced together
    (g rescaled where the norm runs over a sliced dim) and every kept output is what it was."""
    conv = _normed_conv(dim)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 10)
    x[:, 0] = 0  # the input channel that goes
    with torch.no_grad():
        ref = conv(x)
    removal = {"0.weight": {0: np.array([1, 5]), 1: np.array([0])}, "0.bias": {0: np.array([1, 5])}}
    assert new_shapes(model, removal)["0.parametrizations.weight.original1"] == (6, 7, 3)
    remove_(model, removal)
    keep = [0, 2, 3, 4, 6, 7]
    assert (conv.in_channels, conv.out_channels) == (7, 6)
    assert tuple(conv.parametrizations.weight.original1.shape) == (6, 7, 3)
    with torch.no_grad():
        out = conv(x[:, 1:])
    assert torch.allclose(out, ref[:, keep], atol=1e-5)


def test_surgery_slices_a_masked_weight_named_by_its_stored_tensor():
    conv = _normed_conv(dim=0)
    pk.prune(conv, "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    model = nn.Sequential(conv)
    x = torch.randn(2, 8, 10)
    with torch.no_grad():
        ref = conv(x)
    remove_(model, {"0.parametrizations.weight.original1": {0: np.array([2])}, "0.bias": {0: np.array([2])}})
    assert tuple(get_mask(conv).shape) == (7, 8, 3) and conv.out_channels == 7
    with torch.no_grad():
        assert torch.allclose(conv(x), ref[:, [0, 1, 3, 4, 5, 6, 7]], atol=1e-5)


def test_surgery_refuses_an_unknown_parametrization_before_any_change():
    torch.manual_seed(0)
    model = nn.Sequential(orthogonal(nn.Linear(4, 4)), nn.Linear(4, 2))
    before = snapshot(model)
    with pytest.raises(pk.UnsupportedModuleError, match="leave_parametrized=True"):
        remove_(model, {"0.weight": {0: np.array([1])}, "0.bias": {0: np.array([1])}, "1.weight": {1: np.array([1])}})
    assert_unchanged(model, before)
    assert model[1].in_features == 4


@pytest.mark.parametrize("method", ["magnitude", "l2-channel"])
def test_weight_normed_encoder_prunes_or_refuses_cleanly(method):
    torch.manual_seed(0)
    model = AudioEncoder().eval()
    wav = torch.randn(2, 800)
    before = snapshot(model)
    with torch.no_grad():
        shape = model(wav).shape
    try:
        pk.prune(model, method, sparsity=0.5, example_inputs=wav, measure_latency=False)
    except pk.PrunekitError:
        assert method == "l2-channel"  # the positional conv's channels may be refused, never half-cut
        assert_unchanged(model, before)
        # the advice works: the weight-normed conv kept whole, the rest is pruned
        pk.prune(model, method, sparsity=0.5, example_inputs=wav, measure_latency=False, ignore=["pos"])
    assert parametrize.is_parametrized(model.pos, "weight")
    assert isinstance(model.pos.parametrizations.weight[0], _WeightNorm)
    with torch.no_grad():
        out = model(wav)
    assert out.shape == shape and torch.isfinite(out).all()
    if method == "magnitude":
        assert isinstance(model.pos.parametrizations.weight[1], Mask)
        assert abs(pk.apply.masks.sparsity(model.pos.weight.detach()) - 0.5) < 0.01
    else:
        assert model.ff[0].out_features < 48


def test_wav2vec2_positional_conv_is_masked_under_weight_norm():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )
    model = transformers.Wav2Vec2ForCTC(cfg).eval()
    wav = torch.randn(1, 1600)
    pk.prune(model, "magnitude", sparsity=0.5, example_inputs=wav, measure_latency=False)
    conv = model.wav2vec2.encoder.pos_conv_embed.conv
    kinds = [type(p) for p in conv.parametrizations.weight]
    assert kinds[-1] is Mask and _WeightNorm in kinds
    assert abs(pk.apply.masks.sparsity(conv.weight.detach()) - 0.5) < 0.01
    with torch.no_grad():
        assert torch.isfinite(model(wav).logits).all()
