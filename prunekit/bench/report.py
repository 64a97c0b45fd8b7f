"""Tables, plots and one self-contained HTML page from a results store.

Per suite: a pivot of accuracy by method and sparsity (the main table), a full table (accuracy and its
change against the dense model of the same setting, parameters, FLOPs, latency at batch 1 and 8 and the
speedup over the dense model timed in the same process), and three PNG plots: accuracy vs sparsity per
method, accuracy vs measured latency with its Pareto front, and the per-layer sparsity profile at the
highest sparsity. Everything is written under ``out/``; ``report.html`` embeds the images, so the one file
can be sent around.

Runs that recorded MACs per input (:mod:`prunekit.bench.execute`) add them to both tables (the pivot's
cells and three columns of the full table) and a fourth plot, accuracy vs MACs per input: the scale on
which static (masked, removed) and run-time (gated) methods compare. Run-time methods zero no weights, so
the accuracy-vs-sparsity plot leaves them out.
"""

from __future__ import annotations

import base64
import html
import statistics
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prunekit.bench.spec import DENSE
from prunekit.bench.store import ResultStore

__all__ = [
    "SETTING",
    "aggregate",
    "full_table",
    "pareto_front",
    "pivot_table",
    "plot_accuracy",
    "plot_layers",
    "plot_macs",
    "plot_pareto",
    "write_report",
]

SETTING = ("model", "data", "transfer", "fine_tune_epochs", "calibration_size")


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def _setting(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r[k] for k in SETTING)


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over seeds per (setting, method label, target sparsity), with the dense baseline's accuracy
    of the same setting and the change against it."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["suite"], *_setting(r), r["label"], r["target"])].append(r)
    dense: dict[tuple[Any, ...], float] = {}
    for (suite, *setting, _label, _s), rs in groups.items():
        if rs[0]["method"] == DENSE:
            dense[(suite, *setting)] = _mean(r["accuracy"] for r in rs)  # type: ignore[assignment]
    out = []
    for (suite, *setting, label, target), rs in groups.items():
        base = dense.get((suite, *setting))
        d = {
            "suite": suite,
            **dict(zip(SETTING, setting)),
            "label": label,
            "method": rs[0]["method"],
            "target": target,
            "seeds": len(rs),
            "stage": rs[0].get("stage"),
            "structural": rs[0].get("structural"),
            "run_time": bool(rs[0].get("run_time")),
        }
        for k in (
            "accuracy",
            "sparsity",
            "params",
            "nonzero_params",
            "flops",
            "latency_b1_ms",
            "latency_b8_ms",
            "speedup_b1",
            "speedup_b8",
            "wall_s",
            "dense_params",
            "dense_flops",
            "macs_per_input",
            "dense_kernel_macs_per_input",
            "dense_macs_per_input",
            "skipped_share",
        ):
            d[k] = _mean(r.get(k) for r in rs)
        d["accuracy_std"] = statistics.pstdev([r["accuracy"] for r in rs]) if len(rs) > 1 else 0.0
        d["dense"] = base
        d["delta"] = None if base is None or d["accuracy"] is None else d["accuracy"] - base
        d["layers"] = rs[0]["layers"]
        out.append(d)
    out.sort(key=lambda d: (d["suite"], *(str(d[k]) for k in SETTING), d["method"] != DENSE, d["label"], d["target"]))
    return out


# ---- tables ---------------------------------------------------------------------------------------


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * v:.1f}"
    if kind == "dpct":
        return f"{100 * v:+.1f}"
    if kind == "x":
        return f"{v:.2f}x"
    if kind == "ms":
        return f"{v:.3f}"
    if kind == "int":
        v = float(v)
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return f"{v:.0f}"
    return str(v)


def _has_macs(agg: list[dict[str, Any]]) -> bool:
    """True when the runs recorded MACs per input (stores written before they were recorded have none)."""
    return any(r.get("macs_per_input") is not None for r in agg)


def _share(v: float | None, dense: float | None) -> str:
    return f"{100 * v / dense:.0f}%" if v is not None and dense else "-"


def _varying(rows: list[dict[str, Any]], key: str) -> bool:
    return len({str(r[key]) for r in rows}) > 1


