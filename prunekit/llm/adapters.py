"""Per-family adapters: where a causal LM keeps its decoder layers and what is inside one.

The calibration runner (:mod:`prunekit.llm.runner`) is the same for every family; an adapter only names
paths. Calling a layer needs no adapter code: the runner records the exact arguments the model itself
passes to each layer (attention masks, rotary embeddings, per-layer sliding windows) and replays them.
Structured pruning additionally needs the attention and MLP projections and the config fields they
follow; families without those (GPT-2's fused ``c_attn``) refuse structured methods with a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunekit.errors import UnsupportedModuleError
from prunekit.layout import weight_layout


@dataclass(frozen=True)
class Attention:
    """Names of a decoder layer's attention projections (relative to the layer) and the module holding them."""

    module: str
    q: str
    k: str
    v: str
    o: str


@dataclass(frozen=True)
class MLP:
    """Names of the MLP projections: ``inputs`` produce the intermediate channels, ``output`` consumes them."""

    inputs: tuple[str, ...]
    output: str
    config_field: str  # the config field holding the intermediate size


@dataclass(frozen=True)
class Adapter:
    """How to find the pieces of one model family (matched by ``config.model_type``)."""

    family: str
    model_types: tuple[str, ...]
    layers: str  # dotted path from the CausalLM to the ModuleList of decoder layers
    attention: Attention | None = None  # None: heads cannot be pruned physically
    mlp: MLP | None = None
    head_dim_in_config: bool = True  # attention reads head_dim from the config (so heads can be removed)

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        obj: object = model
        for part in self.layers.split("."):
            obj = getattr(obj, part)
        if not isinstance(obj, nn.ModuleList):
            raise UnsupportedModuleError(f"{self.layers} of this {self.family} model is not a ModuleList")
        return obj

    def set_layer_list(self, model: nn.Module, layers: nn.ModuleList) -> None:
        *parents, last = self.layers.split(".")
        obj: object = model
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, layers)

    def require_attention(self) -> Attention:
        if self.attention is None or not self.head_dim_in_config:
            raise UnsupportedModuleError(
                f"attention heads of {self.family} models cannot be removed physically yet; "
                f"use llm-mlp or llm-layers, or an unstructured method"
            )
        return self.attention

    def require_mlp(self) -> MLP:
        if self.mlp is None:
            raise UnsupportedModuleError(f"MLP channels of {self.family} models cannot be removed physically yet")
        return self.mlp


_LLAMA_ATTN = Attention("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_GATED_MLP = MLP(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size")

ADAPTERS: tuple[Adapter, ...] = (
    Adapter(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma2", "gemma"),
        "model.layers",
        _LLAMA_ATTN,
        _GATED_MLP,
    ),
    Adapter(
        "opt",
        ("opt",),
        "model.decoder.layers",
        Attention("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"),
        MLP(("fc1",), "fc2", "ffn_dim"),
        head_dim_in_config=False,
    ),
    Adapter("gpt2", ("gpt2",), "transformer.h"),
)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter of ``model``'s family; :class:`UnsupportedModuleError` lists the supported ones."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    for adapter in ADAPTERS:
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS for t in a.model_types)
    raise UnsupportedModuleError(
        f"no layer-wise adapter for model_type {model_type!r} ({type(model).__name__}); supported: {', '.join(known)}. "
        "Pass a Hugging Face *ForCausalLM model, or add an Adapter to prunekit.llm.adapters.ADAPTERS."
    )


def has_adapter(model: nn.Module) -> bool:
    """Does the decoder-layer runner know ``model``'s family (its ``config.model_type``)? Other models are
    pruned layer-wise by :mod:`prunekit.solve`."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return any(model_type in adapter.model_types for adapter in ADAPTERS)


def prunable_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """Every Linear (and GPT-2 style Conv1D) inside one decoder layer, by name relative to the layer."""
    return {name: mod for name, mod in layer.named_modules() if is_linear(mod)}


def is_linear(module: nn.Module) -> bool:
    """A fully connected layer: ``nn.Linear`` or transformers' ``Conv1D`` (a Linear stored transposed)."""
    layout = weight_layout(module)  # by what the module is, also once a parametrization renamed its class
    return layout is not None and layout.kind in ("linear", "hf-conv1d")
