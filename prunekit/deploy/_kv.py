"""A causal language model's single decoding step as a graph with its key/value cache as explicit tensors.

The exporters trace :class:`KVStep`: it takes the new tokens, the attention mask over the cached and new
tokens, their positions and the cached keys and values of every layer (``[batch, kv_heads, past, head_dim]``,
``past`` may be 0), and returns the logits and the grown cache. Layers may differ in their key/value head
count (structurally pruned models: ``flap`` records per-layer widths in ``config.prunekit_structure``); each
layer's shape is read from its projections.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from prunekit.deploy._common import compare_outputs
from prunekit.deploy.errors import ExportFailedError, UnsupportedRuntimeOptionError
from prunekit.errors import ConfigError, DataError, UnsupportedModuleError

__all__ = [
    "KV_FAMILIES",
    "KVStep",
    "check_kv_family",
    "check_kv_steps",
    "decide_kv",
    "empty_past",
    "example_ids",
    "is_causal_lm",
    "kv_dynamic_shapes",
    "kv_example",
    "kv_input_names",
    "kv_layout",
    "kv_output_names",
    "name_ports",
    "step_mask",
]

#: Hugging Face ``model_type`` values whose decoding step exports with an explicit cache (decoder layers under
#: ``model.model.layers``, attention with ``k_proj`` / ``v_proj`` and ``head_dim``, full attention in every layer)
KV_FAMILIES = ("llama", "qwen2")


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a Hugging Face decoder-only language model (a config with a ``model_type``, not
    encoder-decoder, an output embedding and ``generate``)."""
    config = getattr(model, "config", None)
    if config is None or not getattr(config, "model_type", None) or getattr(config, "is_encoder_decoder", False):
        return False
    out = getattr(model, "get_output_embeddings", None)
    return callable(out) and out() is not None and callable(getattr(model, "generate", None))


def check_kv_family(model: nn.Module) -> None:
    """Refuse a model whose decoding step cannot be exported with an explicit cache. Raises
    :class:`~prunekit.errors.UnsupportedModuleError` naming the supported families."""
    if not is_causal_lm(model):
        raise UnsupportedModuleError(
            f"kv_cache=True exports the decoding step of a Hugging Face causal LM; {type(model).__name__} is not "
            f"one (supported families: {', '.join(KV_FAMILIES)}). Pass kv_cache=False"
        )
    config: Any = model.config
    family = config.model_type
    if family not in KV_FAMILIES:
        raise UnsupportedModuleError(
            f"the KV-cache export supports the model families {', '.join(KV_FAMILIES)}, not {family!r}; pass "
            "kv_cache=False for a graph without a cache (each call recomputes the whole prefix)"
        )
    layer_types = getattr(config, "layer_types", None) or []
    sliding = [t for t in layer_types if t != "full_attention"]
    if sliding or getattr(config, "use_sliding_window", False):
        raise UnsupportedModuleError(
            f"the KV-cache export supports full attention in every layer; this {family} config has "
            f"{'layer types ' + ', '.join(sorted(set(sliding))) if sliding else 'use_sliding_window=True'}. "
            "Pass kv_cache=False"
        )
    kv_layout(model)


def kv_layout(model: nn.Module) -> list[tuple[int, int]]:
    """``(kv_heads, head_dim)`` of every decoder layer, read from its ``k_proj`` / ``v_proj`` (so per-layer
    widths of a structurally pruned model are honoured). Raises
    :class:`~prunekit.errors.UnsupportedModuleError` when the layers are not laid out as the supported
    families lay them out."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise UnsupportedModuleError(
            f"{type(model).__name__} has no decoder layers at model.layers; the KV-cache export supports "
            f"{', '.join(KV_FAMILIES)}"
        )
    out = []
    for i, layer in enumerate(layers):
        attn = getattr(layer, "self_attn", None)
        k, v = getattr(attn, "k_proj", None), getattr(attn, "v_proj", None)
        head_dim = getattr(attn, "head_dim", None)
        if not isinstance(k, nn.Linear) or not isinstance(v, nn.Linear) or not isinstance(head_dim, int):
            raise UnsupportedModuleError(
                f"layer {i} has no self_attn with Linear k_proj / v_proj and an integer head_dim; the KV-cache "
                f"export supports {', '.join(KV_FAMILIES)}"
            )
        if k.out_features != v.out_features or k.out_features % head_dim:
            raise UnsupportedModuleError(
                f"layer {i}: k_proj ({k.out_features}) and v_proj ({v.out_features}) outputs are not whole "
                f"heads of size {head_dim}"
            )
        out.append((k.out_features // head_dim, head_dim))
    return out


def kv_input_names(n_layers: int) -> list[str]:
    """The graph's input names: ``input_ids``, ``attention_mask``, ``position_ids``, then
    ``past_key_values.{i}.key`` / ``.value`` for each layer."""
    names = ["input_ids", "attention_mask", "position_ids"]
    for i in range(n_layers):
        names += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    return names


def kv_output_names(n_layers: int) -> list[str]:
    """The graph's output names: ``logits``, then ``present.{i}.key`` / ``.value`` for each layer."""
    names = ["logits"]
    for i in range(n_layers):
        names += [f"present.{i}.key", f"present.{i}.value"]
    return names


