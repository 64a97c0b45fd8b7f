"""Bad input across the public surface: every case is refused with a clear error and nothing is lost.

Each case makes one bad request of prunekit (the Python API or the ``prunekit`` command) and checks that

* a :class:`prunekit.PrunekitError` subclass is raised (for the command line: exit status 2, a message
  and no traceback);
* the message says how to fix the request (the asserted phrase);
* nothing is lost: the model has the same module tree and bit-identical tensors, and every file or folder
  the case touches is byte-identical afterwards.

The refusals of ``pk.prune`` covered in ``tests/test_prune.py`` and the advice followed in
``tests/test_refusal_advice.py`` are not repeated here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app

transformers = pytest.importorskip("transformers")

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1])
MARKER = "unpickled.marker"


def cnn() -> nn.Module:
    """A small CNN with no repeated block, no attention and no embedding."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def narrow_cnn() -> nn.Module:
    """The same layer names as :func:`cnn` with other widths: a plan for one does not fit the other."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()


def tiny_llama() -> nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=64,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


class Unpicklable:
    """Unpickling this object writes a marker file: proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def write_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"weight": Unpicklable(marker)}))
    return path


# ---------------------------------------------------------------------------------------------------------
# what "nothing is lost" means


def model_snapshot(model: nn.Module) -> tuple[list[tuple[str, str]], str, dict[str, tuple[str, tuple, bytes]]]:
    """The module tree (names, classes and the printed form with every size) and every tensor's bits."""
    tree = [(name, type(m).__qualname__) for name, m in model.named_modules()]
    tensors = {
        k: (str(v.dtype), tuple(v.shape), v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        for k, v in model.state_dict().items()
    }
    return tree, repr(model), tensors


def files_snapshot(paths: list[Path]) -> dict[str, str | None]:
    """Every file below ``paths`` (or the path itself) by its hash; folders are listed, missing paths noted."""
    out: dict[str, str | None] = {}
    for root in paths:
        if not root.exists():
            out[str(root)] = None
        elif root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
        else:
            out[str(root)] = "dir"
            for p in sorted(root.rglob("*")):
                out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


# ---------------------------------------------------------------------------------------------------------
# the cases


@dataclass
class Setup:
    """What one case needs: the call that must be refused (Python) or the arguments (command line), the
    model that must stay as it was, and the paths that must stay byte-identical."""

    call: Callable[[], Any] | None = None
    args: list[str] | None = None
    model: nn.Module | None = None
    paths: list[Path] = field(default_factory=list)
    marker: Path | None = None


@dataclass
class Case:
    name: str
    setup: Callable[[Path], Setup]
    error: type[pk.PrunekitError]
    phrase: str  # the fix, as the message words it
    absent: str | None = None  # command line: output that shows work done before the refusal (a model loaded)


def api(model_fn: Callable[[], nn.Module], call: Callable[[nn.Module], Any]) -> Callable[[Path], Setup]:
    def setup(tmp: Path) -> Setup:
        model = model_fn()
        return Setup(call=lambda: call(model), model=model)

    return setup


def prune(model_fn: Callable[[], nn.Module], method: str, **kw: Any) -> Callable[[Path], Setup]:
    kw.setdefault("measure_latency", False)
    return api(model_fn, lambda m: pk.prune(m, method, **kw))


def pruner_plan(model_fn: Callable[[], nn.Module], sparsity: Any = 0.5, **kw: Any) -> Callable[[Path], Setup]:
    return api(model_fn, lambda m: pk.Pruner(**kw).plan(m, sparsity=sparsity))


def saved(tmp: Path, model: nn.Module | None = None, **kw: Any) -> Path:
    """A model saved by prunekit, to be spoiled by a case."""
    return pk.save_model(model if model is not None else cnn(), tmp / "saved", **kw)


def spoil_record(tmp: Path, **fields: Any) -> Path:
    d = saved(tmp)
    record = json.loads((d / "prunekit.json").read_text())
    record.update(fields)
    (d / "prunekit.json").write_text(json.dumps(record))
    return d


def load_garbage_weights(tmp: Path) -> Setup:
    d = saved(tmp)
    (d / "model.safetensors").write_bytes(b"\x00not a safetensors file" * 8)
    return Setup(call=lambda: pk.load_model(d, model=cnn()), paths=[d])


def load_pickled_weights(tmp: Path) -> Setup:
    d = saved(tmp)
    marker = tmp / MARKER
    write_pickle(d / "model.safetensors", marker)
    return Setup(call=lambda: pk.load_model(d, model=cnn()), paths=[d], marker=marker)


def load_pickle_file(tmp: Path) -> Setup:
    marker = tmp / MARKER
    f = write_pickle(tmp / "model.pt", marker)
    return Setup(call=lambda: pk.load_model(f), paths=[f], marker=marker)


def load_sparse_pickle(tmp: Path) -> Setup:
    marker = tmp / MARKER
    f = write_pickle(tmp / "model.sparse.safetensors", marker)
    return Setup(call=lambda: pk.load_sparse(f), paths=[f], marker=marker)


def load_unknown_source(tmp: Path) -> Setup:
    d = spoil_record(tmp, source="mymodels:resnet7")
    return Setup(call=lambda: pk.load_model(d), paths=[d])


def load_missing(tmp: Path) -> Setup:
    return Setup(call=lambda: pk.load_model(tmp / "never-saved"), paths=[tmp / "never-saved"])


def plan_other_shapes(tmp: Path) -> Setup:
    f = pk.Pruner().plan(cnn(), sparsity=0.5).save(tmp / "plan.json")
    model = narrow_cnn()
    return Setup(call=lambda: pk.Plan.load(f).apply_(model), model=model, paths=[f])


def plan_missing(tmp: Path) -> Setup:
    return Setup(call=lambda: pk.Plan.load(tmp / "no-plan.json"), paths=[tmp / "no-plan.json"])


def plan_layers_not_a_list(tmp: Path) -> Setup:
    f = tmp / "plan.json"
    f.write_text(json.dumps({"plan_version": 1, "layers": 7}))
    return Setup(call=lambda: pk.Plan.load(f), paths=[f])


def save_over_file(tmp: Path) -> Setup:
    f = tmp / "notes.txt"
    f.write_text("my notes, not a model folder\n")
    model = cnn()
    return Setup(call=lambda: pk.save_model(model, f), model=model, paths=[f])


def export_onto_folder(tmp: Path) -> Setup:
    d = tmp / "exports"
    d.mkdir()
    (d / "keep.txt").write_text("keep me\n")
    model = cnn()
    return Setup(call=lambda: pk.export_sparse(model, d), model=model, paths=[d])


def bad_calibration_inputs(tmp: Path) -> Setup:
    model = cnn()
    batches = [(torch.randn(2, 5), Y)]  # flat vectors for a CNN
    return Setup(call=lambda: pk.prune(model, "snip", sparsity=0.5, calibration=batches), model=model)


def ignore_foreign_module(tmp: Path) -> Setup:
    model, other = cnn(), cnn()  # e.g. a module of the copy taken before pruning
    return Setup(call=lambda: pk.prune(model, "magnitude", sparsity=0.5, ignore=[other[2]]), model=model)


def llm_calibration(batches: Any, method: str = "wanda", **options: Any) -> Callable[[Path], Setup]:
    def setup(tmp: Path) -> Setup:
        model = tiny_llama()
        return Setup(
            call=lambda: pk.prune(model, method, sparsity=0.5, calibration=batches, progress=False, **options),
            model=model,
        )

    return setup


def lm_magnitude(**options: Any) -> Callable[[Path], Setup]:
    def setup(tmp: Path) -> Setup:
        from prunekit.llm import prune_causal_lm

        model = tiny_llama()
        return Setup(call=lambda: prune_causal_lm(model, "magnitude", **options), model=model)

    return setup


def lm_targets(targets: Any) -> Callable[[Path], Setup]:
    return lm_magnitude(sparsity=0.5, targets=targets)


def lm_magnitude_spill(tmp: Path) -> Setup:
    from prunekit.llm import prune_causal_lm

    model = tiny_llama()
    return Setup(call=lambda: prune_causal_lm(model, "magnitude", sparsity=0.5, spill_activations=False), model=model)


# the command line -----------------------------------------------------------------------------------------


def nonempty_folder(tmp: Path) -> Path:
    d = tmp / "results"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"an earlier result" * 64)
    (d / "notes.md").write_text("three days of work\n")
    return d


