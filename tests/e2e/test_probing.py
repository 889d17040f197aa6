"""OPTIONS probing over real SIP: the B2BUA with the dispatcher probes sipp gateways.

What a gateway received comes from its sipp logs; the dispatcher's view from ``dispatcher.list``
over the control socket; state-change events from ``events_plugin.Recorder`` (a JSON-lines file
with the B2BUA's wall-clock times, compared with the test's ``time.time()``).

Timing: ``ping_interval`` 0.5 s, ``ping_timeout`` 0.3 s. A gateway stopped with SIGSTOP fails the
next probe sent to it; the thresholds count those, so the windows below follow from them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pytest

from b2bua.control import ControlClient
from plugins.dispatcher.model import DestFlags

from .configs import ListEntry, b2bua_config, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .events_plugin import Event, read_events
from .harness import (
    REASON_PHRASES,
    AddressAllocator,
    B2buaProcess,
    Caller,
    Gateway,
    HarnessError,
    free_port,
    wait_until,
)

EVENTS_PLUGIN = "tests.e2e.events_plugin:Recorder"
EVENTS_FILE = "events.jsonl"
INTERVAL = 0.5
TIMEOUT = 0.3
#: scheduling noise on a loaded 2-core CI box, added to every upper bound
SLACK = 0.7

AP = DestFlags.PROBING
IP = DestFlags.INACTIVE | DestFlags.PROBING
TP = DestFlags.TRYING | DestFlags.PROBING


# --------------------------------------------------------------------------------------------------
# Building blocks


@dataclass(frozen=True)
class Probing:
    """The ``[plugins.dispatcher]`` probing settings of one test."""

    interval: float = INTERVAL
    timeout: float = TIMEOUT
    probing_threshold: int = 2
    inactive_threshold: int = 2
    mode: int = 1
    reply_codes: str = ""
    latency_stats: bool = True
    active: bool = True


def dispatcher_config(ip: str, port: int, probing: Probing, *, attempt_timeout: float = 2.0) -> str:
    """A config: UDP on ``ip:port``, dispatcher over ``dispatcher.list``, the events recorder."""
    return f"""\
[sip]
listen = ["udp:{ip}:{port}"]
max_calls = 20
attempt_timeout = {attempt_timeout}
require_call_slots = false

[log]
level = "DEBUG"

[control]
socket = "b2bua.sock"

[plugins]
enabled = ["dispatcher", "{EVENTS_PLUGIN}"]

[plugins.events]
file = "{EVENTS_FILE}"

