"""One statistics collector: what criteria need, gathered from calibration data with hooks.

A criterion declares the statistics it reads (:data:`STATISTICS`); :func:`collect` gathers exactly those,
for the layers asked, in as few passes as possible:

* ``grad``, ``grad_sq``: per parameter, the sum over batches of ``dL/dw`` and of its square (the empirical
  Fisher diagonal times the batch count), as the model computes the weight (through masks, ``weight_norm``).
* ``act_norm``, ``act_mean``: per layer input feature (a Linear's ``in_features``, a convolution's input
  channels), the sum of ``x_j^2`` and of ``x_j`` over every row of the input (tokens, batch x positions),
  and the row count.
* ``act_zeros``: per output channel, the count of outputs ``<= 0`` (zeros after a ReLU), and the count.
* ``xtx``: ``X^T X`` of the layer's input rows, im2col rows for a convolution (``[in*kh*kw]`` features).
* ``bn_gamma``: for a layer whose output feeds a normalisation layer directly, that layer's ``|gamma|``.
* ``synflow``: ``dR/dw`` of the all-positive network ``R = 1^T (prod |W_l|) 1`` on all-ones inputs.
* ``grasp_hg``: the Hessian-gradient product ``H g`` (double back-propagation).

Everything runs in eval mode without changing the model: gradients, ``requires_grad`` flags and the
training flag are restored. Padding (``attention_mask == 0``) enters no statistic.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.calibration.batches import Calibration, current_token_mask, output_logits
from prunekit.calls import eval_mode
from prunekit.errors import DataError, MissingDataError, ModelError
from prunekit.layout import layer_weight, weight_layout

__all__ = ["LayerStats", "STATISTICS", "collect", "im2col_rows", "input_rows", "modules_called", "output_rows"]

STATISTICS = frozenset(
    {"grad", "grad_sq", "act_norm", "act_mean", "act_zeros", "xtx", "bn_gamma", "synflow", "grasp_hg"}
)
ACTIVATION_STATS = frozenset({"act_norm", "act_mean", "act_zeros", "xtx", "bn_gamma"})
GRADIENT_STATS = frozenset({"grad", "grad_sq"})

_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


@dataclass
class LayerStats:
    """Statistics of one layer (module) and its weight; a field is None when it was not collected.

    Shapes: ``grad``, ``grad_sq``, ``synflow``, ``grasp_hg`` like the stored weight; ``act_sq``,
    ``act_sum`` ``[in_features]`` (input channels); ``act_nonpos`` ``[out_features]``; ``xtx``
    ``[F, F]`` with ``F = in_features`` (Linear) or ``in/groups * prod(kernel)`` (convolution, im2col order
    ``(channel, *kernel)``); ``bn_gamma`` ``[out_features]``. ``rows``: input rows counted (tokens, batch x
    positions); ``out_rows``: output rows counted. ``bias_grad``, ``bias_grad_sq``: like ``grad`` /
    ``grad_sq`` for the layer's bias ``[out_features]`` (gathered with them when the layer has one), so that
    a unit's first-order Taylor sum covers all its parameters (Molchanov et al. 2019).
    """

    name: str
    grad: Tensor | None = None
    grad_sq: Tensor | None = None
    synflow: Tensor | None = None
    grasp_hg: Tensor | None = None
    act_sq: Tensor | None = None
    act_sum: Tensor | None = None
    rows: int = 0
    act_nonpos: Tensor | None = None
    out_rows: int = 0
    xtx: Tensor | None = None
    bn_gamma: Tensor | None = None
    bias_grad: Tensor | None = None
    bias_grad_sq: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- input rows


def input_rows(module: nn.Module, x: Tensor) -> Tensor:
    """A layer's input as rows of features: ``[rows, in_features]`` (Linear: every leading position; a
    convolution: every batch x spatial position, channels as features). Padding rows are dropped."""
    mask = current_token_mask()
    layout = weight_layout(module)
    if layout is not None and layout.kind.startswith("conv"):
        return x.detach().movedim(1, -1).reshape(-1, x.shape[1])
    x = x.detach()
    if mask is not None and x.dim() >= 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        x = x[mask.to(x.device)]
    return x.reshape(-1, x.shape[-1])


def output_rows(module: nn.Module, y: Tensor) -> Tensor:
    """A layer's output as ``[rows, out_features]`` (padding rows dropped)."""
    layout = weight_layout(module)
    if layout is not None and layout.kind.startswith("conv"):
        return y.detach().movedim(1, -1).reshape(-1, y.shape[1])
    mask = current_token_mask()
    y = y.detach()
    if mask is not None and y.dim() >= 3 and tuple(y.shape[:2]) == tuple(mask.shape):
        y = y[mask.to(y.device)]
    return y.reshape(-1, y.shape[-1])


