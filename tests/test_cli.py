import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

import prunekit as pk
from prunekit import datasets
from prunekit.cli import app, cli_hint

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def _commands(command=None, path=()):
    """(path, click command) for every command and group under the ``prunekit`` application."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _options():
    """(command path, option) for every option of every leaf command."""
    for path, command in _commands():
        if not hasattr(command, "commands"):
            for p in command.params:
                if p.param_type_name == "option":
                    yield " ".join(path), command, p


def _signature(command, option) -> tuple[str, tuple[str, ...]]:
    """The value an option takes as the help shows it (``<int>``, ``<path>``; "flag" for a flag) and its
    negative form (``--no-latency``)."""
    ctx = command.make_context(command.name, [], resilient_parsing=True)
    shown = re.search(r"<[^>]*>", option.get_help_record(ctx)[0])  # an int with a range is still an int
    return (shown.group(0).replace(" range", "") if shown else "flag"), tuple(option.secondary_opts)


def _meaning(help_text: str) -> str:
    """An option's meaning: its help text up to the first parenthesis, which may add what differs per command
    (a default, a range, the values a command accepts)."""
    return help_text.split(" (", 1)[0].strip()


def test_methods_lists_every_registry():
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0, result.output
    for name in ("magnitude", "random", "snip", "lamp", "erk", "global", "grad-weight", "gradual", "2:4"):
        assert name in result.output


def test_methods_name_shows_the_options_prune_accepts():
    result = runner.invoke(app, ["methods", "wanda"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "true_sequential" in text and "prune_classifier" in text and "percdamp" not in text
    assert "A Simple and Effective Pruning Approach" in text
    assert "zeroed in place on a causal LM" in text and "weights under masks" not in text
    result = runner.invoke(app, ["methods", "sparsegpt"], terminal_width=200)
    assert "blocksize" in result.output and "percdamp" in result.output
    result = runner.invoke(app, ["methods", "wandaa"])
    assert result.exit_code == 2 and "wanda" in result.output


def test_prune_save_and_report(tmp_path):
    out = tmp_path / "r18"
    result = runner.invoke(
        app,
        [
            "prune",
            "torchvision:resnet18",
            "--method",
            "magnitude",
            "--sparsity",
            "0.8",
            "--allocation",
            "global",
            "--input-shape",
            "1,3,32,32",
            "--out",
            str(out),
            "--sparse",
            "--no-latency",
        ],
    )
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


def test_prune_builtin_model_measures_flops_without_input_shape(tmp_path):
    out = tmp_path / "lenet5"
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--no-latency", "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "report.json").read_text())
    assert saved["before"]["flops"] > 0 and saved["after"]["effective_flops"] < saved["before"]["flops"]
    assert json.loads((out / "prunekit.json").read_text())["input_shape"] == [1, 1, 28, 28]


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
    result = runner.invoke(
        app, ["prune", "torchvision:resnet18", "--pattern", "2:4", "--skip-incompatible", "--no-latency"]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", "/nonexistent/dir"])
    assert result.exit_code == 2 and "not a saved prunekit model" in result.output


@pytest.mark.skipif(
    not (datasets.is_installed("mnist") and datasets.is_installed("ccexam")),
    reason="needs the mnist and ccexam sources: prunekit data install mnist ccexam",
)
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
    assert (
        cli_hint(
            "pass calibration=batches (an iterable of (inputs, targets)) or calibration=loss_fn "
            "(a callable model -> scalar loss)"
        )
        == "pass --calibration DATA"
    )
    assert cli_hint("use strict=False to keep them") == "use --option strict=False to keep them"
    assert cli_hint("pattern 2:4 fixes the sparsity at 0.5; pass sparsity=0.5") == (
        "pattern 2:4 fixes the sparsity at 0.5; pass --sparsity 0.5"
    )
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
    result = runner.invoke(
        app,
        [
            "prune",
            "prunekit:mnist-cnn",
            "--method",
            "snip",
            "--sparsity",
            "0.8",
            "--out",
            str(tmp_path / "cnn"),
            "--no-latency",
        ],
    )
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
    result = runner.invoke(
        app,
        [
            "prune",
            "prunekit:lenet5",
            "--criterion",
            "l2",
            "--pattern",
            "channel",
            "--allocation",
            "global",
            "--sparsity",
            "0.5",
            "--no-latency",
            "--out",
            str(tmp_path / "m"),
        ],
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "m" / "report.json").read_text())
    assert saved["settings"]["criterion"] == "l2" and saved["settings"]["pattern"] == "channel"
    # a criterion without a meaning for the pattern is refused by name, and so is --method with --criterion
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--criterion", "fpgm", "--pattern", "2:4"])
    assert result.exit_code == 2 and "fpgm" in result.output and "channel" in result.output
    result = runner.invoke(app, ["prune", "prunekit:lenet5", "--criterion", "l2", "--method", "magnitude"])
    assert result.exit_code == 2 and "--criterion" in result.output


def test_every_option_name_has_one_type_and_one_meaning_across_commands():
    """``--calibration`` is a data set wherever it appears, ``--out`` a directory, ``--json`` a flag, ...: an
    option name takes one kind of value and means one thing (the help before its first parenthesis is the same),
    and a short alias always stands for the same option."""
    seen: dict[str, dict] = {}
    shorts: dict[str, set[str]] = {}
    for path, command, option in _options():
        long = next(o for o in option.opts if o.startswith("--"))
        assert option.help, f"{path} {long} has no help text"
        entry = seen.setdefault(long, {"signature": {}, "meaning": {}})
        entry["signature"].setdefault(_signature(command, option), []).append(path)
        entry["meaning"].setdefault(_meaning(option.help), []).append(path)
        for short in (o for o in option.opts if not o.startswith("--")):
            shorts.setdefault(short, set()).add(long)
    assert len(seen) > 60  # the walk reached every command
    assert {"--calibration", "--out", "--seed", "--method", "--json", "--json-out"} <= set(seen)
    for long, entry in seen.items():
        assert len(entry["signature"]) == 1, f"{long} takes different values: {entry['signature']}"
        assert len(entry["meaning"]) == 1, f"{long} means different things: {entry['meaning']}"
    assert all(len(longs) == 1 for longs in shorts.values()), shorts


def test_every_json_out_is_checked_before_the_work(tmp_path):
    """``--json-out FILE`` in every command that has it: a folder is refused before any work (the model, which
    does not exist, would fail only later); an existing file is refused unless ``--overwrite`` where the command
    has that flag, and where it has not, the option's help says that the file is replaced."""
    folder = tmp_path / "results"
    folder.mkdir()
    earlier = tmp_path / "earlier.json"
    earlier.write_text("{}")
    missing = str(tmp_path / "no-such-model")
    commands = {path: command for path, command, option in _options() if "--json-out" in option.opts}
    assert {"eval-ppl", "run", "dynamic merge-tokens", "dynamic prune-tokens", "dynamic skip-layers"} <= set(commands)
    for path, command in commands.items():
        args = [*path.split(), missing, "--json-out"]
        result = runner.invoke(app, [*args, str(folder)])
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "is a folder" in said, (path, result.output)
        result = runner.invoke(app, [*args, str(earlier)])
        said = " ".join(result.output.split())
        assert any("--overwrite" in p.opts for p in command.params), path  # one meaning everywhere
        assert result.exit_code == 2 and "already exists" in said and "--overwrite" in said, (path, said)
        assert earlier.read_text() == "{}" and [p.name for p in folder.iterdir()] == []


