"""Op rules for elementwise operations: pointwise arithmetic and activations (operands broadcast against
each other couple the channels they put at the same place), pass-through operations (a copy, dropout,
softmax: the output has the input's channels), creation of constants, and writes (``fill_``, ``copy_``).

The rule of pointwise operations is also the fallback of every operation that carries the dispatcher's
``pointwise`` tag (or whose out-of-place twin does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from torch.utils._pytree import tree_flatten

from prunekit.surgery.graph.coupling import couple_elementwise
from prunekit.surgery.graph.labels import atoms_of, compress, const_label, varies
from prunekit.surgery.graph.registry import fallback_rule, op_name, op_rule

if TYPE_CHECKING:
    from prunekit.surgery.graph.tracer import Tracer

# the rules register themselves with the tracer by decorator on import; only these names are imported elsewhere
__all__ = ["pointwise_rule"]

# pointwise operations the dispatcher does not tag as such (``_prelu_kernel`` has its own rule in norm.py)
_POINTWISE_EXTRA = (
    "where",
    "masked_fill",
    "clamp",
    "clamp_min",
    "clamp_max",
    "lerp",
    "addcmul",
    "addcdiv",
    "hardtanh",
    "threshold",
    "leaky_relu",
    "elu",
    "celu",
    "selu",
    "gelu",
    "silu",
    "mish",
    "hardswish",
    "hardsigmoid",
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "softplus",
    "logit",
    "nan_to_num",
    "fill",
    "zero",
    "native_dropout",
    "rrelu_with_noise",
    "glu_jvp",
)


def is_pointwise(func: Any) -> bool:
    """Whether an aten operation is elementwise: tagged ``pointwise``, or an in-place variant (``relu_``)
    of an operation that is (tagged, or one of the untagged ones this module knows)."""
    try:
        if torch.Tag.pointwise in func.tags:
            return True
    except AttributeError:
        return False
    name = op_name(func)
    if name.endswith("_"):  # in-place variants are not tagged; their out-of-place twin is
        base = name[:-1]
        if base in _POINTWISE_EXTRA:
            return True
        packet = getattr(torch.ops.aten, base, None)
        if packet is not None:
            try:
                return torch.Tag.pointwise in packet.default.tags
            except AttributeError:
                for ov in packet.overloads():
                    return torch.Tag.pointwise in getattr(packet, ov).tags
    return False


@fallback_rule(is_pointwise)
@op_rule(*(f"aten.{n}" for n in _POINTWISE_EXTRA))
def pointwise_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Elementwise operations (``add``, ``mul``, ``where``, activations, ...): every pair of operands that
    both carry channels couples the atoms they put at the same output position, except where one is
    broadcast over the other's channels (a scalar, a per-sample gate). A constant operand of fixed size
    along a channel axis pins those channels. The output takes the label of the first operand that is not
    broadcast (an in-place variant relabels its first operand too)."""
    outs = [o for o in tree_flatten(out)[0] if isinstance(o, Tensor)]
    if not outs:
        return
    o = outs[0]
    shape = tuple(o.shape)
    ops = [a for a in list(args) + list(kwargs.values()) if isinstance(a, Tensor)]
    ops += [a for lst in args if isinstance(lst, (list, tuple)) for a in lst if isinstance(a, Tensor)]
    entries = []
    for a in ops:
        lab = tr.label(a)
        if a.dim() > len(shape):
            continue
        lab = lab.reshape((1,) * (len(shape) - lab.ndim) + lab.shape)
        ashape = (1,) * (len(shape) - a.dim()) + tuple(a.shape)
        bcast = [ashape[d] == 1 and shape[d] > 1 for d in range(len(shape))]
        entries.append((lab, bcast, ashape))
    labeled = [e for e in entries if (e[0] >= 0).any()]
    if not labeled:
        for oo in outs:
            tr.set_label(oo, const_label(oo.dim()))
        return
    # constants of fixed size along a varying channel axis: those channels cannot change
    for lab, _bc, _as in labeled:
        for lab2, _bc2, ashape2 in entries:
            if (lab2 >= 0).any():
                continue
            for d in range(len(shape)):
                if varies(lab, d) and ashape2[d] > 1:
                    tr.pin(lab)
    # couple pairs
    for i in range(len(labeled)):
        for j in range(i + 1, len(labeled)):
            couple_elementwise(tr, labeled[i], labeled[j], shape)
    # output label: the first operand that is not broadcast, else any
    best = None
    for lab, bcast, _as in labeled:
        if not any(b for d, b in enumerate(bcast) if _varies_any(labeled, d)):
            best = lab
            break
    if best is None:
        best = max(labeled, key=lambda e: atoms_of(e[0]).size)[0]
    res = best
    for lab, _bc, _as in labeled:
        if lab is best:
            continue
        full_best = np.broadcast_to(res, np.broadcast_shapes(res.shape, lab.shape))
        if (full_best < 0).any():
            res = np.where(full_best >= 0, full_best, np.broadcast_to(lab, full_best.shape))
    res = compress(np.ascontiguousarray(res))
    for oo in outs:
        if tuple(oo.shape) == shape:
            tr.set_label(oo, res)
        else:
            tr.set_label(oo, const_label(oo.dim()))
    if isinstance(args[0], Tensor) and op_name(func).endswith("_"):
        tr.set_label(args[0], res)


