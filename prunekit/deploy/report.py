"""What an export did, stated: runtime, precision, sparse-executed layers, file size, the output check and
latency against the dense model in the same runtime and in PyTorch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunekit.eval.latency import LatencyComparison
from prunekit.serialization import atomic_write

__all__ = ["DeployReport"]

#: the output check in words, by its ``passed`` value (None: the error is reported, not held to a tolerance)
_VERDICTS: dict[object, str] = {True: "passed", False: "NOT within tolerance"}


@dataclass
class DeployReport:
    """The report of one export.

    ``latency`` maps a comparison name to a :class:`~prunekit.eval.latency.LatencyComparison` whose ``candidate``
    is the exported model in its runtime; names used: ``"vs dense <runtime>"`` (the dense model exported the
    same way, timed in the same runtime), ``"vs dense pytorch"`` (the dense model in PyTorch, fp32) and
    ``"vs same model in pytorch"`` (the exported model's own PyTorch form). ``ratio`` < 1 means the exported
    model is faster; ``speedup`` is its inverse. Times are in milliseconds per forward pass on the example
    inputs at ``threads`` threads.
    """

    runtime: str
    format: str
    path: str
    files: list[str]
    file_bytes: int
    precision: str
    runtime_config: dict[str, Any]
    weight_sparsity: float
    sparse_layers: list[str]
    sparse_note: str
    check: dict[str, Any]
    input_shapes: list[list[int]]
    threads: int
    baseline: str
    dense_file_bytes: int | None = None
    latency: dict[str, LatencyComparison] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every field, each latency comparison as its own dict."""
        d = asdict(self)
        d["latency"] = {k: v.to_dict() for k, v in self.latency.items()}
        return d

    def to_json(self, path: str | Path | None = None) -> str:
        """:meth:`to_dict` as indented JSON text, also written to ``path`` when one is given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:  # whole or not at all: a temporary file renamed into place
            atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeployReport:
        """The inverse of :meth:`to_dict`."""
        return cls(**{**d, "latency": {k: LatencyComparison.from_dict(v) for k, v in d.get("latency", {}).items()}})

    def __str__(self) -> str:
        mb = self.file_bytes / 1e6
        lines = [
            f"{self.format} export -> {self.path} ({mb:.2f} MB"
            + (f", dense {self.dense_file_bytes / 1e6:.2f} MB" if self.dense_file_bytes else "")
            + ")",
            f"runtime: {self.runtime}; precision: {self.precision}",
            f"runtime settings: {json.dumps(self.runtime_config)}",
            f"weight sparsity {100 * self.weight_sparsity:.1f}%; sparse-executed layers: "
            + (", ".join(self.sparse_layers) if self.sparse_layers else "none")
            + f" ({self.sparse_note})",
            "check vs PyTorch on the example inputs: "
            + _VERDICTS.get(self.check.get("passed"), "error reported, not held to a tolerance")
            + f" (max |diff| {self.check.get('max_abs_diff', float('nan')):.3g}, relative L2 error "
            f"{self.check.get('relative_l2_error', float('nan')):.3g}, atol {self.check.get('atol')}, rtol "
            f"{self.check.get('rtol')})" + (f"; {self.check['note']}" if self.check.get("note") else ""),
            f"dense baseline: {self.baseline}",
        ]
        for name, c in self.latency.items():
            lines.append(
                f"latency {name}: {c.candidate.median_ms:.3f} ms vs {c.baseline.median_ms:.3f} ms, "
                f"speedup {c.speedup:.2f}x (ratio 95% CI {c.ratio_low:.3f}-{c.ratio_high:.3f}, {c.verdict})"
                + (f"; {c.warning}" if c.warning else "")
            )
        if not self.latency:
            lines.append("latency: not measured")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)
