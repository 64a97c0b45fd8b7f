"""Module handlers: keep a module's attributes consistent after its tensors lost indices.

Physical removal slices parameters and buffers (the engine does that, uniformly, for every tensor); a
handler then updates what the module remembers about its sizes (``in_channels``, ``groups``,
``num_features``, ``normalized_shape``, ...) so that the pruned module runs and prints right. A handler may
also declare dimensions it cannot resize (``fixed``) and veto a change before anything is touched
(``check``). Handlers are registered per module type in :data:`HANDLERS`; registration validates that a
handler implements the interface. Modules without a handler get the plain fallback (tensors are sliced,
no attribute changes), which is right for modules that keep no sizes (activations, layer scales, tokens).
"""

from __future__ import annotations

from typing import Any, cast

from torch import Tensor, nn

from prunekit.errors import ConfigError, UnsupportedModuleError
from prunekit.registry import Registry


class ModuleHandler:
    """Base handler. ``module_types`` (classes) and ``type_names`` (class names, for optional packages)
    say which modules it serves; the most specific class in a module's MRO wins."""

    module_types: tuple[type, ...] = ()
    type_names: tuple[str, ...] = ()

    def fixed(self, module: nn.Module) -> list[tuple[str, int]]:
        """(local tensor name, dim) pairs this module cannot resize."""
        return []

    def check(self, name: str, module: nn.Module, new_shapes: dict[str, tuple[int, ...]]) -> None:
        """Raise :class:`UnsupportedModuleError` if the module cannot take these new tensor shapes."""

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Update size attributes after the module's tensors were replaced."""


def _validate(name: str, obj: Any) -> None:
    if not isinstance(obj, ModuleHandler):
        raise ConfigError(f"module handler {name!r} must be a ModuleHandler instance")
    if not (obj.module_types or obj.type_names):
        raise ConfigError(f"module handler {name!r} names no module types (module_types or type_names)")
    for meth in ("fixed", "check", "update"):
        if not callable(getattr(obj, meth, None)):
            raise ConfigError(f"module handler {name!r} lacks a callable {meth}()")


def _tensor_or_none(module: nn.Module, name: str) -> Tensor | None:
    """``module``'s tensor attribute ``name``, or None (no such attribute, or one set to None)."""
    t = getattr(module, name, None)
    return t if isinstance(t, Tensor) else None


HANDLERS: Registry[ModuleHandler] = Registry("module handler", validate=_validate)


def register_handler(name: str, description: str = "") -> Any:
    """Class decorator: register one instance of a :class:`ModuleHandler` subclass under ``name``."""

    def deco(cls: type[ModuleHandler]) -> type[ModuleHandler]:
        HANDLERS.add(name, cls(), description)
        return cls

    return deco


def handler_for(module: nn.Module) -> ModuleHandler | None:
    """The registered handler for ``module`` (most specific class first), or None."""
    by_type: dict[type, ModuleHandler] = {}
    by_name: dict[str, ModuleHandler] = {}
    for entry in HANDLERS.entries():
        for t in entry.obj.module_types:
            by_type[t] = entry.obj
        for n in entry.obj.type_names:
            by_name[n] = entry.obj
    for cls in type(module).__mro__:
        if cls in by_type:
            return by_type[cls]
        if cls.__name__ in by_name:
            return by_name[cls.__name__]
    return None


