"""Per-source request rates and a block list with expiry (Kamailio's ``pike`` + an ``htable`` ban).

One token bucket per (source address, kind of request): it holds up to ``rate * burst``
tokens, refills at ``rate`` per second, and each request takes one; a request that finds it
empty is over the limit. A source may be blocked until a given time; the block list is what
the admission policy consults first, before parsing anything.

Memory is bounded: at most :data:`MAX_SOURCES` buckets. Idle buckets (full again) and expired
blocks are swept at most once a second. A new source that finds the table full is counted as
over its limit: under a flood from many (spoofed) addresses, untracked sources are refused
rather than let through. The clock is the caller's (``now``, monotonic seconds).
"""

from __future__ import annotations

#: most untrusted sources tracked at once (a bucket is about 150 bytes; a sweep of a full table
#: takes about 3 ms)
MAX_SOURCES = 16384
#: seconds between sweeps of idle buckets and expired blocks
SWEEP_EVERY = 1.0


class SourceLimiter:
    """Token buckets keyed by ``(kind, source)`` and blocked sources with their expiry."""

    def __init__(self, max_sources: int = MAX_SOURCES) -> None:
        self.max_sources = max_sources
        #: (kind, source) -> [tokens, last refill, capacity, rate]
        self._buckets: dict[tuple[str, str], list[float]] = {}
        #: source -> monotonic time its block ends
        self._blocked: dict[str, float] = {}
        self._swept = 0.0

    def hit(self, source: str, kind: str, rate: float, burst: float, now: float, *, bounded: bool = True) -> bool:
        """Take one token for a request of ``kind`` from ``source``; False when over the limit.

        :param rate: requests per second allowed on average (0 or less: no limit, always True).
        :param burst: seconds' worth of requests allowed at once (the bucket holds ``rate * burst``,
            at least 1).
        :param bounded: False for trusted sources: they are a configured set, and a flood from
            many spoofed addresses must not push them out of the table.
        """
        if rate <= 0:
            return True
        if now - self._swept >= SWEEP_EVERY:
            self.sweep(now)
        key = (kind, source)
        bucket = self._buckets.get(key)
        if bucket is None:
            if bounded and len(self._buckets) >= self.max_sources:
                return False
            capacity = max(1.0, rate * burst)
            self._buckets[key] = [capacity - 1.0, now, capacity, rate]
            return True
        tokens = min(bucket[2], bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def block(self, source: str, until: float) -> bool:
        """Block ``source`` until ``until``; True when it was not blocked already."""
        new = source not in self._blocked
        if new and len(self._blocked) >= self.max_sources:
            return False
        self._blocked[source] = max(until, self._blocked.get(source, 0.0))
        return new

    def unblock(self, source: str) -> bool:
        """Lift a block; True when ``source`` was blocked."""
        return self._blocked.pop(source, None) is not None

    def blocked(self, source: str, now: float) -> bool:
        """Whether ``source`` is blocked at ``now`` (an expired block is lifted here)."""
        until = self._blocked.get(source)
        if until is None:
            return False
        if now < until:
            return True
        del self._blocked[source]
        return False

    def blocked_sources(self, now: float) -> list[tuple[str, float]]:
        """Blocked sources and the seconds left on each, longest first."""
        left = [(source, until - now) for source, until in self._blocked.items() if until > now]
        return sorted(left, key=lambda item: -item[1])

    def sweep(self, now: float) -> None:
        """Forget buckets that are full again and blocks that have expired."""
        self._swept = now
        idle = [key for key, (tokens, last, capacity, rate) in self._buckets.items()
                if tokens + (now - last) * rate >= capacity]
        for key in idle:
            del self._buckets[key]
        expired = [source for source, until in self._blocked.items() if until <= now]
        for source in expired:
            del self._blocked[source]

    @property
    def tracked(self) -> int:
        """How many buckets exist (for the stats)."""
        return len(self._buckets)
