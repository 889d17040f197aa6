"""Kamailio's selection pipeline (``ds_manage_routes()``) as one pure function.

:func:`select` runs an algorithm from :mod:`plugins.dispatcher.algorithms` over a
:class:`SetView` (one set's entries plus their runtime state) and returns the chosen entry
followed by the failover list, and the set's cursors after the pick. The caller (the
runtime state) stores the cursors; nothing here mutates anything.

Steps, as in Kamailio (reference §2.1):

1. the algorithm gives a start value; ``start % nr``, or ``% (nr - 1)`` with
   ``use_default`` (the last array entry is then the reserve, never picked normally);
2. skip loop: while the entry is inactive or disabled (``I``/``D``; trying ``T`` is still
   used) take the next index, wrapping; back at the start: the reserve entry, or nothing;
3. round-robin cursors move to just past the entry actually used;
4. failover list: the entries after the chosen one in wrap-around array order, skipping
   ``I``/``D`` (and, for call-load, entries at ``maxload``), up to ``limit`` entries in all
   (0 = no limit); the reserve entry last.

Differences from Kamailio, on purpose:

* ``rehash`` (off by default): when a hash or random pick lands on an unusable entry,
  pick again among the usable candidates only, so a dead gateway's share is spread evenly
  over all survivors instead of going whole to its array neighbour (kamailio#2361).
  Calls whose entry is alive keep their destination.
* the failover list is always built (Kamailio needs ``flags`` bit 2);
* an unusable reserve entry is not appended (Kamailio appends it regardless);
* parallel (12) forks only to usable entries; the reserve only when no other is usable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import ALGORITHMS, AlgInput, Cursors, has_room
from plugins.dispatcher.model import UNUSABLE, Destination, is_usable

CALL_LOAD = 10
PARALLEL = 12
LATENCY = 13
#: ALGORITHMS as a plain dict: looked up on every call
_BY_NUMBER = dict(ALGORITHMS)


@dataclass(frozen=True)
class Policy:
    """Module-wide selection settings (from ``[plugins.dispatcher]``)."""

    use_default: bool = False  #: the last entry of a set is the reserve (Kamailio ``use_default``)
    user_only: bool = False  #: URI hashes use the user part only (Kamailio ``flags`` bit 1)
    hash_template: str = ""  #: alg 7's template (Kamailio ``hash_pvar``)
    rehash: bool = False  #: spread a dead entry's hashed share over all survivors


# SetView and Selection are built for every call: slotted plain dataclasses cost a third of a
# frozen one's construction (both are read-only by convention).
@dataclass(slots=True)
class SetView:
    """One set as selection sees it: entries in array order and their runtime state.

    ``loads`` and ``latencies`` may be left empty (all 0 / unknown).
    """

    dests: tuple[Destination, ...]
    flags: tuple[int, ...]
    loads: tuple[int, ...] = ()
    latencies: tuple[Any, ...] = ()
    cursors: Cursors = field(default_factory=Cursors)
    weight_table: tuple[int, ...] = ()
    rweight_table: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        n = len(self.dests)
        if len(self.flags) != n:
            raise ValueError(f"SetView: {len(self.flags)} flags for {n} destinations")
        if self.loads and len(self.loads) != n:
            raise ValueError(f"SetView: {len(self.loads)} loads for {n} destinations")
        if self.latencies and len(self.latencies) != n:
            raise ValueError(f"SetView: {len(self.latencies)} latencies for {n} destinations")


@dataclass(slots=True)
class Selection:
    """The outcome of :func:`select`.

    :param indexes: array indexes, chosen first then the failover list; empty: no destination.
    :param destinations: the same as entries.
    :param cursors: the set's cursors after this selection (store them back).
    :param alg: the algorithm that actually ran (alg 5 without credentials runs as 4).
    """

    indexes: tuple[int, ...]
    destinations: tuple[Destination, ...]
    cursors: Cursors
    alg: int

    @property
    def chosen(self) -> Destination | None:
        return self.destinations[0] if self.destinations else None


def _skip_loop(flags: Sequence[int], h: int, n: int) -> int | None:
    """Kamailio's linear probe: ``h`` or the next usable index after it (mod ``n``)."""
    i = h
    while not is_usable(flags[i]):
        i = (i + 1) % n
        if i == h:
            return None
    return i


