""":func:`select` against a plain transliteration of Kamailio's ``ds_manage_routes()``.

``select`` is tuned for speed (kept usable-index lists, bisection, slices); the model below
is the C code's loops written out one index at a time. Random sets, states, loads, cursors,
policies and limits must give the same destinations, cursors and effective algorithm.
"""

from __future__ import annotations

import random

import pytest

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import ALGORITHMS, AlgInput, has_room, relative_weight_table, weight_table
from plugins.dispatcher.latency import seeded
from plugins.dispatcher.model import Attrs, DestFlags, Destination, is_usable
from plugins.dispatcher.selection import CALL_LOAD, PARALLEL, Policy, select
from plugins.dispatcher.setview import Cursors, SetView

STATES = [0, 0, 0, int(DestFlags.INACTIVE), int(DestFlags.DISABLED), int(DestFlags.TRYING),
          int(DestFlags.INACTIVE | DestFlags.PROBING)]


def model(view: SetView, alg: int, call: CallInfo, cursors: Cursors, policy: Policy, limit: int,
          rng: random.Random) -> tuple[tuple[int, ...], Cursors, int]:
    """Kamailio's steps, one index at a time (``rehash`` as documented in selection.py)."""
    dests, flags, nr = view.dests, view.flags, len(view.dests)
    loads = view.loads or (0,) * nr
    reserve = policy.use_default and nr > 1
    last, n = nr - 1, (nr - 1 if reserve and nr > 1 else nr)
    pick = ALGORITHMS[alg].pick(AlgInput(call, view, n, cursors, policy.user_only, policy.hash_template, rng))
    eff = alg if pick.effective is None else pick.effective
    cursors = pick.cursors or cursors
    cap = limit or nr

    def reserve_ok() -> bool:
        return reserve and is_usable(flags[last]) and (eff != CALL_LOAD or has_room(dests[last], loads[last]))

    if pick.order is not None:
        out = list(pick.order[:cap]) or ([last] if reserve_ok() else [])
        if pick.order and eff != PARALLEL and len(out) < cap and reserve_ok():
            out.append(last)
        return tuple(out), cursors, eff
    if pick.start is None:
        return (), cursors, eff
    h = i = pick.start % n
    while not is_usable(flags[i]):  # the skip loop
        i = (i + 1) % n
        if i == h:
            i = -1
            break
    if i != h and i != -1 and policy.rehash and ALGORITHMS[eff].hashed:
        survivors = [k for k in range(n) if is_usable(flags[k])]
        i = survivors[(pick.start // n) % len(survivors)]
    if i == -1:
        if not reserve_ok():
            return (), cursors, eff
        i = last
    if pick.round_robin:
        cursors = Cursors((i + 1) % nr, cursors.weight, cursors.rweight)
    out = [i]
    for k in [*range(i + 1, nr), *range(i)]:  # the failover list
        room = eff != CALL_LOAD or has_room(dests[k], loads[k])
        if len(out) < cap and is_usable(flags[k]) and not (reserve and k == last) and room:
            out.append(k)
    if i != last and len(out) < cap and reserve_ok():
        out.append(last)
    return tuple(out), cursors, eff


@pytest.mark.parametrize("seed", range(20))
def test_select_matches_the_model(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(500):
        nr = rng.randint(1, 12)
        dests = tuple(
            Destination(1, f"sip:gw{i}", priority=rng.randint(0, 3),
                        attrs=Attrs(weight=rng.randint(0, 60), rweight=rng.randint(0, 3),
                                    maxload=rng.choice([0, 1, 2]), cc=rng.choice([0, 1])))
            for i in range(nr)
        )
        flags = tuple(rng.choice(STATES) for _ in range(nr))
        view = SetView(
            dests, flags,
            loads=tuple(rng.randint(0, 3) for _ in range(nr)),
            latencies=tuple(rng.choice([None, seeded(rng.uniform(0, 300))]) for _ in range(nr)),
            weight_table=weight_table(dests, rng), rweight_table=relative_weight_table(dests, flags, rng),
        )
        cursors = Cursors(rng.randint(0, 12), rng.randint(0, 150), rng.randint(0, 150))
        policy = Policy(use_default=rng.random() < 0.3, user_only=rng.random() < 0.2,
                        hash_template=rng.choice(["", "{call_id}", "{from_user}"]), rehash=rng.random() < 0.3)
        alg, limit = rng.randint(0, 13), rng.choice([0, 0, 1, 2, 3, 9])
        headers = {"authorization": (f'Digest username="u{rng.randint(0, 99)}"',)} if rng.random() < 0.5 else {}
        call = CallInfo(1, f"{rng.getrandbits(40):x}@h", f"sip:{rng.randint(0, 999)}@b", f"sip:a{rng.randint(0, 99)}@x",
                        "sip:t@y", method=rng.choice(["INVITE", "INVITE", "MESSAGE"]), headers=headers)
        draw = rng.getrandbits(32)
        got = select(view, alg, call, cursors=cursors, policy=policy, limit=limit, rng=random.Random(draw))
        want = model(view, alg, call, cursors, policy, limit, random.Random(draw))
        assert (got.indexes, got.cursors, got.alg) == want, (alg, flags, policy, limit, cursors)
