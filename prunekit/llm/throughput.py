"""Tokens per second of causal LMs, prefill and decode, timed interleaved so that models compare fairly.

``throughput({"dense": dense, "pruned": pruned}, prompt_len=128, new_tokens=64)`` runs, for every repeat,
each model in turn (the order rotates from one repeat to the next) on the same prompt:

* prefill: one forward pass over ``batch_size x prompt_len`` tokens that fills the KV cache;
* decode: ``new_tokens`` greedy steps of one token each, reusing the cache (the regime of generation,
  bound by reading the weights once per token).

Every phase is timed with ``time.perf_counter`` under ``torch.inference_mode``. The ratios to the reference
model are taken per repeat (paired, so a slow moment of a shared machine hits both sides) and summarised by
their median and quartiles. The KV-cache decode loop is what ``generate`` does without its sampling logic;
structurally pruned models (fewer heads, channels or layers) are faster in both phases, unstructured zeros
are not (dense kernels).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, DataError

__all__ = ["Throughput", "throughput"]


def _quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q = statistics.quantiles(xs, n=4, method="inclusive")
    return q[0], statistics.median(xs), q[2]


@dataclass
class Throughput:
    """Per model: prefill and decode tokens/s (median and quartiles over repeats), and per-repeat ratios to
    ``reference`` (``> 1``: faster than the reference).

    ``prefill_tps[name]`` / ``decode_tps[name]``: ``(q1, median, q3)`` tokens per second;
    ``prefill_ratio[name]`` / ``decode_ratio[name]``: ``(q1, median, q3)`` of the paired ratios
    ``tps(name) / tps(reference)``; ``raw``: every timing in seconds.
    """

    reference: str
    settings: dict[str, Any]
    prefill_tps: dict[str, tuple[float, float, float]]
    decode_tps: dict[str, tuple[float, float, float]]
    prefill_ratio: dict[str, tuple[float, float, float]]
    decode_ratio: dict[str, tuple[float, float, float]]
    parameters: dict[str, int]
    raw: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict: settings, tokens/s and ratios as ``[q1, median, q3]``, parameter counts and the
        raw timings (``raw_seconds``)."""
        return {
            "reference": self.reference,
            "settings": self.settings,
            "prefill_tokens_per_s": self.prefill_tps,
            "decode_tokens_per_s": self.decode_tps,
            "prefill_ratio": self.prefill_ratio,
            "decode_ratio": self.decode_ratio,
            "parameters": self.parameters,
            "raw_seconds": self.raw,
        }

    def __str__(self) -> str:
        lines = []
        for name in self.decode_tps:
            lines.append(
                f"{name}: prefill {self.prefill_tps[name][1]:.0f} tok/s (x{self.prefill_ratio[name][1]:.2f}), "
                f"decode {self.decode_tps[name][1]:.1f} tok/s (x{self.decode_ratio[name][1]:.2f}), "
                f"{self.parameters[name]:,} parameters"
            )
        return "\n".join(lines)


@torch.inference_mode()
def _run(model: nn.Module, ids: Tensor, new_tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    past = out.past_key_values
    token = out.logits[:, -1:].argmax(-1)
    t1 = time.perf_counter()
    for _ in range(new_tokens):
        out = model(input_ids=token, past_key_values=past, use_cache=True)
        past = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def throughput(
    models: Mapping[str, nn.Module],
    *,
    reference: str | None = None,
    prompt_len: int = 128,
    new_tokens: int = 64,
    batch_size: int = 1,
    repeats: int = 5,
    warmup: int = 1,
    prompt: Tensor | None = None,
    seed: int = 0,
) -> Throughput:
    """Prefill and decode tokens/s of each model, timed interleaved, with ratios to ``reference``.

    Args:
        models: name -> causal LM (Hugging Face ``*ForCausalLM``, same vocabulary); at least one.
        reference: the model the ratios are relative to (default: the first).
        prompt_len, new_tokens, batch_size: the prompt shape ``(batch_size, prompt_len)`` and the greedy
            decode steps after it.
        repeats, warmup: timed rounds (each runs every model once, order rotating) after untimed ones.
        prompt: token ids ``(batch, seq)`` to use instead of random ones (``seed``) from the vocabulary.

    Returns a :class:`Throughput` (tokens per second; ratios > 1 mean faster than the reference). The models
    are put in eval mode for the measurement and returned to their mode; nothing else changes.

    Raises ConfigError for an empty ``models``, an unknown ``reference`` or counts below 1; DataError for a
    prompt that is not 2-D token ids.
    """
    if not models:
        raise ConfigError("throughput needs at least one model: pass {'dense': model, ...}")
    names = list(models)
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise ConfigError(f"reference {reference!r} is not one of the models ({', '.join(names)})")
    for key, value in (
        ("prompt_len", prompt_len),
        ("new_tokens", new_tokens),
        ("batch_size", batch_size),
        ("repeats", repeats),
    ):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} takes a whole number >= 1, got {value!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup takes a whole number >= 0, got {warmup!r}")
    if prompt is None:
        vocab = min(int(getattr(m.config, "vocab_size", 0) or 0) for m in models.values())
        if vocab < 1:
            raise ConfigError("the models do not state config.vocab_size; pass prompt= (token ids)")
        g = torch.Generator().manual_seed(seed)
        prompt = torch.randint(0, vocab, (batch_size, prompt_len), generator=g)
    elif not isinstance(prompt, Tensor) or prompt.dim() != 2 or prompt.dtype not in (torch.int32, torch.int64):
        raise DataError("prompt takes token ids shaped (batch, seq) as an integer tensor")
    prompt = prompt.long()
    modes = {n: m.training for n, m in models.items()}
    raw: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in names}
    try:
        for m in models.values():
            m.eval()
        for r in range(warmup + repeats):
            order = names[r % len(names) :] + names[: r % len(names)]
            for n in order:
                dev = next(models[n].parameters()).device
                pre, dec = _run(models[n], prompt.to(dev), new_tokens)
                if r >= warmup:
                    raw[n]["prefill"].append(pre)
                    raw[n]["decode"].append(dec)
    finally:
        for n, m in models.items():
            m.train(modes[n])
    tokens_pre = prompt.numel()
    tokens_dec = prompt.shape[0] * new_tokens
    pre_tps = {n: _quartiles([tokens_pre / t for t in raw[n]["prefill"]]) for n in names}
    dec_tps = {n: _quartiles([tokens_dec / t for t in raw[n]["decode"]]) for n in names}
    pre_ratio = {
        n: _quartiles([b / a for a, b in zip(raw[n]["prefill"], raw[reference]["prefill"], strict=True)]) for n in names
    }
    dec_ratio = {
        n: _quartiles([b / a for a, b in zip(raw[n]["decode"], raw[reference]["decode"], strict=True)]) for n in names
    }
    settings = {
        "prompt_len": int(prompt.shape[1]),
        "batch_size": int(prompt.shape[0]),
        "new_tokens": new_tokens,
        "repeats": repeats,
        "warmup": warmup,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "order": "interleaved, rotating each repeat",
    }
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in models.items()}
    return Throughput(reference, settings, pre_tps, dec_tps, pre_ratio, dec_ratio, params, raw)
