"""A layer as one matrix product: the weight as a matrix ``[out, F]`` and the layer's input as rows ``[N, F]``.

Layer-wise solvers (OBS, Hassibi & Stork 1993; SparseGPT, Frantar & Alistarh 2023; Wanda, Sun et al. 2023)
pose ``min ||W X - W' X||^2`` for one layer at a time. For a Linear (or transformers' ``Conv1D``) ``W`` is
the ``[out, in]`` weight and the rows of ``X`` are the input at every leading position (tokens, batch). A
convolution computes the same product on im2col patches: every output position ``o`` is ``W_g p_o``, with
``p_o`` the input window under the kernel, flattened, and ``W_g`` the weight of group ``g`` as a matrix.

Column order of the convolution matrix (position-major): column ``k * (in/groups) + c`` is input channel
``c`` (within its group) at kernel position ``k`` (kernel positions in row-major order). Consecutive columns
are therefore the input channels at one kernel position, so N:M groups of ``m`` consecutive columns are
exactly the groups :class:`prunekit.granularity.patterns.NM` forms on a ``[out, in/groups, *kernel]`` weight (along
dim 1 at each output and kernel position), the layout sparse tensor cores use after im2col. (torch's
``unfold`` and ``weight.reshape(out, -1)`` are channel-major; :func:`to_matrix` and :class:`Patches`
permute both sides the same way, so the product is unchanged.)

Handled: ``nn.Linear``, transformers ``Conv1D``, ``nn.Conv1d`` and ``nn.Conv2d`` with any stride, padding
(numbers, ``"same"``, ``"valid"``), padding mode (zeros, reflect, replicate, circular), dilation and groups
(depthwise included). Transposed and 3-D convolutions raise :class:`~prunekit.errors.UnsupportedModuleError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.errors import UnsupportedModuleError
from prunekit.layout import base_class, weight_layout

__all__ = [
    "CHUNK_ELEMENTS",
    "Patches",
    "check_matrix_layer",
    "from_matrix",
    "is_matrix_layer",
    "layer_rows",
    "to_matrix",
]

#: patches are produced in chunks of about this many elements, so memory stays bounded on large batches
CHUNK_ELEMENTS = 1 << 25


def is_matrix_layer(module: nn.Module) -> bool:
    """Is ``module`` a Linear, transformers ``Conv1D``, ``Conv1d`` or ``Conv2d`` (the layers whose
    layer-wise problem is one matrix product)?"""
    layout = weight_layout(module)
    if layout is not None and layout.kind in ("linear", "hf-conv1d"):
        return True
    return (
        layout is not None
        and layout.kind == "conv"
        and isinstance(module, nn.modules.conv._ConvNd)
        and len(module.kernel_size) in (1, 2)
    )


def check_matrix_layer(module: nn.Module, name: str = "") -> None:
    """Raise :class:`~prunekit.errors.UnsupportedModuleError` unless :func:`is_matrix_layer` holds for ``module``."""
    if is_matrix_layer(module):
        return
    where = f"{name} ({base_class(module).__name__})" if name else base_class(module).__name__
    raise UnsupportedModuleError(
        f"layer-wise solvers prune Linear, transformers Conv1D, Conv1d and Conv2d layers, not {where}; "
        "leave it out with ignore=[...] (or prune it with a method that scores weights, such as 'magnitude')"
    )


def to_matrix(canonical: Tensor) -> Tensor:
    """A canonical weight ``[out, in/groups, *kernel]`` as the matrix ``[out, K * in/groups]`` (position-major
    columns, see the module docstring); a 2-D weight is returned as it is (the same tensor)."""
    if canonical.dim() == 2:
        return canonical
    return canonical.movedim(1, -1).reshape(canonical.shape[0], -1)


def from_matrix(matrix: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The inverse of :func:`to_matrix`: a ``[out, K * in/groups]`` matrix back in the canonical ``shape``
    ``[out, in/groups, *kernel]``; for a 2-D ``shape`` the matrix itself."""
    if len(shape) == 2:
        return matrix
    out, cin, *kernel = shape
    return matrix.reshape(out, *kernel, cin).movedim(-1, 1)


