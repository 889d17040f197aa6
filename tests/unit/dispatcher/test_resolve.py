"""Destination URIs and load-time resolution, with an injected resolver (no DNS traffic)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import pytest

from b2bua.sipuri import SipUri
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.resolve import (
    ResolveError,
    normalize_uri,
    parse_uri,
    resolve_destinations,
)


def _info(*addrs: str) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for a in addrs:
        if ":" in a:
            out.append((socket.AF_INET6, socket.SOCK_DGRAM, 17, "", (a, 5060, 0, 0)))
        else:
            out.append((socket.AF_INET, socket.SOCK_DGRAM, 17, "", (a, 5060)))
    return out


class FakeResolver:
    """getaddrinfo stand-in: a fixed table; records every lookup."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> Sequence[tuple[Any, ...]]:
        self.calls.append((host, port))
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return _info(*self.table[host])


def never(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    raise AssertionError(f"unexpected lookup of {host}")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("sip:10.0.0.1", SipUri("sip", host="10.0.0.1")),
        ("sip:10.0.0.1:5080", SipUri("sip", host="10.0.0.1", port=5080, port_text="5080")),
        ("SIP:GW.example.com", SipUri("sip", host="GW.example.com")),
        ("sip:alice@gw.example.com:5070;transport=TCP;lr",
         SipUri("sip", "alice", "", "gw.example.com", 5070, "5070", (("transport", "TCP"), ("lr", "")))),
        ("sip:[2001:db8::1]:5062", SipUri("sip", host="2001:db8::1", port=5062, port_text="5062")),
        ("sip:[::1]", SipUri("sip", host="::1")),
        ("sip:+4930123@gw.example.com.;user=phone",
         SipUri("sip", "+4930123", host="gw.example.com.", params=(("user", "phone"),))),
        ("sip:gw.example.com;user=phone", SipUri("sip", host="gw.example.com", params=(("user", "phone"),))),
    ],
)
def test_parse_uri(uri: str, expected: SipUri) -> None:
    assert parse_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "transport", "port"),
    [
        ("sip:a.example", "udp", 5060),
        ("sip:a.example;transport=TCP", "tcp", 5060),
        ("sip:a.example:5080;transport=udp", "udp", 5080),
    ],
)
def test_transport_and_default_port(uri: str, transport: str, port: int) -> None:
    parsed = parse_uri(uri)
    assert (parsed.transport, parsed.effective_port) == (transport, port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sip:10.0.0.1", "sip:10.0.0.1"),
        ("10.0.0.1", "sip:10.0.0.1"),
        ("gw.example.com:5080;transport=tcp", "sip:gw.example.com:5080;transport=tcp"),
        ("localhost:5060", "sip:localhost:5060"),
        ("[2001:db8::1]:5060", "sip:[2001:db8::1]:5060"),
        (" sip:gw.example.com;lr ", "sip:gw.example.com;lr"),
    ],
)
def test_normalize_uri(text: str, expected: str) -> None:
    assert normalize_uri(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty URI"),
        ("tel:+4930123", "tel:+4930123: URI scheme 'tel' is not sip"),
        ("mailto:a@b.c", "URI scheme 'mailto'"),
        ("sip:a b", "blanks, control or non-ASCII characters"),
        ("sip:@host", "bad user part"),
        ("sip:host:", "empty port"),
        ("sip:host;=x", "bad URI parameter '=x'"),
        ("sip:[::1]x", "unexpected 'x' after the IPv6 reference"),
        ("sip:-bad-.example", "bad host"),
        ("sip:[2001:db8::1", "bad IPv6 reference"),
        # what the build cannot reach: no WebSocket
        ("sip:gw.example.com;transport=ws", "transport 'ws' is not one this build can use"),
        ("ws:gw.example.com", "URI scheme 'ws' is not sip"),
        ("wss://gw.example.com/", "URI scheme 'wss' is not sip"),
        # injection: headers, line breaks, control characters
        ("sip:gw.example.com?X-Injected=yes", "URI headers (?X-Injected=yes) are not allowed in a destination"),
        ("sip:gw.example.com\r\nX-Injected: yes", "sip:gw.example.com\\x0d\\x0aX-Injected:"),
        ("sip:gw.example.com\x1b[2J", "blanks, control or non-ASCII characters"),
        ("sip:gw.ex\u00e4mple.com", "blanks, control or non-ASCII characters"),
        ("sip:alice:secret@gw.example.com", "a password in the URI would be sent in clear"),
        # parameters: an explicit list, each once
        ("sip:gw.example.com;maddr=10.9.9.9", "URI parameter 'maddr' is not allowed in a destination"
         " (allowed: transport, lr, user)"),
        ("sip:gw.example.com;x-carrier=a", "URI parameter 'x-carrier' is not allowed"),
        ("sip:gw.example.com;transport=udp;transport=tcp", "URI parameter 'transport' given twice"),
        ("sip:" + "a" * 2100, "longer than 2048 characters"),
    ],
)
def test_bad_uris(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_uri(text)
    assert reason in str(info.value)
    assert str(info.value).isprintable() and len(str(info.value)) < 300


def test_ip_literals_need_no_lookup() -> None:
    dests = [
        Destination(1, "sip:10.0.0.1", row_id=1),
        Destination(1, "sip:[2001:db8::1]:5080;transport=tcp", row_id=2),
    ]
    out = resolve_destinations(dests, skip_unresolvable=False, resolver=never)
    assert [d.address for d in out] == [
        ("10.0.0.1", 5060, "udp"),
        ("2001:db8::1", 5080, "tcp"),
    ]
    assert [d.uri for d in out] == [d.uri for d in dests]


def test_host_names_are_resolved_ipv4_first_and_once() -> None:
    resolver = FakeResolver({"gw.example.com": ["2001:db8::5", "198.51.100.5"], "v6.example.com": ["2001:db8::6"]})
    dests = [
        Destination(1, "sip:gw.example.com", row_id=1),
        Destination(2, "sip:GW.example.com", row_id=2),
        Destination(1, "sip:v6.example.com:5080;transport=tcp", row_id=3),
    ]
    out = resolve_destinations(dests, skip_unresolvable=False, resolver=resolver)
    assert [d.address for d in out] == [
        ("198.51.100.5", 5060, "udp"),
        ("198.51.100.5", 5060, "udp"),
        ("2001:db8::6", 5080, "tcp"),
    ]
    assert resolver.calls == [("gw.example.com", 5060), ("v6.example.com", 5080)]


def test_nodns_entries_are_kept_unresolved() -> None:
    dest = Destination(1, "sip:not-yet.example", flags=DestFlags.NODNS, row_id=4)
    assert resolve_destinations([dest], skip_unresolvable=False, resolver=never) == [dest]


def test_unresolvable_host_fails_naming_every_destination_and_where() -> None:
    resolver = FakeResolver({"ok.example": ["192.0.2.1"]})
    dests = [
        Destination(1, "sip:ok.example", row_id=1),
        Destination(1, "sip:gone.example", row_id=2),
        Destination(3, "sip:also-gone.example:5080", row_id=7),
    ]
    with pytest.raises(ResolveError) as info:
        resolve_destinations(dests, skip_unresolvable=False, resolver=resolver,
                             location=lambda d: f"dispatcher.list:{d.row_id}")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("dispatcher.list:2: set 1 sip:gone.example: cannot resolve 'gone.example'")
    assert "Name or service not known" in lines[0]
    assert "flag 16" in lines[0]
    assert lines[1].startswith("dispatcher.list:7: set 3 sip:also-gone.example:5080: cannot resolve")


def test_default_location_is_the_row() -> None:
    with pytest.raises(ResolveError, match=r"^row 5: set 1 sip:gone.example"):
        resolve_destinations([Destination(1, "sip:gone.example", row_id=5)], skip_unresolvable=False,
                             resolver=FakeResolver({}))


def test_no_address_is_unresolvable() -> None:
    with pytest.raises(ResolveError, match=r"cannot resolve 'empty.example' \(no address\)"):
        resolve_destinations([Destination(1, "sip:empty.example")], skip_unresolvable=False,
                             resolver=lambda host, port: [])


def test_skip_unresolvable_drops_with_a_warning(warnings: list[str]) -> None:
    resolver = FakeResolver({"ok.example": ["192.0.2.1"]})
    dests = [Destination(1, "sip:gone.example", row_id=1), Destination(1, "sip:ok.example", row_id=2)]
    out = resolve_destinations(dests, skip_unresolvable=True, resolver=resolver)
    assert [d.uri for d in out] == ["sip:ok.example"]
    assert len(warnings) == 1
    assert "row 1: set 1 sip:gone.example: cannot resolve 'gone.example'" in warnings[0]


def test_unicode_error_from_idna_is_unresolvable() -> None:
    def idna_fails(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        raise UnicodeError("label too long")

    with pytest.raises(ResolveError, match="label too long"):
        resolve_destinations([Destination(1, "sip:" + "a" * 70 + ".example")], skip_unresolvable=False,
                             resolver=idna_fails)


def test_real_resolver_on_localhost() -> None:
    (out,) = resolve_destinations([Destination(1, "sip:localhost:5099")], skip_unresolvable=False)
    assert out.address is not None
    assert out.address[0] in ("127.0.0.1", "::1")
    assert out.address[1:] == (5099, "udp")
