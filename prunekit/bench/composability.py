"""The composability contract: every criterion x granularity x allocation, on three small models.

Each combination either works (what was removed has the requested shape: at most n of m kept per N:M
group, whole tiles, whole output rows, fewer channels / heads / layers, and the model still runs) or is
refused with a :class:`~prunekit.errors.PrunekitError` that leaves the model bit-identical. Anything else
is a failure of the contract: a raw exception, or a "silent substitution" (success reported, but the
shape asked for was not removed, or the model did not change).

``run_matrix()`` returns one :class:`Cell` per (model, criterion, granularity, allocation); the test
suite and ``benchmarks/composability.py`` (which writes ``docs/results/composability/``) both use it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.api import prune
from prunekit.apply.plan import Pruner
from prunekit.errors import PrunekitError
from prunekit.models.nets import TinyCNN

GRANULARITIES = ("unstructured", "2:4", "4x4", "channel", "physical-channel", "head", "layer")
ALLOCATIONS = ("uniform", "global", "erk", "lamp", "owl")
MODELS = ("cnn", "vit", "llama")
SPARSITY = 0.5


@dataclass
class Cell:
    """One combination's outcome: ``ok``, ``refused`` (a PrunekitError, model unchanged), ``raw`` (any other
    exception) or ``silent`` (success without the requested removal, or a refusal that changed the model)."""

    model: str
    criterion: str
    granularity: str
    allocation: str
    status: str
    detail: str = ""
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------- models


def build(name: str, seed: int = 0) -> tuple[nn.Module, Any, Any]:
    """(model, example_inputs, calibration) for "cnn", "vit" or "llama" (transformers LlamaForCausalLM)."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    calib: list[Any]  # (inputs, targets) pairs, or token batches for the language model
    if name == "cnn":
        model: nn.Module = TinyCNN()
        x = torch.randn(4, 4, 8, 8, generator=g)
        calib = [(torch.randn(4, 4, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(2)]
        # BN statistics of a trained network rather than the identity of a fresh one
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d) and m.running_var is not None:
                    m.weight.uniform_(0.2, 1.5, generator=g)
                    m.running_var.uniform_(0.5, 2.0, generator=g)
    elif name == "vit":
        from torchvision.models import VisionTransformer

        model = VisionTransformer(
            image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64, num_classes=5
        )
        x = torch.randn(2, 3, 16, 16, generator=g)
        calib = [(torch.randn(4, 3, 16, 16, generator=g), torch.randint(0, 5, (4,), generator=g)) for _ in range(2)]
    elif name == "llama":
        import transformers

        cfg = transformers.LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
        model = transformers.LlamaForCausalLM(cfg)
        x = torch.randint(0, 64, (1, 16), generator=g)
        calib = [torch.randint(0, 64, (2, 16), generator=g) for _ in range(2)]
    else:
        raise ValueError(f"unknown model {name!r}; one of {MODELS}")
    return model.eval(), x, calib


# ---------------------------------------------------------------------------------------------- checks


def _state(model: nn.Module) -> tuple[list[str], dict[str, bytes]]:
    tree = [f"{n}:{type(m).__name__}" for n, m in model.named_modules()]
    return tree, {
        k: v.detach().cpu().contiguous().numpy().tobytes() + str(tuple(v.shape)).encode()
        for k, v in model.state_dict().items()
    }


def _canonical_masks(model: nn.Module) -> dict[str, Tensor]:
    from prunekit.apply.masks import get_mask
    from prunekit.layout import weight_layout

    out = {}
    for name, m in model.named_modules():
        mask = get_mask(m, "weight") if hasattr(m, "parametrizations") else None
        layout = weight_layout(m)
        if mask is not None and layout is not None:
            out[name] = layout.to_canonical(mask)
    return out


def _heads(model: nn.Module) -> int:
    n = 0
    for m in model.modules():
        if isinstance(m, nn.MultiheadAttention):
            n += m.num_heads
        elif hasattr(m, "q_proj") and hasattr(m, "head_dim"):  # a Hugging Face attention module
            q_proj: Any = m.q_proj
            head_dim: Any = m.head_dim
            n += q_proj.out_features // head_dim
    return n


def _blocks(model: nn.Module) -> int:
    names = {"_Block", "EncoderBlock", "LlamaDecoderLayer"}
    return sum(type(m).__name__ in names for m in model.modules())


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check(granularity: str, before: nn.Module, after: nn.Module) -> str:
    """An empty string when ``after`` shows the removal ``granularity`` asks for, else what is wrong."""
    masks = _canonical_masks(after)
    if granularity in ("unstructured", "2:4", "4x4", "channel"):
        if not masks:
            return "no mask was attached"
        kept = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        if kept == total:
            return "masks prune nothing"
        for name, m in masks.items():
            if granularity == "2:4":
                groups = (m.movedim(1, -1) if m.dim() > 2 else m).reshape(-1, 4)
                if int(groups.sum(1).max()) > 2:
                    return f"{name}: a group of 4 keeps more than 2"
            elif granularity == "4x4":
                m2 = m.reshape(m.shape[0], -1)
                r, c = -m2.shape[0] % 4, -m2.shape[1] % 4
                p = nn.functional.pad(m2.float(), (0, c, 0, r), value=-1)
                tiles = p.reshape(p.shape[0] // 4, 4, p.shape[1] // 4, 4).transpose(1, 2).reshape(-1, 16)
                for t in tiles:
                    vals = set(t[t >= 0].tolist())
                    if len(vals) > 1:
                        return f"{name}: a 4x4 tile is partly pruned"
            elif granularity == "channel":
                rows = m.reshape(m.shape[0], -1)
                if not bool(((rows.all(1)) | (~rows.any(1))).all()):
                    return f"{name}: an output row is partly pruned"
        return ""
    if masks:
        return f"{granularity} should change shapes but masks were attached"
    if granularity == "physical-channel":
        return "" if _params(after) < _params(before) else "no parameter was removed"
    if granularity == "head":
        return "" if _heads(after) < _heads(before) else f"heads {_heads(before)} -> {_heads(after)}"
    if granularity == "layer":
        return "" if _blocks(after) < _blocks(before) else f"blocks {_blocks(before)} -> {_blocks(after)}"
    return f"unknown granularity {granularity}"


def _runs(model: nn.Module, x: Any) -> str:
    try:
        with torch.no_grad():
            out = model(x)
        t = getattr(out, "logits", out)
        return "" if bool(torch.isfinite(t).all()) else "the pruned model outputs non-finite values"
    except Exception as e:  # noqa: BLE001
        return f"the pruned model no longer runs ({type(e).__name__}: {e})"


# ------------------------------------------------------------------------------------------------- run


def run_cell(
    model_name: str, criterion: str, granularity: str, allocation: str, built: tuple[nn.Module, Any, Any] | None = None
) -> Cell:
    """Prune a fresh copy of the model with ``pk.Pruner(criterion, granularity, allocation)``."""

    base, x, calib = built if built is not None else build(model_name)
    model = copy.deepcopy(base)
    tree, state = _state(model)
    t0 = time.perf_counter()
    status, detail = "ok", ""
    try:
        pruner = Pruner(criterion=criterion, granularity=granularity, allocation=allocation)
        prune(
            model, pruner, sparsity=SPARSITY, example_inputs=x, calibration=calib, skip_incompatible=True, measure=False
        )
        problem = check(granularity, base, model) or _runs(model, x)
        if problem:
            status, detail = "silent", problem
    except PrunekitError as e:
        status, detail = "refused", f"{type(e).__name__}: {e}"
        if _state(model) != (tree, state):
            status, detail = "silent", f"refused but the model changed: {detail}"
    except Exception as e:  # noqa: BLE001  (the contract says this must not happen)
        status, detail = "raw", f"{type(e).__name__}: {e}"
    return Cell(
        model_name,
        criterion,
        granularity,
        allocation,
        status,
        detail.splitlines()[0][:300] if detail else "",
        round(time.perf_counter() - t0, 3),
    )


def run_matrix(
    criteria: Iterable[str] | None = None,
    granularities: Iterable[str] = GRANULARITIES,
    allocations: Iterable[str] = ("uniform",),
    models: Iterable[str] = MODELS,
    progress: Callable[[Cell], None] | None = None,
) -> list[Cell]:
    """Every combination; ``criteria`` defaults to every registered criterion (aliases left out)."""
    from prunekit.criteria import BUILTIN

    cells = []
    built = {m: build(m) for m in models}
    for crit in criteria or BUILTIN:
        for gran in granularities:
            for alloc in allocations:
                for m in built:
                    cell = run_cell(m, crit, gran, alloc, built[m])
                    cells.append(cell)
                    if progress is not None:
                        progress(cell)
    return cells


def summarise(cells: list[Cell]) -> dict[str, Any]:
    """Pair counts: a (criterion, granularity) pair works when it works on at least one model (under any
    allocation tried); per-level criterion counts; raw and silent cells listed."""
    pairs: dict[tuple[str, str], bool] = {}
    for c in cells:
        pairs[(c.criterion, c.granularity)] = pairs.get((c.criterion, c.granularity), False) or c.status == "ok"
    per_gran = {g: sorted({c for (c, gg), ok in pairs.items() if gg == g and ok}) for g in {g for _, g in pairs}}
    return {
        "pairs_total": len(pairs),
        "pairs_working": sum(pairs.values()),
        "criteria_per_granularity": {g: len(v) for g, v in sorted(per_gran.items())},
        "raw": [asdict(c) for c in cells if c.status == "raw"],
        "silent": [asdict(c) for c in cells if c.status == "silent"],
        "cells": len(cells),
        "status_counts": {s: sum(c.status == s for c in cells) for s in ("ok", "refused", "raw", "silent")},
    }


def markdown(cells: list[Cell], summary: dict[str, Any]) -> str:
    """The matrix as markdown: one table per allocation, a row per criterion, a column per granularity;
    a cell lists the models the pair works on (``-`` refused everywhere; ``RAW``/``SILENT`` flag failures)."""
    lines = [
        "# Composability matrix",
        "",
        f"{summary['pairs_working']} of {summary['pairs_total']} criterion x granularity pairs work on at least "
        f"one of {', '.join(sorted({c.model for c in cells}))} (sparsity {SPARSITY}); cells: "
        + ", ".join(f"{k} {v}" for k, v in summary["status_counts"].items()),
        "",
    ]
    grans = [g for g in GRANULARITIES if any(c.granularity == g for c in cells)]
    for alloc in [a for a in ALLOCATIONS if any(c.allocation == a for c in cells)]:
        lines += [
            f"## allocation: {alloc}",
            "",
            "| criterion | " + " | ".join(grans) + " |",
            "|---|" + "---|" * len(grans),
        ]
        for crit in sorted({c.criterion for c in cells}):
            row = []
            for g in grans:
                sel = [c for c in cells if c.criterion == crit and c.granularity == g and c.allocation == alloc]
                if not sel:
                    row.append("")
                    continue
                bad = [c for c in sel if c.status in ("raw", "silent")]
                ok = [c.model for c in sel if c.status == "ok"]
                flagged = "**" + "/".join(c.status.upper() for c in bad) + "** " if bad else ""
                row.append(flagged + (",".join(ok) or "-"))
            lines.append(f"| {crit} | " + " | ".join(row) + " |")
        lines.append("")
    working = ", ".join(f"{g} {n}" for g, n in summary["criteria_per_granularity"].items())
    lines += ["Criteria working per granularity: " + working, ""]
    refusals: dict[str, str] = {}
    for c in cells:
        if c.status == "refused":
            refusals.setdefault(f"{c.criterion} x {c.granularity} ({c.model}, {c.allocation})", c.detail)
    if refusals:
        lines += ["## Refusals (first of each kind)", ""]
        seen = set()
        for k, v in refusals.items():
            kind = v.split(":")[0] + v[v.find(":") :][:80]
            if kind in seen:
                continue
            seen.add(kind)
            lines.append(f"- {k}: {v}")
    for kind in ("raw", "silent"):
        if summary[kind]:
            lines += ["", f"## {kind}", ""] + [
                f"- {d['model']} {d['criterion']} x {d['granularity']} ({d['allocation']}): {d['detail']}"
                for d in summary[kind]
            ]
    return "\n".join(lines) + "\n"


def seconds(cells: list[Cell]) -> float:
    """The wall-clock time all ``cells`` took, in seconds (the sum of :attr:`Cell.seconds`)."""
    return math.fsum(c.seconds for c in cells)
