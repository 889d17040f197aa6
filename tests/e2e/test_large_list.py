"""A large destination list reloaded and listed while calls flow: every call still succeeds.

The B2BUA runs with overload shedding on (a loop more than 250 ms late answers new calls 503),
so a reload or listing that stalls the loop thread shows up as failed calls. Before reloads
ran as loop tasks, a 20,000-line reload on a thread made the loop wait for the GIL at every
pjsua2 call: calls took ~400 ms to set up and hundreds got 503.
"""

from __future__ import annotations

from pathlib import Path

from b2bua.control import ControlClient

from .configs import CONTROL_SOCKET, ListEntry, start_b2bua
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller

LINES = 20_000
CALLS = 300


def filler(count: int) -> list[ListEntry]:
    """``count`` entries in sets of 100 from set 2 on: loaded, never dialled."""
    return [ListEntry(2 + i // 100, f"sip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:5060", priority=i % 3,
                      attrs=f"duid=d{i}") for i in range(count)]


def test_reloads_and_listings_of_a_large_list_do_not_cost_calls(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    entries = [ListEntry(1, gw.uri, attrs="duid=gw"), *filler(LINES - 1)]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries,
                      sip={"overload_lag": 0.25, "overload_delay": 0})
    client = ControlClient.unix(workdir / CONTROL_SOCKET)
    calls = caller.start_calls(b2b.ip, b2b.port, n=CALLS, rate=20, call_duration_ms=100)

    answers = [client.call("dispatcher.reload", timeout=120) for _ in range(2)]
    listing = client.call("dispatcher.list", ["full"], timeout=120)
    answers.append(client.call("dispatcher.reload", timeout=120))

    result = calls.wait()
    assert answers == ["Ok. Dispatcher successfully reloaded."] * 3
    assert listing["NRSETS"] == 1 + (LINES - 2) // 100 + 1
    assert sum(len(r["SET"]["TARGETS"]) for r in listing["RECORDS"]) == LINES
    assert result.final_codes == [200] * CALLS, result.describe()
    assert gw.count("INVITE") == CALLS
    log = b2b.process.log_text()
    assert log.count("dispatcher: reload done in") == 3
    assert "overload" not in log, [line for line in log.splitlines() if "overload" in line]
