"""Transactional changes: any error inside leaves the model as it was."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.targets import state_prefixes

__all__ = ["SPILL_BYTES", "transaction"]

#: models whose parameters and buffers take more bytes than this are snapshotted to a temporary file
SPILL_BYTES = 64 << 20

_SHALLOW_DICTS = ("_parameters", "_buffers", "_modules")


_ATOMS = (int, float, bool, str, type(None))


def _immutable(value: Any) -> bool:
    return isinstance(value, _ATOMS) or (type(value) is tuple and all(isinstance(v, _ATOMS) for v in value))


def snapshot_tree(model: nn.Module) -> list[tuple[nn.Module, dict[str, Any], dict[int, torch.Tensor], type]]:
    """For every module: its attribute dict (registries copied shallowly, other values deep-copied with one
    shared memo so that objects shared between modules, such as a Hugging Face config, stay shared) and the
    storage each of its tensors points at, and its class. No weight is copied."""
    memo: dict[int, Any] = {}
    out = []
    for module in model.modules():
        saved: dict[str, Any] = {}
        for key, value in module.__dict__.items():
            if key in _SHALLOW_DICTS or isinstance(value, (nn.Module, torch.Tensor)) or "hooks" in key:
                saved[key] = type(value)(value) if isinstance(value, dict) else value
            elif isinstance(value, list) and all(v is None or isinstance(v, torch.Tensor) for v in value):
                saved[key] = list(value)  # references to the module's own tensors (an RNN's _flat_weights)
            elif isinstance(value, (set, frozenset)) and all(isinstance(v, _ATOMS) for v in value):
                saved[key] = set(value) if isinstance(value, set) else value
            elif _immutable(value):  # ints, flags, shapes: nothing to copy
                saved[key] = value
            else:
                try:
                    saved[key] = copy.deepcopy(value, memo)
                except Exception:  # an attribute that cannot be copied is kept by reference
                    saved[key] = value
        data = {
            id(t): t.data for t in list(module._parameters.values()) + list(module._buffers.values()) if t is not None
        }
        out.append((module, saved, data, type(module)))
    return out


def restore_tree(snapshot: list[tuple[nn.Module, dict[str, Any], dict[int, torch.Tensor], type]]) -> None:
    """Put every module of a :func:`snapshot_tree` back: its class, its attributes and its tensors' storage."""
    for module, saved, data, cls in snapshot:
        if type(module) is not cls:  # surgery may switch a module's class (nn.MultiheadAttention losing heads)
            module.__class__ = cls
        module.__dict__.clear()
        module.__dict__.update(saved)
        for t in list(module._parameters.values()) + list(module._buffers.values()):
            if t is not None and id(t) in data:
                t.data = data[id(t)]


def _raw(t: torch.Tensor) -> Any:
    """The bytes of a contiguous CPU tensor, as a writable buffer over its memory (no copy)."""
    import ctypes

    return (ctypes.c_char * (t.numel() * t.element_size())).from_address(t.data_ptr())


class _Saved:
    """The values of a state dict, copied: in memory, or written as raw bytes to an anonymous temporary file
    when they take more than :data:`SPILL_BYTES` (the file's pages stay in the OS cache, not in this process).
    The file holds each tensor's bytes back to back; shapes and dtypes stay here, so reading it back
    unpickles nothing (and costs a copy at memory speed, not a serialisation)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        size = sum(v.numel() * v.element_size() for v in state.values())
        self.file: Any = None
        self.tensors: dict[str, torch.Tensor] = {}
        self.index: dict[str, tuple[int, tuple[int, ...], torch.dtype]] = {}
        values = {k: v.detach() for k, v in state.items()}
        plain = all(v.device.type == "cpu" and v.layout == torch.strided for v in values.values())
        if size > SPILL_BYTES and plain:
            try:
                self.file = tempfile.TemporaryFile(prefix="prunekit-snapshot-")
                self._write(values)
                self.file.flush()
                return
            except OSError:  # no room for the file: keep the copy in memory
                self.close()
                self.index = {}
        self.tensors = {k: v.clone() for k, v in values.items()}

    def _write(self, values: dict[str, torch.Tensor]) -> None:
        offset = 0
        for key, value in values.items():
            flat = value.resolve_conj().resolve_neg().contiguous()
            n = flat.numel() * flat.element_size()
            if n:
                self.file.write(_raw(flat))
            self.index[key] = (offset, tuple(flat.shape), flat.dtype)
            offset += n

    def load(self) -> dict[str, torch.Tensor]:
        if self.file is None:
            return self.tensors
        loaded: dict[str, torch.Tensor] = {}
        for key, (offset, shape, dtype) in self.index.items():
            t = torch.empty(shape, dtype=dtype)
            n = t.numel() * t.element_size()
            if n:
                self.file.seek(offset)
                if self.file.readinto(_raw(t)) != n:
                    raise OSError("the snapshot in the temporary file could not be read back whole")
            loaded[key] = t
        return loaded

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


@contextmanager
def transaction(
    model: nn.Module, *, structural: bool = False, modules: Iterable[nn.Module] | None = None
) -> Iterator[None]:
    """Snapshot ``model``; if the block raises, restore it and re-raise.

    The default snapshot copies every parameter and buffer value and remembers which parametrizations
    exist: it undoes value changes and added masks bit for bit. A model of more than
    :data:`SPILL_BYTES` keeps that copy in a temporary file instead of memory (read back only on failure), so
    a transaction does not double the memory a large model takes. ``structural=True`` is for surgery that
    replaces modules, parameters and attributes instead of writing into tensors: it snapshots the module
    tree (attribute dicts and tensor references, configs deep-copied) without copying any weight, and
    restores the original objects on failure. ``modules`` (value snapshots only): the block changes nothing
    but these submodules' tensors and parametrizations, so only their tensors are copied (a layer-wise solver
    that rewrites its target Linears: the embeddings are neither copied nor, for a model mapped from its
    checkpoint file, read into memory).
    """
    if structural:
        snap = snapshot_tree(model)
        try:
            yield
        except BaseException:
            restore_tree(snap)
            raise
        return
    state = model.state_dict(keep_vars=True)
    if modules is not None:
        prefixes = state_prefixes(model, modules)
        state = {k: v for k, v in state.items() if k.startswith(prefixes)} if prefixes else {}
    tensors = _Saved(state)
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
                        from prunekit.apply.masks import own_parametrized_class_

                        own_parametrized_class_(m)
                        parametrize.remove_parametrizations(m, p, leave_parametrized=False)
        current = model.state_dict(keep_vars=True)
        for k, v in tensors.load().items():
            if k in current:
                current[k].data.copy_(v)
        raise
    finally:
        tensors.close()
