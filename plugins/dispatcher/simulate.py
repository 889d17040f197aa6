"""Run the selection over synthetic calls and count where they go.

For operators checking a configuration before it carries traffic: "does my 75/25 weight
split come out as 75/25?", "where do gateway 3's calls go when it is down?". The calls are
random (seeded, so a run is repeatable) Call-IDs, From and To users and R-URI numbers; the
selection is the real one (:class:`~plugins.dispatcher.runtime.DispatcherState`).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import algorithm_name
from plugins.dispatcher.model import Snapshot
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.selection import Policy


@dataclass(frozen=True)
class SimulationResult:
    """How often each destination was chosen first (array order, zeros included)."""

    setid: int
    alg: int
    calls: int
    counts: Mapping[str, int]
    no_destination: int = 0


def synthetic_call(number: int, rng: random.Random) -> CallInfo:
    """A plausible INVITE: random Call-ID, caller, callee and dialled number."""
    caller = f"{rng.randrange(10**8):08d}"
    callee = f"+49{rng.randrange(10**9):09d}"
    return CallInfo(
        id=number,
        call_id=f"{rng.getrandbits(64):016x}@sim.invalid",
        request_uri=f"sip:{callee}@b2bua.invalid",
        from_uri=f"sip:{caller}@caller.invalid",
        to_uri=f"sip:{callee}@b2bua.invalid",
        source_ip=f"192.0.2.{rng.randrange(1, 255)}",
        source_port=5060,
    )


def simulate(
    snapshot: Snapshot,
    setid: int,
    alg: int,
    *,
    calls: int = 10000,
    down: Sequence[str] = (),
    seed: int = 1,
    policy: Policy | None = None,
    concurrent: int = 0,
) -> SimulationResult:
    """Route ``calls`` synthetic calls through set ``setid`` with algorithm ``alg``.

    :param down: URIs of the set to treat as inactive (``I``) for the whole run.
    :param seed: makes the calls and the weight-table shuffles repeatable.
    :param concurrent: calls kept up at once (each holds a load slot on its destination
        until ``concurrent`` newer calls have started), so call load (10) and ``maxload``
        behave as under traffic; 0: every call ends at once.
    :raises ValueError: unknown set, a ``down`` URI not in the set, ``calls`` < 1.
    """
    if calls < 1:
        raise ValueError(f"calls: {calls}: need at least 1")
    if setid not in snapshot.sets:
        known = ", ".join(str(s) for s in sorted(snapshot.sets)) or "none"
        raise ValueError(f"set {setid} is not loaded (sets: {known})")
    state = DispatcherState(policy=policy, rng=random.Random(seed))
    state.swap(snapshot, keep_state=False, reason="simulate")
    for uri in down:
        if not state.set_state(setid, uri, "i", reason="simulate --down"):
            raise ValueError(f"--down {uri}: not a destination of set {setid}")
    counts = {d.uri: 0 for d in snapshot.sets[setid].destinations}
    none = 0
    rng = random.Random(seed + 1)
    held: deque[int] = deque()
    for number in range(calls):
        chosen = state.select(setid, alg, synthetic_call(number, rng), rng=rng)
        if not chosen:
            none += 1
            continue
        counts[chosen[0].uri] += 1
        if concurrent > 0:
            state.load_add(number, chosen[0].key)
            held.append(number)
            if len(held) > concurrent:
                state.release_call(held.popleft())
    return SimulationResult(setid, alg, calls, counts, none)


def format_result(result: SimulationResult) -> str:
    """A small table: destination, calls, share."""
    width = max([len(u) for u in result.counts] + [len("destination")])
    lines = [
        f"set {result.setid}, algorithm {algorithm_name(result.alg)}, {result.calls} calls",
        f"{'destination':<{width}}  {'calls':>8}  {'share':>7}",
    ]
    rows = [*result.counts.items()]
    if result.no_destination:
        rows.append(("(no destination)", result.no_destination))
    for uri, count in rows:
        lines.append(f"{uri:<{width}}  {count:>8}  {100.0 * count / result.calls:>6.2f}%")
    return "\n".join(lines)
