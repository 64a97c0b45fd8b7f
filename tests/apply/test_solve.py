"""Tests of :mod:`prunekit.apply.solve`: layer-wise solvers (magnitude, Wanda, SparseGPT) on models other than
causal LMs: CNNs and a ViT.

Real inputs: scikit-learn's digits, upsampled to 16x16 RGB. Every layer's reconstruction error is measured on
the inputs it really receives (``prunekit.apply.solve.reconstruction_errors``).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import prunekit as pk
from prunekit.apply.solve import dense_matrices, reconstruction_errors, solve_layerwise
from prunekit.datasets import load_digits
from prunekit.errors import DataError, ModelError, PatternError
from prunekit.im2col import to_matrix

METHODS = ("magnitude", "wanda", "sparsegpt")


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.down is None else self.down(x)))


class SmallResNet(nn.Module):
    """A ResNet in miniature: a 3-channel stem, residual blocks with a 1x1 downsample, a grouped and a
    depthwise convolution, a hidden Linear and the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = Block(16, 16)
        self.layer2 = Block(16, 32, stride=2)
        self.grouped = nn.Conv2d(32, 32, 3, 1, 1, groups=4)
        self.depthwise = nn.Conv2d(32, 32, 3, 1, 1, groups=32)
        self.hidden = nn.Linear(32, 32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        x = F.relu(self.depthwise(F.relu(self.grouped(x))))
        return self.fc(F.relu(self.hidden(x.mean((2, 3)))))


def tiny_vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: one thread is as fast, and spares OpenMP's spinning when other jobs share the
    CPUs (with two threads on a busy 2-core machine this file took 16x longer)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x, _ = load_digits()
    x = F.interpolate(x[:96], size=16, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - x.mean()) / x.std()


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    cnn = SmallResNet().eval()
    with torch.no_grad():  # BatchNorm statistics of real images, as a trained network has
        cnn.train()
        x, _ = load_digits()
        cnn(F.interpolate(x[:256], size=16, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1))
        cnn.eval()
    torch.manual_seed(0)
    return {"cnn": cnn, "vit": tiny_vit().eval()}


def nm_groups(weight: torch.Tensor, m: int) -> torch.Tensor:
    """A canonical weight's N:M groups as granularity.NM forms them (along dim 1 at each other position)."""
    moved = weight.movedim(1, -1) if weight.dim() > 2 else weight
    return moved.reshape(-1, m)


# ------------------------------------------------------------------------------------------ one layer


def test_attention_out_proj_is_solved_on_the_heads_outputs():
    # torch's attention reads out_proj's weight without calling it; the solver must still see the heads'
    # concatenated outputs: with sparsity 0 SparseGPT reproduces out_proj, and its H is 2 X X^T / n of them
    torch.manual_seed(4)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = mha

        def forward(self, x):
            return self.attn(x, x, x, need_weights=False)[0]

    net = Net()
    x = torch.randn(3, 5, 16)
    heads = {}
    handle = mha.register_forward_hook(lambda m, a, out: heads.setdefault("out", out[0]))
    with torch.no_grad():
        net(x)
    handle.remove()
    ctx = torch.linalg.solve(mha.out_proj.weight.detach(), (heads["out"] - mha.out_proj.bias).reshape(-1, 16).T).T
    dense = dense_matrices(net, ["attn.out_proj"])
    result = solve_layerwise(net, "wanda", sparsity=0.5, calibration=x, targets=["attn.out_proj"], progress=False)
    assert result.rows["attn.out_proj"] == 15
    expected = (dense["attn.out_proj"].abs() * ctx.pow(2).sum(0).sqrt()).argsort(dim=1, stable=True)[:, :8]
    assert torch.equal(expected.sort(1).values, (mha.out_proj.weight == 0).nonzero()[:, 1].reshape(16, 8))


# ------------------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_prune_any_model_through_the_entry_point(models, images, model_name, pattern, method):
    model = copy.deepcopy(models[model_name])
    x = images[:8]
    report = pk.prune(
        model,
        method,
        sparsity=0.5,
        pattern=pattern,
        calibration=list(images[:32].split(16)),
        example_inputs=x,
        skip_incompatible=pattern is not None,
        measure_latency=False,
    )
    first = "stem.0" if model_name == "cnn" else "conv_proj"
    pruned = dict(report_layers(report))
    if pattern is None:
        assert first in pruned
    else:  # 3 input channels cannot be 2:4: left dense and said so
        assert first not in pruned and pk.get_mask(model.get_submodule(first)) is None
        assert any(n.startswith(first) and "does not fit pattern 2:4" in n for n in report.notes)
    for name in pruned:
        module = model.get_submodule(name)
        mask = pk.get_mask(module)
        assert mask is not None, name
        weight = module.weight.detach()
        assert torch.equal(weight[~mask], torch.zeros_like(weight[~mask])), name
        if pattern == "2:4":
            assert torch.all(nm_groups(weight != 0, 4).sum(1) <= 2), name
            assert torch.all(nm_groups(mask, 4).sum(1) == 2), name
        elif method == "wanda":  # per output row, exactly round(0.5 * in') removed
            rows = to_matrix(mask)
            assert torch.all((~rows).sum(1) == round(0.5 * rows.shape[1])), name
        else:
            assert (~mask).float().mean().item() == pytest.approx(0.5, abs=0.02), name
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
    assert pk.get_mask(model.get_submodule("fc" if model_name == "cnn" else "heads.head")) is None


def report_layers(report) -> list[tuple[str, float]]:
    return [(row.name, row.target) for row in report.layers if row.target is not None and row.ignored is None]


def test_a_first_conv_that_cannot_be_24_is_refused_by_name(models, images):
    model = copy.deepcopy(models["cnn"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PatternError, match="stem.0") as err:
        pk.prune(model, "sparsegpt", sparsity=0.5, pattern="2:4", calibration=images[:16])
    assert "depthwise" in str(err.value)  # one input channel per group: no 2:4 either
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("model_name", ["cnn", "vit"])
@pytest.mark.parametrize("pattern", [None, "2:4"])
def test_sparsegpt_reconstructs_better_than_wanda_better_than_magnitude(models, images, model_name, pattern):
    calibration = list(images[:64].split(32))
    errors = {}
    for method in METHODS:
        model = copy.deepcopy(models[model_name])
        targets = [
            t
            for t in pk.targets.select_targets(model).targets
            if pattern is None or t.layout.to_canonical(t.weight).shape[1] % 4 == 0
        ]
        dense = dense_matrices(model, [t.name for t in targets])
        solve_layerwise(
            model, method, sparsity=0.5, pattern=pattern, calibration=calibration, targets=targets, progress=False
        )
        errors[method] = reconstruction_errors(model, dense, calibration)
    layers = list(errors["wanda"])
    assert len(layers) >= (5 if model_name == "vit" else 7)
    total = {m: sum(e.error for e in errors[m].values()) for m in METHODS}
    assert total["sparsegpt"] < total["wanda"] < total["magnitude"], total
    ordered = [
        n for n in layers if errors["sparsegpt"][n].error < errors["wanda"][n].error < errors["magnitude"][n].error
    ]
    assert len(ordered) >= 0.75 * len(layers), {
        m: {n: round(e.relative, 4) for n, e in errors[m].items()} for m in METHODS
    }


def test_sequential_and_one_pass_modes(models, images):
    calibration = list(images[:32].split(16))
    seq, one = copy.deepcopy(models["vit"]), copy.deepcopy(models["vit"])
    r_seq = solve_layerwise(seq, "sparsegpt", sparsity=0.5, calibration=calibration, progress=False)
    r_one = solve_layerwise(one, "sparsegpt", sparsity=0.5, calibration=calibration, progress=False, sequential=False)
    assert r_seq.order == r_one.order and r_seq.order[0] == "conv_proj"
    assert r_seq.order.index("encoder.layers.encoder_layer_0.self_attention.out_proj") < r_seq.order.index(
        "encoder.layers.encoder_layer_0.mlp.0"
    )
    assert r_one.forward_passes == 1 + 2  # the trace, then every batch once
    assert r_seq.forward_passes == 1 + 2 * len(r_seq.order)  # each layer: every batch, stopped at the layer
    # the first layer sees the same inputs either way; later ones see pruned (sequential) or dense inputs
    assert torch.equal(seq.conv_proj.weight, one.conv_proj.weight)
    assert not torch.equal(seq.encoder.layers[1].mlp[3].weight, one.encoder.layers[1].mlp[3].weight)
    assert r_seq.rows["conv_proj"] == 32 * 16 and r_seq.rows["encoder.layers.encoder_layer_0.mlp.0"] == 32 * 17


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 8)
        self.head = nn.Linear(8, 20)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.fc2(F.relu(self.fc1(self.emb(input_ids)))))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_padding_enters_no_statistic(method):
    torch.manual_seed(5)
    base = TokenModel().eval()
    ids = torch.randint(1, 20, (2, 6))
    padded = ids.clone()
    padded[1, 4:] = 0
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    solve_layerwise(
        a,
        method,
        sparsity=0.5,
        calibration=[{"input_ids": padded, "attention_mask": mask}],
        targets=["fc1", "fc2"],
        progress=False,
    )
    solve_layerwise(
        b,
        method,
        sparsity=0.5,
        targets=["fc1", "fc2"],
        progress=False,
        calibration=[{"input_ids": ids[:1]}, {"input_ids": ids[1:, :4]}],
    )
    for name in ("fc1", "fc2"):
        ma, mb = pk.get_mask(a.get_submodule(name)), pk.get_mask(b.get_submodule(name))
        assert torch.equal(ma, mb), name
        assert torch.allclose(a.get_submodule(name).weight, b.get_submodule(name).weight, atol=1e-5), name


