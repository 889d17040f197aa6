"""SIP URIs (RFC 3261 §19.1, §25.1): the one parser every part of the B2BUA uses.

Two modes, one result type:

* :func:`parse_uri` is **strict**: the text must be a well-formed ``sip:``/``sips:`` URI (RFC
  3261's grammar, ASCII, no blanks or control characters, at most :data:`MAX_URI_LENGTH`
  characters) or :class:`ValueError` says what is wrong. For anything an operator writes
  (destinations, config) and anything from the wire that is passed on.
* :func:`parse_uri_lenient` never raises: it splits whatever it gets (any scheme, ``tel:``, a
  whole name-addr) into the same parts, empty where absent. For per-call reads of values that
  were already admitted (hashing, route matching), where speed matters and an odd URI must not
  cost the call.

:func:`parse_name_addr` splits a From/To/Contact value into display name, URI and parameters;
:func:`name_addr_uri` is its URI alone, cheaply.
Parts are kept as written (escapes are not decoded), so a hash or a comparison sees what
Kamailio's parser would.
"""

from __future__ import annotations

import ipaddress
import re
from typing import NamedTuple

#: longest URI the strict parser accepts (characters)
MAX_URI_LENGTH = 2048

DEFAULT_PORTS = {"sip": 5060, "sips": 5061}

