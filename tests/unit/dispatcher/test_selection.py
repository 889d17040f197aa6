"""Kamailio's selection pipeline: modulo, skip loop, cursors, failover list, use_default, limit."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import relative_weight_table, weight_table
from plugins.dispatcher.hashing import ds_get_hash
from plugins.dispatcher.model import Attrs, DestFlags, Destination
from plugins.dispatcher.selection import Policy, select
from plugins.dispatcher.setview import Cursors, SetView

# Kamailio's state letters
I, T, D, P = (int(f) for f in (DestFlags.INACTIVE, DestFlags.TRYING, DestFlags.DISABLED, DestFlags.PROBING))  # noqa: E741


def dests(n: int, **attrs: int) -> tuple[Destination, ...]:
    return tuple(Destination(1, f"sip:gw{i}.example", attrs=Attrs(**attrs)) for i in range(n))


def view(n: int, flags: Sequence[int] = (), **kw: object) -> SetView:
    return SetView(dests(n), tuple(flags) or (0,) * n, **kw)  # type: ignore[arg-type]


def call(call_id: str = "c@x", **kw: object) -> CallInfo:
    base: dict[str, object] = dict(
        id=1, call_id=call_id, request_uri="sip:4930@b2bua", from_uri="sip:alice@a", to_uri="sip:4930@b2bua"
    )
    base.update(kw)
    return CallInfo(**base)  # type: ignore[arg-type]


def call_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(64):016x}@host" for _ in range(n)]


def run(v: SetView, alg: int, n: int, policy: Policy | None = None, seed: int = 5) -> Counter[int]:
    """Select n times, carrying cursors like the runtime does; count the chosen index."""
    policy = policy or Policy()
    counts: Counter[int] = Counter()
    rng = random.Random(seed)
    cursors = Cursors()
    for cid in call_ids(n, seed):
        sel = select(v, alg, call(cid), cursors=cursors, policy=policy, rng=rng)
        cursors = sel.cursors
        counts[sel.indexes[0] if sel.indexes else -1] += 1
    return counts


# -- hashing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cid", call_ids(20))
def test_same_call_id_same_destination_and_kamailio_slot(cid: str) -> None:
    v = view(5)
    first = select(v, 0, call(cid)).indexes[0]
    assert all(select(v, 0, call(cid)).indexes[0] == first for _ in range(3))
    assert first == ds_get_hash(cid.encode()) % 5


@pytest.mark.parametrize(
    ("alg", "field", "uri"),
    [
        (1, "from_uri", "sip:bob@server.com"),
        (2, "to_uri", "sip:bob@server.com"),
        (3, "request_uri", "sip:bob@server.com"),
    ],
)
def test_uri_hash_algorithms_use_reference_slot(alg: int, field: str, uri: str) -> None:
    # reference: bob/server.com -> 3883463682, % 4 = 2
    assert select(view(4), alg, call(**{field: uri})).indexes[0] == 2


def test_user_only_flag_drops_host() -> None:
    policy = Policy(user_only=True)
    a = select(view(7), 1, call(from_uri="sip:bob@one.example"), policy=policy).indexes[0]
    b = select(view(7), 1, call(from_uri="sip:bob@two.example:5070"), policy=policy).indexes[0]
    assert a == b == ds_get_hash(b"bob") % 7


def test_hash_template() -> None:
    policy = Policy(hash_template="{from_user}@{call_id}")
    sel = select(view(5), 7, call("abc", from_uri="sip:alice@x"), policy=policy)
    assert sel.indexes[0] == ds_get_hash(b"alice@abc") % 5
    assert select(view(5), 7, call(), policy=Policy(hash_template="{source_ip}")).indexes == ()  # empty: none


def test_hash_auth_user_and_round_robin_fallback() -> None:
    headers = {"authorization": ('Digest username="bob", realm="r"',)}
    assert select(view(4), 5, call(headers=headers)).indexes[0] == ds_get_hash(b"bob") % 4
    fallback = select(view(4), 5, call(), cursors=Cursors(rr=3))
    assert (fallback.indexes[0], fallback.alg, fallback.cursors.rr) == (3, 4, 0)


# -- the skip loop -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected_first"),
    [
        ((0, 0, 0, 0), 0),
        ((I, 0, 0, 0), 1),
        ((D, 0, 0, 0), 1),
        ((T, 0, 0, 0), 0),  # trying is still selected
        ((T | P, 0, 0, 0), 0),
        ((I | P, D, T, 0), 2),
        ((I, I, I, 0), 3),
    ],
)
def test_priority_skips_inactive_and_disabled_not_trying(flags: tuple[int, ...], expected_first: int) -> None:
    assert select(view(4, flags), 8, call()).indexes[0] == expected_first


@pytest.mark.parametrize("alg", range(14))
@pytest.mark.parametrize("flags", [(I, I, I), (D, D, D), (I, D, I | P)])
def test_no_usable_destination_gives_nothing(alg: int, flags: tuple[int, ...]) -> None:
    v = SetView(dests(3, weight=33, rweight=1, duid=1), flags)
    assert select(v, alg, call(), policy=Policy(hash_template="{call_id}"), rng=random.Random(1)).indexes == ()


def test_empty_set_and_unknown_algorithm() -> None:
    assert select(SetView((), ()), 4, call()).indexes == ()
    with pytest.raises(ValueError, match="unknown algorithm 64"):
        select(view(2), 64, call())


def test_skip_loop_wraps_around() -> None:
    cid = next(c for c in call_ids(200) if ds_get_hash(c.encode()) % 4 == 3)
    assert select(view(4, (0, 0, 0, I)), 0, call(cid)).indexes == (0, 1, 2)


# -- round robin ---------------------------------------------------------------------------------


def test_round_robin_alternates_strictly() -> None:
    v = view(3)
    seen, cursors = [], Cursors()
    for _ in range(9):
        sel = select(v, 4, call(), cursors=cursors)
        seen.append(sel.indexes[0])
        cursors = sel.cursors
    assert seen == [0, 1, 2] * 3


def test_round_robin_moves_past_the_used_entry() -> None:
    # Kamailio's "last = chosen + 1": the entry after a dead one is not picked twice in a row
    v = view(4, (0, I, 0, 0))
    seen, cursors = [], Cursors()
    for _ in range(6):
        sel = select(v, 4, call(), cursors=cursors)
        seen.append(sel.indexes[0])
        cursors = sel.cursors
    assert seen == [0, 2, 3, 0, 2, 3]


# -- failover list, limit, use_default -----------------------------------------------------------


def test_failover_list_is_wrap_around_array_order_without_dead_entries() -> None:
    v = view(6, (0, I, 0, 0, D, T))
    assert select(v, 4, call(), cursors=Cursors(rr=3)).indexes == (3, 5, 0, 2)


@pytest.mark.parametrize(
    ("limit", "expected"), [(0, (2, 3, 0, 1)), (1, (2,)), (2, (2, 3)), (3, (2, 3, 0)), (9, (2, 3, 0, 1))]
)
def test_limit(limit: int, expected: tuple[int, ...]) -> None:
    assert select(view(4), 4, call(), cursors=Cursors(rr=2), limit=limit).indexes == expected


def test_use_default_reserves_the_last_entry() -> None:
    policy = Policy(use_default=True)
    counts = run(view(4), 4, 30, policy)
    assert set(counts) == {0, 1, 2}  # never the reserve
    assert select(view(4), 4, call(), policy=policy).indexes == (0, 1, 2, 3)  # reserve last
    assert select(view(4, (I, I, I, 0)), 4, call(), policy=policy).indexes == (3,)
    # round robin on the reserve: the cursor moves just past it, as Kamailio's ``last = i + 1``
    assert select(view(4, (I, I, I, 0)), 4, call(), cursors=Cursors(rr=1), policy=policy).cursors.rr == 0
    assert select(view(4, (I, 0, I, I)), 4, call(), policy=policy).indexes == (1,)  # dead reserve not added
    assert select(view(4, (I, I, I, I)), 4, call(), policy=policy).indexes == ()
    assert select(view(4), 4, call(), policy=policy, limit=2).indexes == (0, 1)  # limit wins over reserve


def test_use_default_hash_modulo_excludes_reserve() -> None:
    cid = call_ids(1)[0]
    assert select(view(5), 0, call(cid), policy=Policy(use_default=True)).indexes[0] == ds_get_hash(cid.encode()) % 4


def test_use_default_with_a_single_entry_selects_it() -> None:
    assert select(view(1), 0, call(), policy=Policy(use_default=True)).indexes == (0,)


# -- weights ---------------------------------------------------------------------------------------


def test_weight_25_75_within_2_percent_over_10000_calls() -> None:
    ds = (Destination(1, "sip:a", attrs=Attrs(weight=25)), Destination(1, "sip:b", attrs=Attrs(weight=75)))
    v = SetView(ds, (0, 0), weight_table=weight_table(ds, random.Random(11)))
    counts = run(v, 9, 10_000)
    assert abs(counts[0] / 10_000 - 0.25) <= 0.02
    assert abs(counts[1] / 10_000 - 0.75) <= 0.02


def test_weight_table_is_static_when_an_entry_dies() -> None:
    # Kamailio's alg 9: a dead entry's slots fall through the skip loop to its neighbour (30/30/40 -> 0/60/40)
    ds = tuple(Destination(1, f"sip:{n}", attrs=Attrs(weight=w)) for n, w in (("a", 30), ("b", 30), ("c", 40)))
    v = SetView(ds, (I, 0, 0), weight_table=weight_table(ds, random.Random(1)))
    assert run(v, 9, 1000) == {1: 600, 2: 400}


@pytest.mark.parametrize(
    ("flags", "shares"),
    [((0, 0, 0), {0: 0.25, 1: 0.50, 2: 0.25}), ((0, 0, I), {0: 0.33, 1: 0.67})],
)
def test_relative_weight_shares(flags: tuple[int, ...], shares: dict[int, float]) -> None:
    ds = tuple(Destination(1, f"sip:{n}", attrs=Attrs(rweight=w)) for n, w in (("a", 1), ("b", 2), ("c", 1)))
    v = SetView(ds, flags, rweight_table=relative_weight_table(ds, flags, random.Random(4)))
    counts = run(v, 11, 10_000)
    assert {k: round(c / 10_000, 2) for k, c in counts.items()} == shares


# -- call load -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loads", "flags", "maxload", "expected"),
    [
        ((3, 1, 2), (0, 0, 0), 0, (1, 2, 0)),  # least loaded, then wrap-around
        ((1, 1, 1), (0, 0, 0), 0, (0, 1, 2)),  # tie -> lowest index
        ((3, 0, 2), (0, I, 0), 0, (2, 0)),  # dead entries are not candidates
        ((5, 4, 4), (0, 0, 0), 5, (1, 2)),  # at maxload: refused, left out of the failover list
        ((5, 5, 5), (0, 0, 0), 5, ()),  # all full: no destination
        ((0, 0, 0), (0, 0, 0), 0, (0, 1, 2)),
    ],
)
def test_call_load(loads: tuple[int, ...], flags: tuple[int, ...], maxload: int, expected: tuple[int, ...]) -> None:
    v = SetView(dests(3, maxload=maxload, duid=1), flags, loads=loads)
    assert select(v, 10, call()).indexes == expected


def test_call_load_non_invite_takes_the_first_entry_like_kamailio() -> None:
    v = SetView(dests(3, maxload=1), (0, 0, 0), loads=(1, 0, 0))
    sel = select(v, 10, call(method="MESSAGE"))
    assert (sel.indexes, sel.alg) == ((0, 1, 2), 0)


# -- parallel, latency, random -------------------------------------------------------------------


def test_parallel_forks_to_every_usable_entry() -> None:
    assert select(view(5, (0, I, T, D, 0)), 12, call()).indexes == (0, 2, 4)
    assert select(view(5), 12, call(), limit=2).indexes == (0, 1)
    assert select(view(3, (I, I, 0)), 12, call(), policy=Policy(use_default=True)).indexes == (2,)
    assert select(view(3), 12, call(), policy=Policy(use_default=True)).indexes == (0, 1)


class Lat:
    def __init__(self, est: float, avg: float = 0.0) -> None:
        self.est, self.avg = est, avg


def test_latency_picks_highest_adjusted_priority_and_rotates_cursor() -> None:
    ds = tuple(Destination(1, f"sip:{n}", priority=p) for n, p in (("a", 30), ("b", 30), ("c", 10)))
    v = SetView(ds, (0, 0, 0), latencies=(Lat(201), Lat(91), Lat(0)))  # adjusted 24, 27, 10
    sel = select(v, 13, call())
    assert sel.indexes == (1, 0, 2)
    assert sel.cursors.rr == 2
    v_dead = SetView(ds, (0, I, 0), latencies=v.latencies)
    assert select(v_dead, 13, call()).indexes == (0, 2)


def test_latency_round_robin_among_equals() -> None:
    v = view(3)
    seen, cursors = [], Cursors()
    for _ in range(6):
        sel = select(v, 13, call(), cursors=cursors)
        seen.append(sel.indexes[0])
        cursors = sel.cursors
    assert seen == [0, 1, 2, 0, 1, 2]


def test_random_is_roughly_uniform_and_skips_dead() -> None:
    counts = run(view(4, (0, 0, I, 0)), 6, 8000)
    assert set(counts) == {0, 1, 3}
    assert counts[0] + counts[1] + counts[3] == 8000


# -- rehash (beyond Kamailio) ----------------------------------------------------------------------


def test_rehash_spreads_a_dead_gateways_share_over_all_survivors() -> None:
    n_calls = 12_000  # seeded Call-IDs: deterministic; the tolerance is about 4 sigma
    flags = (0, 0, I, 0, 0, 0)
    kamailio = run(view(6, flags), 0, n_calls)
    rehash = run(view(6, flags), 0, n_calls, Policy(rehash=True))
    # Kamailio: the dead gateway's whole share goes to its neighbour (kamailio#2361)
    assert kamailio[3] / n_calls == pytest.approx(2 / 6, abs=0.02)
    assert kamailio[0] / n_calls == pytest.approx(1 / 6, abs=0.02)
    # rehash: every survivor within a few % of 1/5
    assert set(rehash) == {0, 1, 3, 4, 5}
    for i in (0, 1, 3, 4, 5):
        assert rehash[i] / n_calls == pytest.approx(1 / 5, abs=0.015), (i, rehash)


@pytest.mark.parametrize("dead", [(2,), (1, 4), (0, 2, 4)])
def test_rehash_keeps_live_gateways_calls_and_spreads_any_number_of_dead(dead: tuple[int, ...]) -> None:
    flags = tuple(I if i in dead else 0 for i in range(6))
    survivors = [i for i in range(6) if i not in dead]
    counts: Counter[int] = Counter()
    for cid in call_ids(6000):
        home = ds_get_hash(cid.encode()) % 6
        got = select(view(6, flags), 0, call(cid), policy=Policy(rehash=True)).indexes[0]
        if home not in dead:
            assert got == home
        counts[got] += 1
    for i in survivors:
        assert counts[i] / 6000 == pytest.approx(1 / len(survivors), abs=0.025), counts


def test_rehash_does_not_touch_round_robin() -> None:
    assert run(view(3, (0, I, 0)), 4, 6, Policy(rehash=True)) == {0: 3, 2: 3}
