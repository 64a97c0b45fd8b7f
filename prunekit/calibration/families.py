"""One adapter per model family: where a transformer keeps its blocks and what is inside one.

Every part that needs to know a family reads this table and nothing else:

* the layer-wise runner (:mod:`prunekit.llm.runner`) and its solvers (Wanda, SparseGPT) walk
  :meth:`Family.layer_list`;
* the structured language-model methods (``llm-heads``, ``llm-mlp``, ``llm-layers``) cut the projections
  :attr:`Family.attention` and :attr:`Family.mlp` name, and turn on the config's bias fields;
* the generic ``head`` / ``layer`` / ``embedding`` path (:mod:`prunekit.surgery.attention`) finds attention
  modules by the projection layouts of :data:`ATTENTION_LAYOUTS` (the family's own first), the block stack
  by :meth:`Family.layer_list` and the MLP width by :attr:`Family.mlp`.

A family is matched by ``config.model_type``. A model of no listed family (a torchvision ViT, a custom
module, a family not listed yet) is still handled by the generic path: its attention modules are found by
the same layouts (or as ``nn.MultiheadAttention``), its block stack is the longest list of blocks of one
class. Calling a decoder layer needs no adapter code: the runner records the arguments the model passes
to each layer and replays them.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from prunekit.errors import UnsupportedModuleError
from prunekit.layout import weight_layout

__all__ = [
    "ATTENTION_LAYOUTS",
    "Attention",
    "AttentionLayout",
    "BERT_ATTENTION",
    "TIMM_ATTENTION",
    "FAMILIES",
    "Family",
    "GPT2_ATTENTION",
    "LLAMA_ATTENTION",
    "MLP",
    "OPT_ATTENTION",
    "block_list",
    "family_for",
    "family_of",
    "has_family",
    "layouts_for",
    "mlp_inputs",
    "prunable_linears",
]


@dataclass(frozen=True)
class AttentionLayout:
    """The projections of one attention module, by attribute name.

    ``style``: how heads sit in the projections: ``"qkvo"`` (separate q/k/v/o Linears, heads in output rows
    of q/k/v and input columns of o, grouped-query aware), ``"gpt2"`` (one ``c_attn`` Conv1D holding
    ``[q | k | v]`` in its columns, ``c_proj`` rows), ``"bert"`` (``query/key/value`` Linears; the output
    projection ``o`` is a sibling of the attention module, named relative to its parent), ``"packed"`` (one
    ``qkv`` Linear holding ``[q | k | v]`` in its output rows, heads in input columns of ``proj``: timm's
    vision transformers; only a module with no parameters of its own and nothing sized by the head count
    beside those two: a per-head table, as in Swin's windows, would not follow the heads).
    ``q``, ``k``, ``v``, ``o``: attribute names (``o`` for BERT: a path from the attention module's parent).
    ``head_dim_attr``: the module attribute giving the head size (else ``config.head_dim``).
    """

    style: str
    q: str
    k: str
    v: str
    o: str
    head_dim_attr: str = "head_dim"

    def matches(self, children: dict[str, nn.Module], module: nn.Module) -> bool:
        """Whether ``module`` (with these ``children``) is an attention module of this layout."""
        if self.style == "gpt2":
            return (
                self.q in children
                and self.o in children
                and hasattr(module, self.head_dim_attr)
                and not getattr(module, "is_cross_attention", False)
            )
        if self.style == "bert":
            return all(n in children for n in (self.q, self.k, self.v)) and hasattr(module, self.head_dim_attr)
        if self.style == "packed":
            return (
                isinstance(children.get(self.q), nn.Linear)
                and isinstance(children.get(self.o), nn.Linear)
                and isinstance(getattr(module, self.head_dim_attr, None), int)
                and isinstance(getattr(module, "num_heads", None), int)
            )
        return all(n in children for n in (self.q, self.k, self.v, self.o))


LLAMA_ATTENTION = AttentionLayout("qkvo", "q_proj", "k_proj", "v_proj", "o_proj")
OPT_ATTENTION = AttentionLayout("qkvo", "q_proj", "k_proj", "v_proj", "out_proj")
GPT2_ATTENTION = AttentionLayout("gpt2", "c_attn", "c_attn", "c_attn", "c_proj")
BERT_ATTENTION = AttentionLayout("bert", "query", "key", "value", "output.dense", head_dim_attr="attention_head_size")
TIMM_ATTENTION = AttentionLayout("packed", "qkv", "qkv", "qkv", "proj")


@dataclass(frozen=True)
class Attention:
    """A decoder layer's attention: the module holding it and its projections, named relative to the layer."""

    module: str
    q: str
    k: str
    v: str
    o: str
    layout: AttentionLayout = LLAMA_ATTENTION


@dataclass(frozen=True)
class MLP:
    """Names of the MLP projections (relative to the layer): ``inputs`` produce the intermediate channels,
    ``output`` consumes them; ``config_field`` holds the intermediate size; ``fused``: one input projection
    holds two halves (gate and up) of that width."""

    inputs: tuple[str, ...]
    output: str
    config_field: str
    fused: bool = False


@dataclass(frozen=True)
class Family:
    """How to find the pieces of one model family (matched by ``config.model_type``).

    ``layers``: dotted path from the task model (``*ForCausalLM``) to the ModuleList of blocks;
    ``attention`` / ``mlp``: None where the family's layout cannot be cut by name (GPT-2's fused ``c_attn``
    for the structured LLM methods); ``head_dim_in_config``: attention reads ``head_dim`` from the config,
    so a smaller head count keeps the head size; ``bias_fields``: config fields that give the attention /
    MLP output projection a bias (where FLAP's bias compensation can be stated); ``decoder``: a causal LM
    family, which the layer-wise runner and the ``llm-*`` methods take (encoders serve the generic path).
    """

    family: str
    model_types: tuple[str, ...]
    layers: str
    attention: Attention | None = None
    mlp: MLP | None = None
    head_dim_in_config: bool = True
    bias_fields: tuple[tuple[str, str], ...] = ()
    attention_layout: AttentionLayout | None = None  # how the generic head path finds its attention modules
    decoder: bool = True  # a causal LM: the layer-wise runner and the llm-* methods apply

    def layer_list(self, model: nn.Module) -> nn.ModuleList:
        """The ModuleList of blocks; :class:`~prunekit.errors.UnsupportedModuleError` when the path does not lead
        to one."""
        obj: object = model
        for part in self.layers.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if not isinstance(obj, nn.ModuleList):
            raise UnsupportedModuleError(f"{self.layers} of this {self.family} model is not a ModuleList")
        return obj

    def set_layer_list(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Put ``layers`` where :meth:`layer_list` finds the blocks (after blocks were removed)."""
        *parents, last = self.layers.split(".")
        obj: object = model
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, last, layers)

    def require_attention(self) -> Attention:
        """The family's :class:`Attention`, for the ``llm-heads`` method. Raises
        :class:`~prunekit.errors.UnsupportedModuleError` when the family has none that can be cut by name, or
        its config derives the head size from the hidden size."""
        if self.attention is None or not self.head_dim_in_config:
            raise UnsupportedModuleError(
                f"attention heads of {self.family} models cannot be removed by the llm-heads method yet (its "
                f"config derives the head size from the hidden size); use the 'head' method (which records the new "
                f"sizes for prunekit.surgery.from_pretrained_pruned), llm-mlp or llm-layers, or an unstructured "
                f"method"
            )
        return self.attention

    def require_mlp(self) -> MLP:
        """The family's :class:`MLP`, for the ``llm-mlp`` method. Raises
        :class:`~prunekit.errors.UnsupportedModuleError` when the family has none."""
        if self.mlp is None:
            raise UnsupportedModuleError(f"MLP channels of {self.family} models cannot be removed physically yet")
        return self.mlp

    def bias_field(self, part: str) -> str | None:
        """The config field that gives ``part``'s ("attention" or "mlp") output projection a bias, or None."""
        return dict(self.bias_fields).get(part)

    @property
    def layouts(self) -> tuple[AttentionLayout, ...]:
        """The family's own attention layout (one or none), for the generic head path."""
        layout = self.attention.layout if self.attention is not None else self.attention_layout
        return (layout,) if layout is not None else ()


_LLAMA_ATTN = Attention("self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
_GATED_MLP = MLP(("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj", "intermediate_size")

FAMILIES: tuple[Family, ...] = (
    Family(
        "llama",
        ("llama",),
        "model.layers",
        _LLAMA_ATTN,
        _GATED_MLP,
        bias_fields=(("attention", "attention_bias"), ("mlp", "mlp_bias")),
    ),
    Family("llama-like", ("mistral", "qwen2", "qwen3", "gemma2", "gemma"), "model.layers", _LLAMA_ATTN, _GATED_MLP),
    Family(
        "gemma3",
        ("gemma3_text",),
        "model.layers",
        _LLAMA_ATTN,
        _GATED_MLP,
        bias_fields=(("attention", "attention_bias"),),
    ),
    Family(
        "opt",
        ("opt",),
        "model.decoder.layers",
        Attention(
            "self_attn", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", OPT_ATTENTION
        ),
        MLP(("fc1",), "fc2", "ffn_dim"),
        head_dim_in_config=False,
    ),
    Family(
        "gpt2",
        ("gpt2",),
        "transformer.h",
        mlp=MLP(("mlp.c_fc",), "mlp.c_proj", "n_inner"),
        attention_layout=GPT2_ATTENTION,
    ),
    Family(
        "bert",
        ("bert", "roberta", "xlm-roberta", "electra"),
        "encoder.layer",
        mlp=MLP(("intermediate.dense",), "output.dense", "intermediate_size"),
        attention_layout=BERT_ATTENTION,
        decoder=False,
    ),
)

#: every attention layout a family declares, the generic head path's search order for models of no family
ATTENTION_LAYOUTS: tuple[AttentionLayout, ...] = (
    LLAMA_ATTENTION,
    OPT_ATTENTION,
    GPT2_ATTENTION,
    BERT_ATTENTION,
    TIMM_ATTENTION,
)

#: MLP input projections (relative to a block) of families not in the table whose MLP width a config names
_OTHER_MLP_INPUTS: tuple[tuple[str, bool], ...] = (
    ("mlp.fc1", False),
    ("mlp.dense_h_to_4h", False),
    ("mlp.fc_in", False),
    ("ffn.up_proj", False),
    ("mlp.gate_up_proj", True),
)


def family_of(model: nn.Module) -> Family | None:
    """The family of ``model`` by its ``config.model_type``, or None (no config, or a family not listed)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def family_for(model: nn.Module) -> Family:
    """The causal-LM family of ``model``, for the layer-wise runner and the ``llm-*`` methods;
    :class:`~prunekit.errors.UnsupportedModuleError` lists the supported ones (an encoder's family is refused
    too)."""
    found = family_of(model)
    if found is not None and found.decoder:
        return found
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = sorted(t for f in FAMILIES if f.decoder for t in f.model_types)
    if found is not None:
        raise UnsupportedModuleError(
            f"{type(model).__name__} ({model_type}) is an encoder, not a causal LM: the llm-* methods and the "
            f"layer-wise runner take causal LMs ({', '.join(known)}); prune it with head, l2-channel, layer, or "
            "wanda / sparsegpt / magnitude, which prune any model's Linear layers"
        )
    raise UnsupportedModuleError(
        f"no family adapter for model_type {model_type!r} ({type(model).__name__}); supported: {', '.join(known)}. "
        "Pass a Hugging Face model of one of these families, or add a Family to "
        "prunekit.calibration.families.FAMILIES."
    )


def layouts_for(model: nn.Module) -> tuple[AttentionLayout, ...]:
    """The attention layouts to look for in ``model``: its family's first, then every other one."""
    family = family_of(model)
    own = family.layouts if family is not None else ()
    return own + tuple(layout for layout in ATTENTION_LAYOUTS if layout not in own)


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """``(path, blocks)``: the family's block stack, or for a model of no family the longest ModuleList of
    blocks of one class; None when there is none."""
    family = family_of(model)
    if family is not None:
        base = getattr(model, "base_model_prefix", "")
        # the task model (LlamaForCausalLM) holds the path; a base model (BertModel) or a task model that
        # keeps its base one level down (BertForSequenceClassification.bert) holds it from there
        for prefix, root in (("", model), (f"{base}.", getattr(model, base, None) if base else None)):
            if isinstance(root, nn.Module):
                try:
                    return prefix + family.layers, family.layer_list(root)
                except UnsupportedModuleError:
                    continue
    best = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(c) for c in m}) == 1:
            if best is None or len(m) > len(best[1]):
                best = (name, m)
    return best


def mlp_inputs(model: nn.Module) -> tuple[tuple[str, bool], ...]:
    """``(name relative to a block, fused)`` of the MLP input projections to read the MLP width from: the
    family's own first, then those of every family."""
    family = family_of(model)
    own = tuple((n, family.mlp.fused) for n in family.mlp.inputs[:1]) if family is not None and family.mlp else ()
    every = tuple((f.mlp.inputs[0], f.mlp.fused) for f in FAMILIES if f.mlp is not None)
    return own + tuple(x for x in every + _OTHER_MLP_INPUTS if x not in own)


def has_family(model: nn.Module) -> bool:
    """Does the decoder-layer runner know ``model``'s family (a causal LM by its ``config.model_type``)?
    Other models (encoders included) are pruned layer-wise by :mod:`prunekit.apply.solve`."""
    found = family_of(model)
    return found is not None and found.decoder


def prunable_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """Every Linear (and GPT-2 style Conv1D) inside one block, by name relative to the block."""
    return {name: mod for name, mod in layer.named_modules() if _is_linear(mod)}


def _is_linear(module: nn.Module) -> bool:
    """A fully connected layer: ``nn.Linear`` or transformers' ``Conv1D`` (a Linear stored transposed)."""
    layout = weight_layout(module)  # by what the module is, also once a parametrization renamed its class
    return layout is not None and layout.kind in ("linear", "hf-conv1d")
