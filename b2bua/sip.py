"""Pure SIP text helpers: read the few things the B2BUA needs from a raw message."""

from __future__ import annotations

import re

#: compact header forms (RFC 3261 §7.3.3) we may meet
COMPACT = {"i": "call-id", "f": "from", "t": "to", "m": "contact", "v": "via", "l": "content-length",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding"}

_NAME_ADDR = re.compile(r"<([^>]*)>")


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


def printable(text: str, limit: int = 200) -> str:
    """``text`` safe for one log line: control characters and undecodable bytes escaped, bounded."""
    if not (text.isascii() and text.isprintable()):
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)
    return text if len(text) <= limit else text[:limit] + "..."


def request_uri(start_line: str) -> str:
    """The Request-URI of ``METHOD uri SIP/2.0``."""
    parts = start_line.split(" ")
    return parts[1] if len(parts) >= 3 else ""


def header_uri(value: str) -> str:
    """The URI inside a From/To/Contact value: ``"Bob" <sip:bob@x>;tag=1`` -> ``sip:bob@x``."""
    m = _NAME_ADDR.search(value)
    if m:
        return m.group(1).strip()
    return value.split(";", 1)[0].strip()


def uri_user(uri: str) -> str:
    """The user part of a SIP URI (``sip:alice@host`` -> ``alice``), or ``""``."""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    if "@" not in rest:
        return ""
    return rest.split("@", 1)[0].split(";", 1)[0].split(":", 1)[0]


def uri_hostport(uri: str) -> str:
    """Everything after ``scheme:`` and ``user@`` (host, port and parameters)."""
    rest = uri.split(":", 1)[1] if uri.lower().startswith(("sip:", "sips:")) else uri
    return rest.split("@", 1)[1] if "@" in rest else rest


def uri_scheme(uri: str) -> str:
    return "sips" if uri.lower().startswith("sips:") else "sip"


def b_leg_request_uri(a_request_uri: str, destination: str) -> str:
    """Kamailio's ``ds_select_domain``: keep the caller's user, take the destination's host part.

    ``sip:4930123@b2bua`` + ``sip:10.0.0.1:5080;transport=tcp`` -> ``sip:4930123@10.0.0.1:5080;transport=tcp``.
    A destination with a user part of its own is used as it is.
    """
    if uri_user(destination):
        return destination
    user = uri_user(a_request_uri)
    hostport = uri_hostport(destination)
    scheme = uri_scheme(destination)
    return f"{scheme}:{user}@{hostport}" if user else f"{scheme}:{hostport}"


def retry_after(seconds: int) -> tuple[tuple[str, str], ...]:
    """A ``Retry-After`` header for a Reject's ``headers`` (none when ``seconds`` is 0)."""
    return (("Retry-After", str(seconds)),) if seconds else ()


def status_reason(code: int) -> str:
    """The usual reason phrase for a status code (``""`` when unknown)."""
    return REASONS.get(code, "")


REASONS = {
    100: "Trying", 180: "Ringing", 183: "Session Progress", 200: "OK", 400: "Bad Request",
    403: "Forbidden", 404: "Not Found", 408: "Request Timeout", 480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}