def test_layers_the_solvers_cannot_solve_are_refused_by_name(images):
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConvTranspose2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 16 * 16, 4))
    with pytest.raises(ModelError, match=r"1 \(ConvTranspose2d\)"):
        pk.prune(model, "wanda", sparsity=0.5, calibration=images[:4])
    assert pk.get_mask(model[0]) is None
    report = pk.prune(model, "wanda", sparsity=0.5, calibration=images[:4], ignore=["1"], measure_latency=False)
    assert pk.get_mask(model[0]) is not None and pk.get_mask(model[1]) is None
    assert report.layers


def test_layers_that_never_run_and_bad_calibration_are_refused(images):
    model = SmallResNet().eval()
    model.unused = nn.Linear(4, 4)
    with pytest.raises(ModelError, match="never ran.*unused"):
        solve_layerwise(
            model, "wanda", sparsity=0.5, calibration=images[:4], progress=False, targets=["hidden", "unused"]
        )
    with pytest.raises(DataError, match="does not run on .*calibration batch"):
        solve_layerwise(model, "wanda", sparsity=0.5, calibration=torch.randn(2, 5), progress=False, targets=["hidden"])
    with pytest.raises(DataError, match="loss callable"):
        solve_layerwise(
            model,
            "sparsegpt",
            sparsity=0.5,
            calibration=lambda m: m(images[:2]).sum(),
            progress=False,
            targets=["hidden"],
        )


