"""Backup sets: a rule's ``backup_sets`` (Kamailio's ``ds_select_routes("1=4;2=8")``)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from b2bua.api import CallInfo, Reject
from b2bua.config import ConfigError
from plugins.dispatcher.checks import check_sources
from plugins.dispatcher.config import Route, parse_backup_sets, parse_dispatcher_config
from plugins.dispatcher.model import DestFlags, Destination, build_snapshot
from plugins.dispatcher.plans import ROUTE, select_sets
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.routes import unloaded_sets
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.simulate import format_result, simulate

from .test_plugin import Harness, uris

I = int(DestFlags.INACTIVE)  # noqa: E741
SNAP = build_snapshot([
    Destination(1, "sip:10.0.0.1"), Destination(1, "sip:10.0.0.2"),
    Destination(2, "sip:10.0.1.1", priority=5), Destination(2, "sip:10.0.1.2", priority=9),
    Destination(3, "sip:10.0.2.1"),
], "test")


def call(n: int = 1) -> CallInfo:
    return CallInfo(n, f"c{n}@x", "sip:4930@b2bua", "sip:a@x", "sip:4930@b2bua")


def state(*down: tuple[int, str]) -> DispatcherState:
    st = DispatcherState(rng=random.Random(1))
    st.swap(SNAP, keep_state=False)
    for setid, uri in down:
        assert st.set_state(setid, uri, "i")
    return st


def test_parse_rules_like_kamailio() -> None:
    assert parse_backup_sets("2=8; 3=round-robin;") == ((2, 8), (3, 4))
    assert parse_backup_sets("") == ()
    assert Route(set=1, algorithm=4, backup_sets="2=8").sets == ((1, 4), (2, 8))
    assert Route(set=1, algorithm=4, backup_sets="2=8").sets_text == "1=4;2=8"


@pytest.mark.parametrize(("rules", "why"), [
    ("2", "'2': expected SET=ALGORITHM"),
    ("=8", "'=8': expected SET=ALGORITHM"),
    ("-2=8", "the set id '-2' is not a number"),
    ("2=fastest", "'2=fastest': unknown algorithm 'fastest'"),
    ("2=8;2=4", "set 2 is listed twice"),
    ("1=8", "set 1 is the rule's own set"),
    ("2=parallel", "algorithm 12 \\(parallel\\)"),
    ("2=call-load", "10 \\(call-load\\) needs hash_size"),
])
def test_bad_rules_are_config_errors_naming_the_rule(rules: str, why: str) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[\[plugins.dispatcher.routes\]\]\[1\] backup_sets: .*" + why):
        parse_dispatcher_config({"routes": [{"set": 3}, {"set": 1, "backup_sets": rules}]}, "config.toml")


def test_a_parallel_rule_takes_no_backup() -> None:
    with pytest.raises(ConfigError, match="algorithm 12"):
        parse_dispatcher_config({"routes": [{"set": 1, "algorithm": 12, "backup_sets": "2=4"}]}, "config.toml")


def test_backups_extend_the_failover_list_in_order() -> None:
    route = Route(set=1, algorithm=4, backup_sets="2=8;3=4")
    dests, used = select_sets(state(), route, call(), random.Random(1))
    assert [d.uri for d in dests] == ["sip:10.0.0.2", "sip:10.0.0.1", "sip:10.0.1.2", "sip:10.0.1.1", "sip:10.0.2.1"]
    assert used == (1, 4)


def test_a_set_without_usable_destination_hands_over_to_the_next() -> None:
    route = Route(set=1, algorithm=4, backup_sets="2=8;3=4")
    down = state((1, "sip:10.0.0.1"), (1, "sip:10.0.0.2"), (2, "sip:10.0.1.2"))
    dests, used = select_sets(down, route, call(), random.Random(1))
    assert [d.uri for d in dests] == ["sip:10.0.1.1", "sip:10.0.2.1"] and used == (2, 8)


def test_limit_counts_across_the_sets_and_missing_sets_are_passed_over() -> None:
    route = Route(set=1, algorithm=8, limit=3, backup_sets="7=4;2=8;3=4")
    dests, _ = select_sets(state(), route, call(), random.Random(1))
    assert [(d.setid, d.uri) for d in dests] == [(1, "sip:10.0.0.2"), (1, "sip:10.0.0.1"), (2, "sip:10.0.1.2")]


def h_with(rules: list[dict[str, Any]]) -> Harness:
    return Harness({"routes": rules}, SNAP)


def test_the_plan_goes_on_through_the_backup_sets() -> None:
    h = h_with([{"set": 1, "algorithm": "round-robin", "backup_sets": "2=priority"}])
    c = h.call()
    assert uris(h.route(c)) == ["sip:10.0.0.2", "sip:10.0.0.1", "sip:10.0.1.2", "sip:10.0.1.1"]
    assert c.stash[ROUTE].setid == 1
    h.plugin.state.set_state(1, "sip:10.0.0.1", "i")
    h.plugin.state.set_state(1, "sip:10.0.0.2", "i")
    c = h.call()
    plan = h.route(c)
    assert uris(plan) == ["sip:10.0.1.2", "sip:10.0.1.1"]
    assert c.stash[ROUTE].setid == 2 and c.stash[ROUTE].alg == 8
    assert plan.data["dispatcher"] == {"setid": 2, "alg": 8, "rule": 0}  # type: ignore[union-attr]
    for uri in ("sip:10.0.1.1", "sip:10.0.1.2"):
        h.plugin.state.set_state(2, uri, "i")
    assert isinstance(h.route(h.call()), Reject)


def test_start_up_refuses_a_backup_set_that_has_no_destinations() -> None:
    with pytest.raises(LoadError, match=r"config.toml: \[\[plugins.dispatcher.routes\]\]\[1\] backup_sets: set 9 has "
                                        r"no destinations \(loaded sets: 1, 2, 3\)"):
        h_with([{"set": 1}, {"set": 2, "backup_sets": "3=4;9=8"}])


def test_a_rules_own_set_missing_only_warns() -> None:
    backups, own = unloaded_sets((Route(set=9), Route(set=1, backup_sets="2=4")), SNAP.sets, "c: [[r]]")
    assert backups == [] and own == ["c: [[r]][0] set: set 9 has no destinations (loaded sets: 1, 2, 3)"]


def test_a_reload_that_drops_a_backup_set_warns_and_goes_through(warnings: list[str]) -> None:
    h = h_with([{"set": 1, "backup_sets": "2=8"}])
    h.plugin.state.swap(build_snapshot([Destination(1, "sip:10.0.0.1")], "test"), keep_state=True)
    h.plugin._after_install()
    assert any("after the reload, config.toml: [[plugins.dispatcher.routes]][0] backup_sets: set 2 has no "
               "destinations" in w for w in warnings), warnings


def test_check_config_refuses_a_missing_backup_set(tmp_path: Any) -> None:
    listing = tmp_path / "dispatcher.list"
    listing.write_text("1 sip:10.0.0.1\n")
    cfg = parse_dispatcher_config({"list_file": str(listing), "routes": [{"set": 1, "backup_sets": "2=4"}]}, "c.toml")
    with pytest.raises(LoadError, match=r"c.toml: \[\[r\]\]\[0\] backup_sets: set 2 has no destinations"):
        check_sources(cfg, listing, routes_where="c.toml: [[r]]")


def test_simulate_shows_where_calls_go_when_a_set_is_down() -> None:
    result = simulate(SNAP, 1, 4, calls=100, backup_sets="2=8", down=["sip:10.0.0.1", "sip:10.0.0.2"])
    assert result.counts == {"1 sip:10.0.0.2": 0, "1 sip:10.0.0.1": 0, "2 sip:10.0.1.2": 100, "2 sip:10.0.1.1": 0}
    assert result.first_plan == ("2 sip:10.0.1.2", "2 sip:10.0.1.1")
    text = format_result(result)
    assert text.splitlines()[0] == "set 1, algorithm 4 round-robin, then set 2 (8 priority), 100 calls"
    assert text.splitlines()[-1] == "first call tries: 2 sip:10.0.1.2 -> 2 sip:10.0.1.1"
    with pytest.raises(ValueError, match=r"set 7 is not loaded \(sets: 1, 2, 3\)"):
        simulate(SNAP, 1, 4, calls=10, backup_sets="7=4")