class KVStep(nn.Module):
    """One decoding step of a causal LM with its cache passed in and out as flat tensors.

    ``forward(input_ids [batch, seq], attention_mask [batch, past + seq], position_ids [batch, seq],
    *past)`` with ``past`` = key, value of layer 0, key, value of layer 1, ... each
    ``[batch, kv_heads, past, head_dim]``; returns ``(logits [batch, seq, vocab], *presents)`` with the
    presents ``[batch, kv_heads, past + seq, head_dim]`` in the same order. The model runs with a
    ``transformers`` ``DynamicCache`` rebuilt from ``past`` (no copy of the weights: it wraps ``lm``) and the
    attention mask of :func:`step_mask`.
    """

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.n_layers = len(kv_layout(lm))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *past: Tensor) -> tuple:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        if len(past) != 2 * self.n_layers:
            raise DataError(f"the step takes a key and a value for each of {self.n_layers} layers, got {len(past)}")
        cache = DynamicCache()
        layers: list[Any] = []
        for i in range(self.n_layers):
            # a layer filled directly (not through update): an empty DynamicLayer starts from a 1-d tensor
            # that the converters cannot concatenate with a 4-d one
            layer = DynamicLayer()
            key, value = past[2 * i], past[2 * i + 1]
            layer.dtype, layer.device = key.dtype, key.device
            layer.keys, layer.values, layer.is_initialized = key, value, True
            layers.append(layer)
        cache.layers = layers
        out = self.lm(
            input_ids=input_ids,
            attention_mask=step_mask(attention_mask, input_ids.shape[1], past[0].dtype if past else torch.float32),
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        presents: list[Tensor] = []
        for layer in out.past_key_values.layers:
            presents += [layer.keys, layer.values]
        return (out.logits, *presents)


def step_mask(attention_mask: Tensor, seq: int, dtype: torch.dtype) -> Tensor:
    """The additive attention mask ``[batch, 1, seq, past + seq]`` (0 where a new token attends, the dtype's
    lowest value elsewhere) of ``seq`` new tokens after ``past`` cached ones: causal, and no token attends to
    one that ``attention_mask [batch, past + seq]`` marks 0 (padding). A padding token's own row, which would
    mask every key, attends to all of them instead: its output is never used, and a row masked whole gives
    NaN in OpenVINO's attention, which would reach the real tokens through the next layer's cache."""
    total = attention_mask.shape[1]
    query = torch.arange(seq, device=attention_mask.device) + (total - seq)
    key = torch.arange(total, device=attention_mask.device)
    allowed = (key[None, :] <= query[:, None])[None] & attention_mask[:, None, :].bool()  # [batch, seq, total]
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=attention_mask.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def empty_past(layout: list[tuple[int, int]], batch: int, dtype: torch.dtype = torch.float32) -> list[Tensor]:
    """A cache holding no token: ``[batch, kv_heads, 0, head_dim]`` zeros for every key and value."""
    return [torch.zeros(batch, h, 0, d, dtype=dtype) for h, d in layout for _ in range(2)]


def kv_example(step: KVStep, input_ids: Tensor) -> tuple[Tensor, ...]:
    """Inputs to trace ``step`` with: ``input_ids`` continuing a cache of ``input_ids`` themselves (the cache
    computed by ``step`` from an empty one), so that the batch, the new tokens and the cached tokens all have
    sizes of 2 or more (a size of 1 would be fixed by the trace). Raises :class:`~prunekit.errors.DataError`
    for ids that are not integer ``[batch, seq]`` with ``seq >= 2``."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.is_floating_point():
        raise DataError("a KV-cache export takes example input_ids: an integer tensor [batch, seq]")
    b, s = input_ids.shape
    if s < 2:
        raise DataError(
            f"the example input_ids hold {s} token(s); give 2 or more so the number of tokens stays dynamic"
        )
    layout = kv_layout(step.lm)
    dtype = next(step.lm.parameters()).dtype
    ones = torch.ones(b, s, dtype=torch.long)
    with torch.no_grad():
        first = step(input_ids, ones, torch.arange(s).expand(b, s).contiguous(), *empty_past(layout, b, dtype))
    past = [t.detach() for t in first[1:]]
    return (input_ids, torch.ones(b, 2 * s, dtype=torch.long), torch.arange(s, 2 * s).expand(b, s).contiguous(), *past)


def kv_dynamic_shapes(n_layers: int) -> dict[str, Any]:
    """``torch.export`` dynamic shapes for :class:`KVStep`: batch and token counts of the ids, mask and
    positions, batch and cached length of every key and value."""
    auto = torch.export.Dim.AUTO
    two = {0: auto, 1: auto}
    return {
        "input_ids": two,
        "attention_mask": two,
        "position_ids": two,
        "past": tuple({0: auto, 2: auto} for _ in range(2 * n_layers)),
    }


def decide_kv(model: nn.Module, kv_cache: Any, *, dynamic: bool, quantize: str | None) -> tuple[bool, str | None]:
    """Whether the export takes the KV-cache route, and a note saying why for a causal LM."""
    if kv_cache is not None and not isinstance(kv_cache, bool):
        raise ConfigError(f"kv_cache is True, False or None (decide from the model), got {kv_cache!r}")
    if kv_cache is False:
        return False, None
    if kv_cache is True:
        if not dynamic:
            raise UnsupportedRuntimeOptionError(
                "kv_cache=True grows the cache by one token per step, so its shapes must stay dynamic: pass "
                "dynamic=True (or kv_cache=False for a fixed-shape graph without a cache)"
            )
        if quantize == "int8":
            raise UnsupportedRuntimeOptionError(
                "kv_cache=True supports quantize=None and 'int8-weights' (activations are not calibrated on "
                "decoding steps); pass one of them, or kv_cache=False for int8 activations without a cache"
            )
        check_kv_family(model)
        return True, "key/value cache as explicit inputs and outputs (kv_cache=True); run with OpenVINOCausalLM"
    if not is_causal_lm(model):
        return False, None
    try:
        check_kv_family(model)
    except UnsupportedModuleError as e:
        return False, f"exported without a KV cache (each call recomputes the whole prefix): {e}"
    if not dynamic or quantize == "int8":
        why = "dynamic=False" if not dynamic else "quantize='int8'"
        return False, (
            f"exported without a KV cache because of {why} (kv_cache=True needs dynamic shapes and no int8 activations)"
        )
    return True, (
        "key/value cache as explicit inputs and outputs (kv_cache=None chose it for a causal LM of the "
        f"{', '.join(KV_FAMILIES)} families; kv_cache=False gives the graph without a cache); run it with "
        "prunekit.deploy.OpenVINOCausalLM"
    )


def example_ids(args: tuple, kwargs: dict) -> torch.Tensor:
    """The ``input_ids`` of the example inputs (a tensor, or a dict holding them)."""
    if kwargs and "input_ids" in kwargs and not args:
        return kwargs["input_ids"]
    if len(args) == 1 and not kwargs and torch.is_tensor(args[0]):
        return args[0]
    raise DataError(
        "a KV-cache export takes example_inputs as input_ids: an integer tensor [batch, seq] or a dict "
        "{'input_ids': ...}"
    )


def name_ports(ov_model: Any, inputs: list[str], outputs: list[str]) -> None:
    """Give the converted graph's inputs and outputs these names (in order)."""
    if len(ov_model.inputs) != len(inputs) or len(ov_model.outputs) != len(outputs):
        raise ExportFailedError(
            f"the converted decoding step has {len(ov_model.inputs)} inputs and {len(ov_model.outputs)} outputs, "
            f"expected {len(inputs)} and {len(outputs)}"
        )
    for port, name in zip(ov_model.inputs, inputs):
        port.get_tensor().set_names({name})
    for port, name in zip(ov_model.outputs, outputs):
        port.get_tensor().set_names({name})


def check_kv_steps(
    step: KVStep, run: Any, prompt: torch.Tensor, check: dict[str, Any], *, atol: float, rtol: float
) -> dict[str, Any]:
    """The traced step's ``check`` extended to a first call from an empty cache (the prompt) and a one-token
    step after it, sizes the trace saw only as 2 or more (a cache of length 0, one new token). ``run``: the
    exported graph (a flat list of numpy inputs to its numpy outputs). The result holds the largest errors of
    the three, ``passed`` only when all three pass."""
    b, s = prompt.shape
    dtype = next(step.lm.parameters()).dtype
    ones = torch.ones(b, s, dtype=torch.long)
    first = [prompt, ones, torch.arange(s).expand(b, s).contiguous(), *empty_past(kv_layout(step.lm), b, dtype)]
    results = [check]
    with torch.no_grad():
        ref1 = [t.float() for t in step(*first)]
        got1 = run([t.numpy() for t in first])
        results.append(compare_outputs(ref1, got1, atol=atol, rtol=rtol))
        cache = [torch.from_numpy(np.ascontiguousarray(g)).to(dtype) for g in got1[1:]]
        second = [prompt[:, -1:], torch.ones(b, s + 1, dtype=torch.long), torch.full((b, 1), s), *cache]
        ref2 = [t.float() for t in step(*second)]
        results.append(compare_outputs(ref2, run([t.numpy() for t in second]), atol=atol, rtol=rtol))
    merged = dict(check)
    merged["max_abs_diff"] = max(r["max_abs_diff"] for r in results)
    merged["relative_l2_error"] = max(r["relative_l2_error"] for r in results)
    merged["passed"] = all(r["passed"] for r in results)
    merged["steps"] = (
        f"a {s}-token step after a {s}-token cache, a {s}-token first call from an empty cache and a "
        f"one-token step after it (batch {b})"
    )
    return merged
