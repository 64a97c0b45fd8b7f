"""Calibration sets and perplexity under a fixed, recorded protocol.

Every figure a user keeps says how it was obtained: :class:`CalibrationSet` and :class:`Perplexity` carry a
``protocol`` dict (text names and hashes, the tokenizer, sequence length, stride, token counts, the seed and
the SHA-256 of the exact token ids) that benchmarks write next to the number.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import torch
from torch import Tensor, nn

from prunekit.calls import eval_mode
from prunekit.errors import DataError

__all__ = [
    "CalibrationSet",
    "DEFAULT_EVAL_TOKENS",
    "Perplexity",
    "bos_prefix",
    "calibration_batches",
    "perplexity",
    "token_hash",
    "tokenize",
]


def token_hash(ids: Tensor) -> str:
    """SHA-256 (hex) of token ids (as int64, little-endian) with their shape; any shape."""
    x = ids.detach().to("cpu", torch.int64).contiguous()
    digest = hashlib.sha256(f"int64|{tuple(x.shape)}|".encode())
    digest.update(x.numpy().tobytes())
    return digest.hexdigest()


def _text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def tokenize(tokenizer: Any, text: str) -> Tensor:
    """The whole text as one 1-D tensor of token ids (the tokenizer's own; no special tokens added)."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer itself puts a BOS token before a text (Gemma, LLaMA), else ``[]``.

    Windows for calibration and perplexity follow the tokenizer's own convention: models trained to always
    see BOS first degrade badly without it.
    """
    try:
        ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    except Exception:  # a minimal tokenizer without special-token support
        return []
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None and ids and ids[0] == bos else []


def _tokenizer_name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


@dataclass
class CalibrationSet:
    """``n_samples`` windows of ``seq_len`` tokens drawn at random (seeded) from a text, as batches.

    Iterating over it yields the batches (token ids, shape ``(batch_size, seq_len)``), so it can be passed
    as ``calibration=`` directly; ``cal[i]`` is batch ``i`` and ``cal[i:j]`` a list of those batches.
    """

    batches: list[Tensor]
    protocol: dict[str, Any]

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.batches)

    def __repr__(self) -> str:
        shapes = sorted({tuple(b.shape) for b in self.batches})
        texts = self.protocol.get("texts")
        return f"CalibrationSet({len(self.batches)} batches of shape {', '.join(map(str, shapes))}, texts={texts})"

    @overload
    def __getitem__(self, index: int) -> Tensor: ...
    @overload
    def __getitem__(self, index: slice) -> list[Tensor]: ...
    def __getitem__(self, index: int | slice) -> Tensor | list[Tensor]:
        return self.batches[index]

    def __len__(self) -> int:
        return len(self.batches)


def calibration_batches(
    tokenizer: Any,
    texts: str | Sequence[tuple[str, str]],
    *,
    n_samples: int = 32,
    seq_len: int = 512,
    seed: int = 0,
    batch_size: int = 1,
) -> CalibrationSet:
    """Random windows of ``seq_len`` tokens from ``texts`` (one string, or ``[(name, text), ...]``).

    Window starts are drawn with ``torch.Generator().manual_seed(seed)``; a window begins with BOS when the
    tokenizer adds one (:func:`bos_prefix`). The protocol records the text
    names and hashes, the tokenizer and the hash of the drawn token ids. Batches are ``[batch_size, seq_len]``
    token ids (the last one smaller when ``batch_size`` does not divide ``n_samples``).

    Raises :class:`~prunekit.errors.DataError` for ``n_samples``, ``seq_len`` or ``batch_size`` that are not
    whole numbers of at least 1, for ``texts`` of another form and for a text of no more than ``seq_len`` tokens.
    """
    for what, value, example in (
        ("n_samples", n_samples, 32),
        ("seq_len", seq_len, 512),
        ("batch_size", batch_size, 1),
    ):
        if isinstance(value, bool) or not hasattr(type(value), "__index__"):  # int, numpy integers
            raise DataError(f"{what} must be a whole number, got {value!r}: pass e.g. {what}={example}")
    n_samples, seq_len, batch_size = int(n_samples), int(seq_len), int(batch_size)
    named = [("text", texts)] if isinstance(texts, str) else list(texts)
    if not all(isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, str) for x in t) for t in named):
        raise DataError(
            "texts is one string or a list of (name, text) pairs, e.g. [('emma', load_text('emma'))]; got "
            f"{type(texts).__name__} of {', '.join(sorted({type(t).__name__ for t in named})) or 'nothing'}"
        )
    if n_samples < 1 or seq_len < 1 or batch_size < 1:
        raise DataError(
            f"calibration needs at least one window of at least one token, got n_samples={n_samples}, "
            f"seq_len={seq_len}, batch_size={batch_size}: pass n_samples, seq_len and batch_size >= 1 (prunekit "
            "prune-llm: --calibration-samples N and --seq-len N, both at least 1)"
        )
    ids = torch.cat([tokenize(tokenizer, t) for _, t in named]) if named else torch.empty(0, dtype=torch.long)
    if ids.numel() <= seq_len:
        raise DataError(f"the calibration text has {ids.numel()} tokens, fewer than seq_len={seq_len}; pass more text")
    prefix = torch.tensor(bos_prefix(tokenizer), dtype=torch.long)
    length = seq_len - prefix.numel()
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - length, (n_samples,), generator=g)
    windows = torch.stack([torch.cat([prefix, ids[s : s + length]]) for s in starts.tolist()])
    batches = list(windows.split(batch_size))
    protocol = {
        "texts": [name for name, _ in named],
        "text_sha256": {name: _text_sha256(t) for name, t in named},
        "tokenizer": _tokenizer_name(tokenizer),
        "n_samples": n_samples,
        "seq_len": seq_len,
        "seed": seed,
        "bos": bool(prefix.numel()),
        "token_sha256": token_hash(windows),
    }
    return CalibrationSet(batches, protocol)


@dataclass
class Perplexity:
    """exp(mean negative log-likelihood per predicted token) and the protocol that produced it."""

    ppl: float
    nll: float
    tokens: int
    protocol: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        p = self.protocol
        scope = (
            f"its first {p['eval_tokens']:,} of {p['text_tokens']:,} tokens"
            if p.get("eval_tokens", 0) < p.get("text_tokens", 0)
            else f"all {p.get('eval_tokens', self.tokens):,} tokens"
        )
        return (
            f"perplexity {self.ppl:.3f} on {p.get('corpus', 'the text')} ({scope}; {self.tokens:,} predicted, "
            f"windows of {p.get('seq_len')} tokens, stride {p.get('stride')})"
        )


DEFAULT_EVAL_TOKENS = 4096


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer: Any,
    text: str,
    *,
    name: str = "text",
    seq_len: int = 512,
    stride: int | None = None,
    max_tokens: int | None = DEFAULT_EVAL_TOKENS,
    device: str | torch.device | None = None,
) -> Perplexity:
    """Sliding-window perplexity of ``text`` (its first ``max_tokens`` tokens; ``None``: the whole text).

    The default evaluates the first 4,096 tokens, the length of the figures in the README, so a call takes
    seconds on a CPU and its number compares with the published ones; ``str(result)`` says what was evaluated.

    Windows of ``seq_len`` tokens (a BOS token first when the tokenizer adds one, see :func:`bos_prefix`)
    start every ``stride`` text tokens (default: disjoint windows). Each
    token is predicted at most once, by the first window that reaches it, with the context that window has;
    without BOS a window's first token is not predicted by it (so with disjoint windows the first token of
    every window goes unpredicted, as in the usual Hugging Face recipe).
    ``ppl = exp(sum NLL / predicted tokens)``.

    Raises :class:`~prunekit.errors.DataError` for a stride outside ``(0, seq_len - BOS]``, ``max_tokens`` below
    2, or a text of fewer than two tokens.
    """
    prefix = torch.tensor(bos_prefix(tokenizer), dtype=torch.long)
    p = prefix.numel()
    length = seq_len - p  # text tokens per window
    stride = length if stride is None else stride
    if length < 1 or not 0 < stride <= length:
        raise DataError(f"stride must be in (0, {length}] (seq_len minus a BOS token if any), got {stride}")
    ids = tokenize(tokenizer, text)
    text_tokens = int(ids.numel())
    if max_tokens is not None:
        if max_tokens < 2:
            raise DataError(f"max_tokens must be at least 2 (or None for the whole text), got {max_tokens}")
        ids = ids[:max_tokens]
    if ids.numel() < 2:
        raise DataError("the evaluation text has fewer than two tokens")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    total, count, predicted_to = 0.0, 0, 1 - p  # text tokens [.., predicted_to) are already scored
    with eval_mode(model):
        for begin in range(0, ids.numel(), stride):
            end = min(begin + length, ids.numel())
            window = torch.cat([prefix, ids[begin:end]]).unsqueeze(0).to(dev)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1].float()
            targets = window[0, 1:]  # text tokens begin + 1 - p .. end - 1
            first_new = max(predicted_to - (begin + 1 - p), 0)
            if first_new < targets.numel():
                nll = torch.nn.functional.cross_entropy(logits[first_new:], targets[first_new:], reduction="sum")
                total += float(nll)
                count += targets.numel() - first_new
            predicted_to = end
            if end == ids.numel():
                break
    nll_mean = total / count
    protocol = {
        "corpus": name,
        "text_sha256": _text_sha256(text),
        "tokenizer": _tokenizer_name(tokenizer),
        "seq_len": seq_len,
        "stride": stride,
        "bos": bool(p),
        "max_tokens": max_tokens,
        "eval_tokens": int(ids.numel()),
        "text_tokens": text_tokens,
        "predicted_tokens": count,
        "token_sha256": token_hash(ids),
    }
    return Perplexity(math.exp(nll_mean), nll_mean, count, protocol)
