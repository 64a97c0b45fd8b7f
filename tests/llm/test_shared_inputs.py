"""Matrices fed the same input share one statistics accumulator (and SparseGPT one factorisation and one
column sweep): the pruned weights equal those of the per-matrix path."""

from __future__ import annotations

import copy

import pytest
import torch

from prunekit.apply.solvers import WandaSolver
from prunekit.llm.prune import SharedInputs, prune_causal_lm
from prunekit.llm.runner import LayerVisitor, run_layerwise

from .conftest import calibration, tiny_model


def _linear_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach().clone()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and ".layers." in n or ".h." in n and hasattr(m, "weight")
    }


@pytest.mark.parametrize("family", ["llama", "opt", "gemma3"])
@pytest.mark.parametrize(
    ("method", "pattern", "allocation"),
    [
        ("wanda", None, None),
        ("wanda", "2:4", None),
        ("sparsegpt", None, None),
        ("sparsegpt", "2:4", None),
        ("sparsegpt", None, "erk"),  # members of one group at different sparsities
    ],
)
def test_shared_statistics_equal_the_per_matrix_path(family, method, pattern, allocation):
    base = tiny_model(family)
    shared, alone = copy.deepcopy(base), copy.deepcopy(base)
    data = calibration()
    kw = dict(sparsity=0.5, pattern=pattern, allocation=allocation, calibration=data, progress=False)
    a = prune_causal_lm(shared, method, **kw)
    b = prune_causal_lm(alone, method, share_inputs=False, **kw)
    assert a.layer_sparsity == b.layer_sparsity
    wa, wb = _linear_weights(shared), _linear_weights(alone)
    assert wa.keys() == wb.keys() and len(wa) > 0
    changed = 0
    for name in wa:
        assert torch.equal(wa[name] != 0, wb[name] != 0), name  # the same masks
        if method == "wanda":
            assert torch.equal(wa[name], wb[name]), name
        else:
            torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6)
        changed += int(not torch.equal(wa[name], _linear_weights(base)[name]))
    assert changed > 0


def test_shared_statistics_with_padded_batches():
    base = tiny_model("llama")
    shared, alone = copy.deepcopy(base), copy.deepcopy(base)
    ids = calibration(n=2, batch=2, seq=16)
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    data = [{"input_ids": t, "attention_mask": mask} for t in ids]
    prune_causal_lm(shared, "sparsegpt", sparsity=0.5, calibration=data, progress=False)
    prune_causal_lm(alone, "sparsegpt", sparsity=0.5, calibration=data, progress=False, share_inputs=False)
    for name, w in _linear_weights(shared).items():
        other = _linear_weights(alone)[name]
        assert torch.equal(w != 0, other != 0), name
        torch.testing.assert_close(w, other, rtol=1e-5, atol=1e-6)


class _Groups(LayerVisitor):
    """Records the groups SharedInputs finds in every layer, and the accumulated norms."""

    modifies = False

    def __init__(self, share: bool):
        self.share = share
        self.found: list[list[list[str]]] = []
        self.norms: dict[str, torch.Tensor] = {}

    def start(self, job):
        self.inputs = SharedInputs({rel: WandaSolver(m, rel) for rel, m in job.linears.items()}, share=self.share)
        return self.inputs.consumers()

    def finish(self, job):
        self.found.append([[s.layer_name for s in g] for g in self.inputs.groups()])
        for s in self.inputs.adopt():
            self.norms[f"{job.index}.{s.layer_name}"] = s.sq_norms.clone()


def test_groups_come_from_the_input_tensors_not_names():
    model = tiny_model("llama")
    shared, alone = _Groups(True), _Groups(False)
    run_layerwise(model, calibration(), shared, progress=False)
    run_layerwise(model, calibration(), alone, progress=False)
    expected = [
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
    assert shared.found == [expected, expected]
    assert all(len(g) == 1 for layer in alone.found for g in layer)
    assert shared.norms.keys() == alone.norms.keys()
    for key, value in shared.norms.items():
        assert torch.equal(value, alone.norms[key]), key


class _Norms(LayerVisitor):
    """Gathers every Linear's Wanda norms; changes nothing, but says it modifies (so the runner may cut the
    statistics forward short when the visitor reads no outputs)."""

    def __init__(self, wants_outputs: bool):
        self.wants_outputs = wants_outputs
        self.norms: dict[str, torch.Tensor] = {}
        self.observed = 0

    def start(self, job):
        self.solvers = {rel: WandaSolver(m, rel) for rel, m in job.linears.items()}
        return {rel: s.add_batch for rel, s in self.solvers.items()}

    def observe(self, job, inputs, outputs):
        self.observed += 1

    def finish(self, job):
        for rel, s in self.solvers.items():
            self.norms[f"{job.index}.{rel}"] = s.sq_norms.clone()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_statistics_pass_cut_short_gathers_the_same_statistics(family):
    model = tiny_model(family)
    full, short = _Norms(True), _Norms(False)
    data = calibration(n=3)
    run_layerwise(model, data, full, progress=False)
    run_layerwise(model, data, short, progress=False)
    assert full.observed == 2 * 3 and short.observed == 2  # cut short after the first batch of each layer
    assert full.norms.keys() == short.norms.keys() and len(full.norms) > 0
    for key, value in full.norms.items():
        assert torch.equal(value, short.norms[key]), key