def test_every_command_and_parameter_has_a_help_text():
    paths = []
    for path, command in _commands():
        assert (command.help or "").strip(), f"prunekit {' '.join(path)} has no help text"
        for p in getattr(command, "params", []):
            if p.param_type_name == "argument":
                assert (p.help or "").strip(), f"prunekit {' '.join(path)}: argument {p.name} has no help text"
        paths.append(" ".join(path))
    for name in (
        "prune",
        "report",
        "data install",
        "prune-llm",
        "eval-ppl",
        "recover",
        "export",
        "run",
        "dynamic merge-tokens",
        "bench",
        "advise",
        "papers",
    ):
        assert name in paths


def test_command_lists_show_each_summary_as_one_sentence_run():
    # typer's rich mode keeps a docstring's line breaks in the command list, which cut summaries mid-sentence
    for args, command, words in (
        ([], "prune", "print the before/after report and the task metric"),
        (["dynamic"], "skip-layers", "prints the perplexity before and after"),
    ):
        out = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"}).output
        line = next(line for line in out.splitlines() if f" {command} " in line)
        assert words in line, out


def test_python_m_prunekit_is_the_same_application():
    """The two entry points: the ``prunekit`` script runs prunekit.cli:main, and so does ``python -m prunekit``;
    the former ``python -m prunekit.bench`` is gone in favour of ``prunekit bench``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"prunekit": "prunekit.cli:main"}  # one console script
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit", "--help"], check=False, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    words = set(proc.stdout.replace("│", " ").split())
    assert set(typer.main.get_command(app).commands) <= words
    proc = subprocess.run(
        [sys.executable, "-m", "prunekit.bench", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode != 0 and "No module named prunekit.bench.__main__" in proc.stderr


def test_renamed_options_are_refused_with_the_new_name_suggested():
    result = runner.invoke(app, ["eval-ppl", "smollm2-135m", "--json", "x.json"])
    assert result.exit_code == 2 and "--json-out" in result.output
    result = runner.invoke(app, ["recover", "smollm2-135m", "--method", "kd"])
    assert result.exit_code == 2 and "--recovery-method" in result.output


def test_bench_dry_run_lists_the_grid(tmp_path):
    spec = ROOT / "benchmarks" / "suites" / "contrasts.yaml"
    result = runner.invoke(
        app, ["bench", str(spec), "--store", str(tmp_path / "b.db"), "--dry-run"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "grid points, 0 done" in " ".join(result.output.split())  # the title wraps at long clone paths
    assert not (tmp_path / "b.db").exists()  # a dry run writes nothing


def test_papers_and_advise():
    result = runner.invoke(app, ["papers", "--type", "W", "--year", "2023", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and all(r["year"] == 2023 for r in rows)
    result = runner.invoke(app, ["advise", "--model", "prunekit:resnet-small", "--retrain", "maybe"])
    assert result.exit_code == 2 and "--retrain must be yes or no" in result.output


MICRO_SPEC = """
suites:
  micro:
    question: one pruned point (the grid adds the dense baseline)
    survey: none
    models: [bench:mlp]
    data: [digits]
    methods:
      - {method: magnitude, label: unstructured}
    sparsities: [0.5]
    pretrain_epochs: 1
    fine_tune_epochs: [0]
    calibration_size: [64]
