"""Which weight axis is a layer's output and which its input, for every layer kind prunekit prunes.

Patterns are defined on a layer's real axes: N:M groups run along its inputs, channels are its outputs,
also for layers that store their weight transposed (ConvTranspose*, transformers' Conv1D), for grouped
layers, for layers a first pruning wrapped in a parametrization and for layers under weight_norm. Pruning
a pruned model again works and only shrinks its masks.
"""

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import prunekit as pk
from prunekit.apply.masks import get_mask
from prunekit.layout import base_class, is_prunable, weight_layout

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

# (name, factory, input shape) for every layer kind; every input axis is a multiple of 4
LAYERS = {
    "linear": (lambda: nn.Linear(8, 12), (3, 8)),
    "conv1d": (lambda: nn.Conv1d(8, 12, 3), (2, 8, 9)),
    "conv2d": (lambda: nn.Conv2d(8, 12, 3), (2, 8, 6, 6)),
    "conv3d": (lambda: nn.Conv3d(8, 12, 2), (1, 8, 4, 4, 4)),
    "conv2d-grouped": (lambda: nn.Conv2d(16, 12, 3, groups=2), (2, 16, 6, 6)),
    "convtranspose1d": (lambda: nn.ConvTranspose1d(8, 12, 3), (2, 8, 5)),
    "convtranspose2d": (lambda: nn.ConvTranspose2d(8, 12, 3, stride=2), (2, 8, 4, 4)),
    "convtranspose3d": (lambda: nn.ConvTranspose3d(8, 12, 2), (1, 8, 3, 3, 3)),
    "convtranspose2d-grouped": (lambda: nn.ConvTranspose2d(16, 12, 3, groups=2), (2, 16, 4, 4)),
    "hf-conv1d": (lambda: Conv1D(12, 8), (3, 8)),  # transformers' Conv1D(nf=out, nx=in), weight [in, out]
}
WRAPS = ("plain", "masked", "weight-norm")
N_IN, N_OUT = 8, 12


def _layer(kind: str, wrap: str) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    make, shape = LAYERS[kind]
    layer = make()
    with torch.no_grad():  # distinct magnitudes, so the kept weights are known exactly
        w = layer.weight
        w.copy_((torch.randperm(w.numel()).reshape(w.shape).float() + 1.0) * torch.sign(torch.randn(w.shape)))
    if wrap == "masked":  # a first pruning: the class becomes Parametrized<Name>
        pk.prune(layer, "magnitude", sparsity=0.25, prune_classifier=True, measure=False)
    elif wrap == "weight-norm":
        layer = weight_norm(layer, dim=0)
    return layer, torch.randn(shape)


def _canonical_mask(layer: nn.Module) -> torch.Tensor:
    return weight_layout(layer).to_canonical(get_mask(layer))


