"""Run a causal LM exported to OpenVINO with its key/value cache (``export_openvino(..., kv_cache=True)``):
whole-sequence logits and greedy generation, the cache carried between calls as numpy arrays."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.deploy._common import report_path_of
from prunekit.deploy._kv import kv_input_names, kv_output_names
from prunekit.deploy.errors import require
from prunekit.deploy.openvino import OvModule, dense_export, runtime_config
from prunekit.errors import CheckpointError, ConfigError, DataError, ModelError
from prunekit.eval.latency import LatencyComparison, compare_latency

__all__ = ["GENERATION_TOKENS", "GreedyCall", "OpenVINOCausalLM", "hf_greedy", "measure_generation"]


class OpenVINOCausalLM(nn.Module):
    """A causal LM exported by :func:`prunekit.deploy.export_openvino` with ``kv_cache=True``, compiled on the
    CPU.

    ``path``: the ``.xml``; ``config``: the CPU plugin settings (default: those recorded at export in its
    report, as :func:`prunekit.deploy.load_openvino` applies them, with ``threads`` threads; without a report:
    inference precision f32). Calling it gives the logits ``[batch, seq, vocab]`` (float32) of ``input_ids
    [batch, seq]`` from an empty cache; :meth:`generate` decodes greedily with the cache.

    Raises :class:`~prunekit.errors.CheckpointError` when the file does not exist and
    :class:`~prunekit.errors.ModelError` when the IR is not a decoding step with a cache (exported without
    ``kv_cache=True``).
    """

    def __init__(
        self, path: str | os.PathLike, *, config: dict[str, Any] | None = None, threads: int | None = 1
    ) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path} does not exist; export with prunekit.deploy.export_openvino(kv_cache=True)")
        if config is None:
            report = report_path_of(path)
            recorded = json.loads(report.read_text()).get("runtime_config", {}) if report.is_file() else {}
            config = runtime_config(
                precision=recorded.get("INFERENCE_PRECISION_HINT", "f32"),
                threads=threads,
                sparse_rate=recorded.get("CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"),
            )
        self.runtime = OvModule(path, config)
        names = self.runtime.input_names
        n_layers = (len(names) - 3) // 2
        if len(names) < 5 or names != kv_input_names(n_layers):
            raise ModelError(
                f"{path} takes the inputs {', '.join(names[:5])}{'...' if len(names) > 5 else ''}, not a decoding "
                "step with a key/value cache; export the model with export_openvino(..., kv_cache=True)"
            )
        outputs = [port.get_any_name() for port in self.runtime.compiled.outputs]
        if outputs != kv_output_names(n_layers):
            raise ModelError(f"{path} returns {', '.join(outputs[:3])}..., not logits and the grown cache")
        self.n_layers = n_layers
        self.layout: list[tuple[int, int]] = []
        for port in self.runtime.compiled.inputs[3::2]:
            shape = port.get_partial_shape()
            self.layout.append((shape[1].get_length(), shape[3].get_length()))
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)  # a device for code that reads one

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """A cache holding no token: ``[batch, kv_heads_i, 0, head_dim]`` float32 zeros, key then value per
        layer."""
        return [np.zeros((batch, h, 0, d), dtype=np.float32) for h, d in self.layout for _ in range(2)]

    def step(
        self, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray, cache: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One call of the graph: logits ``[batch, seq, vocab]`` and the grown cache (``[batch, kv_heads_i,
        past + seq, head_dim]`` each) for ``input_ids [batch, seq]``, ``attention_mask [batch, past + seq]``,
        ``position_ids [batch, seq]`` (int64) and ``cache`` (key, value per layer, ``past`` >= 0)."""
        out = self.runtime.run([input_ids, attention_mask, position_ids, *cache])
        return out[0], out[1:]

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[batch, seq, vocab]`` (float32) of ``input_ids [batch, seq]`` from an empty cache;
        ``attention_mask [batch, seq]`` (1 = token, 0 = padding; default all ones)."""
        ids = self._checked_ids(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _mask(attention_mask, ids.shape)
        logits, _ = self.step(ids, mask, _positions(mask), self.empty_cache(ids.shape[0]))
        return torch.from_numpy(logits)

    def _checked_ids(self, input_ids: Any) -> np.ndarray:
        """``input_ids`` as int64 numpy; :class:`~prunekit.errors.DataError` for ids outside the vocabulary
        (the logits' width), which the runtime would read past its embedding table without an error."""
        ids = _ids(input_ids)
        width = self.runtime.compiled.outputs[0].get_partial_shape()[-1]
        if width.is_static and ids.size and (ids.min() < 0 or ids.max() >= width.get_length()):
            bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
            raise DataError(
                f"token id {bad} is outside the model's vocabulary (ids 0 to {width.get_length() - 1}); tokenize "
                "with the model's own tokenizer"
            )
        return ids

    def generate(
        self,
        input_ids: Tensor,
        max_new_tokens: int,
        *,
        attention_mask: Tensor | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
    ) -> Tensor:
        """Greedy decoding: the prompt ``input_ids [batch, prompt]`` followed by up to ``max_new_tokens``
        tokens, each the argmax of the logits, as ``[batch, prompt + new]`` int64 (as ``transformers``
        ``generate(do_sample=False)``). The prompt runs in one call from an empty cache, then one call per
        token with the cache carried. ``attention_mask [batch, prompt]``: 0 marks (left) padding; positions
        count the unmasked tokens as ``transformers`` counts them. With ``eos_token_id``, a row that produced
        it continues with ``pad_token_id`` (default: ``eos_token_id``), and decoding stops when every row has.
        Raises :class:`~prunekit.errors.ConfigError` for ``max_new_tokens`` < 0 and
        :class:`~prunekit.errors.DataError` for ids outside the vocabulary or padding that is not on the left."""
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens is an integer >= 0, got {max_new_tokens!r}")
        ids = self._checked_ids(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else _mask(attention_mask, ids.shape)
        if (np.diff(mask.astype(np.int64), axis=1) < 0).any():
            raise DataError(
                "generate takes left padding only (attention_mask 0s before the 1s of each row, as transformers "
                "expects for decoder-only models): new tokens would follow the padding; pad on the left "
                "(tokenizer.padding_side = 'left')"
            )
        batch = ids.shape[0]
        positions = _positions(mask)
        pad = eos_token_id if pad_token_id is None else pad_token_id
        alive = np.ones(batch, dtype=bool)
        tokens = [ids]
        step_ids, step_pos, cache = ids, positions, self.empty_cache(batch)
        for _ in range(max_new_tokens):
            logits, cache = self.step(step_ids, mask, step_pos, cache)
            nxt = logits[:, -1].argmax(-1).astype(np.int64)
            if eos_token_id is not None:
                nxt = np.where(alive, nxt, pad)
                alive &= nxt != eos_token_id
            tokens.append(nxt[:, None])
            if eos_token_id is not None and not alive.any():
                break
            step_ids = nxt[:, None]
            step_pos = step_pos[:, -1:] + 1
            mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
        return torch.from_numpy(np.concatenate(tokens, axis=1))


def _ids(input_ids: Any) -> np.ndarray:
    a = input_ids.detach().cpu().numpy() if torch.is_tensor(input_ids) else np.asarray(input_ids)
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.integer) or a.shape[1] < 1:
        raise DataError(f"input_ids are integer token ids [batch, seq] with seq >= 1, got {a.dtype} {list(a.shape)}")
    return np.ascontiguousarray(a.astype(np.int64))


def _mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    a = mask.detach().cpu().numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if a.shape != shape:
        raise DataError(f"attention_mask has shape {list(a.shape)}, input_ids {list(shape)}: give one per token")
    return np.ascontiguousarray(a.astype(np.int64))


def _positions(mask: np.ndarray) -> np.ndarray:
    """Position ids as ``transformers`` derives them from a mask: the count of unmasked tokens so far minus
    one, 0 on padding."""
    pos = np.cumsum(mask, axis=1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


def hf_greedy(model: nn.Module, input_ids: Tensor, max_new_tokens: int) -> Tensor:
    """``transformers`` greedy ``generate`` with its own cache and exactly ``max_new_tokens`` new tokens
    (``min_new_tokens``: end-of-sequence is suppressed until then), the PyTorch side of generation timings."""
    gen: Any = model
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return gen.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )


class GreedyCall(nn.Module):
    """A module whose call runs ``fn(input_ids)`` (a generation), so that
    :func:`prunekit.eval.latency.compare_latency` times generations as it times forward passes."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, input_ids: Tensor) -> Tensor:
        """``fn(input_ids)``: the generated ids."""
        return self.fn(input_ids)


#: new tokens generated per timed call when an export on the KV-cache route measures its latency
GENERATION_TOKENS = 8


def measure_generation(
    prepared: nn.Module,
    path: Path,
    dense: nn.Module | None,
    build: Any,
    prompt: torch.Tensor,
    config: dict,
    threads: int,
    budget_s: float,
) -> tuple[dict[str, LatencyComparison], int | None]:
    """Greedy generation of :data:`GENERATION_TOKENS` tokens after ``prompt`` through the exported graph
    (:class:`~prunekit.deploy.openvino_lm.OpenVINOCausalLM`) against ``transformers`` ``generate`` (with its
    cache) of the dense model and of the model itself, and against the dense model exported the same way."""
    require("openvino")
    timed = partial(compare_latency, threads=threads, budget_s=budget_s)
    n = GENERATION_TOKENS
    lm = OpenVINOCausalLM(path, config=config)
    candidate = GreedyCall(lambda ids: lm.generate(ids, n))
    latency: dict[str, LatencyComparison] = {}
    dense_bytes = None
    if dense is not None:
        with dense_export(dense, build) as (dense_prepared, dense_path, dense_bytes):
            dense_lm = OpenVINOCausalLM(dense_path, config=config)
            latency["generation vs dense openvino"] = timed(
                GreedyCall(lambda ids: dense_lm.generate(ids, n)), candidate, prompt
            )
            latency["generation vs dense pytorch"] = timed(
                GreedyCall(lambda ids: hf_greedy(dense_prepared, ids, n)), candidate, prompt
            )
    latency["generation vs same model in pytorch"] = timed(
        GreedyCall(lambda ids: hf_greedy(prepared, ids, n)), candidate, prompt
    )
    return latency, dense_bytes
