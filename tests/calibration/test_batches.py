"""Tests of :mod:`prunekit.calibration.batches`: every calibration form is read one way.

Every data-driven criterion x every calibration form: it works (masks of the requested sparsity) or it is
refused with a PrunekitError that names the forms it can use, and the model is bit-identical.

Models: a small CNN with BatchNorm (forms: (x, y) pairs, a float tensor batch, a loss callable, a
DataLoader) and a tiny LlamaForCausalLM (token tensors, (ids, ids), dicts with labels and padding, a loss
callable, a DataLoader of token batches).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_unchanged, snapshot
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit as pk
from prunekit.calibration.batches import Calibration, next_token_loss, output_logits

transformers = pytest.importorskip("transformers")

GRADIENT = ("grad-weight", "taylor", "obd", "grasp")
ACTIVATION = ("wanda", "sparsegpt", "fluctuation", "apoz")
DATA_DRIVEN = GRADIENT + ACTIVATION
SPARSITY = 0.5


class BNCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(torch.relu(self.fc(x.mean(dim=(2, 3)))))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    model = BNCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.2, 1.5)
    return model.eval()


def _llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _cnn_forms() -> dict:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8,), generator=g)
    return {
        "pairs": [(x[:4], y[:4]), (x[4:], y[4:])],
        "tensor": x,
        "loss": lambda m: nn.functional.cross_entropy(m(x), y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=4),
    }


def _llm_forms() -> dict:
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 64, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # right padding in the second row
    return {
        "tokens": ids,
        "ids-ids": (ids, ids),
        "dict": {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()},
        "loss": lambda m: m(input_ids=ids, labels=ids).loss,
        "loader": DataLoader(TensorDataset(ids), batch_size=1),
    }


def _level(criterion: str) -> str:
    return "channel" if criterion in ("apoz", "bn-scale") else "unstructured"


def _run(build, criterion: str, form) -> tuple[nn.Module, object]:
    model = build()
    before = snapshot(model)
    # bn-scale scores the layers that feed a BatchNorm; fc feeds none (refused by name unless left out)
    ignore = ["fc"] if criterion == "bn-scale" else None
    pruner = pk.Pruner(criterion=criterion, granularity=_level(criterion), ignore=ignore)
    try:
        report = pk.prune(model, pruner, sparsity=SPARSITY, calibration=form, measure=False)
    except pk.PrunekitError as e:
        assert_unchanged(model, before)
        return model, e
    return model, report


def _assert_sparsity(model: nn.Module, criterion: str) -> None:
    masks = [(n, pk.get_mask(m)) for n, m in model.named_modules() if hasattr(m, "parametrizations")]
    assert masks, criterion
    kept = sum(int(m.sum()) for _, m in masks)
    total = sum(m.numel() for _, m in masks)
    assert 1 - kept / total == pytest.approx(SPARSITY, abs=0.03), criterion
    if _level(criterion) == "channel":
        for name, m in masks:
            rows = m.reshape(m.shape[0], -1)
            assert bool((rows.all(1) | ~rows.any(1)).all()), name


@pytest.mark.parametrize("criterion", DATA_DRIVEN + ("bn-scale",))
@pytest.mark.parametrize("form", ["pairs", "tensor", "loss", "loader"])
def test_cnn_forms(criterion, form):
    model, out = _run(_cnn, criterion, _cnn_forms()[form])
    if form == "tensor" and criterion in GRADIENT:
        # a float batch has no targets: no loss, so no gradient; the error names what works
        assert isinstance(out, pk.DataError), out
        assert criterion in str(out) and "(inputs, targets)" in str(out) and "loss" in str(out)
        return
    assert isinstance(out, pk.Report), f"{criterion} x {form}: {out!r}"
    _assert_sparsity(model, criterion)


@pytest.mark.parametrize("criterion", DATA_DRIVEN)
@pytest.mark.parametrize("form", ["tokens", "ids-ids", "dict", "loss", "loader"])
def test_llama_forms(criterion, form):
    model, out = _run(_llama, criterion, _llm_forms()[form])
    assert isinstance(out, pk.Report), f"{criterion} x {form}: {out!r}"
    _assert_sparsity(model, criterion)


def test_padding_changes_no_llama_statistic():
    """Positions the attention mask marks as padding enter no statistic: padding those positions with other
    tokens gives the same masks."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 64, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    other = ids.clone()
    other[1, 8:] = (other[1, 8:] + 7) % 64
    got = []
    for batch_ids in (ids, other):
        model = _llama()
        pk.prune(
            model,
            pk.Pruner("wanda"),
            sparsity=SPARSITY,
            measure=False,
            calibration={"input_ids": batch_ids, "attention_mask": mask},
        )
        got.append({n: pk.get_mask(m) for n, m in model.named_modules() if hasattr(m, "parametrizations")})
    assert got[0].keys() == got[1].keys() and all(torch.equal(got[0][k], got[1][k]) for k in got[0])