def _in_groups(canonical: torch.Tensor, m: int = 4) -> torch.Tensor:
    """Kept count of every group of ``m`` consecutive inputs at each (out, kernel) position."""
    moved = canonical.movedim(1, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // m, m).sum(-1)


@pytest.mark.parametrize("kind", LAYERS)
def test_layout_maps_the_real_output_axis(kind):
    """Zeroing canonical row ``o`` silences exactly output channel ``o`` of the layer."""
    layer, x = _layer(kind, "plain")
    layout = weight_layout(layer)
    assert layout is not None and is_prunable(layer)
    w = layer.weight.detach()
    canon = layout.to_canonical(w)
    assert canon.shape[0] == N_OUT
    assert torch.equal(layout.from_canonical(canon), w)
    assert layout.canonical_shape(tuple(w.shape)) == tuple(canon.shape)
    with torch.no_grad():
        zeroed = canon.clone()
        zeroed[5] = 0
        layer.weight.copy_(layout.from_canonical(zeroed))
        y = layer(x)
    channels = _channels_first(kind, y)
    assert torch.equal(channels[:, 5], torch.full_like(channels[:, 5], layer.bias[5].item()))
    for c in range(N_OUT):
        if c != 5:
            assert not torch.equal(channels[:, c], torch.full_like(channels[:, c], layer.bias[c].item()))


def _channels_first(kind: str, y: torch.Tensor) -> torch.Tensor:
    return y.movedim(-1, 1) if kind in ("linear", "hf-conv1d") else y


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("kind", LAYERS)
def test_kind_is_decided_by_what_the_module_is(kind, wrap):
    layer, _ = _layer(kind, wrap)
    plain, _ = _layer(kind, "plain")
    assert base_class(layer) is type(plain)
    assert weight_layout(layer) == weight_layout(plain)


@pytest.mark.parametrize("wrap", WRAPS)
@pytest.mark.parametrize("kind", LAYERS)
def test_nm_runs_along_inputs_and_repruning_only_shrinks(kind, wrap):
    layer, x = _layer(kind, wrap)
    before = get_mask(layer)
    dense = weight_layout(layer).to_canonical(layer.weight.detach().clone()).abs()
    pk.prune(layer, "magnitude", sparsity=0.5, pattern="2:4", prune_classifier=True, measure=False)
    after = get_mask(layer)
    canon = _canonical_mask(layer)
    counts = _in_groups(canon)
    if before is None:
        assert bool((counts == 2).all())  # exactly 2 of every 4 consecutive inputs, at every output
    else:
        assert bool((counts <= 2).all())
        assert bool((after <= before).all())
    if before is None:  # the two kept weights of each group are its two largest magnitudes
        moved = dense.movedim(1, -1)
        groups = moved.reshape(*moved.shape[:-1], -1, 4)
        kept = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
        assert torch.equal(kept.reshape(moved.shape).movedim(-1, 1), canon)
    # prune again with the same and with other methods: the mask only shrinks and the layer still runs
    for method, kw in (
        ("magnitude", {"pattern": "2:4", "sparsity": 0.5}),
        ("magnitude", {"sparsity": 0.75}),
        ("random", {"pattern": "channel", "sparsity": 0.5}),
        ("magnitude", {"pattern": "2x4", "sparsity": 0.8}),
    ):
        previous = get_mask(layer).clone()
        pk.prune(layer, method, prune_classifier=True, measure=False, **kw)
        now = get_mask(layer)
        assert bool((now <= previous).all()), method
        assert 1.0 - now.float().mean().item() >= min(kw["sparsity"] - 0.05, 1.0 - previous.float().mean().item())
        assert sum(isinstance(p, pk.apply.masks.Mask) for p in layer.parametrizations.weight) == 1
        assert torch.isfinite(layer(x)).all()


@pytest.mark.parametrize("kind", LAYERS)
def test_channel_and_block_use_the_real_axes(kind):
    layer, x = _layer(kind, "plain")
    pk.prune(layer, "magnitude", sparsity=0.5, pattern="channel", prune_classifier=True, measure=False)
    canon = _canonical_mask(layer)
    rows = canon.reshape(N_OUT, -1)
    whole = rows.all(1) | ~rows.any(1)
    assert bool(whole.all()) and int((~rows.any(1)).sum()) == N_OUT // 2  # whole output channels, half of them
    gone = torch.nonzero(~rows.any(1)).reshape(-1)
    with torch.no_grad():
        channels = _channels_first(kind, layer(x))
    for c in gone.tolist():  # a removed channel outputs its bias only
        assert torch.equal(channels[:, c], torch.full_like(channels[:, c], layer.bias[c].item()))

    layer, _ = _layer(kind, "plain")
    pk.prune(layer, "magnitude", sparsity=0.5, pattern="4x2", prune_classifier=True, measure=False)
    flat = _canonical_mask(layer).reshape(N_OUT, -1)
    tiles = flat.reshape(N_OUT // 4, 4, flat.shape[1] // 2, 2).transpose(1, 2).reshape(N_OUT // 4, -1, 8)
    assert bool((tiles.all(-1) | ~tiles.any(-1)).all())  # 4 outputs x 2 inputs tiles, kept or removed whole


def test_nm_check_names_the_input_axis():
    layer = nn.ConvTranspose2d(6, 8, 3)  # 6 inputs: no 2:4; 8 outputs would have fitted along dim 1
    with pytest.raises(pk.PatternError, match="input dim has 6 weights"):
        pk.prune(layer, "magnitude", sparsity=0.5, pattern="2:4", prune_classifier=True, measure=False)
    assert get_mask(layer) is None


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval(), torch.randint(0, 64, (2, 8))


def test_gpt2_nm_groups_its_inputs_and_prunes_twice():
    """GPT-2's Conv1D stores [in, out]: 2:4 keeps 2 of every 4 inputs of each output, and a second
    pruning finds the layers again although their class is now ParametrizedConv1D."""
    model, ids = _gpt2()
    pk.prune(model, "magnitude", sparsity=0.5, pattern="2:4", example_inputs=ids, measure_latency=False)
    attn = model.transformer.h[0].attn.c_attn
    assert type(attn).__name__ == "ParametrizedConv1D"
    w = attn.weight.detach()  # [in=32, out=96]
    assert int((w != 0).reshape(8, 4, 96).sum(1).max()) == 2
    assert int((w != 0).reshape(32, 24, 4).sum(2).max()) > 2
    first = {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}
    assert len(first) == 4  # c_attn, c_proj, c_fc, mlp c_proj (lm_head is tied to the embedding)
    report = pk.prune(model, "magnitude", sparsity=0.75, example_inputs=ids, measure_latency=False)
    second = {n: get_mask(m) for n, m in model.named_modules() if get_mask(m) is not None}
    assert second.keys() == first.keys()
    for n in first:
        assert bool((second[n] <= first[n]).all())
        assert abs((1 - second[n].float().mean().item()) - 0.75) < 1e-3
    assert {row.name for row in report.layers if row.target is not None} == set(first)


def test_llm_solvers_reprune_a_masked_gpt2_along_inputs():
    from prunekit.llm.prune import prune_causal_lm

    model, ids = _gpt2()
    pk.prune(model, "magnitude", sparsity=0.5, example_inputs=ids, measure_latency=False)
    first = {n: get_mask(m).clone() for n, m in model.named_modules() if get_mask(m) is not None}
    prune_causal_lm(model, "wanda", pattern="2:4", calibration=[ids])
    for n, m in model.named_modules():
        if n in first:
            mask = get_mask(m)
            assert bool((mask <= first[n]).all())
            w = m.weight.detach()
            assert bool((w[~mask] == 0).all())
            assert int((w != 0).reshape(w.shape[0] // 4, 4, w.shape[1]).sum(1).max()) <= 2  # along inputs