def _rehash(flags: Sequence[int], start: int, n: int) -> int | None:
    """Re-pick among the usable candidates with the quotient of the hash.

    The quotient ``start // n`` is independent of the remainder that chose the dead entry,
    so its calls spread evenly whatever the number of survivors (``start % survivors``
    would not: with 6 entries and 4 survivors it would reach only 2 of them).
    """
    survivors = [i for i in range(n) if is_usable(flags[i])]
    if not survivors:
        return None
    return survivors[(start // n) % len(survivors)]


def select(
    view: SetView,
    alg: int,
    call: CallInfo,
    *,
    policy: Policy = Policy(),
    limit: int = 0,
    rng: random.Random | None = None,
) -> Selection:
    """Choose a destination and its failover list from one set.

    :param view: the set and its runtime state.
    :param alg: Kamailio's algorithm number (see :data:`~plugins.dispatcher.algorithms.ALGORITHMS`).
    :param call: the call being routed.
    :param policy: ``use_default``, hash options, ``rehash``.
    :param limit: most destinations returned, chosen one included; 0 = all.
    :param rng: randomness for alg 6.
    :raises ValueError: unknown algorithm number.
    """
    algorithm = _BY_NUMBER.get(alg)
    if algorithm is None:
        raise ValueError(f"unknown algorithm {alg}")
    nr = len(view.dests)
    if nr == 0:
        return Selection((), (), view.cursors, alg)
    flags = view.flags
    loads = view.loads or (0,) * nr
    reserve = policy.use_default and nr > 1
    n = nr - 1 if reserve else nr
    last = nr - 1
    inp = AlgInput(
        call=call,
        dests=view.dests,
        flags=flags,
        loads=loads,
        latencies=view.latencies or (None,) * nr,
        candidates=n,
        cursors=view.cursors,
        weight_table=view.weight_table,
        rweight_table=view.rweight_table,
        user_only=policy.user_only,
        hash_template=policy.hash_template,
        rng=rng,
    )
    pick = algorithm.pick(inp)
    eff = pick.effective if pick.effective is not None else alg
    cursors = pick.cursors or view.cursors
    cap = limit if limit > 0 else nr

    def reserve_ok() -> bool:
        if not (reserve and is_usable(flags[last])):
            return False
        return eff != CALL_LOAD or has_room(view.dests[last], loads[last])

    def done(indexes: list[int]) -> Selection:
        return Selection(tuple(indexes), tuple([view.dests[i] for i in indexes]), cursors, eff)

    if pick.order is not None:
        indexes = list(pick.order[:cap])
        if not indexes:
            return done([last] if reserve_ok() else [])
        if eff != PARALLEL and len(indexes) < cap and reserve_ok():
            indexes.append(last)
        return done(indexes)

    if pick.start is None:
        return done([])
    h = pick.start % n
    if is_usable(flags[h]):
        chosen: int | None = h
    elif policy.rehash and _BY_NUMBER[eff].hashed:
        chosen = _rehash(flags, pick.start, n)
    else:
        chosen = _skip_loop(flags, h, n)
    if chosen is None:
        if not reserve_ok():
            return done([])
        chosen = last
    if pick.round_robin:
        cursors = Cursors(rr=(chosen + 1) % nr, weight=cursors.weight, rweight=cursors.rweight)

    indexes = [chosen]
    dests = view.dests
    call_load = eff == CALL_LOAD
    for i in chain(range(chosen + 1, nr), range(chosen)):
        if len(indexes) >= cap:
            break
        if flags[i] & UNUSABLE or (reserve and i == last):
            continue
        if call_load and not has_room(dests[i], loads[i]):
            continue
        indexes.append(i)
    if chosen != last and len(indexes) < cap and reserve_ok():
        indexes.append(last)
    return done(indexes)
