"""Masks and surgery on weights that already carry a parametrization (weight_norm, as in wav2vec2's
positional convolution, whose weight is computed from ``original0 = g`` and ``original1 = v``)."""

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm, weight_norm

import prunekit as pk
from prunekit.apply.masks import Mask, get_mask


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
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
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