[plugins.dispatcher]
list_file = "dispatcher.list"
ping_interval = {probing.interval}
ping_timeout = {probing.timeout}
probing_threshold = {probing.probing_threshold}
inactive_threshold = {probing.inactive_threshold}
probing_mode = {probing.mode}
ping_reply_codes = "{probing.reply_codes}"
ping_latency_stats = {str(probing.latency_stats).lower()}
ping_active = {str(probing.active).lower()}
"""


def list_file(entries: Sequence[tuple[str, int]]) -> str:
    """``dispatcher.list`` text: set 1, one ``(uri, flags)`` per line."""
    return "".join(f"1 {uri} {flags}\n" for uri, flags in entries)


@dataclass(frozen=True)
class Dispatcher:
    """A running B2BUA with the dispatcher, and the ways to look inside it."""

    b2b: B2buaProcess
    ip: str
    port: int
    control: ControlClient

    def listing(self) -> dict[str, dict[str, Any]]:
        """``dispatcher.list``: URI -> its DEST record (FLAGS, LATENCY, ...)."""
        result = self.control.call("dispatcher.list", timeout=5.0)
        return {t["DEST"]["URI"]: t["DEST"] for r in result["RECORDS"] for t in r["SET"]["TARGETS"]}

    def states(self) -> dict[str, str]:
        """URI -> two-letter state (``AP``, ``IP``, ...)."""
        return {uri: dest["FLAGS"] for uri, dest in self.listing().items()}

    def events(self, uri: str | None = None) -> list[Event]:
        """State-change events recorded so far (of one URI)."""
        events = read_events(self.b2b.workdir / EVENTS_FILE)
        return [e for e in events if uri is None or e.uri == uri]

    def wait_states(self, expected: Mapping[str, str], timeout: float) -> None:
        """Until every URI in ``expected`` shows its state; HarnessError with the listing if not."""
        try:
            wait_until(lambda: all(self.states().get(u) == s for u, s in expected.items()), timeout,
                       interval=0.02, what=f"states {dict(expected)}")
        except HarnessError as exc:
            raise HarnessError(f"{exc}; now {self.states()}\n{self.b2b.log_tail()}") from None

    def watch(self, uri: str, until: str, timeout: float) -> list[str]:
        """The successive states of ``uri`` (polled every 20 ms) until it shows ``until``."""
        seen: list[str] = []

        def reached() -> bool:
            state = self.states()[uri]
            if not seen or seen[-1] != state:
                seen.append(state)
            return state == until

        try:
            wait_until(reached, timeout, interval=0.02, what=f"{uri} in {until}")
        except HarnessError as exc:
            raise HarnessError(f"{exc}; seen {seen}\n{self.b2b.log_tail()}") from None
        return seen


class StartDispatcher(Protocol):
    """``start_dispatcher([(uri, flags), ...], Probing(...))`` -> a running :class:`Dispatcher`."""

    def __call__(self, entries: Sequence[tuple[str, int]], probing: Probing) -> Dispatcher: ...


class OptionsGateways(Protocol):
    """``options_gateways(403)`` -> a gateway answering every OPTIONS with 403."""

    def __call__(self, code: int) -> Gateway: ...


@pytest.fixture
def start_dispatcher(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                     workdir: Path) -> StartDispatcher:
    """Starts the B2BUA over a fresh ``dispatcher.list``; the b2bua_factory stops it."""

    def start(entries: Sequence[tuple[str, int]], probing: Probing) -> Dispatcher:
        ip = addresses.next()
        port = free_port(ip, "udp")
        (workdir / "dispatcher.list").write_text(list_file(entries))
        b2b = b2bua_factory(dispatcher_config(ip, port, probing))
        return Dispatcher(b2b, ip, port, ControlClient.unix(workdir / "b2bua.sock"))

    return start


#: a gateway that answers every OPTIONS with a fixed final response (and takes no calls)
OPTIONS_REPLY_SCENARIO = """\
<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="gateway answering OPTIONS {{CODE}}">
  <recv request="OPTIONS"/>
  <send><![CDATA[
SIP/2.0 {{CODE}} {{REASON}}
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag02[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
</scenario>
"""


def options_gateway(code: int, ip: str, workdir: Path, started: list[Gateway]) -> Gateway:
    """Start a sipp UAS answering OPTIONS with ``code`` (appended to ``started`` for clean-up)."""
    template = workdir / f"uas_options_{code}.xml.in"
    template.write_text(OPTIONS_REPLY_SCENARIO)
    gw = Gateway.start_scenario(str(template), {"CODE": str(code), "REASON": REASON_PHRASES.get(code, "Rejected")},
                                ip, workdir, behaviour=f"options:{code}")
    started.append(gw)
    return gw


@pytest.fixture
def options_gateways(workdir: Path, addresses: AddressAllocator) -> Iterator[OptionsGateways]:
    """``options_gateways(403)`` starts a gateway answering OPTIONS 403; all are stopped at the end."""
    started: list[Gateway] = []
    yield lambda code: options_gateway(code, addresses.next(), workdir, started)
    for gw in started:
        gw.stop(grace=0.2)


def first_event(events: Sequence[Event], *, since: float, new: int) -> Event:
    """The first event after ``since`` that set the state ``new``."""
    found = [e for e in events if e.time >= since and e.new == new]
    assert found, f"no event to {new} after {since}: {events}"
    return found[0]


# --------------------------------------------------------------------------------------------------
# Tests


def test_dead_gateway_goes_down_and_comes_back(start_dispatcher: StartDispatcher, gateway_factory: GatewayFactory,
                                               caller: Caller) -> None:
    """A silent gateway: AP -> TP -> IP in time, no calls meanwhile, AP again once it answers."""
    probing = Probing(probing_threshold=2, inactive_threshold=2)
    gw_a, gw_b = gateway_factory("answer"), gateway_factory("answer")
    run = start_dispatcher([(gw_a.uri, 0), (gw_b.uri, 0)], probing)
    run.wait_states({gw_a.uri: "AP", gw_b.uri: "AP"}, timeout=3 * INTERVAL + SLACK)

    before = caller.run_calls(run.ip, run.port, n=4, rate=20, call_duration_ms=50)
    assert before.final_codes == [200] * 4, before.describe()
    assert (gw_a.count("INVITE"), gw_b.count("INVITE")) == (2, 2)  # round robin over both

    # Silent: AP -> TP on the first lost probe, IP after probing_threshold of them.
    paused_at = time.time()
    gw_a.pause()
    down_bound = probing.probing_threshold * INTERVAL + TIMEOUT
    seen = run.watch(gw_a.uri, "IP", timeout=down_bound + SLACK)
    assert seen == ["AP", "TP", "IP"]
    down = first_event(run.events(gw_a.uri), since=paused_at, new=IP)
    assert (down.old, down.reason) == (TP, "408 probe timeout")
    # the earliest lost probe left just before the pause: one timeout plus (threshold - 1) intervals
    earliest = TIMEOUT + (probing.probing_threshold - 1) * INTERVAL
    assert earliest - 0.1 <= down.time - paused_at <= down_bound + SLACK
    listing = run.listing()
    assert listing[gw_a.uri]["LATENCY"]["TIMEOUT"] >= probing.probing_threshold
    assert listing[gw_b.uri]["LATENCY"]["TIMEOUT"] == 0
    assert listing[gw_b.uri]["LATENCY"]["AVG"] > 0
    assert listing[gw_b.uri]["LATENCY"]["MAX"] >= listing[gw_b.uri]["LATENCY"]["AVG"]

    # While A is down every call goes straight to B: no attempt_timeout (2 s) spent on A.
    during = caller.run_calls(run.ip, run.port, n=6, rate=10, call_duration_ms=50)
    assert during.final_codes == [200] * 6, during.describe()
    assert gw_b.count("INVITE") == 2 + 6
    assert max(during.setup_times) < 0.5, during.setup_times

    # Back: A after inactive_threshold good replies (a reply queued during the pause may be one).
    resumed_at = time.time()
    gw_a.resume()
    run.wait_states({gw_a.uri: "AP"}, timeout=probing.inactive_threshold * INTERVAL + TIMEOUT + SLACK)
    up = first_event(run.events(gw_a.uri), since=resumed_at, new=AP)
    assert (up.old, up.reason) == (IP, "200 OK")
    # a probe sent just before the resume whose answer was queued counts, and the next one leaves
    # one interval after it was sent: the second success can come interval - timeout after resume
    assert (probing.inactive_threshold - 1) * INTERVAL - TIMEOUT - 0.1 <= up.time - resumed_at
    # nothing queued up for A while it was paused: no INVITE went to it while it was down
    assert gw_a.count("INVITE") == 2

    after = caller.run_calls(run.ip, run.port, n=4, rate=20, call_duration_ms=50)
    assert after.final_codes == [200] * 4, after.describe()
    assert (gw_a.count("INVITE"), gw_b.count("INVITE")) == (4, 10)
    # exactly one down and one up event for A, none for B after start-up
    assert [(e.old_state, e.new_state) for e in run.events(gw_a.uri)] == [(None, "AX"), ("TP", "IP"), ("IP", "AP")]
    assert [(e.old_state, e.new_state, e.reason) for e in run.events(gw_b.uri)] == [(None, "AX", "startup")]


def test_stopping_with_keepalives_in_flight_is_quiet(start_dispatcher: StartDispatcher,
                                                      gateway_factory: GatewayFactory) -> None:
    # OPTIONS to a silent gateway stay open in pjsip (Timer F) long after our own timeout; they end
    # inside libDestroy, after the account, and pjsua2 used to log an ERROR for each
    gw = gateway_factory("silent")
    gw.pause()
    run = start_dispatcher([(gw.uri, 0)], Probing(probing_threshold=1))
    run.wait_states({gw.uri: "IP"}, timeout=INTERVAL + TIMEOUT + SLACK)
    assert run.b2b.stop() == 0
    log = run.b2b.log_text()
    assert [line for line in log.splitlines() if " ERROR " in line] == []


# Per mode: how many OPTIONS an entry loaded with flags 0 (AX), 8 (AP) and 9 (IP) gets in
# WATCH seconds, "many" meaning every round; and what the IP entry becomes after one good reply.
WATCH = 2.0
MANY = -1
MODES = [
    # mode, OPTIONS to (AX, AP, IP), state of the IP entry once it answered
    pytest.param(0, (0, 1, 1), "AX", id="mode0-P-entries-once"),
    pytest.param(1, (MANY, MANY, MANY), "AP", id="mode1-all-always"),
    pytest.param(2, (0, 0, 1), "AX", id="mode2-inactive-P-entries-until-up"),
    pytest.param(3, (0, MANY, MANY), "AP", id="mode3-P-entries-always"),
]


@pytest.mark.parametrize(("mode", "expected", "recovered"), MODES)
def test_probing_mode_decides_who_gets_options(start_dispatcher: StartDispatcher, gateway_factory: GatewayFactory,
                                               mode: int, expected: tuple[int, int, int], recovered: str) -> None:
    """Kamailio's probing modes 0-3 over entries loaded AX, AP and IP; the hook at start and recovery."""
    gateways = [gateway_factory("answer") for _ in range(3)]
    loaded = (0, int(AP), int(IP))
    started = time.monotonic()
    run = start_dispatcher(list(zip((g.uri for g in gateways), loaded, strict=True)),
                           Probing(mode=mode, probing_threshold=1, inactive_threshold=1))
    time.sleep(WATCH)

    counts = [g.count("OPTIONS") for g in gateways]
    rounds = int((time.monotonic() - started) / INTERVAL) + 1  # the first one at start-up
    for uri, want, got in zip((g.uri for g in gateways), expected, counts, strict=True):
        if want == MANY:
            assert 3 <= got <= rounds, f"mode {mode}: {uri} got {got} OPTIONS, expected one per round"
        else:
            assert got == want, f"mode {mode}: {uri} got {got} OPTIONS, expected {want} (all: {counts})"

    # the hook: once per destination at start with its loaded state, then the IP entry's recovery
    events = run.events()
    startup = [(e.uri, e.old, e.new) for e in events if e.reason == "startup"]
    assert sorted(startup) == sorted((g.uri, None, flags) for g, flags in zip(gateways, loaded, strict=True))
    later = [(e.uri, e.old_state, e.new_state, e.reason) for e in events if e.reason != "startup"]
    assert later == [(gateways[2].uri, "IP", recovered, "200 OK")]
    assert run.states()[gateways[2].uri] == recovered


@pytest.mark.parametrize(("reply_codes", "up"), [
    pytest.param("", {200}, id="only-2xx"),
    pytest.param("code=403", {200, 403}, id="code-403"),
    pytest.param("class=4", {200, 403, 404}, id="class-4"),
])
def test_ping_reply_codes_decide_what_counts_as_alive(start_dispatcher: StartDispatcher,
                                                      options_gateways: OptionsGateways, reply_codes: str,
                                                      up: set[int]) -> None:
    """A gateway answering OPTIONS 403 or 404 is up only when ping_reply_codes lists the code or class."""
    codes = (200, 403, 404)
    gateways = {code: options_gateways(code) for code in codes}
    run = start_dispatcher([(gw.uri, 0) for gw in gateways.values()],
                           Probing(reply_codes=reply_codes, probing_threshold=1, latency_stats=False))
    expected = {gw.uri: "AP" if code in up else "IP" for code, gw in gateways.items()}
    run.wait_states(expected, timeout=2 * INTERVAL + TIMEOUT + SLACK)
    time.sleep(2 * INTERVAL)  # a few more rounds: nothing flaps
    assert run.states() == expected

    for code, gw in gateways.items():
        assert gw.count("OPTIONS") >= 3, f"{code} gateway: mode 1 probes it every round"
        downs = [(e.new_state, e.reason) for e in run.events(gw.uri) if e.reason != "startup"]
        assert downs == ([] if code in up else [("IP", f"{code} {REASON_PHRASES[code]}")])
    assert all("LATENCY" not in dest for dest in run.listing().values())  # ping_latency_stats = false


def test_ping_active_false_sends_no_options_until_switched_on(start_dispatcher: StartDispatcher,
                                                              gateway_factory: GatewayFactory) -> None:
    """ping_active = false: no keepalive at all; dispatcher.ping_active 1 starts them."""
    gw = gateway_factory("answer")
    run = start_dispatcher([(gw.uri, 0)], Probing(active=False))
    time.sleep(3 * INTERVAL)
    assert gw.count("OPTIONS") == 0
    assert run.states() == {gw.uri: "AX"}
    assert run.control.call("dispatcher.ping_active") == {"OldPingState": 0}

    assert run.control.call("dispatcher.ping_active", [1]) == {"NewPingState": 1, "OldPingState": 0}
    run.wait_states({gw.uri: "AP"}, timeout=INTERVAL + SLACK)
    wait_until(lambda: gw.count("OPTIONS") >= 2, 2 * INTERVAL + SLACK, what="OPTIONS once switched on")


def test_an_ack_as_keepalive_method_stops_the_start_naming_the_key(
        workdir: Path, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        b2bua_factory: B2buaFactory) -> None:
    # pjsip's transaction layer asserts on an ACK of its own: the first keepalive aborted the process
    gw = gateway_factory("answer")
    write_list_file(workdir, [ListEntry(1, gw.uri)])
    ip = addresses.next()
    config = b2bua_config(ip, free_port(ip, "udp"), dispatcher={"ping_interval": 0.3, "ping_method": "ACK"})
    with pytest.raises(HarnessError, match="exited with 2") as info:
        b2bua_factory(config)
    assert ("[plugins.dispatcher] ping_method: 'ACK': an ACK is sent only for an INVITE's answer"
            in str(info.value)), info.value
    assert gw.count("ACK") == 0


def test_keepalives_that_cannot_be_sent_are_said_once_not_per_probe(b2bua_factory: B2buaFactory,
                                                                    gateway_factory: GatewayFactory,
                                                                    addresses: AddressAllocator,
                                                                    workdir: Path) -> None:
    """docs/kamailio.md: a listener on loopback cannot reach a gateway on another network; every
    keepalive fails at once (sendto: EINVAL, nothing leaves the host). pjsip and pjsua2 logged two
    ERROR lines per keepalive, every ping_interval, forever; now one WARNING per destination."""
    unreachable = "sip:192.0.2.10:5060"  # TEST-NET-1, from a socket bound to 127.0.N.x
    gw = gateway_factory("answer")  # beside it, a gateway that answers: nothing said about it
    ip = addresses.next()
    write_list_file(workdir, [ListEntry(1, unreachable), ListEntry(1, gw.uri)])
    b2b = b2bua_factory(b2bua_config(ip, free_port(ip, "udp"), dispatcher={
        "ping_interval": INTERVAL, "ping_timeout": TIMEOUT, "probing_threshold": 1, "probing_mode": 1}))

    def keepalives(uri: str) -> dict[str, Any]:
        stats = b2b.rpc("dispatcher.stats")
        return next(d["keepalives"] for s in stats["sets"] for d in s["destinations"] if d["uri"] == uri)

    wait_until(lambda: keepalives(unreachable)["sent"] >= 6, timeout=6 * INTERVAL + 10 * SLACK,
               what="six keepalives to the unreachable destination")
    assert keepalives(unreachable)["failed"] >= 6 and keepalives(gw.uri)["failed"] == 0
    log = b2b.log_text()
    said = [line for line in log.splitlines() if "keepalives cannot be sent" in line]
    assert len(said) == 1, said
    assert f"WARNING - dispatcher: set 1 {unreachable}: keepalives cannot be sent (503 Invalid argument)" in said[0]
    assert gw.uri not in said[0]
    assert [line for line in log.splitlines() if " ERROR " in line or "Unable to send request" in line] == []
