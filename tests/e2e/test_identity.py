"""Caller identity and header pass-through on the wire (issue 12, item 1), read from sipp's
``-trace_msg`` logs on both sides: what the gateway's INVITE carries of the caller's, what the
caller's 180/200 carry of the gateway's, and that neither side sees the other's topology."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .configs import ListEntry, start_b2bua
from .conftest import B2buaFactory, ScenarioGatewayFactory
from .harness import AddressAllocator, Caller, TracedMessage, format_extra_headers, parse_message_log

CALLER_HEADERS = {
    "P-Asserted-Identity": '"Alice Example" <sip:+4930111@pbx.example>',
    "Privacy": "none",
    "Diversion": "<sip:+4930999@pbx.example>;reason=unconditional;counter=1",
    "History-Info": "<sip:+4930999@pbx.example>;index=1",
    "X-Account-Code": "42",
    "Subject": "not listed, not copied",
    "Record-Route": "<sip:10.66.66.66;lr;callerrr>",
}
GATEWAY_RINGING = {"P-Asserted-Identity": "<sip:+4930222@carrier.example>", "X-Gw-Ringing": "r1"}
GATEWAY_OK = {"P-Asserted-Identity": '"Bob" <sip:+4930222@carrier.example>', "Privacy": "id",
              "X-Gw-Answer": "a1", "Organization": "not listed"}


def _received(messages: list[TracedMessage], first: str) -> list[TracedMessage]:
    return [m for m in messages if m.direction == "received" and m.first_line.startswith(first)]


def _headers(message: TracedMessage, name: str) -> list[str]:
    head = message.text.split("\n\n", 1)[0].split("\n")[1:]
    return [line.partition(":")[2].strip() for line in head if line.partition(":")[0].strip().lower() == name.lower()]


def _call(b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
          caller: Caller, workdir: Path, **config: Any) -> tuple[TracedMessage, list[TracedMessage], str]:
    """One call with identity and headers; returns the gateway's INVITE, the caller's messages
    and the B2BUA's address."""
    gw = scenario_gateway("uas_answer_headers.xml", {"RINGING_HEADERS": format_extra_headers(GATEWAY_RINGING),
                                                     "OK_HEADERS": format_extra_headers(GATEWAY_OK)}, label="headers")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], **config)
    result = caller.run_calls(b2b.ip, b2b.port, n=1, service="4930222", from_user="+4930111",
                              from_name="Alice Example", to_name="Bob Callee", extra_headers=CALLER_HEADERS)
    assert result.final_codes == [200], result.describe()
    invites = gw.requests("INVITE")
    assert len(invites) == 1
    return invites[0], parse_message_log(result.files.messages.read_text()), b2b.ip


def test_identity_and_listed_headers_cross_and_topology_stays_hidden(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
        caller: Caller, workdir: Path) -> None:
    invite, caller_side, b2bua_ip = _call(b2bua_factory, scenario_gateway, addresses, caller, workdir)
    sent = next(m for m in caller_side if m.direction == "sent" and m.first_line.startswith("INVITE"))
    gw_host = invite.first_line.split("@", 1)[1].split(" ", 1)[0]

    # From: the caller's URI and display name; To: the caller's user and name, the gateway's host
    # (pjsip writes From and To without a port: RFC 3261 19.1.1 has no use for one there)
    assert invite.header("From").startswith(f'"Alice Example" <sip:+4930111@{caller.ip}>;tag=')
    assert invite.header("To") == f'"Bob Callee" <sip:4930222@{gw_host.split(":")[0]}>'
    assert invite.first_line == f"INVITE sip:4930222@{gw_host} SIP/2.0"
    # the default [headers] to_gateway, values unchanged, Subject not listed
    for name in ("P-Asserted-Identity", "Privacy", "Diversion", "History-Info", "X-Account-Code"):
        assert invite.header(name) == CALLER_HEADERS[name], name
    assert invite.header("Subject") is None
    # topology hiding: nothing of the caller's Via, Record-Route, Contact, Call-ID
    assert invite.header("Record-Route") is None and "callerrr" not in invite.text
    assert invite.header("Call-ID") != sent.header("Call-ID")
    assert caller.ip not in " ".join(_headers(invite, "Via") + _headers(invite, "Contact"))
    assert b2bua_ip in invite.header("Contact")

    # back to the caller: the gateway's identity, each response its own: the 180's on the 180,
    # the 200's alone on the 200 (pjsua built the 200 on the 180 and kept its headers: patch
    # 0025), nothing else of it
    ringing, ok = _received(caller_side, "SIP/2.0 180")[0], _received(caller_side, "SIP/2.0 200")[0]
    assert _headers(ringing, "P-Asserted-Identity") == [GATEWAY_RINGING["P-Asserted-Identity"]]
    assert ringing.header("Privacy") is None
    assert _headers(ok, "P-Asserted-Identity") == [GATEWAY_OK["P-Asserted-Identity"]]
    assert _headers(ok, "Privacy") == ["id"]
    for response in (ringing, ok):
        assert response.header("X-Gw-Ringing") is None and response.header("X-Gw-Answer") is None
        assert response.header("Organization") is None
        assert "gwrr" not in response.text, "the gateway's Record-Route reached the caller"
        assert invite.header("Call-ID") not in response.text
        assert response.header("Call-ID") == sent.header("Call-ID")
        assert b2bua_ip in response.header("Contact")


def test_a_failure_after_ringing_does_not_keep_the_180s_identity(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
        caller: Caller, workdir: Path) -> None:
    # pjsua builds the failure answer on the 180 it sent: the 180's headers went with it
    gw = scenario_gateway("uas_ring_reject_headers.xml",
                          {"RINGING_HEADERS": format_extra_headers(GATEWAY_RINGING), "CODE": "486",
                           "REASON": "Busy Here"}, label="ring-reject")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="expect:486")
    assert result.final_codes == [486], result.describe()
    caller_side = parse_message_log(result.files.messages.read_text())
    ringing, busy = _received(caller_side, "SIP/2.0 180")[0], _received(caller_side, "SIP/2.0 486")[0]
    assert _headers(ringing, "P-Asserted-Identity") == [GATEWAY_RINGING["P-Asserted-Identity"]]
    assert busy.header("P-Asserted-Identity") is None


def test_header_lists_are_configurable(
        b2bua_factory: B2buaFactory, scenario_gateway: ScenarioGatewayFactory, addresses: AddressAllocator,
        caller: Caller, workdir: Path) -> None:
    """[headers] with other patterns: only X-Account-Code crosses to the gateway, the X- headers
    of the gateway's 180 and 200 back to the caller's 180 and 200 (and nothing else)."""
    headers = {"to_gateway": ["x-account-*"], "to_caller": ["X-*"]}
    invite, caller_side, _ = _call(b2bua_factory, scenario_gateway, addresses, caller, workdir,
                                   extra_sections={"headers": headers})
    assert invite.header("X-Account-Code") == "42"
    for name in ("P-Asserted-Identity", "Privacy", "Diversion", "History-Info"):
        assert invite.header(name) is None, name
    ringing, ok = _received(caller_side, "SIP/2.0 180")[0], _received(caller_side, "SIP/2.0 200")[0]
    assert ok.header("X-Gw-Answer") == "a1" and ok.header("X-Gw-Ringing") is None
    assert ringing.header("X-Gw-Ringing") == "r1" and ringing.header("X-Gw-Answer") is None
    assert ok.header("P-Asserted-Identity") is None and ringing.header("P-Asserted-Identity") is None
