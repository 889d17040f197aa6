"""The front door: every request from the wire is screened here before it can become a call.

:class:`Gate` gathers the facts about one request (parsed by :mod:`b2bua.wire`, its source
checked against the trust list and :class:`~b2bua.ratelimit.SourceLimiter`, the load the app
reports) and asks :func:`b2bua.admission.decide`. :class:`RefusalLog` logs each refusal at
DEBUG and sums them up in one WARNING per interval, so a flood cannot multiply log lines.
Runs on the loop thread (inside pjsip's receive callback); no I/O.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from loguru import logger

from b2bua.admission import Decision, Facts, Policy, TrustList, Verdict, Why, decide, is_scanner, split_source
from b2bua.config import SecurityConfig, SipConfig
from b2bua.ratelimit import SourceLimiter
from b2bua.sip import printable
from b2bua.wire import Malformed, WireRequest, check_in_dialog, parse_request, peek, raw_call_id

#: sources named in one summary line
TOP_SOURCES = 3
#: distinct sources counted per interval (a spoofed flood has millions)
MAX_COUNTED_SOURCES = 1024


@dataclass(frozen=True, slots=True)
class Load:
    """What the app reports about itself when a new call is decided."""

    draining: bool = False
    overloaded: bool = False
    share: float = 1.0
    calls: int = 0
    max_calls: int = 1
    free_slots: int = 2


class RefusalLog:
    """Counts refusals and drops by reason; :meth:`summary` sums up an interval in one line."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.counts: Counter[tuple[Why, int]] = Counter()
        self.malformed: Counter[str] = Counter()
        self.sources: Counter[str] = Counter()
        self.blocked: list[str] = []
        self.unparsable: Counter[str] = Counter()
        self.total = 0

    def note(self, decision: Decision, ip: str, method: str, detail: str, call_id: str) -> None:
        """One refused or dropped request: a DEBUG line now, a count for the summary."""
        self.total += 1
        self.counts[(decision.why, decision.code)] += 1
        if ip in self.sources or len(self.sources) < MAX_COUNTED_SOURCES:
            self.sources[ip] += 1
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

    def note_unparsable(self, reason: str) -> None:
        """A packet pjsip's parser dropped (no source known)."""
        self.total += 1
        self.unparsable[reason] += 1

    def summary(self, seconds: float) -> str:
        """The interval's counts as one line ("" when nothing was refused), and a fresh start."""
        if not self.total:
            return ""
        parts = []
        for (why, code), n in sorted(self.counts.items(), key=lambda item: -item[1]):
            if why is Why.OVERLOAD:
                continue  # the overload warning sums these up
            label = f"{why.value} {code}" if code else f"{why.value} (dropped)"
            if why is Why.MALFORMED and self.malformed:
                label += " [" + ", ".join(f"{r} {c}" for r, c in self.malformed.most_common()) + "]"
            parts.append(f"{label}: {n}")
        if self.unparsable:
            parts.append("unparsable (dropped by pjsip) [" +
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
        self._reset()
        return line


class Gate:
    """Screens requests: parse, trust, rate, scanner, load → :class:`Decision` (see admission.py)."""

    def __init__(self, security: SecurityConfig, sip: SipConfig) -> None:
        self.config = security
        self.policy = Policy(untrusted_code=security.untrusted_code, capacity_code=sip.admission_code,
                             retry_after=sip.retry_after, drop_scanners=bool(security.scanners))
        self.trusted = TrustList(security.trusted)
        self.scanners = tuple(s.strip().lower() for s in security.scanners)
        self.limiter = SourceLimiter()
        self.log = RefusalLog()
        self.credit = 0.0  #: the share credit carried from one new call to the next

    def screen(self, raw: bytes, source: str, load: Load, now: float) -> tuple[Decision, WireRequest | None]:
        """Decide about one request from ``source`` (``ip:port``); the parsed request when well-formed.

        Refusals are noted in :attr:`log`; a decision to block is applied here.
        """
        ip, _ = split_source(source)
        method, in_dialog = peek(raw)
        cfg = self.config
        if not in_dialog and self.limiter.blocked(ip, now):
            decision = Decision(Verdict.DROP, Why.BLOCKED, credit=self.credit)
            self.log.note(decision, ip, method, "", raw_call_id(raw))
            return decision, None
        request: WireRequest | None = None
        malformed: Malformed | None = None
        try:
            if in_dialog:
                method = check_in_dialog(raw)
            else:
                request = parse_request(raw)
                method = request.method
        except Malformed as exc:
            malformed = exc
        trusted = ip in self.trusted
        over_rate = False
        if not in_dialog:
            invite = method == "INVITE"
            if trusted:
                rate = cfg.trusted_invite_rate if invite else cfg.trusted_request_rate
            else:
                rate = cfg.invite_rate if invite else cfg.request_rate
            over_rate = not self.limiter.hit(ip, "invite" if invite else "other", rate, cfg.rate_burst, now,
                                             bounded=not trusted)
        scanner = request is not None and bool(self.scanners) and is_scanner(
            request.user_agent, request.from_header, self.scanners)
        facts = Facts(
            method=method, in_dialog=in_dialog, malformed_code=malformed.code if malformed else 0,
            trusted=trusted, over_rate=over_rate, scanner=scanner, draining=load.draining,
            overloaded=load.overloaded, share=load.share, credit=self.credit, calls=load.calls,
            max_calls=load.max_calls, free_slots=load.free_slots,
        )
        decision = decide(facts, self.policy)
        self.credit = decision.credit
        if decision.verdict is not Verdict.ACCEPT:
            if malformed is not None and decision.why is Why.MALFORMED:
                self.log.note_malformed(malformed.reason)
            detail = malformed.detail if malformed is not None and decision.why is Why.MALFORMED else ""
            self.log.note(decision, ip, method, detail, request.call_id if request else raw_call_id(raw))
            if decision.block and cfg.block_time > 0 and self.limiter.block(ip, now + cfg.block_time):
                self.log.note_blocked(ip, cfg.block_time, decision.why)
        return decision, request

    def note_bad_response(self, malformed: Malformed, source: str, call_id: str) -> None:
        """A response dropped because its head is not text (see :func:`b2bua.wire.check_response`)."""
        self.log.note_malformed(malformed.reason)
        self.log.note(Decision(Verdict.DROP, Why.MALFORMED), split_source(source)[0], "response",
                      malformed.detail, call_id)
