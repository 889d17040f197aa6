"""The front door: every request from the wire is screened here before it can become a call.

:class:`Gate` gathers the facts about one request (parsed by :mod:`b2bua.wire`, its source
checked against the trust list and :class:`~b2bua.ratelimit.SourceLimiter`, the load the app
reports) and asks :func:`b2bua.admission.decide`. :class:`RefusalLog` logs each refusal at
DEBUG and sums them up in one WARNING per interval, so a flood cannot multiply log lines; the
gate also counts every refusal by reason for the statistics (``core.stats``, ``/metrics``).
Runs on the loop thread (inside pjsip's receive callback); no I/O.

A request that claims a dialog (its To has a tag) is exempt from its source's block and rate
only when pjsip holds that dialog (:class:`Dialogs`, asked through the early filter); one
that names no dialog of ours (a scanner's or a flooder's BYE with a made-up tag, a late
request for a call long gone) is :attr:`Standing.STRAY` and counts like any request outside
a dialog. A CANCEL of an INVITE still pending is exempt the same way.

With ``[security] early_filter = false`` only new INVITEs wait for ``App._on_incoming``;
every other request is still screened in the filter, as pjsua has no later place to refuse a
MESSAGE or a SUBSCRIBE (it would answer them 200 itself).
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

from loguru import logger

from b2bua.admission import (
    Decision,
    Facts,
    Load,
    Policy,
    TrustList,
    Verdict,
    Why,
    decide,
    is_scanner,
)
from b2bua.config import SecurityConfig, SipConfig
from b2bua.logs import writes
from b2bua.ratelimit import SourceLimiter
from b2bua.rpc import RpcError, RpcRegistry
from b2bua.sip import printable
from b2bua.wire import (
    Malformed,
    WireRequest,
    check_in_dialog,
    parse_request,
    peek,
    peek_agent,
    peek_dialog,
    raw_call_id,
    split_source,
)

#: sources named in one summary line
TOP_SOURCES = 3
#: distinct sources counted per interval (a spoofed flood has millions)
MAX_COUNTED_SOURCES = 1024
#: refusals the interval summary leaves out: the overload warning sums up calls shed, and a
#: drain or a shutdown refuses new work on purpose (the operator was told when it began)
_NOT_SUMMED = (Why.OVERLOAD, Why.DRAINING)
#: a new INVITE let past the early filter unread (``early_filter = false``): App._on_incoming
#: screens it once pjsua has set the call up
_DEFERRED = Decision(Verdict.ACCEPT)


class Dialogs(Protocol):
    """pjsip's own tables, asked about the request being screened (``b2bua.rxfilter.RxFilter``)."""

    def has_dialog(self, call_id: bytes, local_tag: bytes, remote_tag: bytes) -> bool:
        """Whether a dialog of ours has this Call-ID, our tag (the request's To tag) and the
        peer's (its From tag)."""
        ...

    def has_invite(self) -> bool:
        """Whether the CANCEL being screened cancels an INVITE still pending."""
        ...


class NoDialogs:
    """Nothing to ask (the request is screened outside pjsip): no request belongs to a dialog."""

    def has_dialog(self, call_id: bytes, local_tag: bytes, remote_tag: bytes) -> bool:
        return False

    def has_invite(self) -> bool:
        return False


NO_DIALOGS = NoDialogs()


class Standing(enum.Enum):
    """Where a request stands towards the dialogs of ours (:func:`standing`)."""

    NEW = "new"  #: outside any dialog (no To tag): all the rules apply
    LIVE = "live"  #: inside a dialog pjsip holds, or a CANCEL of an INVITE still pending: exempt
    STRAY = "stray"  #: a To tag naming no dialog of ours: its source's block and rate apply; pjsip answers 481


def standing(method: str, to_tag: str, raw: bytes, dialogs: Dialogs) -> Standing:
    """Ask pjsip (``dialogs``) only what the request claims: a dialog when its To has a tag, an
    INVITE transaction when it is a CANCEL; nothing for the rest (no look-up, no cost)."""
    if to_tag:
        call_id, from_tag = peek_dialog(raw)
        known = dialogs.has_dialog(call_id, to_tag.encode("utf-8", "surrogateescape"), from_tag)
        return Standing.LIVE if known else Standing.STRAY
    if method == "CANCEL" and dialogs.has_invite():
        return Standing.LIVE
    return Standing.NEW


