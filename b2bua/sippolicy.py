"""SIP response policy: the one home for "which failure wins" and "what the caller gets".

The host, its defaults and every plugin use these functions (house rule 13); they are pure
(no clock, no I/O) and follow Kamailio's tm module, which serves all of Kamailio's modules the
same way:

* :func:`response_priority` is tm's ``get_prio()``, the RFC 3261 §16.7 choice of the best
  final response: 6xx first, then 3xx, 4xx (401, 407, 415, 420 and 484 before the other 4xx:
  the caller can retry those successfully), then 5xx, the lower code first within a class.
* :func:`best_failure` picks among several failures by that rank (parallel forks, and the
  failover plugin's ``final = "best"``).
* :func:`relay` turns one failure into the caller's answer.

**A gateway's 503 is relayed as 500** (``Server Internal Error``, without the gateway's
Retry-After), by the host's default as well as by the failover plugin. The reasons, for a
B2BUA as much as for a proxy:

- RFC 3261 §21.5.4: a client receiving 503 "SHOULD NOT forward any other requests to that
  server for the duration specified in the Retry-After header field". Upstream of us that
  server is *this B2BUA*: passing one gateway's 503 on tells the carrier or PBX in front of us
  to send us nothing at all, for every destination, because one gateway was unhappy.
- RFC 3261 §16.7 (step 6) says the same to proxies: a 503 is forwarded only when every
  subsequent request would get one too; Kamailio's tm remaps a relayed 503 to 500
  (``tm_remap_503_500``, on by default). A B2BUA is a UAS towards the caller: its answer
  describes itself, so the same reasoning applies with more force.
- When this B2BUA really is unavailable it says so itself, with a 503 of its own and our
  Retry-After: admission (``Too Many Calls``, ``Overloaded``, ``Shutting Down``), no route
  (``[routing] no_route_code``) and the failover plugin's ``fixed`` final answer once every
  gateway of the plan failed. Those are :class:`~b2bua.api.Reject` values, not relays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from b2bua.api import Failure, FailureKind, Reject
from b2bua.headers import HeaderFilter
from b2bua.sip import status_reason

#: headers of a failure response passed on when it is relayed, as ``(lower-case, written)``:
#: Retry-After (RFC 3261 §20.33) and Reason (RFC 3326, often a Q.850 cause from the PSTN)
RELAYED_HEADERS = (("retry-after", "Retry-After"), ("reason", "Reason"))

#: what a relayed 503 becomes (see the module docstring)
REMAPPED_503 = 500
#: what a gateway's 3xx becomes: the B2BUA does not follow redirects (the Contact is no
#: destination the routing chose), and a 3xx from us would carry the B2BUA's own Contact, so a
#: caller that follows redirects would call us again for the same answer; 480 is a plain failure
#: to every UA and proxy (list 3xx in ``failover_codes`` to try the next gateway instead)
REMAPPED_REDIRECT = 480
#: what a gateway's 401/407 becomes: the challenge was the B2BUA's to answer, and it could not
#: (no credentials for the realm, or they were refused); the caller cannot answer it for us.
#: Asterisk answers the same (AST_CAUSE_CALL_REJECTED -> 403).
REMAPPED_AUTH = 403


def response_priority(code: int) -> int:
    """Rank of a final response when choosing the best one: lower is better (tm's ``get_prio``).

    6xx (1000 + xx), 3xx (3000 + xx), 4xx (4000 + xx for 401, 407, 415, 420, 484, else
    4100 + xx), 5xx (5000 + xx); anything outside 300-699 ranks last (10000 + code).
    """
    cls, xx = divmod(code, 100)
    if cls == 6:
        return 1000 + xx
    if cls == 3:
        return 3000 + xx
    if cls == 4:
        return 4000 + (xx if xx in (1, 7, 15, 20, 84) else 100 + xx)
    if cls == 5:
        return 5000 + xx
    return 10000 + code


def best_failure(failures: Sequence[Failure]) -> Failure:
    """The failure to answer with among several (RFC 3261 §16.7); the earliest wins a tie.

    :raises ValueError: when ``failures`` is empty.
    """
    if not failures:
        raise ValueError("best_failure needs at least one failure")
    return min(failures, key=lambda f: response_priority(f.code))


def relay(failure: Failure) -> Reject:
    """The caller's answer passing on one failure.

    - our own timeouts (``no-response``, ``no-answer``) are ``408 Request Timeout``;
    - a code outside 300-699 is ``500``;
    - a 503 is ``500 Server Internal Error``, with the failure's Reason header but without its
      Retry-After (see the module docstring);
    - a 401 or 407 (a challenge the B2BUA could not answer) is ``403 Forbidden``, without the
      gateway's challenge;
    - a 3xx (a redirect the B2BUA did not follow) is ``480 Temporarily Unavailable``, with the
      failure's Reason header but never its Contact;
    - otherwise the failure's code and reason phrase (folded onto one line; the usual phrase
      when it has none) with its Retry-After and Reason headers.
    """
    if failure.kind in (FailureKind.NO_RESPONSE, FailureKind.NO_ANSWER):
        return Reject(408, status_reason(408))
    code = failure.code if 300 <= failure.code <= 699 else 500
    if code == 503:
        return Reject(REMAPPED_503, status_reason(REMAPPED_503), relayed_headers(failure, ("reason",)))
    if 300 <= code < 400:
        return Reject(REMAPPED_REDIRECT, status_reason(REMAPPED_REDIRECT), relayed_headers(failure, ("reason",)))
    if code in (401, 407):
        return Reject(REMAPPED_AUTH, status_reason(REMAPPED_AUTH), relayed_headers(failure, ("reason",)))
    reason = one_line(failure.reason) or status_reason(code)
    return Reject(code, reason, relayed_headers(failure))


def relayed_headers(failure: Failure, names: Sequence[str] = ("retry-after", "reason")) -> tuple[tuple[str, str], ...]:
    """The first value of each :data:`RELAYED_HEADERS` entry of ``failure`` named in ``names``."""
    if not failure.headers:
        return ()
    out = []
    for lower, written in RELAYED_HEADERS:
        values = failure.headers.get(lower, ()) if lower in names else ()
        value = one_line(values[0]) if values else ""
        if value:
            out.append((written, value))
    return tuple(out)


def hangup_headers(headers: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
    """What of a peer's BYE crosses to the other leg's BYE, and of the caller's CANCEL to the
    B legs' CANCELs: its Reason (RFC 3326, a Q.850 cause from the PSTN that the caller's side
    reports and bills on, a forking proxy's "Call completed elsewhere"), each value on one line,
    chosen as every header copied between legs is (:meth:`b2bua.headers.HeaderFilter.select`:
    usable values within :data:`b2bua.headers.COPY_BUDGET` bytes): a BYE too long to send would
    leave the other leg up."""
    values = tuple(value for value in map(one_line, headers.get("reason", ())) if value)
    return tuple(_BYE_REASON.select({"reason": values})[0]) if values else ()


#: the one header of a peer's BYE that crosses (:func:`hangup_headers`)
_BYE_REASON = HeaderFilter.compile(("Reason",))

#: what the CANCELs of the forks that lost to another fork's answer carry (RFC 3326; Kamailio's
#: tm adds the same): a phone that rang shows no missed call
COMPLETED_ELSEWHERE = (("Reason", 'SIP;cause=200;text="Call completed elsewhere"'),)


def reason_header(failure: Failure) -> str:
    """An RFC 3326 ``Reason`` value naming a failure, e.g. ``SIP;cause=500;text="Server Internal Error"``.

    A gateway's own Reason header (often a Q.850 cause from the PSTN) is passed on instead.
    """
    own = failure.headers.get("reason")
    if own:
        return one_line(own[0])
    text = one_line(failure.reason) or status_reason(failure.code)
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'SIP;cause={failure.code};text="{text}"'


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (CR and LF included) folded into one blank."""
    return " ".join(text.split())