def test_gradient_criterion_refuses_data_without_a_loss_and_names_the_forms():
    model = _cnn()
    before = snapshot(model)
    with pytest.raises(pk.DataError) as info:
        pk.prune(model, "snip", sparsity=0.5, calibration=torch.randn(4, 3, 8, 8), measure=False)
    text = str(info.value)
    assert "grad-weight" in text and "(inputs, targets)" in text and "callable" in text
    assert_unchanged(model, before)


def test_at_init_methods_run_on_a_language_model():
    """grasp and synflow read token ids as token ids (no float ones), through the unified collector."""
    forms = _llm_forms()
    model = _llama()
    report = pk.prune(model, "grasp", sparsity=SPARSITY, calibration=forms["tokens"], measure=False)
    assert report.sparsity == pytest.approx(SPARSITY, abs=0.01)
    model = _llama()
    report = pk.prune(model, "synflow", sparsity=SPARSITY, example_inputs=forms["tokens"], rounds=2, measure=False)
    assert report.sparsity == pytest.approx(SPARSITY, abs=0.01)


def test_grasp_runs_through_fused_attention():
    """GraSP's double back-propagation runs under the math attention kernel, so a ViT (fused scaled dot
    product attention) is scored rather than crashing."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(
        image_size=16, patch_size=4, num_layers=1, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
    ).eval()
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    report = pk.prune(model, "grasp", sparsity=SPARSITY, calibration=[(x, y)], measure=False)
    assert report.sparsity == pytest.approx(SPARSITY, abs=0.01)


def test_calibration_refuses_strings_and_empty():
    with pytest.raises(pk.DataError, match="string"):
        Calibration.of("some text")
    with pytest.raises(pk.MissingDataError):
        Calibration.of(None)
    with pytest.raises(pk.DataError, match="empty"):
        list(Calibration.of([]).batches())


def test_each_form_is_read_as_its_batches():
    x, y = torch.ones(2, 3), torch.zeros(2, dtype=torch.long)
    assert len(list(Calibration.of(x).batches())) == 1  # a tensor is one batch
    assert len(list(Calibration.of((x, y)).batches())) == 1  # so is one (inputs, targets) pair
    assert len(list(Calibration.of((x, x)).batches())) == 2  # two float batches of one form: two batches
    assert len(list(Calibration.of({"input_ids": y[None]}).batches())) == 1
    assert len(list(Calibration.of([x, x, x], max_batches=2).batches())) == 2
    assert Calibration.of(lambda m: m(x).sum()).is_loss_callable
    with pytest.raises(pk.DataError, match="no batches"):
        list(Calibration.of(lambda m: m(x).sum()).batches())
    with pytest.raises(pk.DataError, match="string"):
        list(Calibration.of(["text"]).batches())


def test_next_token_loss_by_hand():
    # uniform logits over 2 tokens: every prediction costs ln 2; position t predicts ids[t + 1]
    logits = torch.zeros(1, 3, 2)
    ids = torch.tensor([[0, 1, 1]])
    assert next_token_loss(logits, ids).item() == pytest.approx(math.log(2))
    logits[0, 0] = torch.tensor([0.0, math.log(3)])  # predicts ids[1] = 1 with p = 3/4
    assert next_token_loss(logits, ids).item() == pytest.approx((-math.log(0.75) + math.log(2)) / 2)
    # a padded target is left out: only the first prediction counts
    mask = torch.tensor([[True, True, False]])
    assert next_token_loss(logits, ids, mask).item() == pytest.approx(-math.log(0.75))


def test_losses_are_one_per_batch_and_logits_are_found_in_any_output():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()  # uniform logits: cross entropy ln 2 per sample
    pairs = [(torch.ones(3, 2), torch.tensor([0, 1, 0])), (torch.ones(1, 2), torch.tensor([1]))]
    losses = list(Calibration.of(pairs).losses(model))
    assert [round(v.item(), 6) for v in losses] == [round(math.log(2), 6)] * 2
    t = torch.ones(2)
    assert output_logits(t) is t and output_logits((t, None)) is t and output_logits([t]) is t
    with pytest.raises(pk.DataError, match="not logits"):
        output_logits({"x": t})
