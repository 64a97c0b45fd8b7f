"""The runner survives SIGKILL (twice, at random points) and the Ray backend gives the local backend's rows."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prunekit.bench import DETERMINISTIC_METRICS, ResultStore, expand, load_spec, run_grid


def _deterministic(store: Path) -> dict[str, tuple]:
    with ResultStore(store) as st:
        return {r["key"]: tuple(r[k] for k in DETERMINISTIC_METRICS) for r in st.runs()}


def _count(store: Path) -> int:
    if not store.exists():
        return 0
    try:
        with ResultStore(store) as st:
            return st.count()
    except Exception:  # noqa: BLE001  (the store is being created)
        return 0


def _start(spec: Path, store: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "prunekit", "bench", str(spec), "--store", str(store), "--no-progress"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def test_store_is_resumed_exactly_after_two_sigkills(tiny_spec, tiny_store, tmp_path):
    points, _ = expand(load_spec(tiny_spec))
    n = len(points)
    store = tmp_path / "killed.db"
    rng = random.Random(1234)
    for _ in range(2):
        before = _count(store)
        proc = _start(tiny_spec, store)
        goal = min(n - 2, before + rng.randint(1, 4))
        deadline = time.time() + 120
        while _count(store) < goal and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next run
        assert proc.poll() is None, "the runner finished before it could be killed: make the grid larger"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert before < _count(store) < n
    proc = _start(tiny_spec, store)
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out
    with ResultStore(store) as st:
        keys = [r["key"] for r in st.runs()]
    assert len(keys) == len(set(keys)) == n
    assert set(keys) == {p.key for p in points}
    assert _deterministic(store) == _deterministic(tiny_store)
    # a further restart finds nothing to do
    summary = run_grid(tiny_spec, store, progress=False)
    assert summary.ran == 0 and summary.already_done == n


def test_restart_records_each_grid_point_once_and_keeps_skips(tiny_spec, tiny_store):
    with ResultStore(tiny_store) as st:
        skipped = st.skipped()
        rows = st.runs()
    assert {s["config"]["method"]["label"] for s in skipped} == {"missing"}
    assert all("not implemented" in s["reason"] for s in skipped)
    r = next(r for r in rows if r["label"] == "structured" and r["target"] == 0.5)
    assert r["params"] < r["dense_params"] and r["flops"] < r["dense_flops"]
    assert set(r["protocol"]) >= {"data_sha256", "seed", "versions", "threads"}
    assert {"latency_b1_ms", "latency_b8_ms", "wall_s", "peak_rss_mb", "accuracy"} <= set(r)
    u = next(r for r in rows if r["label"] == "unstructured" and r["target"] == 0.9)
    assert u["params"] == u["dense_params"] and 0.8 < u["sparsity"] < 0.9


def test_ray_backend_gives_the_same_rows_as_the_local_backend(tiny_spec, tiny_store, tmp_path):
    pytest.importorskip("ray", reason="the ray backend needs `pip install ray==2.60.0`")
    spec = load_spec(tiny_spec)
    points, _ = expand(spec)
    store = tmp_path / "ray.db"
    summary = run_grid(spec, store, backend="ray", ray_num_cpus=1, progress=False, limit=3)
    assert summary.ran == 3 and not summary.failed
    local = _deterministic(tiny_store)
    remote = _deterministic(store)
    assert len(remote) == 3
    assert all(remote[k] == local[k] for k in remote)
    with ResultStore(store) as st:
        assert {r["backend"] for r in st.runs()} == {"ray"}
