"""Per-source token buckets and the block list (b2bua.ratelimit); the clock is passed in."""

from __future__ import annotations

from b2bua.ratelimit import SourceLimiter


def hits(limiter: SourceLimiter, n: int, *, rate: float = 5.0, burst: float = 2.0, now: float = 0.0,
         source: str = "192.0.2.1", kind: str = "invite") -> list[bool]:
    return [limiter.hit(source, kind, rate, burst, now) for _ in range(n)]


def test_a_burst_of_rate_times_burst_seconds_then_the_rate() -> None:
    limiter = SourceLimiter()
    assert hits(limiter, 11) == [True] * 10 + [False]
    # 0.2 s later one more token (5/s), and no more
    assert hits(limiter, 2, now=0.2) == [True, False]
    # a second later: five
    assert hits(limiter, 6, now=1.2) == [True] * 5 + [False]


def test_kinds_and_sources_have_their_own_buckets() -> None:
    limiter = SourceLimiter()
    assert hits(limiter, 11)[-1] is False
    assert hits(limiter, 1, kind="other") == [True]
    assert hits(limiter, 1, source="192.0.2.2") == [True]


def test_no_rate_means_no_limit_and_no_bucket() -> None:
    limiter = SourceLimiter()
    assert hits(limiter, 1000, rate=0) == [True] * 1000
    assert limiter.tracked == 0


def test_a_tiny_rate_still_allows_one_request() -> None:
    assert hits(SourceLimiter(), 2, rate=0.1, burst=1.0) == [True, False]


def test_blocks_expire() -> None:
    limiter = SourceLimiter()
    assert limiter.block("192.0.2.1", until=10.0) is True
    assert limiter.block("192.0.2.1", until=5.0) is False  # already blocked; the later end stays
    assert limiter.blocked("192.0.2.1", 9.9) and not limiter.blocked("192.0.2.2", 9.9)
    assert limiter.blocked_sources(4.0) == [("192.0.2.1", 6.0)]
    assert not limiter.blocked("192.0.2.1", 10.0)
    assert limiter.blocked_sources(10.0) == []


def test_unblock() -> None:
    limiter = SourceLimiter()
    limiter.block("192.0.2.1", until=10.0)
    assert limiter.unblock("192.0.2.1") and not limiter.unblock("192.0.2.1")
    assert not limiter.blocked("192.0.2.1", 1.0)


def test_idle_buckets_and_expired_blocks_are_swept() -> None:
    limiter = SourceLimiter()
    for i in range(100):
        limiter.hit(f"192.0.2.{i}", "invite", 5.0, 2.0, 0.0)
    limiter.block("192.0.2.1", until=1.0)
    assert limiter.tracked == 100
    limiter.sweep(1.0)  # 0.2 s refills the one token each took
    assert limiter.tracked == 0 and limiter.blocked_sources(0.5) == []


def test_a_full_table_refuses_new_untrusted_sources_but_not_trusted_ones() -> None:
    limiter = SourceLimiter(max_sources=3)
    assert [limiter.hit(f"192.0.2.{i}", "invite", 5.0, 2.0, 0.0) for i in range(4)] == [True, True, True, False]
    assert limiter.hit("10.0.0.1", "invite", 5.0, 2.0, 0.0, bounded=False) is True
    # known sources keep their buckets
    assert limiter.hit("192.0.2.0", "invite", 5.0, 2.0, 0.0) is True
