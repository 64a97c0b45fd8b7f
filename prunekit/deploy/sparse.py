"""Sparse execution inside PyTorch: Linear and 1x1-convolution layers whose weights are sparse enough run on
CSR or BSR kernels (``torch.sparse.mm``), chosen per layer by a timing probe at the user's batch, and only
where the probe shows the layer gets faster. :func:`densify_` puts the original layers back, bit-exact.
On a CUDA GPU, :func:`semi_structured_` runs 2:4-pruned Linear layers on NVIDIA's semi-structured sparse
kernels (``torch.sparse.to_sparse_semi_structured``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.calls import call_model
from prunekit.deploy.errors import DeviceError
from prunekit.errors import ConfigError, DataError, ModelError, PatternError

__all__ = [
    "SPARSE_STORAGE_LIMIT",
    "LayerDecision",
    "SemiStructuredLinear",
    "SparseConv1x1",
    "SparseExecution",
    "SparseLinear",
    "SparsifyReport",
    "densify_",
    "semi_structured_",
    "sparsify_",
]


#: a sparse form of a layer is tried only when it stores the weight's non-zeros (values and their column
#: indices; BSR: whole blocks, one column index each) in at most this share of the dense weight's bytes. At the
#: small batches sparse kernels are for, a layer reads its whole weight on every call and a sparse kernel wins
#: only by reading less: CSR in fp32 with int32 indices takes 8 bytes per non-zero against 4 per dense weight,
#: so it reads as much as the dense layer at 50% zeros and half as much at 75%. A gain measured where the
#: sparse form reads about as much is a quirk of the dense kernel at that shape (CSR was timed 1.6-1.8x faster
#: than dense at 50% zeros, batch 8, 4096x4096, one thread), not a gain from the zeros, and is not relied on.
SPARSE_STORAGE_LIMIT = 0.5


class SparseExecution(nn.Module):
    """Base of the swapped-in layers: holds the original module (not registered, so parameters and the
    state dict read as before through :meth:`_save_to_state_dict`), which :func:`densify_` puts back."""

    format: str = ""
    original: nn.Module  # kept in __dict__ (see __init__)

    def __init__(self, original: nn.Module):
        super().__init__()
        self.__dict__["original"] = original  # not a child: the state dict is the original's

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for key, value in self.original.state_dict(keep_vars=keep_vars).items():
            destination[prefix + key] = value

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        raise ModelError(
            "this model has layers swapped to sparse kernels by prunekit.deploy.sparsify_; call "
            "prunekit.deploy.densify_(model) before loading a state dict"
        )


def _effective_weight(module: nn.Linear | nn.Conv2d) -> Tensor:
    with torch.no_grad():
        return module.weight.detach().clone()


class SparseLinear(SparseExecution):
    """``y = x W^T + b`` with ``W`` stored as CSR or BSR, computed as ``torch.sparse.mm(W, x^T)^T``.

    Input ``(..., in_features)``, output ``(..., out_features)``; works under ``torch.inference_mode()``
    (``F.linear`` with a CSR weight does not)."""

    sparse_weight: Tensor  # buffers, registered in __init__
    bias_: Tensor | None

    def __init__(self, original: nn.Linear, fmt: str):
        super().__init__(original)
        self.format = fmt
        self.in_features, self.out_features = original.in_features, original.out_features
        self.register_buffer("sparse_weight", _to_format(_effective_weight(original), fmt), persistent=False)
        bias = None if original.bias is None else original.bias.detach().clone()
        self.register_buffer("bias_", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(..., in_features)`` -> ``(..., out_features)`` through the sparse weight."""
        lead = x.shape[:-1]
        y = torch.sparse.mm(self.sparse_weight, x.reshape(-1, self.in_features).t()).t()
        if self.bias_ is not None:
            y = y + self.bias_
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        """``in -> out, <format>`` for the module's repr."""
        return f"{self.in_features} -> {self.out_features}, {self.format}"


