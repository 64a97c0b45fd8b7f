"""The survey's recommendations as an advisor, backed by the measured results in a benchmark store.

:func:`advise` maps a situation (model family, what to optimise, hardware, how much data, whether
retraining is possible) to ranked method recommendations with their settings and reasons, following the
recommendations of Cheng, Zhang and Shi (TPAMI 2024, section "Recommendations"): structured pruning for
speed on general hardware, N:M for GPUs with sparse tensor cores, unstructured pruning with global or
layer-adaptive allocation for size, post-training solvers when retraining is out of reach, iterative or
gradual pruning with fine-tuning when accuracy matters most, data-free criteria when there is no data.
When a results store is given, :func:`evidence` reads it and the advice quotes what was measured on this
machine (speedups, accuracy changes), so a recommendation can be checked rather than trusted.
"""

from __future__ import annotations

import platform
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError

__all__ = ["Advice", "DATA", "HARDWARE", "Recommendation", "TARGETS", "advise", "evidence", "model_family"]

TARGETS = ("latency", "size", "accuracy")
HARDWARE = ("cpu", "gpu")
DATA = ("none", "few", "full")
_LLM_HINTS = ("smollm", "gemma", "llama", "gpt", "opt-", "mistral", "qwen", "phi", "gguf", "causal", "llm")
_TRANSFORMER_HINTS = ("bert", "minilm", "vit", "deit", "swin", "transformer")


@dataclass
class Recommendation:
    """One recommended method: its registered name, suggested ``settings`` (keyword arguments of
    :func:`prunekit.prune` or options), the ``reasons`` (the survey's, and the measurements when a store was
    read) and whether prunekit implements it (``available``)."""

    method: str
    settings: dict[str, Any]
    reasons: list[str]
    available: bool = True  # registered in prunekit now

    def line(self) -> str:
        """``method (key=value, ...)``: the recommendation on one line."""
        s = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        return f"{self.method} ({s})" if s else self.method


@dataclass
class Advice:
    """What :func:`advise` answers: the ``situation`` as understood, the model ``family``, the ranked
    ``recommendations``, what to ``avoid``, ``evidence`` measured in the results store, and catalog paper
    titles per recommended method (``papers``)."""

    situation: dict[str, str]
    family: str
    recommendations: list[Recommendation]
    avoid: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    papers: dict[str, list[str]] = field(default_factory=dict)  # method -> catalog titles

    def to_text(self) -> str:
        """The advice as numbered plain-text lines (reasons and a paper under each recommendation, then what
        to avoid and the evidence)."""
        situation = ", ".join(f"{k}={v}" for k, v in self.situation.items())
        lines = [f"situation: {situation} (model family: {self.family})", ""]
        for i, r in enumerate(self.recommendations, 1):
            flag = "" if r.available else "  [not implemented in prunekit yet]"
            lines.append(f"{i}. {r.line()}{flag}")
            lines += [f"   - {why}" for why in r.reasons]
            for title in self.papers.get(r.method, [])[:1]:
                lines.append(f"   - paper: {title}")
        if self.avoid:
            lines += ["", "avoid:"] + [f"  - {a}" for a in self.avoid]
        if self.evidence:
            lines += ["", "measured on this machine (results store):"] + [f"  - {e}" for e in self.evidence]
        return "\n".join(lines)


def model_family(model: str) -> str:
    """``llm``, ``transformer`` or ``cnn`` (convolutional / fully connected vision nets) from a model spec."""
    m = model.lower()
    if any(h in m for h in _LLM_HINTS):
        return "llm"
    if any(h in m for h in _TRANSFORMER_HINTS):
        return "transformer"
    return "cnn"


def _check(name: str, value: str, allowed: tuple[str, ...]) -> str:
    v = value.lower()
    if v not in allowed:
        raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {value!r}")
    return v


# ---- measured evidence ------------------------------------------------------------------------------


