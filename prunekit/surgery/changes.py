"""What a structural change did, read back from the model: the share of output units each layer lost, what
happened to every recurrent layer, and a Hugging Face config brought in step with the new sizes."""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from prunekit.layout import is_prunable, weight_layout

__all__ = ["layer_sparsity", "output_axis", "recurrent_notes", "sync_config"]


def output_axis(m: nn.Module) -> int:
    """The axis of ``m.weight`` that indexes the layer's outputs (0 for Linear and Conv, 1 for transposed
    convolutions and transformers' Conv1D), as :func:`prunekit.layout.weight_layout` decides it."""
    layout = weight_layout(m)
    return layout.out_axis if layout is not None else 0


def recurrent_notes(model: nn.Module, old_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """What happened to every recurrent layer: hidden units removed, or kept whole (said, never silent)."""
    notes = []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.RNNBase):
            continue
        key = f"{name}.weight_hh_l0" if name else "weight_hh_l0"
        label = f"{name or '<model>'} ({type(mod).__name__})"
        if key in old_shapes and old_shapes[key][1] != mod.hidden_size:
            notes.append(
                f"{label}: hidden units {old_shapes[key][1]} -> {mod.hidden_size} (every gate, the recurrent "
                f"weights and the next layer's inputs)"
            )
        else:
            notes.append(
                f"{label}: kept whole, hidden_size {mod.hidden_size} (its hidden units are fixed by an "
                f"ignore=, a model output or a size the code hard-codes)"
            )
    return notes


def sync_config(model: nn.Module) -> None:
    """Keep a Hugging Face config in step with the new sizes (no-op for other models)."""
    if getattr(model, "config", None) is not None and hasattr(model.config, "to_dict"):
        from prunekit.surgery.hf import sync_hf_config

        sync_hf_config(model)


def layer_sparsity(
    model: nn.Module, old_shapes: dict[str, tuple[int, ...]], targets: Iterable[str] | None = None
) -> dict[str, float]:
    """Fraction of output units removed from each conv / linear layer (by module name)."""
    out = {}
    tset = set(targets) if targets is not None else None
    for name, mod in model.named_modules():
        if not is_prunable(mod) or (tset is not None and name not in tset):
            continue
        key = f"{name}.weight" if name else "weight"
        d = output_axis(mod)
        if key in old_shapes:
            out[name] = 1.0 - mod.weight.shape[d] / old_shapes[key][d]
        elif tset is not None:
            out[name] = 0.0
    return out
