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
from plugins.dispatcher.config import Route
from plugins.dispatcher.model import Destination, Snapshot
from plugins.dispatcher.plans import select_sets
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.selection import Policy


@dataclass(frozen=True)
class SimulationResult:
    """How often each destination was chosen first (array order, zeros included).

    With backup sets the keys are ``"SET URI"`` (a URI may be in several sets) and
    ``first_plan`` is the dialling order of the first call: the chosen destination, then the
    failover list through the backup sets.
    """

    setid: int
    alg: int
    calls: int
    counts: Mapping[str, int]
    no_destination: int = 0
    backups: tuple[tuple[int, int], ...] = ()
    first_plan: tuple[str, ...] = ()


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
    backup_sets: str = "",
) -> SimulationResult:
    """Route ``calls`` synthetic calls through set ``setid`` with algorithm ``alg``.

    :param backup_sets: the sets tried after it, as a rule's ``backup_sets`` (``"2=8;3=4"``).
    :param down: URIs to treat as inactive (``I``) for the whole run, in every set they are in.
    :param seed: makes the calls and the weight-table shuffles repeatable.
    :param concurrent: calls kept up at once (each holds a load slot on its destination
        until ``concurrent`` newer calls have started), so call load (10) and ``maxload``
        behave as under traffic; 0: every call ends at once.
    :raises ValueError: unknown set, a ``down`` URI not in the set, ``calls`` < 1.
    """
    if calls < 1:
        raise ValueError(f"calls: {calls}: need at least 1")
    route = Route(set=setid, algorithm=alg, backup_sets=backup_sets)
    route.validate()
    known = ", ".join(str(s) for s in sorted(snapshot.sets)) or "none"
    for sid, _ in route.sets:
        if sid not in snapshot.sets:
            raise ValueError(f"set {sid} is not loaded (sets: {known})")
    state = DispatcherState(policy=policy, rng=random.Random(seed))
    state.swap(snapshot, keep_state=False, reason="simulate")
    for uri in down:
        found = [state.set_state(sid, uri, "i", reason="simulate --down") for sid, _ in route.sets]
        if not any(found):
            raise ValueError(f"--down {uri}: not a destination of set {' or '.join(str(s) for s, _ in route.sets)}")

    def label(dest: Destination) -> str:
        return f"{dest.setid} {dest.uri}" if route.backups else dest.uri

    counts = {label(d): 0 for sid, _ in route.sets for d in snapshot.sets[sid].destinations}
    none = 0
    rng = random.Random(seed + 1)
    held: deque[int] = deque()
    first_plan: tuple[str, ...] = ()
    for number in range(calls):
        chosen, _ = select_sets(state, route, synthetic_call(number, rng), rng)
        if number == 0:
            first_plan = tuple(label(d) for d in chosen)
        if not chosen:
            none += 1
            continue
        counts[label(chosen[0])] += 1
        if concurrent > 0:
            state.load_add(number, chosen[0].key)
            held.append(number)
            if len(held) > concurrent:
                state.release_call(held.popleft())
    return SimulationResult(setid, alg, calls, counts, none, route.backups, first_plan)


def format_result(result: SimulationResult) -> str:
    """A small table: destination, calls, share."""
    head = "set destination" if result.backups else "destination"
    width = max([len(u) for u in result.counts] + [len(head)])
    backups = "".join(f", then set {s} ({algorithm_name(a)})" for s, a in result.backups)
    lines = [
        f"set {result.setid}, algorithm {algorithm_name(result.alg)}{backups}, {result.calls} calls",
        f"{head:<{width}}  {'calls':>8}  {'share':>7}",
    ]
    rows = [*result.counts.items()]
    if result.no_destination:
        rows.append(("(no destination)", result.no_destination))
    for uri, count in rows:
        lines.append(f"{uri:<{width}}  {count:>8}  {100.0 * count / result.calls:>6.2f}%")
    if result.backups:
        lines.append("first call tries: " + (" -> ".join(result.first_plan) or "(no destination)"))
    return "\n".join(lines)
