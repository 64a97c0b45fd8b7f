"""prunekit.eval.latency: interleaved timing, spreads and verdicts that only speak beyond the noise."""

from __future__ import annotations

import torch
from torch import nn

from prunekit.eval.latency import (
    LatencyComparison,
    compare_latency,
    median_interval,
    pinned_threads,
    time_model,
    verdict,
)


def test_median_interval_brackets_the_median_and_narrows_with_more_runs():
    values = [float(v) for v in range(1, 101)]
    low, high = median_interval(values)
    assert low <= 50.5 <= high
    assert (low, high) == (40.0, 61.0)  # ranks 40 and 61 of 100: the binomial 95% interval (96.5%)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few runs: the whole range
    small = median_interval(values[::4])
    assert small[1] - small[0] > high - low


def test_verdict_needs_the_interval_and_five_percent():
    assert verdict(0.5, 0.45, 0.55) == "faster"
    assert verdict(2.0, 1.8, 2.2) == "slower"
    assert verdict(0.98, 0.97, 0.99) == "same within 5%"  # measurable, but too small to call
    assert verdict(0.8, 0.5, 1.3) == "no clear difference"  # the interval crosses 1


def test_pinned_threads_restores_the_count():
    before = torch.get_num_threads()
    with pinned_threads(1) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_model_doing_a_quarter_of_the_work_is_reported_faster():
    torch.manual_seed(0)
    big = nn.Sequential(nn.Linear(512, 2048), nn.ReLU(), nn.Linear(2048, 512)).train()
    small = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512)).eval()
    x = torch.randn(32, 512)
    cmp = compare_latency(big, small, x, budget_s=1.0)
    assert cmp.verdict == "faster" and cmp.ratio_high < 1.0 and cmp.speedup > 1.5
    assert cmp.baseline.runs == cmp.candidate.runs >= 15 and cmp.baseline.threads == 1
    assert big.training and not small.training  # modes restored
    again = LatencyComparison.from_dict(cmp.to_dict())
    assert again == cmp


def test_a_model_against_itself_is_never_called_faster_or_slower():
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    x = torch.randn(8, 256)
    cmp = compare_latency(model, model, x, budget_s=0.5)
    assert cmp.verdict not in ("faster", "slower")
    t = time_model(model, x, budget_s=0.2)
    assert t.q1_ms <= t.median_ms <= t.q3_ms and t.runs >= 7


def test_a_fast_model_is_timed_in_blocks_of_calls_and_a_slow_one_call_by_call():
    import time

    from prunekit.eval.latency import BLOCK_MS, MAX_BLOCK_CALLS, compare_latency

    class Counted(nn.Module):
        def __init__(self, sleep_ms: float) -> None:
            super().__init__()
            self.sleep_ms, self.calls = sleep_ms, 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.sleep_ms:
                time.sleep(self.sleep_ms / 1000)
            return x

    slow, fast = Counted(1.5 * BLOCK_MS), Counted(0.0)
    cmp = compare_latency(slow, fast, torch.zeros(1), warmup=2, min_rounds=5, max_rounds=5, budget_s=0.0)
    assert slow.calls == 2 + 5  # warm-up, then one call a round
    assert fast.calls >= 2 + 5 * 10 and (fast.calls - 2) % 5 == 0 and fast.calls <= 2 + 5 * MAX_BLOCK_CALLS
    assert cmp.baseline.runs == cmp.candidate.runs == 5
    assert cmp.candidate.median_ms < BLOCK_MS / 10  # a block's mean per call, not the block
