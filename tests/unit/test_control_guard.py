"""The control API's admission rules, without sockets: request checks, connection table, refusal log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from loguru import logger

from b2bua.control_guard import (
    ConnectionTable,
    RefusalLog,
    content_type_refusal,
    host_refusal,
    origin_refusal,
    source_of,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("address", "source"),
    [(("127.0.0.1", 5000), "127.0.0.1"), (("::ffff:10.0.0.1", 5000, 0, 0), "10.0.0.1"),
     (("::1", 5000, 0, 0), "::1"), (("2001:db8::1", 1, 0, 0), "2001:db8::1"), ("", "local"), (None, "local")],
)
def test_source_of(address: object, source: str) -> None:
    assert source_of(address) == source


# -- Host (DNS rebinding) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8090", "127.0.0.1", "[::1]:8090", "[::1]", "localhost:8090", "LOCALHOST", "b2bua.localhost:1",
     "10.0.0.5:8090", "0.0.0.0:80"],
)
def test_hosts_without_token_that_no_rebinding_can_forge(host: str) -> None:
    assert host_refusal([host], token=False) is None


@pytest.mark.parametrize(
    ("hosts", "reason"),
    [
        (["attacker.example:8090"], "Host 'attacker.example:8090' is a name: without a token, use an IP"),
        (["localhost.attacker.example"], "is a name"),
        (["localhost."], "is a name"),
        (["127.0.0.1.nip.io:8090"], "is a name"),
        (["a b:80"], "malformed Host 'a b:80'"),
        (["127.0.0.1:http"], "malformed Host"),
        (["user@127.0.0.1"], "malformed Host"),
        (["127.0.0.1/x"], "malformed Host"),
        ([""], "malformed Host"),
        (["127.0.0.1", "attacker.example"], "more than one Host header"),
    ],
)
def test_hosts_refused_without_token(hosts: list[str], reason: str) -> None:
    refusal = host_refusal(hosts, token=False)
    assert refusal is not None and reason in refusal


def test_a_token_allows_any_well_formed_host_and_no_host_is_fine() -> None:
    assert host_refusal(["b2bua.example.net:8090"], token=True) is None
    assert host_refusal([], token=False) is None
    assert host_refusal(["a b"], token=True) is not None
    assert host_refusal(["x", "y"], token=True) is not None


# -- Origin (CSRF) --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host"),
    [(None, "127.0.0.1:8090"), (None, None), ("http://127.0.0.1:8090", "127.0.0.1:8090"),
     ("HTTP://LOCALHOST:8090", "localhost:8090"), ("http://localhost", "localhost:80"),
     ("http://localhost:80", "localhost"), ("https://ctl.example:443", "ctl.example"),
     ("http://[::1]:8090", "[::1]:8090")],
)
def test_origins_allowed(origin: str | None, host: str | None) -> None:
    assert origin_refusal(origin, host) is None


@pytest.mark.parametrize(
    ("origin", "host"),
    [("http://attacker.example", "127.0.0.1:8090"), ("null", "127.0.0.1:8090"),
     ("http://127.0.0.1:3000", "127.0.0.1:8090"),  # another local web app is another origin
     ("http://127.0.0.1", "127.0.0.1:8090"), ("https://127.0.0.1:8090", "127.0.0.1"),
     ("file://", "127.0.0.1:8090"), ("http://127.0.0.1:8090", None), ("", "127.0.0.1:8090"),
     ("http://[::1]", "[::1]:8090")],
)
def test_origins_refused(origin: str, host: str | None) -> None:
    refusal = origin_refusal(origin, host)
    assert refusal == f"cross-origin request (Origin {origin!r})"


# -- Content-Type -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["application/json", "application/json; charset=utf-8", "Application/JSON",
                                   " application/json ", "application/json-rpc"])
def test_json_content_types(value: str) -> None:
    assert content_type_refusal(value) is None


@pytest.mark.parametrize(
    "value",
    # the three a browser may send cross-origin without a preflight, and others
    ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/jsonx", "json", "", "application/javascript"],
)
def test_other_content_types_refused(value: str) -> None:
    assert content_type_refusal(value) == f"Content-Type {value!r} is not application/json"


def test_missing_content_type_refused() -> None:
    assert content_type_refusal(None) == "no Content-Type: send 'Content-Type: application/json'"


# -- connection table -------------------------------------------------------------------------------


def test_admits_up_to_the_caps() -> None:
    clock = Clock()
    table = ConnectionTable(limit=3, per_source=2, clock=clock)
    assert table.admit("a1", "A").admitted
    assert table.admit("a2", "A").admitted
    assert table.admit("b1", "B").admitted
    assert len(table) == 3 and set(table.all_keys()) == {"a1", "a2", "b1"}


def test_a_source_at_its_cap_displaces_its_own_longest_waiting() -> None:
    clock = Clock()
    table = ConnectionTable(limit=10, per_source=2, clock=clock)
    table.admit("a1", "A")
    clock.now += 1
    table.admit("a2", "A")
    table.admit("b1", "B")
    clock.now += 1
    outcome = table.admit("a3", "A")
    assert outcome.admitted
    assert outcome.evicted == (("a1", "A", 2.0),)
    assert "a1" not in table and "b1" in table
    assert not table.set_busy("a1", True)  # its thread learns it was displaced


def test_busy_connections_are_never_displaced() -> None:
    table = ConnectionTable(limit=10, per_source=2, clock=Clock())
    table.admit("a1", "A")
    table.admit("a2", "A")
    assert table.set_busy("a1", True) and table.set_busy("a2", True)
    assert table.admit("a3", "A").admitted is False
    assert "a3" not in table
    table.set_busy("a2", False)
    assert table.admit("a3", "A").evicted[0][0] == "a2"


def test_at_the_total_cap_the_busiest_source_gives_way() -> None:
    clock = Clock()
    table = ConnectionTable(limit=4, per_source=3, clock=clock)
    table.admit("b1", "B")  # the oldest of all, but B holds one connection
    clock.now += 1
    for key in ("a1", "a2", "a3"):
        table.admit(key, "A")
        clock.now += 1
    outcome = table.admit("c1", "C")
    assert outcome.admitted and outcome.evicted[0][:2] == ("a1", "A")
    assert "b1" in table


def test_waiting_time_restarts_when_a_request_ends() -> None:
    clock = Clock()
    table = ConnectionTable(limit=2, per_source=2, clock=clock)
    table.admit("old", "A")
    clock.now += 5
    table.admit("new", "A")
    table.set_busy("old", True)
    clock.now += 1
    table.set_busy("old", False)  # answered: now it has waited 0 s
    assert table.admit("third", "A").evicted[0][0] == "new"


def test_remove_is_idempotent() -> None:
    table = ConnectionTable(limit=2, per_source=2, clock=Clock())
    table.admit("a", "A")
    table.remove("a")
    table.remove("a")
    assert len(table) == 0
    assert table.admit("b", "A").admitted and table.admit("c", "A").admitted


# -- refusal log ----------------------------------------------------------------------------------


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    yield lines
    logger.remove(sink)


def test_refusals_are_logged_then_summed_up(warnings: list[str]) -> None:
    clock = Clock()
    log = RefusalLog("control http", burst=2, interval=10.0, clock=clock)
    for i in range(50):
        log.refused("10.0.0.1" if i % 2 else "10.0.0.2", "origin", f"cross-origin #{i}")
    log.refused("10.0.0.3", "host", "rebinding")
    assert warnings == ["control http 10.0.0.2: cross-origin #0", "control http 10.0.0.1: cross-origin #1"]
    clock.now += 5
    log.flush()
    assert len(warnings) == 2  # the interval is not over
    clock.now += 5
    log.flush()
    assert warnings[2] == ("control http: 49 more refusals in the last 10s not logged one by one "
                           "(origin x48, host x1; from 10.0.0.2 x24, 10.0.0.1 x24, 10.0.0.3 x1)")
    log.flush()
    clock.now += 20
    log.flush()
    assert len(warnings) == 3  # nothing held back: no empty summaries
    log.refused("10.0.0.1", "origin", "again")
    assert warnings[3] == "control http 10.0.0.1: again"


def test_a_refusal_after_the_interval_writes_the_summary_first(warnings: list[str]) -> None:
    clock = Clock()
    log = RefusalLog("control socket", burst=1, interval=10.0, clock=clock)
    log.refused("local", "too large", "first")
    log.refused("local", "too large", "second")
    clock.now += 11
    log.refused("local", "too large", "third")
    assert warnings == ["control socket local: first",
                        "control socket: 1 more refusals in the last 11s not logged one by one "
                        "(too large x1; from local x1)",
                        "control socket local: third"]


def test_the_summary_names_a_bounded_number_of_sources(warnings: list[str]) -> None:
    clock = Clock()
    log = RefusalLog("control http", burst=0, interval=10.0, clock=clock)
    for i in range(5000):
        log.refused(f"10.0.{i // 256}.{i % 256}", "displaced", "x")
    log.flush(force=True)
    assert len(warnings) == 1
    assert warnings[0].startswith("control http: 5000 more refusals")
    assert "others x4980" in warnings[0]
