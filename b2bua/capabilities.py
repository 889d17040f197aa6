"""The endpoint's ``Allow``, ``Supported`` and ``Accept`` headers: trimmed to what the B2BUA takes.

pjsua registers modules for presence (SUBSCRIBE, NOTIFY), transfer (REFER) and instant messages
(MESSAGE), and each adds its methods to the endpoint's ``Allow`` capability, and its option
tags (replaces, norefersub, trickle-ice) to ``Supported``; pjsip copies both into every INVITE,
2xx and OPTIONS answer. None of them is a call's: the early filter refuses those methods and
any INVITE with Replaces (``b2bua.admission``), so advertising them only invites requests that
are turned away. pjsip also reads ``Supported`` to judge a request's ``Require``: trimmed, an
INVITE that requires ``replaces`` gets 420 Bad Extension. The headers live in pjsip's
capability list; their values are reordered in place (pointers into the endpoint's pool), once,
on the loop thread before any transport exists. The event module's ``Allow-Events`` (presence,
dialog, message-summary, refer), which pjsua puts in its OPTIONS answer, is emptied: pjsua then
leaves it out (patch 0019). ``Accept`` (in the OPTIONS answer) listed the bodies of those
modules too (PIDF, message summaries, sipfrag, text messages): only SDP is left.
"""

from __future__ import annotations

import ctypes

from b2bua.rxfilter import PjStr
from b2bua.sip import ACCEPTED_BODIES, ALLOWED_METHODS, SUPPORTED_TAGS

#: pjsip_hdr_e's values (sip_msg.h: "DO NOT CHANGE THE VALUE/ORDER OF THE HEADER IDs")
PJSIP_H_ACCEPT = 0
PJSIP_H_ALLOW = 4
PJSIP_H_SUPPORTED = 36
_NAMES = {PJSIP_H_ACCEPT: b"Accept", PJSIP_H_ALLOW: b"Allow", PJSIP_H_SUPPORTED: b"Supported"}
#: PJSIP_GENERIC_ARRAY_MAX_COUNT (sip_msg.h)
_MAX_VALUES = 32


class _ArrayHeader(ctypes.Structure):
    """``pjsip_generic_array_hdr``: PJSIP_DECL_HDR_MEMBER, then the values."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("type", ctypes.c_int),
                ("name", PjStr), ("sname", PjStr), ("vptr", ctypes.c_void_p),
                ("count", ctypes.c_uint), ("values", PjStr * _MAX_VALUES)]


def allow_header(lib: ctypes.CDLL, endpt: int) -> int:
    """The address of the endpoint's ``Allow`` capability header (0: none)."""
    return _capability(lib, endpt, PJSIP_H_ALLOW)


def trim_allow(lib: ctypes.CDLL, endpt: int, allowed: tuple[str, ...] = ALLOWED_METHODS) -> tuple[str, ...]:
    """Keep only ``allowed`` in the endpoint's ``Allow`` (pjsip's order); returns what it lists now."""
    return _trim(lib, endpt, PJSIP_H_ALLOW, allowed)


def trim_supported(lib: ctypes.CDLL, endpt: int, tags: tuple[str, ...] = SUPPORTED_TAGS) -> tuple[str, ...]:
    """Keep only ``tags`` in the endpoint's ``Supported``; returns what it lists now."""
    return _trim(lib, endpt, PJSIP_H_SUPPORTED, tags)


def trim_accept(lib: ctypes.CDLL, endpt: int, bodies: tuple[str, ...] = ACCEPTED_BODIES) -> tuple[str, ...]:
    """Keep only ``bodies`` in the endpoint's ``Accept``; returns what it lists now."""
    return _trim(lib, endpt, PJSIP_H_ACCEPT, bodies)


def _capability(lib: ctypes.CDLL, endpt: int, htype: int) -> int:
    lib.pjsip_endpt_get_capability.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.pjsip_endpt_get_capability.restype = ctypes.c_void_p
    return lib.pjsip_endpt_get_capability(endpt, htype, None) or 0


def _trim(lib: ctypes.CDLL, endpt: int, htype: int, keep: tuple[str, ...]) -> tuple[str, ...]:
    """Keep only ``keep`` (case-insensitively) in the capability header ``htype``, in pjsip's order.

    :raises RuntimeError: the header is missing or does not look like a list of tokens (a pjsip
        whose layout differs from the one this was written for: better to stop than to guess).
    """
    address = _capability(lib, endpt, htype)
    if not address:
        raise RuntimeError(f"pjsip has no {_NAMES[htype].decode()} capability (call after libInit)")
    header = _ArrayHeader.from_address(address)
    name = ctypes.string_at(header.name.ptr, header.name.slen) if header.name.ptr else b""
    if header.type != htype or name != _NAMES[htype] or not 0 < header.count <= _MAX_VALUES:
        raise RuntimeError(f"pjsip's {_NAMES[htype].decode()} capability is not laid out as expected "
                           f"({name!r}, {header.count})")
    wanted = {token.lower() for token in keep}
    kept = [(v.ptr, v.slen) for v in header.values[:header.count]
            if ctypes.string_at(v.ptr, v.slen).decode("ascii", "replace").lower() in wanted]
    for i, (ptr, slen) in enumerate(kept):
        header.values[i].ptr, header.values[i].slen = ptr, slen
    header.count = len(kept)
    return tuple(ctypes.string_at(v.ptr, v.slen).decode("ascii") for v in header.values[:header.count])


def clear_allow_events(lib: ctypes.CDLL) -> None:
    """Empty pjsip's event module ``Allow-Events``: the B2BUA takes no event package.

    :raises RuntimeError: the header does not look like pjsip's.
    """
    lib.pjsip_evsub_get_allow_events_hdr.argtypes = [ctypes.c_void_p]
    lib.pjsip_evsub_get_allow_events_hdr.restype = ctypes.c_void_p
    address = lib.pjsip_evsub_get_allow_events_hdr(None)
    if not address:
        return  # no event module: nothing advertised
    header = _ArrayHeader.from_address(address)
    name = ctypes.string_at(header.name.ptr, header.name.slen) if header.name.ptr else b""
    if name != b"Allow-Events" or header.count > _MAX_VALUES:
        raise RuntimeError(f"pjsip's Allow-Events is not laid out as expected ({name!r}, {header.count})")
    header.count = 0
