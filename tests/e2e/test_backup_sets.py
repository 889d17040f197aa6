"""Backup sets over real SIP (issue 12 item 4): a rule's ``backup_sets``, Kamailio's
``ds_select_routes("1=4;2=8")``.

What is asserted is what a user sees: the callers' final codes, which gateways got INVITEs, the
start-up refusing a backup set without destinations.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .configs import ListEntry, b2bua_config, start_b2bua
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller

FAILOVER = {"failover_codes": ["5xx", "408"]}


def test_failover_goes_on_into_the_backup_set(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                              caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    primary = [gateway_factory("reject:503"), gateway_factory("reject:503")]
    backup = gateway_factory("answer")
    entries = [ListEntry(1, gw.uri) for gw in primary] + [ListEntry(2, backup.uri)]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, failover=FAILOVER,
                      routes=[{"set": 1, "algorithm": "round-robin", "backup_sets": "2=priority"}])
    result = caller.run_calls(b2b.ip, b2b.port, n=4, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200] * 4, result.describe()
    # every call tried both gateways of set 1 (each refused it), then set 2's
    assert [gw.count("INVITE") for gw in primary] == [4, 4]
    assert backup.count("INVITE") == 4


def test_a_set_without_usable_destination_hands_calls_to_the_next(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    primary, second, third = gateway_factory("answer"), gateway_factory("answer"), gateway_factory("answer")
    entries = [ListEntry(1, primary.uri), ListEntry(2, second.uri), ListEntry(3, third.uri)]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, failover=FAILOVER,
                      routes=[{"set": 1, "algorithm": 4, "backup_sets": "2=4;3=4"}])
    b2b.process.rpc("dispatcher.set_state", "i", 1, primary.uri)
    result = caller.run_calls(b2b.ip, b2b.port, n=3, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200] * 3, result.describe()
    assert (primary.count("INVITE"), second.count("INVITE"), third.count("INVITE")) == (0, 3, 0)
    b2b.process.rpc("dispatcher.set_state", "d", 2, second.uri)
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200] * 2, result.describe()
    assert (primary.count("INVITE"), second.count("INVITE"), third.count("INVITE")) == (0, 3, 2)


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_backup_set_without_destinations_is_refused(workdir: Path, addresses: AddressAllocator,
                                                      command: str) -> None:
    text = b2bua_config(addresses.next(), 5060, routes=[{"set": 1}, {"set": 1, "backup_sets": "2=8;7=4"}])
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(text)
    (workdir / "dispatcher.list").write_text("1 sip:127.0.0.9:5060\n2 sip:127.0.0.10:5060\n")
    done = b2b.cli(command, "-c", "config.toml", timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert ("config.toml: [[plugins.dispatcher.routes]][1] backup_sets: set 7 has no destinations "
            "(loaded sets: 1, 2)") in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
