"""Transactional changes: any error inside leaves the model bit-identical to before."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn
from torch.nn.utils import parametrize


@contextmanager
def transaction(model: nn.Module, *, deep: bool = False) -> Iterator[None]:
    """Snapshot ``model``; if the block raises, restore it and re-raise.

    The default snapshot copies every parameter and buffer and remembers which parametrizations exist, which
    undoes value changes and added masks. ``deep=True`` snapshots the whole module tree, for changes that
    replace modules or shapes (structural surgery).
    """
    if deep:
        backup = copy.deepcopy(model)
        try:
            yield
        except BaseException:
            model.__dict__.clear()
            model.__dict__.update(backup.__dict__)
            raise
        return
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    existing = {
        (name, p)
        for name, m in model.named_modules()
        if parametrize.is_parametrized(m)
        for p in m.parametrizations.keys()
    }
    try:
        yield
    except BaseException:
        for name, m in list(model.named_modules()):
            if parametrize.is_parametrized(m):
                for p in list(m.parametrizations.keys()):
                    if (name, p) not in existing:
                        parametrize.remove_parametrizations(m, p, leave_parametrized=False)
        current = model.state_dict(keep_vars=True)
        for k, v in tensors.items():
            if k in current:
                current[k].data.copy_(v)
        raise