def _setting_label(r: dict[str, Any], keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = r[k]
        if k == "transfer":
            parts.append(f"transfer to {v}" if v else "original task")
        elif k == "fine_tune_epochs":
            parts.append(f"fine-tune {v} ep")
        elif k == "calibration_size":
            parts.append(f"calibration {v}")
        else:
            parts.append(str(v))
    return ", ".join(parts)


def pivot_table(agg: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Main table of a suite: accuracy (%) by method (rows) and target sparsity (columns), with the dense
    accuracy, per setting that varies in the suite. Each cell: accuracy (± over seeds), achieved weight
    sparsity and, when recorded, mean MACs per input as a share of the dense network's."""
    keys = [k for k in SETTING if _varying(agg, k)]
    with_macs = _has_macs(agg)
    sparsities = sorted({r["target"] for r in agg if r["method"] != DENSE})
    header = ["setting", "method", "dense", *[f"{s:g}" for s in sparsities], "best speedup b1", "best speedup b8"]
    cells: dict[tuple[str, str], dict[float, dict[str, Any]]] = defaultdict(dict)
    dense: dict[str, Any] = {}
    order: list[tuple[str, str]] = []
    for r in agg:
        setting = _setting_label(r, keys) if keys else "-"
        if r["method"] == DENSE:
            dense[setting] = r["accuracy"]
            continue
        if (setting, r["label"]) not in cells:
            order.append((setting, r["label"]))
        cells[(setting, r["label"])][r["target"]] = r
    body = []
    for setting, label in order:
        row = cells[(setting, label)]
        accs = []
        for s in sparsities:
            c = row.get(s)
            if c is None:
                accs.append("-")
            else:
                std = f" ±{100 * c['accuracy_std']:.1f}" if c["seeds"] > 1 else ""
                macs = f"; MACs {_share(c['macs_per_input'], c['dense_macs_per_input'])}" if with_macs else ""
                accs.append(f"{100 * c['accuracy']:.1f}{std} ({100 * c['sparsity']:.0f}%{macs})")
        sp1 = max((c["speedup_b1"] or 0) for c in row.values())
        sp8 = max((c["speedup_b8"] or 0) for c in row.values())
        body.append([setting, label, _fmt(dense.get(setting), "pct"), *accs, _fmt(sp1, "x"), _fmt(sp8, "x")])
    return header, body


def full_table(agg: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of every aggregated run (:func:`aggregate`): target and achieved sparsity, accuracy
    and its change against the dense model, parameters, FLOPs, latency in ms at batch 1 and 8 with the
    speedups, seeds; the setting column names only what varies in the suite. When recorded, three more: mean
    MACs per input with zero weights skipped and on dense kernels (each with its share of the dense network's),
    and the measured share of gated outputs skipped per input (run-time methods)."""
    keys = [k for k in SETTING if _varying(agg, k)]
    header = [
        "setting",
        "method",
        "target",
        "sparsity %",
        "accuracy %",
        "vs dense",
        "params",
        "FLOPs",
        "b1 ms",
        "b8 ms",
        "speedup b1",
        "speedup b8",
        "seeds",
    ]
    with_macs = _has_macs(agg)
    if with_macs:
        header += ["MACs/input", "on dense kernels", "gated off %"]
    body = [
        [
            _setting_label(r, keys) if keys else "-",
            r["label"],
            f"{r['target']:g}",
            _fmt(r["sparsity"], "pct"),
            _fmt(r["accuracy"], "pct"),
            _fmt(r["delta"], "dpct"),
            _fmt(r["params"], "int"),
            _fmt(r["flops"], "int"),
            _fmt(r["latency_b1_ms"], "ms"),
            _fmt(r["latency_b8_ms"], "ms"),
            _fmt(r["speedup_b1"], "x"),
            _fmt(r["speedup_b8"], "x"),
            str(r["seeds"]),
            *(
                [
                    f"{_fmt(r['macs_per_input'], 'int')} ({_share(r['macs_per_input'], r['dense_macs_per_input'])})",
                    f"{_fmt(r['dense_kernel_macs_per_input'], 'int')} "
                    f"({_share(r['dense_kernel_macs_per_input'], r['dense_macs_per_input'])})",
                    _fmt(r["skipped_share"], "pct"),
                ]
                if with_macs
                else []
            ),
        ]
        for r in agg
    ]
    return header, body


def _markdown(header: list[str], body: list[list[str]]) -> str:
    def esc(c: str) -> str:
        return c.replace("|", "\\|")

    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


# ---- plots ----------------------------------------------------------------------------------------


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(agg: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy vs achieved sparsity, one line per method, one panel per setting; dense as a dashed line.
    Run-time methods zero no weights and are left out (:func:`plot_macs` shows them)."""
    plt = _plt()
    keys = [k for k in SETTING if _varying(agg, k)]
    settings: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in agg:
        if not r["run_time"]:
            settings[_setting_label(r, keys) if keys else ""].append(r)
    n = len(settings)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (setting, rs) in zip(axes.flat, settings.items()):
        lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in rs:
            if r["method"] == DENSE:
                ax.axhline(100 * r["accuracy"], color="grey", linestyle="--", linewidth=1, label="dense")
            else:
                lines[r["label"]].append((100 * r["sparsity"], 100 * r["accuracy"]))
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        _accuracy_panel(ax, setting or title, "sparsity of prunable layers (%)")
    return _save_panels(plt, fig, axes, n, f"{title}: accuracy vs sparsity", path)


def _accuracy_panel(ax: Any, title: str, xlabel: str) -> None:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _save_panels(plt: Any, fig: Any, axes: Any, used: int, suptitle: str, path: Path) -> Path:
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_macs(agg: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy vs mean MACs per input (zero weights skipped) as a share of the dense network's, one line per
    method, one panel per setting: static and run-time methods on one scale."""
    plt = _plt()
    keys = [k for k in SETTING if _varying(agg, k)]
    settings: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for r in agg:
        if r["macs_per_input"] is not None and r["dense_macs_per_input"]:
            share = 100 * r["macs_per_input"] / r["dense_macs_per_input"]
            settings[_setting_label(r, keys) if keys else ""][r["label"]].append((share, 100 * r["accuracy"]))
    n = max(1, len(settings))
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax, (setting, lines) in zip(axes.flat, settings.items()):
        for label, pts in lines.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="*" if label == DENSE else "o", label=label)
        _accuracy_panel(ax, setting or title, "mean MACs per input (% of dense)")
    return _save_panels(plt, fig, axes, len(settings), f"{title}: accuracy vs MACs per input", path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (latency, accuracy) not dominated by a faster-and-at-least-as-accurate point, by latency."""
    front, best = [], float("-inf")
    for lat, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if acc > best:
            front.append((lat, acc))
            best = acc
    return front


def plot_pareto(agg: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Accuracy vs measured latency at batch 1, every run of the suite; the Pareto front is drawn."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    by_label: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in agg:
        if r["latency_b1_ms"] is not None:
            by_label[r["label"]].append((r["latency_b1_ms"], 100 * r["accuracy"]))
    for label, pts in by_label.items():
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=label, s=22, marker="*" if label == DENSE else "o")
    front = pareto_front([p for pts in by_label.values() for p in pts])
    if front:
        ax.step(
            [p[0] for p in front], [p[1] for p in front], where="post", color="black", linewidth=1, label="Pareto front"
        )
    ax.set_xlabel("latency at batch 1 (ms, median)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{title}: accuracy vs real latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_layers(agg: list[dict[str, Any]], path: Path, title: str) -> Path:
    """Sparsity of each layer at the suite's highest target sparsity, per method (first setting)."""
    plt = _plt()
    runs = [r for r in agg if r["method"] != DENSE]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if runs:
        first = _setting(runs[0])
        top = max(r["target"] for r in runs if _setting(r) == first)
        chosen = [r for r in runs if _setting(r) == first and r["target"] == top]
        names = [layer["name"] for layer in chosen[0]["layers"]]
        width = 0.8 / max(1, len(chosen))
        for i, r in enumerate(chosen):
            values = {layer["name"]: 100 * layer["sparsity"] for layer in r["layers"]}
            ax.bar(
                [j + i * width for j in range(len(names))], [values.get(n, 0.0) for n in names], width, label=r["label"]
            )
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
        ax.set_title(f"{title}: per-layer sparsity at target {top:g} ({first[0]})", fontsize=10)
        ax.legend(fontsize=7)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---- the report -----------------------------------------------------------------------------------

_CSS = (
    "body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em;color:#222}\n"
    "table{border-collapse:collapse;margin:.6em 0;font-size:13px}"
    "th,td{border:1px solid #bbb;padding:3px 7px;text-align:right}\n"
    "th{background:#eee}td:first-child,td:nth-child(2){text-align:left}img{max-width:100%;margin:.4em 0}\n"
    ".q{font-style:italic}.s{color:#555}"
)


def _suite_meta(spec_path: str | Path | None) -> dict[str, Any]:
    if spec_path is None:
        return {}
    from prunekit.bench.spec import load_spec

    return {name: s for name, s in load_spec(spec_path).suites.items()}


def write_report(store: str | Path | ResultStore, out: str | Path, *, spec: str | Path | None = None) -> Path:
    """Write ``tables.md``, PNG plots and ``report.html`` for every suite in the store; returns the HTML path.
    ``spec``: the benchmark YAML, to show each suite's question and the survey's claim. ``store``: a
    :class:`~prunekit.bench.store.ResultStore` or its path. Raises :class:`~prunekit.errors.ConfigError` when
    ``spec`` is given and cannot be read."""
    st = store if isinstance(store, ResultStore) else ResultStore(store)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = _suite_meta(spec)
    rows = st.runs()
    skipped = st.skipped()
    suites = sorted({r["suite"] for r in rows} | {s["suite"] for s in skipped})
    md = ["# prunekit benchmark report", ""]
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>prunekit benchmark report</title>"
        f"<style>{_CSS}</style></head><body><h1>prunekit benchmark report</h1>"
    ]
    if rows:
        proto = rows[0]["protocol"]
        versions = ", ".join(f"{k} {v}" for k, v in proto.get("versions", {}).items())
        line = (
            f"{len(rows)} runs in {len(suites)} suites. Library versions: {versions}. "
            f"Machine: {proto.get('machine', {}).get('processor')}, "
            f"{proto.get('machine', {}).get('cpus')} CPUs; "
            f"runs use {proto.get('threads')} thread(s). Latency: {proto.get('latency')}."
        )
        md += [line, ""]
        page.append(f"<p>{html.escape(line)}</p>")
        hashes = sorted({(k, v) for r in rows for k, v in r["protocol"].get("data_sha256", {}).items()})
        page.append("<p class='s'>Data: " + html.escape("; ".join(f"{k} sha256 {v[:16]}" for k, v in hashes)) + "</p>")
        md += ["Data: " + "; ".join(f"{k} sha256 {v[:16]}" for k, v in hashes), ""]
    for suite in suites:
        srows = [r for r in rows if r["suite"] == suite]
        agg = aggregate(srows)
        md += [f"## {suite}", ""]
        page.append(f"<h2 id='{html.escape(suite)}'>{html.escape(suite)}</h2>")
        s = meta.get(suite)
        if s is not None:
            md += [f"*Question:* {s.question}", "", f"*Survey:* {s.survey}", ""]
            page.append(
                f"<p class='q'>Question: {html.escape(s.question)}</p><p class='s'>Survey: {html.escape(s.survey)}</p>"
            )
        if agg:
            h, b = pivot_table(agg)
            what = "achieved weight sparsity; MACs per input, % of dense" if _has_macs(agg) else "achieved sparsity"
            md += [f"Accuracy % ({what}) by method and target sparsity:", "", _markdown(h, b), ""]
            page.append("<h3>Accuracy by method and sparsity</h3>" + _html_table(h, b))
            h, b = full_table(agg)
            md += ["<details><summary>all runs (means over seeds)</summary>", "", _markdown(h, b), "", "</details>", ""]
            page.append("<h3>All runs (means over seeds)</h3>" + _html_table(h, b))
            plots = [("accuracy", plot_accuracy), ("pareto", plot_pareto), ("layers", plot_layers)]
            if _has_macs(agg):
                plots.append(("macs", plot_macs))
            for kind, fn in plots:
                png = fn(agg, out / f"{suite}-{kind}.png", suite)
                md += [f"![{suite} {kind}]({png.name})", ""]
                data = base64.b64encode(png.read_bytes()).decode()
                page.append(f"<img alt='{html.escape(suite)} {kind}' src='data:image/png;base64,{data}'>")
        sk = [x for x in skipped if x["suite"] == suite]
        if sk:
            reasons: dict[str, int] = defaultdict(int)
            for x in sk:
                reasons[f"{x['config']['method']['label']}: {x['reason']}"] += 1
            h, b = ["skipped", "grid points"], [[k, str(v)] for k, v in sorted(reasons.items())]
            md += ["Skipped:", "", _markdown(h, b), ""]
            page.append("<h3>Skipped</h3>" + _html_table(h, b))
    page.append("</body></html>")
    (out / "tables.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    path = out / "report.html"
    path.write_text("\n".join(page), encoding="utf-8")
    if not isinstance(store, ResultStore):
        st.close()
    return path