def evidence(store: str | Path) -> dict[str, list[str]]:
    """Statements measured in a results store, by topic: speed, allocation, schedule, finetune, init, criteria."""
    from prunekit.bench.report import aggregate
    from prunekit.bench.store import ResultStore

    with ResultStore(store) as st:
        rows = st.runs()
    if not rows:
        return {}
    agg = [r for r in aggregate(rows) if r["method"] != "dense"]
    out: dict[str, list[str]] = defaultdict(list)
    proto = rows[0]["protocol"]
    where = f"on this machine ({proto.get('machine', {}).get('cpus')} CPUs, {proto.get('threads')} thread(s))"

    # speed: structured vs unstructured, best speedup per sparsity
    struct = [r for r in agg if r["structural"] and r["speedup_b1"]]
    unstruct = [r for r in agg if r["structural"] is False and r["stage"] == "trained" and r["speedup_b1"]]
    if struct:  # quote the most compute-heavy model measured: tiny models are dominated by call overhead
        heaviest = max(r["dense_flops"] or 0 for r in struct)
        struct = [r for r in struct if (r["dense_flops"] or 0) == heaviest]
        best = max(struct, key=lambda r: r["speedup_b1"])
        near50 = min(struct, key=lambda r: abs(r["target"] - 0.5))
        out["speed"].append(
            f"{where} structured pruning ({near50['label']}, {near50['model']}) at {near50['target']:.0%} gave "
            f"{near50['speedup_b1']:.1f}x at batch 1 and {near50['speedup_b8']:.1f}x at batch 8 "
            f"(accuracy {near50['delta'] * 100:+.1f} points); the best was {best['speedup_b1']:.1f}x at "
            f"{best['target']:.0%}"
            if near50["delta"] is not None
            else f"{where} structured pruning at {near50['target']:.0%} gave {near50['speedup_b1']:.1f}x at batch 1"
        )
    if struct and unstruct:  # the same heavy model, so the two are timed alike
        same = [r for r in unstruct if r["model"] == struct[0]["model"] and r["data"] == struct[0]["data"]]
        unstruct = same or unstruct
    if unstruct:
        top = max(r["speedup_b1"] for r in unstruct)
        hi = max(r["target"] for r in unstruct)
        verdict = "none" if top < 1.15 else f"at most {top:.2f}x"
        out["speed"].append(
            f"unstructured pruning gave {verdict} (best {top:.2f}x at batch 1) at sparsities up to "
            f"{hi:.0%}: masked weights still run as dense matrices"
        )

    def compare(topic: str, a_pred: Any, b_pred: Any, a_name: str, b_name: str, what: str) -> None:
        pairs: dict[tuple[Any, ...], dict[str, float]] = defaultdict(dict)
        for r in agg:
            key = (r["suite"], r["model"], r["data"], r["transfer"], r["fine_tune_epochs"], r["target"])
            if a_pred(r):
                pairs[key]["a"] = r["accuracy"]
            elif b_pred(r):
                pairs[key]["b"] = r["accuracy"]
        both = {k: v for k, v in pairs.items() if "a" in v and "b" in v}
        if not both:
            return
        hi = max(k[-1] for k in both)
        at_hi = [v["a"] - v["b"] for k, v in both.items() if k[-1] == hi]
        wins = sum(v["a"] > v["b"] for v in both.values())
        diff = sum(at_hi) / len(at_hi)
        out[topic].append(
            f"{a_name} vs {b_name} ({what}): {a_name} more accurate in {wins} of {len(both)} "
            f"comparisons; at {hi:.0%} sparsity by {diff * 100:+.1f} points on average"
        )

    compare(
        "allocation",
        lambda r: r["label"] in ("global", "LAMP", "ERK"),
        lambda r: r["label"].startswith("layer-wise"),
        "global/adaptive allocation",
        "layer-wise (uniform)",
        "magnitude pruning",
    )
    compare(
        "schedule",
        lambda r: r["label"].startswith("iterative ("),
        lambda r: r["label"] == "one-shot",
        "iterative pruning",
        "one-shot pruning",
        "same fine-tune budget",
    )
    compare(
        "init",
        lambda r: r["label"] == "magnitude after training",
        lambda r: r["stage"] == "init" and r["suite"] == "init-vs-trained",
        "pruning a trained model",
        "pruning at initialisation",
        "same training budget",
    )
    ft = [r for r in agg if r["suite"] == "fine-tuning"]
    if ft:
        hi = max(r["target"] for r in ft)
        for label in sorted({r["label"] for r in ft}):
            by_ft = {r["fine_tune_epochs"]: r for r in ft if r["label"] == label and r["target"] == hi}
            if 0 in by_ft and len(by_ft) > 1:
                mx = max(by_ft)
                out["finetune"].append(
                    f"{label} at {hi:.0%}: {by_ft[0]['delta'] * 100:+.1f} points without fine-tuning, "
                    f"{by_ft[mx]['delta'] * 100:+.1f} after {mx} epochs"
                )
    return dict(out)


# ---- the rules ---------------------------------------------------------------------------------------


