import json
from pathlib import Path

import pytest
import torch
import torchvision
from conftest import SmallCNN
from torch import nn

import prunekit as pk
from prunekit.apply.masks import effective_state_dict
from prunekit.serialization import (
    DENSE_FILE,
    RECORD,
    SPARSE_FILE,
    check_output_file,
    dense_bytes,
    dense_size,
    sparse_bytes,
    sparse_size,
)


@pytest.fixture(scope="module")
def sparse_resnet18():
    torch.manual_seed(0)
    model = pk.build_model("torchvision:resnet18", pretrained=False)
    pk.prune(model, "magnitude", sparsity=0.9, allocation="global", prune_classifier=True, measure=False)
    return model


def test_sparse_export_is_small_and_exact(sparse_resnet18, tmp_path):
    state = effective_state_dict(sparse_resnet18)
    dense_path = tmp_path / "dense.safetensors"
    dense_path.write_bytes(dense_bytes(state))
    sparse_path = pk.export_sparse(sparse_resnet18, tmp_path / "sparse.safetensors")
    ratio = sparse_path.stat().st_size / dense_path.stat().st_size
    assert ratio <= 0.25, ratio
    loaded = pk.load_sparse(sparse_path)
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k


def test_save_and_load_model_roundtrip(sparse_resnet18, tmp_path):
    x = torch.randn(2, 3, 32, 32)
    sparse_resnet18.eval()
    expected = sparse_resnet18(x)
    for sparse in (False, True):
        out = pk.save_model(sparse_resnet18, tmp_path / f"m{sparse}", sparse=sparse)
        record = json.loads((out / RECORD).read_text())
        assert record["source"] == "torchvision:resnet18"
        assert (out / (SPARSE_FILE if sparse else DENSE_FILE)).is_file()
        model = pk.load_model(out).eval()
        assert torch.equal(model(x), expected)
        assert pk.get_mask(model.conv1) is None
    again = pk.load_model(tmp_path / "mTrue", attach_masks=True)
    assert pk.get_mask(again.layer1[0].conv1) is not None
    assert torch.equal(pk.get_mask(again.layer1[0].conv1), again.layer1[0].conv1.weight != 0)


def test_load_model_without_source_needs_architecture(tmp_path):
    model = SmallCNN()
    pk.save_model(model, tmp_path / "m")
    with pytest.raises(pk.CheckpointError, match="model="):
        pk.load_model(tmp_path / "m")
    loaded = pk.load_model(tmp_path / "m", model=SmallCNN())
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_corrupt_checkpoints_raise_clear_errors(tmp_path):
    model = SmallCNN()
    out = pk.save_model(model, tmp_path / "m")
    (out / DENSE_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(pk.CheckpointError, match="corrupt"):
        pk.load_model(out, model=SmallCNN())
    (out / RECORD).write_text("{oops")
    with pytest.raises(pk.CheckpointError, match="corrupt"):
        pk.load_model(out, model=SmallCNN())
    with pytest.raises(pk.CheckpointError, match="not a saved prunekit model"):
        pk.load_model(tmp_path / "nothing-here")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"12345678not-a-file")
    with pytest.raises(pk.CheckpointError):
        pk.load_sparse(bad)
    # a valid safetensors file that is not a sparse export
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(dense_bytes({"w": torch.ones(3)}))
    with pytest.raises(pk.CheckpointError, match="not a prunekit sparse export"):
        pk.load_sparse(plain)


