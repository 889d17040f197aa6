"""DNS failover: the servers one destination's host name leads to, in the order a call tries them.

A destination ``sip:carrier.example`` may stand for several servers (SRV targets, or several
A/AAAA addresses of one name). RFC 3263 4.3: when one of them fails (a 503, no answer), the
request goes to the next. With ``dns_failover`` on, the dispatcher turns such a destination into
one target per server address, each with a ``next_hop`` (``IP:port``, Kamailio's ``$du``) while
the Request-URI keeps the name; the failover plugin then moves through them before the next
destination. The order is RFC 2782's: priorities ascending, and within one priority a weighted
random order drawn per call (so the load spreads by weight), each target's addresses in turn.

Pure functions over the answer the dispatcher already holds (:class:`Resolution`, looked up off
the loop): nothing here waits for DNS.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import groupby

from plugins.dispatcher.dnslookup import MAX_SRV_TARGETS, DnsTarget, Resolution


def weighted_order(targets: Sequence[DnsTarget], rng: random.Random) -> list[DnsTarget]:
    """RFC 2782's selection within one priority: repeatedly draw a target with probability
    proportional to its weight (weight-0 targets only have a chance when drawn first, as the
    RFC's running-sum walk gives them), until all are ordered."""
    left = sorted(targets, key=lambda t: t.weight)  # weight 0 first, as the RFC's walk wants
    out: list[DnsTarget] = []
    while left:
        total = sum(t.weight for t in left)
        pick = rng.randint(0, total)
        running = 0
        for i, target in enumerate(left):
            running += target.weight
            if running >= pick:
                out.append(left.pop(i))
                break
    return out


def hop_text(ip: str, port: int) -> str:
    """``ip:port``, an IPv6 address in brackets: what ``Target.next_hop`` holds."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def next_hops(found: Resolution, rng: random.Random, limit: int = MAX_SRV_TARGETS) -> tuple[str, ...]:
    """The addresses to try for one destination, in order (at most ``limit``, no repeats)."""
    ordered = sorted(found.targets, key=lambda t: t.priority)
    hops: list[str] = []
    for _, group in groupby(ordered, key=lambda t: t.priority):
        for target in weighted_order(list(group), rng):
            for ip in target.addresses:
                hop = hop_text(ip, target.port)
                if hop not in hops:
                    hops.append(hop)
                if len(hops) >= limit:
                    return tuple(hops)
    return tuple(hops)
