"""The declarative benchmark: a YAML file of named suites, parsed once into frozen dataclasses.

A suite is a grid: models x data (x transfer targets) x methods x sparsities x settings (fine-tune budget,
calibration size, seeds). :meth:`Suite.points` expands it into :class:`GridPoint` values, each with a
stable key (the hash of its full configuration); methods that prunekit does not have are returned as
skips with a reason instead of failing the suite.

```yaml
suites:
  one-shot-vs-iterative:
    question: Does pruning in several steps keep more accuracy than pruning at once?
    survey: iterative pruning with fine-tuning beats one-shot at high sparsity
    models: [bench:mlp]
    data: [digits]
    methods:
      - {method: magnitude, label: one-shot}
      - {method: magnitude, schedule: iterative:3, label: iterative}
    sparsities: [0.8, 0.95]
    pretrain_epochs: 8
    fine_tune_epochs: [3]
    calibration_size: [256]
    seeds: [0]
```
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from prunekit.errors import ConfigError

__all__ = [
    "BenchSpec",
    "DENSE",
    "GridPoint",
    "MethodSpec",
    "STAGES",
    "Skip",
    "Suite",
    "load_spec",
    "method_problem",
    "parse_schedule",
    "parse_spec",
]

STAGES = ("auto", "init", "trained")
DENSE = "dense"


def _tuple(value: Any, what: str) -> tuple[Any, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if isinstance(value, (str, int, float)):
        return (value,)
    raise ConfigError(f"{what} must be a value or a list of values, got {type(value).__name__}")


def parse_schedule(text: str) -> int:
    """``one-shot`` -> 1 step, ``iterative:K`` -> K steps. Raises :class:`~prunekit.errors.ConfigError` for
    anything else (K < 1 included)."""
    if text == "one-shot":
        return 1
    if text.startswith("iterative:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            k = 0
        if k >= 1:
            return k
    raise ConfigError(f"schedule must be 'one-shot' or 'iterative:K' with K >= 1, got {text!r}")


@dataclass(frozen=True)
class MethodSpec:
    """One method column of the grid: a registered method plus how it is applied.

    ``stage``: where pruning happens: ``init`` (before training), ``trained`` (after pre-training, then
    fine-tune) or ``auto`` (the method's own ``when``). ``schedule``: ``one-shot`` or ``iterative:K``
    (K prune/fine-tune steps sharing the fine-tune budget). ``options``: passed to the method.
    """

    method: str
    label: str = ""
    pattern: str | None = None
    allocation: str | None = None
    schedule: str = "one-shot"
    stage: str = "auto"
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.method)
        if self.stage not in STAGES:
            raise ConfigError(f"method {self.label!r}: stage must be one of {STAGES}, got {self.stage!r}")
        parse_schedule(self.schedule)

    @classmethod
    def parse(cls, raw: Any) -> MethodSpec:
        """A method entry of the YAML: a method name, or a mapping with ``method`` and the fields above
        (``options`` a mapping). Raises :class:`~prunekit.errors.ConfigError` for unknown keys or values."""
        if isinstance(raw, str):
            return cls(method=raw)
        if not isinstance(raw, Mapping) or "method" not in raw:
            raise ConfigError(f"a method entry is a name or a mapping with 'method', got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"method entry {raw!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        opts = raw.get("options") or {}
        if not isinstance(opts, Mapping):
            raise ConfigError(f"method {raw['method']!r}: options must be a mapping")
        return cls(
            method=str(raw["method"]),
            label=str(raw.get("label", "") or ""),
            pattern=None if raw.get("pattern") is None else str(raw["pattern"]),
            allocation=None if raw.get("allocation") is None else str(raw["allocation"]),
            schedule=str(raw.get("schedule", "one-shot")),
            stage=str(raw.get("stage", "auto")),
            options=tuple(sorted((str(k), v) for k, v in opts.items())),
        )


@dataclass(frozen=True)
class GridPoint:
    """One run: everything that determines its result. ``key`` hashes all of it."""

    suite: str
    model: str
    data: str
    transfer: str | None
    method: MethodSpec
    sparsity: float
    pretrain_epochs: int
    fine_tune_epochs: int
    calibration_size: int
    seed: int
    batch_size: int = 64
    lr: float = 0.05
    threads: int = 1

    def config(self) -> dict[str, Any]:
        """Every field as a JSON-able dict (the method's options as a mapping): what :attr:`key` hashes."""
        d = asdict(self)
        d["method"]["options"] = dict(self.method.options)
        return d

    @property
    def key(self) -> str:
        """SHA-256 (hex) of :meth:`config` as canonical JSON: the run's identity in the results store."""
        text = json.dumps(self.config(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def from_config(cls, d: Mapping[str, Any]) -> GridPoint:
        """The inverse of :meth:`config`."""
        m = dict(d["method"])
        m["options"] = tuple(sorted(dict(m.get("options") or {}).items()))
        return cls(**{**d, "method": MethodSpec(**m)})


@dataclass(frozen=True)
class Skip:
    """A grid point that is not run: its ``key``, ``suite``, ``config`` and the ``reason`` (a method prunekit
    lacks, or a run that failed)."""

    key: str
    suite: str
    config: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Suite:
    """A named grid. ``question``: the contrast it answers; ``survey``: what the survey says about it."""

    name: str
    models: tuple[str, ...]
    data: tuple[str, ...]
    methods: tuple[MethodSpec, ...]
    sparsities: tuple[float, ...]
    question: str = ""
    survey: str = ""
    transfer: tuple[str | None, ...] = (None,)
    pretrain_epochs: int = 5
    fine_tune_epochs: tuple[int, ...] = (0,)
    calibration_size: tuple[int, ...] = (256,)
    seeds: tuple[int, ...] = (0,)
    batch_size: int = 64
    lr: float = 0.05
    threads: int = 1
    baseline: bool = True

    def __post_init__(self) -> None:
        if not (self.models and self.data and self.methods and self.sparsities):
            raise ConfigError(f"suite {self.name!r} needs models, data, methods and sparsities")
        for s in self.sparsities:
            if not 0.0 < float(s) < 1.0:
                raise ConfigError(f"suite {self.name!r}: sparsities must be in (0, 1), got {s}")
        if self.pretrain_epochs < 0 or any(e < 0 for e in self.fine_tune_epochs):
            raise ConfigError(f"suite {self.name!r}: epochs must be >= 0")
        if any(c < 1 for c in self.calibration_size) or self.batch_size < 1 or self.threads < 1:
            raise ConfigError(f"suite {self.name!r}: calibration_size, batch_size and threads must be >= 1")

    @classmethod
    def parse(cls, name: str, raw: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> Suite:
        """The suite ``name`` from its YAML mapping, over the spec's ``defaults``. Raises
        :class:`~prunekit.errors.ConfigError` for unknown keys or values of the wrong type or range."""
        raw = {**(defaults or {}), **raw}
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"suite {name!r}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        try:
            return cls(
                name=name,
                models=tuple(str(m) for m in _tuple(raw.get("models"), "models")),
                data=tuple(str(d) for d in _tuple(raw.get("data"), "data")),
                methods=tuple(MethodSpec.parse(m) for m in _tuple(raw.get("methods"), "methods")),
                sparsities=tuple(float(s) for s in _tuple(raw.get("sparsities"), "sparsities")),
                question=str(raw.get("question", "")),
                survey=str(raw.get("survey", "")),
                transfer=tuple(
                    None if t is None else str(t)
                    for t in (_tuple(raw["transfer"], "transfer") if "transfer" in raw else (None,))
                ),
                pretrain_epochs=int(raw.get("pretrain_epochs", 5)),
                fine_tune_epochs=tuple(int(e) for e in _tuple(raw.get("fine_tune_epochs", 0), "fine_tune_epochs")),
                calibration_size=tuple(int(c) for c in _tuple(raw.get("calibration_size", 256), "calibration_size")),
                seeds=tuple(int(s) for s in _tuple(raw.get("seeds", 0), "seeds")),
                batch_size=int(raw.get("batch_size", 64)),
                lr=float(raw.get("lr", 0.05)),
                threads=int(raw.get("threads", 1)),
                baseline=bool(raw.get("baseline", True)),
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"suite {name!r}: {e}") from None

    def points(self) -> tuple[list[GridPoint], list[Skip]]:
        """The grid, in a stable order, and the points skipped because their method does not exist."""
        points: list[GridPoint] = []
        skips: list[Skip] = []
        seen: set[str] = set()
        for model, data, transfer, ft, calib, seed in itertools.product(
            self.models, self.data, self.transfer, self.fine_tune_epochs, self.calibration_size, self.seeds
        ):
            common = dict(
                suite=self.name,
                model=model,
                data=data,
                transfer=transfer,
                pretrain_epochs=self.pretrain_epochs,
                fine_tune_epochs=ft,
                calibration_size=calib,
                seed=seed,
                batch_size=self.batch_size,
                lr=self.lr,
                threads=self.threads,
            )
            if self.baseline:
                p = GridPoint(method=MethodSpec(DENSE), sparsity=0.0, **common)  # type: ignore[arg-type]
                if p.key not in seen:
                    seen.add(p.key)
                    points.append(p)
            for m, s in itertools.product(self.methods, self.sparsities):
                p = GridPoint(method=m, sparsity=float(s), **common)  # type: ignore[arg-type]
                if p.key in seen:
                    continue
                seen.add(p.key)
                problem = method_problem(m)
                if problem:
                    skips.append(Skip(p.key, self.name, p.config(), problem))
                else:
                    points.append(p)
        return points, skips


@dataclass(frozen=True)
class BenchSpec:
    """A parsed benchmark file: its suites by name."""

    suites: dict[str, Suite] = field(default_factory=dict)

    def select(self, names: list[str] | tuple[str, ...] | None) -> list[Suite]:
        """The suites named (all when ``names`` is empty or None), in the order given. Raises
        :class:`~prunekit.errors.ConfigError` naming the suites the spec does not have."""
        if not names:
            return list(self.suites.values())
        missing = [n for n in names if n not in self.suites]
        if missing:
            raise ConfigError(f"unknown suite(s) {missing}; this spec has: {', '.join(self.suites)}")
        return [self.suites[n] for n in names]


def parse_spec(raw: Any) -> BenchSpec:
    """A :class:`BenchSpec` from the YAML's mapping (``suites`` and optional ``defaults``). Raises
    :class:`~prunekit.errors.ConfigError` for another shape, unknown keys or an invalid suite."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("suites"), Mapping) or not raw["suites"]:
        raise ConfigError("a benchmark spec is a mapping with a non-empty 'suites' mapping (name -> suite)")
    unknown = set(raw) - {"suites", "defaults"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}; known: defaults, suites")
    defaults = raw.get("defaults") or {}
    return BenchSpec({str(n): Suite.parse(str(n), s or {}, defaults) for n, s in raw["suites"].items()})


def load_spec(path: str | Path) -> BenchSpec:
    """Read a YAML benchmark spec (:func:`parse_spec`). Raises :class:`~prunekit.errors.ConfigError` when the
    file is missing or not valid YAML."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"benchmark spec {p} not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    return parse_spec(raw)


def method_problem(m: MethodSpec) -> str | None:
    """Why this method cannot run here (None when it can)."""
    if m.method == DENSE:
        return None
    from prunekit.methods.base import METHODS

    if m.method not in METHODS:
        return f"method {m.method!r} is not implemented in prunekit yet"
    return None