def _varies_any(labeled: list, d: int) -> bool:
    return any(varies(e[0], d) for e in labeled)


@op_rule("aten.detach", "aten.alias", aliasing=True)
@op_rule(
    "aten.clone",
    "aten.contiguous",
    "aten._to_copy",
    "aten.lift_fresh",
    "aten.lift_fresh_copy",
    "aten.to",
    "aten._conj",
    "aten.resolve_conj",
    "aten.resolve_neg",
    "aten.dropout",
    "aten.feature_dropout",
    "aten.alpha_dropout",
    "aten._softmax",
    "aten._log_softmax",
    "aten.softmax",
    "aten.log_softmax",
    "aten._safe_softmax",
    "aten.copy",
    "aten.type_as",
)
def pass_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Copies, casts, dropout, softmax: the (first) output has the input's label."""
    tr.set_label(out if isinstance(out, Tensor) else out[0], tr.label(args[0]))


@op_rule(
    "aten.arange",
    "aten.zeros",
    "aten.ones",
    "aten.full",
    "aten.empty",
    "aten.empty_strided",
    "aten.scalar_tensor",
    "aten.new_zeros",
    "aten.new_ones",
    "aten.new_empty",
    "aten.new_full",
    "aten.new_empty_strided",
    "aten.zeros_like",
    "aten.ones_like",
    "aten.full_like",
    "aten.empty_like",
    "aten.rand",
    "aten.randn",
    "aten.rand_like",
    "aten.randn_like",
    "aten.randint",
    "aten.tensor",
    "aten.linspace",
    "aten.eye",
    "aten.bernoulli",
    "aten.tril_indices",
    "aten.triu_indices",
    "aten._local_scalar_dense",
    "aten.sym_size",
    "aten.sym_stride",
    "aten.sym_numel",
    "aten.is_nonzero",
    "aten.equal",
    "aten._assert_async",
    "aten._assert_tensor_metadata",
    "aten._functional_assert_async",
    "aten.item",
    "aten.nonzero",
    "aten.argmax",
    "aten.argmin",
    "aten.histc",
    "aten.bincount",
    "aten.randperm",
    "aten.normal",
    "aten.uniform",
    "aten.set_",
    "aten.record_stream",
    "aten._has_compatible_shallow_copy_type",
    "aten.is_same_size",
    "aten.empty_permuted",
    "aten._unique2",
    "aten.unique_consecutive",
    "aten.searchsorted",
    "aten.bucketize",
    "aten.one_hot",
)
def create_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """New tensors and values that carry no channel (constants, indices, random numbers, checks): every
    tensor output is a constant."""
    for o in tree_flatten(out)[0]:
        if isinstance(o, Tensor):
            tr.set_label(o, const_label(o.dim()))


@op_rule("aten.fill_", "aten.zero_")
def fill_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``fill_`` / ``zero_``: the tensor becomes a constant."""
    tr.set_label(args[0], const_label(args[0].dim()))
    tr.set_label(out, const_label(out.dim()))


@op_rule("aten.copy_")
def copy_rule(tr: Tracer, func: Any, args: tuple, kwargs: dict, out: Tensor) -> None:
    """``dst.copy_(src)``: ``dst`` takes ``src``'s label; channels ``dst`` held before are pinned."""
    dst, src = args[0], args[1]
    lab = tr.label(src)
    lab = lab.reshape((1,) * (dst.dim() - lab.ndim) + lab.shape) if lab.ndim <= dst.dim() else const_label(dst.dim())
    old = tr.label(dst)
    if (old >= 0).any():
        tr.pin(old)
    tr.set_label(dst, lab)
    tr.set_label(out, lab)
