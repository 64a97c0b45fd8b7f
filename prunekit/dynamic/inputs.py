"""Inputs for measuring run-time pruning: Austen sentences, the offline sentence encoder, its pooling."""

from __future__ import annotations

import re
from typing import Any

import torch

from prunekit.errors import ConfigError

__all__ = ["austen_sentences", "encode", "load_minilm"]


def austen_sentences(n: int, novel: str = "persuasion", min_words: int = 4) -> list[str]:
    """The first ``n`` sentences of at least ``min_words`` words of an Austen novel (chapter headings
    dropped; a sentence ends at . ! or ? followed by white space). Raises
    :class:`~prunekit.errors.ConfigError` when ``n`` is not a whole number >= 1 or the novel has fewer."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"the number of sentences must be a whole number >= 1, got {n!r}")
    from prunekit.datasets import load_text

    text = load_text(novel)
    text = re.sub(r"\s+", " ", text)
    out = []
    for s in re.split(r"(?<=[.!?])\s+", text):
        s = s.strip()
        if len(s.split()) >= min_words and not s.lower().startswith("chapter"):
            out.append(s)
        if len(out) == n:
            return out
    raise ConfigError(f"{novel} has only {len(out)} sentences of at least {min_words} words; ask for at most that many")


def load_minilm() -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the offline all-MiniLM-L6-v2 sentence encoder (eval mode), from the package
    :func:`prunekit.datasets.minilm_model_dir` locates; raises what that raises when it is not installed."""
    from transformers import AutoModel, AutoTokenizer

    from prunekit.datasets import minilm_model_dir

    d = minilm_model_dir()
    return AutoModel.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


@torch.no_grad()
def encode(
    model: Any, batches: list[dict[str, torch.Tensor]], patch: Any = None, counts: list | None = None
) -> torch.Tensor:
    """Sentence embeddings ``(n, 384)``: mean over real tokens, L2-normalised (the model card's pooling).
    With a ``patch``, ``counts`` receives (tokens kept over all blocks, dense block-tokens) per batch."""
    outs = []
    for enc in batches:
        h = model(**enc).last_hidden_state
        if patch is not None and counts is not None:
            rep, rows = patch.report(), enc["input_ids"].shape[0]
            counts.append((sum(rep["tokens_per_block"]) * rows, rep["blocks"] * rep["input_tokens"] * rows))
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
        outs.append(torch.nn.functional.normalize(e, dim=-1))
    return torch.cat(outs)
