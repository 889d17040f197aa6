"""Kamailio's dispatcher hash (``ds_get_hash``) and the URI keys it is fed with.

Hash-based algorithms (0 Call-ID, 1 From, 2 To, 3 R-URI, 5 auth user, 7 template) map a
string to an array index with ``ds_get_hash(x, y) % nr``. Reproducing Kamailio's routing
decisions needs the same 32-bit arithmetic, including C's *signed* ``char``: a byte >= 0x80
is sign-extended before it is shifted and added (x86-64 behaviour, verified against
Kamailio 5.6.3's ``dispatcher.hash`` RPC).
"""

from __future__ import annotations

import struct

from b2bua.sipuri import DEFAULT_PORTS, parse_uri_lenient

_MASK = 0xFFFFFFFF


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


def uri_hash_keys(uri: str, user_only: bool) -> tuple[bytes, bytes]:
    """Kamailio's ``get_uri_hash_keys()``: ``(user, host[:port])`` as UTF-8 bytes.

    The URI is split by :func:`b2bua.sipuri.parse_uri_lenient` (it runs for every call and
    never raises); the user part is taken as written (no password), the host as Kamailio's
    parser keeps it (an IPv6 reference in brackets). The port is kept only when one is written
    and it differs from the scheme's default (5060, or 5061 for ``sips:``). ``user_only``
    (modparam ``flags`` bit 1) empties the second key.
    """
    parts = parse_uri_lenient(uri)
    key1 = parts.user.encode()
    if user_only:
        return key1, b""
    key2 = parts.host_ref
    if parts.port_text and parts.port != DEFAULT_PORTS.get(parts.scheme, 5060):
        key2 = f"{key2}:{parts.port_text}"
    return key1, key2.encode()
