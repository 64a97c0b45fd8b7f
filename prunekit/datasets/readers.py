"""File-format readers: idx files (MNIST-style image and label arrays) and R lazy-load databases.

Both check what they read and raise :class:`~prunekit.errors.CheckpointError` on anything that does not
match the format (bad magic, truncated data, wrong sizes), so a corrupt download never becomes data.
"""

from __future__ import annotations

import gzip
import importlib
import os
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from prunekit.datasets.registry import RDATA_REQUIREMENT, install_command
from prunekit.errors import CheckpointError, SourceMissingError

__all__ = ["read_idx", "read_r_lazyload"]

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str], *, expect_ndim: int | None = None) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a numpy array, checking magic and size.

    Format: two zero bytes, a type code, the number of dimensions, one big-endian uint32 per
    dimension, then the data. Raises CheckpointError on anything that does not match.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            gz = fh.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gz else path.open("rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{path}: cannot read idx file: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise CheckpointError(f"{path}: bad idx magic number {raw[:4].hex() or '(empty)'}")
    ndim = raw[3]
    if ndim == 0 or (expect_ndim is not None and ndim != expect_ndim):
        raise CheckpointError(f"{path}: idx file has {ndim} dimensions, expected {expect_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CheckpointError(f"{path}: truncated idx header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise CheckpointError(f"{path}: idx data has {len(raw) - header} bytes, dims {dims} need {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _rdata() -> Any:
    try:
        return importlib.import_module("rdata")
    except ImportError:
        return None


def _parse_r(rdata: Any, payload: bytes, what: str) -> Any:
    """Deserialize one R object (serialization format 'X\\n' ...) with the rdata package."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rdata warns that a bare serialization has no file type
            parsed = rdata.parser.parse_data(payload, extension=".rds")
            return rdata.conversion.convert(parsed)
    except Exception as exc:  # rdata raises a variety of errors on malformed input
        raise CheckpointError(f"{what}: cannot parse R serialized data: {exc}") from exc


def read_r_lazyload(rdx: str | os.PathLike[str], rdb: str | os.PathLike[str], name: str) -> Any:
    """Read object ``name`` from an R lazy-load database (the ``.rdx`` index plus ``.rdb`` blobs).

    The index is a gzip-compressed serialized list whose ``variables`` map names to (offset, length)
    in the ``.rdb``; each blob there is a 4-byte big-endian uncompressed size followed by zlib data
    (or, in newer R, a type byte and bzip2/xz data). Requires the PyPI package ``rdata``
    (SourceMissingError naming the install command without it); CheckpointError on a corrupt file.
    """
    rdata = _rdata()
    if rdata is None:
        raise SourceMissingError(
            f"reading R data needs the PyPI package {RDATA_REQUIREMENT}; install it with: {install_command('austen')}"
        )
    try:
        index_bytes = Path(rdx).read_bytes()
        if index_bytes[:2] == b"\x1f\x8b":
            index_bytes = gzip.decompress(index_bytes)
    except (OSError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{rdx}: cannot read R lazy-load index: {exc}") from exc
    index = _parse_r(rdata, index_bytes, str(rdx))
    try:
        variables = {str(k): v for k, v in index["variables"].items()}
        compressed = int(np.asarray(index.get("compressed", [1])).ravel()[0])
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise CheckpointError(f"{rdx}: not an R lazy-load index") from exc
    if name not in variables:
        raise CheckpointError(f"{rdx}: no object {name!r}; it holds {', '.join(sorted(variables))}")
    offset, length = (int(v) for v in np.asarray(variables[name]).ravel()[:2])
    with Path(rdb).open("rb") as fh:
        fh.seek(offset)
        blob = fh.read(length)
    if len(blob) != length or length < 4:
        raise CheckpointError(f"{rdb}: truncated object {name!r}")
    size = struct.unpack(">I", blob[:4])[0]
    try:
        if compressed in (2, 3):  # newer R: a type byte, then bzip2 ('2'), xz ('X'), zlib ('Z') or raw ('0')
            kind, body = blob[4:5], blob[5:]
            if kind == b"2":
                import bz2

                payload = bz2.decompress(body)
            elif kind == b"X":
                import lzma

                payload = lzma.decompress(body)
            elif kind == b"Z":
                payload = zlib.decompress(body)
            else:
                payload = body
        else:
            payload = zlib.decompress(blob[4:])
    except (OSError, ValueError, EOFError, zlib.error) as exc:
        raise CheckpointError(f"{rdb}: cannot decompress object {name!r}: {exc}") from exc
    if len(payload) != size:
        raise CheckpointError(f"{rdb}: object {name!r} has {len(payload)} bytes, the header says {size}")
    return _parse_r(rdata, payload, f"{rdb}[{name}]")
