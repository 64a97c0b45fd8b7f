"""Pruning models that live on a CUDA GPU: every kind of method keeps the model on its device and gives the
same result as on the CPU. Skipped without CUDA (CI has none; these run on a GPU machine)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit as pk

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _devices(model: nn.Module) -> set[str]:
    return {t.device.type for t in [*model.parameters(), *model.buffers()]}


def test_structural_pruning_on_cuda_equals_cpu():
    import torchvision

    torch.manual_seed(0)
    cpu = torchvision.models.resnet18().eval()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.randn(2, 3, 64, 64)
    pk.prune(cpu, "l1-channel", sparsity=0.3, example_inputs=x, measure=False)
    pk.prune(gpu, "l1-channel", sparsity=0.3, example_inputs=x.cuda(), measure=False)
    assert _devices(gpu) == {"cuda"}
    assert [p.shape for p in gpu.parameters()] == [p.shape for p in cpu.parameters()]
    with torch.no_grad():
        torch.testing.assert_close(gpu(x.cuda()).cpu(), cpu(x), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_llm_pruning_on_cuda_matches_cpu(method):
    from tests.llm.conftest import calibration, tiny_model

    cpu = tiny_model("llama")
    gpu = copy.deepcopy(cpu).cuda()
    batches = calibration()
    pk.prune(cpu, method, sparsity=0.5, pattern="2:4", calibration=batches, measure=False)
    pk.prune(gpu, method, sparsity=0.5, pattern="2:4", calibration=[b.cuda() for b in batches], measure=False)
    assert _devices(gpu) == {"cuda"}
    for (name, wc), (_, wg) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if name.endswith("proj.weight"):
            zc, zg = wc == 0, wg.cpu() == 0
            assert float(zg.float().mean()) == pytest.approx(0.5, abs=0.01), name
            # the same weights are kept, up to ties broken differently by GPU arithmetic
            assert float((zc != zg).float().mean()) < 0.02, name


def test_masks_save_and_load_from_cuda(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).cuda()
    pk.prune(model, "magnitude", sparsity=0.7, measure=False)
    x = torch.randn(4, 32, device="cuda")
    with torch.no_grad():
        out = model(x)
    pk.save_model(model, tmp_path / "m")
    again = pk.load_model(tmp_path / "m", model=nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)))
    with torch.no_grad():
        torch.testing.assert_close(again(x.cpu()), out.cpu(), atol=1e-5, rtol=1e-5)


def test_streaming_on_cuda_matches_the_cpu_stream(tmp_path):
    from prunekit.llm import prune_checkpoint
    from tests.llm.conftest import calibration, tiny_model

    src = tmp_path / "src"
    tiny_model("llama", layers=3).save_pretrained(src, max_shard_size="100KB")
    batches = calibration()
    prune_checkpoint(src, tmp_path / "cpu", "sparsegpt", pattern="2:4", calibration=batches, progress=False)
    prune_checkpoint(
        src, tmp_path / "gpu", "sparsegpt", pattern="2:4", calibration=batches, progress=False, device="cuda"
    )
    from transformers import AutoModelForCausalLM

    cpu = AutoModelForCausalLM.from_pretrained(tmp_path / "cpu").state_dict()
    gpu = AutoModelForCausalLM.from_pretrained(tmp_path / "gpu").state_dict()
    assert set(cpu) == set(gpu) and all(t.device.type == "cpu" for t in gpu.values())
    for name, w in cpu.items():
        if name.endswith("proj.weight"):
            zc, zg = w == 0, gpu[name] == 0
            assert float(zg.float().mean()) == pytest.approx(0.5, abs=0.01), name
            assert float((zc != zg).float().mean()) < 0.02, name  # ties broken differently by GPU arithmetic
