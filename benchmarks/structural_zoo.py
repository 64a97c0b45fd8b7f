"""Structural pruning over the torchvision classification zoo: 50% of channels, default settings.

For each model: success (with the error message), prune time, parameters and MACs before/after, CPU
latency at batch 1 and 8 before/after. If torch-pruning is installed, the same models are pruned with it at
its defaults (MagnitudePruner with GroupMagnitudeImportance(p=2), pruning_ratio 0.5, the final classifier
ignored) in the same process, and the ratios are reported.

Latency: the dense model and every library's pruned model are timed interleaved (each round runs each
model once, after warm-up), and the median per model is taken, so that a change of machine load cannot
favour one library. ``pk/TP latency`` is the median over rounds of prunekit's latency divided by
torch-pruning's in the same round, with a 95% bootstrap interval: below 1 means prunekit's model is
faster. ``same shapes`` says whether both libraries produced a model with identical tensor shapes.

Prune time is the pruning call alone: ``prunekit.prune(..., measure=False)`` (``prune_s``; ``engine_s`` is the
part spent planning and cutting, without the core's transaction snapshot and input checks) and, for
torch-pruning, building the pruner (its dependency graph) plus ``step()``. Both libraries are warmed up on a
small model first so that lazy imports are not counted. Measurements are separate from the timed call.

    python benchmarks/structural_zoo.py --threads 1                              # all 21 models
    python benchmarks/structural_zoo.py --models resnet18,mobilenet_v2 --size 64  # a quick look

Writes ``<out>.jsonl`` (one record per model and library) and ``<out>.md`` (a table over every record in
the jsonl). Models already in the jsonl are skipped, so the zoo can be run in pieces (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import random
import statistics
import time
import traceback
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import prunekit as pk
import prunekit.methods.structural  # noqa: F401  (registers the structural methods)

ZOO = [
    "resnet18",
    "resnet50",
    "resnext50_32x4d",
    "wide_resnet50_2",
    "vgg16_bn",
    "densenet121",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_y_800mf",
    "shufflenet_v2_x1_0",
    "squeezenet1_1",
    "googlenet",
    "inception_v3",
    "mnasnet1_0",
    "convnext_tiny",
    "vit_b_16",
    "swin_t",
    "maxvit_t",
    "alexnet",
]
FIXED_SIZE = {"vit_b_16": 224, "maxvit_t": 224}


def build(name: str) -> nn.Module:
    kwargs: dict[str, Any] = {}
    if name in ("googlenet", "inception_v3"):
        kwargs = {"aux_logits": False, "init_weights": False}
    return getattr(torchvision.models, name)(weights=None, **kwargs).eval()


def params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def macs(m: nn.Module, x: torch.Tensor) -> int:
    from prunekit.eval.report import no_fused_attention  # the fused MHA kernel is invisible to the counter

    with torch.no_grad(), no_fused_attention(), FlopCounterMode(display=False) as c:
        m(x)
    return c.get_total_flops() // 2


def latencies_ms(
    models: dict[str, nn.Module], x: torch.Tensor, rounds: int, budget_s: float = 10.0
) -> dict[str, list[float]]:
    """Per-call latencies of several models measured interleaved: every round runs each model once (after
    two warm-up calls each), so that load changes hit all of them alike.

    The order changes every round, cycling through all permutations (a seeded shuffle for more than four
    models), so that each model follows each other one equally often: running right after a bigger model,
    whose weights evicted the caches, costs a little and must not always hit the same one. Rounds come in
    whole cycles: at least one, then more until ``rounds`` or ``budget_s``."""
    times: dict[str, list[float]] = {k: [] for k in models}
    keys = list(models)
    perms = list(itertools.permutations(keys)) if len(keys) <= 4 else None
    cycle = len(perms) if perms else 1
    rng = random.Random(0)
    with torch.no_grad():
        for m in models.values():
            for _ in range(2):
                m(x)
        start = time.perf_counter()
        i = 0
        while True:
            order = perms[i % cycle] if perms else rng.sample(keys, len(keys))
            for k in order:
                t0 = time.perf_counter()
                models[k](x)
                times[k].append((time.perf_counter() - t0) * 1e3)
            i += 1
            if i % cycle == 0 and (i >= rounds or time.perf_counter() - start > budget_s):
                break
    return times


def paired_ratio(a: list[float], b: list[float], seed: int = 0) -> tuple[float, float, float]:
    """Median of the per-round ratios a/b and a 95% bootstrap interval of that median."""
    r = torch.tensor(a, dtype=torch.float64) / torch.tensor(b, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    boots = r[torch.randint(len(r), (1000, len(r)), generator=g)].median(dim=1).values
    return float(r.median()), float(boots.quantile(0.025)), float(boots.quantile(0.975))


_ENGINE_TIME: dict[str, float] = {}


def _time_engine() -> None:
    """Record the time spent inside the structural method (plan + surgery), apart from pk.prune's own work."""
    from prunekit.methods.structural import StructuralMethod

    if getattr(StructuralMethod.run, "_timed", False):
        return
    orig = StructuralMethod.run

    def run(self, model, request):  # noqa: ANN001, ANN202
        t0 = time.perf_counter()
        try:
            return orig(self, model, request)
        finally:
            _ENGINE_TIME["last"] = time.perf_counter() - t0

    run._timed = True  # type: ignore[attr-defined]
    StructuralMethod.run = run  # type: ignore[method-assign]


