"""The results store: one SQLite file, one row per finished run, keyed by the hash of its configuration.

A row is written in a single transaction only when its run has finished, with ``INSERT OR IGNORE`` on the
primary key: a runner killed at any moment (SIGKILL included) leaves either the whole row or nothing, and
a restart reruns exactly the points that have no row. The journal is a write-ahead log with full syncs.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prunekit.bench.spec import GridPoint, Skip

__all__ = ["ResultStore", "SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    data TEXT NOT NULL,
    transfer TEXT,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    sparsity REAL NOT NULL,
    fine_tune_epochs INTEGER NOT NULL,
    calibration_size INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    protocol TEXT NOT NULL,
    metrics TEXT NOT NULL,
    layers TEXT NOT NULL,
    backend TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS skipped (
    key TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    config TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
"""


class ResultStore:
    """Open (or create) a results store at ``path`` (an SQLite file; its folder is created). Usable as a
    context manager that closes the connection."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def finished_keys(self) -> set[str]:
        """The keys (:attr:`~prunekit.bench.spec.GridPoint.key`) of every finished run."""
        return {k for (k,) in self.conn.execute("SELECT key FROM runs")}

    def add_run(self, point: GridPoint, result: dict[str, Any], backend: str) -> bool:
        """Record a finished run in one transaction; False if its key was already there."""
        m = point.method
        with self._transaction():
            cur = self.conn.execute(
                "INSERT OR IGNORE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    point.key,
                    point.suite,
                    point.model,
                    point.data,
                    point.transfer,
                    m.method,
                    m.label,
                    point.sparsity,
                    point.fine_tune_epochs,
                    point.calibration_size,
                    point.seed,
                    json.dumps(point.config(), sort_keys=True, default=str),
                    json.dumps(result["protocol"], default=str),
                    json.dumps(result["metrics"]),
                    json.dumps(result["layers"]),
                    backend,
                    time.time(),
                ),
            )
            self.conn.execute("DELETE FROM skipped WHERE key = ?", (point.key,))
        return cur.rowcount == 1

    def add_skips(self, skips: Iterable[Skip]) -> None:
        """Record skipped (or failed) points in one transaction, replacing an earlier reason for the same key."""
        with self._transaction():
            for s in skips:
                self.conn.execute(
                    "INSERT OR REPLACE INTO skipped VALUES (?,?,?,?,?)",
                    (s.key, s.suite, json.dumps(s.config, sort_keys=True, default=str), s.reason, time.time()),
                )

    def _transaction(self) -> Any:
        conn = self.conn

        class _Tx:
            def __enter__(self) -> None:
                conn.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type: Any, *rest: Any) -> None:
                conn.execute("ROLLBACK" if exc_type else "COMMIT")

        return _Tx()

    def runs(self, suite: str | None = None) -> list[dict[str, Any]]:
        """Every finished run as a flat dict: its configuration columns (``target``: the target sparsity),
        ``config``, ``protocol``, ``layers`` and the metrics merged in at the top level."""
        q = (
            "SELECT key, suite, model, data, transfer, method, label, sparsity, fine_tune_epochs, calibration_size, "
            "seed, config, protocol, metrics, layers, backend, finished_at FROM runs"
        )
        args: tuple[Any, ...] = ()
        if suite is not None:
            q += " WHERE suite = ?"
            args = (suite,)
        rows = []
        for r in self.conn.execute(q + " ORDER BY suite, label, sparsity, fine_tune_epochs, seed", args):
            keys = (
                "key",
                "suite",
                "model",
                "data",
                "transfer",
                "method",
                "label",
                "sparsity",
                "fine_tune_epochs",
                "calibration_size",
                "seed",
                "config",
                "protocol",
                "metrics",
                "layers",
                "backend",
                "finished_at",
            )
            d = dict(zip(keys, r))
            d["target"] = d.pop("sparsity")  # the grid's target; "sparsity" below is the achieved one
            for k in ("config", "protocol", "layers"):
                d[k] = json.loads(d[k])
            d.update(json.loads(d.pop("metrics")))
            rows.append(d)
        return rows

    def skipped(self, suite: str | None = None) -> list[dict[str, Any]]:
        """Every skipped point (of ``suite``, or all) as ``{"key", "suite", "config", "reason"}``."""
        q = "SELECT key, suite, config, reason FROM skipped"
        args: tuple[str, ...] = ()
        if suite is not None:
            q, args = q + " WHERE suite = ?", (suite,)
        return [
            {"key": k, "suite": s, "config": json.loads(c), "reason": r}
            for k, s, c, r in self.conn.execute(q + " ORDER BY suite, reason", args)
        ]

    def count(self) -> int:
        """The number of finished runs."""
        return int(self.conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