class RefusalLog:
    """Counts refusals and drops by reason; :meth:`summary` sums up an interval in one line.

    ``debug``: whether to write a DEBUG line per refusal; None (the default) follows the sinks'
    level as it is now (:data:`b2bua.logs.writes`: the config's, ``-v``, ``core.log_level``).
    When no DEBUG line is written, a refusal costs a few counters only.
    """

    def __init__(self, debug: bool | None = None) -> None:
        self._debug = debug
        self._reset()

    @property
    def debug(self) -> bool:
        """Whether a refusal gets its DEBUG line now."""
        return writes.debug if self._debug is None else self._debug

    def _reset(self) -> None:
        self.counts: Counter[tuple[Why, int]] = Counter()
        self.malformed: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.blocked: list[str] = []
        self.unparsable: Counter[str] = Counter()
        self.closed = 0  #: TCP connections of blocked sources closed
        self.total = 0

    def note(self, decision: Decision, ip: str, method: str, detail: str, call_id: str | bytes) -> None:
        """One refused or dropped request: a count for the summary, and a DEBUG line when the log
        writes DEBUG (``call_id`` may be the raw message, to read it from only then)."""
        if decision.why not in _NOT_SUMMED:
            self.total += 1
            self.counts[(decision.why, decision.code)] += 1
            if ip in self.sources or len(self.sources) < MAX_COUNTED_SOURCES:
                self.sources[ip] += 1
        if not self.debug:
            return
        if isinstance(call_id, bytes):
            call_id = raw_call_id(call_id)
        answer = f"{decision.code} {decision.reason}" if decision.verdict is Verdict.REFUSE else "dropped"
        logger.bind(call_id=printable(call_id, 100) or "-").debug(
            "refused: {} ({}{}) {} from {}", answer, decision.why.value, f": {detail}" if detail else "",
            printable(method, 20) or "request", ip)

    def note_malformed(self, reason: str) -> None:
        self.malformed[reason] += 1

    def note_blocked(self, ip: str, seconds: float, why: Why) -> None:
        if len(self.blocked) < MAX_COUNTED_SOURCES:
            self.blocked.append(ip)
        logger.debug("blocked {} for {:g} s ({})", ip, seconds, why.value)

    def note_closed(self) -> None:
        """The connection (TCP) of a request refused or dropped here was closed
        (:func:`b2bua.admission.closes_connection`)."""
        self.closed += 1

    def note_unparsable(self, reason: str) -> None:
        """A packet pjsip dropped (its parser) or pjsua refused by itself (bad SDP); no source known."""
        self.total += 1
        self.unparsable[reason] += 1

    def summary(self, seconds: float) -> str:
        """The interval's counts as one line ("" when nothing was refused), and a fresh start."""
        if not self.total:
            return ""
        parts = []
        for (why, code), n in sorted(self.counts.items(), key=lambda item: -item[1]):
            label = f"{why.value} {code}" if code else f"{why.value} (dropped)"
            if why is Why.MALFORMED and self.malformed:
                label += " [" + ", ".join(f"{r} {c}" for r, c in self.malformed.most_common()) + "]"
            parts.append(f"{label}: {n}")
        if self.unparsable:
            parts.append("refused by pjsip/pjsua [" +
                         ", ".join(f"{r} {c}" for r, c in self.unparsable.most_common()) + f"]: "
                         f"{sum(self.unparsable.values())}")
        line = ""
        if parts:
            line = f"refused in the last {seconds:.0f} s: " + "; ".join(parts)
            if self.sources:
                line += "; from " + ", ".join(f"{ip} ({n})" for ip, n in self.sources.most_common(TOP_SOURCES))
                if len(self.sources) > TOP_SOURCES:
                    line += f" and {len(self.sources) - TOP_SOURCES} more"
            if self.blocked:
                shown = ", ".join(self.blocked[:TOP_SOURCES])
                more = f" and {len(self.blocked) - TOP_SOURCES} more" if len(self.blocked) > TOP_SOURCES else ""
                line += f"; newly blocked: {shown}{more}"
            if self.closed:
                line += f"; {self.closed} TCP connection(s) of blocked sources closed"
        self._reset()
        return line