def test_calibration_forms_give_the_same_statistics(images):
    torch.manual_seed(6)
    base = SmallResNet().eval()
    x = images[:16]
    y = torch.zeros(16, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
    forms = {"tensor": x, "list": list(x.split(8)), "pairs": [(x[:8], y[:8]), (x[8:], y[8:])], "loader": loader}
    results = {}
    for label, calibration in forms.items():
        model = copy.deepcopy(base)
        solve_layerwise(
            model, "wanda", sparsity=0.5, calibration=calibration, targets=["layer1.conv1", "hidden"], progress=False
        )
        results[label] = (pk.get_mask(model.layer1.conv1), pk.get_mask(model.hidden))
    for label in forms:
        assert all(torch.equal(a, b) for a, b in zip(results[label], results["tensor"])), label


def test_allocation_spreads_sparsity_on_a_cnn(models, images):
    model = copy.deepcopy(models["cnn"])
    report = pk.prune(model, "wanda", sparsity=0.5, allocation="owl", calibration=images[:32], measure_latency=False)
    sparsities = [row.sparsity for row in report.layers if row.target is not None and row.ignored is None]
    assert max(sparsities) - min(sparsities) > 0.02
    assert report.sparsity == pytest.approx(0.5, abs=0.03)


def test_an_encoder_that_is_not_a_causal_lm_is_pruned_on_its_real_tokens():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    torch.manual_seed(7)
    base = transformers.BertModel(cfg).eval()
    ids = torch.randint(1, 100, (2, 10))
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = 0, 0
    pruned = {}
    for label, calibration in (
        ("padded", [{"input_ids": ids, "attention_mask": mask}]),
        ("unpadded", [{"input_ids": ids[:1]}, {"input_ids": ids[1:, :6]}]),
    ):
        model = copy.deepcopy(base)
        report = pk.prune(
            model,
            "sparsegpt",
            sparsity=0.5,
            pattern="2:4",
            calibration=calibration,
            prune_classifier=True,
            measure_latency=False,
        )
        assert report.sparsity == pytest.approx(0.5)
        pruned[label] = model
    # the pooler reads one vector per sequence: no padding to drop there; every other Linear drops it
    for (name, a), b in zip(pruned["padded"].named_modules(), pruned["unpadded"].modules()):
        if isinstance(a, nn.Linear):
            assert torch.equal(pk.get_mask(a), pk.get_mask(b)), name


def test_causal_lms_keep_the_decoder_layer_runner():
    from prunekit.calibration.families import has_family as has_adapter

    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    assert has_adapter(model) and not has_adapter(SmallResNet())
    with pytest.raises(pk.ConfigError, match="sequential=False"):
        pk.prune(model, "wanda", sparsity=0.5, calibration=[torch.randint(0, 64, (1, 8))], sequential=False)
