"""Pure SIP text helpers: read the few things the B2BUA needs from a raw message.

URIs are split by :mod:`b2bua.sipuri` (the one URI parser); response policy (best failure,
relaying) lives in :mod:`b2bua.sippolicy`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping

from b2bua.sipuri import parse_name_addr, parse_uri_lenient

#: compact header forms (RFC 3261 §7.3.3) we may meet
COMPACT = {"i": "call-id", "f": "from", "t": "to", "m": "contact", "v": "via", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding"}


def parse_message(raw: str) -> tuple[str, dict[str, tuple[str, ...]]]:
    """Split a SIP message into its start line and headers (lower-case names, in order).

    Folded lines are joined; the body is ignored.
    """
    head = raw.split("\r\n\r\n", 1)[0]
    lines = head.split("\r\n") if "\r\n" in head else head.split("\n")
    start = lines[0] if lines else ""
    headers: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last][-1] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        key = name.strip().lower()
        key = COMPACT.get(key, key)
        headers.setdefault(key, []).append(value.strip())
        last = key
    return start, {k: tuple(v) for k, v in headers.items()}


class MessageHeaders(Mapping[str, tuple[str, ...]]):
    """``parse_message(raw)[1]``, parsed when first read. A B leg's 2xx is kept for the few
    headers ``[headers] to_caller`` passes on (:meth:`b2bua.headers.HeaderFilter.select`), which
    looks at :attr:`raw` first and, when no header it could pass is there (the usual 2xx), never
    parses it (~50,000 instructions)."""

    __slots__ = ("_parsed", "raw")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self._parsed: dict[str, tuple[str, ...]] | None = None

    @property
    def parsed(self) -> bool:
        """Whether the message was parsed already."""
        return self._parsed is not None

    def _headers(self) -> dict[str, tuple[str, ...]]:
        if self._parsed is None:
            self._parsed = parse_message(self.raw)[1]
        return self._parsed

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._headers()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._headers())

    def __len__(self) -> int:
        return len(self._headers())

    def __repr__(self) -> str:
        return f"MessageHeaders({self._headers()!r})"


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for one log line: control characters and undecodable bytes escaped, bounded."""
    if not (text.isascii() and text.isprintable()):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def printable_lines(text: str) -> str:
    """``text`` of several lines (a packet dump) safe for a log: CRLF as a line break, tabs kept,
    every other control or format character (ESC, NUL, a lone CR, bidi overrides) and undecodable
    byte escaped, so what a peer sent cannot move a terminal's cursor or forge a log line's look."""
    text = text.replace("\r\n", "\n")
    if text.isascii() and text.replace("\n", "").replace("\t", "").isprintable():
        return text
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() or ch in "\n\t" else f"\\u{ord(ch):04x}" if ord(ch) > 0xff
                   else f"\\x{ord(ch):02x}" for ch in text)


def b_leg_request_uri(a_request_uri: str, destination: str) -> str:
    """Kamailio's ``ds_select_domain``: keep the caller's user, take the destination's host part.

    ``sip:4930123@b2bua`` + ``sip:10.0.0.1:5080;transport=tcp`` -> ``sip:4930123@10.0.0.1:5080;transport=tcp``.
    A destination with a user part of its own, or that is not a ``sip:``/``sips:`` URI, is
    used as it is; so is the destination when the caller's Request-URI has no user part.
    """
    dest = parse_uri_lenient(destination)
    if dest.user or dest.scheme not in ("sip", "sips"):
        return destination
    user = parse_uri_lenient(a_request_uri).user
    if not user:
        return destination
    return f"{dest.scheme}:{user}@{destination[len(dest.scheme) + 1:]}"


def display_name(header: str) -> str:
    """The display name of a From/To value as plain text (quotes and escapes removed), or ``""``.

    ``"Alice \\"A\\" Smith" <sip:...>`` -> ``Alice "A" Smith``; ``Bob <sip:...>`` -> ``Bob``.
    """
    display = parse_name_addr(header).display if "<" in header else ""
    return _ESCAPE.sub(r"\1", display) if "\\" in display else display


