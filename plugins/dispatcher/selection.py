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
from bisect import bisect_left
from dataclasses import dataclass

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import ALGORITHMS, AlgInput, has_room
from plugins.dispatcher.model import Destination
from plugins.dispatcher.setview import INITIAL_CURSORS, Cursors, SetView

CALL_LOAD = 10
PARALLEL = 12
#: ALGORITHMS as a plain dict: looked up on every call
_BY_NUMBER = dict(ALGORITHMS)


@dataclass(frozen=True)
class Policy:
    """Module-wide selection settings (from ``[plugins.dispatcher]``)."""

    use_default: bool = False  #: the last entry of a set is the reserve (Kamailio ``use_default``)
    user_only: bool = False  #: URI hashes use the user part only (Kamailio ``flags`` bit 1)
    hash_template: str = ""  #: alg 7's template (Kamailio ``hash_pvar``)
    rehash: bool = False  #: spread a dead entry's hashed share over all survivors


# Selection is built for every call: a slotted plain dataclass costs a third of a frozen one's
# construction (read-only by convention).
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


def select(
    view: SetView,
    alg: int,
    call: CallInfo,
    *,
    cursors: Cursors = INITIAL_CURSORS,
    policy: Policy = Policy(),
    limit: int = 0,
    rng: random.Random | None = None,
) -> Selection:
    """Choose a destination and its failover list from one set.

    :param view: the set and its runtime state.
    :param alg: Kamailio's algorithm number (see :data:`~plugins.dispatcher.algorithms.ALGORITHMS`).
    :param call: the call being routed.
    :param cursors: the set's rotating positions (the result carries the next ones).
    :param policy: ``use_default``, hash options, ``rehash``.
    :param limit: most destinations returned, chosen one included; 0 = all.
    :param rng: randomness for alg 6.
    :raises ValueError: unknown algorithm number.
    """
    algorithm = _BY_NUMBER.get(alg)
    if algorithm is None:
        raise ValueError(f"unknown algorithm {alg}")
    dests = view.dests
    nr = len(dests)
    if nr == 0:
        return Selection((), (), cursors, alg)
    reserve = policy.use_default and nr > 1
    last = nr - 1
    n = last if reserve else nr
    usable = view.usable
    # the usable candidates: the reserve entry takes part only as the last resort
    cand = usable[:-1] if reserve and usable and usable[-1] == last else usable
    pick = algorithm.pick(AlgInput(call, view, n, cursors, policy.user_only, policy.hash_template, rng))
    eff = alg if pick.effective is None else pick.effective
    if pick.cursors is not None:
        cursors = pick.cursors
    cap = limit if limit > 0 else nr
    use_reserve = bool(reserve and usable and usable[-1] == last)
    if use_reserve and eff == CALL_LOAD:
        use_reserve = has_room(dests[last], view.loads[last] if view.loads else 0)

    if pick.order is not None:
        order = pick.order[:cap]
        if not order:
            order = (last,) if use_reserve else ()
        elif eff != PARALLEL and len(order) < cap and use_reserve:
            order += (last,)
        return Selection(order, tuple([dests[i] for i in order]), cursors, eff)

    if pick.start is None or not (cand or use_reserve):
        return Selection((), (), cursors, eff)
    if not cand:  # back at the start of the skip loop: the reserve entry
        if pick.round_robin:
            cursors = Cursors(0, cursors.weight, cursors.rweight)  # just past the last entry
        return Selection((last,), (dests[last],), cursors, eff)
    h = pick.start % n
    # Kamailio's skip loop: h, or the next usable candidate after it, wrapping
    at = bisect_left(cand, h)
    if at == len(cand) or cand[at] != h:
        if policy.rehash and _BY_NUMBER[eff].hashed:
            # the quotient of the hash is independent of the remainder that chose the dead
            # entry, so its calls spread evenly whatever the number of survivors (the hash
            # modulo the survivors would not: 6 entries, 4 survivors -> only 2 of them reached)
            at = (pick.start // n) % len(cand)
        elif at == len(cand):
            at = 0
    chosen = cand[at]
    if pick.round_robin:
        cursors = Cursors((chosen + 1) % nr, cursors.weight, cursors.rweight)
    # the failover list: the other usable candidates in wrap-around array order
    if eff == CALL_LOAD:
        loads = view.loads or (0,) * nr
        order = (chosen, *[i for i in cand[at + 1 :] + cand[:at] if has_room(dests[i], loads[i])])[:cap]
    else:  # cut before joining: a big set with a small limit copies only what it returns
        order = cand[at : at + cap]
        if len(order) < cap:
            order += cand[: min(at, cap - len(order))]
    if len(order) < cap and use_reserve:
        order += (last,)
    return Selection(order, tuple([dests[i] for i in order]), cursors, eff)
