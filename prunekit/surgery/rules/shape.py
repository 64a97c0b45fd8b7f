"""Op rules for operations that move data without computing on it: views and reshapes, permutations,
``expand`` / ``unsqueeze`` / ``squeeze``, ``select`` / ``slice``, ``split`` / ``chunk`` / ``unbind`` /
``glu``, ``cat`` / ``stack``, strided views and channel shuffles; and the in-place view operations
(``transpose_``, ...), labelled through their out-of-place twin.

A view that splits a channel axis, a slice with constant bounds across channels, or an explicit split of a
channel axis into sizes fixed in the code pins the channels involved: removal could not follow them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from prunekit.surgery.graph.labels import compress, const_label, varies
from prunekit.surgery.graph.registry import inplace_view, op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__ = ["view_rule"]

inplace_view(
    "aten.transpose_",
    "aten.t_",
    "aten.squeeze_",
    "aten.unsqueeze_",
    "aten.swapdims_",
    "aten.swapaxes_",
    "aten.detach_",
    "aten.as_strided_",
)


@op_rule("aten.view", "aten._unsafe_view", "aten.reshape", "aten._reshape_alias", aliasing=True)
@op_rule("aten.unsafe_view", "aten.view_copy", "aten._reshape_copy")
def view_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """Views and reshapes: the label is reshaped with the data. A channel axis may be merged with others
    (``flatten``) but not split (``view(n, groups, c // groups)``): then its channels are pinned."""
    x = args[0]
    lab = tr.label(x)
    ishape, oshape = tuple(x.shape), tuple(out.shape)
    if not (lab >= 0).any():
        tr.set_label(out, const_label(out.dim()))
        return
    # a varying input axis must land inside one output axis (merges are fine, splits are not)
    ostr = [int(np.prod(oshape[e + 1 :])) for e in range(len(oshape))]
    for d in range(len(ishape)):
        if not varies(lab, d) or ishape[d] == 1:
            continue
        st = int(np.prod(ishape[d + 1 :]))
        ext = st * ishape[d]
        ok = any(ostr[e] <= st and ext <= ostr[e] * oshape[e] and oshape[e] > 1 for e in range(len(oshape)))
        if not ok:
            tr.pin(lab)
            break
    full = np.ascontiguousarray(np.broadcast_to(lab, ishape)).reshape(oshape)
    tr.set_label(out, compress(full))


@op_rule("aten.permute", aliasing=True)
def permute_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``permute``: the label's axes are permuted alike."""
    lab = tr.label(args[0])
    dims = [d % max(lab.ndim, 1) for d in args[1]]
    tr.set_label(out, np.transpose(lab, dims))


@op_rule("aten.transpose", "aten.t", aliasing=True)
@op_rule("aten.swapdims", "aten.swapaxes")
def transpose_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``transpose`` / ``t`` / ``swapdims``: the label's two axes are swapped."""
    lab = tr.label(args[0])
    if lab.ndim < 2:
        tr.set_label(out, lab)
        return
    d0, d1 = (args[1], args[2]) if len(args) >= 3 else (0, 1)
    tr.set_label(out, np.swapaxes(lab, d0 % lab.ndim, d1 % lab.ndim))
    if out is args[0]:
        tr.set_label(args[0], np.swapaxes(lab, d0 % lab.ndim, d1 % lab.ndim))


@op_rule("aten.expand", aliasing=True)
def expand_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``expand``: the label is left-padded to the new rank (a broadcast axis carries no channel)."""
    lab = tr.label(args[0])
    lab = lab.reshape((1,) * (out.dim() - lab.ndim) + lab.shape)
    tr.set_label(out, lab)


@op_rule("aten.unsqueeze", aliasing=True)
def unsqueeze_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``unsqueeze``: an axis of size 1 is inserted in the label."""
    lab = tr.label(args[0])
    d = args[1] % (lab.ndim + 1)
    tr.set_label(out, np.expand_dims(lab, d))


@op_rule("aten.squeeze", aliasing=True)
def squeeze_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``squeeze``: the label loses the axes of size 1 the tensor loses."""
    x = args[0]
    lab = tr.label(x)
    if len(args) > 1:
        dims = args[1] if isinstance(args[1], (list, tuple)) else [args[1]]
        dims = [d % max(x.dim(), 1) for d in dims if x.shape[d] == 1]
    else:
        dims = [d for d in range(x.dim()) if x.shape[d] == 1]
    tr.set_label(out, np.squeeze(lab, axis=tuple(dims)) if dims else lab)


@op_rule("aten.select", aliasing=True)
def select_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``x.select(dim, i)`` (``x[:, i]``): picking one index of a channel axis pins that axis's channels."""
    x, dim, idx = args[0], args[1], args[2]
    lab = tr.label(x)
    dim %= x.dim()
    if varies(lab, dim):
        tr.pin(lab)
        lab = lab.take([idx % x.shape[dim]], axis=dim)
    tr.set_label(out, np.squeeze(lab, axis=dim))


def _slice_lab(tr: Tracer, x: Tensor, lab: np.ndarray, dim: int, start: int, stop: int, step: int) -> np.ndarray:
    if varies(lab, dim):
        if not (start == 0 and stop >= x.shape[dim] and step == 1):
            tr.pin(lab)
        return np.ascontiguousarray(np.take(lab, range(start, min(stop, x.shape[dim]), step), axis=dim))
    return lab


def _clip(i: int, n: int) -> int:
    if i < 0:
        i += n
    return max(0, min(i, n))


@op_rule("aten.slice", aliasing=True)
def slice_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``x[a:b]`` along an axis: a slice that is not the whole of a channel axis pins its channels (the
    bounds are constants in the code)."""
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    n = x.shape[dim]
    start = args[2] if len(args) > 2 and args[2] is not None else kwargs.get("start", 0) or 0
    stop = args[3] if len(args) > 3 and args[3] is not None else kwargs.get("end", n)
    step = args[4] if len(args) > 4 else kwargs.get("step", 1)
    start, stop = _clip(start, n), _clip(stop if stop is not None else n, n)
    tr.set_label(out, _slice_lab(tr, x, tr.label(x), dim, start, stop, step))


def _couple_pieces(tr: Tracer, pieces: list[np.ndarray]) -> bool:
    """Equal pieces of one channel axis (``chunk(2)`` of a fused gate/up projection): index ``i`` of every
    piece is one unit, so removing it keeps the pieces equal and ``chunk`` splits the smaller tensor the same
    way. False (nothing coupled) when a piece mixes channels with constants where another has channels."""
    first = pieces[0]
    for p in pieces[1:]:
        a, b = np.broadcast_arrays(first, p)
        if ((a >= 0) != (b >= 0)).any():
            return False
    for p in pieces[1:]:
        a, b = np.broadcast_arrays(first, p)
        tr.union_pairs(a.copy(), b.copy())
    return True


@op_rule("aten.split", "aten.split_with_sizes", aliasing=True)
@op_rule("aten.unsafe_split")
def split_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """``split`` / ``chunk``: each piece takes its part of the label. Equal pieces of a channel axis
    (``chunk(k)``) couple index ``i`` of every piece; explicit sizes (``split_with_sizes``) or unequal pieces
    pin the channels."""
    x = args[0]
    lab = tr.label(x)
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    pos = 0
    if varies(lab, dim) and len(out) > 1:
        # ``chunk`` arrives as ``split`` by one size; explicit sizes (``split_with_sizes``) are hard-coded
        sizes = {o.shape[dim] for o in out}
        if isinstance(args[1], (list, tuple)) or len(sizes) > 1 or sum(o.shape[dim] for o in out) != x.shape[dim]:
            tr.pin(lab)
        else:
            n = out[0].shape[dim]
            if not _couple_pieces(tr, [np.take(lab, range(k * n, (k + 1) * n), axis=dim) for k in range(len(out))]):
                tr.pin(lab)
    for o in out:
        n = o.shape[dim]
        tr.set_label(o, np.take(lab, range(pos, pos + n), axis=dim) if varies(lab, dim) else lab)
        pos += n


@op_rule("aten.glu")
def glu_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``glu``: the two halves of one axis multiply index by index (a fused gate): coupled like ``chunk(2)``."""
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", -1)) % x.dim()
    lab = tr.label(x)
    if not varies(lab, dim):
        tr.set_label(out, lab)
        return
    n = x.shape[dim] // 2
    halves = [np.take(lab, range(n), axis=dim), np.take(lab, range(n, 2 * n), axis=dim)]
    if not _couple_pieces(tr, halves):
        tr.pin(lab)
    tr.set_label(out, np.ascontiguousarray(halves[0]))


@op_rule("aten.unbind", aliasing=True)
def unbind_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """``unbind``: one output per index; unbinding a channel axis pins its channels."""
    x = args[0]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x.dim()
    lab = tr.label(x)
    if varies(lab, dim):
        tr.pin(lab)
    for i, o in enumerate(out):
        tr.set_label(o, np.squeeze(lab.take([i] if varies(lab, dim) else [0], axis=dim), axis=dim))


@op_rule("aten.cat")
def cat_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``cat``: the labels are concatenated, so channel ``i`` of the second operand is index
    ``i + a.shape[dim]`` of the output (DenseNet, Inception); nothing is coupled."""
    ts = [t for t in args[0] if isinstance(t, Tensor) and not (t.dim() == 1 and t.numel() == 0)]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    dim %= out.dim()
    labs = [tr.label(t) for t in ts]
    if not any((lab >= 0).any() for lab in labs):
        tr.set_label(out, const_label(out.dim()))
        return
    target = [1] * out.dim()
    for lab in labs:
        for d in range(out.dim()):
            if d != dim and lab.shape[d] > 1:
                target[d] = out.shape[d]
    parts = []
    for t, lab in zip(ts, labs):
        shp = list(target)
        shp[dim] = t.shape[dim]
        parts.append(np.broadcast_to(lab, shp))
    tr.set_label(out, compress(np.concatenate(parts, axis=dim)))


@op_rule("aten.stack")
def stack_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``stack``: the labels are stacked along the new axis."""
    ts = list(args[0])
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    labs = [np.expand_dims(tr.label(t), dim) for t in ts]
    if not any((lab >= 0).any() for lab in labs):
        tr.set_label(out, const_label(out.dim()))
        return
    shp = [max(lab.shape[d] for lab in labs) for d in range(out.dim())]
    shp[dim] = 1
    tr.set_label(out, compress(np.concatenate([np.broadcast_to(lab, shp) for lab in labs], axis=dim)))


@op_rule("aten.as_strided", aliasing=True)
def as_strided_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """A strided view keeps the label only when it is the same logical tensor: same sizes and offset, and
    the same strides on every dimension longer than one (kernels restride fresh outputs this way to keep a
    memory format). Anything else reinterprets memory: the channels it touches are fixed."""
    x = args[0]
    lab = tr.label(x)
    if (lab >= 0).any():
        size = tuple(int(v) for v in args[1])
        stride = tuple(int(v) for v in args[2])
        off = args[3] if len(args) > 3 else kwargs.get("storage_offset")
        before = tr.layouts.get(id(x))
        if (
            before is not None
            and before[0] == size
            and (off is None or int(off) == before[2])
            and all(n == 1 or a == b for n, a, b in zip(size, stride, before[1]))
        ):
            tr.set_label(out, lab)
            return
        tr.pin(lab)
    tr.set_label(out, const_label(out.dim()))
    if out is args[0]:
        tr.set_label(args[0], const_label(out.dim()))


@op_rule("aten.channel_shuffle", "aten.native_channel_shuffle")
def channel_shuffle_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``channel_shuffle`` (ShuffleNet): the channels it shuffles are pinned."""
    lab = tr.label(args[0])
    if varies(lab, 1):
        tr.pin(lab)
    tr.set_label(out, compress(np.ascontiguousarray(lab)) if not varies(lab, 1) else const_label(out.dim()))
