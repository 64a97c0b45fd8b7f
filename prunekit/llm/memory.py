"""Measuring the memory a computation allocates, on any device (also on CPU, where torch keeps no statistics).

:class:`AllocationMeter` is a dispatch mode that sees every tensor an operator creates while it is active,
counts the bytes of storages that are new (not views of, or writes into, an input) and still alive, and
records the peak. Tensors that existed before (the model's weights) are not counted; copies of them are.
On CUDA, ``torch.cuda.max_memory_allocated`` gives the same kind of figure for the device.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["AllocationMeter", "HeapTrimmer", "release_freed_memory", "tensor_bytes"]


class AllocationMeter(TorchDispatchMode):
    """``with AllocationMeter() as m: ...`` then ``m.peak_bytes`` (and ``m.live_bytes`` still held), in bytes.

    A :class:`~torch.utils._python_dispatch.TorchDispatchMode`: it counts storages created while it is
    active, whatever their device (meta tensors excepted).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        # storage identity (its StorageImpl, stable when the storage is resized or emptied in place) ->
        # [the storage, its bytes when last seen, ids of the live tensors using it]; holding the storage keeps
        # the identity unique while it is tracked, and it is let go with the last of its tensors
        self._storages: dict[int, list[Any]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage()._cdata
            for t in tree_flatten((args, kwargs or {}))[0]
            if isinstance(t, Tensor) and t.device.type != "meta"
        }
        changed = False
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor) and t.device.type != "meta":
                changed |= self._track(t, inputs)
        if changed:
            # storages resized in place (emptied to disk and read back, grown by ``resize_``) change size
            # without an operator creating anything: the live figure is summed anew
            for entry in self._storages.values():
                entry[1] = entry[0].nbytes()
            self.live_bytes = sum(entry[1] for entry in self._storages.values())
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out

    def _track(self, t: Tensor, inputs: set[int]) -> bool:
        """Track ``t``'s storage; True when the bytes held may have grown (a new storage, or one resized)."""
        storage = t.untyped_storage()
        key = storage._cdata
        entry = self._storages.get(key)
        grew = False
        if entry is None:
            if key in inputs or storage.nbytes() == 0:
                return False  # a view of (or a write into) a tensor that existed before: no new memory
            entry = [storage, storage.nbytes(), set()]
            self._storages[key] = entry
            grew = True
        elif entry[1] != storage.nbytes():  # written into after an in-place resize
            entry[1] = storage.nbytes()
            grew = True
        if id(t) not in entry[2]:
            entry[2].add(id(t))
            weakref.finalize(t, self._release, key, entry, id(t))
        return grew

    def _release(self, key: int, entry: list[Any], tid: int) -> None:
        entry[2].discard(tid)
        if not entry[2] and self._storages.get(key) is entry:
            del self._storages[key]
            self.live_bytes -= entry[1]


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes held by a module's parameters and buffers (``numel * element_size`` summed; shared tensors
    counted each time they appear)."""
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def release_freed_memory() -> None:
    """Return heap pages freed since the last call to the operating system (glibc's ``malloc_trim``); a
    no-op where the C library has none.

    The layer-wise runner calls it after every decoder layer. Without it the resident set grows layer
    after layer although nothing stays referenced: glibc raises its mmap threshold after large frees, so
    later layer-sized tensors come from the heap, whose freed pages it keeps (SmolLM2-135M streamed from
    its files: +350 MB over 30 layers; in memory, true-sequential Wanda: about +10 MB a layer).
    """
    global _LIBC
    if _LIBC is None:
        import ctypes
        import ctypes.util

        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _LIBC = lib if hasattr(lib, "malloc_trim") else False
        except OSError:
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: Any = None


def resident_bytes() -> int:
    """The process's resident set in bytes (Linux ``/proc/self/statm``); 0 where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _page_size()
    except (OSError, ValueError, IndexError):
        return 0


def _page_size() -> int:
    import mmap

    return mmap.PAGESIZE


class HeapTrimmer:
    """``trim()`` calls :func:`release_freed_memory` only when the resident set has grown by more than
    ``slack_mib`` since the last trim (or since its lowest reading after it): a trim walks the whole heap
    (milliseconds), a reading of the resident set costs microseconds. Where the resident set cannot be read,
    it never trims."""

    def __init__(self, slack_mib: float = 32.0):
        self.slack = int(slack_mib * 2**20)
        self.low = resident_bytes()
        self.trims = 0

    def trim(self) -> None:
        """Trim if the resident set grew by more than the slack since the last trim or its lowest since."""
        now = resident_bytes()
        if not now:
            return
        if now > self.low + self.slack:
            release_freed_memory()
            self.trims += 1
            self.low = resident_bytes() or now
        else:
            self.low = min(self.low, now)