# RFC 3261 §25.1, as character classes
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
_PARAMCHARS = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")
_HNV = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*")  # hname / hvalue characters
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?:{_LABEL}\.)*[A-Za-z](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?")
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
#: an IPv4 address as ipaddress accepts it (0-255, no leading zeros), without its 5 us parse
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_VALID = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
#: the usual URI in one match (:func:`parse_uri`'s fast path): a lower-case scheme, a user part
#: without escapes, password or ``?``, a host name or valid IPv4 address, a port of 1-5 digits,
#: parameters without escapes, no headers; a subset of what the full parse accepts
_USUAL_URI = re.compile(
    rf"(sips?):(?:([{_UNRESERVED}&=+$,;/]+)@)?({_OCTET}(?:\.{_OCTET}){{3}}|{_HOSTNAME.pattern})"
    rf"(?::([0-9]{{1,5}}))?((?:;[{_UNRESERVED}\[\]/:&+$]+(?:=[{_UNRESERVED}\[\]/:&+$]+)?)*)"
)
#: longest URI tried by the fast path: the one regex backtracks more than the full parse on a
#: long malformed host (a hyphen run), so a long URI takes the full parse alone
_USUAL_LENGTH = 256
#: the same, for a parser that meets a URI inside a larger match (``b2bua.wire``'s From/To):
#: its pattern (groups: scheme, user, host, port, parameters) and the longest URI to try it on
USUAL_URI_PATTERN = _USUAL_URI.pattern
USUAL_URI_LENGTH = _USUAL_LENGTH


class SipUri(NamedTuple):
    """The parts of a URI, as written (escapes kept). Immutable; a tuple, so cheap to make.

    ``host`` has no brackets (an IPv6 reference's address); ``port`` is 0 when none is written
    and ``port_text`` is the port as written (``""`` when absent); ``params`` keep their order
    with lower-cased names (a flag parameter has the value ``""``); ``headers`` is the raw text
    after ``?`` without it.
    """

    scheme: str
    user: str = ""
    password: str = ""
    host: str = ""
    port: int = 0
    port_text: str = ""
    params: tuple[tuple[str, str], ...] = ()
    headers: str = ""

    def param(self, name: str) -> str | None:
        """A URI parameter's value (``""`` for a flag such as ``;lr``), or None when absent."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def transport(self) -> str:
        """``;transport=`` lower-cased; else ``tls`` for sips and ``udp`` for sip."""
        value = self.param("transport")
        if value:
            return value.lower()
        return "tls" if self.scheme == "sips" else "udp"

    @property
    def effective_port(self) -> int:
        """The port, or the default (5060; 5061 for sips and for TLS)."""
        if self.port:
            return self.port
        return 5061 if self.scheme == "sips" or self.transport == "tls" else 5060

    @property
    def is_ip(self) -> bool:
        """Whether the host is an IPv4 or IPv6 address."""
        return is_ip_literal(self.host)

    @property
    def host_ref(self) -> str:
        """The host as a URI writes it: an IPv6 address in brackets."""
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def hostport(self) -> str:
        """``host[:port]`` as written."""
        return f"{self.host_ref}:{self.port_text}" if self.port_text else self.host_ref

    def __str__(self) -> str:
        if not self.host:  # tel:, or what the lenient parser made of something else
            params = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params)
            return f"{self.scheme}:{self.user}{params}"
        userinfo = ""
        if self.user:
            userinfo = f"{self.user}:{self.password}@" if self.password else f"{self.user}@"
        params = "".join(f";{k}={v}" if v else f";{k}" for k, v in self.params)
        headers = f"?{self.headers}" if self.headers else ""
        return f"{self.scheme}:{userinfo}{self.hostport}{params}{headers}"


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address (no brackets)."""
    if _IPV4_VALID.fullmatch(host):  # the common case, checked first: every URI has a host
        return True
    if ":" not in host:
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_uri(text: str, *, schemes: tuple[str, ...] = ("sip", "sips")) -> SipUri:
    """Parse a ``sip:``/``sips:`` URI strictly; :class:`ValueError` names the URI and the fault.

    ``sip[s]:[user[:password]@]host[:port][;param[=value]]*[?hname=hvalue[&...]]``;
    ``schemes`` narrows what is accepted (``("sip",)`` where TLS is not available).
    """
    # every incoming call has three URIs: the usual form is taken in one match (~6,000
    # instructions, not ~33,000), anything else (and every fault) by the full parse below
    m = _USUAL_URI.fullmatch(text) if len(text) <= _USUAL_LENGTH else None
    if m is not None:
        scheme, user, host, port_text, params = m.groups("")
        port = int(port_text) if port_text else 0
        if scheme in schemes and (not port_text or 1 <= port <= 65535):
            return SipUri(scheme, user, "", host, port, port_text,
                          tuple(_param(item) for item in params[1:].split(";")) if params else ())
    return _parse_uri(text, schemes)


def check_uri(text: str, *, schemes: tuple[str, ...] = ("sip", "sips")) -> None:
    """:func:`parse_uri`'s verdict without its result (:class:`ValueError` the same): the usual
    form is told by the one match, without making the :class:`SipUri` (every incoming call
    checks three URIs and reads none of their parts)."""
    m = _USUAL_URI.fullmatch(text) if len(text) <= _USUAL_LENGTH else None
    if m is not None:
        scheme, port_text = m.group(1, 4)
        if scheme in schemes and (not port_text or 1 <= int(port_text) <= 65535):
            return
    _parse_uri(text, schemes)


def _param(item: str) -> tuple[str, str]:
    name, _, value = item.partition("=")
    return name.lower(), value


def _parse_uri(text: str, schemes: tuple[str, ...]) -> SipUri:
    """:func:`parse_uri`'s full parse: every form the grammar allows, and what is wrong."""
    shown = _shown(text)
    if len(text) > MAX_URI_LENGTH:
        raise ValueError(f"{shown}: longer than {MAX_URI_LENGTH} characters")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError(f"{shown}: blanks, control or non-ASCII characters")
    scheme, sep, rest = text.partition(":")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"{shown}: no URI scheme")
    scheme = scheme.lower()
    if scheme not in schemes:
        raise ValueError(f"{shown}: URI scheme {scheme!r} is not {' or '.join(schemes)}")
    rest, _, headers = rest.partition("?")
    if headers:
        for item in headers.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq or not _HNV.fullmatch(name) or not _HNV.fullmatch(value):
                raise ValueError(f"{shown}: bad URI header {item!r}")
    user = password = ""
    at = rest.rfind("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1:]
        user, colon, password = userinfo.partition(":")
        if not user or not _USER.fullmatch(user) or (colon and not _PASSWORD.fullmatch(password)):
            raise ValueError(f"{shown}: bad user part {userinfo!r}")
    hostport, *items = rest.split(";")
    host, port_text = _split_hostport(hostport, shown)
    port = 0
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{shown}: bad port {port_text!r} (1-65535)")
        port = int(port_text)
    params = []
    for item in items:
        name, eq, value = item.partition("=")
        if not _PARAMCHARS.fullmatch(name) or (eq and not _PARAMCHARS.fullmatch(value)):
            raise ValueError(f"{shown}: bad URI parameter {item!r}")
        params.append((name.lower(), value))
    return SipUri(scheme, user, password, host, port, port_text, tuple(params), headers)


def _split_hostport(hostport: str, shown: str) -> tuple[str, str]:
    if hostport.startswith("["):
        end = hostport.find("]")
        host, after = hostport[1:end], hostport[end + 1:]
        if end < 0 or not _is_ipv6(host):
            raise ValueError(f"{shown}: bad IPv6 reference {hostport!r}")
        if after and not after.startswith(":"):
            raise ValueError(f"{shown}: unexpected {after!r} after the IPv6 reference")
        return host, after[1:]
    host, colon, port_text = hostport.partition(":")
    if not host:
        raise ValueError(f"{shown}: no host")
    if _IPV4.fullmatch(host):
        if not is_ip_literal(host):
            raise ValueError(f"{shown}: bad IPv4 address {host!r}")
    elif not _HOSTNAME.fullmatch(host):
        raise ValueError(f"{shown}: bad host {host!r}")
    if colon and not port_text:
        raise ValueError(f"{shown}: empty port")
    return host, port_text


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_uri_lenient(text: str) -> SipUri:
    """Split any URI (or a whole name-addr) into its parts; never raises.

    Missing or unreadable parts come back empty; a ``tel:`` URI's number is its user part, as
    in Kamailio. The port is kept as text; ``port`` is 0 unless the text is a number.
    """
    # runs for every call (hashing, route matching): no work for parts that are absent
    text = text.strip()
    if "<" in text:
        text = text.split("<", 1)[1].split(">", 1)[0].strip()
    scheme, sep, rest = text.partition(":")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme == "tel":
        number, _, params = rest.partition(";")
        return SipUri(scheme, number, params=_lenient_params(params))
    # like Kamailio's parser: a '@' after a '?' belongs to the headers, not to a user part
    at = rest.find("@")
    user = password = ""
    if at != -1 and rest.find("?", 0, at) == -1:
        user = rest[:at]
        if ":" in user:
            user, _, password = user.partition(":")
        rest = rest[at + 1:]
    headers = ""
    if "?" in rest:
        rest, _, headers = rest.partition("?")
    if ">" in rest:
        rest = rest.split(">", 1)[0]
    hostport, _, params = rest.partition(";")
    if hostport[:1] == "[":
        close = hostport.find("]")
        host = hostport[1:close] if close != -1 else hostport[1:]
        tail = hostport[close + 1:] if close != -1 else ""
        port_text = tail[1:] if tail[:1] == ":" else ""
    else:
        host, _, port_text = hostport.partition(":")
    port = int(port_text) if port_text and len(port_text) <= 5 and port_text.isdigit() else 0
    return SipUri(scheme, user, password, host, port, port_text, _lenient_params(params) if params else (), headers)


def _lenient_params(text: str) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    out = []
    for item in text.split(";"):
        name, _, value = item.partition("=")
        if name:
            out.append((name.strip().lower(), value.strip()))
    return tuple(out)


class NameAddr(NamedTuple):
    """A From/To/Contact value: ``"Alice" <sip:alice@x>;tag=1`` or ``sip:alice@x;tag=1``.

    ``display`` is the display name as written (quotes removed, escapes kept); ``uri`` the URI
    text; ``params`` the header parameters after it (``tag`` ...), lower-cased names.
    Immutable; a tuple, so cheap to make (every call's From and To are split).
    """

    display: str
    uri: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None


def parse_name_addr(value: str) -> NameAddr:
    """Split a name-addr / addr-spec header value; lenient (never raises)."""
    value = value.strip()
    lt = _unquoted_find(value, "<")
    if lt >= 0:
        display = value[:lt].strip()
        if len(display) >= 2 and display[0] == '"' and display[-1] == '"':
            display = display[1:-1]
        gt = value.find(">", lt)
        uri = value[lt + 1:gt if gt >= 0 else len(value)].strip()
        tail = value[gt + 1:] if gt >= 0 else ""
        return NameAddr(display, uri, _lenient_params(tail.lstrip().removeprefix(";")))
    # addr-spec: parameters after the URI belong to the header (RFC 3261 §20.10)
    uri, _, tail = value.partition(";")
    return NameAddr("", uri.strip(), _lenient_params(tail))


def name_addr_uri(value: str) -> str:
    """The URI of a From/To/Contact value: ``parse_name_addr(value).uri`` without the work of
    splitting the display name and parameters (it runs twice for every incoming call)."""
    lt = _unquoted_find(value, "<")
    if lt >= 0:
        gt = value.find(">", lt)
        return value[lt + 1:gt if gt >= 0 else len(value)].strip()
    return value.split(";", 1)[0].strip()


def _unquoted_find(text: str, char: str) -> int:
    """Index of ``char`` outside a quoted string (RFC 3261 ``quoted-string``, ``\\`` escapes
    inside it), or -1; jumps from quote to quote with ``str.find`` (it runs for every call)."""
    if '"' not in text:
        return text.find(char)
    start = 0
    while True:
        found = text.find(char, start)
        quote = text.find('"', start)
        if found == -1 or quote == -1 or found < quote:
            return found
        end = quote
        while True:  # the closing quote: one not escaped by an odd run of backslashes
            end = text.find('"', end + 1)
            if end == -1:
                return -1  # unterminated: the rest is quoted
            backslashes = end - 1
            while backslashes > quote and text[backslashes] == "\\":
                backslashes -= 1
            if (end - 1 - backslashes) % 2 == 0:
                break
        start = end + 1


def _shown(text: str, limit: int = 80) -> str:
    """``text`` fit for an error message: escaped and bounded."""
    if text.isascii() and text.isprintable():  # the usual case: parse_uri computes this for every URI
        return text if len(text) <= limit else text[:limit] + "..."
    out = text.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
    out = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in out)
    return out if len(out) <= limit else out[:limit] + "..."
