"""Dynamic depth for decoder-only language models: each token decides, layer by layer, whether to run it.

The rule comes from calibration. A layer's *block influence* on a token (Men et al. 2024, "ShortGPT") is
``BI = 1 - cos(h_in, h_out)``, how much the layer turns the token's hidden state. It is only known after
the layer ran, so a linear router predicts it from the layer's input: ``BI_hat = w_l . u + b_l`` with
``u = h_in / rms(h_in)``, fitted per layer by ridge regression on calibration text. At run time a token
skips layer ``l`` (its hidden state passes unchanged) when ``BI_hat < tau``; one threshold ``tau`` for all
layers is set so that the wanted fraction of (token, layer) computations of the calibration text falls
below it. The router costs one dot product of width ``hidden_size`` per token and layer.

Generation stays correct with the KV cache: a skipped token still writes its keys and values for the
layer (computed from its unchanged hidden state, as CALM does for early-exited tokens, Schuster et al.
2022), so later tokens attend to a complete cache; decisions depend only on a token's own hidden state,
so a cached step decides exactly as a full forward pass over the whole sequence. Only the key and value
projections (about 6% of a SmolLM2 layer's MACs) are computed for skipped tokens.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.dynamic.patching import Patch
from prunekit.errors import ConfigError, DataError, UnsupportedModuleError

__all__ = ["LayerRouter", "LayerSkipping", "calibrate_router", "find_decoder_layers", "skip_layers_"]


class _Norm(Protocol):
    """A normalisation layer over the hidden size (RMSNorm, LayerNorm): ``(..., D) -> (..., D)``."""

    weight: Tensor

    def __call__(self, x: Tensor) -> Tensor: ...


class _LlamaAttention(Protocol):
    """What :func:`_partial_layer` reads of a Llama-style attention module."""

    q_proj: nn.Linear
    k_proj: nn.Module
    v_proj: nn.Module
    o_proj: nn.Module
    head_dim: int
    scaling: float
    layer_idx: int


class _LlamaLayer(Protocol):
    """What :func:`calibrate_router` and :func:`_partial_layer` read of a Llama-style decoder layer (the
    structure :func:`_llama_like` checks)."""

    input_layernorm: _Norm
    self_attn: _LlamaAttention
    post_attention_layernorm: _Norm
    mlp: nn.Module


def _llama_like(m: nn.Module) -> bool:
    att = getattr(m, "self_attn", None)
    return (
        att is not None
        and all(hasattr(att, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx"))
        and all(hasattr(m, a) for a in ("input_layernorm", "post_attention_layernorm", "mlp"))
    )


def find_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a Llama-style causal LM (pre-norm blocks with q/k/v/o projections), found by
    structure. Raises :class:`~prunekit.errors.UnsupportedModuleError` when there are none."""
    for _, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0 and all(_llama_like(c) for c in mod):
            return list(mod)
    raise UnsupportedModuleError(
        f"skip_layers_: {type(model).__name__} has no Llama-style decoder layers (input_layernorm, self_attn with "
        "q_proj/k_proj/v_proj/o_proj, post_attention_layernorm, mlp), e.g. LlamaForCausalLM (SmolLM2), "
        "MistralForCausalLM, Qwen2ForCausalLM. For encoders and ViTs see prunekit.dynamic.merge_tokens_"
    )


def _features(h: Tensor) -> Tensor:
    """``(..., D) -> (..., D)``: the hidden state scaled to unit root mean square (the router's input)."""
    return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)


def _block_influence(h_in: Tensor, h_out: Tensor) -> Tensor:
    return 1 - F.cosine_similarity(h_in.double(), h_out.double(), dim=-1)


