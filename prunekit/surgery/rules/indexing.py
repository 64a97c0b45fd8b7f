"""Op rules for indexing: advanced indexing (``x[idx]``), ``index_select``, ``index_put``, and operations
that reorder along an axis (``gather``, ``sort``, ``topk``, ``flip``, ``cumsum``). Indexing along an axis
without channels is free; along a channel axis the indices are constants of the code, so the channels
involved are pinned."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor
from torch.utils._pytree import tree_flatten

from prunekit.surgery.graph.labels import compress, const_label, varies
from prunekit.surgery.graph.registry import op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__: list[str] = []


@op_rule("aten.index", "aten._unsafe_index")
def index_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``x[i0, i1, ...]`` with index tensors: the label is indexed like the data; an index tensor on a
    channel axis pins its channels."""
    x, idx = args[0], list(args[1])
    lab = tr.label(x)
    if not (lab >= 0).any():
        tr.set_label(out, const_label(out.dim()))
        return
    for d, ix in enumerate(idx):
        if ix is not None and varies(lab, d):
            tr.pin(lab)
    full_dims = [x.shape[d] if (d < len(idx) and idx[d] is not None) else lab.shape[d] for d in range(x.dim())]
    full = np.broadcast_to(lab, full_dims)
    np_idx = tuple(slice(None) if (d >= len(idx) or idx[d] is None) else idx[d].cpu().numpy() for d in range(x.dim()))
    try:
        res = full[np_idx]
    except Exception:  # noqa: BLE001
        tr.pin(lab)
        tr.set_label(out, const_label(out.dim()))
        return
    if res.ndim != out.dim():
        tr.pin(lab)
        tr.set_label(out, const_label(out.dim()))
        return
    tr.set_label(out, compress(np.ascontiguousarray(res)))


@op_rule("aten.index_select")
def index_select_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``index_select(dim, idx)``: on a channel axis the channels are pinned and the output holds the
    selected ones in the order given; on any other axis the label passes through."""
    x, dim, ix = args[0], args[1] % args[0].dim(), args[2]
    lab = tr.label(x)
    if varies(lab, dim):
        tr.pin(lab)
        lab = np.take(lab, ix.cpu().numpy(), axis=dim)
    tr.set_label(out, lab)


@op_rule(
    "aten.flip",
    "aten.cumsum",
    "aten.cumprod",
    "aten.sort",
    "aten.topk",
    "aten.gather",
)
def gather_like_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """cumsum, sort, topk, gather, flip: fine along axes without channels; pin otherwise."""
    x = args[0]
    lab = tr.label(x)
    dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", -1)
    if isinstance(dim, (list, tuple)):
        dims = [d % x.dim() for d in dim]
    else:
        dims = [dim % max(x.dim(), 1)]
    if any(varies(lab, d) for d in dims):
        tr.pin(lab)
    for o in tree_flatten(out)[0]:
        if isinstance(o, Tensor):
            tr.set_label(o, lab if tuple(o.shape) == tuple(x.shape) else const_label(o.dim()))


@op_rule("aten.index_put_", "aten.index_put")
def index_put_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``x[idx] = v``: the indexed tensor keeps its label (pinned when indexed along a channel axis); the
    channels of the written values are pinned."""
    x, idx, vals = args[0], list(args[1]), args[2]
    lab = tr.label(x)
    lv = tr.label(vals)
    for d, ix in enumerate(idx):
        if ix is not None and varies(lab, d):
            tr.pin(lab)
    if (lv >= 0).any():
        tr.pin(lv)
    tr.set_label(out, lab)
    if out is not x:
        return
    tr.set_label(x, lab)
