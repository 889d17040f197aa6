"""The keepalive driver: schedule, one outstanding probe, thresholds, deadlines, latency."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from loguru import logger

from b2bua.api import DEFAULT_OUTBOUND, Outbound, ProbeResult
from b2bua.loop import Scheduler
from plugins.dispatcher.model import DestFlags, Destination, build_snapshot, state_letters
from plugins.dispatcher.probing import Prober
from plugins.dispatcher.replycodes import parse_reply_codes
from plugins.dispatcher.runtime import DispatcherState

GW1 = "sip:127.0.0.10:5060"
GW2 = "sip:127.0.0.11:5060"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Network:
    """Stands in for app.send_request: answers by a per-URI rule, or never (silent)."""

    def __init__(self, sched: Scheduler) -> None:
        self.sched = sched
        self.answer: dict[str, int | None] = {}
        self.sent: list[tuple[float, str]] = []
        self.outbound: dict[str, Outbound] = {}
        self.unsendable: set[str] = set()  #: URIs no request can be sent to (answered at once, locally)

    def __call__(self, method: str, uri: str, *, from_uri: str, callback: Callable[[ProbeResult], None],
                 timeout: float, outbound: Outbound = DEFAULT_OUTBOUND) -> None:
        self.sent.append((self.sched.now(), uri))
        self.outbound[uri] = outbound
        code = self.answer.get(uri, 200)
        if uri in self.unsendable:  # as pjsip: the transport's error, inside the send
            callback(ProbeResult(503, "Invalid argument", None, local=True))
        elif code is None:  # silent: our own deadline answers
            self.sched.call_later(timeout, lambda: callback(ProbeResult(408, "Request Timeout", None, local=True)))
        else:
            self.sched.call_later(0.010, lambda: callback(ProbeResult(code, "OK" if code == 200 else "X", 0.010)))


def setup(flags: int = DestFlags.PROBING, **kw: object) -> tuple[Scheduler, Clock, Network, DispatcherState, Prober,
                                                                  list[tuple[str, str, str]]]:
    clock = Clock()
    sched = Scheduler(clock)
    net = Network(sched)
    changes: list[tuple[str, str, str]] = []
    state = DispatcherState(listener=lambda d, old, new, why: changes.append((d.uri, state_letters(new), why)))
    state.swap(build_snapshot([Destination(1, GW1, flags), Destination(1, GW2, flags)], "test"), keep_state=False)
    changes.clear()
    params = {"interval": 1.0, "timeout": 0.5, "probing_threshold": 2, "inactive_threshold": 2, "mode": 1}
    params.update(kw)
    prober = Prober(state, send=net, call_later=sched.call_later, **params)  # type: ignore[arg-type]
    return sched, clock, net, state, prober, changes


def advance(sched: Scheduler, clock: Clock, seconds: float, step: float = 0.005) -> None:
    end = clock.now + seconds
    while clock.now < end:
        clock.now = round(clock.now + step, 6)
        sched.run_pending()


def letters(state: DispatcherState, uri: str) -> str:
    return state_letters(state.flags((1, uri.lower())))  # type: ignore[arg-type]


def test_silent_gateway_goes_tp_then_ip_and_comes_back() -> None:
    sched, clock, net, state, prober, changes = setup()
    net.answer[GW1] = None
    prober.start()
    advance(sched, clock, 0.8)  # its first probe (sent 0.25 s into the round) timed out
    assert letters(state, GW1) == "TP"
    assert letters(state, GW2) == "AP"
    advance(sched, clock, 1.0)  # second failure: threshold 2 reached
    assert letters(state, GW1) == "IP"
    assert changes == [(GW1, "IP", "408 probe timeout")]
    net.answer[GW1] = 200
    advance(sched, clock, 1.0)
    assert letters(state, GW1) == "IP"  # one success of the two needed
    advance(sched, clock, 1.0)
    assert letters(state, GW1) == "AP"
    assert changes[-1] == (GW1, "AP", "200 OK")


def test_one_outstanding_probe_per_destination_and_spread() -> None:
    sched, clock, net, _state, prober, _ = setup(interval=0.2, timeout=5.0)
    net.answer[GW1] = None
    prober.start()
    advance(sched, clock, 1.0)
    to_gw1 = [t for t, uri in net.sent if uri == GW1]
    # the deadline is capped at the interval, so a silent gateway gets one probe per round
    assert len(to_gw1) <= 6
    times = sorted({t for t, _ in net.sent[:2]})
    assert len(times) == 2  # the two destinations of a round are not sent at the same instant


@pytest.mark.parametrize(
    ("mode", "flags", "probed"),
    [(1, 0, True), (0, 0, False), (0, DestFlags.PROBING, True), (2, DestFlags.PROBING, False),
     (2, DestFlags.PROBING | DestFlags.INACTIVE, True), (3, 0, False), (1, DestFlags.DISABLED, False)],
)
def test_probing_modes_choose_who_is_probed(mode: int, flags: int, probed: bool) -> None:
    sched, clock, net, _, prober, _ = setup(flags=flags, mode=mode)
    prober.start()
    advance(sched, clock, 0.9)
    assert bool(net.sent) is probed


def test_reply_codes_count_403_as_up_only_when_listed() -> None:
    sched, clock, net, state, prober, _ = setup()
    net.answer[GW1] = 403
    prober.start()
    advance(sched, clock, 2.5)
    assert letters(state, GW1) == "IP"
    sched2, clock2, net2, state2, prober2, _ = setup(reply_codes=parse_reply_codes("code=403"))
    net2.answer[GW1] = 403
    prober2.start()
    advance(sched2, clock2, 2.5)
    assert letters(state2, GW1) == "AP"


def test_ping_active_off_sends_nothing() -> None:
    sched, clock, net, _, prober, _ = setup(active=False)
    prober.start()
    advance(sched, clock, 3)
    assert net.sent == []
    prober.active = True
    advance(sched, clock, 1.1)
    assert net.sent


def test_latency_statistics() -> None:
    sched, clock, net, state, prober, _ = setup(latency_stats=True)
    net.answer[GW2] = None
    prober.start()
    advance(sched, clock, 3.1)
    lat = state.runtime((1, GW1.lower())).latency  # type: ignore[union-attr]
    assert lat.count >= 3 and lat.avg == pytest.approx(10.0) and lat.max == pytest.approx(10.0)
    lat2 = state.runtime((1, GW2.lower())).latency  # type: ignore[union-attr]
    assert lat2.timeout >= 3 and lat2.count == 0


def test_result_for_a_removed_destination_is_ignored() -> None:
    sched, clock, _net, state, prober, _ = setup()
    prober.start()
    state.swap(build_snapshot([Destination(1, GW2, DestFlags.PROBING)], "test"), keep_state=True)
    advance(sched, clock, 0.1)
    assert state.destination((1, GW1.lower())) is None
    assert not prober.outstanding or (1, GW1.lower()) not in prober.outstanding


def test_stop_cancels_rounds() -> None:
    sched, clock, net, _, prober, _ = setup()
    prober.start()
    prober.stop()
    count = len(net.sent)
    advance(sched, clock, 3)
    assert len(net.sent) == count


def test_keepalives_that_cannot_be_sent_are_said_once_until_one_is_sent() -> None:
    """Not once per keepalive: a listener that cannot reach a gateway fails every one, forever."""
    said: list[str] = []
    sink = logger.add(lambda m: said.append(f"{m.record['level'].name} {m.record['message']}"),
                      filter=lambda r: "keepalives" in r["message"])
    try:
        sched, clock, net, state, prober, _ = setup()
        net.unsendable.add(GW1)
        prober.start()
        advance(sched, clock, 5.0)
        assert len([uri for _, uri in net.sent if uri == GW1]) >= 5 and letters(state, GW1) == "IP"
        assert said == [f"WARNING dispatcher: set 1 {GW1}: keepalives cannot be sent (503 Invalid argument): check"
                        " that a listener reaches it ([sip] listen, the socket attribute); said again when one is sent"]
        net.unsendable.clear()
        net.answer[GW1] = None  # sent, and no answer: sent all the same
        advance(sched, clock, 3.0)
        assert said[1:] == [f"INFO dispatcher: set 1 {GW1}: keepalives are sent again"]
        net.unsendable.add(GW1)
        advance(sched, clock, 3.0)
        assert len(said) == 3 and said[2].startswith(f"WARNING dispatcher: set 1 {GW1}: keepalives cannot be sent")
        # a reload that removes the destination forgets it
        state.swap(build_snapshot([Destination(1, GW2, DestFlags.PROBING)], "test"), keep_state=True)
        advance(sched, clock, 1.1)
        assert prober.unsendable == set()
    finally:
        logger.remove(sink)
