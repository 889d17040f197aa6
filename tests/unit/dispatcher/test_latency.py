"""Keepalive latency statistics (plugins.dispatcher.latency) against hand-computed values."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pytest

from plugins.dispatcher.latency import (
    COUNT_CAP,
    TRAINED_COUNT,
    LatencyStats,
    add_timeout,
    rpc_block,
    seeded,
    update,
)


def feed(samples: Iterable[float], alpha: int = 100, stats: LatencyStats | None = None) -> LatencyStats:
    stats = stats or LatencyStats()
    for s in samples:
        stats = update(stats, s, alpha)
    return stats


def test_first_sample_initialises_everything() -> None:
    assert feed([42]) == LatencyStats(avg=42, std=0, est=42, max=42, timeout=0, count=1, m2=0, min=42)


def test_welford_two_and_three_samples() -> None:
    # 10, 20: mean 15, m2 = 10 * 5 = 50, std = sqrt(50 / 1)
    two = feed([10, 20])
    assert (two.count, two.avg, two.m2, two.est) == (2, 15, 50, 15)
    assert two.std == pytest.approx(math.sqrt(50))
    # + 30: delta 15, mean 20, m2 = 50 + 15 * 10 = 200, std = sqrt(200 / 2) = 10
    three = update(two, 30, 100)
    assert (three.count, three.avg, three.m2, three.std, three.est) == (3, 20, 200, 10, 20)


def test_min_and_max() -> None:
    stats = feed([30, 10, 20])
    assert (stats.min, stats.max) == (10, 30)


def test_estimator_follows_mean_then_switches_to_ewma_at_ten_samples() -> None:
    nine = feed([10, 20, 10, 20, 10, 20, 10, 20, 10])
    assert nine.count == 9
    assert nine.est == pytest.approx(130 / 9) == nine.avg
    # 10th sample: EST = 0.1 * 20 + 0.9 * 130/9 = 2 + 13 = 15 (the mean of 10 samples is 15 too)
    ten = update(nine, 20, 100)
    assert ten.count == 10
    assert ten.est == pytest.approx(15.0)
    assert ten.avg == pytest.approx(15.0)
    # 11th sample 40: EST = 0.1 * 40 + 0.9 * 15 = 17.5; the mean moves to 190/11
    eleven = update(ten, 40, 100)
    assert (eleven.count, eleven.est, eleven.avg) == (11, pytest.approx(17.5), pytest.approx(190 / 11))


@pytest.mark.parametrize(
    ("alpha", "expected"),
    [
        (100, 0.1 * 20 + 0.9 * 130 / 9),  # Kamailio 6.1 default: new sample weighs 0.1
        (900, 0.9 * 20 + 0.1 * 130 / 9),  # 6.1 meaning: 900 follows samples closely
        (500, 0.5 * 20 + 0.5 * 130 / 9),
    ],
)
def test_alpha_is_the_weight_of_the_new_sample(alpha: int, expected: float) -> None:
    ten = feed([10, 20, 10, 20, 10, 20, 10, 20, 10, 20], alpha)
    assert ten.est == pytest.approx(expected)


def test_stable_latency_trains_the_estimator() -> None:
    # ten identical samples: std stays 0; the 11th sample finds std < 0.5 and jumps to 10000
    ten = feed([50] * 10)
    assert (ten.count, ten.std) == (10, 0)
    trained = update(ten, 50, 100)
    assert trained.count == TRAINED_COUNT
    # now one outlier hardly moves the mean: 50 + 1000 / 10001; EST = 0.1 * 1050 + 0.9 * 50
    after = update(trained, 1050, 100)
    assert after.count == TRAINED_COUNT + 1
    assert after.avg == pytest.approx(50 + 1000 / 10001)
    assert after.est == pytest.approx(150.0)
    assert after.max == 1050


def test_unstable_latency_is_not_trained() -> None:
    stats = feed([10, 20] * 6)
    assert stats.count == 12


def test_count_is_capped_and_m2_decays() -> None:
    stats = LatencyStats(avg=10, std=1, est=10, max=12, count=COUNT_CAP, m2=1000, min=8)
    after = update(stats, 10, 100)
    assert after.count == COUNT_CAP
    # m2 -= m2 / count, then the sample equal to the mean adds nothing
    assert after.m2 == pytest.approx(1000 - 1000 / COUNT_CAP)
    assert after.avg == 10


def test_seeded_from_latency_attribute() -> None:
    stats = seeded(30)
    assert stats == LatencyStats(avg=30, std=0, est=30, max=30, timeout=0, count=TRAINED_COUNT, m2=0, min=30)
    after = update(stats, 40, 100)
    assert after.count == TRAINED_COUNT + 1
    assert after.avg == pytest.approx(30 + 10 / 10001)
    assert after.est == pytest.approx(31.0)  # 0.1 * 40 + 0.9 * 30
    assert after.m2 == pytest.approx(10 * (40 - after.avg))


def test_timeouts_are_counted_not_sampled() -> None:
    stats = add_timeout(add_timeout(feed([10])))
    assert (stats.timeout, stats.count, stats.avg) == (2, 1, 10)
    assert update(stats, 20, 100).timeout == 2


@pytest.mark.parametrize("alpha", [0, 1000, -5])
def test_alpha_out_of_range(alpha: int) -> None:
    with pytest.raises(ValueError, match="alpha must be 1-999"):
        update(LatencyStats(), 10, alpha)


@pytest.mark.parametrize("sample", [-1.0, math.nan])
def test_bad_sample(sample: float) -> None:
    with pytest.raises(ValueError, match="latency sample"):
        update(LatencyStats(), sample, 100)


def test_rpc_block() -> None:
    stats = add_timeout(feed([10, 20]))
    assert rpc_block(stats) == {"AVG": 15, "STD": round(math.sqrt(50), 3), "EST": 15, "MAX": 20, "TIMEOUT": 1}
    assert rpc_block(None) == {"AVG": 0.0, "STD": 0.0, "EST": 0.0, "MAX": 0.0, "TIMEOUT": 0}
