"""Saving and loading pruned models, dense and sparse.

Files are safetensors (no code runs on load) plus a small JSON record. Nothing here unpickles anything.

* :func:`save_model` / :func:`load_model`: a directory with ``model.safetensors`` (or the sparse form),
  ``prunekit.json`` (how to rebuild the architecture: a registered source spec such as
  ``torchvision:resnet18``, plus the structural record of a physically pruned model) and, when given,
  ``report.json``.
* :func:`export_sparse` / :func:`load_sparse`: per tensor, a bitmask of non-zeros (1 bit per weight) and
  the non-zero values; tensors for which that is not smaller stay dense. A 90%-sparse float32 model takes
  about 1/32 + 1/10 of its dense size.
"""

from __future__ import annotations

import json
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

from prunekit.apply.masks import effective_state_dict, masked_parameters
from prunekit.errors import CheckpointError

__all__ = [
    "DENSE_FILE",
    "FORMAT_VERSION",
    "RECORD",
    "SPARSE_FILE",
    "atomic_directory",
    "check_output_directory",
    "dense_bytes",
    "export_sparse",
    "load_model",
    "load_sparse",
    "load_state",
    "read_record",
    "save_model",
    "sparse_bytes",
]

FORMAT_VERSION = 1
RECORD = "prunekit.json"
DENSE_FILE = "model.safetensors"
SPARSE_FILE = "model.sparse.safetensors"
_MASK, _VALUES = "::mask", "::values"