class Gate:
    """Screens requests: parse, trust, rate, scanner, load → :class:`Decision` (see admission.py)."""

    def __init__(self, security: SecurityConfig, sip: SipConfig, *, debug: bool | None = None) -> None:
        self.config = security
        self.policy = Policy(untrusted_code=security.untrusted_code, capacity_code=sip.admission_code,
                             retry_after=sip.retry_after, drop_scanners=bool(security.scanners))
        self.trusted = TrustList(security.trusted)
        self.scanners = tuple(s.strip().lower() for s in security.scanners)
        self.limiter = SourceLimiter()
        self.log = RefusalLog(debug)
        self.credit = 0.0  #: the share credit carried from one new call to the next
        #: since the last take_work(): new calls wanted (admitted or shed), requests refused otherwise
        self.new_calls = 0
        self.refused = 0
        #: new INVITEs refused 503 Overloaded since the last take_shed() (the overload warning)
        self.shed = 0
        #: statistics, never reset but by reset_counts(): new INVITEs and other requests
        #: refused or dropped, by reason
        self.refused_calls: Counter[Why] = Counter()
        self.refused_requests: Counter[Why] = Counter()

    def take_work(self) -> tuple[int, int]:
        """``(new_calls, refused)`` since the last call (see :func:`b2bua.admission.shedding_helps`)."""
        work = (self.new_calls, self.refused)
        self.new_calls = self.refused = 0
        return work

    def take_shed(self) -> int:
        """New calls answered 503 Overloaded since the last call."""
        shed, self.shed = self.shed, 0
        return shed

    def reset_counts(self) -> None:
        """Zero the refusal statistics (``stats.reset_statistics``)."""
        self.refused_calls.clear()
        self.refused_requests.clear()

    def screen(self, raw: bytes, source: str, load: Load, now: float, *, new_call: bool = False,
               dialogs: Dialogs = NO_DIALOGS) -> tuple[Decision, WireRequest | None]:
        """Decide about one request from ``source`` (``ip:port``); the parsed request when let in.

        ``new_call``: pjsua made a call of it already, so it belongs to no dialog whatever its To
        says (``App._on_incoming`` without the early filter; and the safety net should this
        module's reading of a To tag ever differ from pjsip's). ``dialogs``: pjsip's tables, to
        tell a request inside a dialog of ours (or a CANCEL of our pending INVITE) from one
        that only claims it (:func:`standing`).

        What is read depends on what can matter, cheapest first: a blocked source's request is
        not read at all (peek only: a request inside a live dialog still passes); one inside a
        dialog, live or claimed, gets the light text check; an untrusted source's new request
        only its scanner marks (it is refused whatever else it holds); a trusted source's new
        request is parsed whole, unless the load turns new calls away (overload, drain,
        shutdown): then a trusted INVITE is decided on what peek read, and parsed only when
        admitted. Refusals are noted in :attr:`log`; a decision to block is applied here.
        """
        ip, _ = split_source(source)
        method, to_tag = peek(raw)
        stands = Standing.NEW if new_call else standing(method, to_tag, raw, dialogs)
        live = stands is Standing.LIVE
        call = method == "INVITE" and stands is Standing.NEW
        cfg = self.config
        if call and not new_call and not cfg.early_filter:
            # decided in App._on_incoming once pjsua set the call up, on these same rules
            return _DEFERRED, None
        if not live and self.limiter.blocked(ip, now):  # decided before anything is parsed
            decision = decide(Facts(method=method, blocked=True, credit=self.credit), self.policy)
            self._count(decision, call, ip, method, "", raw)
            return decision, None
        trusted = ip in self.trusted
        if call and trusted and _refusing_calls(load):
            # decided on what peek read: under load, parsing an INVITE only to refuse it would
            # cost most of what the refusal is meant to save (docs/performance.md, "Overload")
            over_rate = not self.limiter.hit(ip, "invite", cfg.trusted_invite_rate, cfg.rate_burst, now,
                                             bounded=False)
            early = decide(Facts(method=method, trusted=True, over_rate=over_rate, credit=self.credit, load=load),
                           self.policy)
            self.credit = early.credit
            if early.verdict is not Verdict.ACCEPT:
                self._count(early, call, ip, method, "", raw)
                return early, None
            # admitted by the share: the whole check below must not spend the share's credit again
            return self._screen_new(raw, method, ip, trusted, load._replace(share=1.0), now,
                                    rate_checked=True)
        return self._screen_new(raw, method, ip, trusted, load, now, stands=stands, rate_checked=live)

    def _screen_new(self, raw: bytes, method: str, ip: str, trusted: bool, load: Load, now: float, *,
                    stands: Standing = Standing.NEW, rate_checked: bool = False) -> tuple[Decision, WireRequest | None]:
        """:meth:`screen` past the block: what a source's trust and the request's standing say
        to read, read; the rate (unless ``rate_checked``) and the decision."""
        cfg = self.config
        request: WireRequest | None = None
        malformed: Malformed | None = None
        scanner = False
        try:
            if stands is not Standing.NEW:
                method = check_in_dialog(raw)
            elif trusted:
                request = parse_request(raw)
                method = request.method
                scanner = bool(self.scanners) and is_scanner(request.user_agent, request.from_header, self.scanners)
            elif self.scanners:
                scanner = is_scanner(*peek_agent(raw), self.scanners)
        except Malformed as exc:
            malformed = exc
        # a stray request never becomes a call: it counts with the other requests, so stray
        # re-INVITEs cannot spend a trusted peer's allowance of new calls
        call = method == "INVITE" and stands is Standing.NEW
        over_rate = False
        if not rate_checked:
            if trusted:
                rate = cfg.trusted_invite_rate if call else cfg.trusted_request_rate
            else:
                rate = cfg.invite_rate if call else cfg.request_rate
            over_rate = not self.limiter.hit(ip, "invite" if call else "other", rate, cfg.rate_burst, now,
                                             bounded=not trusted)
        # in_dialog: pjsip's dialog layer takes it (a stray one gets 481 there, an ACK nothing)
        facts = Facts(method=method, in_dialog=stands is not Standing.NEW,
                      malformed_code=malformed.code if malformed else 0, trusted=trusted, over_rate=over_rate,
                      scanner=scanner, replaces=request is not None and "replaces" in request.headers,
                      credit=self.credit, load=load)
        decision = decide(facts, self.policy)
        self.credit = decision.credit
        detail = ""
        if malformed is not None and decision.why is Why.MALFORMED:
            self.log.note_malformed(malformed.reason)
            detail = malformed.detail
        self._count(decision, call, ip, method, detail, request.call_id if request else raw)
        if decision.verdict is not Verdict.ACCEPT and decision.block and cfg.block_time > 0 \
                and self.limiter.block(ip, now + cfg.block_time):
            self.log.note_blocked(ip, cfg.block_time, decision.why)
        return decision, request

    def _count(self, decision: Decision, call: bool, ip: str, method: str, detail: str,
               call_id: str | bytes) -> None:
        """Count a decision for the overload signal and the statistics; log a refusal."""
        if call and (decision.verdict is Verdict.ACCEPT or decision.why is Why.OVERLOAD):
            self.new_calls += 1
        elif decision.verdict is not Verdict.ACCEPT:
            self.refused += 1
        if decision.verdict is not Verdict.ACCEPT:
            (self.refused_calls if call else self.refused_requests)[decision.why] += 1
            if call and decision.why is Why.OVERLOAD:
                self.shed += 1
            self.log.note(decision, ip, method, detail, call_id)

    def note_bad_response(self, malformed: Malformed, source: str, call_id: str) -> None:
        """A response dropped because its head is not text (see :func:`b2bua.wire.check_response`)."""
        self.log.note_malformed(malformed.reason)
        self.log.note(Decision(Verdict.DROP, Why.MALFORMED), split_source(source)[0], "response",
                      malformed.detail, call_id)


def _refusing_calls(load: Load) -> bool:
    """Whether ``load`` turns some new calls away whatever they hold (shutdown, drain, overload)."""
    return load.stopping or load.draining or load.overloaded or load.share < 1.0


def register_security_methods(registry: RpcRegistry, gate: Gate,
                              clock: Callable[[], float] = time.monotonic) -> None:
    """Add ``security.blocked`` and ``security.unblock`` (Kamailio: ``htable.dump ipban``,
    ``htable.delete ipban``); both run on the loop thread, which owns the block list."""

    def blocked() -> list[dict[str, Any]]:
        return [{"address": ip, "expires_in": round(left, 1)} for ip, left in gate.limiter.blocked_sources(clock())]

    def unblock(address: str) -> str:
        shown = printable(address, 60)  # operator text: echoed back escaped and bounded
        if not gate.limiter.unblock(address):
            raise RpcError(f"{shown} is not blocked")
        logger.info("{} unblocked through the control API", shown)
        return f"{shown} unblocked"

    registry.add("security.blocked", blocked,
                 "The sources whose requests outside a dialog of ours are dropped, and the seconds left on each "
                 "block.")
    registry.add("security.unblock", unblock, "Lift the block on <address> at once.")
