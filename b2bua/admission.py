"""Admission: whether a request from the wire is let in, refused or dropped (a pure policy).

:func:`decide` weighs the :class:`Facts` about one request (well-formed? trusted source?
over its rate? a scanner? and, for a new call: draining, overloaded, capacity) against a
:class:`Policy` and returns a :class:`Decision`. It runs for every request outside a dialog
or transaction before pjsua sees it (see ``b2bua/rxfilter.py``), and again in
``App._on_incoming`` when that early filter is not installed. The rules, first match wins
(Kamailio's ``sanity``, ``pike`` and ``permissions`` in that order):

1. the source is blocked → dropped unanswered;
2. the request took its source over its rate → untrusted: dropped and the source blocked;
   trusted: 503 + Retry-After;
3. malformed → 400 (416 for a Request-URI scheme other than sip/sips); an ACK is dropped;
4. a REFER → 603 (pjsua would accept any transfer and dial its target itself, outside any
   session: toll fraud by transfer); an INVITE with ``Replaces`` → 603 (pjsua would answer it
   itself, with no route, and hang up the call it names: an orphan call holding a slot and
   RTP ports, and a caller or gateway able to end other calls' legs);
5. inside a dialog (To tag) → let in: pjsip's dialog layer takes it, and answers 481 what
   matches no dialog of ours. The gate exempts from rules 1-2 only a request whose dialog
   pjsip holds; one that merely carries a To tag (``Standing.STRAY``) is blocked or counted
   against its source's rate like any other;
6. a scanner's User-Agent/From → dropped, an untrusted source blocked;
7. an untrusted source → ``untrusted_code`` (403); an ACK is dropped;
8. an OPTIONS while shutting down, drained by the operator or shedding load (loop overloaded,
   or a share of new calls refused) → 503 + Retry-After: a Kamailio/OpenSIPS edge probing this
   node with OPTIONS (its ``dispatcher``) takes it out of rotation. At ``max_calls`` an OPTIONS
   is still answered 200: the node is healthy, and the edge fails a call over on its 503;
9. an ACK or a CANCEL → let in (pjsip matches them to their INVITE's transaction); a request
   that belongs inside a dialog (BYE, INFO, UPDATE, PRACK) without a To tag → 481; another SIP
   method (MESSAGE, SUBSCRIBE, NOTIFY, PUBLISH, REGISTER) → 405 with ``Allow``; an unknown one
   → 501 with ``Allow`` (RFC 3261 8.2.1). pjsua would answer a MESSAGE or a SUBSCRIBE 200 and
   keep a presence subscription for it, and leave the others unanswered;
10. not an INVITE → let in; an INVITE: shutting down → 503 Shutting Down; drained → 503
   Draining; loop overloaded → 503; a share of new calls under a receive backlog (credit
   counter, no randomness) → 503; over ``max_calls`` or out of call slots →
   ``capacity_code``; else let in.

No I/O, clock or randomness here; the caller passes the share credit in and keeps
:attr:`Decision.credit` for the next call.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from b2bua.sip import ALLOW, retry_after, status_reason

#: pjsua call slots a new call needs: its A leg and at least one B leg
SLOTS_PER_CALL = 2
#: methods that only make sense inside a dialog: without a To tag there is none (RFC 3261 12.2.2)
DIALOG_ONLY = frozenset({"BYE", "INFO", "UPDATE", "PRACK"})
#: SIP methods known but not taken outside a dialog: 405; any other method: 501
NOT_ALLOWED = frozenset({"MESSAGE", "SUBSCRIBE", "NOTIFY", "PUBLISH", "REGISTER"})
#: answers that carry ``Allow`` (405 must, RFC 3261 21.4.6)
ALLOW_CODES = frozenset({405, 501})
_ALLOW_HEADER = (("Allow", ALLOW),)


class Verdict(enum.Enum):
    ACCEPT = "accept"  #: let in: pjsua (and, for an INVITE, a Session) takes it from here
    REFUSE = "refuse"  #: answered statelessly with ``code``/``reason``
    DROP = "drop"  #: nothing is sent


class Why(str, enum.Enum):
    """Why a request was refused or dropped; the log summary counts by these."""

    NONE = ""
    BLOCKED = "blocked"
    RATE = "rate"
    MALFORMED = "malformed"
    TRANSFER = "transfer"
    SCANNER = "scanner"
    UNTRUSTED = "untrusted"
    DRAINING = "draining"
    OVERLOAD = "overload"
    CAPACITY = "capacity"
    METHOD = "method"


@dataclass(frozen=True, slots=True)
class Policy:
    """The admission settings (from ``[security]`` and ``[sip]``)."""

    untrusted_code: int = 403
    capacity_code: int = 503
    retry_after: int = 5
    drop_scanners: bool = True


class Load(NamedTuple):
    """What the app reports about itself when a new call is decided.

    Immutable; a named tuple like :class:`Facts` and :class:`Decision`: each is made for every
    request the early filter screens, and a frozen dataclass costs ~3x as much to make.

    ``stopping``: shutdown has begun; ``draining``: the operator drained the node
    (``core.drain``); ``share`` is the share of new calls admitted under a receive backlog
    (1.0: all); ``free_slots`` counts pjsua call slots free for this call (its own A leg not
    taken yet).
    """

    stopping: bool = False
    draining: bool = False
    overloaded: bool = False
    share: float = 1.0
    calls: int = 0
    max_calls: int = 1
    free_slots: int = SLOTS_PER_CALL


class Facts(NamedTuple):
    """What is known about one request when it is decided.

    ``malformed_code`` is 0 for a well-formed request, else the status to answer (400/416);
    ``credit`` the running credit that spreads a share of new calls evenly.
    """

    method: str = "INVITE"
    in_dialog: bool = False
    malformed_code: int = 0
    trusted: bool = True
    blocked: bool = False
    over_rate: bool = False
    scanner: bool = False
    replaces: bool = False
    credit: float = 0.0
    load: Load = Load()


class Decision(NamedTuple):
    """The answer for one request; ``block`` asks the caller to block its source."""

    verdict: Verdict
    why: Why = Why.NONE
    code: int = 0
    reason: str = ""
    retry_after: int = 0
    block: bool = False
    credit: float = 0.0

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        """Extra headers of the answer (``Retry-After``; ``Allow`` with a 405 or 501)."""
        if self.code in ALLOW_CODES:
            return _ALLOW_HEADER
        return retry_after(self.retry_after)


def decide(f: Facts, p: Policy) -> Decision:
    """The decision for one request (the rules in the module docstring, in order)."""
    credit = f.credit
    ack = f.method == "ACK"
    if f.blocked:
        return Decision(Verdict.DROP, Why.BLOCKED, credit=credit)
    if f.over_rate:
        if f.trusted and not ack:
            return Decision(Verdict.REFUSE, Why.RATE, 503, "Rate Limited", p.retry_after, credit=credit)
        return Decision(Verdict.DROP, Why.RATE, block=not f.trusted, credit=credit)
    if f.malformed_code:
        if ack:
            return Decision(Verdict.DROP, Why.MALFORMED, credit=credit)
        reason = status_reason(f.malformed_code) or "Bad Request"
        return Decision(Verdict.REFUSE, Why.MALFORMED, f.malformed_code, reason, credit=credit)
    if f.method == "REFER" or (f.replaces and f.method == "INVITE"):  # pjsua would act on either itself
        return Decision(Verdict.REFUSE, Why.TRANSFER, 603, "Decline", credit=credit)
    if f.in_dialog:
        return Decision(Verdict.ACCEPT, credit=credit)
    if f.scanner and p.drop_scanners:
        return Decision(Verdict.DROP, Why.SCANNER, block=not f.trusted, credit=credit)
    if not f.trusted:
        if ack:
            return Decision(Verdict.DROP, Why.UNTRUSTED, credit=credit)
        return Decision(Verdict.REFUSE, Why.UNTRUSTED, p.untrusted_code, status_reason(p.untrusted_code) or "Forbidden",
                        credit=credit)
    load = f.load
    if f.method != "INVITE":
        if f.method == "OPTIONS" and (load.stopping or load.draining or load.overloaded or load.share < 1.0):
            why, reason = _unavailable(load)
            return Decision(Verdict.REFUSE, why, 503, reason, p.retry_after, credit=credit)
        if f.method in ("OPTIONS", "ACK", "CANCEL"):
            return Decision(Verdict.ACCEPT, credit=credit)
        if f.method in DIALOG_ONLY:
            return Decision(Verdict.REFUSE, Why.METHOD, 481, "Call/Transaction Does Not Exist", credit=credit)
        if f.method in NOT_ALLOWED:
            return Decision(Verdict.REFUSE, Why.METHOD, 405, "Method Not Allowed", credit=credit)
        return Decision(Verdict.REFUSE, Why.METHOD, 501, "Not Implemented", credit=credit)
    if load.stopping or load.draining or load.overloaded:
        why, reason = _unavailable(load)
        return Decision(Verdict.REFUSE, why, 503, reason, p.retry_after, credit=credit)
    if load.share < 1.0:
        credit += load.share
        if credit < 1.0 - 1e-9:  # tenths do not add up to exactly 1.0 in floating point
            return Decision(Verdict.REFUSE, Why.OVERLOAD, 503, "Overloaded", p.retry_after, credit=credit)
        credit -= 1.0
    if load.calls >= load.max_calls or load.free_slots < SLOTS_PER_CALL:
        return Decision(Verdict.REFUSE, Why.CAPACITY, p.capacity_code, "Too Many Calls", p.retry_after,
                        credit=credit)
    return Decision(Verdict.ACCEPT, credit=credit)


def closes_connection(d: Decision) -> bool:
    """Whether the connection (TCP) a refused or dropped request came on is closed: its source
    is blocked, or is being blocked now (a flood, a scanner). Held open, a blocked source's
    connections would fill pjsip's socket table as surely as silent ones (docs/security.md);
    a refused request of a source in good standing keeps its connection (an SBC's carries
    every call)."""
    return d.verdict is not Verdict.ACCEPT and (d.why is Why.BLOCKED or d.block)


def _unavailable(load: Load) -> tuple[Why, str]:
    """Why the node takes no new work now, and the reason phrase that says so."""
    if load.stopping:
        return Why.DRAINING, "Shutting Down"
    if load.draining:
        return Why.DRAINING, "Draining"
    return Why.OVERLOAD, "Overloaded"


#: what a new call costs the loop, in requests refused or dropped by the early filter (about 1.25 ms
#: against 40-80 µs, measured)
CALL_WEIGHT = 20


def shedding_helps(new_calls: float, refused: float) -> bool:
    """Whether refusing new calls would relieve an overloaded loop.

    ``new_calls`` is the recent demand for new calls (admitted, or refused as overload),
    ``refused`` the requests refused or dropped for other reasons (a flood, a scan) meanwhile.
    When those outweigh the calls, the loop is late or its queue long because of work that
    refusing calls does not lessen, and the calls would be refused for nothing.
    """
    return new_calls * CALL_WEIGHT >= refused


class TrustList:
    """Source networks whose requests are trusted (Kamailio's ``permissions`` address table).

    ``ip in trust`` takes a source address as text (no brackets, no port); an IPv4-mapped IPv6
    address counts as its IPv4 address. Answers are cached (sources repeat).
    """

    CACHE = 4096

    def __init__(self, networks: Iterable[str]) -> None:
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._cache: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        if not isinstance(ip, str):
            return False
        known = self._cache.get(ip)
        if known is not None:
            return known
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        trusted = any(addr in net for net in self.networks)
        if len(self._cache) >= self.CACHE:
            self._cache.clear()
        self._cache[ip] = trusted
        return trusted

    @property
    def everyone(self) -> bool:
        """Whether a whole address family is trusted (``0.0.0.0/0`` or ``::/0``)."""
        return any(net.prefixlen == 0 for net in self.networks)


def is_scanner(user_agent: str, from_header: str, patterns: Iterable[str]) -> bool:
    """Whether User-Agent or From holds one of ``patterns`` (lower-case substrings)."""
    ua, frm = user_agent.lower(), from_header.lower()
    for p in patterns:  # noqa: SIM110 - not any(genexpr): a generator step per pattern, every new call
        if p in ua or p in frm:
            return True
    return False
