"""True-sequential calibration: one forward per layer on a merged batch, staged passes otherwise, the same model."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.llm.prune import prune_causal_lm
from prunekit.llm.sequential import layer_workspace, merge_batches

from .conftest import FAMILIES, calibration, tiny_model


def _linear_weights(model):
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if hasattr(m, "weight") and ".layers." in n}


def _linear_weights_any(model):
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() == 2 and any(k in n for k in (".layers.", ".h."))
    }


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize(
    ("method", "pattern"), [("wanda", None), ("wanda", "2:4"), ("sparsegpt", None), ("sparsegpt", "2:4")]
)
def test_merged_batch_and_staged_passes_prune_alike(family, method, pattern):
    """The one-forward path (batches merged, each Linear pruned in its pre-hook) and the staged path (one pass
    per group of Linears reading one tensor, batch by batch) compute the same thing up to float rounding."""
    base = tiny_model(family, layers=2)
    batches = calibration(n=3)
    merged, staged = copy.deepcopy(base), copy.deepcopy(base)
    prune_causal_lm(merged, method, sparsity=0.5, pattern=pattern, calibration=batches, progress=False)
    prune_causal_lm(staged, method, sparsity=0.5, pattern=pattern, calibration=batches, progress=False, merge_mib=0)
    a, b = _linear_weights_any(merged), _linear_weights_any(staged)
    assert a.keys() == b.keys() and a
    for name in a:
        if method == "wanda":  # scores are products of weights and summed norms: the same masks and weights
            assert torch.equal(a[name], b[name]), name
            continue
        # SparseGPT: float rounding of merged vs per-batch products can flip a near-tie of the block mask (the
        # OBS updates of that row then differ); nothing more
        differ = (a[name] == 0) != (b[name] == 0)
        assert differ.float().mean() <= 0.005, (name, int(differ.sum()))
    if method == "sparsegpt":  # and the two models compute the same function, far closer than to the dense one
        x = torch.cat(batches)
        with torch.no_grad():
            la, lb, dense = (m(input_ids=x).logits for m in (merged, staged, base))
        assert (la - lb).norm() <= 0.1 * (lb - dense).norm()


# the groups of Linears fed one input tensor, in the order a LLaMA decoder layer calls them
_LLAMA_GROUPS = [
    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
    ["self_attn.o_proj"],
    ["mlp.gate_proj", "mlp.up_proj"],
    ["mlp.down_proj"],
]


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("merge_mib", [1024.0, 0])
def test_true_sequential_equals_pruning_one_group_after_another(method, merge_mib):
    """On a one-layer model, true-sequential order is: prune q/k/v on the dense inputs, then o_proj on the
    inputs the pruned q/k/v give, then gate/up, then down, each with the two-pass order restricted to it."""
    base = tiny_model("llama", layers=1)
    batches = calibration(n=2)
    ours, reference = copy.deepcopy(base), copy.deepcopy(base)
    prune_causal_lm(ours, method, sparsity=0.5, calibration=batches, progress=False, merge_mib=merge_mib)
    for group in _LLAMA_GROUPS:
        targets = [f"model.layers.0.{rel}" for rel in group]
        prune_causal_lm(
            reference,
            method,
            sparsity=0.5,
            calibration=batches,
            progress=False,
            targets=targets,
            true_sequential=False,
            merge_mib=merge_mib,
        )
    a, b = _linear_weights(ours), _linear_weights(reference)
    for name in a:
        differ = (a[name] == 0) != (b[name] == 0)
        if method == "wanda" or merge_mib == 0:  # the same computation, batch by batch
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
        else:  # merged: near-ties of SparseGPT's block mask may flip (see above)
            assert differ.float().mean() <= 0.005, (name, int(differ.sum()))


def test_two_pass_order_calibrates_later_matrices_on_dense_inputs():
    """``true_sequential=False`` is a different order: q/k/v agree (both see the dense layer input), o_proj
    does not (it sees the dense attention output instead of the pruned one)."""
    base = tiny_model("llama", layers=1)
    batches = calibration(n=2)
    seq, two = copy.deepcopy(base), copy.deepcopy(base)
    prune_causal_lm(seq, "wanda", sparsity=0.5, calibration=batches, progress=False)
    prune_causal_lm(two, "wanda", sparsity=0.5, calibration=batches, progress=False, true_sequential=False)
    a, b = _linear_weights(seq), _linear_weights(two)
    assert torch.equal(a["model.layers.0.self_attn.q_proj"], b["model.layers.0.self_attn.q_proj"])
    assert not torch.equal(a["model.layers.0.self_attn.o_proj"], b["model.layers.0.self_attn.o_proj"])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_two_pass_order_merges_batches_too_and_prunes_alike(method):
    """The two-pass order merges equal-length batches as well (its statistics are sums over tokens): the same
    masks as batch by batch for Wanda, up to near-ties of the block mask for SparseGPT."""
    base = tiny_model("llama", layers=2)
    batches = calibration(n=3)
    merged, single = copy.deepcopy(base), copy.deepcopy(base)
    run = prune_causal_lm(merged, method, sparsity=0.5, calibration=batches, progress=False, true_sequential=False)
    prune_causal_lm(
        single, method, sparsity=0.5, calibration=batches, progress=False, true_sequential=False, merge_mib=0
    )
    assert run.summaries[-1].batches == 1
    a, b = _linear_weights(merged), _linear_weights(single)
    for name in a:
        if method == "wanda":
            assert torch.equal(a[name], b[name]), name
        else:
            differ = (a[name] == 0) != (b[name] == 0)
            assert differ.float().mean() <= 0.005, (name, int(differ.sum()))


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_is_pruned_to_the_sparsity_in_one_forward(family):
    model = tiny_model(family, layers=2)
    result = prune_causal_lm(model, "sparsegpt", sparsity=0.5, calibration=calibration(n=2), progress=False)
    assert result.summaries[-1].batches == 1  # merged
    assert all(abs(s - 0.5) < 0.02 for s in result.layer_sparsity.values())
    with torch.no_grad():
        logits = model(input_ids=calibration(n=1)[0]).logits
    assert torch.isfinite(logits).all()


def test_merge_batches_merges_only_equal_lengths_within_the_budget():
    model = tiny_model("llama", layers=1)
    same = [{"input_ids": torch.zeros(2, 8, dtype=torch.long)}, {"input_ids": torch.ones(1, 8, dtype=torch.long)}]
    merged = merge_batches(model, same, 1024)
    assert len(merged) == 1 and merged[0]["input_ids"].shape == (3, 8) and "attention_mask" not in merged[0]
    assert merge_batches(model, same, 0) is same
    over = merge_batches(model, same, 1e-6)  # each over the budget on its own: kept apart, unchanged
    assert len(over) == 2 and all(a is b for a, b in zip(over, same))
    mixed = [same[0], {"input_ids": torch.ones(1, 9, dtype=torch.long)}, same[1]]
    out = merge_batches(model, mixed, 1024)  # only neighbours of one length merge
    assert [b["input_ids"].shape[1] for b in out] == [8, 9, 8]
    per_window = layer_workspace(model, 1, 8) / 2**20
    chunks = merge_batches(model, [{"input_ids": torch.zeros(1, 8, dtype=torch.long)}] * 5, 2.5 * per_window)
    assert [c["input_ids"].shape[0] for c in chunks] == [2, 2, 1]  # merged while within the budget
    masked = [
        {"input_ids": torch.zeros(1, 4, dtype=torch.long), "attention_mask": torch.tensor([[0, 1, 1, 1]])},
        {"input_ids": torch.ones(1, 4, dtype=torch.long)},
    ]
    out = merge_batches(model, masked, 1024)[0]
    assert out["attention_mask"].tolist() == [[0, 1, 1, 1], [1, 1, 1, 1]]


def test_padded_batches_merge_and_prune_like_the_staged_path():
    base = tiny_model("llama", layers=2)
    g = torch.Generator().manual_seed(3)
    batches = []
    for n_pad in (0, 3, 5):
        ids = torch.randint(0, 100, (1, 12), generator=g)
        mask = torch.ones(1, 12, dtype=torch.long)
        mask[0, :n_pad] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    merged, staged = copy.deepcopy(base), copy.deepcopy(base)
    prune_causal_lm(merged, "sparsegpt", sparsity=0.5, calibration=batches, progress=False)
    prune_causal_lm(staged, "sparsegpt", sparsity=0.5, calibration=batches, progress=False, merge_mib=0)
    for name, w in _linear_weights(merged).items():
        torch.testing.assert_close(w, _linear_weights(staged)[name], rtol=1e-4, atol=1e-5, msg=name)


def test_bad_options_are_refused_before_anything_changes():
    model = tiny_model("llama", layers=1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ConfigError, match="true_sequential"):
        prune_causal_lm(model, "wanda", sparsity=0.5, calibration=calibration(n=1), true_sequential="yes")
    with pytest.raises(ConfigError, match="merge_mib"):
        prune_causal_lm(model, "wanda", sparsity=0.5, calibration=calibration(n=1), merge_mib=-1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    cnn = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    with pytest.raises(ConfigError, match="true_sequential"):
        pk.prune(cnn, "wanda", sparsity=0.5, calibration=[torch.randn(2, 3, 8, 8)], true_sequential=True)


def test_cli_prune_llm_passes_the_calibration_order_on(tmp_path, monkeypatch):
    import transformers
    from safetensors.torch import load_file
    from tokenizers import Tokenizer, models, pre_tokenizers
    from typer.testing import CliRunner

    from prunekit.cli import app
    from prunekit.llm import prune as llm_prune

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    src = tmp_path / "tiny-lm"
    tiny_model("llama", layers=2, vocab_size=64).save_pretrained(src)
    fast.save_pretrained(src)
    weights = {}
    for flag in ("--two-pass", "--true-sequential"):
        out = tmp_path / flag.strip("-")
        args = ["prune-llm", str(src), "--method", "wanda", "--sparsity", "0.5", flag, "--calibration-text", "emma"]
        args += ["-n", "2", "--seq-len", "8", "--eval-tokens", "0", "--no-progress", "--out", str(out)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        record = json.loads((out / "prunekit_llm.json").read_text())
        assert record["method"] == "wanda"
        assert record["calibration_order"] == ("two-pass" if flag == "--two-pass" else "true-sequential")
        assert record["calibration_order"] + " order" in " ".join(result.output.split())
        if flag == "--two-pass":
            assert "merge_mib" not in record and "spill_activations" not in record
        else:
            assert record["merge_mib"] == llm_prune.DEFAULT_MERGE_MIB and record["spill_activations"] is True
        weights[flag] = load_file(out / "model.safetensors")
    o_proj = "model.layers.0.self_attn.o_proj.weight"
    q_proj = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(weights["--two-pass"][q_proj], weights["--true-sequential"][q_proj])
    assert not torch.equal(weights["--two-pass"][o_proj], weights["--true-sequential"][o_proj])

    passed = []
    run = llm_prune.run_layerwise

    def spy(*args, **kwargs):
        passed.append({k: kwargs[k] for k in ("merge_mib", "spill_activations")})
        return run(*args, **kwargs)

    monkeypatch.setattr(llm_prune, "run_layerwise", spy)
    common = ["-n", "2", "--seq-len", "8", "--eval-tokens", "0", "--no-progress", "--calibration-text", "emma"]
    for stream in ("--no-stream", "--stream"):
        out = tmp_path / f"kept{stream}"
        args = ["prune-llm", str(src), "--method", "wanda", "--sparsity", "0.5", "--merge-mib", "0"]
        result = CliRunner().invoke(app, args + ["--keep-activations", stream, *common, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert passed[-1] == {"merge_mib": 0.0, "spill_activations": False}
        record = json.loads((out / "prunekit_llm.json").read_text())
        assert (record["calibration_order"], record["merge_mib"], record["spill_activations"]) == (
            "true-sequential",
            0.0,
            False,
        )
        saved = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
        assert torch.equal(saved[o_proj], weights["--true-sequential"][o_proj])
    for bad, says in ((["--method", "magnitude", "--merge-mib", "8"], "takes none"), (["--merge-mib", "-1"], ">= 0")):
        args = ["prune-llm", str(src), "--method", "wanda", "--sparsity", "0.5", *common, "--out", str(tmp_path / "x")]
        result = CliRunner().invoke(app, args + bad)
        assert result.exit_code != 0 and says in " ".join(result.output.split()), result.output
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", ["llama", "gpt2", "opt"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("padded", [False, True])
def test_spilled_activations_prune_bit_for_bit(monkeypatch, family, method, padded):
    """The inputs the passes wait with (all but the layer input itself, from the layer's second pause on) go to
    a temporary file and come back exactly: the pruned weights equal those of the run that keeps them in memory,
    bit for bit."""
    from prunekit.llm import sequential

    spilled = []
    put = sequential.ActivationSpill.put

    def counting_put(self, worker, t):
        done = put(self, worker, t)
        spilled.append((done, t.untyped_storage().nbytes()))  # emptied while the pass waits
        return done

    monkeypatch.setattr(sequential.ActivationSpill, "put", counting_put)
    base = tiny_model(family, layers=2)
    batches = calibration(n=3)
    if padded and family == "opt":
        pytest.skip("OPT flattens its MLP inputs to [tokens, hidden]: padded calibration is refused for it")
    if padded:  # padding dropped from the statistics: the fed view is a copy, not the spilled tensor
        batches = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in batches]
        for i, b in enumerate(batches):
            b["attention_mask"][:, : 2 * i] = 0
    on, off = copy.deepcopy(base), copy.deepcopy(base)
    prune_causal_lm(on, method, sparsity=0.5, calibration=batches, progress=False, merge_mib=0)
    assert spilled and all(done and nbytes == 0 for done, nbytes in spilled)
    count = len(spilled)
    prune_causal_lm(
        off, method, sparsity=0.5, calibration=batches, progress=False, merge_mib=0, spill_activations=False
    )
    assert len(spilled) == count  # nothing spilled when asked not to
    # per batch and layer: the attention output, the normalised states gate/up (or fc1) read, the down input;
    # not what the layer's first Linears read (its first pause holds the least the passes hold in the layer)
    assert count == 3 * 2 * len(batches)
    a, b = _linear_weights_any(on), _linear_weights_any(off)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_spill_gives_back_the_same_bytes_and_keeps_what_it_cannot_take(tmp_path):
    from prunekit.llm.sequential import ActivationSpill

    spill = ActivationSpill()
    x = torch.randn(64, 48)
    view = x[3:]  # a view of the same storage, as a paused frame may hold
    expected = x.clone()
    assert spill.put(0, x) and x.untyped_storage().nbytes() == 0
    y = torch.arange(10.0)
    assert spill.put(1, y)
    spill.restore(0)
    assert torch.equal(x, expected) and torch.equal(view, expected[3:])
    spill.restore(1)
    assert torch.equal(y, torch.arange(10.0))
    spill.restore(1)  # nothing held: a no-op
    shared = torch.from_numpy(expected.numpy().copy())  # numpy's memory: not resizable, stays in memory
    assert not spill.put(2, shared) and torch.equal(shared, expected)
    spill.close()


def test_first_layer_is_solved_in_groups(monkeypatch):
    """The first decoder layer learns its groups of Linears fed one tensor from one batch's pass, so it is
    solved group by group like the others (no pass waits at up_proj holding the gate's output)."""
    from prunekit.llm import prune as llm_prune

    seen: list[tuple[int, list[str]]] = []
    solve = llm_prune.SolveVisitor.solve

    def recording(self, job, names, complete):
        seen.append((job.index, list(names)))
        return solve(self, job, names, complete)

    monkeypatch.setattr(llm_prune.SolveVisitor, "solve", recording)
    prune_causal_lm(tiny_model("llama", layers=2), "wanda", sparsity=0.5, calibration=calibration(n=2), progress=False)
    for index in (0, 1):
        assert [names for i, names in seen if i == index] == _LLAMA_GROUPS


def test_heap_trimmer_trims_only_after_growth(monkeypatch):
    from prunekit.llm import memory

    readings = iter([100, 110, 90, 200, 150, 160, 300, 300])  # MiB: init, then each trim() call (and after a trim)
    trims = []
    monkeypatch.setattr(memory, "resident_bytes", lambda: next(readings) * 2**20)
    monkeypatch.setattr(memory, "release_freed_memory", lambda: trims.append(1))
    t = memory.HeapTrimmer(slack_mib=32)  # low 100
    t.trim()  # 110: within the slack
    t.trim()  # 90: a new low
    assert not trims
    t.trim()  # 200 > 90 + 32: trims, then reads 150 as the new low
    assert len(trims) == 1 and t.low == 150 * 2**20
    t.trim()  # 160: within the slack of 150
    t.trim()  # 300: trims again, reads 300
    assert len(trims) == 2 and t.trims == 2


def test_pass_options_resolve_to_their_defaults_and_refuse_what_a_method_does_not_use():
    from prunekit.llm.prune import DEFAULT_MERGE_MIB, resolve_pass_options

    assert resolve_pass_options("sparsegpt", None, None, None, None, None) == (
        True,
        DEFAULT_MERGE_MIB,
        True,
        {"blocksize": 128, "percdamp": 0.01},
    )
    assert resolve_pass_options("wanda", None, None, False, None, None) == (False, DEFAULT_MERGE_MIB, True, {})
    for method, args, says in (
        ("wanda", (64, None, None, None, None), "blocksize is a SparseGPT option"),
        ("magnitude", (None, None, True, None, None), "magnitude prunes from the weights alone"),
        ("sparsegpt", (None, None, False, None, False), "spill_activations applies to the true-sequential order only"),
    ):
        with pytest.raises(ConfigError, match=says):
            resolve_pass_options(method, *args)


def test_magnitude_runs_no_calibration_pass():
    """Magnitude reads the weights alone: with calibration data it runs no pass over it, and prunes the same."""
    from prunekit.llm import prune_causal_lm

    a, b = tiny_model("llama"), tiny_model("llama")
    b.load_state_dict(a.state_dict())
    with_data = prune_causal_lm(a, "magnitude", sparsity=0.5, calibration=calibration(n=2), progress=False)
    prune_causal_lm(b, "magnitude", sparsity=0.5, progress=False)
    assert with_data.summaries == [] and any("calibration data was not used" in n for n in with_data.notes)
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k