def cli(*args: str) -> Callable[[Path], Setup]:
    return lambda tmp: Setup(args=list(args))


def cli_out(*args: str) -> Callable[[Path], Setup]:
    """A command that would write to --out, pointed at a folder that already holds results."""

    def setup(tmp: Path) -> Setup:
        d = nonempty_folder(tmp)
        return Setup(args=[*args, "--out", str(d)], paths=[d])

    return setup


def cli_missing(*args: str) -> Callable[[Path], Setup]:
    """A command given a folder that does not exist."""

    def setup(tmp: Path) -> Setup:
        d = tmp / "never-written"
        return Setup(args=[args[0], str(d), *args[1:]], paths=[d])

    return setup


def cli_saved_cnn(*args: str) -> Callable[[Path], Setup]:
    """A command given a folder that holds a saved CNN (prunekit's format), not a language model."""

    def setup(tmp: Path) -> Setup:
        d = saved(tmp)
        return Setup(args=[args[0], str(d), *args[1:]], paths=[d])

    return setup


def cli_tiny_lm(*args: str) -> Callable[[Path], Setup]:
    """prune-llm on a tiny saved language model, writing to a fresh --out folder that must not appear."""

    def setup(tmp: Path) -> Setup:
        src = tiny_lm_dir(tmp)
        out = tmp / "pruned"
        return Setup(
            args=["prune-llm", str(src), *args, "--eval-tokens", "0", "--no-progress", "--out", str(out)],
            paths=[src, out],
        )

    return setup


