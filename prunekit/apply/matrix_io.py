"""A layer's weight as an [out, in] matrix, the form the layer-wise solvers work on (im2col columns for a
convolution, canonical layouts for transposed weights such as ``Conv1D``), read and written back."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.apply.masks import apply_mask_, assign_weight_, get_mask
from prunekit.im2col import check_matrix_layer, from_matrix, to_matrix
from prunekit.layout import layer_weight, weight_layout

__all__ = ["check_inputs", "store_matrix_", "stored_mask", "weight_matrix"]


def weight_matrix(module: nn.Module) -> Tensor:
    """The weight of ``module`` as the model computes it, as an [out, in] matrix (``Conv1D`` stores
    [in, out]; a ``Conv1d`` / ``Conv2d`` [out, in/groups, *kernel] becomes [out, K * in/groups] with
    position-major columns, see :mod:`prunekit.im2col`). For a plain Linear / ``Conv1D`` weight it is a view
    and writes go through (for a convolution, in general a copy); use :func:`store_matrix_` to write the
    weight of any layer, parametrized or not. Raises :class:`~prunekit.errors.UnsupportedModuleError` for
    other layers (transposed and 3-D convolutions)."""
    check_matrix_layer(module)
    layout = weight_layout(module)
    assert layout is not None
    if parametrize.is_parametrized(module, "weight"):
        with torch.no_grad():
            return to_matrix(layout.to_canonical(layer_weight(module).detach()))
    return to_matrix(layout.to_canonical(layer_weight(module).data))


def store_matrix_(module: nn.Module, matrix: Tensor, keep: Tensor) -> Tensor:
    """Write the pruned [out, in] ``matrix`` (zero where ``keep`` is False) into ``module``'s weight
    (both in the matrix form of :func:`weight_matrix`).

    A layer that is already masked keeps its mask, narrowed by ``keep`` (masks only shrink); the weights it
    still keeps take the new values through any parametrization (a mask, ``weight_norm``). Returns the
    keep-mask in force afterwards, as [out, in].
    """
    layout = weight_layout(module)
    assert layout is not None
    if not parametrize.is_parametrized(module, "weight"):
        w = layout.to_canonical(layer_weight(module).data)
        if matrix.data_ptr() == w.data_ptr() and matrix.shape == w.shape and matrix.stride() == w.stride():
            w.masked_fill_(~keep.to(w.device), 0)  # the matrix is the weight itself: zero in place
        else:
            w.copy_(from_matrix(matrix * keep.to(matrix.dtype), w.shape).to(w.dtype))
        return keep
    shape = layout.canonical_shape(tuple(layer_weight(module).shape))
    existing = get_mask(module, "weight")
    if existing is not None:
        keep = keep & to_matrix(layout.to_canonical(existing)).to(keep.device)
    value = layout.from_canonical(from_matrix(matrix * keep.to(matrix.dtype), shape)).to(layer_weight(module).dtype)
    assign_weight_(module, value.contiguous(), "weight")
    if existing is not None:
        apply_mask_(module, layout.from_canonical(from_matrix(keep, shape)).contiguous(), "weight")
    return keep


def stored_mask(module: nn.Module, keep: Tensor) -> Tensor:
    """A keep-mask in the matrix form of :func:`weight_matrix` as a mask shaped like ``module``'s stored
    weight (for :func:`prunekit.apply.masks.apply_mask_`)."""
    layout = weight_layout(module)
    assert layout is not None
    shape = layout.canonical_shape(tuple(layer_weight(module).shape))
    return layout.from_canonical(from_matrix(keep, shape)).contiguous()


def check_inputs(module: nn.Module, x: Tensor, columns: int, *, im2col: bool, name: str = "") -> None:
    """Refuse inputs ``x`` that ``module`` cannot have read: for a Linear / ``Conv1D`` a last dimension other
    than its ``columns`` input features, for a convolution seen through im2col (``im2col``) a channel count
    other than its ``in_channels``. Raises :class:`~prunekit.errors.DataError` naming the layer (``name``)."""
    from prunekit.errors import DataError

    if not im2col:
        got, want, what = (x.shape[-1] if x.dim() else None), columns, "features in the last dimension"
    else:
        spatial = len(getattr(module, "kernel_size", ()))
        want, what = int(getattr(module, "in_channels", 0)), "channels"
        got = x.shape[-(spatial + 1)] if x.dim() > spatial else None
    if got != want:
        raise DataError(
            f"{name or 'this layer'} reads inputs with {want} {what}; got a tensor of shape {tuple(x.shape)}: feed "
            "it the inputs of this layer"
        )