def _is_conv(module: nn.Module) -> bool:
    layout = weight_layout(module)
    return layout is not None and layout.kind.startswith("conv")


def _feature_sums(module: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, int]:
    """``(sum x_j^2, sum x_j, rows)`` over every row of a layer's input, per input feature ``j``
    (float64 ``[in_features]``), without copying the input; padding rows are left out."""
    x = x.detach()
    if _is_conv(module):
        dims = [d for d in range(x.dim()) if d != 1]
        n = x.numel() // x.shape[1]
        return x.float().pow(2).sum(dims).double(), x.float().sum(dims).double(), n
    rows = input_rows(module, x).float()
    return rows.pow(2).sum(0).double(), rows.sum(0).double(), rows.shape[0]


def _nonpositive_counts(module: nn.Module, y: Tensor) -> tuple[Tensor, int]:
    """Per output channel, how many of the layer's outputs are ``<= 0`` (float64 ``[out]``), and the rows."""
    y = y.detach()
    if _is_conv(module):
        dims = [d for d in range(y.dim()) if d != 1]
        return (y <= 0).sum(dims).double(), y.numel() // y.shape[1]
    rows = output_rows(module, y)
    return (rows <= 0).sum(0).double(), rows.shape[0]


def im2col_rows(module: nn.Module, x: Tensor) -> Tensor:
    """The rows a layer's weight multiplies: a Linear's input rows, or a convolution's im2col patches
    ``[B * L, in/groups * prod(kernel)]`` (ungrouped 1-D and 2-D convolutions). Raises
    :class:`~prunekit.errors.ModelError` for other convolutions and string padding (``"same"``)."""
    layout = weight_layout(module)
    if layout is None or layout.kind in ("linear", "hf-conv1d"):
        return input_rows(module, x)
    if layout.kind != "conv" or module.groups != 1 or not isinstance(module, (nn.Conv1d, nn.Conv2d)):
        raise ModelError(
            f"X^T X is computed for Linear layers and ungrouped Conv1d/Conv2d, not {type(module).__name__} "
            f"(groups={getattr(module, 'groups', 1)}); leave the layer out with ignore=[...]"
        )
    pad = module.padding
    if isinstance(pad, str):  # before a Conv1d's pad[0] below would read the first letter of "same"
        raise ModelError(
            f"X^T X of a convolution with padding={pad!r} is not supported; leave it out with ignore=[...]"
        )
    x = x.detach()
    k: tuple[int, ...]
    s: tuple[int, ...]
    p: tuple[int, ...]
    d: tuple[int, ...]
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-1)
        k, s, p, d = (module.kernel_size[0], 1), (module.stride[0], 1), (pad[0], 0), (module.dilation[0], 1)
    else:
        k, s, p, d = module.kernel_size, module.stride, pad, module.dilation
    cols = F.unfold(x, k, dilation=d, padding=p, stride=s)  # [B, C*k*k, L]
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


# --------------------------------------------------------------------------------------------- collect


def collect(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    needs: Iterable[str],
    calibration: Any = None,
    *,
    example_inputs: Any = None,
    loss_fn: Any = None,
    max_batches: int | None = None,
    grasp_temperature: float = 200.0,
) -> dict[str, LayerStats]:
    """Gather ``needs`` (names in :data:`STATISTICS`) for every layer in ``layers`` (``{name: module}``,
    modules of ``model`` with a ``weight``). Returns ``{name: LayerStats}``.

    ``calibration``: any form :class:`~prunekit.calibration.Calibration` accepts (not needed for
    ``synflow``, which needs ``example_inputs`` for the input shape only). Raises
    :class:`~prunekit.errors.MissingDataError` when data a statistic needs is missing,
    :class:`~prunekit.errors.DataError` when the data cannot give it (e.g. a tensor batch without targets for
    gradients), :class:`~prunekit.errors.ModelError` for ``xtx`` of a layer im2col cannot unfold, and
    ``ValueError`` for a name that is not in :data:`STATISTICS`.
    """
    needs = set(needs)
    unknown = needs - STATISTICS
    if unknown:
        raise ValueError(f"unknown statistics {sorted(unknown)}; known: {sorted(STATISTICS)}")
    out = {name: LayerStats(name) for name in layers}
    if not needs:
        return out
    data_needs = needs - {"synflow"}
    calib = Calibration.of(calibration, loss_fn=loss_fn, max_batches=max_batches) if data_needs else None
    with _preserved(model):
        if needs & ACTIVATION_STATS:
            _activations(model, layers, needs & ACTIVATION_STATS, calib, out)  # type: ignore[arg-type]
        if needs & GRADIENT_STATS:
            _gradients(model, layers, calib, out)  # type: ignore[arg-type]
        if "grasp_hg" in needs:
            _grasp(model, layers, calib, out, grasp_temperature)  # type: ignore[arg-type]
    if "synflow" in needs:
        _synflow(model, layers, example_inputs, out)
    return out


