"""Op rules for layers that contract channels with weights: convolution (grouped, depthwise, transposed),
matrix products (``mm`` / ``addmm`` of linear layers, ``bmm`` / ``baddbmm`` of attention), scaled
dot-product attention, and embedding lookups.

A weight's output dimension is a *producer* (its channels may be removed); its input dimension is coupled
with the channels of the activation it consumes. Two activations contracted with each other (``q @ k^T``)
are coupled index by index along the contraction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from torch import Tensor

from prunekit.surgery.graph.coupling import couple_consumer, couple_elementwise
from prunekit.surgery.graph.labels import (
    NO_ATOM,
    ParamView,
    axis_label,
    compress,
    const_label,
    one_atom_per_index,
    per_index,
    varies,
)
from prunekit.surgery.graph.registry import op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__: list[str] = []


def _pv_dim_atoms(tr: Tracer, pv: ParamView, view_dim: int, *, producer: bool = False) -> np.ndarray | None:
    """Atoms of the parameter dimension that a view dimension runs along (None if not a clean mapping)."""
    dm = pv.dim_map()
    if dm is None or view_dim not in dm:
        if pv.tensor.shape[view_dim] == 1:
            return None
        # general strided view (a slice of a packed weight): index arithmetic on the flat index
        flat = pv.flat_index()
        idx = np.unravel_index(flat, pv.param.shape)
        for j in range(pv.param.dim()):
            lab = compress(idx[j])
            if lab.shape[view_dim] > 1 and sum(s > 1 for s in lab.shape) == 1:
                atoms = tr.pdim(pv.key, pv.param, j, producer=producer)
                return atoms[lab.reshape(-1)]
        return None
    return tr.pdim(pv.key, pv.param, dm[view_dim], producer=producer)


@op_rule("aten.convolution")
def conv_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """Convolution: output channels of the weight are producers, input channels consume the activation's
    channels. Depthwise (``groups == in_channels``): input channel ``c`` is output channels ``c * k`` ...
    ``c * k + k - 1``. Grouped: input channel ``c`` is column ``c % per_group`` of its group's filters, and
    filter ``j`` of every group is one unit (groups stay equal). A grouped transposed convolution, or a
    weight computed on the fly, keeps its channels."""
    x, w, b = args[0], args[1], args[2]
    transposed, groups = bool(args[6]), int(args[8])
    lab = tr.label(x)
    pv = tr.view_of(w)
    if pv is None or pv.dim_map() is None:
        # weights computed on the fly (weight normalisation, parametrizations): treat as an opaque layer
        tr.unknown("convolution", (x,), out) if (lab >= 0).any() else None
        tr.set_label(out, const_label(out.dim()))
        return
    cin = x.shape[1]
    nd = out.dim()
    if not transposed:
        o_atoms = tr.pdim(pv.key, pv.param, 0, producer=True)
        i_atoms = tr.pdim(pv.key, pv.param, 1)
        if groups == 1:
            couple_consumer(tr, lab, 1, cin, i_atoms)
        else:
            per_in = cin // groups
            per_out = w.shape[0] // groups
            col = one_atom_per_index(lab, 1, cin)
            if col is not None:  # the usual case, vectorised: channel c feeds its group's filters
                if per_in == 1:  # depthwise: input channel c is output channels c*per_out ... c*per_out+per_out-1
                    tied = o_atoms[: cin * per_out].reshape(cin, per_out)
                    tr.union_pairs(np.repeat(col, per_out), tied.reshape(-1))
                else:  # grouped: input channel c is column c % per_in of its group's filters
                    tied = i_atoms[np.arange(cin) % per_in][:, None]
                    tr.union_pairs(col, tied.reshape(-1))
                tr.pin(tied[col < 0])
            per = per_index(lab, 1, cin) if col is None else []
            for c in range(len(per)):
                atoms = per[c]
                real = atoms[atoms >= 0]
                g, j = divmod(c, per_in)
                tied_atoms = (
                    [int(o_atoms[g * per_out + t]) for t in range(per_out)] if per_in == 1 else [int(i_atoms[j])]
                )
                if real.size == 0 or real.size != atoms.size:
                    tr.pin(tied_atoms)
                for a in real.tolist():
                    for t in tied_atoms:
                        tr.uf.union(t, a)
            if per_in > 1 and groups > 1:  # grouped (not depthwise): uniform removal inside every group
                tr.union_pairs(np.tile(o_atoms[:per_out], groups - 1), o_atoms[per_out : groups * per_out])
        out_lab = axis_label(1, nd, o_atoms)
    else:
        i_atoms = tr.pdim(pv.key, pv.param, 0)
        o_atoms = tr.pdim(pv.key, pv.param, 1, producer=groups == 1)
        if groups == 1:
            couple_consumer(tr, lab, 1, cin, i_atoms)
            out_lab = axis_label(1, nd, o_atoms)
        else:
            tr.pin(lab)
            tr.pin(i_atoms)
            tr.pin(o_atoms)
            out_lab = const_label(nd)
    if b is not None and (bv := tr.view_of(b)) is not None:
        ba = tr.pdim(bv.key, bv.param, 0)
        if out_lab.shape[1] > 1:
            tr.union_pairs(ba, out_lab.reshape(-1))
        else:
            tr.pin(ba)
    tr.set_label(out, out_lab)


@op_rule("aten.mm")
def mm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor, bias: Any = None) -> None:
    """``a @ b``. Activation @ weight (a linear layer, the weight transposed): the weight's columns are
    producers, its rows consume the activation's features; weight @ activation likewise. Two activations:
    coupled index by index along the contraction. ``bias`` (from ``addmm``) is added elementwise."""
    a, b = args[0], args[1]
    if bias is not None and not isinstance(bias, Tensor):
        bias = None
    pa, pb = tr.view_of(a), tr.view_of(b)
    la = None if pa is not None else tr.label(a)
    lb = None if pb is not None else tr.label(b)
    k = a.shape[1]
    out_a = out_b = None
    if pb is not None and la is not None:  # activation @ weight (a linear layer)
        kin = _pv_dim_atoms(tr, pb, 0)
        kout = _pv_dim_atoms(tr, pb, 1, producer=True)
        if kin is not None:
            couple_consumer(tr, la, 1, k, kin)
        elif (la >= 0).any():
            tr.pin(la)
        if kout is not None:
            out_b = kout.reshape(1, -1)
        if varies(la, 0) and not varies(la, 1):
            out_a = la[:, :1]
    elif pa is not None and lb is not None:  # weight @ activation
        kin = _pv_dim_atoms(tr, pa, 1)
        kout = _pv_dim_atoms(tr, pa, 0, producer=True)
        if kin is not None:
            couple_consumer(tr, lb, 0, k, kin)
        elif (lb >= 0).any():
            tr.pin(lb)
        if kout is not None:
            out_a = kout.reshape(-1, 1)
        if varies(lb, 1) and not varies(lb, 0):
            out_b = lb[:1, :]
    else:
        la = tr.label(a) if la is None else la
        lb = tr.label(b) if lb is None else lb
        _contract_acts(tr, la[None], lb[None], 2, 1)
        if not varies(la, 1):
            out_a = la[:, :1]
        if not varies(lb, 0):
            out_b = lb[:1, :]
    res = _combine(tr, out_a, out_b, (out.shape[0], out.shape[1]))
    if bias is not None:
        bl = tr.label(bias)
        bl = bl.reshape((1,) * (2 - bl.ndim) + bl.shape)
        if (bl >= 0).any():
            e1 = (res, [False, False], tuple(out.shape))
            e2 = (bl, [bias.dim() < 2 or bias.shape[0] == 1, False], tuple(out.shape))
            couple_elementwise(tr, e1, e2, tuple(out.shape))
            if not (res >= 0).any():
                tr.pin(bl)
    tr.set_label(out, res)


def _combine(tr: Tracer, pa: np.ndarray | None, pb: np.ndarray | None, shape: tuple) -> np.ndarray:
    has_a = pa is not None and (pa >= 0).any()
    has_b = pb is not None and (pb >= 0).any()
    if has_a and has_b:
        tr.pin(pa)  # type: ignore[arg-type]
        tr.pin(pb)  # type: ignore[arg-type]
        return const_label(len(shape))
    if has_a:
        return compress(np.ascontiguousarray(pa))
    if has_b:
        return compress(np.ascontiguousarray(pb))
    return const_label(len(shape))


def _contract_acts(tr: Tracer, la: np.ndarray, lb: np.ndarray, ka: int, kb: int) -> None:
    """Two activations contracted (``q @ k^T``): pair their atoms index by index along the contraction."""
    va, vb = varies(la, ka), varies(lb, kb)
    if not va and not vb:
        return
    if va != vb:
        tr.pin(la if va else lb)
        return
    # bring to (batch, k) pairs
    a = np.moveaxis(la, ka, -1)
    b = np.moveaxis(lb, kb, -1)
    a = a.reshape(a.shape[0], -1, a.shape[-1]) if a.ndim == 3 else a.reshape(1, -1, a.shape[-1])
    b = b.reshape(b.shape[0], -1, b.shape[-1]) if b.ndim == 3 else b.reshape(1, -1, b.shape[-1])
    if a.shape[1] != 1 or b.shape[1] != 1:
        tr.pin(la)
        tr.pin(lb)
        return
    fa, fb = np.broadcast_arrays(a[:, 0, :], b[:, 0, :])
    e1 = (fa, [False, False], fa.shape)
    e2 = (fb, [False, False], fb.shape)
    couple_elementwise(tr, e1, e2, fa.shape)


@op_rule("aten.addmm")
def addmm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``addmm(bias, a, b)`` (a linear layer with a bias): :func:`mm_rule` with the bias."""
    mm_rule(tr, func, (args[1], args[2]), kwargs, out, bias=args[0])