@register_handler("conv", "Conv1d/2d/3d (plain, grouped, depthwise) and ConvTranspose1d/2d/3d")
class ConvHandler(ModuleHandler):
    """Convolutions keep ``in_channels``, ``out_channels`` and ``groups``. A grouped convolution loses
    filters uniformly from every group; a depthwise one keeps its channel multiplier (its groups follow
    the channels); a grouped transposed convolution cannot be resized."""

    module_types = (nn.modules.conv._ConvNd,)

    def check(self, name: str, module: nn.Module, new_shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse a grouped transposed convolution that changes shape, output channels that do not split
        into the groups, and a depthwise weight that would lose its single input channel."""
        w = new_shapes.get("weight")
        if w is None:
            return
        conv = cast(nn.modules.conv._ConvNd, module)  # handler_for serves it only its module_types
        g = conv.groups
        if conv.transposed:
            if g != 1 and tuple(w) != tuple(conv.weight.shape):
                raise UnsupportedModuleError(
                    f"module '{name}' ({type(module).__name__}): grouped transposed convolution cannot be resized"
                )
            return
        depthwise = g > 1 and conv.weight.shape[1] == 1
        if not depthwise and g > 1 and w[0] % g:
            raise UnsupportedModuleError(f"module '{name}': {w[0]} output channels do not split into {g} groups")
        if depthwise and w[1] != 1:
            raise UnsupportedModuleError(f"module '{name}': depthwise weight must keep one input channel")

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``in_channels`` / ``out_channels`` (and ``groups`` of a depthwise convolution) from the new
        weight, ``(out, in / groups, *kernel)``, or ``(in, out / groups, *kernel)`` when transposed."""
        conv = cast(nn.modules.conv._ConvNd, module)  # handler_for serves it only its module_types
        w = conv.weight
        old = old_shapes.get("weight", tuple(w.shape))
        if conv.transposed:
            conv.in_channels = w.shape[0]
            conv.out_channels = w.shape[1] * conv.groups
            return
        if conv.groups > 1 and old[1] == 1:  # depthwise (channel multiplier m = out / groups)
            mult = old[0] // conv.groups
            conv.groups = w.shape[0] // mult
            conv.in_channels = conv.groups
        else:
            conv.in_channels = w.shape[1] * conv.groups
        conv.out_channels = w.shape[0]


@register_handler("linear", "Linear (and subclasses such as MultiheadAttention's out_proj)")
class LinearHandler(ModuleHandler):
    """Linear layers keep ``in_features`` and ``out_features``."""

    module_types = (nn.Linear,)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``out_features, in_features`` from the new weight ``(out, in)``."""
        linear = cast(nn.Linear, module)  # handler_for serves it only its module_types
        linear.out_features, linear.in_features = linear.weight.shape


@register_handler("hf-conv1d", "Hugging Face Conv1D (GPT-2): a Linear with a transposed weight")
class HFConv1DHandler(ModuleHandler):
    """transformers' Conv1D (GPT-2) keeps ``nx`` (inputs) and ``nf`` (outputs); its weight is ``(nx, nf)``."""

    type_names = ("Conv1D",)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``nx, nf`` from the new weight ``(in, out)``."""
        conv1d: Any = module  # a transformers class, matched by name (its sizes are plain int attributes)
        conv1d.nx, conv1d.nf = conv1d.weight.shape


@register_handler("batchnorm", "BatchNorm1d/2d/3d and SyncBatchNorm")
class BatchNormHandler(ModuleHandler):
    """Batch normalisation keeps ``num_features``; its affine parameters and running statistics are
    ``[num_features]``."""

    module_types = (nn.modules.batchnorm._NormBase,)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``num_features`` from the new weight, or the running mean when it has no affine weight."""
        bn = cast(nn.modules.batchnorm._NormBase, module)  # handler_for serves it only its module_types
        t = _tensor_or_none(bn, "weight")
        if t is None:
            t = _tensor_or_none(bn, "running_mean")
        if t is not None:
            bn.num_features = t.shape[0]


@register_handler("layernorm", "LayerNorm over the last dimension")
class LayerNormHandler(ModuleHandler):
    """Layer normalisation keeps ``normalized_shape``; only one over the last dimension can be resized."""

    module_types = (nn.LayerNorm,)

    def fixed(self, module: nn.Module) -> list[tuple[str, int]]:
        """Every dimension of the weight and bias when it normalises over more than one dimension; else
        none."""
        ln = cast(nn.LayerNorm, module)  # handler_for serves it only its module_types
        if len(ln.normalized_shape) > 1 and ln.weight is not None:
            return [("weight", d) for d in range(ln.weight.dim())] + (
                [("bias", d) for d in range(ln.bias.dim())] if ln.bias is not None else []
            )
        return []

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``normalized_shape`` from the new weight (a LayerNorm without a weight keeps its own)."""
        ln = cast(nn.LayerNorm, module)  # handler_for serves it only its module_types
        if ln.weight is not None:
            ln.normalized_shape = tuple(ln.weight.shape)


@register_handler("groupnorm", "GroupNorm (channels removed uniformly from every group)")
class GroupNormHandler(ModuleHandler):
    """Group normalisation keeps ``num_channels`` and ``num_groups``; the graph removes channels uniformly
    from every group, so the group count stays unless every channel was its own group."""

    module_types = (nn.GroupNorm,)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``num_channels`` from the new weight, and ``num_groups`` too when it was one group per
        channel."""
        gn = cast(nn.GroupNorm, module)  # handler_for serves it only its module_types
        if gn.weight is None:
            return
        old_c = old_shapes.get("weight", tuple(gn.weight.shape))[0]
        if gn.num_groups == old_c:
            gn.num_groups = gn.weight.shape[0]
        gn.num_channels = gn.weight.shape[0]


@register_handler("prelu", "PReLU with one slope per channel")
class PReLUHandler(ModuleHandler):
    """PReLU keeps ``num_parameters``, its number of slopes (one per channel, or one shared)."""

    module_types = (nn.PReLU,)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``num_parameters`` to the number of slopes left."""
        prelu = cast(nn.PReLU, module)  # handler_for serves it only its module_types
        prelu.num_parameters = prelu.weight.numel()


@register_handler("embedding", "Embedding: the embedding dimension (columns); the vocabulary is kept")
class EmbeddingHandler(ModuleHandler):
    """Embeddings keep ``num_embeddings`` and ``embedding_dim``; only the columns (the hidden size) go."""

    module_types = (nn.Embedding,)

    def fixed(self, module: nn.Module) -> list[tuple[str, int]]:
        """The rows of the weight: the vocabulary is kept."""
        return [("weight", 0)]

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``num_embeddings, embedding_dim`` from the new weight ``(vocabulary, dim)``."""
        emb = cast(nn.Embedding, module)  # handler_for serves it only its module_types
        emb.num_embeddings, emb.embedding_dim = emb.weight.shape


@register_handler(
    "multihead-attention",
    "nn.MultiheadAttention: heads removed by Head(); the input/output width (residual stream) follows its group",
)
class MultiheadAttentionHandler(ModuleHandler):
    """``nn.MultiheadAttention`` stores its widths and head count; after a change it becomes a
    :class:`~prunekit.surgery.mha.HeadPrunedMultiheadAttention`, which runs any inner width."""

    module_types = (nn.MultiheadAttention,)

    def fixed(self, module: nn.Module) -> list[tuple[str, int]]:
        """The packed layout can change its input and output width (the module becomes a
        HeadPrunedMultiheadAttention); the inner width changes only by whole heads (Head()). Other layouts
        keep every dimension."""
        from prunekit.surgery.mha import head_prunable

        mha = cast(nn.MultiheadAttention, module)  # handler_for serves it only its module_types
        if not head_prunable(mha):
            return [(n, d) for n, p in mha.named_parameters() for d in range(p.dim())]
        out = [("in_proj_weight", 0), ("out_proj.weight", 1)]
        if mha.in_proj_bias is not None:
            out.append(("in_proj_bias", 0))
        return out

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Give the module the class and head count that run its new tensors
        (:func:`~prunekit.surgery.mha.adopt_pruned_heads`)."""
        from prunekit.surgery.mha import adopt_pruned_heads

        adopt_pruned_heads(module)


@register_handler("torchvision-vit", "torchvision's VisionTransformer: hidden_dim follows the patch embedding")
class TorchvisionViTHandler(ModuleHandler):
    """torchvision's VisionTransformer reshapes the patch embedding with its stored ``hidden_dim``; the
    residual width changes with the class token, which this module owns."""

    type_names = ("VisionTransformer",)

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``hidden_dim`` to the patch embedding's new number of filters."""
        conv = getattr(module, "conv_proj", None)
        vit: Any = module  # a torchvision class, matched by name (hidden_dim is a plain int attribute)
        if isinstance(conv, nn.Conv2d) and isinstance(getattr(vit, "hidden_dim", None), int):
            vit.hidden_dim = int(conv.weight.shape[0])  # the tensor: the conv handler may not have run yet


@register_handler("rnn", "RNN / LSTM / GRU: hidden units leave every gate, the recurrent weights and the next layer")
class RNNHandler(ModuleHandler):
    """Recurrent layers keep ``input_size`` / ``hidden_size`` and a list of their weights
    (``_flat_weights``) that must follow the new tensors. An LSTM with ``proj_size`` keeps every size."""

    module_types = (nn.RNNBase,)

    def fixed(self, module: nn.Module) -> list[tuple[str, int]]:
        """Every dimension of the layer's own parameters when it has ``proj_size``; else none."""
        if getattr(module, "proj_size", 0):
            return [(n, d) for n, p in module.named_parameters(recurse=False) for d in range(p.dim())]
        return []

    def check(self, name: str, module: nn.Module, new_shapes: dict[str, tuple[int, ...]]) -> None:
        """Refuse new shapes that are not those of an RNN with fewer hidden units (every gate, layer and
        direction alike) or fewer inputs."""

        def shape(key: str) -> tuple[int, ...]:
            return tuple(new_shapes.get(key, tuple(getattr(module, key).shape)))

        rnn = cast(nn.RNNBase, module)  # handler_for serves it only its module_types
        gates = {"LSTM": 4, "GRU": 3}.get(rnn.mode, 1)
        nd = 2 if rnn.bidirectional else 1
        hidden = shape("weight_hh_l0")[1]
        inputs = shape("weight_ih_l0")[1]
        for layer in range(rnn.num_layers):
            for s in ["", "_reverse"][:nd]:
                want: dict[str, tuple[int, ...]] = {
                    f"weight_ih_l{layer}{s}": (gates * hidden, inputs if layer == 0 else nd * hidden),
                    f"weight_hh_l{layer}{s}": (gates * hidden, hidden),
                }
                if rnn.bias:
                    want.update({f"bias_ih_l{layer}{s}": (gates * hidden,), f"bias_hh_l{layer}{s}": (gates * hidden,)})
                for key, expect in want.items():
                    if shape(key) != expect:
                        raise UnsupportedModuleError(
                            f"module '{name}' ({type(module).__name__}): {key} would become {shape(key)}, not "
                            f"{expect}; its hidden units cannot be removed this way. Pass ignore=[{name!r}] to keep "
                            f"it whole"
                        )

    def update(self, module: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> None:
        """Set ``hidden_size`` and ``input_size`` from the new weights and rebuild ``_flat_weights``."""
        rnn = cast(nn.RNNBase, module)  # handler_for serves it only its module_types
        rnn.hidden_size = int(cast(Tensor, rnn.weight_hh_l0).shape[1])
        rnn.input_size = int(cast(Tensor, rnn.weight_ih_l0).shape[1])
        rnn._init_flat_weights()  # the forward reads the weights from this list, not from the attributes
