"""The caller-ID example of docs/interop.md (``docs/examples/callerid.py``) over real SIP: the
number format per dispatcher set and per destination, in the From and the copied
P-Asserted-Identity the gateways receive, also after a failover to another carrier."""

from __future__ import annotations

from pathlib import Path

from .configs import ListEntry, b2bua_config, toml_table, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller, Gateway, free_port
from .test_example_plugin import EXAMPLE_ENV


def test_caller_id_is_normalised_per_set_and_per_destination(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator, caller: Caller,
        workdir: Path) -> None:
    e164_down, national = gateway_factory("reject:503"), gateway_factory("answer")
    e164, as_dialled = gateway_factory("answer"), gateway_factory("answer")
    write_list_file(workdir, [
        ListEntry(1, e164_down.uri, priority=10, attrs="cli=national"),  # a failover to another format
        ListEntry(1, national.uri, priority=5, attrs="cli=national"),
        ListEntry(2, e164.uri),
        ListEntry(3, as_dialled.uri),
    ])
    routes = [{"set": s, "algorithm": "priority", "ruri_user_prefix": p} for s, p in ((1, "1"), (2, "2"), (3, "3"))]
    ip = addresses.next()
    port = free_port(ip)
    config = b2bua_config(ip, port, routes=routes, failover={}, plugins=["callerid:CallerId", "dispatcher",
                                                                         "failover"])
    config += "\n" + toml_table("plugins.callerid", {"country_code": "49", "hide_name": True}) + \
        '[plugins.callerid.sets]\n"1" = "e164"\n"2" = "e164"\n'
    b2bua_factory(config, env=EXAMPLE_ENV)
    pai = {"P-Asserted-Identity": '"Alice" <sip:0301234567@pbx.example;user=phone>'}
    for service in ("100", "200", "300"):
        result = caller.run_calls(ip, port, n=1, service=service, from_user="0301234567", from_name="Alice",
                                  extra_headers=pai)
        assert result.final_codes == [200], (service, result.describe())

    def seen(gw: Gateway) -> tuple[str, str | None]:
        invite = gw.requests("INVITE")[0]
        return (invite.header("From") or "").split(";tag=")[0], invite.header("P-Asserted-Identity")

    assert seen(national) == (f"<sip:0301234567@{caller.ip}>", '"Alice" <sip:0301234567@pbx.example;user=phone>')
    assert seen(e164_down) == seen(national), "the destination's cli= wins over its set's format"
    assert seen(e164) == (f"<sip:+49301234567@{caller.ip}>", '"Alice" <sip:+49301234567@pbx.example;user=phone>')
    assert seen(as_dialled) == (f'"Alice" <sip:0301234567@{caller.ip}>',
                                '"Alice" <sip:0301234567@pbx.example;user=phone>'), "set 3: no format, left alone"