@dataclass
class LayerRouter:
    """Per-layer linear predictors of block influence and the calibration scores that set thresholds.

    ``weight``: ``(L, D)``; ``bias``: ``(L,)``; ``calibration_scores``: ``(L, T)`` predicted BI of the
    calibration tokens in the dense model; ``r2``: per-layer coefficient of determination of the fit on
    calibration tokens; ``protocol``: what the router was fitted on.
    """

    weight: Tensor
    bias: Tensor
    calibration_scores: Tensor
    r2: list[float]
    protocol: dict[str, Any] = field(default_factory=dict)

    def threshold(self, fraction: float, never_skip: Sequence[int] = ()) -> float:
        """The one threshold ``tau`` under which ``fraction`` of all (token, layer) pairs of the calibration
        text fall (layers in ``never_skip`` do not count as candidates but do count in the total); ``-inf``
        when ``fraction`` rounds to no skip. Raises :class:`~prunekit.errors.ConfigError` for a fraction outside
        [0, 1) or one the allowed layers cannot give."""
        if not 0 <= fraction < 1:
            raise ConfigError(f"fraction of layer computations to skip must be in [0, 1), got {fraction}")
        n_layers, n_tok = self.calibration_scores.shape
        allowed = [i for i in range(n_layers) if i not in set(never_skip)]
        k = int(round(fraction * n_layers * n_tok))
        if k == 0:
            return -math.inf
        cand = self.calibration_scores[allowed].flatten()
        if k > cand.numel():
            raise ConfigError(
                f"fraction {fraction} asks for more skips than the layers allowed to skip offer "
                f"({len(allowed)} of {n_layers}); lower the fraction or shorten never_skip"
            )
        kth = torch.sort(cand).values[k - 1]
        return float(torch.nextafter(kth, torch.tensor(math.inf, dtype=kth.dtype)))  # scores < tau: the k lowest