def advise(
    model: str,
    *,
    target: str = "latency",
    hardware: str = "cpu",
    data: str = "few",
    retrain: bool = True,
    results: str | Path | None = None,
) -> Advice:
    """Recommend methods and settings for a situation (see the module docstring).

    ``model``: a model spec or name (its family is guessed by :func:`model_family`); ``target``: one of
    :data:`TARGETS`; ``hardware``: one of :data:`HARDWARE`; ``data``: one of :data:`DATA`; ``retrain``: whether
    fine-tuning is possible; ``results``: a benchmark results store whose measurements are quoted. Raises
    :class:`~prunekit.errors.ConfigError` for a target, hardware or data value outside those lists.
    """
    target = _check("target", target, TARGETS)
    hardware = _check("hardware", hardware, HARDWARE)
    data = _check("data", data, DATA)
    family = model_family(model)
    recs: list[Recommendation] = []
    avoid: list[str] = []
    add = recs.append

    if family == "llm":
        if target == "latency":
            if hardware == "gpu":
                add(
                    Recommendation(
                        "sparsegpt" if data != "none" else "magnitude",
                        {"pattern": "2:4", "sparsity": 0.5},
                        [
                            "2:4 semi-structured sparsity runs on sparse tensor cores (Ampere and newer): "
                            "the survey's route to real GPU speedups without changing shapes",
                            "post-training: a few hundred calibration sequences, no retraining",
                        ],
                    )
                )
            add(
                Recommendation(
                    "layer",
                    {"sparsity": 0.25},
                    [
                        "removing whole decoder layers gives speedup on any hardware (structured)",
                        "accuracy drops quickly: follow with recovery fine-tuning (LoRA) when retraining is possible"
                        if retrain
                        else "without retraining keep it to a few layers",
                    ],
                )
            )
            add(
                Recommendation(
                    "head", {"sparsity": 0.25}, ["attention heads and MLP channels: structured, smaller matrices"]
                )
            )
        else:
            if data == "none":
                add(
                    Recommendation(
                        "magnitude",
                        {"sparsity": 0.4, "allocation": "uniform"},
                        [
                            "with no calibration text only data-free criteria are possible; layer-wise "
                            "magnitude is the survey's baseline",
                            "export sparse to shrink the file",
                        ],
                    )
                )
            else:
                add(
                    Recommendation(
                        "sparsegpt",
                        {"sparsity": 0.5 if not retrain else 0.6},
                        [
                            "second-order layer-wise reconstruction keeps perplexity at 50% unstructured "
                            "sparsity with only calibration data (post-training, one shot)"
                        ],
                    )
                )
                add(
                    Recommendation(
                        "wanda",
                        {"sparsity": 0.5},
                        ["|W| x ||X||: as good as SparseGPT at 50% with no weight update, much cheaper"],
                    )
                )
        if data == "none":
            avoid.append(
                "calibration-based solvers need some text: with none, use magnitude and expect a large "
                "perplexity increase above 30-40% sparsity"
            )
    else:
        conv = family == "cnn"
        if target == "latency":
            if hardware == "gpu":
                add(
                    Recommendation(
                        "magnitude",
                        {"pattern": "2:4", "sparsity": 0.5},
                        [
                            "N:M (2:4) sparsity gets ~1.5-2x on GPUs with sparse tensor cores; elsewhere use "
                            "structured pruning"
                        ],
                    )
                )
            if data == "none":
                add(
                    Recommendation(
                        "l2-channel" if conv else "head",
                        {"sparsity": 0.3 if not retrain else 0.5, "allocation": "uniform"},
                        [
                            "structured (channel/filter) pruning makes the network physically smaller: real "
                            "speedup on general hardware",
                            "norm criteria need no data",
                        ],
                    )
                )
                add(
                    Recommendation(
                        "fpgm-channel",
                        {"sparsity": 0.3},
                        ["data-free: removes redundant filters near the geometric median"],
                    )
                )
            else:
                add(
                    Recommendation(
                        "taylor-channel" if conv else "head",
                        {"sparsity": 0.5 if retrain else 0.3, "calibration_batches": 8},
                        [
                            "structured pruning is the survey's first choice for speed on CPUs and GPUs "
                            "without sparse kernels",
                            "first-order (Taylor) importance uses the data you have",
                        ],
                    )
                )
                add(
                    Recommendation(
                        "l2-channel",
                        {"sparsity": 0.5 if retrain else 0.3},
                        ["dependency-group (DepGraph-style) pruning handles residual and coupled layers"],
                    )
                )
            if data == "full" and retrain:
                add(
                    Recommendation(
                        "slimming",
                        {"sparsity": 0.5},
                        ["learn which channels to drop during training (L1 on BN scales), then remove them"],
                    )
                )
            avoid.append("unstructured pruning for latency on CPU: zeros in dense matrices are not skipped")
        elif target == "size":
            add(
                Recommendation(
                    "lamp" if data == "none" or not retrain else "gmp",
                    {"sparsity": 0.9 if retrain else 0.7, "allocation": "lamp" if not retrain else "global"},
                    [
                        "unstructured pruning reaches the highest sparsity for a given accuracy",
                        "global or layer-adaptive (LAMP, ERK) allocation beats uniform at high sparsity",
                        "save with prunekit.export_sparse: the file really shrinks",
                    ],
                )
            )
            if retrain and data == "full":
                add(
                    Recommendation(
                        "imp",
                        {"sparsity": 0.9, "rounds": 3},
                        [
                            "iterative magnitude pruning with rewinding: the most accurate at extreme "
                            "sparsity, at several times the training cost"
                        ],
                    )
                )
                add(
                    Recommendation(
                        "rigl",
                        {"sparsity": 0.9},
                        ["train sparse from scratch (dynamic sparse training) when training cost matters"],
                    )
                )
            add(
                Recommendation(
                    "quantisation after pruning",
                    {"bits": 8},
                    ["the survey recommends combining pruning with quantisation for size"],
                    available=False,
                )
            )
        else:  # accuracy
            if retrain:
                add(
                    Recommendation(
                        "gmp" if data == "full" else "magnitude",
                        {"sparsity": 0.7, "allocation": "global", "fine_tune_epochs": "as many as you can"},
                        [
                            "prune after training and fine-tune; gradual / iterative schedules keep the most accuracy",
                            "distil from the dense model while fine-tuning (kd_alpha)",
                        ],
                    )
                )
                if data == "full":
                    add(
                        Recommendation(
                            "imp",
                            {"sparsity": 0.8, "rounds": 4},
                            ["iterative pruning with rewinding finds the most accurate sparse networks"],
                        )
                    )
            else:
                add(
                    Recommendation(
                        "lamp",
                        {"sparsity": 0.5},
                        ["without retraining stay at moderate sparsity and allocate adaptively"],
                    )
                )
                if data != "none":
                    add(
                        Recommendation(
                            "snip",
                            {"sparsity": 0.5, "allocation": "global"},
                            ["gradient x weight scores from a few batches help most when there is no fine-tuning"],
                        )
                    )
    if data == "none":
        avoid.append("criteria that need data (SNIP, GraSP, Taylor, Hessian, SparseGPT, Wanda)")
    if not retrain:
        avoid.append(
            "high sparsity without fine-tuning: accuracy falls off a cliff beyond ~50% unstructured / ~30% structured"
        )
        avoid.append("methods that act during training (GMP, RigL, IMP, slimming)")
        recs = [r for r in recs if r.method not in ("gmp", "imp", "rigl", "slimming", "set")] or recs
    if data != "full":
        recs = [r for r in recs if r.method not in ("imp", "rigl", "slimming", "gmp")] or recs

    from prunekit.methods.base import METHODS  # filled by prunekit/__init__ (every method registers there)

    for r in recs:
        if r.available:
            r.available = r.method in METHODS
    ev: list[str] = []
    if results is not None and Path(results).is_file():
        found = evidence(results)
        topics = {
            "latency": ["speed", "finetune"],
            "size": ["allocation", "schedule", "finetune", "speed"],
            "accuracy": ["schedule", "allocation", "finetune", "init"],
        }[target]
        for t in topics:
            ev += found.get(t, [])
    papers: dict[str, list[str]] = {}
    try:
        from prunekit import catalog

        cat = catalog.load()
        for r in recs:
            titles = [p.title for p in cat if r.method in p.methods]
            if titles:
                papers[r.method] = sorted(set(titles))
    except Exception:  # noqa: BLE001  (the catalog is optional for advice)
        pass
    situation = {
        "model": model,
        "target": target,
        "hardware": hardware,
        "data": data,
        "retrain": "yes" if retrain else "no",
    }
    if results is not None and not Path(results).is_file():
        ev.append(f"(no results store at {results}: run `prunekit bench` to measure on {platform.machine()})")
    return Advice(situation, family, recs, avoid, ev, papers)
