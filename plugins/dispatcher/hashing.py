"""Kamailio's dispatcher hash (``ds_get_hash``) and the URI keys it is fed with.

Hash-based algorithms (0 Call-ID, 1 From, 2 To, 3 R-URI, 5 auth user, 7 template) map a
string to an array index with ``ds_get_hash(x, y) % nr``. Reproducing Kamailio's routing
decisions needs the same 32-bit arithmetic, including C's *signed* ``char``: a byte >= 0x80
is sign-extended before it is shifted and added (x86-64 behaviour, verified against
Kamailio 5.6.3's ``dispatcher.hash`` RPC).
"""

from __future__ import annotations

import struct
from typing import NamedTuple

_MASK = 0xFFFFFFFF
_DEFAULT_PORTS = {"sip": 5060, "sips": 5061}


def _sc(byte: int) -> int:
    """A byte as C's signed ``char``."""
    return byte - 256 if byte >= 0x80 else byte


def _add_part(h: int, data: bytes) -> int:
    """One ``x`` or ``y`` round of ``ds_get_hash``: 4-byte chunks, then the 0..3 byte tail."""
    n = len(data)
    p = 0
    if data.isascii():
        # fast path: below 0x80 a signed char equals the byte, so a chunk is a big-endian word
        words = n // 4
        for v in struct.unpack_from(f">{words}I", data):
            h = (h + (v ^ (v >> 3))) & _MASK
        p = words * 4
    while p + 4 <= n:
        b0, b1, b2, b3 = (_sc(b) for b in data[p : p + 4])
        v = ((b0 << 24) + (b1 << 16) + (b2 << 8) + b3) & _MASK
        h = (h + (v ^ (v >> 3))) & _MASK
        p += 4
    v = 0
    for byte in data[p:]:
        v = ((v << 8) + _sc(byte)) & _MASK
    # Kamailio adds the tail even when it is empty (v == 0 then adds nothing)
    return (h + (v ^ (v >> 3))) & _MASK


def ds_get_hash(x: bytes, y: bytes | None = None) -> int:
    """Kamailio's ``ds_get_hash(x, y)``: an unsigned 32-bit hash, never 0 (0 becomes 1).

    :param x: first key (Call-ID, URI user, template output, ...).
    :param y: optional second key (URI ``host[:port]``); ``None`` and ``b""`` hash the same.
    """
    h = _add_part(0, x)
    if y is not None:
        h = _add_part(h, y)
    h = ((h + (h >> 11)) + ((h >> 13) + (h >> 23))) & _MASK
    return h or 1


class UriParts(NamedTuple):  # a tuple: built for every hashed call, cheaper than a dataclass
    """The pieces of a SIP URI that hashing and route matching look at (text as written)."""

    scheme: str  #: lower-cased: ``sip``, ``sips``, ``tel``, ...
    user: str  #: without password; ``""`` when absent
    host: str  #: IPv6 references keep their brackets, like Kamailio's parser
    port: str  #: port text as written; ``""`` when absent


def parse_uri(uri: str) -> UriParts:
    """Split ``[name-addr <]scheme:[user[:password]@]host[:port][;params][?headers][>]``.

    Lenient by design (it runs on every call): never raises; missing parts come back empty.
    A ``tel:`` URI's number is its user part, as in Kamailio.
    """
    text = uri.strip()
    if "<" in text:
        text = text.split("<", 1)[1].split(">", 1)[0].strip()
    scheme, sep, rest = text.partition(":")
    if not sep:
        scheme, rest = "", text
    scheme = scheme.lower()
    if scheme == "tel":
        return UriParts(scheme, rest.split(";", 1)[0], "", "")
    # the user part may hold ';' (user parameters) but not '@'; the host part ends at ';' '?'
    at = rest.find("@")
    end_of_user_ok = at != -1 and "?" not in rest[:at]
    if end_of_user_ok:
        userinfo, hostpart = rest[:at], rest[at + 1 :]
        user = userinfo.split(":", 1)[0]
    else:
        user, hostpart = "", rest
    for stop in (";", "?", ">"):
        hostpart = hostpart.split(stop, 1)[0]
    if hostpart.startswith("["):
        close = hostpart.find("]")
        host = hostpart[: close + 1] if close != -1 else hostpart
        tail = hostpart[len(host) :]
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = hostpart.partition(":")
    return UriParts(scheme, user, host, port)


def uri_hash_keys(uri: str, user_only: bool) -> tuple[bytes, bytes]:
    """Kamailio's ``get_uri_hash_keys()``: ``(user, host[:port])`` as UTF-8 bytes.

    The port is kept only when one is written and it differs from the scheme's default
    (5060, or 5061 for ``sips:``). ``user_only`` (modparam ``flags`` bit 1) empties the
    second key.
    """
    parts = parse_uri(uri)
    key1 = parts.user.encode()
    if user_only:
        return key1, b""
    key2 = parts.host
    if parts.port:
        default = _DEFAULT_PORTS.get(parts.scheme, 5060)
        number = int(parts.port) if parts.port.isdigit() else None
        if number != default:
            key2 = f"{parts.host}:{parts.port}"
    return key1, key2.encode()