class SparseConv1x1(SparseExecution):
    """A 1x1 convolution (stride 1, no padding, one group) as a sparse matrix product over the pixels:
    input ``(N, C, H, W)`` -> ``(N, O, H, W)``."""

    sparse_weight: Tensor  # buffers, registered in __init__
    bias_: Tensor | None

    def __init__(self, original: nn.Conv2d, fmt: str):
        super().__init__(original)
        self.format = fmt
        w = _effective_weight(original)
        self.out_channels, self.in_channels = w.shape[0], w.shape[1]
        self.register_buffer("sparse_weight", _to_format(w.reshape(w.shape[0], w.shape[1]), fmt), persistent=False)
        bias = None if original.bias is None else original.bias.detach().clone()
        self.register_buffer("bias_", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(N, C, H, W)`` -> ``(N, O, H, W)`` through the sparse weight."""
        n, c, h, w = x.shape
        cols = x.permute(1, 0, 2, 3).reshape(c, n * h * w)
        y = torch.sparse.mm(self.sparse_weight, cols).reshape(self.out_channels, n, h, w).permute(1, 0, 2, 3)
        if self.bias_ is not None:
            y = y + self.bias_.view(1, -1, 1, 1)
        return y

    def extra_repr(self) -> str:
        """``in -> out, 1x1, <format>`` for the module's repr."""
        return f"{self.in_channels} -> {self.out_channels}, 1x1, {self.format}"


def _to_format(w: Tensor, fmt: str) -> Tensor:
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
        # int32 indices: the CPU kernels take MKL's path with them (measured 5x faster than int64 at batch 8)
        small = w.numel() < 2**31
        if fmt == "csr":
            c = w.to_sparse_csr()
            if small:
                c = torch.sparse_csr_tensor(
                    c.crow_indices().to(torch.int32),
                    c.col_indices().to(torch.int32),
                    c.values(),
                    size=w.shape,
                    check_invariants=True,
                )
            return c
        if fmt.startswith("bsr"):
            b = int(fmt[3:])
            c = w.to_sparse_bsr((b, b))
            if small:
                c = torch.sparse_bsr_tensor(
                    c.crow_indices().to(torch.int32),
                    c.col_indices().to(torch.int32),
                    c.values(),
                    size=w.shape,
                    check_invariants=True,
                )
            return c
    raise ConfigError(f"unknown sparse format {fmt!r}; valid: csr, bsr<block> (e.g. bsr16)")


def _is_conv1x1(m: nn.Module) -> TypeGuard[nn.Conv2d]:
    return (
        isinstance(m, nn.Conv2d)
        and m.kernel_size == (1, 1)
        and m.stride == (1, 1)
        and m.groups == 1
        and m.dilation == (1, 1)
        and m.padding in ((0, 0), "valid")
        and m.padding_mode == "zeros"
    )


@dataclass
class LayerDecision:
    """What :func:`sparsify_` decided for one layer. ``format`` is the kernel now running it (``"csr"``,
    ``"bsr16"``, ...) or None when it stays dense; ``reason`` says why; times are the probe's medians in
    milliseconds for this layer alone on its input at the user's batch, ``speedup`` dense / sparse."""

    name: str
    kind: str
    shape: tuple[int, ...]
    sparsity: float
    format: str | None
    reason: str
    dense_ms: float | None = None
    sparse_ms: float | None = None
    speedup: float | None = None
    candidates: dict[str, float] = field(default_factory=dict)


@dataclass
class SparsifyReport:
    """Per-layer decisions of :func:`sparsify_` (``layers``), the threads and the input shapes probed."""

    layers: list[LayerDecision]
    threads: int
    input_shapes: list[list[int]]

    @property
    def swapped(self) -> list[LayerDecision]:
        """The layers now running on a sparse kernel."""
        return [d for d in self.layers if d.format is not None]

    @property
    def declined(self) -> list[LayerDecision]:
        """The layers left dense, each with its reason."""
        return [d for d in self.layers if d.format is None]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: threads, input shapes and every layer decision."""
        return {"threads": self.threads, "input_shapes": self.input_shapes, "layers": [asdict(d) for d in self.layers]}

    def __str__(self) -> str:
        head = (
            f"sparsify_: {len(self.swapped)} of {len(self.layers)} layer(s) now run on sparse kernels "
            f"(probed at input shape(s) {self.input_shapes}, {self.threads} thread(s))"
        )
        rows = []
        for d in self.layers:
            times = (
                f"; dense {d.dense_ms:.4f} ms, sparse {d.sparse_ms:.4f} ms ({d.speedup:.2f}x)"
                if d.dense_ms is not None and d.sparse_ms is not None
                else ""
            )
            rows.append(
                f"  {d.name} {d.kind} {tuple(d.shape)} sparsity {100 * d.sparsity:.1f}%: "
                f"{d.format or 'kept dense'} - {d.reason}{times}"
            )
        return "\n".join([head, *rows])


def _capture_inputs(
    model: nn.Module, layers: Mapping[str, nn.Module], example_inputs: Any
) -> tuple[dict[str, Tensor], Any]:
    seen: dict[str, Tensor] = {}
    handles = []
    for name, module in layers.items():

        def hook(mod: nn.Module, args: tuple, name: str = name) -> None:
            if name not in seen and args and isinstance(args[0], Tensor):
                seen[name] = args[0].detach()

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            out = call_model(model, example_inputs)
    except Exception as e:  # noqa: BLE001 - the example inputs do not fit the model
        raise DataError(f"the model cannot run on example_inputs: {e}") from None
    finally:
        for h in handles:
            h.remove()
    return seen, out


def _block_density(w: Tensor, b: int) -> float:
    o, i = w.shape
    blocks = w.reshape(o // b, b, i // b, b).ne(0).any(dim=3).any(dim=1)
    return blocks.float().mean().item()


def _stored_fraction(w2: Tensor, fmt: str) -> float:
    """The bytes the sparse form ``fmt`` stores for the non-zeros of the 2-D weight ``w2`` (values and column
    indices, int32 as :func:`_to_format` builds them; BSR: whole blocks, one index each) over the dense bytes."""
    value_bytes, index_bytes = w2.element_size(), 4 if w2.numel() < 2**31 else 8
    dense = w2.numel() * value_bytes
    if fmt == "csr":
        return int(torch.count_nonzero(w2)) * (value_bytes + index_bytes) / dense
    b = int(fmt[3:])
    blocks = _block_density(w2, b) * w2.numel() / (b * b)
    return blocks * (b * b * value_bytes + index_bytes) / dense


def _plain_copy(module: nn.Linear | nn.Conv2d, weight: Tensor) -> nn.Module:
    """A parameter-free dense twin of ``module`` computing with ``weight`` (the probe's reference)."""
    ref: nn.Linear | nn.Conv2d
    if isinstance(module, nn.Linear):
        ref = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    else:
        ref = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None)
    with torch.no_grad():
        ref.weight.copy_(weight)
        if module.bias is not None and ref.bias is not None:  # ref has a bias exactly when module has one
            ref.bias.copy_(module.bias.detach())
    return ref.eval()


def _refuse_bare_layer(model: nn.Module, what: str) -> None:
    if isinstance(model, nn.Linear) or _is_conv1x1(model):
        raise ConfigError(
            f"{what} swaps layers inside a model, in place; this model is itself one {type(model).__name__}, "
            "which cannot be replaced in place: wrap it, e.g. model = nn.Sequential(layer)"
        )


def _set_child(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def sparsify_(
    model: nn.Module,
    example_inputs: Any,
    *,
    formats: Sequence[str] = ("csr", "bsr"),
    block_sizes: Sequence[int] = (16, 32),
    min_sparsity: float = 0.3,
    min_speedup: float = 1.1,
    threads: int | None = None,
    probe_budget_s: float = 0.3,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
) -> SparsifyReport:
    """Run the sparse-enough Linear and 1x1 Conv2d layers of ``model`` on CSR / BSR kernels, in place, where
    a timing probe shows each gets faster at the user's batch; the rest stay as they are.

    ``example_inputs``: a batch as the model is used (its batch size matters: CSR pays off at batch 1-8 from
    ~90% zeros, BSR from ~70% when the zeros form blocks). Each candidate layer's real input is captured from
    one forward pass. A sparse form (``"csr"``, ``"bsr"`` with ``block_sizes`` that divide the weight) is
    tried only when it stores the non-zeros in at most :data:`SPARSE_STORAGE_LIMIT` (half) of the dense
    weight's bytes: about 75% zeros or more for fp32 CSR, blocks at most half non-zero for BSR (a sparse
    kernel can beat the dense one only by reading less; see the constant). The dense layer and each form tried
    are timed interleaved on the captured input with :func:`prunekit.eval.latency.compare_latency` (medians
    of paired per-round ratios) at ``threads`` threads (None: the current count), for about
    ``probe_budget_s`` seconds each. The fastest form is swapped in only if the whole 95% confidence interval
    of its time ratio shows a gain of at least ``min_speedup`` (a gain beyond the noise), so no layer gets
    slower; layers under ``min_sparsity`` zeros are not probed. Masked weights are used as the mask leaves
    them. ``filter_fn(module, name)`` limits the layers.

    The swapped layers compute ``torch.sparse.mm(W, x^T)^T`` (fp32/fp64 on the CPU) and work under
    ``torch.inference_mode()``; outputs equal the dense ones up to float summation order. They are meant for
    inference: the original parameters leave ``model.parameters()`` (the state dict still reads as before).
    :func:`densify_` reverts bit-exactly (the original layer objects come back). Returns a
    :class:`SparsifyReport` naming every layer with its decision and reason. Raises
    :class:`~prunekit.errors.DataError` when ``example_inputs`` is missing or the model cannot run on it,
    :class:`~prunekit.errors.ConfigError` for invalid ``formats``, ``block_sizes``, ``min_sparsity``,
    ``min_speedup``, ``probe_budget_s`` or ``threads``, or a model that is itself one layer,
    :class:`~prunekit.errors.ModelError` when ``model`` is not a module or the swapped layers
    change its outputs; on any failure the model is left as it was.
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"sparsify_ takes a torch.nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        raise DataError(
            "sparsify_ needs example_inputs: a batch at the batch size you will run (the probe times each layer on it)"
        )
    formats = (formats,) if isinstance(formats, str) else tuple(formats)  # "csr" is one format, not three letters
    unknown = set(formats) - {"csr", "bsr"}
    if unknown or not formats:
        raise ConfigError(f"formats takes 'csr' and/or 'bsr', got {list(formats)}")
    if isinstance(probe_budget_s, bool) or not isinstance(probe_budget_s, (int, float)) or not 0 < probe_budget_s:
        raise ConfigError(f"probe_budget_s is the seconds each layer's timing may take, > 0, got {probe_budget_s!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads is None (the current count) or an integer of at least 1, got {threads!r}")
    if any(int(b) < 1 for b in block_sizes):
        raise ConfigError(f"block_sizes must be positive integers, got {list(block_sizes)}")
    if not 0 <= min_sparsity < 1:
        raise ConfigError(f"min_sparsity must lie in [0, 1), got {min_sparsity}")
    if min_speedup < 1:
        raise ConfigError(f"min_speedup must be at least 1 (a sparse layer may never be slower), got {min_speedup}")
    _refuse_bare_layer(model, "sparsify_")
    from prunekit.eval.latency import compare_latency, pinned_threads

    layers: dict[str, nn.Linear | nn.Conv2d] = {
        n: m
        for n, m in model.named_modules()
        if n and (isinstance(m, nn.Linear) or _is_conv1x1(m)) and (filter_fn is None or filter_fn(m, n))
    }
    inputs, reference = _capture_inputs(model, layers, example_inputs)
    decisions: list[LayerDecision] = []
    chosen: dict[str, nn.Module] = {}
    with pinned_threads(threads) as n_threads:
        for name, module in layers.items():
            w = _effective_weight(module)
            w2 = w.reshape(w.shape[0], -1)
            kind = "linear" if isinstance(module, nn.Linear) else "conv1x1"
            sp = 1.0 - torch.count_nonzero(w2).item() / w2.numel()
            d = LayerDecision(name, kind, tuple(w.shape), sp, None, "")
            decisions.append(d)
            if name not in inputs:
                d.reason = "not called on the example inputs"
                continue
            if w.device.type != "cpu" or w.dtype not in (torch.float32, torch.float64):
                d.reason = (
                    f"CPU sparse kernels take float32/float64 weights on the CPU, this one is {w.dtype} on {w.device}"
                )
                continue
            if sp < min_sparsity:
                d.reason = f"{100 * sp:.0f}% zeros, under min_sparsity={min_sparsity:g}: not probed"
                continue
            x = inputs[name]
            dense = _plain_copy(module, w)
            fitting = (["csr"] if "csr" in formats else []) + [
                f"bsr{b}" for b in block_sizes if "bsr" in formats and not (w2.shape[0] % b or w2.shape[1] % b)
            ]
            stored = {fmt: _stored_fraction(w2, fmt) for fmt in fitting}
            forms = [fmt for fmt in fitting if stored[fmt] <= SPARSE_STORAGE_LIMIT]
            if not forms:
                sizes = ", ".join(f"{fmt} {100 * f:.0f}%" for fmt, f in stored.items()) or "no sparse form fits"
                d.reason = (
                    f"not probed: every sparse form would store more than {100 * SPARSE_STORAGE_LIMIT:.0f}% of the "
                    f"dense weight's bytes ({sizes}): it would read about as much memory as the dense layer, so "
                    "a speedup timed there would not come from the zeros (SPARSE_STORAGE_LIMIT)"
                )
                continue
            best, best_cmp = None, None
            with torch.no_grad():
                expected = dense(x)
            for fmt in forms:
                cand = SparseLinear(module, fmt) if isinstance(module, nn.Linear) else SparseConv1x1(module, fmt)
                with torch.no_grad():
                    if not torch.allclose(cand(x), expected, rtol=1e-4, atol=1e-5):
                        continue  # a kernel that disagrees is never swapped in
                cmp = compare_latency(dense, cand, x, threads=None, budget_s=probe_budget_s, min_rounds=15)
                d.candidates[fmt] = round(cmp.speedup, 3)
                # the whole interval, not only the median, must show the gain: a gain beyond the noise
                if (
                    cmp.verdict == "faster"
                    and cmp.ratio_high <= 1.0 / min_speedup
                    and (best_cmp is None or cmp.ratio < best_cmp.ratio)
                ):
                    best, best_cmp = (fmt, cand), cmp
            if best is None or best_cmp is None:  # set together
                tried = ", ".join(f"{k} {v:.2f}x" for k, v in d.candidates.items()) or "no sparse form fits"
                d.reason = (
                    f"the probe found no sparse form faster by {min_speedup:g}x over the whole 95% confidence "
                    f"interval of its time ratio ({tried})"
                )
                continue
            d.format, d.reason = (
                best[0],
                f"the probe measured {best_cmp.speedup:.2f}x (95% CI of the ratio "
                f"{best_cmp.ratio_low:.3f}-{best_cmp.ratio_high:.3f})",
            )
            d.dense_ms, d.sparse_ms, d.speedup = (
                best_cmp.baseline.median_ms,
                best_cmp.candidate.median_ms,
                best_cmp.speedup,
            )
            chosen[name] = best[1]
    originals = {name: layers[name] for name in chosen}
    for name, new in chosen.items():
        _set_child(model, name, new)
    try:
        with torch.no_grad():
            after = call_model(model, example_inputs)
        from prunekit.deploy._common import flat_outputs

        for a, r in zip(flat_outputs(after), flat_outputs(reference)):
            if not torch.allclose(a, r, rtol=1e-3, atol=1e-4):
                raise ModelError(
                    "the sparse layers change the model's outputs beyond float rounding; the model was "
                    "restored. Report this with the model"
                )
    except BaseException:
        for name, orig in originals.items():
            _set_child(model, name, orig)
        raise
    return SparsifyReport(decisions, n_threads, _shapes(example_inputs))


def _shapes(example_inputs: Any) -> list[list[int]]:
    from prunekit.deploy._common import flat_tensors, split_inputs

    args, kwargs = split_inputs(example_inputs)
    return [list(t.shape) for t in flat_tensors(args, kwargs)]


def densify_(model: nn.Module) -> int:
    """Undo :func:`sparsify_` and :func:`semi_structured_`: put every original layer object back (bit-exact,
    masks included). Returns the number of layers restored."""
    swapped = [(n, m) for n, m in model.named_modules() if isinstance(m, SparseExecution)]
    for name, module in swapped:
        _set_child(model, name, module.original)
    return len(swapped)


class SemiStructuredLinear(SparseExecution):
    """A 2:4-sparse Linear on NVIDIA's semi-structured kernels: ``F.linear(x, W_2:4, b)`` on CUDA (fp16/bf16)."""

    format = "2:4-semi-structured"
    bias_: Tensor | None  # a buffer, registered in __init__

    def __init__(self, original: nn.Linear, backend: str = "auto"):
        super().__init__(original)
        import torch.sparse as ts

        w = _effective_weight(original)
        sparse: Tensor
        if backend == "cutlass":
            sparse = ts.SparseSemiStructuredTensorCUTLASS.from_dense(w)
        elif backend == "cusparselt":
            sparse = ts.SparseSemiStructuredTensorCUSPARSELT.from_dense(w)
        else:  # torch's default: cuSPARSELt where it is available, else CUTLASS
            sparse = ts.to_sparse_semi_structured(w)
        self.backend = backend
        self.sparse_weight = nn.Parameter(sparse, requires_grad=False)
        bias = None if original.bias is None else original.bias.detach().clone()
        self.register_buffer("bias_", bias, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``F.linear(x, W_2:4, b)``: ``(..., in_features)`` -> ``(..., out_features)``."""
        return F.linear(x, self.sparse_weight, self.bias_)


def _is_2_4(w: Tensor) -> bool:
    if w.dim() != 2 or w.shape[1] % 4:
        return False
    return bool((w.reshape(w.shape[0], -1, 4).ne(0).sum(-1) <= 2).all())


SEMI_STRUCTURED_BACKENDS = ("auto", "cusparselt", "cutlass")


def semi_structured_(
    model: nn.Module,
    *,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    backend: str = "auto",
) -> list[str]:
    """Run every 2:4-sparse Linear of ``model`` (on a CUDA device, fp16 or bf16) on the semi-structured sparse
    kernels of ``torch.sparse.to_sparse_semi_structured`` (Mishra et al. 2021, "Accelerating Sparse Deep Neural
    Networks"), in place; :func:`densify_` reverts. Prune with ``pattern="2:4"`` first. Returns the names of the
    layers swapped. ``backend``: ``"cusparselt"`` (NVIDIA cuSPARSELt), ``"cutlass"`` (PyTorch's CUTLASS
    kernels) or ``"auto"`` (PyTorch's choice: cuSPARSELt where it is available); see
    docs/results/deploy/gpu_2of4.md for what each gives at which token count.

    Raises :class:`~prunekit.errors.ConfigError` for an unknown ``backend`` or a model that is itself one
    Linear (wrap it in ``nn.Sequential``), :class:`~prunekit.deploy.errors.DeviceError` without a CUDA device
    (the kernels exist only there: on a CPU use :func:`sparsify_`), :class:`~prunekit.errors.PatternError` when
    no Linear layer is 2:4 sparse or a selected one has a weight the kernels refuse (dtype, shape); the model
    is then unchanged.
    """
    if backend not in SEMI_STRUCTURED_BACKENDS:
        raise ConfigError(f"backend is one of {', '.join(SEMI_STRUCTURED_BACKENDS)}, got {backend!r}")
    if not torch.cuda.is_available():
        raise DeviceError(
            "2:4 semi-structured sparse kernels run only on a CUDA GPU and none is present; on the "
            "CPU use prunekit.deploy.sparsify_(model, example_inputs) (CSR/BSR kernels) or export to "
            "OpenVINO (prunekit.deploy.export_openvino)"
        )
    _refuse_bare_layer(model, "semi_structured_")
    targets = {
        n: m
        for n, m in model.named_modules()
        if n and isinstance(m, nn.Linear) and (filter_fn is None or filter_fn(m, n)) and _is_2_4(_effective_weight(m))
    }
    if not targets:
        raise PatternError(
            "no Linear layer of the model is 2:4 sparse; prune first with "
            "pk.prune(model, 'magnitude', sparsity=0.5, pattern='2:4')"
        )
    built: dict[str, nn.Module] = {}
    for name, m in targets.items():
        w = m.weight
        if w.device.type != "cuda" or w.dtype not in (torch.float16, torch.bfloat16):
            raise PatternError(
                f"{name}: the semi-structured kernels take fp16/bf16 weights on a CUDA device, this one "
                f"is {w.dtype} on {w.device}; call model.half().cuda() (or bfloat16) first"
            )
        cap = torch.cuda.get_device_capability(w.device)
        if backend == "cutlass" and cap[0] != 8:
            raise DeviceError(
                "PyTorch's CUTLASS 2:4 kernels run only on GPUs of compute capability 8.x (Ampere); this one is "
                f"{torch.cuda.get_device_name(w.device)} ({cap[0]}.{cap[1]}): use backend='cusparselt' (or 'auto')"
            )
        try:
            layer = SemiStructuredLinear(m, backend)
        except (RuntimeError, ValueError) as e:
            raise PatternError(
                f"{name} {tuple(w.shape)}: torch.sparse.to_sparse_semi_structured refused it: {e}"
            ) from None
        try:  # the kernels can refuse a device only when called: call each layer once, before any swap
            with torch.no_grad():
                layer(torch.zeros(8, w.shape[1], dtype=w.dtype, device=w.device))
        except RuntimeError as e:
            raise DeviceError(f"{name}: the {backend} 2:4 kernels failed on this device: {e}") from None
        built[name] = layer
    for name, new in built.items():
        _set_child(model, name, new)
    return list(built)
