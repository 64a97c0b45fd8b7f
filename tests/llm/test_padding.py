"""Padding is not data: positions with ``attention_mask == 0`` enter no calibration statistic and no loss.

Field report: a right-padded batch with its attention_mask gave Wanda masks that differed in up to 5% of a
matrix (SparseGPT 2%) from the same sequences unpadded. Here every layer-wise method must give the same
result for a padded batch as for its sequences one by one, and whatever the pad positions hold.
"""

from __future__ import annotations

import pytest
import torch

import prunekit as pk
from prunekit.errors import DataError, MissingDataError
from prunekit.llm.runner import LayerVisitor, run_layerwise
from prunekit.padding import mask_padding_labels, real_tokens, token_mask

from .conftest import VOCAB, tiny_model

transformers = pytest.importorskip("transformers")

LENGTHS = (16, 10, 13)


def _sequences(seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g) for n in LENGTHS]


def _padded(seqs: list[torch.Tensor], pad: int | None = 0, seed: int = 0) -> dict[str, torch.Tensor]:
    """One right-padded batch; ``pad=None`` fills the padding with random tokens instead of one id."""
    width = max(len(s) for s in seqs)
    g = torch.Generator().manual_seed(seed)
    rows, masks = [], []
    for s in seqs:
        fill = (
            torch.full((width - len(s),), pad, dtype=torch.long)
            if pad is not None
            else torch.randint(0, VOCAB, (width - len(s),), generator=g)
        )
        rows.append(torch.cat([s, fill]))
        masks.append(torch.tensor([1] * len(s) + [0] * (width - len(s))))
    return {"input_ids": torch.stack(rows), "attention_mask": torch.stack(masks)}


def _prune(method: str, calibration) -> dict[str, torch.Tensor]:  # noqa: ANN001
    model = tiny_model("llama", layers=3)
    pk.prune(model, method, sparsity=0.5, calibration=calibration, measure_latency=False)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor], exact: bool) -> None:
    assert got.keys() == ref.keys()
    for k in ref:
        assert got[k].shape == ref[k].shape, k  # the same heads / channels / layers were removed
        assert torch.equal(got[k] == 0, ref[k] == 0), k  # the same mask
        if exact:
            assert torch.equal(got[k], ref[k]), k
        else:
            torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_a_padded_batch_gives_the_masks_of_its_sequences_unpadded(method: str) -> None:
    """The field case: two sequences (16 and 10 tokens) as one right-padded batch with its mask."""
    a, b = _sequences()[:2]
    ref = _prune(method, [a[None], b[None]])
    got = _prune(method, [_padded([a, b])])
    _assert_same(got, ref, exact=False)


METHODS = ["wanda", "sparsegpt", "owl-wanda", "llm-mlp", "llm-heads", "llm-layers", "flap"]


@pytest.mark.parametrize("method", METHODS)
def test_padded_and_unpadded_calibration_give_identical_results(method: str) -> None:
    seqs = _sequences()
    ref = _prune(method, [s[None] for s in seqs])
    got = _prune(method, [_padded(seqs)])
    _assert_same(got, ref, exact=False)


@pytest.mark.parametrize("method", METHODS)
def test_what_the_padding_holds_changes_nothing(method: str) -> None:
    seqs = _sequences(seed=5)
    ref = _prune(method, [_padded(seqs, pad=0)])
    got = _prune(method, [_padded(seqs, pad=None, seed=11)])
    _assert_same(got, ref, exact=True)


class _Counter(LayerVisitor):
    modifies = False

    def __init__(self) -> None:
        self.rows: dict[str, int] = {}
        self.observed: list[tuple[int, ...]] = []

    def start(self, job):  # noqa: ANN001, ANN201
        def add(name: str):  # noqa: ANN202
            return lambda x: self.rows.__setitem__(name, self.rows.get(name, 0) + x.reshape(-1, x.shape[-1]).shape[0])

        return {rel: add(rel) for rel in job.linears}

    def observe(self, job, inputs, outputs) -> None:  # noqa: ANN001
        self.observed.append(tuple(inputs.shape))


