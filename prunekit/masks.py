"""Masks: keep-masks applied to parameters as parametrizations.

A masked parameter is computed as ``original * mask`` on every access, so training (any optimizer, any
loop) keeps pruned weights at exactly zero. The original values stay untouched underneath:
:func:`remove_masks_` takes the masks off again (undo), :func:`squash_masks_` folds them into the weights
(the zeros become real) and removes the parametrization.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from prunekit.errors import PlanError


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a boolean keep-mask buffer (saved in the state dict)."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask.to(weight.dtype)

    def extra_repr(self) -> str:
        return f"density={self.mask.float().mean().item():.4f}"


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The keep-mask on ``module.<name>``, or None if it is not masked."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in module.parametrizations[name]:
        if isinstance(p, Mask):
            return p.mask
    return None


def apply_mask_(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Mask ``module.<name>`` in place. A parameter that is already masked keeps the intersection of both
    masks (masks only shrink)."""
    param = getattr(module, name)
    if mask.shape != param.shape:
        raise PlanError(f"mask of shape {tuple(mask.shape)} does not fit parameter of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    current = get_mask(module, name)
    if current is not None:
        current.logical_and_(mask)
        return
    parametrize.register_parametrization(module, name, Mask(mask), unsafe=False)


def masked_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor]]:
    """(module name, module, parameter name, mask) for every masked parameter."""
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                mask = get_mask(module, pname)
                if mask is not None:
                    yield mname, module, pname, mask


def _remove(model: nn.Module, fold: bool) -> int:
    count = 0
    for _, module, pname, _ in list(masked_parameters(model)):
        plist = module.parametrizations[pname]
        if len(plist) == 1:
            parametrize.remove_parametrizations(module, pname, leave_parametrized=fold)
        else:  # other parametrizations stay; drop ours only
            if fold:
                with torch.no_grad():
                    mask = next(p for p in plist if isinstance(p, Mask)).mask
                    plist.original.mul_(mask.to(plist.original.dtype))
            idx = next(i for i, p in enumerate(plist) if isinstance(p, Mask))
            del plist[idx]
        count += 1
    return count


def squash_masks_(model: nn.Module) -> int:
    """Fold every mask into its weight (pruned weights become real zeros) and remove the parametrization.
    Returns the number of parameters squashed."""
    return _remove(model, fold=True)


def remove_masks_(model: nn.Module) -> int:
    """Take every mask off, restoring the original (unpruned) values. Returns the number removed."""
    return _remove(model, fold=False)


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as the model computes with it: masks folded in, under the plain parameter names
    (``layer.weight``, not ``layer.parametrizations.weight.original``), mask buffers left out."""
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." not in key:
            out[key] = value
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations.keys():
                with torch.no_grad():
                    out[f"{mname}.{pname}" if mname else pname] = getattr(module, pname).detach()
    return out


def sparsity(t: Tensor) -> float:
    """Fraction of exact zeros in ``t``."""
    return 1.0 - (torch.count_nonzero(t).item() / t.numel()) if t.numel() else 0.0


def set_mask_(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Replace the keep-mask of ``module.<name>`` (it may grow: dynamic sparse training regrows weights).
    Attaches a mask if there was none."""
    current = get_mask(module, name)
    if current is None:
        apply_mask_(module, mask, name)
        return
    if mask.shape != current.shape:
        raise PlanError(f"mask of shape {tuple(mask.shape)} does not fit parameter of shape {tuple(current.shape)}")
    current.copy_(mask.to(device=current.device, dtype=torch.bool))


def original_parameter(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The trainable tensor under a (possibly masked) parameter: what the optimizer updates."""
    if parametrize.is_parametrized(module, name):
        return module.parametrizations[name].original
    return getattr(module, name)
