"""`prunekit dynamic`: the commands mirror prunekit.dynamic and refuse what it refuses."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from prunekit import datasets
from prunekit.cli import app

runner = CliRunner()


def _said(result) -> str:
    """The command's output with its line wrapping undone."""
    return " ".join(result.output.split())


def test_merge_tokens_on_minilm_writes_its_report(tmp_path):
    if not datasets.is_installed("minilm") or not datasets.is_installed("austen"):
        pytest.skip("needs the offline minilm and austen sources: prunekit data install minilm austen")
    out = tmp_path / "tome.json"
    out.write_text("an earlier result\n")
    args = ["dynamic", "merge-tokens", "minilm", "--ratio", "0.1", "--inputs", "4", "--batch-size", "2"]
    args += ["--rounds", "1", "--json-out", str(out)]
    result = runner.invoke(app, args)  # the existing file is refused, and kept
    assert result.exit_code == 2 and "--overwrite" in _said(result) and "written to" not in _said(result)
    assert out.read_text() == "an earlier result\n"
    result = runner.invoke(app, [*args, "--overwrite"])  # replaced, whole
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["tome.json"]  # no temporary file left next to it
    res = json.loads(out.read_text())
    assert res["settings"]["ratio"] == 0.1 and res["inputs"] == 4
    assert len(res["tokens_per_block"]) == 6 and res["tokens_per_block"][-1] < res["tokens_per_block"][0]
    assert 0 < res["token_share"] < 1 and 0 < res["cosine_to_dense"]["mean"] <= 1.0001


