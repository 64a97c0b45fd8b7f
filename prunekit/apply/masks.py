"""Masks: keep-masks applied to parameters as parametrizations.

A masked parameter is computed as ``original * mask`` on every access, so training (any optimizer, any
loop) keeps pruned weights at exactly zero. The original values stay untouched underneath:
:func:`remove_masks_` takes the masks off again (undo), :func:`squash_masks_` folds them into the weights
(the zeros become real) and removes the parametrization.

Masks compose with parametrizations a weight already has (``weight_norm`` as in wav2vec2, or any other):
the mask is registered after them, so it multiplies the weight they compute.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _WeightNorm

from prunekit.errors import PlanError, UnsupportedModuleError
from prunekit.layout import is_parametrization_key, parametrization_list

__all__ = [
    "Mask",
    "apply_mask_",
    "assign_weight_",
    "effective_state_dict",
    "get_mask",
    "masked_parameters",
    "masked_sparsity",
    "original_parameter",
    "own_parametrized_class_",
    "remove_masks_",
    "set_mask_",
    "sparsity",
    "squash_masks_",
]


class Mask(nn.Module):
    """Parametrization ``w -> w * mask`` with a boolean keep-mask buffer (saved in the state dict)."""

    mask: Tensor

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: Tensor) -> Tensor:
        """``weight * mask`` (the mask cast to the weight's dtype); same shape as ``weight``."""
        return weight * self.mask.to(weight.dtype)

    def right_inverse(self, weight: Tensor) -> Tensor:
        """Store an assigned ``weight`` as it is (torch calls this on ``module.weight = value``)."""
        # assigning a weight stores it as it is; the mask keeps zeroing the pruned positions
        return weight

    def extra_repr(self) -> str:
        """``density=<fraction of weights kept>`` for the module's repr."""
        return f"density={self.mask.float().mean().item():.4f}"


def get_mask(module: nn.Module, name: str = "weight") -> Tensor | None:
    """The keep-mask on ``module.<name>``, or None if it is not masked."""
    if not parametrize.is_parametrized(module, name):
        return None
    for p in parametrization_list(module, name):
        if isinstance(p, Mask):
            return p.mask
    return None


def apply_mask_(module: nn.Module, mask: Tensor, name: str = "weight") -> None:
    """Mask ``module.<name>`` in place. A parameter that is already masked keeps the intersection of both
    masks (masks only shrink).

    ``mask``: a keep-mask (True = keep) shaped like the stored parameter. Raises
    :class:`~prunekit.errors.PlanError` when the shapes differ.
    """
    param = getattr(module, name)
    if mask.shape != param.shape:
        raise PlanError(f"mask of shape {tuple(mask.shape)} does not fit parameter of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=torch.bool)
    current = get_mask(module, name)
    if current is not None:
        current.logical_and_(mask)
        return
    parametrize.register_parametrization(module, name, Mask(mask), unsafe=False)


def masked_sparsity(model: nn.Module) -> float:
    """Fraction of masked-out entries over every masked parameter of ``model`` (0.0 when nothing is masked):
    the sparsity the masks impose, whatever the values under them."""
    total = zeros = 0
    for _, _module, _pname, mask in masked_parameters(model):
        total += mask.numel()
        zeros += int((~mask).sum())
    return zeros / total if total else 0.0


def masked_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, Tensor]]:
    """(module name, module, parameter name, mask) for every masked parameter."""
    for mname, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for pname in list(module.parametrizations.keys()):
                mask = get_mask(module, pname)
                if mask is not None:
                    yield mname, module, pname, mask


def _mask_index(plist: parametrize.ParametrizationList) -> int:
    return next(i for i, p in enumerate(plist) if isinstance(p, Mask))


def _check_foldable(name: str, module: nn.Module, pname: str) -> None:
    plist = parametrization_list(module, pname)
    idx = _mask_index(plist)
    if len(plist) == 1 or (idx == 0 and hasattr(plist, "original")) or idx == len(plist) - 1:
        return
    raise UnsupportedModuleError(
        f"{name}.{pname}: the mask sits between other parametrizations "
        f"({', '.join(type(p).__name__ for p in plist)}), so it cannot be folded into the weight; remove the "
        "others first (torch.nn.utils.parametrize.remove_parametrizations(module, name, leave_parametrized=True))"
    )


def _remove(model: nn.Module, fold: bool) -> int:
    found = list(masked_parameters(model))
    if fold:  # refuse before anything is changed
        for mname, module, pname, _ in found:
            _check_foldable(mname, module, pname)
    count = 0
    for _, module, pname, _ in found:
        plist = parametrization_list(module, pname)
        idx = _mask_index(plist)
        if len(plist) == 1:
            own_parametrized_class_(module)
            parametrize.remove_parametrizations(module, pname, leave_parametrized=fold)
        elif not fold:  # other parametrizations stay; drop ours only
            del plist[idx]
        elif idx == 0 and hasattr(plist, "original"):  # the mask acts on the stored tensor itself
            with torch.no_grad():
                plist.original.mul_(cast(Mask, plist[0]).mask.to(plist.original.dtype))
            del plist[0]
        else:  # the mask acts on what the others compute: store that value through them
            with torch.no_grad():
                value = getattr(module, pname).detach().clone()
            del plist[idx]
            assign_weight_(module, value, pname)
        count += 1
    return count


