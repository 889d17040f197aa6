"""``b2bua.capabilities``: pjsip's capability headers trimmed in place (a header built in Python
memory with pjsip's layout stands in for the endpoint's)."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from b2bua.capabilities import (
    PJSIP_H_ACCEPT,
    PJSIP_H_ALLOW,
    PJSIP_H_SUPPORTED,
    _ArrayHeader,
    clear_allow_events,
    trim_accept,
    trim_allow,
    trim_supported,
)


class FakeLib:
    """The one pjsip function the module calls, answering with headers of our own."""

    def __init__(self, headers: dict[int, _ArrayHeader]) -> None:
        def get_capability(endpt: Any, htype: int, name: Any) -> int | None:
            found = headers.get(htype)
            return ctypes.addressof(found) if found is not None else None

        self.pjsip_endpt_get_capability = get_capability  # a function: argtypes can be set on it


def header(htype: int, name: bytes, values: list[bytes], keep: list[Any]) -> _ArrayHeader:
    h = _ArrayHeader()
    h.type = htype
    for buf_of, field in ((name, h.name), *zip(values, h.values, strict=False)):
        buf = ctypes.create_string_buffer(buf_of)
        keep.append(buf)
        field.ptr, field.slen = ctypes.addressof(buf), len(buf_of)
    h.count = len(values)
    return h


def values(h: _ArrayHeader) -> list[bytes]:
    return [ctypes.string_at(v.ptr, v.slen) for v in h.values[:h.count]]


def test_allow_keeps_what_the_b2bua_takes_in_pjsips_order() -> None:
    keep: list[Any] = []
    pjsip = [b"PRACK", b"INVITE", b"ACK", b"BYE", b"CANCEL", b"UPDATE", b"INFO", b"SUBSCRIBE", b"NOTIFY",
             b"REFER", b"MESSAGE", b"OPTIONS"]
    allow = header(PJSIP_H_ALLOW, b"Allow", pjsip, keep)
    lib = FakeLib({PJSIP_H_ALLOW: allow})
    assert trim_allow(lib, 1) == ("PRACK", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "INFO", "OPTIONS")  # type: ignore[arg-type]
    assert values(allow) == [b"PRACK", b"INVITE", b"ACK", b"BYE", b"CANCEL", b"UPDATE", b"INFO", b"OPTIONS"]
    assert trim_allow(lib, 1) == ("PRACK", "INVITE", "ACK", "BYE", "CANCEL", "UPDATE", "INFO", "OPTIONS")  # type: ignore[arg-type]


def test_supported_tags_compare_without_case() -> None:
    keep: list[Any] = []
    supported = header(PJSIP_H_SUPPORTED, b"Supported", [b"replaces", b"100REL", b"timer", b"norefersub",
                                                          b"trickle-ice"], keep)
    assert trim_supported(FakeLib({PJSIP_H_SUPPORTED: supported}), 1) == ("100REL", "timer")  # type: ignore[arg-type]
    assert supported.count == 2


def test_accept_keeps_sdp_only() -> None:
    keep: list[Any] = []
    pjsip = [b"application/sdp", b"application/pidf+xml", b"application/xpidf+xml",
             b"application/simple-message-summary", b"message/sipfrag;version=2.0",
             b"application/im-iscomposing+xml", b"text/plain"]
    accept = header(PJSIP_H_ACCEPT, b"Accept", pjsip, keep)
    assert trim_accept(FakeLib({PJSIP_H_ACCEPT: accept}), 1) == ("application/sdp",)  # type: ignore[arg-type]
    assert values(accept) == [b"application/sdp"]


@pytest.mark.parametrize(("headers", "message"), [
    ({}, "pjsip has no Allow capability"),
    ({PJSIP_H_ALLOW: (PJSIP_H_ALLOW, b"Accept", [b"INVITE"])}, "pjsip's Allow capability is not laid out as expected"),
    ({PJSIP_H_ALLOW: (PJSIP_H_SUPPORTED, b"Allow", [b"INVITE"])}, "not laid out as expected"),
    ({PJSIP_H_ALLOW: (PJSIP_H_ALLOW, b"Allow", [])}, "not laid out as expected (b'Allow', 0)"),
])
def test_a_header_that_is_not_what_pjsip_lays_out_stops_the_start(headers: dict[int, Any], message: str) -> None:
    keep: list[Any] = []
    lib = FakeLib({k: header(htype, name, tokens, keep) for k, (htype, name, tokens) in headers.items()})
    with pytest.raises(RuntimeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        trim_allow(lib, 1)  # type: ignore[arg-type]


def test_allow_events_is_emptied() -> None:
    keep: list[Any] = []
    events = header(99, b"Allow-Events", [b"presence", b"dialog", b"message-summary", b"refer"], keep)

    def get_allow_events(module: Any) -> int:
        return ctypes.addressof(events)

    lib = type("Lib", (), {"pjsip_evsub_get_allow_events_hdr": staticmethod(get_allow_events)})()
    clear_allow_events(lib)
    assert events.count == 0
