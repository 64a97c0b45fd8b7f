"""Op rules for reductions (``mean``, ``sum``, ``amax``, norms, ...) and for operations along spatial axes
(pooling, upsampling, padding, ``roll``): channels survive along the axes that are kept and are pinned
where such an operation mixes or moves them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor
from torch.utils._pytree import tree_flatten

from prunekit.surgery.graph.labels import NO_ATOM, compress, const_label, varies
from prunekit.surgery.graph.registry import op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__: list[str] = []


@op_rule(
    "aten.mean",
    "aten.sum",
    "aten.amax",
    "aten.amin",
    "aten.var",
    "aten.std",
    "aten.var_mean",
    "aten.std_mean",
    "aten.norm",
    "aten.linalg_vector_norm",
    "aten.logsumexp",
    "aten.any",
    "aten.all",
    "aten.prod",
    "aten.nansum",
    "aten.max",
    "aten.min",
    "aten.count_nonzero",
)
def reduce_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Reductions over ``dim`` (all axes when none is given): the kept axes keep their labels; a reduced
    axis along which channels varied carries none afterwards (nothing is pinned: the sum over channels
    simply loses them)."""
    x = args[0]
    lab = tr.label(x)
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    dims = args[1] if len(args) > 1 else kwargs.get("dim")
    if isinstance(dims, int):
        dims = [dims]
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0) or not isinstance(dims, (list, tuple)):
        dims = list(range(x.dim()))
    dims = sorted({d % max(x.dim(), 1) for d in dims}) if x.dim() else []
    red = lab
    # reduce: along reduced axes keep only a label that is constant there
    for d in dims:
        if varies(red, d):
            red = np.full_like(red.take([0], axis=d), NO_ATOM)
    for o in outs:
        if o.dim() == x.dim():
            tr.set_label(o, compress(red))
        else:
            keep = [d for d in range(x.dim()) if d not in dims]
            r = red.reshape([red.shape[d] for d in keep]) if len(keep) == o.dim() else const_label(o.dim())
            tr.set_label(o, r)


@op_rule(
    "aten.max_pool1d",
    "aten.max_pool2d",
    "aten.max_pool3d",
    "aten.max_pool1d_with_indices",
    "aten.max_pool2d_with_indices",
    "aten.max_pool3d_with_indices",
    "aten.avg_pool1d",
    "aten.avg_pool2d",
    "aten.avg_pool3d",
    "aten._adaptive_avg_pool2d",
    "aten._adaptive_avg_pool3d",
    "aten.adaptive_avg_pool1d",
    "aten.adaptive_max_pool1d",
    "aten.adaptive_max_pool2d",
    "aten.adaptive_max_pool3d",
    "aten.adaptive_avg_pool2d",
    "aten.upsample_nearest1d",
    "aten.upsample_nearest2d",
    "aten.upsample_nearest3d",
    "aten.upsample_bilinear2d",
    "aten.upsample_bicubic2d",
    "aten.upsample_linear1d",
    "aten._upsample_bilinear2d_aa",
    "aten._upsample_nearest_exact2d",
    "aten._upsample_bicubic2d_aa",
    "aten.grid_sampler_2d",
    "aten.pixel_shuffle_spatial_only",
    "aten.reflection_pad2d",
    "aten.replication_pad2d",
    "aten.reflection_pad1d",
    "aten.replication_pad1d",
)
def spatial_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Pooling, resampling and padding of an (N, C, *spatial) tensor: the batch and channel axes keep their
    labels; channels laid out along a spatial axis are pinned."""
    x = args[0]
    lab = tr.label(x)
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    nsp = max(0, x.dim() - 2)
    for d in range(x.dim() - nsp, x.dim()):
        if varies(lab, d):
            tr.pin(lab)
            lab = np.full_like(lab.take([0], axis=d), NO_ATOM)
    for o in outs:
        tr.set_label(o, lab if o.dim() == lab.ndim else const_label(o.dim()))


@op_rule("aten.constant_pad_nd")
def pad_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``F.pad`` with a constant: padding along a channel axis pins its channels (and the output is then a
    constant); padding elsewhere keeps the label."""
    x, pad = args[0], list(args[1])
    lab = tr.label(x)
    for i in range(len(pad) // 2):
        d = x.dim() - 1 - i
        if (pad[2 * i] or pad[2 * i + 1]) and varies(lab, d):
            tr.pin(lab)
            tr.set_label(out, const_label(out.dim()))
            return
    tr.set_label(out, lab)


@op_rule("aten.roll")
def roll_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``roll``: rolling along a channel axis (or over the flattened tensor) pins the channels."""
    x = args[0]
    lab = tr.label(x)
    dims = args[2] if len(args) > 2 else kwargs.get("dims", [])
    dims = [dims] if isinstance(dims, int) else list(dims)
    if (not dims or any(varies(lab, d % x.dim()) for d in dims)) and (lab >= 0).any():
        tr.pin(lab)
    tr.set_label(out, lab)
