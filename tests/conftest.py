"""Shared helpers for the test suite."""

from __future__ import annotations

import os

import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):  # one worker per core (pytest -n 2): each computes on one thread,
    torch.set_num_threads(1)  # and so do the commands and interpreters a test starts (they inherit the variables)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A bit-exact copy of every parameter and buffer, by state-dict key."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    """The model has exactly the keys and bits it had (no masks added, no value changed)."""
    after = model.state_dict()
    assert set(after) == set(before), f"state-dict keys changed: {set(after) ^ set(before)}"
    for k, v in before.items():
        a = after[k].detach().cpu().contiguous()
        assert a.dtype == v.dtype and a.shape == v.shape, f"{k} changed dtype or shape"
        assert a.numpy().tobytes() == v.cpu().contiguous().numpy().tobytes(), f"{k} changed"


class ThreeLayer(nn.Module):
    """A 3-layer MLP: 100 -> 50 -> 50 -> 10 (bias-free so counts are exact)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(100, 50, bias=False)
        self.fc2 = nn.Linear(50, 50, bias=False)
        self.fc3 = nn.Linear(50, 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.head(torch.relu(self.fc(x.mean(dim=(2, 3)))))


# tests that start interpreters or servers and run for tens of seconds: scheduled first, so that with
# `pytest -n 2 --dist load` the two workers share them out instead of one finishing alone at the end
_LONG = (
    "tests/test_readme.py::test_readme_blocks_run",
    "tests/bench/test_bench_runner.py::test_ray_backend",
    "tests/bench/test_bench_runner.py::test_store_is_resumed",
    "tests/test_cli.py::test_prune_reports_task",
    "tests/llm/test_streaming.py::test_prune_llm_stream_on_the_command_line",
)


def pytest_collection_modifyitems(config, items):
    """Long tests first (the order of everything else is kept)."""
    items.sort(key=lambda item: not item.nodeid.startswith(_LONG))