def tiny_lm_dir(tmp: Path) -> Path:
    """A 2-layer Llama with a 64-word tokenizer, saved as save_pretrained output."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(61)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    d = tmp / "tiny-lm"
    tiny_llama().save_pretrained(d)
    fast.save_pretrained(d)
    return d


CASES = [
    # pk.Pruner: construction and plan
    Case("Pruner granularity 0:4", pruner_plan(cnn, granularity="0:4"), pk.PatternError, "0 < n < m"),
    Case("Pruner granularity 4:2", pruner_plan(cnn, granularity="4:2"), pk.PatternError, "0 < n < m"),
    Case("Pruner granularity 0x3", pruner_plan(cnn, granularity="0x3"), pk.PatternError, "positive integer sizes"),
    Case(
        "overrides under an N:M pattern",
        api(cnn, lambda m: pk.prune(m, "magnitude", pattern="2:4", overrides={"2": 0.3}, measure=False)),
        pk.ConfigError,
        "overrides cannot change it",
    ),
    Case("Pruner override sparsity 1.5", pruner_plan(cnn, overrides={"2": 1.5}), pk.InvalidSparsityError, "[0, 1)"),
    Case("Pruner override of an unknown layer", pruner_plan(cnn, overrides={"conv9": 0.3}), pk.ConfigError, "'conv9'"),
    Case(
        "Pruner overrides not a mapping", pruner_plan(cnn, overrides=[0.3]), pk.ConfigError, "{module name: sparsity}"
    ),
    Case(
        "Pruner N:M with allocation global",
        pruner_plan(cnn, granularity="2:4", allocation="global"),
        pk.ConfigError,
        "allocation='uniform'",
    ),
    Case(
        "Pruner.plan sparsity '0.5' (a string)",
        pruner_plan(cnn, sparsity="0.5"),
        pk.InvalidSparsityError,
        "a number in [0, 1)",
    ),
    Case("Pruner.plan without a sparsity", pruner_plan(cnn, sparsity=None), pk.InvalidSparsityError, "pass sparsity="),
    Case("Pruner schedule given as a string", pruner_plan(cnn, schedule="gradual"), pk.ConfigError, "Gradual("),
    Case(
        "Pruner.step without a schedule", api(cnn, lambda m: pk.Pruner().step(m, 0)), pk.ConfigError, "needs a schedule"
    ),
    # pk.prune: values of the wrong form
    Case(
        "prune sparsity '0.5' (a string)",
        prune(cnn, "magnitude", sparsity="0.5"),
        pk.InvalidSparsityError,
        "a number in [0, 1)",
    ),
    Case("prune seed 'abc'", prune(cnn, "random", sparsity=0.5, seed="abc"), pk.ConfigError, "seed=0"),
    Case(
        "prune ignore=3 (not a module or name)",
        prune(cnn, "magnitude", sparsity=0.5, ignore=3),
        pk.ConfigError,
        "filter_fn(module, name)",
    ),
    Case("prune ignore= a module of another model", ignore_foreign_module, pk.ConfigError, "not a module of the model"),
    Case(
        "prune a string instead of a model",
        api(cnn, lambda m: pk.prune("torchvision:resnet18", "magnitude", sparsity=0.5)),
        pk.ModelError,
        "pk.build_model(",
    ),
    # structural methods
    Case(
        "l1-channel on a CNN without example_inputs",
        prune(cnn, "l1-channel", sparsity=0.5),
        pk.DataError,
        "pass example_inputs=",
    ),
    Case("head on a CNN", prune(cnn, "head", sparsity=0.5, example_inputs=X), pk.NothingToPruneError, "attention"),
    Case(
        "layer on a model with no repeated blocks",
        prune(cnn, "layer", sparsity=0.5, example_inputs=X),
        pk.NothingToPruneError,
        "keeps its input shape",
    ),
    Case(
        "embedding on a CNN",
        prune(cnn, "embedding", sparsity=0.5, example_inputs=X),
        pk.NothingToPruneError,
        "no embedding group",
    ),
    Case(
        "round_to=0",
        prune(cnn, "l2-channel", sparsity=0.5, example_inputs=X, round_to=0),
        pk.ConfigError,
        "round_to must be a positive integer",
    ),
    Case(
        "round_to=2.5",
        prune(cnn, "l2-channel", sparsity=0.5, example_inputs=X, round_to=2.5),
        pk.ConfigError,
        "round_to must be a positive integer",
    ),
    Case(
        "global_cap=1.5",
        prune(cnn, "l2-channel", sparsity=0.5, example_inputs=X, allocation="global", global_cap=1.5),
        pk.ConfigError,
        "global_cap must be in (0, 1)",
    ),
    Case(
        "l2-channel with the mask pattern 2:4",
        prune(cnn, "l2-channel", sparsity=0.5, example_inputs=X, pattern="2:4"),
        pk.PatternError,
        "takes no pattern (pattern=None)",
    ),
    # calibration of the wrong form
    Case(
        "calibration a string",
        prune(cnn, "snip", sparsity=0.5, calibration="mnist"),
        pk.DataError,
        "(inputs, targets) pairs",
    ),
    Case(
        "calibration a list of strings",
        prune(cnn, "snip", sparsity=0.5, calibration=["a cat", "a dog"]),
        pk.DataError,
        "(inputs, targets) pairs",
    ),
    Case(
        "calibration loss NaN",
        prune(cnn, "snip", sparsity=0.5, calibration=lambda m: m(X).sum() * float("nan")),
        pk.DataError,
        "not finite",
    ),
    Case("calibration inputs the model cannot run", bad_calibration_inputs, pk.DataError, "calibration batch"),
    Case(
        "LM calibration a list of strings",
        llm_calibration(["It is a truth", "universally"]),
        pk.DataError,
        "token-id tensors",
    ),
    Case(
        "LM calibration ids outside the vocabulary",
        llm_calibration([torch.full((1, 8), 1000)]),
        pk.DataError,
        "vocabulary",
    ),
    Case(
        "sparsegpt percdamp -1",
        llm_calibration([torch.randint(0, 64, (1, 8))], "sparsegpt", percdamp=-1.0),
        pk.ConfigError,
        "percdamp must be a number >= 0",
    ),
    Case(
        "sparsegpt blocksize 0",
        llm_calibration([torch.randint(0, 64, (1, 8))], "sparsegpt", blocksize=0),
        pk.ConfigError,
        "blocksize must be a positive integer",
    ),
    Case(
        "wanda with SparseGPT's blocksize",
        llm_calibration([torch.randint(0, 64, (1, 8))], "wanda", blocksize=64),
        pk.ConfigError,
        "blocksize is an option of owl-sparsegpt, sparsegpt only",
    ),
    Case(
        "wanda two-pass with spill_activations",
        llm_calibration([torch.randint(0, 64, (1, 8))], "wanda", true_sequential=False, spill_activations=True),
        pk.ConfigError,
        "spill_activations applies to the true-sequential order only",
    ),
    Case(
        "prune_causal_lm targets as one string",
        lm_targets("model.layers.0.mlp.up_proj"),
        pk.ConfigError,
        "pass ['model.layers.0.mlp.up_proj']",
    ),
    Case("prune_causal_lm targets naming no module", lm_targets(["model.layers.0.mlp.nope"]), pk.ConfigError, "e.g."),
    Case("prune_causal_lm targets outside the layers", lm_targets(["lm_head"]), pk.ConfigError, "leave the others out"),
    Case("prune_causal_lm pattern 5:7", lm_magnitude(pattern="5:7"), pk.PatternError, "14 of the 14 selected"),
    Case(
        "prune_causal_lm magnitude with spill_activations",
        lm_magnitude_spill,
        pk.ConfigError,
        "magnitude prunes from the weights alone",
    ),
    Case(
        "measure on inputs the model cannot run",
        api(cnn, lambda m: pk.measure(m, torch.randn(2, 5))),
        pk.DataError,
        "pass a batch the model accepts",
    ),
    # saved models and plans
    Case("load_model on a missing folder", load_missing, pk.CheckpointError, "save_model"),
    Case("load_model with garbage weights", load_garbage_weights, pk.CheckpointError, "save the model again"),
    Case("load_model with a pickle as weights", load_pickled_weights, pk.CheckpointError, "save the model again"),
    Case("load_model on a pickle file", load_pickle_file, pk.CheckpointError, "save_model"),
    Case("load_sparse on a pickle file", load_sparse_pickle, pk.CheckpointError, "re-export"),
    Case(
        "load_model whose record names an unknown source",
        load_unknown_source,
        pk.CheckpointError,
        "load_model(dir, model=MyNet())",
    ),
    Case("Plan.load for other shapes, then apply_", plan_other_shapes, pk.PlanError, "the plan expects"),
    Case("Plan.load on a missing file", plan_missing, pk.PlanError, "Plan.save"),
    Case("Plan.load with layers not a list", plan_layers_not_a_list, pk.PlanError, "Plan.save"),
    Case("save_model onto an existing file", save_over_file, pk.CheckpointError, "choose another"),
    Case("export_sparse onto a folder", export_onto_folder, pk.CheckpointError, "a file path"),
    # the command line
    Case("CLI prune unknown model", cli("prune", "resnet18"), pk.UnknownNameError, "torchvision:NAME"),
    Case(
        "CLI prune --sparsity 2",
        cli("prune", "prunekit:lenet5", "--sparsity", "2", "--no-latency"),
        pk.InvalidSparsityError,
        "a number in [0, 1)",
    ),
    Case(
        "CLI prune --pattern zigzag",
        cli("prune", "prunekit:lenet5", "--pattern", "zigzag", "--no-latency"),
        pk.UnknownNameError,
        "2:4",
    ),
    Case(
        "CLI prune --out non-empty without --overwrite",
        cli_out("prune", "prunekit:lenet5", "--no-latency"),
        pk.CheckpointError,
        "pass --overwrite",
    ),
    Case(
        "CLI prune --option seed=abc",
        cli("prune", "prunekit:lenet5", "--option", "seed=abc", "--no-latency"),
        pk.ConfigError,
        "--seed",
    ),
    Case("CLI report on a missing folder", cli_missing("report"), pk.CheckpointError, "save_model"),
    Case(
        "CLI prune-llm misspelt model name",
        cli("prune-llm", "smollm2-136m", "--sparsity", "0.5"),
        pk.CheckpointError,
        "did you mean the offline name 'smollm2-135m'?",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm unknown model",
        cli("prune-llm", "no-such-model", "--sparsity", "0.5", "--eval-tokens", "0"),
        pk.CheckpointError,
        "pass an offline name (smollm2-135m",
    ),
    Case(
        "CLI prune-llm --out non-empty",
        cli_out("prune-llm", "smollm2-135m", "--sparsity", "0.5"),
        pk.CheckpointError,
        "pass --overwrite",
    ),
    Case(
        "CLI prune-llm --calibration-samples 0",
        cli("prune-llm", "smollm2-135m", "--sparsity", "0.5", "--calibration-samples", "0"),
        pk.DataError,
        "--calibration-samples and --seq-len of at least 1",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm --seq-len 0",
        cli("prune-llm", "smollm2-135m", "--sparsity", "0.5", "--seq-len", "0"),
        pk.DataError,
        "--calibration-samples and --seq-len of at least 1",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm --sparsity 1.5",
        cli("prune-llm", "smollm2-135m", "--sparsity", "1.5"),
        pk.InvalidSparsityError,
        "a number in [0, 1)",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm --pattern 2:4 --sparsity 0.7",
        cli("prune-llm", "smollm2-135m", "--pattern", "2:4", "--sparsity", "0.7"),
        pk.InvalidSparsityError,
        "pass --sparsity 0.5",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm --calibration-text of an unknown text",
        cli("prune-llm", "smollm2-135m", "--sparsity", "0.5", "--calibration-text", "ulysses"),
        pk.UnknownNameError,
        "prideprejudice",
        absent="Loading weights",
    ),
    Case(
        "CLI prune-llm on a missing folder",
        cli_missing("prune-llm", "--sparsity", "0.5", "--eval-tokens", "0"),
        pk.CheckpointError,
        "there is no folder",
    ),
    Case(
        "CLI prune-llm on a folder that is not a language model",
        cli_saved_cnn("prune-llm", "--sparsity", "0.5"),
        pk.CheckpointError,
        "not a saved language model",
    ),
    Case(
        "CLI prune-llm llm-heads with --pattern 2:4",
        cli_tiny_lm("--method", "llm-heads", "--pattern", "2:4"),
        pk.PatternError,
        "takes no pattern",
    ),
    Case(
        "CLI prune-llm llm-mlp with --two-pass",
        cli_tiny_lm("--method", "llm-mlp", "--sparsity", "0.3", "--two-pass"),
        pk.ConfigError,
        "calibration passes of wanda and sparsegpt",
    ),
    Case(
        "CLI prune-llm --two-pass with --keep-activations",
        cli_tiny_lm("--method", "wanda", "--sparsity", "0.5", "--two-pass", "--keep-activations"),
        pk.ConfigError,
        "with --two-pass every matrix",
    ),
    Case(
        "CLI prune-llm unknown method with --merge-mib",
        cli_tiny_lm("--method", "bogus", "--sparsity", "0.5", "--merge-mib", "64"),
        pk.UnknownNameError,
        "wanda",
    ),
    Case("CLI eval-ppl on a missing folder", cli_missing("eval-ppl"), pk.CheckpointError, "there is no folder"),
]


def _flat(text: str) -> str:
    """Console output with its line wrapping undone."""
    return " ".join(text.split())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_refused_clearly_and_loses_nothing(
    case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    # an unknown name is looked up on the hub, which these machines cannot reach: fail at once, not after retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    s = case.setup(tmp_path)
    model_before = model_snapshot(s.model) if s.model is not None else None
    files_before = files_snapshot(s.paths)
    if s.args is not None:
        result = CliRunner().invoke(app, s.args)
        output = _flat(result.output)
        assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
        assert isinstance(result.exception, SystemExit), result.exception  # a refusal, not a crash
        assert "Traceback" not in result.output and "error:" in output
        assert case.phrase in output, result.output
        assert case.absent is None or case.absent not in output, result.output
    else:
        assert s.call is not None
        with pytest.raises(pk.PrunekitError) as info:
            s.call()
        assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
        assert case.phrase in str(info.value), str(info.value)
    if s.model is not None:
        assert model_snapshot(s.model) == model_before, "the model changed"
    assert files_snapshot(s.paths) == files_before, "a file or folder changed"
    if s.marker is not None:
        assert not s.marker.exists(), "a loader unpickled the file and ran its code"


def test_there_are_at_least_35_distinct_cases() -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 35


def test_the_installed_command_refuses_a_nonempty_out_folder(tmp_path: Path) -> None:
    """The real entry point (``python -m prunekit``): exit status 2, no traceback, the folder untouched."""
    d = nonempty_folder(tmp_path)
    before = files_snapshot([d])
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit", "prune", "prunekit:lenet5", "--out", str(d)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "pass --overwrite" in _flat(proc.stderr)
    assert files_snapshot([d]) == before


# ---------------------------------------------------------------------------------------- a new user's inputs


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def _cal() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(8, 8, generator=g), torch.randint(0, 4, (8,), generator=g))]


def test_the_progress_bar_goes_to_stderr_not_stdout(capsys):
    pk.prune(_mlp(), "wanda", sparsity=0.5, calibration=_cal(), measure=False, progress=True)
    out, err = capsys.readouterr()
    assert "wanda" not in out and "━" not in out
    assert "━" in err or "wanda" in err


def test_a_parametrized_root_module_is_counted_pruned():
    report = pk.prune(nn.Linear(10, 10), "magnitude", sparsity=0.5, prune_classifier=True, measure=False)
    assert report.after.params == 110
    assert report.after.nonzero_params == 60  # 50 of the 100 weights, and the 10 biases


@pytest.mark.parametrize("device", ["tpu:7", "meta", "no-such-device"])
def test_a_device_this_machine_lacks_is_refused_and_the_model_kept(device):
    model = _mlp()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.ConfigError, match="device"):
        pk.prune(model, "wanda", sparsity=0.5, calibration=_cal(), device=device, measure=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(pk.ConfigError, match="no cuda device is available"):
        pk.prune(_mlp(), "sparsegpt", sparsity=0.5, calibration=_cal(), device="cuda", measure=False)


def test_overrides_on_a_layerwise_solver_says_which_methods_take_it():
    with pytest.raises(pk.ConfigError, match="overrides= .*is an option of .*magnitude"):
        pk.prune(_mlp(), "wanda", sparsity=0.5, calibration=_cal(), overrides={"0": 0.3}, measure=False)


def test_a_numpy_sparsity_is_a_number():
    np = pytest.importorskip("numpy")
    report = pk.prune(_mlp(), "magnitude", sparsity=np.float32(0.5), measure=False)
    assert report.settings["sparsity"] == 0.5 and isinstance(report.settings["sparsity"], float)


def test_nm_with_a_method_whose_default_allocation_is_global_takes_uniform():
    report = pk.prune(_mlp(), "snip", pattern="2:4", calibration=_cal(), measure=False)
    assert report.settings["allocation"] == "uniform"
    with pytest.raises(pk.ConfigError, match="allocation must be 'uniform'"):
        pk.prune(_mlp(), "snip", pattern="2:4", allocation="global", calibration=_cal(), measure=False)


def test_an_empty_layer_is_left_out_with_a_note():
    model = nn.Sequential(nn.Linear(8, 0), nn.Linear(0, 4), nn.Linear(4, 2))
    report = pk.prune(model, "magnitude", sparsity=0.5, prune_classifier=True, example_inputs=torch.randn(3, 8))
    assert any("empty weight" in n for n in report.notes)
    assert float((model[2].weight == 0).float().mean()) == 0.5


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.bn2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.fc1, self.fc = nn.Linear(32, 64), nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x))).mean((2, 3))
        return self.fc(torch.relu(self.fc1(x)))


@pytest.mark.parametrize("method", ["taylor-channel", "hessian-channel"])
def test_structural_criteria_refuse_nan_scores_and_change_nothing(method):
    torch.manual_seed(0)
    model, x = _ConvNet(), torch.randn(2, 3, 16, 16)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def loss(m):  # a finite loss whose gradients are NaN (0 * inf through torch.where)
        out = m(x)
        return torch.where(torch.zeros_like(out, dtype=torch.bool), out * float("inf"), out).pow(2).mean()

    with pytest.raises(pk.errors.DataError, match="NaN scores for c1.weight"):
        pk.prune(model, method, sparsity=0.5, calibration=loss, example_inputs=x, measure_latency=False)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_a_check_run_error_no_removed_size_explains_is_raised_not_swallowed():
    torch.manual_seed(0)
    model, x, calls = _ConvNet(), torch.randn(2, 3, 16, 16), [0]

    def flaky(_module, _inputs, _output):  # fails once: on the check run after the surgery
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("flaky hook")

    model.fc1.register_forward_hook(flaky)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(pk.errors.ModelError, match="RuntimeError: flaky hook.*retried group by group"):
        pk.prune(model, "l1-channel", sparsity=0.5, example_inputs=x, measure_latency=False)
    assert model.c1.weight.shape == (16, 3, 3, 3)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_nothing_to_prune_says_why_each_layer_was_left():
    with pytest.raises(pk.errors.NothingToPruneError, match=r"empty weight \(0, 4\)") as info:
        pk.prune(nn.Sequential(nn.Linear(4, 0)), "magnitude", sparsity=0.5, prune_classifier=True)
    assert "prune_classifier" not in str(info.value)  # it was passed: no advice to pass it
    with pytest.raises(pk.errors.NothingToPruneError, match="pass prune_classifier=True"):
        pk.prune(nn.Sequential(nn.Linear(4, 3)), "magnitude", sparsity=0.5)
    with pytest.raises(pk.errors.NothingToPruneError, match=r"1: empty weight \(0, 4\)") as info:
        pk.prune(nn.Sequential(nn.Linear(0, 4), nn.Linear(4, 0)), "magnitude", sparsity=0.5)  # empty last layer
    assert "prune_classifier" not in str(info.value)
