"""Training-free token reduction for transformers: ToMe token merging and EViT token pruning.

Both act between a block's attention and its MLP, so every later block computes on fewer tokens. The
model is patched in place and reversibly (:func:`prunekit.dynamic.restore_`, or use the returned object as
a context manager); its ``state_dict`` is unchanged. The last block gives the tokens back at the input
length (each input token receives the token that carries it), so the output keeps its shape and a mean
over the real tokens (sentence-encoder pooling) is the size-weighted mean of the merged tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

from torch import Tensor, nn

from prunekit.dynamic.families import Family, describe_supported, find_blocks
from prunekit.dynamic.patching import Patch
from prunekit.dynamic.tokens import (
    TokenState,
    attentive_prune,
    bipartite_merge,
    initial_state,
    key_bias,
    real_from_mask,
    unmerge,
)
from prunekit.errors import ConfigError, ModelError, UnsupportedModuleError

__all__ = ["TokenReduction", "default_prune_layers", "merge_tokens_", "prune_tokens_"]


class TokenReduction(Patch):
    """A token-reduction patch (see :func:`merge_tokens_` and :func:`prune_tokens_`).

    After each forward pass, ``last_tokens[i]`` is the mean number of real tokens per input that entered
    block ``i`` (padding not counted), ``input_tokens`` the mean number of real input tokens.
    """

    def __init__(
        self,
        model: nn.Module,
        family: Family,
        blocks: list[nn.Module],
        container: str,
        method: str,
        schedule: list[float],
        *,
        protect: int,
        proportional_attention: bool,
        ratio: bool = False,
        metric: str = "keys",
    ):
        super().__init__(model)
        self.ratio = ratio
        self.metric = metric
        self.kind = method
        self.family = family
        self.blocks = blocks
        self.container = container
        self.schedule = schedule
        self.protect = protect  # leading tokens never merged or pruned
        self.proportional_attention = proportional_attention
        self.last_tokens: list[float] = []
        self.input_tokens: float = 0.0
        self._state: TokenState | None = None
        self._install([(blk, self._forward_for(i, blk)) for i, blk in enumerate(blocks)])

    def _active(self, i: int) -> bool:
        return self.schedule[i] > 0 if self.kind == "tome" else self.schedule[i] < 1

    def _forward_for(self, i: int, block: nn.Module) -> Any:
        original = block.forward  # the bound class forward

        def forward(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            return self._run(i, block, original, hidden_states, args, kwargs)

        return forward

    def _run(self, i: int, block: nn.Module, original: Any, x: Tensor, args: tuple, kwargs: dict) -> Tensor:
        if i == 0:
            self._state, self.last_tokens = None, []
        st = self._state
        if st is not None and st.tokens != x.shape[1]:
            self._state = None
            raise ModelError(
                f"block {i} of {self.container!r} received {x.shape[1]} tokens but the previous block produced "
                f"{st.tokens}: with {self.kind} the blocks must run in order, from block 0, in one forward pass"
            )
        if st is None:
            real = None
            if self.family.padding_mask:
                mask = args[0] if args else kwargs.get("attention_mask")
                real = real_from_mask(mask, x.shape[1]) if isinstance(mask, Tensor) else None
            n = float(real.sum(1).float().mean()) if real is not None else float(x.shape[1])
            if i == 0:
                self.input_tokens = n
            self.last_tokens.append(n)
            if not self._active(i):
                return original(x, *args, **kwargs)
            x, st = initial_state(x, real)
        else:
            self.last_tokens.append(float(st.real.sum(1).float().mean()))
        if not self.family.padding_mask and any(a is not None and a is not False for a in (*args, *kwargs.values())):
            self._state = None
            raise ModelError(
                f"block {i} of {self.container!r} was called with an attention mask or causal flag; {self.kind} "
                f"cannot honour them on {self.family.name} blocks: call the model without attn_mask / is_causal, "
                "or restore_ it first"
            )
        bias = key_bias(st, self.proportional_attention)
        amount = self.schedule[i]
        holder = [st]

        def reduce(h: Tensor, metric: Tensor, cls: Tensor | None) -> Tensor:
            if not self._active(i):
                return h
            if self.kind == "tome":
                h, holder[0] = bipartite_merge(
                    h,
                    h if self.metric == "hidden" else metric,
                    holder[0],
                    None if self.ratio else int(amount),
                    ratio=amount if self.ratio else None,
                    protect_first=self.protect,
                )
            else:
                assert cls is not None
                h, holder[0] = attentive_prune(h, cls, holder[0], float(amount), protect=self.protect)
            return h

        out = self.family.run(block, x, bias, self.kind == "evit" and self._active(i), reduce)
        st = holder[0]
        if i == len(self.blocks) - 1:
            self._state = None
            return unmerge(out, st)
        self._state = st
        return out

    def report(self) -> dict[str, Any]:
        """What the last forward pass computed: tokens entering each block and the share of block-token
        computations kept (``sum(last_tokens) / (blocks * input_tokens)``)."""
        total = len(self.blocks) * self.input_tokens
        return {
            "method": self.kind,
            "family": self.family.name,
            "metric": self.metric if self.kind == "tome" else "class-token attention",
            "blocks": len(self.blocks),
            "schedule": list(self.schedule),
            "schedule_unit": "share of tokens merged"
            if self.ratio
            else ("tokens merged" if self.kind == "tome" else "keep rate"),
            "input_tokens": self.input_tokens,
            "tokens_per_block": list(self.last_tokens),
            "token_share": (sum(self.last_tokens) / total) if total and self.last_tokens else None,
        }


def _resolve(model: nn.Module, what: str) -> tuple[Family, list[nn.Module], str]:
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{what} takes an nn.Module, got {type(model).__name__}")
    flags = ("grad_checkpointing", "gradient_checkpointing")
    if any(getattr(m, f, False) is True for m in model.modules() for f in flags):
        raise ConfigError(
            f"{what}: the model recomputes its blocks in the backward pass (gradient checkpointing), which would "
            "rerun them on other token counts; turn it off first (timm: model.set_grad_checkpointing(False), "
            "transformers: model.gradient_checkpointing_disable())"
        )
    found = find_blocks(model)
    if found is None:
        raise UnsupportedModuleError(
            f"{what}: {type(model).__name__} has no transformer blocks with a token dimension that prunekit "
            f"recognises. Supported: {describe_supported()}. Convolutional networks and other models without "
            "tokens cannot merge or prune tokens; for channels see the registered methods (`prunekit methods`)"
        )
    return found


def _owner(model: nn.Module, container: str) -> nn.Module:
    """The module that holds the block container (where timm keeps ``num_prefix_tokens``)."""
    parent = container.rpartition(".")[0]
    return model.get_submodule(parent) if parent else model


def _per_block(value: Any, n: int, name: str, kind: type) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ConfigError(
                f"{name} as a sequence needs one value per block: the model has {n} blocks, got {len(value)}"
            )
        return [kind(v) for v in value]
    return [kind(value)] * n


def merge_tokens_(
    model: nn.Module,
    r: int | Sequence[int] | None = None,
    *,
    ratio: float | Sequence[float] | None = None,
    protect_cls: bool | None = None,
    proportional_attention: bool = True,
    metric: str | None = None,
) -> TokenReduction:
    """Token merging (ToMe; Bolya et al. 2023, "Token Merging: Your ViT But Faster", ICLR), in place.

    In every transformer block, after attention, ``r`` tokens per input are merged into their most similar
    partner by bipartite soft matching on the attention keys (averaged over heads); merged tokens carry
    their size ``s`` (how many input tokens they stand for) and attention adds ``log s`` to their scores
    (proportional attention). A sequence of ``(N, C)`` tokens leaves block ``i`` with
    ``N - sum(r[:i+1])`` tokens (fewer when a row runs out: at most half of its unprotected tokens merge
    per block); the model's output keeps its ``(B, N, C)`` shape (tokens unmerged at the end).

    ``r``: tokens merged per block (an int for every block, or one int per block). ``ratio`` (instead of
    ``r``, for text of varied length): the share of each row's current tokens merged per block, in
    [0, 0.5] (``floor(ratio * n)`` tokens), so a 6-token sentence is not merged away as fast as a 60-token
    one. ``r = 0`` / ``ratio = 0`` give outputs bit-identical to the dense model. ``protect_cls``: keep
    the model's leading tokens out of the merging (the class token, and a DeiT's distillation token or a
    ViT's register tokens where it has them); default True. Padded batches
    (an ``attention_mask``) are honoured: padding is never merged into a real token and each row is reduced
    as it would be alone. ``metric``: what the matching compares, ``"keys"`` (the block's attention keys
    averaged over heads, as the paper) or ``"hidden"`` (the token states being merged); default: keys for
    ViTs, hidden for BERT-style encoders (post-norm: their merged states are not what the keys were
    computed from; on all-MiniLM-L6-v2 hidden keeps the embeddings much closer to dense, see
    docs/results/dynamic/minilm.md).

    Returns a :class:`TokenReduction` (a context manager; its ``report()`` counts the tokens used).
    Raises :class:`~prunekit.errors.UnsupportedModuleError` for models without a token dimension,
    :class:`~prunekit.errors.ConfigError` for an unknown ``metric``, a negative ``r``, a ratio outside
    [0, 0.5], both or neither
    of ``r`` and ``ratio``, or a model already patched; the model is unchanged when an error is raised.
    """
    if (r is None) == (ratio is None):
        raise ConfigError(
            "merge_tokens_ takes r= (tokens merged per block, e.g. r=8) or ratio= (share of tokens "
            "merged per block, e.g. ratio=0.1), exactly one of them"
        )
    if metric not in (None, "keys", "hidden"):
        raise ConfigError(
            f"metric is 'keys' (attention keys, as in ToMe) or 'hidden' (the token states), got {metric!r}"
        )
    fam, blocks, container = _resolve(model, "merge_tokens_")
    prefix, _ = fam.prefix_of(_owner(model, container))
    protect = prefix if protect_cls is None or protect_cls else 0
    metric = metric or fam.default_metric
    if ratio is not None:
        ratios = _per_block(ratio, len(blocks), "ratio", float)
        if any(not 0 <= v <= 0.5 for v in ratios):
            raise ConfigError(f"ratio is the share of a row's tokens merged per block, in [0, 0.5], got {ratio!r}")
        return TokenReduction(
            model,
            fam,
            blocks,
            container,
            "tome",
            ratios,
            protect=protect,
            proportional_attention=proportional_attention,
            ratio=True,
            metric=metric,
        )
    values: list[Any] = list(r) if isinstance(r, (list, tuple)) else [r]  # what the caller passed, checked here
    if any(isinstance(v, bool) or not float(v).is_integer() or v < 0 for v in values):
        raise ConfigError(f"r is a number of tokens merged per block, an integer >= 0 (or one per block), got {r!r}")
    rs = _per_block(r, len(blocks), "r", int)
    return TokenReduction(
        model,
        fam,
        blocks,
        container,
        "tome",
        [float(v) for v in rs],
        protect=protect,
        proportional_attention=proportional_attention,
        metric=metric,
    )


def default_prune_layers(n_blocks: int) -> list[int]:
    """EViT's placement generalised: blocks ``n//4, n//2, 3n//4`` (the 4th, 7th and 10th of 12)."""
    return sorted({n_blocks // 4, n_blocks // 2, (3 * n_blocks) // 4})


def prune_tokens_(
    model: nn.Module,
    keep_rate: float | Sequence[float] = 0.7,
    *,
    layers: Sequence[int] | None = None,
    proportional_attention: bool = True,
) -> TokenReduction:
    """Attentive token pruning (EViT; Liang et al. 2022, "Not All Patches are What You Need: Expediting
    Vision Transformers via Token Reorganizations", ICLR), in place.

    In the pruning blocks, after attention, each input keeps its class token and the
    ``ceil(keep_rate * (n - 1))`` tokens with the highest class-token attention (averaged over heads); the
    others are fused into one token, their attention-weighted average, which carries their total size.
    ``keep_rate`` is one rate applied in ``layers`` (default :func:`default_prune_layers`: blocks 3, 6 and 9
    of 12), or one rate per block (a schedule over depth; 1.0 = no pruning in that block). ``keep_rate = 1``
    gives outputs bit-identical to the dense model. Padded batches are honoured as in :func:`merge_tokens_`.
    The model's output keeps its ``(B, N, C)`` shape (each input token receives the token carrying it).

    Raises :class:`~prunekit.errors.UnsupportedModuleError` for models without a token dimension,
    :class:`~prunekit.errors.ConfigError` for a rate outside (0, 1], a bad layer index or a model
    already patched; the model is unchanged when an error is raised.
    """
    fam, blocks, container = _resolve(model, "prune_tokens_")
    n = len(blocks)
    if isinstance(keep_rate, (list, tuple)):
        if layers is not None:
            raise ConfigError("pass keep_rate as one rate with layers=[...], or one rate per block without layers")
        rates = _per_block(keep_rate, n, "keep_rate", float)
    else:
        chosen = default_prune_layers(n) if layers is None else [int(v) for v in layers]
        bad = [v for v in chosen if not 0 <= v < n]
        if bad:
            raise ConfigError(f"layers must be block indices in [0, {n}), got {bad}")
        rate = cast(float, keep_rate)  # neither list nor tuple: one rate
        rates = [float(rate) if i in chosen else 1.0 for i in range(n)]
    if any(not (0 < v <= 1) or math.isnan(v) for v in rates):
        raise ConfigError(f"keep_rate is the share of tokens kept, in (0, 1], got {keep_rate!r}")
    prefix, has_cls = fam.prefix_of(_owner(model, container))
    if not has_cls:
        raise UnsupportedModuleError(
            f"prune_tokens_ ranks tokens by class-token attention; this {fam.name} model has no class token "
            "(e.g. a timm ViT built with class_token=False); use merge_tokens_ (ToMe) instead"
        )
    return TokenReduction(
        model, fam, blocks, container, "evit", rates, protect=prefix, proportional_attention=proportional_attention
    )
