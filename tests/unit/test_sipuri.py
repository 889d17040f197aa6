"""The one SIP URI parser: strict for what is passed on, lenient for per-call reads."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from b2bua import sipuri
from b2bua.sipuri import (
    MAX_URI_LENGTH,
    SipUri,
    check_uri,
    is_ip_literal,
    name_addr_uri,
    parse_name_addr,
    parse_uri,
    parse_uri_lenient,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("sip:10.0.0.1", SipUri("sip", host="10.0.0.1")),
    ("SIP:gw.example.com:5080;transport=TCP",
     SipUri("sip", host="gw.example.com", port=5080, port_text="5080", params=(("transport", "TCP"),))),
    ("sips:alice:pw@[2001:db8::1]:5061;lr?X-A=1&Y=%20",
     SipUri("sips", "alice", "pw", "2001:db8::1", 5061, "5061", (("lr", ""),), "X-A=1&Y=%20")),
    ("sip:+49%2030;npdi@h.example.", SipUri("sip", user="+49%2030;npdi", host="h.example.")),
])
def test_strict_parses_well_formed_uris(text: str, expected: SipUri) -> None:
    uri = parse_uri(text)
    assert uri == expected
    assert str(uri) == text.replace("SIP:", "sip:")


def test_uri_properties() -> None:
    uri = parse_uri("sip:u@[::1];transport=tcp")
    assert (uri.transport, uri.effective_port, uri.is_ip, uri.host_ref, uri.hostport) == (
        "tcp", 5060, True, "[::1]", "[::1]")
    assert parse_uri("sips:h").effective_port == 5061
    assert parse_uri("sip:h;transport=tls").effective_port == 5061
    assert parse_uri("sip:h").param("lr") is None
    assert parse_uri("sip:h;LR").param("lr") == ""


@pytest.mark.parametrize(("text", "fault"), [
    ("sip:a@b c", "blanks"),
    ("sip:a@b\r\nX: y", "control"),
    ("sip:\udcff@h", "non-ASCII"),
    ("sip:é@h", "non-ASCII"),
    ("tel:+123", "scheme 'tel'"),
    ("10.0.0.1", "no URI scheme"),
    ("sip:", "no host"),
    ("sip:a@", "no host"),
    ("sip:@h", "bad user"),
    ("sip:a<b@h", "bad user"),
    ("sip:h:0", "bad port"),
    ("sip:h:70000", "bad port"),
    ("sip:h:", "empty port"),
    ("sip:h:5x", "bad port"),
    ("sip:[::1", "IPv6"),
    ("sip:[zz::1]", "IPv6"),
    ("sip:[::1]x", "unexpected"),
    ("sip:1.2.3.256", "IPv4"),
    ("sip:-h.example", "bad host"),
    ("sip:h_x.example", "bad host"),
    ("sip:h;a=<b>", "parameter"),
    ("sip:h;=b", "parameter"),
    ("sip:h?X", "URI header"),
    ("sip:h?=y", "URI header"),
    ("sip:" + "a" * MAX_URI_LENGTH, "longer than"),
])
def test_strict_refuses_and_says_why(text: str, fault: str) -> None:
    with pytest.raises(ValueError, match=fault) as info:
        parse_uri(text)
    message = str(info.value)
    assert message.isprintable() and len(message) < 200  # safe to log or print


def test_strict_can_narrow_the_schemes() -> None:
    assert parse_uri("sip:h", schemes=("sip",)).scheme == "sip"
    with pytest.raises(ValueError):
        parse_uri("sips:h", schemes=("sip",))


@pytest.mark.parametrize(("text", "scheme", "user", "host", "port_text"), [
    ('"Bob" <sip:bob@x:5060;transport=tcp>;tag=1', "sip", "bob", "x", "5060"),
    ("tel:+123;npdi", "tel", "+123", "", ""),
    ("sip:a?b@c?d", "sip", "", "a", ""),  # a '@' after '?' is in the headers (Kamailio)
    ("<sip:[::1]:5070>", "sip", "", "::1", "5070"),
    ("sip:u:pw@h:port", "sip", "u", "h", "port"),
    ("junk", "", "", "junk", ""),
    ("", "", "", "", ""),
])
def test_lenient_splits_anything(text: str, scheme: str, user: str, host: str, port_text: str) -> None:
    uri = parse_uri_lenient(text)
    assert (uri.scheme, uri.user, uri.host, uri.port_text) == (scheme, user, host, port_text)


@given(st.text(max_size=300))
def test_lenient_never_raises(text: str) -> None:
    parse_uri_lenient(text)


@given(st.text(max_size=300))
def test_strict_raises_only_value_error(text: str) -> None:
    try:
        uri = parse_uri(text)
    except ValueError:
        return
    assert parse_uri(str(uri)) == uri  # what it accepts, it writes back the same


_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10)


@given(user=st.one_of(st.just(""), _alnum), host=st.one_of(
    st.builds(lambda a, b: f"{a}.example", _alnum, _alnum),
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)),
       port=st.one_of(st.just(0), st.integers(1, 65535)),
       params=st.lists(st.tuples(_alnum, st.one_of(st.just(""), _alnum)), max_size=3))
def test_strict_round_trips_what_it_builds(user: str, host: str, port: int,
                                           params: list[tuple[str, str]]) -> None:
    uri = SipUri("sip", user, "", host, port, str(port) if port else "", tuple(params))
    assert parse_uri(str(uri)) == uri


@pytest.mark.parametrize(("value", "display", "uri", "tag"), [
    ('"Alice Smith" <sip:alice@x>;tag=1', "Alice Smith", "sip:alice@x", "1"),
    ('"A <b>" <sip:a@b>;tag=9', "A <b>", "sip:a@b", "9"),
    ("Bob <sip:bob@x;transport=tcp>", "Bob", "sip:bob@x;transport=tcp", None),
    ("sip:carol@x;tag=2", "", "sip:carol@x", "2"),
    ("<sip:d@x", "", "sip:d@x", None),
])
def test_name_addr(value: str, display: str, uri: str, tag: str | None) -> None:
    na = parse_name_addr(value)
    assert (na.display, na.uri, na.param("tag")) == (display, uri, tag)


@given(st.text(max_size=200))
def test_name_addr_uri_is_parse_name_addr_uri(value: str) -> None:
    assert name_addr_uri(value) == parse_name_addr(value).uri


def _unquoted_find_reference(text: str, char: str) -> int:
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == char and not quoted:
            return i
    return -1


@given(st.text(alphabet='"\\<a> ', max_size=40))
def test_unquoted_find_skips_quoted_strings(text: str) -> None:
    from b2bua.sipuri import _unquoted_find

    assert _unquoted_find(text, "<") == _unquoted_find_reference(text, "<")


@given(st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
                 st.text(alphabet="0123456789.:abcdef", max_size=20), st.text(max_size=12)))
def test_is_ip_literal_agrees_with_ipaddress(text: str) -> None:
    try:
        ipaddress.ip_address(text)
        expected = True
    except ValueError:
        expected = False
    assert is_ip_literal(text) is expected


def _full_parse(text: str, schemes: tuple[str, ...]) -> SipUri | str:
    try:
        return sipuri._parse_uri(text, schemes)
    except ValueError as exc:
        return str(exc)


def _parse(text: str, schemes: tuple[str, ...]) -> SipUri | str:
    try:
        return parse_uri(text, schemes=schemes)
    except ValueError as exc:
        return str(exc)


#: URI-ish text: the characters where the fast path and the full parse could part ways
_URI_CHARS = "sipSIP:@.;=-_!~*'()&+$,/?%[]019aAzZ \t"
_uri_parts = st.lists(st.sampled_from(["sip:", "sips:", "tel:", "a", "Z9", "@", ".", ":", "5060", "0", "65536",
                                        ";", "=", "lr", "-", "1.2.3.4", "256.1.1.1", "%20", "?", "[::1]", "%",
                                        "user", "host.example", "_", "~", "&", "$", "/", "[", "]", ""]),
                      max_size=12).map("".join)


@given(st.one_of(_uri_parts, st.text(alphabet=_URI_CHARS, max_size=40), st.text(max_size=40)),
       st.sampled_from([("sip", "sips"), ("sip",)]))
def test_fast_path_agrees_with_the_full_parse(text: str, schemes: tuple[str, ...]) -> None:
    """parse_uri takes the usual URI in one regex match: the same SipUri, or the same fault."""
    assert _parse(text, schemes) == _full_parse(text, schemes)


@pytest.mark.parametrize("text", ["sip:a@b.example", "sip:svc@127.0.0.71:52545", "sips:h;lr;transport=tcp",
                                  "sip:a;b=c@host.example.:5060;X=Y", "sip:1.2.3.4:5", "sip:a.b-c.d."])
def test_fast_path_agrees_on_usual_uris(text: str) -> None:
    assert sipuri._USUAL_URI.fullmatch(text)  # the fast path is taken...
    assert parse_uri(text) == sipuri._parse_uri(text, ("sip", "sips"))  # ...and parses the same


@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(
    ["sip:", "sips:", "SIP:", "tel:", "a", "@", ":", ";", "=", "?", "&", "b.c", "1.2.3.4", "256.1.1.1", "[::1]",
     "5060", "0", "99999", "%41", "-", ".", " ", "é"]), max_size=10).map("".join)))
def test_check_uri_agrees_with_parse_uri(text: str) -> None:
    def outcome(fn: Any, *args: Any, **kw: Any) -> str:
        try:
            fn(*args, **kw)
        except ValueError as exc:
            return str(exc)
        return "ok"

    for schemes in (("sip", "sips"), ("sip",)):
        assert outcome(check_uri, text, schemes=schemes) == outcome(parse_uri, text, schemes=schemes)