@contextlib.contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Eval mode, every parameter requiring grad; then the flags, ``.grad`` and mode as they were."""
    params = list(model.named_parameters())
    saved_grads = [(p, p.grad) for _, p in params]
    saved_req = [(p, p.requires_grad) for _, p in params]
    try:
        with eval_mode(model):
            yield
    finally:
        for p, g in saved_grads:
            p.grad = g
        for p, r in saved_req:
            p.requires_grad_(r)


def _activations(
    model: nn.Module, layers: Mapping[str, nn.Module], needs: set[str], calib: Calibration, out: dict[str, LayerStats]
) -> None:
    handles = []
    # id(output tensor) -> (layer name, the tensor: held so that its id cannot be reused by another tensor)
    produced: dict[int, tuple[str, Tensor]] = {}

    def hook_for(name: str, module: nn.Module) -> Callable[[nn.Module, tuple[Any, ...], Any], None]:
        st = out[name]

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            x = args[0] if args else None
            y = output if isinstance(output, Tensor) else None
            if isinstance(x, Tensor) and x.is_floating_point():
                if needs & {"act_norm", "act_mean"}:
                    sq, sm, n = _feature_sums(mod, x)
                    st.act_sq = sq + (st.act_sq if st.act_sq is not None else 0)
                    st.act_sum = sm + (st.act_sum if st.act_sum is not None else 0)
                    st.rows += n
                if "xtx" in needs:
                    cols = im2col_rows(mod, x).float()
                    st.xtx = cols.t() @ cols + (st.xtx if st.xtx is not None else 0)
                    st.extra["xtx_rows"] = st.extra.get("xtx_rows", 0) + cols.shape[0]
            if y is not None and "act_zeros" in needs:
                nonpos, n = _nonpositive_counts(mod, y)
                st.act_nonpos = nonpos + (st.act_nonpos if st.act_nonpos is not None else 0)
                st.out_rows += n
            if y is not None and "bn_gamma" in needs:
                produced[id(output)] = (name, output)

        return hook

    def norm_pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        hit = produced.get(id(x)) if isinstance(x, Tensor) else None
        name = hit[0] if hit is not None and hit[1] is x else None
        weight = getattr(mod, "weight", None)
        if name is not None and weight is not None and out[name].bn_gamma is None:
            out[name].bn_gamma = cast(Tensor, weight).detach().abs().double().clone()

    for name, module in layers.items():
        handles.append(module.register_forward_hook(hook_for(name, module)))
    if "bn_gamma" in needs:
        for m in model.modules():
            if isinstance(m, _NORMS):
                handles.append(m.register_forward_pre_hook(norm_pre_hook))
    try:
        with torch.no_grad(), modules_called(model, layers.values()):
            for _ in calib.forward(model):
                produced.clear()
    finally:
        for h in handles:
            h.remove()
    gathered = any(st.rows or st.extra.get("xtx_rows") for st in out.values())
    if needs & {"act_norm", "act_mean", "xtx"} and not gathered:
        raise DataError("no calibration input reached the layers being scored; check that the data runs the model")


@contextlib.contextmanager
def modules_called(model: nn.Module, layers: Iterable[nn.Module]) -> Iterator[None]:
    """Within this context, every ``nn.MultiheadAttention`` whose ``out_proj`` is among ``layers`` runs an
    explicit forward that *calls* ``out_proj`` (torch's fused kernel reads its weight directly, so hooks on it
    never fire). The explicit forward computes the same attention (eval mode, no dropout); modules it cannot
    reproduce exactly (``bias_k``, ``add_zero_attn``, causal masks) keep torch's forward."""
    wanted = {id(m) for m in layers}
    patched = []
    for m in model.modules():
        if (
            isinstance(m, nn.MultiheadAttention)
            and id(m.out_proj) in wanted
            and m.bias_k is None
            and not m.add_zero_attn
        ):
            m.forward = _explicit_attention.__get__(m)  # type: ignore[method-assign]
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


