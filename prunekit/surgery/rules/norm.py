"""Op rules for normalisation layers (batch, layer and group norm) and PReLU: a per-channel scale, shift
or running statistic is one more consumer of the channels it is applied to."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from prunekit.surgery.graph.coupling import couple_consumer
from prunekit.surgery.graph.labels import const_label, varies
from prunekit.surgery.graph.registry import op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__: list[str] = []


def _norm_channel_rule(tr: Tracer, x: Tensor, params: list[Any], ax: int) -> np.ndarray:
    lab = tr.label(x)
    c = x.shape[ax]
    for p in params:
        if not isinstance(p, Tensor):
            continue
        pv = tr.view_of(p)
        if pv is None or p.dim() != 1 or p.shape[0] != c:
            if (lab >= 0).any():
                tr.pin(lab)
            continue
        couple_consumer(tr, lab, ax, c, tr.pdim(pv.key, pv.param, 0))
    return lab


def _label_norm_outputs(tr: Tracer, out: Any, lab: Any) -> None:
    """A norm's first output carries the input's channel labels; its extra outputs (saved statistics) none."""
    outs = out if isinstance(out, (tuple, list)) else (out,)
    tr.set_label(outs[0], lab)
    for o in outs[1:]:
        if isinstance(o, Tensor):
            tr.set_label(o, const_label(o.dim()))


@op_rule("aten.native_batch_norm", "aten._native_batch_norm_legit", "aten._native_batch_norm_legit_no_training")
def batch_norm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Batch norm: weight, bias, running mean and variance are coupled with the input's channels (axis 1)."""
    x = args[0]
    lab = _norm_channel_rule(tr, x, list(args[1:5]), 1)
    _label_norm_outputs(tr, out, lab)


@op_rule("aten.native_layer_norm")
def layer_norm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Layer norm over the last axis: its weight and bias are coupled with the channels there. Over several
    axes, channels varying along them are pinned (with the weight)."""
    x, shape, w, b = args[0], list(args[1]), args[2], args[3]
    lab = tr.label(x)
    if len(shape) == 1 and w is not None:
        lab = _norm_channel_rule(tr, x, [w, b], x.dim() - 1)
    elif (lab >= 0).any():
        for d in range(x.dim() - len(shape), x.dim()):
            if varies(lab, d):
                tr.pin(lab)
                if w is not None and (pv := tr.view_of(w)) is not None:
                    for j in range(w.dim()):
                        tr.pin(tr.pdim(pv.key, pv.param, j))
                break
    _label_norm_outputs(tr, out, lab)


@op_rule("aten.native_group_norm")
def group_norm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Group norm: weight and bias are coupled with the channels (axis 1), and channel ``j`` of every group
    is one unit, so the groups stay equal in size."""
    x, w, b, groups = args[0], args[1], args[2], int(args[6])
    lab = tr.label(x)
    c = x.shape[1]
    if w is None:
        if varies(lab, 1):
            tr.pin(lab)
    else:
        lab = _norm_channel_rule(tr, x, [w, b], 1)
        per = c // groups
        if per > 1 and (pv := tr.view_of(w)) is not None:
            atoms = tr.pdim(pv.key, pv.param, 0)
            for g in range(1, groups):
                for j in range(per):
                    tr.uf.union(int(atoms[j]), int(atoms[g * per + j]))
    _label_norm_outputs(tr, out, lab)


@op_rule("aten._prelu_kernel")
def prelu_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """PReLU: a per-channel slope is coupled with the channels (axis 1); a single slope couples nothing."""
    x, w = args[0], args[1]
    if w.numel() == 1 or x.dim() < 2:
        tr.set_label(out, tr.label(x))
        return
    tr.set_label(out, _norm_channel_rule(tr, x, [w.reshape(-1) if w.dim() != 1 else w], 1))
