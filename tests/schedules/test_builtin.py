"""Tests of :mod:`prunekit.schedules.builtin`: one-shot, iterative and gradual (cubic) schedules by formula."""

import pytest

import prunekit as pk


def test_cubic_schedule_matches_formula():
    s = pk.Gradual(start=100, end=1100, final_sparsity=0.9, initial_sparsity=0.1)
    assert s.sparsity_at(0) == 0.0  # before pruning starts
    assert s.sparsity_at(100) == pytest.approx(0.1)  # s_i at t_0
    # middle: 0.9 + (0.1 - 0.9) * (1 - 0.5)^3 = 0.8
    assert s.sparsity_at(600) == pytest.approx(0.8)
    assert s.sparsity_at(350) == pytest.approx(0.9 - 0.8 * 0.75**3)
    assert s.sparsity_at(1100) == pytest.approx(0.9)
    assert s.sparsity_at(5000) == pytest.approx(0.9)


def test_cubic_schedule_frequency_holds_between_updates():
    s = pk.Gradual(start=0, end=100, final_sparsity=0.8, frequency=10)
    assert s.sparsity_at(15) == s.sparsity_at(10)
    assert s.sparsity_at(10) == pytest.approx(0.8 - 0.8 * 0.9**3)
    assert s.steps()[:3] == [0, 10, 20] and s.steps()[-1] == 100


def test_iterative_and_one_shot():
    it = pk.Iterative(final_sparsity=0.75, rounds=2, every=10)
    assert it.sparsity_at(0) == pytest.approx(0.5)  # 1 - 0.25^(1/2)
    assert it.sparsity_at(10) == pytest.approx(0.75)
    assert it.steps() == [0, 10]
    one = pk.OneShot(0.6, at=5)
    assert one.sparsity_at(4) == 0.0 and one.sparsity_at(5) == 0.6


def test_schedule_rejects_bad_values():
    with pytest.raises(pk.InvalidSparsityError):
        pk.Gradual(0, 10, final_sparsity=1.2)
    with pytest.raises(pk.ConfigError):
        pk.Gradual(10, 10, final_sparsity=0.5)


@pytest.mark.parametrize(
    "schedule",
    [
        pk.OneShot(final_sparsity=0.5, at=3),
        pk.Iterative(rounds=4, final_sparsity=0.8, every=5, start=2),
        pk.Gradual(10, 47, 0.9, frequency=4),
    ],
)
def test_acts_at_agrees_with_steps(schedule) -> None:  # noqa: ANN001
    steps = set(schedule.steps())
    assert [s for s in range(-5, 80) if schedule.acts_at(s)] == sorted(steps)