def test_refusals_are_messages():
    result = runner.invoke(app, ["dynamic", "merge-tokens", "prunekit:resnet-small", "--r", "2"])
    assert result.exit_code == 2 and "token commands take" in result.output
    result = runner.invoke(app, ["dynamic", "prune-tokens", "torchvision:vit_b_16", "--layers", "3,x"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output


# each command with an argument that fails only once the work has begun (no such model), so that a refusal
# of the output proves the output was checked first
_COMMANDS = {
    "merge-tokens": ["dynamic", "merge-tokens", "prunekit:resnet-small", "--r", "2"],
    "prune-tokens": ["dynamic", "prune-tokens", "prunekit:resnet-small"],
    "skip-layers": ["dynamic", "skip-layers", "./no-such-folder"],
}


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_json_out_onto_a_folder_is_refused_before_the_work(tmp_path, command):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "kept.json").write_text("{}")
    result = runner.invoke(app, [*_COMMANDS[command], "--json-out", str(folder), "--overwrite"])
    assert result.exit_code == 2 and "is a folder" in _said(result), result.output
    assert [p.name for p in folder.iterdir()] == ["kept.json"]
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = runner.invoke(app, [*_COMMANDS[command], "--json-out", str(blocker / "out.json")])
    assert result.exit_code == 2 and "is a file, not a folder" in _said(result), result.output


@pytest.mark.parametrize("command", sorted(_COMMANDS))
def test_an_existing_json_out_is_refused_unless_overwrite(tmp_path, command):
    out = tmp_path / "result.json"
    out.write_text("an earlier result\n")
    result = runner.invoke(app, [*_COMMANDS[command], "--json-out", str(out)])
    said = _said(result)
    assert result.exit_code == 2 and "already exists" in said and "pass --overwrite" in said, result.output
    assert "choose another output file" in said and "in Python" not in said
    # with --overwrite the output passes and the command goes on to its work (which fails on the missing model);
    # the failed run leaves the earlier file as it was
    result = runner.invoke(app, [*_COMMANDS[command], "--json-out", str(out), "--overwrite"])
    assert result.exit_code == 2 and "already exists" not in _said(result), result.output
    assert out.read_text() == "an earlier result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


@pytest.mark.parametrize("option", ["--inputs", "--batch-size", "--rounds"])
@pytest.mark.parametrize("command", [["merge-tokens", "minilm", "--r", "2"], ["prune-tokens", "minilm"]])
def test_counts_below_one_are_refused_before_the_work(command, option):
    for value in ("0", "-3"):
        result = CliRunner().invoke(app, ["dynamic", *command, option, value], terminal_width=200)
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and f"'{option}': Input should be greater than or equal to 1" in said, said


def test_austen_sentences_refuses_a_count_below_one_and_more_than_the_novel_has():
    from prunekit.dynamic.inputs import austen_sentences
    from prunekit.errors import ConfigError

    for n in (0, -1, 1.5):
        with pytest.raises(ConfigError, match="whole number >= 1"):
            austen_sentences(n)
    with pytest.raises(ConfigError, match="ask for at most that many"):
        austen_sentences(10**7)


def test_token_commands_take_timm_models(tmp_path):
    pytest.importorskip("timm")
    out = tmp_path / "tome.json"
    args = ["dynamic", "merge-tokens", "timm:test_vit", "--r", "4", "--inputs", "2", "--batch-size", "2"]
    result = runner.invoke(app, [*args, "--rounds", "1", "--json-out", str(out)])
    assert result.exit_code == 0, result.output
    res = json.loads(out.read_text())
    # test_vit: 160x160 images in 16x16 patches = 100 patches + a class token; 4 merged per block
    assert res["tokens_per_block"] == [101 - 4 * i for i in range(len(res["tokens_per_block"]))]


def test_a_random_init_vit_is_named_and_compared_on_its_features(tmp_path):
    # torchvision's ViT starts with a zero classification layer, so a random-init model's class scores are
    # all zero: their cosine is undefined (not 0), and the features entering that layer are compared instead
    out = tmp_path / "tome.json"
    args = ["dynamic", "merge-tokens", "torchvision:vit_b_32", "--r", "4", "--inputs", "2", "--batch-size", "1"]
    result = runner.invoke(app, [*args, "--rounds", "1", "--json-out", str(out)])
    said = _said(result)
    assert result.exit_code == 0, result.output
    assert "torchvision:vit_b_32 has random weights" in said
    assert "cosine to dense outputs: undefined: the dense outputs are all zero for 2 of 2 inputs" in said
    assert "mean 0.0000" not in said
    res = json.loads(out.read_text())
    assert res["random_init"] is True
    assert res["cosine_to_dense"]["mean"] is None and res["cosine_to_dense"]["undefined_inputs"] == 2
    feats = res["cosine_of_features"]
    assert feats["of"] == "features entering heads.head" and feats["undefined_inputs"] == 0
    assert f"cosine to dense features entering heads.head: mean {feats['mean']:.4f}" in said
    # merging 4 tokens per block moves the features, but keeps them pointing the same way
    assert 0.5 < feats["min"] <= feats["mean"] < 1


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    """A folder holding a two-block BERT-style encoder (random init) and its tokenizer, as the commands take."""
    transformers = pytest.importorskip("transformers")
    if not datasets.is_installed("austen"):
        pytest.skip("needs the offline austen source: prunekit data install austen")
    folder = tmp_path_factory.mktemp("tiny-encoder")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "of", "and", "to", "a"]) + "\n")
    transformers.BertTokenizerFast(str(vocab)).save_pretrained(folder)
    cfg = transformers.BertConfig(
        vocab_size=10, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    transformers.BertModel(cfg).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    ("options", "flagged", "python"),
    [
        (["merge-tokens", "--r", "2", "--ratio", "0.1"], "takes --r (tokens merged per block, e.g. --r 8)", "r="),
        (["merge-tokens"], "prunekit dynamic merge-tokens takes --r", "merge_tokens_"),
        (["merge-tokens", "--ratio", "0.7"], "--ratio is the share of a row's tokens merged per block", " ratio is"),
        (["merge-tokens", "--r", "-1"], "--r is a number of tokens merged per block", " r is"),
        (["merge-tokens", "--r", "2", "--metric", "values"], "--metric is 'keys'", " metric is"),
        (["prune-tokens", "--keep-rate", "1.5"], "--keep-rate is the share of tokens kept", "keep_rate"),
        (["prune-tokens", "--layers", "0,7"], "--layers must be block indices in [0, 2), got [7]", " layers must"),
    ],
)
def test_refusals_name_the_flags_the_user_typed(tiny_encoder, options, flagged, python):
    command, *rest = options
    result = runner.invoke(app, ["dynamic", command, tiny_encoder, *rest, "--inputs", "2", "--rounds", "1"])
    said = _said(result)
    assert result.exit_code == 2 and flagged in said, said
    assert python not in said, said


def test_cli_hint_rewrites_a_commands_own_names_and_nothing_else():
    from prunekit.cli import cli_hint

    flags = {"ratio": "--ratio", "keep_rate": "--keep-rate", "fit_": "prunekit fit"}
    said = cli_hint("fit_ takes ratio= (e.g. ratio=0.1) or keep_rate; a row's ratio, see m.fit_(x, ratio=0.1)", flags)
    want = "prunekit fit takes --ratio (e.g. --ratio 0.1) or --keep-rate; a row's --ratio, see m.fit_(x, ratio=0.1)"
    assert said == want
    # flags already written as flags, words containing a name and names the command does not own stay as they are
    kept = "--ratio and --keep-rate; ratios, keep_rates, r=2"
    assert cli_hint(kept, flags) == kept