def own_parametrized_class_(module: nn.Module) -> None:
    """Give a parametrized ``module`` a class of its own before a parametrization is removed from it.

    torch keeps a parametrized tensor as a property of the module's generated class
    (``ParametrizedLinear``), and ``copy.deepcopy`` gives the copy the *same* class object; removing the
    parametrization deletes the property from that class, which breaks every other module sharing it (a
    model deep-copied before or after pruning loses ``weight``). A private class with the same bases and
    attributes makes the removal touch this module only."""
    cls = type(module)
    if not parametrize.is_parametrized(module):
        return
    attrs = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, attrs)


def squash_masks_(model: nn.Module) -> int:
    """Fold every mask into its weight (pruned weights become real zeros) and remove the parametrization.
    Returns the number of parameters squashed.

    Raises :class:`~prunekit.errors.UnsupportedModuleError`, before anything changes, when a mask sits
    between other parametrizations of a weight.
    """
    return _remove(model, fold=True)


def remove_masks_(model: nn.Module) -> int:
    """Take every mask off, restoring the original (unpruned) values. Returns the number removed."""
    return _remove(model, fold=False)


def effective_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict as the model computes with it: masks folded in, under the plain parameter names
    (``layer.weight``, not ``layer.parametrizations.weight.original``), mask buffers left out."""
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        if not is_parametrization_key(key):
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
    Attaches a mask if there was none. Raises :class:`~prunekit.errors.PlanError` when ``mask`` does not have
    the parameter's shape."""
    current = get_mask(module, name)
    if current is None:
        apply_mask_(module, mask, name)
        return
    if mask.shape != current.shape:
        raise PlanError(f"mask of shape {tuple(mask.shape)} does not fit parameter of shape {tuple(current.shape)}")
    current.copy_(mask.to(device=current.device, dtype=torch.bool))


def original_parameter(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The trainable tensor under a (possibly masked) parameter: what the optimizer updates.

    Raises :class:`~prunekit.errors.UnsupportedModuleError` when the parameter is computed from several
    tensors (``weight_norm``).
    """
    if parametrize.is_parametrized(module, name):
        plist = parametrization_list(module, name)
        if not hasattr(plist, "original"):
            raise UnsupportedModuleError(
                f"{type(module).__name__}.{name} is computed from several tensors "
                f"({', '.join(type(p).__name__ for p in plist)}), not one trainable weight; fold them first "
                "(torch.nn.utils.parametrize.remove_parametrizations(module, name, leave_parametrized=True))"
            )
        return cast(nn.Parameter, plist.original)  # registered from the module's parameter
    param: nn.Parameter = getattr(module, name)
    return param


def assign_weight_(module: nn.Module, value: Tensor, name: str = "weight") -> None:
    """Make ``module.<name>`` compute ``value`` from now on, whatever parametrizations it has.

    A plain parameter is overwritten. Under masks the stored tensor takes the value (the masks keep
    zeroing their positions). Under ``weight_norm`` (``w = g * v / ||v||``) ``g`` becomes ``||value||`` and
    ``v`` the value itself, except where a whole normalised slice of ``value`` is zero: there ``g = 0`` and
    ``v`` keeps its direction, so no 0/0 appears. Any other parametrization is written through its
    ``right_inverse`` and the result checked; one that cannot store ``value`` raises
    :class:`~prunekit.errors.UnsupportedModuleError` and is left as it was. A ``value`` of another shape
    raises :class:`~prunekit.errors.PlanError`.
    """
    target = getattr(module, name)
    if value.shape != target.shape:
        raise PlanError(f"a value of shape {tuple(value.shape)} does not fit {name} of shape {tuple(target.shape)}")
    with torch.no_grad():
        if not parametrize.is_parametrized(module, name):
            target.copy_(value)
            return
        plist = parametrization_list(module, name)
        others = [p for p in plist if not isinstance(p, Mask)]
        if not others:
            plist.original.copy_(value.to(plist.original.dtype))
            return
        first = plist[0]
        if len(others) == 1 and isinstance(first, _WeightNorm):
            g, v = cast(Tensor, plist.original0), cast(Tensor, plist.original1)
            norm = torch.norm_except_dim(value.to(v.dtype), 2, first.dim).reshape(g.shape)
            v.copy_(torch.where(norm == 0, v, value.to(v.dtype)))
            g.copy_(norm.to(g.dtype))
            return
        stored = dict(plist.named_parameters()) | dict(plist.named_buffers())  # right_inverse may touch buffers
        saved = {k: t.detach().clone() for k, t in stored.items()}
        failure = ""
        try:
            setattr(module, name, value)
            got = getattr(module, name)
            if not torch.allclose(got, value, rtol=1e-4, atol=1e-6):
                failure = "its right_inverse does not reproduce the value"
        except (RuntimeError, ValueError, NotImplementedError) as e:
            failure = str(e)
        if failure:
            for k, t in (dict(plist.named_parameters()) | dict(plist.named_buffers())).items():
                t.copy_(saved[k])
            raise UnsupportedModuleError(
                f"cannot store a new value in {type(module).__name__}.{name} through its parametrizations "
                f"({', '.join(type(p).__name__ for p in plist)}): {failure}. Fold them first "
                "(torch.nn.utils.parametrize.remove_parametrizations(module, name, leave_parametrized=True))"
            )