"""


def test_bench_into_a_store_then_report_it_and_a_failed_run_exits_1(tmp_path, monkeypatch):
    if not datasets.is_installed("digits"):
        pytest.skip("needs the digits source: prunekit data install digits")
    spec = tmp_path / "micro.yaml"
    spec.write_text(MICRO_SPEC)
    store = tmp_path / "results.db"
    result = runner.invoke(app, ["bench", str(spec), "--store", str(store), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "grid of 2: 0 already done, 2 ran, 0 failed" in " ".join(result.output.split())
    result = runner.invoke(app, ["report", str(store), "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report" / "tables.md").read_text().count("unstructured") >= 1

    import prunekit.bench.runner

    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(prunekit.bench.runner, "run_point", boom)
    result = runner.invoke(app, ["bench", str(spec), "--store", str(tmp_path / "failed.db"), "--no-progress"])
    assert result.exit_code == 1, result.output  # as `python -m prunekit.bench run` did
    assert "2 failed" in result.output and "kaput" in result.output


def test_sigterm_leaves_no_half_written_output(tmp_path):
    """``kill`` (SIGTERM) during a command that writes a folder: exit status 143 and no temporary folder left."""
    import signal
    import subprocess
    import sys

    script = f"""
import sys, time
import prunekit.cli as cli
from prunekit.serialization import atomic_directory

@cli.app.command("hold")
def hold(out: str) -> None:
    with atomic_directory(out) as tmp:
        (tmp / "weights").write_text("half")
        print("ready", flush=True)
        time.sleep(60)

sys.argv = ["prunekit", "hold", {str(tmp_path / "out")!r}]
cli.main()
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert any(p.name.endswith(".partial") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "interrupted" in err
    assert list(tmp_path.iterdir()) == []


def test_prune_with_an_nm_pattern_and_no_sparsity_takes_the_pattern_s():
    from typer.testing import CliRunner

    from prunekit.cli import app

    res = CliRunner().invoke(app, ["prune", "prunekit:lenet-300-100", "--pattern", "1:4", "--no-latency"])
    assert res.exit_code == 0, res.output
    assert "sparsity=0.75" in res.output.replace(" ", "")