def _untie(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses tensors that share memory (tied weights): give each key its own copy."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        ident = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (id(v), 0)
        if ident in seen or not v.is_contiguous():
            v = v.clone().contiguous()
        seen.add(ident)
        out[k] = v
    return out


def dense_bytes(state: dict[str, Tensor]) -> bytes:
    """The dense safetensors serialisation of ``state``."""
    return save(_untie(state))


def _encode_sparse(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for k, v in _untie(state).items():
        if _MASK in k or _VALUES in k:
            raise CheckpointError(f"tensor name {k!r} uses a reserved suffix")
        nz = v != 0
        n_nz = int(nz.sum())
        sparse_size = (v.numel() + 7) // 8 + n_nz * v.element_size()
        if v.numel() and v.is_floating_point() and sparse_size < v.numel() * v.element_size():
            bits = np.packbits(nz.reshape(-1).numpy().astype(np.uint8))
            tensors[k + _MASK] = torch.from_numpy(bits)
            tensors[k + _VALUES] = v.reshape(-1)[nz.reshape(-1)].contiguous()
            meta[k] = {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        else:
            tensors[k] = v
    return tensors, {"prunekit_sparse": json.dumps(meta), "format_version": str(FORMAT_VERSION)}


def sparse_bytes(state: dict[str, Tensor]) -> bytes:
    """The sparse safetensors serialisation of ``state`` (what :func:`export_sparse` writes): per floating
    tensor for which it is smaller, a bitmask of non-zeros (1 bit per element) and the non-zero values.

    Raises :class:`~prunekit.errors.CheckpointError` when a key uses the reserved ``::mask`` / ``::values``
    suffixes.
    """
    tensors, meta = _encode_sparse(state)
    return save(tensors, metadata=meta)


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
        raise CheckpointError(
            f"export_sparse takes a model or a state dict, got {type(model_or_state).__name__}"
        )
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; export_sparse writes one file: pass a file path such as "
            f"{path / SPARSE_FILE} (save_model(model, folder, sparse=True) writes a whole model folder)"
        )
    state = effective_state_dict(model_or_state) if isinstance(model_or_state, nn.Module) else model_or_state
    tensors, meta = _encode_sparse(state)
    _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
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


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file and rename, so a failure never leaves a half-written file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_model(
    model: nn.Module,
    directory: str | os.PathLike,
    *,
    sparse: bool = False,
    source: str | None = None,
    report: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (masks folded in) to ``directory``; :func:`load_model` rebuilds it.

    ``source`` is the registered spec that builds the architecture (defaults to the one recorded when the
    model was built by :func:`prunekit.models.build_model`). Without a source the weights are still saved,
    and :func:`load_model` needs the architecture passed in as ``model=``. ``extra`` adds JSON-able fields
    to the record (e.g. the example input shape). Returns ``directory``. Raises
    :class:`~prunekit.errors.CheckpointError` when ``model`` is not a module or ``directory`` is a file.
    """
    from prunekit.models import source_of

    if not isinstance(model, nn.Module):
        raise CheckpointError(f"save_model takes a torch.nn.Module, got {type(model).__name__}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(
            f"{directory} is a file, not a folder; choose another folder for save_model (it writes "
            f"{DENSE_FILE} and {RECORD} into it)"
        )
    state = effective_state_dict(model)
    record: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "source": source or source_of(model),
        "weights": SPARSE_FILE if sparse else DENSE_FILE,
        "masked": [f"{m}.{p}" if m else p for m, _, p, _ in masked_parameters(model)],
        "structure": _structure_record(model),
        "dtype": str(next((p.dtype for p in model.parameters()), torch.float32)).removeprefix("torch."),
        **(extra or {}),
    }
    directory.mkdir(parents=True, exist_ok=True)
    if sparse:
        export_sparse(state, directory / SPARSE_FILE)
    else:
        tensors = _untie(state)
        _atomic_write(directory / DENSE_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    if report is not None:
        _atomic_write(directory / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    _atomic_write(directory / RECORD, lambda tmp: Path(tmp).write_text(json.dumps(record, indent=2)))
    return directory


def check_output_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse, before any long work, to write into a non-empty ``directory`` unless ``overwrite`` is set.

    Raises :class:`~prunekit.errors.CheckpointError` naming ``--overwrite`` / ``overwrite=True``. Returns the path.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"{directory} exists and is not a directory; choose another output path")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(
            f"{directory} already exists and is not empty; choose another output directory or pass "
            "--overwrite (overwrite=True in Python) to replace it"
        )
    return directory


@contextmanager
def atomic_directory(directory: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Write a whole output directory or nothing: yields a temporary sibling folder to write into, which
    replaces ``directory`` only when the block finishes without an error.

    An interrupted or failed write removes the temporary folder and leaves ``directory`` as it was. A
    non-empty ``directory`` is refused (:class:`~prunekit.errors.CheckpointError`) unless ``overwrite`` is set.
    """
    directory = check_output_directory(directory, overwrite=overwrite)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".partial"))
    try:
        yield tmp
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


def load_model(
    directory: str | os.PathLike, *, model: nn.Module | None = None, attach_masks: bool = False
) -> nn.Module:
    """Load a model saved by :func:`save_model`, in eval mode.

    The architecture comes from ``model`` if given, else from the recorded source spec (only registered
    builders are used; no code is loaded from the directory). Weights load strictly. With
    ``attach_masks=True`` the masks of the pruned parameters are attached again (keep-mask = non-zero),
    so that fine-tuning keeps the zeros. Raises :class:`~prunekit.errors.CheckpointError` when the
    record or weights are missing or corrupt, no architecture is known, or the weights do not fit it.
    """
    from prunekit.apply.masks import apply_mask_

    directory = Path(directory)
    record = read_record(directory)
    state = load_state(directory)
    if model is None:
        if not record.get("source"):
            raise CheckpointError(
                f"{directory} records no architecture source; pass the architecture: load_model(dir, model=MyNet())"
            )
        model = _build_recorded(directory, record["source"])
    if record.get("structure"):
        _apply_structure(model, record["structure"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"the weights in {directory} do not fit the architecture: {e}") from None
    if attach_masks:
        modules = dict(model.named_modules())
        for key in record.get("masked", []):
            mname, _, pname = key.rpartition(".")
            apply_mask_(modules[mname], getattr(modules[mname], pname) != 0, pname)
    return model.eval()


def _build_recorded(directory: Path, source: Any) -> nn.Module:
    """The architecture a saved record names, built by a registered builder (never from files on disk)."""
    from prunekit.errors import UnknownNameError
    from prunekit.models import build_model

    advice = "pass the architecture: load_model(dir, model=MyNet())"
    if not isinstance(source, str) or not source.startswith(("torchvision:", "prunekit:")):
        raise CheckpointError(
            f"{directory / RECORD} names the source {source!r}, which is not a registered builder "
            f"(torchvision:NAME, prunekit:NAME); {advice}"
        )
    try:
        return build_model(source, pretrained=False)
    except UnknownNameError as e:
        raise CheckpointError(
            f"{directory / RECORD} names the source {source!r}, which cannot be built ({e}); {advice}"
        ) from None


def _structure_record(model: nn.Module) -> dict[str, Any] | None:
    try:
        from prunekit.surgery import structure_record  # type: ignore[attr-defined]
    except ImportError:
        return None
    return structure_record(model)


def _apply_structure(model: nn.Module, record: dict[str, Any]) -> None:
    try:
        from prunekit.surgery import apply_structure_record  # type: ignore[attr-defined]
    except ImportError:
        raise CheckpointError("this model was pruned structurally, but this install has no structural engine") from None
    apply_structure_record(model, record)
