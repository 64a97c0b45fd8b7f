"""Saving and loading pruned models, dense and sparse.

Files are safetensors (no code runs on load) plus a small JSON record. Nothing here unpickles anything.

* the saved-model directory (written by :func:`prunekit.models.save_model`): ``model.safetensors`` (or
  the sparse form), ``prunekit.json`` (:func:`read_record`: how to rebuild the architecture, a registered
  source spec such as ``torchvision:resnet18``, plus the structural record of a physically pruned model)
  and, when given, ``report.json``; written whole or not at all (:func:`atomic_directory`).
* :func:`export_sparse` / :func:`load_sparse`: per tensor, a bitmask of non-zeros (1 bit per weight) and
  the non-zero values; tensors for which that is not smaller stay dense. A 90%-sparse float32 model takes
  about 1/32 + 1/10 of its dense size.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

from prunekit.apply.masks import effective_state_dict
from prunekit.errors import CheckpointError

__all__ = [
    "DENSE_FILE",
    "FORMAT_VERSION",
    "RECORD",
    "SAVED_METADATA",
    "SPARSE_FILE",
    "atomic_directory",
    "atomic_write",
    "check_output_directory",
    "check_output_file",
    "dense_bytes",
    "dense_size",
    "export_sparse",
    "load_sparse",
    "load_state",
    "make_folder",
    "read_record",
    "safetensors_size",
    "sparse_bytes",
    "set_default_mode_",
    "sparse_size",
    "untie",
]

FORMAT_VERSION = 1
RECORD = "prunekit.json"
DENSE_FILE = "model.safetensors"
SPARSE_FILE = "model.sparse.safetensors"
_MASK, _VALUES = "::mask", "::values"
#: the header metadata of the dense weights file :func:`~prunekit.models.save_model` writes
SAVED_METADATA = {"format": "pt"}


def untie(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each key its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        ident = (v.untyped_storage().data_ptr(), int(v.storage_offset())) if v.numel() else (id(v), 0)
        if ident in seen or not v.is_contiguous():
            v = v.clone().contiguous()
        seen.add(ident)
        out[k] = v
    return out


def dense_bytes(state: dict[str, Tensor]) -> bytes:
    """The dense safetensors serialisation of ``state``."""
    return save(untie(state))


def _sparse_entry(v: Tensor) -> tuple[Tensor, int] | None:
    """``(non-zero mask, count)`` when the bitmask-plus-values form of ``v`` is smaller than ``v``, else None."""
    if not (v.numel() and v.is_floating_point()):
        return None
    nz = v != 0
    n_nz = int(nz.sum())
    smaller = (v.numel() + 7) // 8 + n_nz * v.element_size() < v.numel() * v.element_size()
    return (nz, n_nz) if smaller else None


def _sparse_metadata(meta: dict[str, Any]) -> dict[str, str]:
    return {"prunekit_sparse": json.dumps(meta), "format_version": str(FORMAT_VERSION)}


def _encode_sparse(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for k, v in untie(state).items():
        if _MASK in k or _VALUES in k:
            raise CheckpointError(f"tensor name {k!r} uses a reserved suffix")
        entry = _sparse_entry(v)
        if entry is not None:
            nz = entry[0].reshape(-1)
            tensors[k + _MASK] = torch.from_numpy(np.packbits(nz.numpy().astype(np.uint8)))
            tensors[k + _VALUES] = v.reshape(-1)[nz].contiguous()
            meta[k] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        else:
            tensors[k] = v
    return tensors, _sparse_metadata(meta)


def sparse_bytes(state: dict[str, Tensor]) -> bytes:
    """The sparse safetensors serialisation of ``state`` (what :func:`export_sparse` writes): per floating
    tensor for which it is smaller, a bitmask of non-zeros (1 bit per element) and the non-zero values.

    Raises :class:`~prunekit.errors.CheckpointError` when a key uses the reserved ``::mask`` / ``::values``
    suffixes.
    """
    tensors, meta = _encode_sparse(state)
    return save(tensors, metadata=meta)


_DTYPE_ORDER: dict[frozenset[torch.dtype], dict[torch.dtype, tuple[int, str]]] = {}


def _dtype_layout(dtypes: frozenset[torch.dtype]) -> dict[torch.dtype, tuple[int, str]]:
    """Per dtype, its rank in the order safetensors lays tensors out and its name in the header, read from the
    library itself: one element of each dtype serialised (so a new safetensors release cannot make sizes wrong)."""
    if dtypes not in _DTYPE_ORDER:
        probe = {f"t{i}": torch.zeros(1, dtype=dt) for i, dt in enumerate(sorted(dtypes, key=str))}
        raw = save(probe)
        header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
        by_name = {f"t{i}": dt for i, dt in enumerate(sorted(dtypes, key=str))}
        order = sorted(header, key=lambda k: header[k]["data_offsets"][0])
        _DTYPE_ORDER[dtypes] = {by_name[k]: (rank, header[k]["dtype"]) for rank, k in enumerate(order)}
    return _DTYPE_ORDER[dtypes]


def safetensors_size(entries: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str] | None) -> int:
    """The exact length in bytes of the safetensors file holding tensors of these dtypes and shapes, by name,
    with this metadata, computed without serialising any data (what :func:`safetensors.torch.save` would
    write: an 8-byte header length, the JSON header padded to 8 bytes, the tensors' bytes in the library's
    order). Memory: the header only, so sizing a 7B-parameter model costs no copy of it."""
    layout = _dtype_layout(frozenset(dt for dt, _ in entries.values()))
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name in sorted(entries, key=lambda k: (layout[entries[k][0]][0], k)):
        dtype, shape = entries[name]
        n = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": layout[dtype][1], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + len(text) + (-len(text)) % 8 + offset


def dense_size(state: dict[str, Tensor], metadata: dict[str, str] | None = None) -> int:
    """``len(dense_bytes(state))`` (with ``metadata`` in the header: the length of the file
    :func:`~prunekit.models.save_model` writes with ``{"format": "pt"}``), exactly, without serialising (see
    :func:`safetensors_size`)."""
    return safetensors_size({k: (v.dtype, tuple(v.shape)) for k, v in state.items()}, metadata)


def sparse_size(state: dict[str, Tensor]) -> int:
    """``len(sparse_bytes(state))``, exactly, without serialising: per tensor one count of its non-zeros.

    Raises :class:`~prunekit.errors.CheckpointError` like :func:`sparse_bytes`.
    """
    entries: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    meta: dict[str, Any] = {}
    for k, v in state.items():
        if _MASK in k or _VALUES in k:
            raise CheckpointError(f"tensor name {k!r} uses a reserved suffix")
        entry = _sparse_entry(v.detach())
        if entry is None:
            entries[k] = (v.dtype, tuple(v.shape))
            continue
        entries[k + _MASK] = (torch.uint8, ((v.numel() + 7) // 8,))
        entries[k + _VALUES] = (v.dtype, (entry[1],))
        meta[k] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
    return safetensors_size(entries, _sparse_metadata(meta))


def _decode_sparse(tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> dict[str, Tensor]:
    if not metadata or "prunekit_sparse" not in metadata:
        raise CheckpointError("not a prunekit sparse export (its metadata lacks 'prunekit_sparse')")
    try:
        meta = json.loads(metadata["prunekit_sparse"])
    except json.JSONDecodeError as e:
        raise CheckpointError(f"sparse export metadata is corrupt: {e}") from None
    out: dict[str, Tensor] = {k: v for k, v in tensors.items() if _MASK not in k and _VALUES not in k}
    for k, info in meta.items():
        try:
            bits, values = tensors[k + _MASK], tensors[k + _VALUES]
            shape = [int(s) for s in info["shape"]]
            dtype = getattr(torch, info["dtype"])
        except (KeyError, AttributeError, TypeError, ValueError) as e:
            raise CheckpointError(f"sparse export entry {k!r} is incomplete or corrupt ({e})") from None
        numel = int(np.prod(shape)) if shape else 1
        nz = np.unpackbits(bits.numpy(), count=numel).astype(bool)
        if int(nz.sum()) != values.numel() or values.dtype != dtype:
            raise CheckpointError(f"sparse export entry {k!r} is corrupt: mask and values do not agree")
        dense = torch.zeros(numel, dtype=dtype)
        dense[torch.from_numpy(nz)] = values
        out[k] = dense.reshape(shape)
    return out


def export_sparse(model_or_state: nn.Module | dict[str, Tensor], path: str | os.PathLike) -> Path:
    """Write the bitmask + values form of a model's (effective) weights to ``path`` (safetensors); returns it.

    Raises :class:`~prunekit.errors.CheckpointError` when given neither a model nor a state dict, or a folder.
    """
    if not isinstance(model_or_state, (nn.Module, dict)):
        raise CheckpointError(f"export_sparse takes a model or a state dict, got {type(model_or_state).__name__}")
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; export_sparse writes one file: pass a file path such as "
            f"{path / SPARSE_FILE} (save_model(model, folder, sparse=True) writes a whole model folder)"
        )
    state = effective_state_dict(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    tensors, meta = _encode_sparse(state)
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    return path


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a file written by :func:`export_sparse` back into a dense state dict (bit-identical values).

    Raises :class:`~prunekit.errors.CheckpointError` when the file is missing, not safetensors, or not a
    prunekit sparse export (or a corrupt one).
    """
    path = Path(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"no such file: {path}") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-export it") from None
    return _decode_sparse(tensors, metadata)