def prune_prunekit(model: nn.Module, x: torch.Tensor) -> None:
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x, measure=False)


def classifier(model: nn.Module) -> nn.Module:
    """The layer that produces the logits: the last Linear or Conv2d in module order."""
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def prune_torch_pruning(model: nn.Module, x: torch.Tensor) -> None:
    import torch_pruning as tp

    pruner = tp.pruner.MagnitudePruner(
        model,
        x,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[classifier(model)],
    )
    pruner.step()


def warm_up(libs: list) -> None:
    x = torch.randn(1, 3, 32, 32)
    for _, fn in libs:
        try:
            fn(torchvision.models.resnet18(num_classes=10).eval(), x)
        except Exception:  # noqa: BLE001
            pass


def measure(name: str, libs: list, size: int, repeats: int) -> list[dict[str, Any]]:
    """Prune one model with every library, then time the dense and all pruned models interleaved."""
    torch.manual_seed(0)
    s = FIXED_SIZE.get(name, size)
    x1, x8 = torch.randn(1, 3, s, s), torch.randn(8, 3, s, s)
    model = build(name)
    with torch.no_grad():
        ref_shape = tuple(model(x1).shape)
    base = {"model": name, "input": s, "params_before": params(model), "macs_before": macs(model, x1)}
    recs: dict[str, dict[str, Any]] = {}
    pruned: dict[str, nn.Module] = {}
    for lib, fn in libs:
        rec: dict[str, Any] = {**base, "lib": lib}
        work = copy.deepcopy(model)
        _ENGINE_TIME.clear()
        t0 = time.perf_counter()
        try:
            fn(work, x1)
            rec["prune_s"] = time.perf_counter() - t0
            if "last" in _ENGINE_TIME:
                rec["engine_s"] = _ENGINE_TIME["last"]
            work.eval()
            with torch.no_grad():
                out_shape = tuple(work(x1).shape)
            rec["ok"] = out_shape == ref_shape and params(work) < rec["params_before"]
            rec.update(params_after=params(work), macs_after=macs(work, x1))
            rec["macs_reduction"] = rec["macs_before"] / max(rec["macs_after"], 1)
            rec["shapes"] = {k: list(v.shape) for k, v in work.state_dict().items()}
            if rec["ok"]:
                pruned[lib] = work
        except Exception as e:  # noqa: BLE001  a failure is a result
            rec["ok"] = False
            rec["prune_s"] = time.perf_counter() - t0
            rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rec["trace"] = traceback.format_exc(limit=3)[-600:]
            del work
        recs[lib] = rec
    for tag, x, n in (("1", x1, repeats), ("8", x8, max(3, repeats // 2))):
        t = latencies_ms({"dense": model, **pruned}, x, n)
        for lib in pruned:
            r = recs[lib]
            r[f"lat{tag}_before"], r[f"lat{tag}_after"] = statistics.median(t["dense"]), statistics.median(t[lib])
            r[f"speedup{tag}"] = r[f"lat{tag}_before"] / r[f"lat{tag}_after"]
            r[f"rounds{tag}"] = len(t[lib])
            if lib != "prunekit" and "prunekit" in pruned:
                med, lo, hi = paired_ratio(t["prunekit"], t[lib])
                r[f"pk_over_lib{tag}"], r[f"pk_over_lib{tag}_ci"] = med, [lo, hi]
    if "prunekit" in recs:
        for lib, r in recs.items():
            if lib != "prunekit" and r.get("ok") and recs["prunekit"].get("ok"):
                r["same_shapes_as_prunekit"] = r["shapes"] == recs["prunekit"]["shapes"]
    for r in recs.values():
        r.pop("shapes", None)
    return list(recs.values())


def table(records: list[dict[str, Any]]) -> str:
    by = {(r["model"], r["lib"]): r for r in records}
    models = list(dict.fromkeys(r["model"] for r in records))
    has_tp = any(r["lib"] == "torch-pruning" for r in records)
    head = "| model | ok | prune s | engine s | params | MACs x | speedup b1 | speedup b8 |"
    sep = "|---|---|---|---|---|---|---|---|"
    if has_tp:
        head += (
            " TP ok | TP prune s | TP MACs x | TP speedup b1 | TP speedup b8 | same shapes |"
            " pk/TP latency b1 | pk/TP latency b8 | time ratio pk/TP |"
        )
        sep += "---|---|---|---|---|---|---|---|---|"
    lines = [head, sep]

    def f(r: dict | None, k: str, fmt: str = "{:.2f}") -> str:
        return fmt.format(r[k]) if r and k in r else "-"

    def lat(r: dict | None, tag: str) -> str:
        if not r or f"pk_over_lib{tag}" not in r:
            return "-"
        lo, hi = r[f"pk_over_lib{tag}_ci"]
        return f"{r[f'pk_over_lib{tag}']:.3f} [{lo:.3f}, {hi:.3f}]"

    tot_pk = tot_tp = tot_eng = 0.0
    for m in models:
        a, b = by.get((m, "prunekit")), by.get((m, "torch-pruning"))
        p = f"{a['params_before'] / 1e6:.1f}M -> {a['params_after'] / 1e6:.1f}M" if a and "params_after" in a else "-"
        row = (
            f"| {m} | {'yes' if a and a['ok'] else 'NO'} | {f(a, 'prune_s')} | {f(a, 'engine_s')} | {p} | "
            f"{f(a, 'macs_reduction')} | "
            f"{f(a, 'speedup1')} | {f(a, 'speedup8')} |"
        )
        if has_tp:
            ratio = "-"
            if a and b and a.get("ok") and b.get("ok"):
                ratio = f"{a['prune_s'] / b['prune_s']:.2f}"
                tot_pk += a["prune_s"]
                tot_eng += a.get("engine_s", a["prune_s"])
                tot_tp += b["prune_s"]
            same = (
                "-"
                if not b or "same_shapes_as_prunekit" not in b
                else ("yes" if b["same_shapes_as_prunekit"] else "no")
            )
            row += (
                f" {'yes' if b and b['ok'] else 'NO'} | {f(b, 'prune_s')} | {f(b, 'macs_reduction')} | "
                f"{f(b, 'speedup1')} | {f(b, 'speedup8')} | {same} | {lat(b, '1')} | {lat(b, '8')} | {ratio} |"
            )
        lines.append(row)
    ok = sum(1 for m in models if by.get((m, "prunekit"), {}).get("ok"))
    lines.append("")
    lines.append(f"prunekit: {ok}/{len(models)} models pruned, ran and kept their output shape.")
    if has_tp:
        ok_tp = sum(1 for m in models if by.get((m, "torch-pruning"), {}).get("ok"))
        lines.append(f"torch-pruning: {ok_tp}/{len(models)}.")
        if tot_tp:
            lines.append(
                f"total prune time on models both handle: prunekit {tot_pk:.1f} s, "
                f"torch-pruning {tot_tp:.1f} s (ratio {tot_pk / tot_tp:.2f}); "
                f"prunekit's engine alone {tot_eng:.1f} s "
                f"(ratio {tot_eng / tot_tp:.2f})."
            )
        both = [
            by[(m, "torch-pruning")]
            for m in models
            if (m, "torch-pruning") in by and "pk_over_lib1" in by[(m, "torch-pruning")]
        ]
        if both:
            same = sum(1 for r in both if r.get("same_shapes_as_prunekit"))
            for tag in ("1", "8"):
                worst = max(both, key=lambda r: r[f"pk_over_lib{tag}"])
                at_most = sum(1 for r in both if r[f"pk_over_lib{tag}"] <= 1)
                inside = sum(1 for r in both if r[f"pk_over_lib{tag}_ci"][0] <= 1)
                lines.append(
                    f"batch {tag}: prunekit's model at most as slow as torch-pruning's (median ratio <= 1) on "
                    f"{at_most}/{len(both)} models; 1 inside the 95% "
                    f"interval or below it on {inside}/{len(both)}; "
                    f"largest ratio {worst[f'pk_over_lib{tag}']:.3f} ({worst['model']})."
                )
            lines.append(f"identical tensor shapes from both libraries on {same}/{len(both)} models.")
    errors = [r for r in records if not r.get("ok") and r.get("error")]
    if errors:
        lines += ["", "failures:"]
        lines += [f"- {r['model']} ({r['lib']}): {r['error']}" for r in errors]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(ZOO))
    ap.add_argument("--size", type=int, default=224, help="input side for models that accept any size")
    ap.add_argument(
        "--repeats", type=int, default=30, help="most rounds of interleaved timing at batch 1 (half at batch 8)"
    )
    ap.add_argument("--out", default="results/structural_zoo")
    ap.add_argument("--no-tp", action="store_true", help="skip torch-pruning even if it is installed")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--fresh", action="store_true", help="ignore (and overwrite) the records already in <out>.jsonl")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        import torch_pruning  # noqa: F401

        libs = [("prunekit", prune_prunekit)] + ([] if args.no_tp else [("torch-pruning", prune_torch_pruning)])
    except ImportError:
        libs = [("prunekit", prune_prunekit)]
    _time_engine()
    warm_up(libs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    jsonl = out.with_suffix(".jsonl")
    records: list[dict[str, Any]] = []
    if jsonl.exists() and not args.fresh:
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    done = {r["model"] for r in records}
    with open(jsonl, "w" if args.fresh else "a") as fh:
        for name in args.models.split(","):
            if name in done:
                print(f"{name:20s} already in {jsonl}, skipped", flush=True)
                continue
            for rec in measure(name, libs, args.size, args.repeats):
                rec["threads"] = torch.get_num_threads()
                records.append(rec)
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                print(
                    f"{name:20s} {rec['lib']:14s} ok={rec['ok']} prune={rec.get('prune_s', 0):.2f}s "
                    f"b1x{rec.get('speedup1', 0):.2f} b8x{rec.get('speedup8', 0):.2f} "
                    f"MACsx{rec.get('macs_reduction', 0):.2f} {rec.get('error', '')}",
                    flush=True,
                )
    order = {m: i for i, m in enumerate(ZOO)}
    records.sort(key=lambda r: (order.get(r["model"], len(order)), r["lib"] != "prunekit"))
    md = table(records)
    out.with_suffix(".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