def _explicit_attention(
    self: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    key_padding_mask: Tensor | None = None,
    need_weights: bool = True,
    attn_mask: Tensor | None = None,
    average_attn_weights: bool = True,
    is_causal: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Multi-head attention (Vaswani et al. 2017) as ``nn.MultiheadAttention`` computes it in eval mode,
    with ``self.out_proj`` called as a module. Shapes as torch's: ``[L, N, E]`` or ``[N, L, E]``."""
    if is_causal and attn_mask is None:
        raise ModelError("the explicit attention forward needs attn_mask when is_causal=True")
    batched = query.dim() == 3
    if not batched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    elif self.batch_first:
        query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
    L, N, E = query.shape
    S = key.shape[0]
    h = self.num_heads
    d = E // h
    if self._qkv_same_embed_dim:
        wq, wk, wv = self.in_proj_weight.chunk(3)
    else:
        wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
    bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
    q = F.linear(query, wq, bq).reshape(L, N * h, d).transpose(0, 1)
    k = F.linear(key, wk, bk).reshape(S, N * h, d).transpose(0, 1)
    v = F.linear(value, wv, bv).reshape(S, N * h, d).transpose(0, 1)
    logits = (q @ k.transpose(1, 2)) / (d**0.5)  # [N*h, L, S]
    if attn_mask is not None:
        am = attn_mask if attn_mask.dim() == 3 else attn_mask.unsqueeze(0)
        logits = logits.masked_fill(am, float("-inf")) if am.dtype == torch.bool else logits + am
    if key_padding_mask is not None:
        kp = key_padding_mask.reshape(N, 1, 1, S).expand(N, h, 1, S).reshape(N * h, 1, S)
        logits = logits.masked_fill(kp, float("-inf")) if kp.dtype == torch.bool else logits + kp
    attn = torch.softmax(logits, dim=-1)
    out = (attn @ v).transpose(0, 1).reshape(L, N, E)
    out = self.out_proj(out)
    if not batched:
        out = out.squeeze(1)
    elif self.batch_first:
        out = out.transpose(0, 1)
    weights = None
    if need_weights:
        weights = attn.reshape(N, h, L, S)
        weights = weights.mean(1) if average_attn_weights else weights
        if not batched:
            weights = weights.squeeze(0)
    return out, weights


def _gradients(
    model: nn.Module, layers: Mapping[str, nn.Module], calib: Calibration, out: dict[str, LayerStats]
) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
    steps = 0
    with torch.enable_grad():
        biases = {
            name: cast(Tensor, m.bias)
            for name, m in layers.items()
            if isinstance(getattr(m, "bias", None), nn.Parameter)
        }
        for loss_graph in _loss_steps(model, layers, calib):
            loss, weights = loss_graph
            grads = torch.autograd.grad(loss, list(weights.values()) + list(biases.values()), allow_unused=True)
            keys = [(n, "grad") for n in weights] + [(n, "bias_grad") for n in biases]
            for (name, field_name), g in zip(keys, grads):
                if g is None:
                    continue
                st = out[name]
                g = g.detach()
                old = getattr(st, field_name)
                setattr(st, field_name, g.clone() if old is None else old + g)
                old_sq = getattr(st, f"{field_name}_sq")
                setattr(st, f"{field_name}_sq", g.square() if old_sq is None else old_sq + g.square())
            steps += 1
    if steps == 0:
        raise DataError("the calibration data is empty: pass at least one batch")


def _loss_steps(
    model: nn.Module, layers: Mapping[str, nn.Module], calib: Calibration
) -> Iterator[tuple[Tensor, dict[str, Tensor]]]:
    """Each loss with the weights (as computed through parametrizations, cached for the step) it reads."""
    it = calib.losses(model)
    while True:
        with parametrize.cached():
            weights = {name: layer_weight(m) for name, m in layers.items()}
            try:
                loss = next(it)
            except StopIteration:
                return
            yield loss, weights


def _grasp(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    calib: Calibration,
    out: dict[str, LayerStats],
    temperature: float,
) -> None:
    """``H g`` by double back-propagation (Wang et al. 2020): first the summed gradient ``g``, then the
    gradient of ``g_detached . grad(L)``. Logits are divided by ``temperature`` for (inputs, targets)
    batches without a user loss, as in the paper."""
    for p in model.parameters():
        p.requires_grad_(True)
    if calib.loss_fn is None and not calib.is_loss_callable:
        calib = _Tempered(calib.source, None, calib.max_batches, temperature)
    math_attention = _math_attention()
    with torch.enable_grad(), math_attention:
        g: dict[str, Tensor] = {}
        for loss, weights in _loss_steps(model, layers, calib):
            grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
            for (name, _), gr in zip(weights.items(), grads):
                if gr is not None:
                    g[name] = gr.detach() + g.get(name, 0)
        if not g:
            raise DataError("the calibration loss does not depend on the layers being scored")
        for loss, weights in _loss_steps(model, layers, calib):
            names = [n for n in weights if n in g]
            ws = [weights[n] for n in names]
            grads = torch.autograd.grad(loss, ws, create_graph=True, allow_unused=True)
            z = sum((gr * g[n]).sum() for n, gr in zip(names, grads) if gr is not None)
            if not isinstance(z, Tensor) or not z.requires_grad:
                raise DataError("GraSP needs a loss whose gradient is differentiable again (double back-propagation)")
            for n, h in zip(names, torch.autograd.grad(z, ws, allow_unused=True)):
                if h is not None:
                    prev = out[n].grasp_hg
                    out[n].grasp_hg = h.detach() + (prev if prev is not None else 0)


@dataclass
class _Tempered(Calibration):
    """GraSP's loss: for (inputs, class targets) batches of a classifier (logits ``[B, C]``) the logits are
    divided by ``temperature`` (Wang et al. 2020); every other form keeps the adapter's loss (token batches,
    dicts with labels or padding, a loss callable)."""

    temperature: float = 200.0

    def _loss(self, out: Any, inputs: Any, targets: Any, mask: Tensor | None, batch: Any) -> Tensor:
        if isinstance(targets, Tensor) and not isinstance(inputs, Mapping):
            logits = output_logits(out)
            if logits.dim() == 2:
                try:
                    return F.cross_entropy(logits.float() / self.temperature, targets)
                except (RuntimeError, ValueError, IndexError):
                    pass  # the adapter's loss says what is wrong with these targets
        return super()._loss(out, inputs, targets, mask, batch)


def _math_attention() -> contextlib.AbstractContextManager[object]:
    """Scaled-dot-product attention through its math kernel, which supports double back-propagation."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    except Exception:  # noqa: BLE001  (older torch: nothing to choose)
        return contextlib.nullcontext()


def _synflow(
    model: nn.Module, layers: Mapping[str, nn.Module], example_inputs: Any, out: dict[str, LayerStats]
) -> None:
    """SynFlow's ``dR/dw`` (Tanaka et al. 2020) on a float64 copy with every parameter replaced by its
    absolute value, run on all-ones inputs shaped like ``example_inputs`` (integer inputs such as token ids
    are used as given: an embedding lookup has no all-ones input). The model is not touched."""
    if example_inputs is None:
        raise MissingDataError(
            "synflow is data-free but needs the input shape: pass example_inputs=a batch (only its shape is used)"
        )
    net = copy.deepcopy(model).double().eval()
    modules = dict(net.named_modules())
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    for p in net.parameters():
        p.requires_grad_(True)
    x = _ones_like(example_inputs)
    with torch.enable_grad(), parametrize.cached():
        weights = {name: modules[name].weight for name in layers}
        y = net(**x) if isinstance(x, Mapping) else net(*x) if isinstance(x, tuple) else net(x)
        y = output_logits(y)
        R = y.sum()
        grads = torch.autograd.grad(R, list(weights.values()), allow_unused=True)
    for name, g in zip(weights, grads):
        if g is not None:
            out[name].synflow = g.detach().float()
    if not torch.isfinite(R.detach()):
        raise DataError("SynFlow's path sum overflowed float64 on this model; prune fewer layers at a time")


def _ones_like(x: Any) -> Any:
    if isinstance(x, Tensor):
        return torch.ones_like(x[:1], dtype=torch.float64) if x.is_floating_point() else x[:1]
    if isinstance(x, Mapping):
        return {k: _ones_like(v) if isinstance(v, Tensor) else v for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return tuple(_ones_like(v) for v in x)
    return x
