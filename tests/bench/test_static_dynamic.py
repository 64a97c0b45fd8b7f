"""The static-vs-dynamic contrast: run-time gating methods (fbs, cgnet) run on a CNN, are skipped with a reason
on an MLP, and record what they save as MACs per input; static rows keep their meaning."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.bench import GridPoint, MethodSpec, ResultStore, expand, load_spec, parse_spec, point_problem, run_grid
from prunekit.bench.report import full_table, pivot_table, write_report

ROOT = Path(__file__).parents[2]

TINY = {
    "suites": {
        "sd": {
            "models": ["bench:mlp", "bench:cnn"],
            "data": ["digits"],
            "methods": [
                {"method": "erk", "label": "static"},
                {"method": "fbs", "label": "FBS"},
                {"method": "cgnet", "label": "CGNet"},
            ],
            "sparsities": [0.5],
            "pretrain_epochs": 1,
            "fine_tune_epochs": [0],
        }
    }
}

# bench:cnn (SmallCNN, width 16) on 8x8 digits: conv1 1->16 at 8x8, conv2 16->32 and conv3 32->64 with stride 2
# (4x4, 2x2), head 64->10. FBS gates conv2 and conv3 (not the first convolution); at sparsity 0.5 it computes
# k = 16 of 32 and 32 of 64 channels. MACs per input, exactly: conv1 + conv2 on its 16 kept outputs + conv3 on
# its 32 kept outputs from the 16 channels conv2 computed + the predictors (conv2's reads 16 channels, conv3's
# the 16 conv2 computed) + the head on the 32 channels conv3 computed. Data zeros (ReLU) never save.
DENSE_MACS = 8 * 8 * 9 * 1 * 16 + 4 * 4 * 9 * 16 * 32 + 2 * 2 * 9 * 32 * 64 + 64 * 10
FBS_MACS = 8 * 8 * 9 * 16 + 4 * 4 * 9 * 16 * 16 + 2 * 2 * 9 * 16 * 32 + 16 * 32 + 16 * 64 + 32 * 10


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("sd") / "results.db"
    summary = run_grid(parse_spec(TINY), store, progress=False)
    assert not summary.failed, summary.failed
    assert sorted((s.config["model"], s.config["method"]["method"]) for s in summary.skipped) == [
        ("bench:mlp", "cgnet"),
        ("bench:mlp", "fbs"),
    ]
    return store


@pytest.fixture(scope="module")
def rows(store: Path) -> dict[tuple[str, str], dict]:
    with ResultStore(store) as st:
        return {(r["model"], r["method"]): r for r in st.runs()}


def test_the_shipped_suite_runs_fbs_and_cgnet_on_the_cnn_and_skips_them_on_the_mlp_with_a_reason():
    points, skips = expand(load_spec(ROOT / "benchmarks" / "suites" / "contrasts.yaml"), ["static-vs-dynamic"])
    ran = {(p.model, p.method.method) for p in points}
    assert {("bench:cnn", "fbs"), ("bench:cnn", "cgnet")} <= ran
    assert ("bench:cnn", "erk") in ran and ("bench:mlp", "erk") in ran
    assert skips and all(s.config["model"] == "bench:mlp" for s in skips)
    assert {s.config["method"]["method"] for s in skips} == {"fbs", "cgnet"}
    assert all("cannot run on bench:mlp" in s.reason and "Conv2d" in s.reason for s in skips)
    assert not any("not implemented" in s.reason for s in skips)


def test_point_problem_says_why_a_gating_method_cannot_run_on_a_model():
    def point(method: str, model: str) -> GridPoint:
        return GridPoint("s", model, "digits", None, MethodSpec(method), 0.5, 1, 0, 64, 0)

    assert "BatchNorm2d" in (point_problem(point("fbs", "bench:mlp")) or "")
    assert point_problem(point("fbs", "bench:cnn")) is None
    assert point_problem(point("cgnet", "bench:cnn")) is None
    assert point_problem(point("magnitude", "bench:mlp")) is None  # a method that acts on any model


def test_run_time_rows_hold_mean_macs_per_input_below_dense(rows):
    dense = rows[("bench:cnn", "dense")]
    assert dense["dense_macs_per_input"] == DENSE_MACS
    assert dense["macs_per_input"] == dense["dense_kernel_macs_per_input"] == DENSE_MACS  # exactly 100%
    assert dense["skipped_share"] is None
    fbs = rows[("bench:cnn", "fbs")]
    assert fbs["run_time"] and fbs["sparsity"] == 0.0  # no weight is zeroed: the saving is per input
    assert fbs["dense_macs_per_input"] == DENSE_MACS
    assert fbs["macs_per_input"] == FBS_MACS
    assert fbs["skipped_share"] == 0.5  # 16 of 32 and 32 of 64 channels suppressed for every input
    assert fbs["dense_kernel_macs_per_input"] == fbs["macs_per_input"]  # a trained dense net has no zero weight
    cg = rows[("bench:cnn", "cgnet")]
    assert cg["run_time"] and cg["sparsity"] == 0.0
    assert 0 < cg["skipped_share"] < 1
    assert 0 < cg["macs_per_input"] < dense["macs_per_input"]
    assert any("latency does not show" in n for n in fbs["protocol"]["notes"])


def test_static_rows_keep_their_meaning(rows):
    for model in ("bench:mlp", "bench:cnn"):
        r = rows[(model, "erk")]
        nonzero = sum(layer["nonzero"] for layer in r["layers"])
        total = sum(layer["params"] for layer in r["layers"])
        assert r["sparsity"] == 1.0 - nonzero / total and 0.45 < r["sparsity"] < 0.55
        assert r["params"] == r["dense_params"] and not r["run_time"] and r["skipped_share"] is None
        # per input, at most the non-zero weights' MACs (FLOPs count a MAC twice)
        assert r["macs_per_input"] <= r["effective_flops"] / 2
        # zero weights save MACs only where they are skipped: dense kernels multiply them
        assert r["dense_kernel_macs_per_input"] == r["dense_macs_per_input"]
        assert r["macs_per_input"] < 0.8 * r["dense_kernel_macs_per_input"]
    # the MLP's Linear layers read each weight once per input: the non-zero weights are its MACs
    mlp = rows[("bench:mlp", "erk")]
    assert mlp["macs_per_input"] == sum(layer["nonzero"] for layer in mlp["layers"])


def test_report_shows_macs_per_input(store, rows, tmp_path):
    from prunekit.bench.report import aggregate

    write_report(store, tmp_path / "rep")
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "MACs per input, % of dense" in md and "| MACs/input | on dense kernels | gated off % |" in md
    assert (tmp_path / "rep" / "sd-macs.png").read_bytes()[:4] == b"\x89PNG"
    assert "cannot run on bench:mlp" in md  # the skipped table names the reason
    agg = aggregate([r for r in rows.values() if r["model"] == "bench:cnn"])
    header, body = full_table(agg)
    assert header[-3:] == ["MACs/input", "on dense kernels", "gated off %"]
    fbs = next(row for row in body if row[1] == "FBS")
    share = round(100 * rows[("bench:cnn", "fbs")]["macs_per_input"] / DENSE_MACS)
    assert fbs[-3].endswith(f"({share}%)") and fbs[-1] == "50.0"
    static = next(row for row in body if row[1] == "static")
    assert static[-1] == "-"
    _, pivot = pivot_table(agg)
    assert any(f"MACs {share}%" in cell for row in pivot if row[1] == "FBS" for cell in row)