@op_rule("aten.bmm")
def bmm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """Batched ``a @ b`` of two activations (attention scores, attention-weighted values): coupled along
    the contraction; channels along the batch axis of both (heads) are coupled there."""
    a, b = args[0], args[1]
    la, lb = tr.label(a), tr.label(b)
    _contract_acts(tr, la, lb, 2, 1)
    out_a = la[:, :, :1] if not varies(la, 2) else None
    out_b = lb[:, :1, :] if not varies(lb, 1) else None
    if out_a is not None and out_b is not None and (out_a >= 0).any() and (out_b >= 0).any():
        # both carry channels only along the batch axis (heads): couple them there
        fa, fb = np.broadcast_arrays(out_a[:, 0, 0], out_b[:, 0, 0])
        if not varies(out_a, 1) and not varies(out_b, 2):
            tr.union_pairs(fa.copy(), fb.copy())
            tr.set_label(out, compress(np.ascontiguousarray(out_a)))
            return
    tr.set_label(out, _combine(tr, out_a, out_b, tuple(out.shape)))


@op_rule("aten.baddbmm")
def baddbmm_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``baddbmm(s, a, b)``: :func:`bmm_rule`, then ``s`` added elementwise."""
    bmm_rule(tr, func, (args[1], args[2]), kwargs, out)
    lab = tr.label(out)
    sl = tr.label(args[0])
    if (sl >= 0).any():
        sl = sl.reshape((1,) * (3 - sl.ndim) + sl.shape)
        couple_elementwise(tr, (lab, [False] * 3, out.shape), (sl, [False] * 3, out.shape), tuple(out.shape))


@op_rule(
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_cudnn_attention",
)
def sdpa_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Scaled dot-product attention: ``q`` and ``k`` are coupled index by index over the head dimension
    (pinned under grouped-query broadcasting); the output has ``v``'s label (channels along the sequence
    axis of ``v`` are pinned)."""
    q, k, v = args[0], args[1], args[2]
    lq, lk, lv = tr.label(q), tr.label(k), tr.label(v)
    nd = q.dim()
    # q.k over the head dimension: pair them index by index
    if varies(lq, nd - 1) or varies(lk, nd - 1):
        a = lq.reshape(-1, *lq.shape[-2:]) if lq.ndim >= 3 else lq[None]
        b = lk.reshape(-1, *lk.shape[-2:]) if lk.ndim >= 3 else lk[None]
        if lq.shape[:-2] != lk.shape[:-2]:  # grouped-query attention broadcasts k over query heads
            tr.pin(lq)
            tr.pin(lk)
        else:
            _contract_acts(tr, a, np.swapaxes(b, 1, 2), 2, 1)
    o = out[0] if isinstance(out, (tuple, list)) else out
    lab = lv
    if varies(lv, nd - 2):
        tr.pin(lv)
        lab = np.full_like(lv.take([0], axis=nd - 2), NO_ATOM)
    if (
        lv.shape[:-2] != lq.shape[:-2]
        and (lv >= 0).any()
        and any(lv.shape[d] != q.shape[d] and lv.shape[d] > 1 for d in range(nd - 2))
    ):
        tr.pin(lv)
        lab = const_label(nd)
    tr.set_label(o, lab)
    if isinstance(out, (tuple, list)):
        for extra in out[1:]:
            if isinstance(extra, Tensor):
                tr.set_label(extra, const_label(extra.dim()))


@op_rule("aten.embedding")
def embedding_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``embedding(weight, ids)``: the output's last axis is the weight's columns (producers)."""
    w = args[0]
    pv = tr.view_of(w)
    if pv is None or pv.dim_map() is None:
        tr.set_label(out, const_label(out.dim()))
        return
    atoms = tr.pdim(pv.key, pv.param, 1, producer=True)
    tr.set_label(out, axis_label(out.dim() - 1, out.dim(), atoms))