def _explicit_padding(module: nn.modules.conv._ConvNd) -> list[tuple[int, int]]:
    """(before, after) padding of every spatial dim, also for ``padding="same"`` / ``"valid"``."""
    p = module.padding
    if isinstance(p, str):
        if p == "valid":
            return [(0, 0)] * len(module.kernel_size)
        out = []
        for d, k in zip(module.dilation, module.kernel_size):
            total = d * (k - 1)
            out.append((total // 2, total - total // 2))  # as torch pads for "same"
        return out
    return [(int(q), int(q)) for q in p]


@dataclass(frozen=True)
class Patches:
    """im2col of one ``Conv1d`` / ``Conv2d``: its input as rows ``[B * L, groups, K * in/groups]``.

    Row ``b * L + o`` holds the window under output position ``o`` of sample ``b`` (zero or mode padding
    included), split by group; columns in position-major order (see the module docstring).
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]  # F.pad order: (left, right, top, bottom)
    mode: str
    groups: int
    in_channels: int
    spatial_dims: int

    @classmethod
    def of(cls, module: nn.Module) -> Patches | None:
        """The patches of a convolution; None for a Linear / ``Conv1D`` (their rows need no im2col).

        Raises :class:`~prunekit.errors.UnsupportedModuleError` for a layer :func:`is_matrix_layer` refuses.
        """
        check_matrix_layer(module)
        layout = weight_layout(module)
        if layout is None or layout.kind != "conv" or not isinstance(module, nn.modules.conv._ConvNd):
            return None
        pads = _explicit_padding(module)
        k, s, d = list(module.kernel_size), list(module.stride), list(module.dilation)
        nd = len(k)
        if nd == 1:  # a Conv1d runs as a Conv2d of height 1
            k, s, d, pads = [1, *k], [1, *s], [1, *d], [(0, 0), *pads]
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        return cls(
            kernel=(k[0], k[1]),
            stride=(s[0], s[1]),
            dilation=(d[0], d[1]),
            padding=(pads[1][0], pads[1][1], pads[0][0], pads[0][1]),
            mode=mode,
            groups=int(module.groups),
            in_channels=int(module.in_channels),
            spatial_dims=nd,
        )

    @property
    def columns(self) -> int:
        """Columns per group: ``K * in/groups``."""
        return math.prod(self.kernel) * (self.in_channels // self.groups)

    def rows(self, x: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[Tensor]:
        """The patches of input ``x`` ``[B, C, *spatial]`` (or unbatched ``[C, *spatial]``), as chunks of rows
        ``[n, groups, K * in/groups]`` (each chunk a run of whole samples, ~``chunk_elements`` values)."""
        x = x.detach()
        if x.dim() == self.spatial_dims + 1:
            x = x.unsqueeze(0)
        if self.spatial_dims == 1:
            x = x.unsqueeze(2)
        if any(self.padding):
            x = F.pad(x, self.padding, mode=self.mode)
        b, c, h, w = x.shape
        kh, kw = self.kernel
        oh = (h - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        ow = (w - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        per_sample = max(c * kh * kw * max(oh * ow, 1), 1)
        step = max(1, chunk_elements // per_sample)
        g, cg = self.groups, c // self.groups
        for start in range(0, b, step):
            cols = F.unfold(x[start : start + step], self.kernel, dilation=self.dilation, stride=self.stride)
            n, _, positions = cols.shape  # [n, C * K, L], channel-major
            cols = cols.reshape(n, g, cg, kh * kw, positions).permute(0, 4, 1, 3, 2)
            yield cols.reshape(n * positions, g, kh * kw * cg)


def layer_rows(module: nn.Module, x: Tensor) -> Iterator[Tensor]:
    """The rows ``module``'s weight matrix multiplies, as chunks ``[n, groups, F]``: a Linear's input at
    every leading position (``groups`` = 1, ``F`` = in), a convolution's patches (:class:`Patches`)."""
    patches = Patches.of(module)
    if patches is None:
        yield x.detach().reshape(-1, 1, x.shape[-1])
    else:
        yield from patches.rows(x)