def test_tampered_sparse_values_are_detected(tmp_path):
    from safetensors.torch import load_file, save_file

    path = pk.export_sparse({"w": torch.tensor([0.0, 1.0, 0.0, 2.0] * 16)}, tmp_path / "s.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["w::values"] = tensors["w::values"][:-1].clone()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(pk.CheckpointError, match="do not agree"):
        pk.load_sparse(path)


def test_failed_save_keeps_previous_files(tmp_path, monkeypatch):
    model = SmallCNN()
    out = pk.save_model(model, tmp_path / "m")
    before = (out / DENSE_FILE).read_bytes()
    import prunekit.models.saved as saved

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(saved, "save_file", boom)
    with pytest.raises(OSError):
        pk.save_model(model, out, overwrite=True)
    assert (out / DENSE_FILE).read_bytes() == before
    assert not list(out.glob("*.tmp"))


def test_torchvision_spec_and_unknown_spec():
    m = pk.build_model("torchvision:resnet18", pretrained=False)
    assert isinstance(m, torchvision.models.ResNet)
    with pytest.raises(pk.UnknownNameError, match="resnet18"):
        pk.build_model("torchvision:resnet19")
    with pytest.raises(pk.UnknownNameError, match="torchvision:NAME"):
        pk.build_model("hub:whatever")


def test_file_sizes_computed_without_serialising_equal_the_files():
    """dense_size / sparse_size (what measure() reports) equal the serialised lengths byte for byte, over
    dtypes, empty and 0-d tensors, non-ASCII names, tied tensors and every sparsity from dense to all-zero."""
    g = torch.Generator().manual_seed(0)
    dtypes = [
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.uint8,
        torch.bool,
    ]
    for trial in range(40):
        state = {}
        for i in range(int(torch.randint(0, 10, (1,), generator=g))):
            dt = dtypes[int(torch.randint(0, len(dtypes), (1,), generator=g))]
            shape = tuple(
                int(d) for d in torch.randint(0, 20, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g)
            )
            t = torch.randint(0, 3, shape, generator=g).to(dt)
            if dt.is_floating_point:
                t = torch.randn(shape, generator=g).to(dt) * (torch.rand(shape, generator=g) < trial / 40)
            state[("é" if i % 3 == 0 else "layer.") + str(i)] = t
        if state and trial % 5 == 0:
            state["tied"] = next(iter(state.values()))
        assert dense_size(state) == len(dense_bytes(state)), trial
        assert sparse_size(state) == len(sparse_bytes(state)), trial


def test_check_output_file_refuses_what_it_could_not_write_whole(tmp_path):
    assert check_output_file(tmp_path / "new" / "result.json") == tmp_path / "new" / "result.json"  # folders made later
    with pytest.raises(pk.CheckpointError, match="is a folder"):
        check_output_file(tmp_path, overwrite=True)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(pk.CheckpointError, match="is a file, not a folder"):
        check_output_file(tmp_path / "a-file" / "sub" / "result.json")
    with pytest.raises(pk.CheckpointError, match=r"already exists.*overwrite=True"):
        check_output_file(tmp_path / "a-file")
    assert check_output_file(tmp_path / "a-file", overwrite=True) == tmp_path / "a-file"
    assert (tmp_path / "a-file").read_text() == "x"  # a check writes nothing
    assert check_output_file("/dev/null") == Path("/dev/null")  # a special file: writing it replaces nothing


def test_outputs_get_the_umask_permissions_and_a_file_in_the_way_is_refused_clearly(tmp_path):
    import os
    import stat

    from prunekit.errors import CheckpointError
    from prunekit.serialization import atomic_directory, atomic_write, check_output_directory, make_folder

    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.json", lambda tmp: open(tmp, "w").write("{}"))
        with atomic_directory(tmp_path / "out") as d:
            (d / "x").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644  # not the temporary file's 0600
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # not the temporary folder's 0700
    (tmp_path / "plain").write_text("keep")
    for call in (
        lambda: make_folder(tmp_path / "plain" / "sub"),
        lambda: check_output_directory(tmp_path / "plain" / "sub"),
        lambda: atomic_write(tmp_path / "plain" / "sub" / "f.json", lambda tmp: None),
    ):
        with pytest.raises(CheckpointError, match="plain is a file; choose another output path"):
            call()
    assert (tmp_path / "plain").read_text() == "keep"


def test_measured_file_sizes_are_the_saved_files_sizes(tmp_path):
    model = SmallCNN()
    pk.prune(model, "magnitude", sparsity=0.8, measure=False)
    stats = pk.measure(model, latency=False)
    pk.save_model(model, tmp_path / "dense")
    pk.export_sparse(model, tmp_path / "m.sparse.safetensors")
    assert stats.dense_bytes == (tmp_path / "dense" / DENSE_FILE).stat().st_size
    assert stats.sparse_bytes == (tmp_path / "m.sparse.safetensors").stat().st_size


def test_saving_over_a_saved_model_needs_overwrite_and_leaves_one_model(tmp_path):
    torch.manual_seed(0)
    first, second = SmallCNN(), SmallCNN()
    pk.prune(first, "magnitude", sparsity=0.9, measure=False)
    out = pk.save_model(first, tmp_path / "m", sparse=True, report={"run": 1})
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(pk.CheckpointError, match="overwrite=True"):
        pk.save_model(second, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files  # nothing written, nothing lost
    pk.save_model(second, out, overwrite=True)  # dense now, no report: the sparse weights and old report go
    assert sorted(p.name for p in out.iterdir()) == sorted([DENSE_FILE, "prunekit.json"])
    again = pk.load_model(out, model=SmallCNN())
    for a, b in zip(again.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_overwrite_never_replaces_the_working_folder_or_one_holding_it(tmp_path, monkeypatch):
    from prunekit.serialization import check_output_directory

    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("mine")
    monkeypatch.chdir(work)
    for out in (work, tmp_path, "."):
        with pytest.raises(pk.CheckpointError, match="new folder of its own"):
            check_output_directory(out, overwrite=True)
    assert (work / "precious.txt").read_text() == "mine"
    (work / "old").mkdir()
    (work / "old" / "x").write_text("replaceable")
    assert check_output_directory(work / "old", overwrite=True) == work / "old"  # a folder of its own: fine


@pytest.mark.parametrize("sparse", [False, True])
def test_a_structurally_pruned_model_with_masks_on_top_saves_and_reloads(tmp_path, sparse):
    model, x = pk.build_model("prunekit:lenet5"), torch.randn(2, 1, 28, 28)
    pk.prune(model, "l2-channel", sparsity=0.5, example_inputs=x)
    pk.prune(model, "magnitude", sparsity=0.5, measure=False)  # masks on the new, smaller weights
    assert pk.get_mask(model.features[0]) is not None
    pk.save_model(model, tmp_path / "m", sparse=sparse)
    again = pk.load_model(tmp_path / "m")
    assert again.features[0].weight.shape == (3, 1, 5, 5)
    torch.testing.assert_close(again(x), model.eval()(x), rtol=0, atol=0)


def test_a_module_that_reads_its_version_from_the_state_dict_reloads(tmp_path):
    # torchvision's MNASNet refuses a state dict without the module versions a torch state dict carries
    model = pk.build_model("torchvision:mnasnet0_5").eval()
    pk.save_model(model, tmp_path / "m")
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(pk.load_model(tmp_path / "m")(x), model(x))
    legacy = json.loads((tmp_path / "m" / RECORD).read_text())
    del legacy["module_versions"]  # a save from before the versions were recorded: the architecture's own
    (tmp_path / "m" / RECORD).write_text(json.dumps(legacy))
    assert torch.equal(pk.load_model(tmp_path / "m")(x), model(x))


class _WeightNormed(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.utils.parametrizations.weight_norm(nn.Conv2d(3, 16, 3, padding=1))
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x):
        return self.fc(self.c2(torch.relu(self.c1(x))).mean((2, 3)))


def test_a_model_with_its_own_parametrization_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model, x = _WeightNormed(), torch.randn(2, 3, 8, 8)
    pk.prune(model, "magnitude", sparsity=0.5, example_inputs=x)
    pk.save_model(model, tmp_path / "m")
    for attach in (False, True):
        again = pk.load_model(tmp_path / "m", model=_WeightNormed(), attach_masks=attach)
        assert nn.utils.parametrize.is_parametrized(again.c1, "weight")  # the model keeps its weight norm
        torch.testing.assert_close(again(x), model(x), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(again.c1.weight.eq(0), model.c1.weight.eq(0))