def test_the_runner_shows_visitors_real_tokens_only() -> None:
    model = tiny_model("llama", layers=2)
    visitor = _Counter()
    summary = run_layerwise(model, [_padded(_sequences())], visitor)
    real = sum(LENGTHS)
    assert summary.tokens == real
    assert set(visitor.rows) == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert set(visitor.rows.values()) == {2 * real}  # two layers, each Linear saw the real tokens once
    assert visitor.observed == [(real, 64), (real, 64)]


def test_masks_of_the_wrong_shape_or_values_or_all_padding_are_refused_before_any_change() -> None:
    model = tiny_model("llama", layers=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, VOCAB, (2, 8))
    bad = [
        (DataError, {"input_ids": ids, "attention_mask": torch.ones(2, 7, dtype=torch.long)}, "shape"),
        (DataError, {"input_ids": ids, "attention_mask": torch.full((2, 8), 2)}, "tokenizer.s mask"),
        (MissingDataError, {"input_ids": ids, "attention_mask": torch.zeros(2, 8, dtype=torch.long)}, "padding"),
    ]
    for error, batch, words in bad:
        with pytest.raises(error, match=words):
            pk.prune(model, "wanda", sparsity=0.5, calibration=[batch], measure_latency=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_padding_helpers() -> None:
    ids = torch.zeros(2, 3, dtype=torch.long)
    assert token_mask(ids, None) is None
    assert token_mask(ids, torch.ones(2, 3)) is None  # nothing padded
    mask = token_mask(ids, torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert mask.tolist() == [[True, True, False], [True, False, False]]
    x = torch.arange(12.0).reshape(2, 3, 2)
    assert real_tokens(x, mask).tolist() == [[0.0, 1.0], [2.0, 3.0], [6.0, 7.0]]
    with pytest.raises(DataError, match="unpadded"):
        real_tokens(torch.zeros(4, 2), mask, "experts")
    batch = {
        "input_ids": ids,
        "labels": torch.tensor([[5, 6, 7], [8, 9, 10]]),
        "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]]),
    }
    assert mask_padding_labels(batch)["labels"].tolist() == [[5, 6, -100], [8, -100, -100]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, 9, 10]]  # the caller's batch is not changed


@pytest.mark.parametrize("method", ["taylor-channel", "hessian-channel"])
def test_gradient_criteria_ignore_the_loss_at_padding(method: str) -> None:
    """Labels at padded positions (a tokenizer's pad id, or anything) must not enter the loss: the result
    equals the one with ``labels = -100`` there."""
    seqs = _sequences()
    padded = _padded(seqs, pad=None, seed=2)
    with_pad_labels = dict(padded, labels=padded["input_ids"].clone())
    ignored = dict(padded, labels=padded["input_ids"].masked_fill(padded["attention_mask"] == 0, -100))
    results = []
    for batch in (with_pad_labels, ignored):
        model = tiny_model("llama", layers=2)
        pk.prune(
            model,
            method,
            sparsity=0.25,
            calibration=[batch],
            example_inputs={"input_ids": seqs[0][None]},
            measure_latency=False,
        )
        results.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    _assert_same(results[0], results[1], exact=True)


def test_structural_layer_influence_ignores_padding() -> None:
    """The "layer" method measures block influence on example_inputs: padded positions do not count."""
    from prunekit.surgery import plan_layers

    seqs = _sequences()
    model = tiny_model("llama", layers=4)
    scores = [plan_layers(model, _padded(seqs, pad=None, seed=s), 0.5).scores for s in (1, 2)]
    assert scores[0] == scores[1]  # whatever the padding holds
    alone = plan_layers(model, {"input_ids": seqs[0][None]}, 0.5).scores
    first = plan_layers(model, _padded(seqs[:1] + [seqs[0][:5]], pad=None, seed=3), 0.5).scores
    assert alone.keys() == first.keys()
    # a batch of a sequence and a shorter copy of its start: the start's tokens count twice, so compare with
    # the same two sequences fed unpadded as one batch each, averaged by token count
    short = plan_layers(model, {"input_ids": seqs[0][:5][None]}, 0.5).scores
    n_long, n_short = len(seqs[0]), 5
    for k in alone:
        expected = (alone[k] * n_long + short[k] * n_short) / (n_long + n_short)
        assert first[k] == pytest.approx(expected, rel=1e-5, abs=1e-7)
