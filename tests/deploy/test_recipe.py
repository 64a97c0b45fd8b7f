"""Recipes: validated whole before anything runs; prune -> fine-tune (distilled) -> torch int8 runs and
reports each stage; the CLI mirrors it."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import prunekit as pk
from prunekit.cli import app
from prunekit.deploy import FineTuneStage, PruneStage, QuantizeStage, Recipe

BASE = {"model": "prunekit:lenet-300-100", "input_shape": [1, 1, 28, 28], "data": "mnist", "eval_images": 500}


def _recipe(*stages, **extra):
    return {**BASE, **extra, "stages": list(stages)}


@pytest.mark.parametrize(
    "raw,error,match",
    [
        (
            _recipe(
                {"quantize": {"backend": "torch", "mode": "dynamic-int8"}},
                {"prune": {"method": "magnitude", "sparsity": 0.5}},
            ),
            pk.ConfigError,
            "prune -> fine_tune -> quantize -> export",
        ),
        (_recipe({"prune": {"method": "magnitude", "sparsity": 1.5}}), pk.InvalidSparsityError, r"\[0, 1\)"),
        (_recipe({"prune": {"method": "nope", "sparsity": 0.5}}), pk.UnknownNameError, "magnitude"),
        (_recipe({"prune": {"method": "magnitude", "sparsity": 0.5, "ratio": 2}}), pk.ConfigError, "accepts: method"),
        (_recipe({"distil": {}}), pk.UnknownNameError, "fine_tune"),
        (_recipe({"fine_tune": {"epochs": "two"}}), pk.ConfigError, "epochs must be int"),
        (_recipe({"fine_tune": {}}, data=None), pk.MissingDataError, "data: mnist"),
        (_recipe({"quantize": {"backend": "openvino", "mode": "int8"}}), pk.ConfigError, "add an export stage"),
        (
            _recipe({"quantize": {"backend": "torch", "mode": "dynamic-int8"}}, {"export": {"to": "onnx", "out": "x"}}),
            pk.ConfigError,
            "backend openvino",
        ),
        (_recipe({"quantize": {"backend": "torch", "mode": "int4"}}), pk.UnknownNameError, "dynamic-int8"),
        (_recipe({"export": {"to": "tflite", "out": "x"}}), pk.UnknownNameError, "onnx, openvino"),
        (
            {**BASE, "input_shape": [1, 0], "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]},
            pk.ConfigError,
            "positive integers",
        ),
    ],
)
def test_invalid_recipes_are_refused_before_running(raw, error, match):
    with pytest.raises(error, match=match):
        Recipe.from_dict(raw)


def test_non_empty_output_refused(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("x")
    with pytest.raises(pk.CheckpointError, match="set `overwrite: true` in the export stage"):
        Recipe.from_dict(_recipe({"export": {"to": "onnx", "out": str(tmp_path / "out")}}))
    path = tmp_path / "r.yaml"  # the command line names the recipe's option, not a flag `run` does not have
    path.write_text(
        "model: prunekit:mnist-cnn\ninput_shape: [1, 1, 28, 28]\nstages:\n"
        f"  - prune: {{method: magnitude, sparsity: 0.9}}\n  - export: {{to: onnx, out: {tmp_path / 'out'}}}\n"
    )
    r = CliRunner().invoke(app, ["run", str(path)], terminal_width=200)
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and "overwrite: true" in said and "--overwrite" not in said, said
    assert (tmp_path / "out" / "keep").read_text() == "x"


def test_prune_finetune_quantize_runs_and_reports_each_stage():
    recipe = Recipe.from_dict(
        _recipe(
            {"prune": {"method": "magnitude", "sparsity": 0.5}},
            {"fine_tune": {"epochs": 1, "lr": 0.001, "steps_per_epoch": 15, "distil": 0.3}},
            {"quantize": {"backend": "torch", "mode": "dynamic-int8"}},
        )
    )
    assert isinstance(recipe.stages[0], PruneStage) and isinstance(recipe.stages[1], FineTuneStage)
    assert isinstance(recipe.stages[2], QuantizeStage)
    result = recipe.run()
    rows = {r["stage"]: r for r in result.stages}
    assert list(rows) == ["start", "prune", "fine_tune", "quantize"]
    assert rows["prune"]["weight_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert rows["fine_tune"]["weight_sparsity"] == pytest.approx(rows["prune"]["weight_sparsity"])  # masks kept
    assert rows["fine_tune"]["accuracy"] > rows["start"]["accuracy"] + 0.2  # random init -> trained on MNIST
    assert rows["quantize"]["weight_sparsity"] >= 0.45  # zeros stay zero in int8
    assert abs(rows["quantize"]["accuracy"] - rows["fine_tune"]["accuracy"]) <= 0.03
    assert all(r["latency_ms"] > 0 for r in result.stages)
    assert "fine_tune" in str(result)


def test_cli_dry_run_validates(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "model: prunekit:mnist-cnn\ninput_shape: [1, 1, 28, 28]\nstages:\n"
        "  - prune: {method: magnitude, sparsity: 0.9}\n  - quantize: {backend: openvino, mode: int8}\n"
        f"  - export: {{to: openvino, out: {tmp_path / 'out'}}}\n"
    )
    r = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert r.exit_code == 0 and "the recipe is valid" in r.output, r.output
    path.write_text(
        "model: prunekit:mnist-cnn\ninput_shape: [1, 1, 28, 28]\n"
        "stages:\n  - quantize: {backend: openvino, mode: int8}\n"
    )
    r = CliRunner().invoke(app, ["run", str(path)])
    assert r.exit_code == 2 and "add an export" in r.output
    assert not (tmp_path / "out").exists()


def test_the_readme_recipe_is_valid(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    import yaml

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```yaml\n(model:.*?)```", readme, re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)  # its export folder is relative
    recipe = Recipe.from_dict(yaml.safe_load(block.group(1)))
    assert [type(s).__name__ for s in recipe.stages] == ["PruneStage", "FineTuneStage", "QuantizeStage", "ExportStage"]


def test_input_shape_may_be_left_out_where_the_model_carries_it(tmp_path):
    raw = {"model": "prunekit:lenet5", "stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}}]}
    result = Recipe.from_dict(raw).run()  # lenet5 carries (1, 1, 28, 28): no data, so no accuracy
    assert [r["stage"] for r in result.stages] == ["start", "prune"] and result.stages[1]["latency_ms"] > 0
    model = pk.build_model("prunekit:lenet5")
    saved = pk.save_model(model, tmp_path / "no-shape", source="prunekit:lenet5")  # a record without a shape
    shapeless = {**raw, "model": str(saved)}
    assert Recipe.from_dict(shapeless).run().stages[0]["latency_ms"] > 0  # rebuilt from its source: carried
