"""The algorithm registry and the pure per-algorithm pieces."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from b2bua.api import CallInfo
from plugins.dispatcher.algorithms import (
    ALGORITHMS,
    TABLE_SIZE,
    AlgInput,
    adjusted_priority,
    auth_username,
    latency_order,
    relative_weight_table,
    render_template,
    resolve_algorithm,
    template_names,
    weight_table,
)
from plugins.dispatcher.model import Attrs, DestFlags, Destination
from plugins.dispatcher.setview import Cursors, SetView

I = int(DestFlags.INACTIVE)  # noqa: E741 - Kamailio's letter


def dest(uri: str, priority: int = 0, **attrs: int) -> Destination:
    return Destination(1, uri, priority=priority, attrs=Attrs(**attrs))


def call(**kw: object) -> CallInfo:
    base: dict[str, object] = dict(
        id=1, call_id="c1@x", request_uri="sip:4930@b2bua", from_uri="sip:alice@a.example", to_uri="sip:4930@b2bua"
    )
    base.update(kw)
    return CallInfo(**base)  # type: ignore[arg-type]


def test_registry_has_kamailio_numbers_and_unique_names() -> None:
    assert sorted(ALGORITHMS) == list(range(14))
    names = [a.name for a in ALGORITHMS.values()]
    assert len(set(names)) == 14
    assert all(ALGORITHMS[n].number == n for n in ALGORITHMS)
    with pytest.raises(TypeError):
        ALGORITHMS[99] = ALGORITHMS[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "number"),
    [
        (0, 0), (4, 4), ("4", 4), (" 13 ", 13), ("round-robin", 4), ("Round_Robin", 4), ("hash-callid", 0),
        ("hash-from", 1), ("hash-to", 2), ("hash-ruri", 3), ("hash-auth-user", 5), ("random", 6),
        ("hash-template", 7), ("priority", 8), ("serial", 8), ("weight", 9), ("call-load", 10),
        ("relative-weight", 11), ("parallel", 12), ("latency", 13),
    ],
)  # fmt: skip
def test_resolve_algorithm(value: int | str, number: int) -> None:
    assert resolve_algorithm(value) == number


@pytest.mark.parametrize("value", [14, 64, -1, "fastest", "", True])
def test_resolve_algorithm_rejects_unknown_and_lists_known(value: int | str) -> None:
    with pytest.raises(ValueError, match=r"unknown algorithm .*4 round-robin"):
        resolve_algorithm(value)


# doc table of Kamailio alg 13: PRIORITY - EST/PRIORITY
@pytest.mark.parametrize(
    ("prio", "lat", "expected"),
    [(30, 21, 30), (30, 91, 27), (30, 201, 24), (30, 30, 30), (5, 1000, 1), (0, 500, 0), (10, 0, 10)],
)
def test_adjusted_priority(prio: int, lat: int, expected: int) -> None:
    assert adjusted_priority(prio, lat) == expected


def test_weight_table_25_75_is_exact_and_shuffled() -> None:
    table = weight_table([dest("sip:a", weight=25), dest("sip:b", weight=75)], random.Random(1))
    assert len(table) == TABLE_SIZE
    assert Counter(table) == {0: 25, 1: 75}
    assert list(table) != sorted(table)  # shuffled, so the first 25 calls do not all go to a


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((10, 20, 30), {0: 10, 1: 20, 2: 70}),  # shortfall to the last entry
        ((60, 60, 10), {0: 60, 1: 40}),  # over 100: cut, the rest ignored
        ((0, 50, 50), {0: 100}),  # first entry without weight: no table (all index 0)
        ((50, 0, 40), {0: 50, 2: 50}),
    ],
)
def test_weight_table_rules(weights: tuple[int, ...], expected: dict[int, int]) -> None:
    table = weight_table([dest(f"sip:{i}", weight=w) for i, w in enumerate(weights)], random.Random(2))
    assert Counter(table) == expected


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((0, 0, 0), {0: 25, 1: 50, 2: 25}),
        ((0, 0, I), {0: 33, 1: 67}),  # remainder to the last one inserted
        ((I, 0, 0), {1: 66, 2: 34}),
        ((I, I, I), {0: 100}),
    ],
)
def test_relative_weight_table_over_usable_entries(flags: tuple[int, ...], expected: dict[int, int]) -> None:
    dests = [dest("sip:a", rweight=1), dest("sip:b", rweight=2), dest("sip:c", rweight=1)]
    assert Counter(relative_weight_table(dests, flags, random.Random(3))) == expected


def test_relative_weight_table_needs_two_entries() -> None:
    assert Counter(relative_weight_table([dest("sip:a", rweight=5)], (0,), random.Random(0))) == {0: 100}


@pytest.mark.parametrize(
    ("headers", "user"),
    [
        ({"authorization": ('Digest username="bob", realm="x", nonce="a,b"',)}, "bob"),
        ({"proxy-authorization": ('Digest realm="x", username="carol@example.com"',)}, "carol"),
        (
            {"authorization": ('Digest username="a"',), "proxy-authorization": ('Digest username="p"',)},
            "p",
        ),
        ({"authorization": ("Basic Ym9iOnNlY3JldA==",)}, None),
        ({}, None),
    ],
)
def test_auth_username(headers: dict[str, tuple[str, ...]], user: str | None) -> None:
    assert auth_username(headers) == user


def test_template_fields_and_render() -> None:
    c = call(from_uri="sip:alice@a.example:5070", call_id="xyz")
    assert render_template("{from_user}@{call_id}", c) == "alice@xyz"
    assert render_template("{ruri_user}|{from_host}|{source_port}", c) == "4930|a.example|0"


@pytest.mark.parametrize("template", ["{}", "{0}", "{call_id!r}", "{call_id:>5}", "{call_id"])
def test_template_names_rejects_malformed(template: str) -> None:
    with pytest.raises(ValueError):
        template_names(template)


def _lat(est: float, avg: float = 0.0) -> SimpleNamespace:
    return SimpleNamespace(est=est, avg=avg)


def test_latency_order_demotes_slow_and_rotates_equals() -> None:
    dests = [dest("sip:a", 30), dest("sip:b", 30), dest("sip:c", 30)]
    lats = (_lat(201.9), _lat(21.0), _lat(25.0))  # a: 30 - 201//30 = 24; b, c: 30
    view = SetView(tuple(dests), (0, 0, 0), latencies=lats)
    base = AlgInput(call(), view, 3, Cursors())
    assert latency_order(base) == (1, 2, 0)
    rotated = AlgInput(call(), view, 3, Cursors(rr=2))
    assert latency_order(rotated) == (2, 1, 0)  # equals keep the rotation order


def test_latency_order_skips_unusable_and_uses_congestion_with_cc() -> None:
    dests = [dest("sip:a", 30, cc=1), dest("sip:b", 30), dest("sip:c", 30)]
    # a: cc -> EST-AVG = 5 ms -> 30; b: 300 ms -> 20; c inactive
    inp = AlgInput(call(), SetView(tuple(dests), (0, 0, I), latencies=(_lat(500, 495), _lat(300), None)), 3, Cursors())
    assert latency_order(inp) == (0, 1)


def test_every_template_field() -> None:
    from b2bua.api import CallInfo
    from plugins.dispatcher.algorithms import TEMPLATE_FIELDS, render_template, template_fields

    call = CallInfo(7, "abc@h", "sip:4930@b2b;user=phone", '"A" <sip:alice@a.example:5070>', "sip:bob@b",
                    from_header="f", to_header="t", source_ip="127.0.0.9", source_port=5062)
    expected = {
        "call_id": "abc@h", "request_uri": "sip:4930@b2b;user=phone",
        "from_uri": '"A" <sip:alice@a.example:5070>', "to_uri": "sip:bob@b", "from_header": "f",
        "to_header": "t", "source_ip": "127.0.0.9", "source_port": "5062", "source": "127.0.0.9:5062",
        "transport": "udp", "method": "INVITE", "from_user": "alice", "from_host": "a.example",
        "to_user": "bob", "to_host": "b", "ruri_user": "4930", "ruri_host": "b2b",
    }
    assert template_fields(call) == expected
    assert set(expected) == TEMPLATE_FIELDS
    names = sorted(expected)
    assert render_template("|".join("{" + n + "}" for n in names), call) == "|".join(expected[n] for n in names)
