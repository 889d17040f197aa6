"""The pure parts of the Redis-shared dispatcher state: names, shards, rendezvous, messages."""

from __future__ import annotations

from collections import Counter

import pytest

from plugins.dispatcher.latency import LatencyStats
from plugins.dispatcher.shared import LocalState
from plugins.dispatcher.sharedwire import (
    SHARDS,
    decode_latency,
    encode_latency,
    field_of,
    health_ttl,
    key_of_field,
    parse_counts,
    parse_state,
    preferred,
    shard_of,
    wanted_shards,
)


def test_field_round_trip_and_bad_fields() -> None:
    assert key_of_field(field_of((3, "sip:gw@10.0.0.1:5060"))) == (3, "sip:gw@10.0.0.1:5060")
    assert key_of_field(b"7 SIP:GW.example") == (7, "sip:gw.example")
    for bad in ("", "x sip:a", "1", "1 ", "-1 sip:a", "1 sip:a b", "\u00b2 sip:a"):  # "²" is a digit to isdigit()
        assert key_of_field(bad) is None, bad


def test_shards_are_stable_and_spread() -> None:
    keys = [(1, f"sip:10.0.{i // 250}.{i % 250}:5060") for i in range(2000)]
    counts = Counter(shard_of(k) for k in keys)
    assert set(counts) == set(range(SHARDS))
    assert max(counts.values()) < 3 * 2000 / SHARDS
    assert shard_of((1, "sip:a")) == shard_of((1, "sip:a"))  # crc32: the same on every node


def test_rendezvous_gives_each_shard_to_one_node_and_moves_little() -> None:
    nodes = ["a", "b", "c"]
    wants = {n: wanted_shards(n, nodes) for n in nodes}
    for s in range(SHARDS):
        assert sum(wants[n][s] == "1" for n in nodes) == 1, s
    assert all(w.count("1") > SHARDS / 6 for w in wants.values())  # each gets a fair share
    # d joins: only shards that d now prefers move, about a quarter
    moved = [s for s in range(SHARDS) if preferred(s, nodes) != preferred(s, [*nodes, "d"])]
    assert all(preferred(s, [*nodes, "d"]) == "d" for s in moved)
    assert 0 < len(moved) < SHARDS / 2
    assert wanted_shards("a", []) == "1" * SHARDS  # alone: everything


def test_state_message_checked() -> None:
    update = parse_state({"t": "state", "k": [1, "SIP:A"], "f": 4, "s": 9, "n": "a", "i": 3, "o": 1,
                          "l": encode_latency(LatencyStats(avg=2.0, count=3))})
    assert update.key == (1, "sip:a") and update.flags == 4 and update.seq == 9 and update.operator
    assert update.latency == LatencyStats(avg=2.0, count=3)
    for bad in ({"k": [1], "f": 0, "s": 1, "n": "a"}, {"k": ["1", "sip:a"], "f": 0, "s": 1, "n": "a"},
                {"k": [1, "sip:a"], "f": -1, "s": 1, "n": "a"}, {"k": [1, "sip:a"], "f": 0, "s": True, "n": "a"},
                {"k": [1, "sip:a"], "f": 0, "s": 1, "n": 5}, {"k": [1, ""], "f": 0, "s": 1, "n": "a"}):
        with pytest.raises(ValueError):
            parse_state(bad)


def test_latency_and_counts_from_the_wire() -> None:
    assert decode_latency(None) is None
    assert decode_latency([1, 2]) is None
    assert decode_latency(["x"] * 8) is None
    assert decode_latency([True] * 8) is None
    assert parse_counts({"1 sip:a": 3, "1 sip:b": "2", "bad": 1, "1 sip:c": -1, "1 sip:d": "x",
                         "1 sip:e": "\u00b2"}) == {
        (1, "sip:a"): 3, (1, "sip:b"): 2}
    with pytest.raises(ValueError):
        parse_counts([1])


def test_health_ttl() -> None:
    assert health_ttl(10, 5) == 35
    assert health_ttl(0, 5) == 0  # no keepalives: nothing refreshes it, so it is kept


def test_local_state_shares_nothing_and_probes_all() -> None:
    local = LocalState()
    assert local.probes((1, "sip:a")) and local.describe((1, "sip:a")) is None
    assert local.status() == {"SHARED": "local"}