_ESCAPE = re.compile(r"\\(.)")


def name_addr(display: str, uri: str) -> str:
    """A From/To value: ``"display" <uri>`` (quoted and escaped), or ``<uri>`` without a name."""
    if not display:
        return f"<{uri}>"
    quoted = display.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{uri}>'


def with_host_of(uri: str, other: str) -> str:
    """``uri`` with its host, port and ``transport`` parameter taken from ``other`` (its user and
    other parameters kept): the B leg's To, whose host part follows the Request-URI as the
    Request-URI's follows the destination (pjsua also picks the Contact's transport from it).
    ``uri`` is returned as it is when either has no host (a ``tel:`` URI)."""
    mine, theirs = parse_uri_lenient(uri), parse_uri_lenient(other)
    if not (mine.host and theirs.host) or mine.scheme not in ("sip", "sips"):
        return uri
    params = tuple(p for p in mine.params if p[0] != "transport")
    transport = theirs.param("transport")
    if transport:
        params += (("transport", transport),)
    return str(mine._replace(host=theirs.host, port=theirs.port, port_text=theirs.port_text, params=params,
                             headers=""))


def retry_after(seconds: int) -> tuple[tuple[str, str], ...]:
    """A ``Retry-After`` header for a Reject's ``headers`` (none when ``seconds`` is 0)."""
    return (("Retry-After", str(seconds)),) if seconds else ()


def next_hop_problem(text: str) -> str:
    """Why ``text`` is not a next hop (``IP:port``, IPv6 in brackets, port 1-65535), or ``""``."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        return f"next hop {printable(text, 60)!r} is not IP:port"
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return f"next hop {printable(text, 60)!r}: {printable(host, 50)!r} is not an IP address"
    if (address.version == 6) != bracketed:
        return f"next hop {printable(text, 60)!r}: an IPv6 address goes in brackets, an IPv4 one not"
    return ""


#: an RFC 3261 token: a request method, a header name (:func:`b2bua.headers.is_name`)
TOKEN = re.compile(r"[A-Za-z0-9\-.!%_+`'~]+")


def request_method_problem(method: str) -> str:
    """Why a request of ``method`` cannot be sent outside any dialog, or ``""``.

    An ACK exists only for an INVITE's answer: pjsip's transaction layer asserts on one of its
    own, and our build turns that assertion into an abort of the whole process. pjsip matches
    method names regardless of case (``ack`` is an ACK).
    """
    if not TOKEN.fullmatch(method):
        return f"'{printable(method, 40)}' is not a SIP method"
    if method.upper() == "ACK":
        return f"{method!r}: an ACK is sent only for an INVITE's answer (never on its own)"
    return ""


#: the methods the B2BUA takes, in pjsip's order: its ``Allow`` header (the endpoint's is trimmed to
#: these) and the answer to any other method outside a dialog. pjsua's own modules would also
#: take SUBSCRIBE, NOTIFY, REFER and MESSAGE (a presence subscription kept for the subscriber,
#: an instant message answered 200 and dropped): none of them is a call's
ALLOWED_METHODS = ("PRACK", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "INFO", "OPTIONS")
ALLOW = ", ".join(ALLOWED_METHODS)
#: the option tags the B2BUA takes, its ``Supported`` header: reliable provisionals (RFC 3262) and
#: session timers (RFC 4028). pjsua also listed replaces (an INVITE with Replaces is declined),
#: norefersub (no REFER) and trickle-ice (no ICE)
SUPPORTED_TAGS = ("100rel", "timer")
#: the bodies the B2BUA takes, its ``Accept`` header (in the OPTIONS answer). pjsua also listed
#: those of its presence, message-summary, transfer and instant-message modules
ACCEPTED_BODIES = ("application/sdp",)


def status_reason(code: int) -> str:
    """The usual reason phrase for a status code (``""`` when unknown)."""
    return REASONS.get(code, "")


REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    407: "Proxy Authentication Required", 408: "Request Timeout", 416: "Unsupported URI Scheme",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist", 486: "Busy Here",
    487: "Request Terminated", 488: "Not Acceptable Here", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}
