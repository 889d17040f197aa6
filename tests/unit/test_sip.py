"""SIP text helpers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from b2bua import sip

INVITE = (
    "INVITE sip:4930123@b2bua.example;user=phone SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.2:5060;branch=z9hG4bK1\r\n"
    'f: "Alice" <sip:alice@example.com>;tag=1\r\n'
    "To: <sip:4930123@b2bua.example>\r\n"
    "i: abc@127.0.0.2\r\n"
    "X-Long: one\r\n two\r\n"
    "X-Long: three\r\n"
    "Content-Length: 0\r\n\r\nv=0\r\n"
)


def test_parse_message() -> None:
    start, headers = sip.parse_message(INVITE)
    assert start == "INVITE sip:4930123@b2bua.example;user=phone SIP/2.0"
    assert headers["call-id"] == ("abc@127.0.0.2",)
    assert headers["x-long"] == ("one two", "three")


@pytest.mark.parametrize(
    ("a_ruri", "dest", "expected"),
    [
        ("sip:4930123@b2bua", "sip:10.0.0.1:5080;transport=tcp", "sip:4930123@10.0.0.1:5080;transport=tcp"),
        ("sip:4930123@b2bua;user=phone", "sip:gw.example", "sip:4930123@gw.example"),
        ("sip:b2bua", "sip:10.0.0.1", "sip:10.0.0.1"),
        ("sip:1@b2bua", "sip:fixed@10.0.0.1", "sip:fixed@10.0.0.1"),
        ("sip:1@b2bua", "sips:10.0.0.1:5061", "sips:1@10.0.0.1:5061"),
        ("sip:1@b2bua", "SIP:[::1]:5080", "sip:1@[::1]:5080"),
        ("tel:+4930123", "sip:gw", "sip:+4930123@gw"),
        ("sip:1@b2bua", "tel:+4930", "tel:+4930"),
        ("sip:1@b2bua", "sip:bad uri@", "sip:bad uri@"),
    ],
)
def test_b_leg_request_uri(a_ruri: str, dest: str, expected: str) -> None:
    assert sip.b_leg_request_uri(a_ruri, dest) == expected


@pytest.mark.parametrize(("header", "name"), [
    ('"Alice Example" <sip:+4930111@pbx>;tag=1', "Alice Example"),
    ('"Alice \\"A\\" \\\\ Smith" <sip:a@b>', 'Alice "A" \\ Smith'),
    ("Bob <sip:bob@pbx>", "Bob"),
    ('"J\u00fcrgen" <sip:j@pbx>', "J\u00fcrgen"),
    ("sip:carol@pbx;tag=2", ""),
    ("<sip:dave@pbx>", ""),
    ('"" <sip:eve@pbx>', ""),
])
def test_display_name(header: str, name: str) -> None:
    assert sip.display_name(header) == name


@pytest.mark.parametrize("name", ["Alice Example", 'Alice "A" \\ Smith', "J\u00fcrgen", ""])
def test_name_addr_round_trips_the_display_name(name: str) -> None:
    value = sip.name_addr(name, "sip:a@b")
    assert value.endswith("<sip:a@b>") and sip.display_name(value) == name


@pytest.mark.parametrize(("to", "ruri", "expected"), [
    ("sip:+4930222@b2bua.example;user=phone", "sip:+4930222@10.0.0.1:5080;transport=tcp",
     "sip:+4930222@10.0.0.1:5080;user=phone;transport=tcp"),
    ("sip:bob@b2bua:5060;transport=udp", "sip:bob@gw.example", "sip:bob@gw.example"),
    ("sip:bob@b2bua", "sip:bob@[2001:db8::1]:5070", "sip:bob@[2001:db8::1]:5070"),
    ("sip:bob@b2bua?X=1", "sip:bob@gw", "sip:bob@gw"),
    ("tel:+4930222", "sip:+4930222@gw", "tel:+4930222"),
    ("sip:bob@b2bua", "tel:+4930", "sip:bob@b2bua"),
])
def test_with_host_of(to: str, ruri: str, expected: str) -> None:
    assert sip.with_host_of(to, ruri) == expected


def test_printable_lines_keeps_a_dump_readable_and_escapes_what_could_forge_a_line() -> None:
    dump = "RX 512 bytes Request msg OPTIONS\r\nVia: SIP/2.0/UDP 10.0.0.1\r\n\tcontinued\r\n"
    assert sip.printable_lines(dump) == dump.replace("\r\n", "\n")
    hostile = "X-A: \x1b[2J\x1b[H2026-01-01 ERROR forged\rok\x00\u202e\udcff\r\n"
    shown = sip.printable_lines(hostile)
    assert shown == "X-A: \\x1b[2J\\x1b[H2026-01-01 ERROR forged\\x0dok\\x00\\u202e\\xff\n"
    assert shown.replace("\n", "").isprintable()


@given(st.text())
def test_printable_lines_leaves_only_printables_line_breaks_and_tabs(text: str) -> None:
    assert all(ch.isprintable() or ch in "\n\t" for ch in sip.printable_lines(text))


@pytest.mark.parametrize("method", ["OPTIONS", "INFO", "NOTIFY", "X-PING", "INVITE"])
def test_a_request_method_that_can_be_sent_on_its_own(method: str) -> None:
    assert sip.request_method_problem(method) == ""


@pytest.mark.parametrize(("method", "why"), [
    ("ACK", "an ACK is sent only for an INVITE's answer"),  # pjsip's transaction layer asserts on it
    ("ack", "an ACK is sent only for an INVITE's answer"),  # pjsip matches methods regardless of case
    ("", "'' is not a SIP method"),
    ("OPTIONS\r\nX-Injected: 1", r"'OPTIONS\x0d\x0aX-Injected: 1' is not a SIP method"),
    ("OPT IONS", "'OPT IONS' is not a SIP method"),
])
def test_a_request_method_that_cannot(method: str, why: str) -> None:
    assert why in sip.request_method_problem(method)