@torch.no_grad()
def calibrate_router(
    model: nn.Module, calibration: Iterable[Tensor], *, ridge: float = 0.01, progress: bool | None = None
) -> LayerRouter:
    """Fit the per-layer block-influence predictors of :func:`skip_layers_` on token batches.

    ``calibration``: token-id tensors ``(B, T)`` (e.g. :func:`prunekit.llm.data.calibration_batches`).
    Two passes of the dense model: one accumulates the ridge normal equations ``(U^T U + ridge I) w = U^T BI``
    per layer, ``lambda = ridge * mean(diag(U^T U))`` (memory: ``L x D x D`` doubles), one scores the
    calibration tokens with the fitted routers.
    Raises :class:`~prunekit.errors.DataError` when no batch is given (or one is not ``(B, T)``), and
    :class:`~prunekit.errors.UnsupportedModuleError` for a model without Llama-style decoder layers.
    """
    from prunekit.progress import ProgressBar

    layers = find_decoder_layers(model)
    batches = [b if isinstance(b, Tensor) else torch.as_tensor(b) for b in calibration]
    if not batches or any(b.dim() != 2 or b.numel() == 0 for b in batches):
        raise DataError(
            "skip_layers_ calibration takes token batches, tensors of ids shaped (batch, seq_len); got none "
            "or another shape (prunekit.llm.data.calibration_batches(tokenizer, text) makes them)"
        )
    n, d = len(layers), cast(_LlamaLayer, layers[0]).input_layernorm.weight.shape[0]
    xtx = torch.zeros(n, d + 1, d + 1, dtype=torch.float64)
    xty = torch.zeros(n, d + 1, dtype=torch.float64)
    yy = torch.zeros(n, 3, dtype=torch.float64)  # count, sum y, sum y^2
    fitted: list[Tensor] = []
    scores: list[list[Tensor]] = [[] for _ in range(n)]
    sse = torch.zeros(n, dtype=torch.float64)
    phase = ["fit"]

    def hook_for(i: int) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            u = _features(h_in).reshape(-1, d).double()
            u = torch.cat([u, torch.ones(u.shape[0], 1, dtype=u.dtype)], 1)
            y = _block_influence(h_in, h_out).reshape(-1)
            if phase[0] == "fit":
                xtx[i] += u.T @ u
                xty[i] += u.T @ y
                yy[i] += torch.stack([torch.tensor(float(y.numel()), dtype=torch.float64), y.sum(), y.pow(2).sum()])
            else:
                pred = u @ fitted[i]
                scores[i].append(pred.float())
                sse[i] += (pred - y).pow(2).sum()

        return hook

    handles = [layer.register_forward_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    try:
        with ProgressBar("skip_layers_ calibration", 2 * len(batches), enabled=progress) as bar:
            for b in batches:
                model(input_ids=b, use_cache=False)
                bar.advance()
            eye = torch.eye(d + 1, dtype=torch.float64)
            eye[-1, -1] = 0  # the intercept is not shrunk
            for i in range(n):
                lam = ridge * float(xtx[i].diagonal()[:d].mean())  # relative to the features' scale
                fitted.append(torch.linalg.solve(xtx[i] + lam * eye, xty[i]))
            phase[0] = "score"
            for b in batches:
                model(input_ids=b, use_cache=False)
                bar.advance()
    finally:
        for h in handles:
            h.remove()
    var = yy[:, 2] - yy[:, 1].pow(2) / yy[:, 0]
    r2 = [float(1 - sse[i] / var[i]) if var[i] > 0 else 0.0 for i in range(n)]
    w = torch.stack(fitted)
    return LayerRouter(
        weight=w[:, :d].float(),
        bias=w[:, d].float(),
        calibration_scores=torch.stack([torch.cat(s) for s in scores]),
        r2=r2,
        protocol={"batches": len(batches), "tokens": int(yy[0, 0]), "ridge": ridge},
    )


class LayerSkipping(Patch):
    """A dynamic-depth patch (see :func:`skip_layers_`).

    Counters since the patch (or :meth:`reset_counts`): ``token_layers`` (token, layer) pairs seen,
    ``skipped`` of them skipped, ``skipped_per_layer``.
    """

    kind = "skip-layers"

    def __init__(
        self,
        model: nn.Module,
        layers: list[nn.Module],
        router: LayerRouter,
        tau: float,
        never_skip: Sequence[int],
        fraction: float,
    ):
        super().__init__(model)
        self.layers = layers
        self.router = router
        self.tau = tau
        self.never_skip = sorted(set(never_skip))
        self.fraction = fraction
        self.reset_counts()
        self._install([(layer, self._forward_for(i, layer)) for i, layer in enumerate(layers)])

    def reset_counts(self) -> None:
        """Zero the counts of (token, layer) computations seen and skipped."""
        self.token_layers = 0
        self.skipped = 0
        self.skipped_per_layer = [0] * len(self.layers)

    def skipped_fraction(self) -> float:
        """Share of (token, layer) computations skipped since the last :meth:`reset_counts`."""
        return self.skipped / self.token_layers if self.token_layers else 0.0

    def report(self) -> dict[str, Any]:
        """A JSON-able dict: the target fraction, threshold, never-skipped layers, the counts since
        :meth:`reset_counts` (overall and per layer) and the router's per-layer R^2."""
        return {
            "method": "skip-layers",
            "fraction_target": self.fraction,
            "threshold": self.tau,
            "never_skip": self.never_skip,
            "token_layers": self.token_layers,
            "skipped": self.skipped,
            "skipped_fraction": self.skipped_fraction(),
            "skipped_per_layer": list(self.skipped_per_layer),
            "router_r2": list(self.router.r2),
        }

    def _forward_for(self, i: int, layer: nn.Module) -> Any:
        original = layer.forward
        w, b = self.router.weight[i], float(self.router.bias[i])
        can_skip = i not in self.never_skip and self.tau > -math.inf

        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Any:
            bsz, t = hidden_states.shape[:2]
            self.token_layers += bsz * t
            if not can_skip:
                return original(hidden_states, *args, **kwargs)
            score = _features(hidden_states) @ w.to(hidden_states.dtype) + b
            active = score >= self.tau
            n_skip = int((~active).sum())
            if n_skip == 0:
                return original(hidden_states, *args, **kwargs)
            self.skipped += n_skip
            self.skipped_per_layer[i] += n_skip
            return _partial_layer(layer, hidden_states, active, args, kwargs)

        return forward


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rot * sin


def _partial_layer(block: nn.Module, h: Tensor, active: Tensor, args: tuple, kwargs: dict) -> Tensor:
    """Run a Llama-style layer for the ``active`` tokens only ``(B, T)``; every token writes its keys and
    values to the cache. Returns the new hidden states ``(B, T, D)`` (skipped tokens unchanged)."""
    if args:
        raise ConfigError(
            "skip_layers_: the decoder layer was called with positional arguments it cannot read; "
            "call the model, not its layers"
        )
    layer = cast(_LlamaLayer, block)  # find_decoder_layers checked its structure
    att = layer.self_attn
    mask = kwargs.get("attention_mask")
    cache = kwargs.get("past_key_values")
    pos_emb = kwargs.get("position_embeddings")
    if pos_emb is None:
        raise UnsupportedModuleError(
            "skip_layers_ needs the rotary position_embeddings that the model passes to its "
            "layers (transformers >= 4.48 Llama-style models)"
        )
    cos, sin = pos_emb  # (B or 1, T, d)
    bsz, t, _ = h.shape
    hd = att.head_dim
    y = layer.input_layernorm(h)
    k = att.k_proj(y).view(bsz, t, -1, hd).transpose(1, 2)
    v = att.v_proj(y).view(bsz, t, -1, hd).transpose(1, 2)
    k = _rope(k, cos[:, None], sin[:, None])
    if cache is not None:
        k, v = cache.update(k, v, att.layer_idx)
    s = k.shape[-2]
    n_heads = att.q_proj.out_features // hd
    rep = n_heads // k.shape[1]
    out = h.clone()
    past = s - t
    for row in range(bsz):
        idx = active[row].nonzero().squeeze(-1)
        if idx.numel() == 0:
            continue
        ya = y[row, idx]
        q = att.q_proj(ya).view(1, -1, n_heads, hd).transpose(1, 2)
        crow = cos[min(row, cos.shape[0] - 1), idx]
        srow = sin[min(row, sin.shape[0] - 1), idx]
        q = _rope(q, crow[None, None], srow[None, None])
        if mask is not None and mask.dim() == 4:
            m = mask[row : row + 1, :, idx, :s]
            if m.dtype != torch.bool:
                m = m > torch.finfo(m.dtype).min / 2
        else:  # causal: query at absolute position past + i sees keys 0 .. past + i
            m = (torch.arange(s)[None, :] <= (past + idx)[:, None])[None, None]
        kk = k[row : row + 1].repeat_interleave(rep, dim=1)
        vv = v[row : row + 1].repeat_interleave(rep, dim=1)
        a = F.scaled_dot_product_attention(q, kk, vv, attn_mask=m, scale=att.scaling)
        a = att.o_proj(a.transpose(1, 2).reshape(1, idx.numel(), -1))[0]
        ha = h[row, idx] + a
        ha = ha + layer.mlp(layer.post_attention_layernorm(ha))
        out[row, idx] = ha
    return out


def skip_layers_(
    model: nn.Module,
    calibration: Iterable[Tensor] | None = None,
    *,
    fraction: float = 0.2,
    router: LayerRouter | None = None,
    never_skip: Sequence[int] | None = None,
    progress: bool | None = None,
) -> LayerSkipping:
    """Dynamic depth, in place: each token skips the decoder layers its router predicts it does not need.

    ``calibration``: token batches ``(B, T)`` to fit the router (:func:`calibrate_router`), or pass a fitted
    ``router=`` instead. ``fraction``: share of (token, layer) computations of the calibration text to skip,
    in [0, 1) (``0`` gives outputs bit-identical to the dense model); the realised share on other text
    differs and is counted (``patch.skipped_fraction()``). ``never_skip``: layer indices always computed
    (default: the first and the last layer). Skipped tokens still write their keys and values, so
    ``generate`` with the KV cache gives the same tokens as full forward passes (module docstring).

    Returns a :class:`LayerSkipping` (a context manager that restores on exit). Raises
    :class:`~prunekit.errors.UnsupportedModuleError` for models without Llama-style decoder layers,
    :class:`~prunekit.errors.ConfigError` for a fraction outside [0, 1), neither or both of calibration and
    router, or a model already patched; the model is unchanged when an error is raised.
    """
    layers = find_decoder_layers(model)
    if (calibration is None) == (router is None):
        raise ConfigError(
            "skip_layers_ needs calibration=token batches (to fit a router) or router=a fitted "
            "LayerRouter (from prunekit.dynamic.calibrate_router), exactly one of them"
        )
    if not 0 <= fraction < 1:
        raise ConfigError(f"fraction of layer computations to skip must be in [0, 1), got {fraction}")
    never = [0, len(layers) - 1] if never_skip is None else [int(i) for i in never_skip]
    bad = [i for i in never if not 0 <= i < len(layers)]
    if bad:
        raise ConfigError(f"never_skip takes layer indices in [0, {len(layers)}), got {bad}")
    if router is None:
        router = calibrate_router(model, calibration or [], progress=progress)
    if router.weight.shape[0] != len(layers):
        raise ConfigError(f"the router was fitted for {router.weight.shape[0]} layers, the model has {len(layers)}")
    tau = router.threshold(fraction, never)
    return LayerSkipping(model, layers, router, tau, never, fraction)
