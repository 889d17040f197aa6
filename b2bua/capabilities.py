"""The endpoint's ``Allow`` header: trimmed to the methods the B2BUA takes.

pjsua registers modules for presence (SUBSCRIBE, NOTIFY), transfer (REFER) and instant messages
(MESSAGE), and each adds its methods to the endpoint's ``Allow`` capability, which pjsip copies
into every INVITE, 2xx and OPTIONS answer. None of them is a call's: the early filter refuses
them (``b2bua.admission``), so advertising them only invites requests that are turned away.
The header lives in pjsip's capability list; its values are reordered in place (pointers into
the endpoint's pool), once, on the loop thread before any transport exists.
"""

from __future__ import annotations

import ctypes

from b2bua.sip import ALLOWED_METHODS

#: pjsip_hdr_e's PJSIP_H_ALLOW (sip_msg.h: "DO NOT CHANGE THE VALUE/ORDER OF THE HEADER IDs")
PJSIP_H_ALLOW = 4
#: PJSIP_GENERIC_ARRAY_MAX_COUNT (sip_msg.h)
_MAX_VALUES = 32


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("slen", ctypes.c_ssize_t)]


class _ArrayHeader(ctypes.Structure):
    """``pjsip_generic_array_hdr``: PJSIP_DECL_HDR_MEMBER, then the values."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("type", ctypes.c_int),
                ("name", _PjStr), ("sname", _PjStr), ("vptr", ctypes.c_void_p),
                ("count", ctypes.c_uint), ("values", _PjStr * _MAX_VALUES)]


def allow_header(lib: ctypes.CDLL, endpt: int) -> int:
    """The address of the endpoint's ``Allow`` capability header (0: none)."""
    lib.pjsip_endpt_get_capability.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
    lib.pjsip_endpt_get_capability.restype = ctypes.c_void_p
    return lib.pjsip_endpt_get_capability(endpt, PJSIP_H_ALLOW, None) or 0


def trim_allow(lib: ctypes.CDLL, endpt: int, allowed: tuple[str, ...] = ALLOWED_METHODS) -> tuple[str, ...]:
    """Keep only ``allowed`` in the endpoint's ``Allow`` (pjsip's order); returns what it lists now.

    :raises RuntimeError: the header is missing or does not look like a method list (a pjsip
        whose layout differs from the one this was written for: better to stop than to guess).
    """
    address = allow_header(lib, endpt)
    if not address:
        raise RuntimeError("pjsip has no Allow capability (call after libInit)")
    header = _ArrayHeader.from_address(address)
    name = ctypes.string_at(header.name.ptr, header.name.slen) if header.name.ptr else b""
    if header.type != PJSIP_H_ALLOW or name != b"Allow" or not 0 < header.count <= _MAX_VALUES:
        raise RuntimeError(f"pjsip's Allow capability is not laid out as expected ({name!r}, {header.count})")
    wanted = set(allowed)
    kept = []
    for i in range(header.count):
        value = header.values[i]
        if ctypes.string_at(value.ptr, value.slen).decode("ascii", "replace") in wanted:
            kept.append((value.ptr, value.slen))
    for i, (ptr, slen) in enumerate(kept):
        header.values[i].ptr, header.values[i].slen = ptr, slen
    header.count = len(kept)
    return tuple(ctypes.string_at(header.values[i].ptr, header.values[i].slen).decode("ascii")
                 for i in range(header.count))
