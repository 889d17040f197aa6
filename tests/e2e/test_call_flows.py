"""Call flows real peers produce that the other e2e files do not cover: answers a B2BUA cannot
take, requests inside a dialog that are neither BYE nor a re-INVITE.

Each test asserts what the caller and the gateways saw on the wire (and the B2BUA's counters),
with sipp scenarios of this file's own in ``scenarios/``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .configs import ListEntry, received_responses, start_b2bua
from .conftest import B2buaFactory, GatewayFactory, MediaPeerFactory, ScenarioGatewayFactory
from .harness import (
    AddressAllocator,
    Caller,
    CallResult,
    Gateway,
    TracedMessage,
    free_port,
    parse_message_log,
    wait_until,
)
from .test_host import Host, host_config

#: the 200's body of a gateway that takes none of the offered codecs (G.729 only)
G729_ONLY = """Content-Type: application/sdp
Content-Length: [len]

v=0
o=gw 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 18
a=rtpmap:18 G729/8000
"""
#: a 200 without any SDP although the B2BUA's INVITE carried an offer
NO_SDP = "Content-Length: 0\n"


def priority_entries(*gws: Gateway) -> list[ListEntry]:
    """Set 1 with the gateways in priority order: the first one is tried first."""
    return [ListEntry(1, gw.uri, priority=10 * (len(gws) - i)) for i, gw in enumerate(gws)]


BODIES = pytest.mark.parametrize("body", [G729_ONLY, NO_SDP], ids=["no-common-codec", "no-sdp"])


@BODIES
def test_a_200_without_a_usable_sdp_answer_fails_over_like_a_488(
        scenario_gateway: ScenarioGatewayFactory, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
        caller: Caller, workdir: Path, addresses: AddressAllocator, body: str) -> None:
    # pjsip takes such a 200 (ACK) and ends it (BYE) by itself; the caller used to get a 200 and a
    # BYE in the same millisecond: an answered call of 0 s, billed, and no other gateway tried
    bad = scenario_gateway("uas_answer_body.xml", {"BODY": body}, label="bad-answer")
    good = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), priority_entries(bad, good), algorithm="priority",
                      failover={"failover_codes": ["5xx", "408", 488]})
    result = caller.run_calls(b2b.ip, b2b.port, n=1, call_duration_ms=300)
    assert result.ok and result.final_codes == [200], result.describe()
    wait_until(lambda: bad.count("BYE") == 1 and good.count("BYE") == 1, 5, what="both gateways' BYEs")
    assert bad.count("ACK") == 1, "the unusable 200 was acknowledged, then ended"
    assert good.count("INVITE") == 1 and good.count("ACK") == 1, "the next gateway took the call"
    log = b2b.process.log_text()
    assert "failed: 488 Not Acceptable Here" in log, b2b.process.log_tail()
    assert f"answered by {good.uri}" in log


@BODIES
def test_a_200_without_a_usable_sdp_answer_reaches_the_caller_as_488_never_as_200(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, body: str) -> None:
    bad = scenario_gateway("uas_answer_body.xml", {"BODY": body}, label="bad-answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, bad.uri)], algorithm="priority",
                      failover={})
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="expect:488")
    assert result.ok and result.final_codes == [488], result.describe()
    assert 200 not in result.calls[0].codes
    wait_until(lambda: bad.count("BYE") == 1, 5, what="the BYE of the unusable 200")
    calls = b2b.process.rpc("core.stats")["calls"]
    assert (calls["answered"], calls["failed"], calls["active"]) == (0, 1, 0), calls


def test_options_and_info_inside_the_call_get_answers_not_500(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # SBCs and carriers probe a call with OPTIONS inside its dialog, some peers with an empty INFO;
    # pjsip's dialog layer answered both 500 "Unhandled by dialog usages", which some take for a
    # dead call and tear it down
    gw = scenario_gateway("uas_options_in_dialog.xml", {}, label="options-in-dialog")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="requests-in-dialog",
                              template="uac_requests_in_dialog.xml")
    assert result.ok and result.final_codes == [200], result.describe()
    wait_until(lambda: gw.count("BYE") == 1, 5, what="the gateway's BYE")

    def answers(peer: CallResult | Gateway, method: str) -> list[str]:
        return [m.first_line for m in parse_message_log(peer.files.messages.read_text())
                if m.direction == "received" and (m.header("CSeq") or "").endswith(f" {method}")]

    assert answers(result, "OPTIONS") == ["SIP/2.0 200 OK"] and answers(gw, "OPTIONS") == ["SIP/2.0 200 OK"]
    # an empty INFO is a keepalive (200); a body nobody here reads is 415 (RFC 6086 legacy INFO)
    assert answers(result, "INFO") == ["SIP/2.0 200 OK", "SIP/2.0 415 Unsupported Media Type"]


def test_a_routing_loop_ends_at_max_forwards_instead_of_taking_every_call_slot(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, caller: Caller,
        addresses: AddressAllocator) -> None:
    # A B2BUA routing to itself (or two routing to each other, through a proxy or not) used to send
    # every hop with a fresh Max-Forwards: 70, so the loop ran until max_calls was used up (one
    # caller's INVITE: 100 calls in 0.1 s with max_calls = 100) and every other call got 503 meanwhile
    ip = addresses.next()
    port = free_port(ip, "both")
    loop = b2bua_factory(host_config(ip, port, target=f"sip:{ip}:{port}"), subdir="loop")
    result = caller.run_calls(ip, port, n=1, behaviour="expect:483")
    assert result.ok and result.final_codes == [483], result.describe()
    calls = loop.rpc("core.stats")["calls"]
    # the caller's Max-Forwards: 70 allows 70 hops: the 71st INVITE carries 0 and is refused
    assert (calls["received"], calls["answered"], calls["active"]) == (71, 0, 0), calls
    assert "refused: 483 Too Many Hops" in loop.log_text()

    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, subdir="gateway")
    assert caller.run_calls(b2b.ip, b2b.port, n=1).final_codes == [200]
    assert gw.requests("INVITE")[0].header("Max-Forwards") == "69"


@pytest.mark.parametrize("t38_media", ["m=image [media_port] udptl t38",
                                       "m=audio 0 RTP/AVP 0\nm=image [media_port] udptl t38"],
                         ids=["image-only", "audio-port-0"])
def test_a_t38_reinvite_is_refused_and_the_other_side_keeps_its_audio(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, t38_media: str) -> None:
    # A fax machine (or a gateway's CNG detector) asks for T.38 after the answer. pjsua refuses the
    # offer (488: no T.38 here, the fax goes on as G.711), but the B2BUA took the offer's missing
    # audio for a hold and put the gateway's leg inactive: silence both ways for the rest of the call
    gw = media_peer_factory("answer", tone=440)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="t38", template="uac_t38_reinvite.xml",
                              values={"T38_MEDIA": t38_media}, call_duration_ms=3000)
    assert result.ok and result.final_codes == [200], result.describe()
    assert "SIP/2.0 488 Not Acceptable Here" in result.files.short.read_text(), "the T.38 offer is refused"
    ended = gw.wait_ended(1)
    directions = [e["dir"] for e in gw.events("media", call=1)]
    assert directions and set(directions) == {"sendrecv"}, f"the gateway's leg was put on hold: {directions}"
    # 3.5 s of a 20 ms stream from the B2BUA: 175 packets; on hold from 0.5 s it got 25
    assert ended["stats"]["rx_packets"] > 100, "the gateway kept hearing the call after the T.38 offer"
    assert "without audio (T.38 fax?): refused 488, the call keeps its audio" in b2b.process.log_text()


def test_a_redirect_is_a_failed_attempt_relayed_as_480(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # pjsip ends a leg whose redirect the application does not follow as "487 Request Terminated":
    # the caller got a 487 as if it had cancelled (a Kamailio in front stops its failover on 487);
    # a 302 passed on would carry the B2BUA's own Contact (a redirect-following caller calls us again)
    redirecting = scenario_gateway("uas_redirect.xml", {}, label="redirect")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, redirecting.uri)],
                      algorithm="priority", failover={})
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="expect:480")
    assert result.ok and result.final_codes == [480], result.describe()
    (answer,) = received_responses(result, 480)
    assert answer.header("Reason") == 'Q.850;cause=23;text="redirection to new destination"'
    assert redirecting.count("ACK") == 1
    assert "failed: 302 Moved Temporarily (redirected to" in b2b.process.log_text()


def test_a_redirect_fails_over_when_3xx_is_a_failover_code(
        scenario_gateway: ScenarioGatewayFactory, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
        caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    redirecting = scenario_gateway("uas_redirect.xml", {}, label="redirect")
    good = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), priority_entries(redirecting, good),
                      algorithm="priority", failover={"failover_codes": ["3xx", "5xx", "408"]})
    result = caller.run_calls(b2b.ip, b2b.port, n=1, call_duration_ms=200)
    assert result.ok and result.final_codes == [200], result.describe()
    assert (redirecting.count("INVITE"), redirecting.count("ACK")) == (1, 1)
    assert good.count("INVITE") == 1 and good.count("BYE") == 1



def test_early_media_renegotiated_by_an_update_is_connected_again(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # An UPDATE in the early dialog with another SDP (an IVR or a carrier moving its announcement
    # to another port and codec) makes pjsua restart the B leg's stream; the caller stayed
    # connected to the old one and heard nothing until the answer (the bridge's one look 0.5 s
    # after connecting was long over)
    gw = scenario_gateway("uas_early_update.xml", {"UPDATE_AFTER_MS": "1500"}, label="early-update")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority",
                      log_level="DEBUG")
    result = caller.run_calls(b2b.ip, b2b.port, n=1, call_duration_ms=300)
    assert result.ok and result.final_codes == [200], result.describe()
    assert [m.first_line for m in gw.traced() if m.direction == "received" and "UPDATE" in m.header("CSeq")] \
        == ["SIP/2.0 200 OK"]
    log = b2b.process.log_text()
    early = log[log.index("(early media)"):log.index("proceeding -> answered")]
    # connected at the 183, and again after the UPDATE: both before the answer
    assert len(re.findall(r"audio: leg 0 \(port \d+\) <-> leg 1 \(port \d+\): connected", early)) == 2, early


def test_a_late_offer_caller_gets_the_offer_in_the_200_and_answers_in_the_ack(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # Some PBXs send INVITE without SDP (delayed offer): the B2BUA's offer goes in its 200, the
    # caller's answer (PCMA here, the B2BUA offers PCMU first) in the ACK
    gw = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    running = caller.start_calls(b2b.ip, b2b.port, n=1, behaviour="late-offer", template="uac_late_offer.xml",
                                 call_duration_ms=2000)
    media: list[dict[str, object]] = []

    def caller_media() -> bool:
        calls = b2b.process.rpc("core.calls")
        media[:] = [c["caller"]["media"] for c in calls if c["caller"]["media"]]
        return bool(media)

    wait_until(caller_media, 5, what="the caller's media")
    assert media[0]["codec"] == "PCMA/8000" and media[0]["direction"] == "sendrecv", media
    result = running.wait()
    assert result.ok and result.final_codes == [200], result.describe()
    ok = next(m for m in received_responses(result, 200) if (m.header("CSeq") or "").endswith("INVITE"))
    assert ok.header("Content-Type") == "application/sdp" and "m=audio " in ok.text
    assert gw.count("BYE") == 1


def test_a_gateways_reason_on_its_bye_reaches_the_caller(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # RFC 3326: the PSTN's Q.850 cause on a carrier's BYE is what the caller's side reports and
    # bills on; the B2BUA's own BYE to the caller carried none
    cause = 'Q.850;cause=17;text="User busy"'
    gw = scenario_gateway("uas_hangup.xml", {"HANGUP_AFTER_MS": "300", "BYE_HEADERS": f"Reason: {cause}\n"},
                          label="hangup-with-reason")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority",
                      failover={})
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="hangup-by-callee")
    assert result.ok, result.describe()
    byes = [m for m in parse_message_log(result.files.messages.read_text())
            if m.direction == "received" and m.first_line.startswith("BYE ")]
    assert byes and byes[0].header("Reason") == cause, byes
    assert gw.count("BYE") == 0, "the gateway's own BYE ended its leg: the B2BUA sent it none"


def test_a_callers_reason_on_its_bye_reaches_the_gateway(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # the other way round: a PBX's cause on its BYE reaches the carrier (patch 0018 lets pjsua2
    # hand the caller's BYE to Python when it carries a Reason)
    cause = 'Q.850;cause=16;text="Normal call clearing"'
    gw = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    result = caller.run_calls(b2b.ip, b2b.port, n=2, behaviour="call", template="uac_call.xml",
                              values={"BYE_HEADERS": f"Reason: {cause}\n"})
    plain = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="call")
    assert result.ok and plain.ok, result.describe() + plain.describe()
    assert [m.header("Reason") for m in gw.requests("BYE")] == [cause, cause, None]


@pytest.mark.parametrize(("gateway", "template"), [("ring", "uac_cancel.xml"),
                                                   ("ring-late:400", "uac_cancel_trying.xml")],
                         ids=["ringing", "before-any-provisional"])
def test_a_callers_reason_on_its_cancel_reaches_the_gateway(
        gateway: str, template: str, gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
        caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    # a forking PBX or proxy in front cancels with "Call completed elsewhere" when another of
    # its forks answered: the phone behind the gateway must not show a missed call. Cancelled
    # before the gateway sent even its 100, the B leg's CANCEL waits for it (RFC 3261 9.1) and
    # still carries the Reason (patch 0023)
    cause = 'SIP;cause=200;text="Call completed elsewhere"'
    gw = gateway_factory(gateway)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    result = caller.run_calls(b2b.ip, b2b.port, n=2, behaviour="cancel", cancel_after_ms=200,
                              template=template, values={"CANCEL_HEADERS": f"Reason: {cause}\n"})
    plain = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="cancel", cancel_after_ms=200, template=template)
    assert result.final_codes == [487, 487] and plain.final_codes == [487], result.describe() + plain.describe()
    wait_until(lambda: gw.count("ACK") == 3, timeout=5, what="the ACKs of the gateway's 487s")
    assert [m.header("Reason") for m in gw.requests("CANCEL")] == [cause, cause, None]


def late_ack_call(scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
                  workdir: Path, addresses: AddressAllocator, gateway_scenario: str,
                  label: str) -> tuple[str, list[TracedMessage]]:
    """One call through a B2BUA to ``gateway_scenario`` from a caller that ACKs our 200 a second
    late and waits for the far end's BYE: the B2BUA's log and what the caller sent and received."""
    gw = scenario_gateway(gateway_scenario, {}, label=label)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], algorithm="priority")
    result = caller.run_calls(b2b.ip, b2b.port, n=1, behaviour="hangup-by-callee",
                              template="uac_late_ack_callee_bye.xml")
    assert result.ok and result.final_codes == [200], result.describe()
    return b2b.process.log_text(), parse_message_log(result.files.messages.read_text())


def test_a_gateway_hanging_up_before_the_callers_ack_sends_the_caller_one_bye(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # the gateway hangs up as soon as it has our ACK, the caller ACKs our 200 a second later:
    # pjsip holds our BYE until that ACK, and pjsua sent one of its own with it (patch 0017)
    log, messages = late_ack_call(scenario_gateway, b2bua_factory, caller, workdir, addresses,
                                  "uas_bye_after_ack.xml", "bye-after-ack")
    flow = [(m.direction, m.first_line.split()[0]) for m in messages if not m.first_line.startswith("SIP/")]
    # INVITE, its ACK a second later (our 200 retransmitted meanwhile), then one BYE
    assert flow == [("sent", "INVITE"), ("sent", "ACK"), ("received", "BYE")], flow
    assert " ERROR " not in log and "WARNING" not in log, log


def test_a_hold_before_the_callers_ack_is_relayed_after_it(
        scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    # the gateway holds as soon as it has our ACK, the caller ACKs our 200 a second later: no
    # re-INVITE may go to the caller before its ACK (pjsua refused it with an ERROR line that
    # named no call, and the bridge tried again a second later)
    log, messages = late_ack_call(scenario_gateway, b2bua_factory, caller, workdir, addresses,
                                  "uas_hold_after_ack.xml", "hold-after-ack")
    flow = [(m.direction, m.first_line.split()[0]) for m in messages if m.first_line.startswith(("ACK ", "INVITE "))]
    # our INVITE, its ACK a second later, then the relayed hold
    assert flow == [("sent", "INVITE"), ("sent", "ACK"), ("received", "INVITE"), ("received", "ACK")], flow
    hold = next(m for m in messages if m.direction == "received" and m.first_line.startswith("INVITE "))
    assert "a=sendonly" in hold.text, hold.text
    assert "the gateway holds (sendonly): offering sendonly to leg 0" in log, log
    assert " ERROR " not in log and "WARNING" not in log, log