def _file_in_the_way(paths: tuple[Path, ...]) -> Path | None:
    """The deepest of ``paths`` (a path and its parents) that exists, when it is a file: where no folder can go."""
    existing = next((p for p in paths if p.exists()), None)
    return existing if existing is not None and not existing.is_dir() else None


def make_folder(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` and its parents (nothing to do when it exists). Raises
    :class:`~prunekit.errors.CheckpointError` when a file stands where a folder is needed."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = _file_in_the_way((path, *path.parents)) or path
        raise CheckpointError(
            f"cannot create the folder {path}: {blocking} is a file; choose another output path"
        ) from None
    return path


def set_default_mode_(path: Path) -> None:
    """Give ``path`` the permissions a newly created file (0666) or folder (0777) gets under the process's
    umask: temporary files and folders are created private (0600 / 0700), and outputs renamed from them must
    not stay so."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~mask)


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a failure never leaves a half-written file behind."""
    make_folder(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        set_default_mode_(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse, before any long work, to write into a non-empty ``directory`` unless ``overwrite`` is set.

    Raises :class:`~prunekit.errors.CheckpointError` naming ``--overwrite`` / ``overwrite=True``. Returns the path.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory; choose another output path")
    blocking = _file_in_the_way(tuple(directory.parents))
    if blocking is not None:
        raise CheckpointError(f"cannot create the folder {directory}: {blocking} is a file; choose another output path")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{directory} already exists and is not empty; choose another output directory or pass "
            "--overwrite (overwrite=True in Python) to replace it"
        )
    if overwrite and directory.is_dir():
        # replacing the working folder, the home folder or a folder holding either would delete what the
        # user is working in (and the working folder cannot be moved aside)
        resolved = directory.resolve()
        for where in (Path.cwd().resolve(), Path.home().resolve()):
            if resolved == where or resolved in where.parents:
                raise CheckpointError(
                    f"{directory} is {where} or a folder that holds it; an output replaces its folder whole, so "
                    "write into a new folder of its own (e.g. --out ./pruned)"
                )
    return directory


def check_output_file(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse, before any long work, an output file that could not be written or would replace one: ``path``
    is a folder, a part of its parent path is a file, or it exists and ``overwrite`` is not set. A special file
    (``/dev/stdout``, a pipe) is accepted as it is: writing to it replaces nothing.

    Raises :class:`~prunekit.errors.CheckpointError` (naming ``--overwrite`` / ``overwrite=True`` for an
    existing file). Returns the path.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; the output is one file: choose a file path such as {path / 'result.json'}"
        )
    existing = _file_in_the_way(tuple(path.parents))
    if existing is not None:
        raise CheckpointError(f"cannot write {path}: {existing} is a file, not a folder; choose another output path")
    if path.is_file() and not overwrite:
        raise CheckpointError(
            f"{path} already exists; choose another output file or pass --overwrite (overwrite=True in Python) "
            "to replace it"
        )
    return path


@contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a whole output directory or nothing: yields a temporary sibling folder to write into, which
    replaces ``directory`` only when the block finishes without an error.

    An interrupted or failed write removes the temporary folder and leaves ``directory`` as it was. A
    non-empty ``directory`` is refused (:class:`~prunekit.errors.CheckpointError`) unless ``overwrite`` is set.
    """
    directory = check_output_directory(directory, overwrite=overwrite)
    make_folder(directory.parent)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".partial"))
    try:
        yield tmp
        set_default_mode_(tmp)
        if directory.exists():
            old = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".old"))
            os.replace(directory, old / "previous")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_record(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``prunekit.json`` record of a model saved by :func:`save_model` (source, weights file, masked
    parameters, structural record, dtype, extra fields).

    Raises :class:`~prunekit.errors.CheckpointError` when the file is missing, corrupt or of another
    ``format_version``.
    """
    directory = Path(directory)
    path = directory / RECORD
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a saved prunekit model (no {RECORD}); save it with prunekit.save_model"
        )
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); save the model again") from None
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has an unknown format (format_version {record.get('format_version')!r})")
    return record


def load_state(directory: str | os.PathLike) -> dict[str, Tensor]:
    """The (dense) state dict saved in ``directory``, sparse files decoded.

    Raises :class:`~prunekit.errors.CheckpointError` when the record or the weights file is missing or corrupt.
    """
    directory = Path(directory)
    record = read_record(directory)
    weights = directory / str(record.get("weights", DENSE_FILE))
    if record.get("weights") == SPARSE_FILE:
        return load_sparse(weights)
    try:
        return load_file(str(weights))
    except FileNotFoundError:
        raise CheckpointError(f"{weights} is missing; the saved model is incomplete") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights} is corrupt ({e}); save the model again") from None
