"""Keepalive latency statistics, as Kamailio's ``ds_ping_latency_stats`` keeps them.

Kamailio's ``latency_stats_update()`` (``dispatch.c``) as a pure function over a frozen
:class:`LatencyStats`: Welford's online mean and variance, an estimator that follows the
mean for the first samples and is then an exponentially weighted moving average, and the
"trained" jump of the sample count to 10000 once the mean is stable. All values are in
milliseconds. Kamailio samples whole milliseconds and keeps single-precision floats; we keep
what the caller measured, in double precision.

``alpha_per_mille`` has Kamailio 6.1's meaning: the weight of the *new sample*,
``EST = alpha * sample + (1 - alpha) * EST`` with ``alpha = alpha_per_mille / 1000``
(default 100, i.e. 0.1). Kamailio 5.6.3 to 6.0 used the opposite meaning
(``EST = alpha * EST + (1 - alpha) * sample``, default 900): a 5.x setting of ``900``
corresponds to ``100`` here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: after 2^21 samples (~24 days of 1 s pings) the count stops and m2 decays instead
COUNT_CAP = 2**21
#: the count a stable (or ``latency=`` seeded) estimator jumps to
TRAINED_COUNT = 10000
#: samples after which the estimator switches from the mean to the EWMA
EWMA_AFTER = 10
#: the default estimator weight of a new sample, per mille (Kamailio 6.1)
DEFAULT_ALPHA_PER_MILLE = 100


@dataclass(frozen=True)
class LatencyStats:
    """One destination's keepalive latency (ms), Kamailio's ``ds_latency_stats_t``.

    :param avg: mean (``AVG`` in ``dispatcher.list``).
    :param std: standard deviation (``STD``).
    :param est: the estimator (``EST``): the mean for the first samples, then an EWMA.
    :param max: largest sample (``MAX``); ``min``: smallest.
    :param timeout: probes that timed out (``TIMEOUT``); they are not sampled.
    :param count: samples taken (capped, see :data:`COUNT_CAP`; 10000 once trained).
    :param m2: Welford's running sum of squared deviations.
    """

    avg: float = 0.0
    std: float = 0.0
    est: float = 0.0
    max: float = 0.0
    timeout: int = 0
    count: int = 0
    m2: float = 0.0
    min: float = 0.0


def rpc_block(stats: LatencyStats | None) -> dict[str, float | int]:
    """The ``LATENCY`` block of Kamailio's ``dispatcher.list``: ms rounded to 3 decimals, zeros
    for a destination without statistics (none sampled yet, no ``latency=`` attribute)."""
    if stats is None:
        return {"AVG": 0.0, "STD": 0.0, "EST": 0.0, "MAX": 0.0, "TIMEOUT": 0}
    return {
        "AVG": round(float(stats.avg), 3),
        "STD": round(float(stats.std), 3),
        "EST": round(float(stats.est), 3),
        "MAX": round(float(stats.max), 3),
        "TIMEOUT": int(stats.timeout),
    }


def seeded(latency_ms: float) -> LatencyStats:
    """Statistics pre-seeded from a destination's ``latency=<ms>`` attribute (already trained)."""
    return LatencyStats(avg=latency_ms, est=latency_ms, max=latency_ms, min=latency_ms, count=TRAINED_COUNT)


def add_timeout(stats: LatencyStats) -> LatencyStats:
    """Count a probe that timed out (local 408); it is not a latency sample."""
    return replace(stats, timeout=stats.timeout + 1)


def update(stats: LatencyStats, sample_ms: float, alpha_per_mille: int) -> LatencyStats:
    """Add one latency sample (Kamailio's ``latency_stats_update()``).

    :param stats: the current statistics.
    :param sample_ms: the measured latency of one answered probe, in ms.
    :param alpha_per_mille: the EWMA weight of the new sample, 1-999 (Kamailio 6.1 meaning).
    :raises ValueError: for an alpha outside 1-999 or a negative sample.
    """
    if not 0 < alpha_per_mille < 1000:
        raise ValueError(f"latency estimator alpha must be 1-999 per mille, not {alpha_per_mille!r}")
    if sample_ms < 0 or math.isnan(sample_ms):
        raise ValueError(f"a latency sample must be >= 0 ms, not {sample_ms!r}")
    count, m2 = stats.count, stats.m2
    if count < COUNT_CAP:
        count += 1
    else:
        # the mean becomes a weighted one: decay the sum of squares in proportion
        m2 -= m2 / count
    avg, std, est, lo, hi = stats.avg, stats.std, stats.est, stats.min, stats.max
    if count == 1:
        avg = est = lo = hi = sample_ms
        std = m2 = 0.0
    # stable after more than 10 samples: "train" so that the mean barely moves any more
    if EWMA_AFTER < count < TRAINED_COUNT and std < 0.5:
        count = TRAINED_COUNT
    lo = min(lo, sample_ms)
    hi = max(hi, sample_ms)
    if count > 1:
        delta = sample_ms - avg
        avg += delta / count
        m2 += delta * (sample_ms - avg)
        std = math.sqrt(m2 / (count - 1))
    if count < EWMA_AFTER:
        est = avg
    else:
        alpha = alpha_per_mille / 1000
        est = alpha * sample_ms + (1 - alpha) * est
    return LatencyStats(avg=avg, std=std, est=est, max=hi, timeout=stats.timeout, count=count, m2=m2, min=lo)
