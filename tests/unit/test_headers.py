"""Header pass-through (b2bua.headers): patterns, what never crosses, values from the wire."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from b2bua import headers as hdrs
from b2bua.headers import (
    COPY_BUDGET,
    MAX_VALUE,
    NEVER_COPIED,
    HeaderFilter,
    canonical_name,
    check_pattern,
    merge,
    one_line_problem,
    usable_value,
)
from b2bua.sip import MessageHeaders, parse_message

DEFAULT = ["P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Diversion", "History-Info", "X-*"]


@pytest.mark.parametrize("pattern", ["P-Asserted-Identity", "X-*", "*", "x-acme-*-id", "Diversion"])
def test_good_patterns(pattern: str) -> None:
    assert check_pattern(pattern) == pattern


@pytest.mark.parametrize(("pattern", "why"), [
    ("", "not a header name pattern"),
    ("X-[ab]", "not a header name pattern"),
    ("X Foo", "not a header name pattern"),
    ("X-Foo:", "not a header name pattern"),
    ("Via", "never copied"),
    ("record-route", "never copied"),
    ("Call-ID", "never copied"),
    ("Proxy-Authorization", "never copied"),
])
def test_bad_patterns(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_pattern(pattern)


def test_select_copies_listed_headers_in_order_with_their_spelling() -> None:
    headers = {
        "via": ("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1",),
        "p-asserted-identity": ('"Alice" <sip:+4930111@pbx>', "<tel:+4930111>"),
        "subject": ("hello",),
        "x-account-code": ("42",),
        "diversion": ("<sip:1@pbx>;reason=busy",),
    }
    selected, dropped = HeaderFilter.compile(DEFAULT).select(headers)
    assert selected == [
        ("P-Asserted-Identity", '"Alice" <sip:+4930111@pbx>'),
        ("P-Asserted-Identity", "<tel:+4930111>"),
        ("X-Account-Code", "42"),
        ("Diversion", "<sip:1@pbx>;reason=busy"),
    ] and dropped == 0


def test_a_wildcard_never_lets_topology_or_pjsuas_own_headers_through() -> None:
    everything = HeaderFilter.compile(["*"])
    headers = {name: ("x",) for name in NEVER_COPIED} | {"organization": ("acme",)}
    assert everything.select(headers) == ([("Organization", "acme")], 0)


def test_no_patterns_copy_nothing() -> None:
    assert HeaderFilter.compile([]).select({"x-a": ("1",)}) == ([], 0)


@pytest.mark.parametrize("value", ["a\r\nVia: evil", "tab\there", "nul\x00", "del\x7f", "c1\x85",
                                   "surrogate\udcff", "x" * (MAX_VALUE + 1)])
def test_unusable_values_are_dropped_and_counted(value: str) -> None:
    assert not usable_value(value) and one_line_problem(value)
    assert HeaderFilter.compile(["X-*"]).select({"x-a": (value, "ok")}) == ([("X-A", "ok")], 1)


def test_usable_values() -> None:
    assert usable_value('"Jürgen Müller" <sip:+49@pbx>') and usable_value("x" * MAX_VALUE) and usable_value("")


def test_a_name_that_is_no_token_never_crosses() -> None:
    assert HeaderFilter.compile(["*"]).select({"x a": ("1",), "x(b)": ("2",)}) == ([], 0)


def test_canonical_name() -> None:
    assert canonical_name("x-account-code") == "X-Account-Code" and canonical_name("privacy") == "Privacy"


def test_merge_lets_the_targets_headers_replace_copied_ones() -> None:
    copied = [("P-Asserted-Identity", "<sip:a@x>"), ("X-A", "1"), ("P-Asserted-Identity", "<tel:+1>")]
    own = [("p-asserted-identity", "<sip:+4930@carrier>"), ("X-Trunk", "7")]
    assert merge(copied, own) == [("X-A", "1"), ("p-asserted-identity", "<sip:+4930@carrier>"), ("X-Trunk", "7")]
    assert merge(copied, []) == copied


@given(st.dictionaries(st.text(min_size=1, max_size=20), st.lists(st.text(max_size=50), max_size=3)))
def test_select_never_returns_a_forbidden_name_or_an_unusable_value(headers: dict[str, list[str]]) -> None:
    selected, _ = HeaderFilter.compile(["*"]).select({k.lower(): tuple(v) for k, v in headers.items()})
    for name, value in selected:
        assert name.lower() not in NEVER_COPIED and usable_value(value)


def test_copied_headers_stop_at_the_budget_in_order() -> None:
    keep = HeaderFilter.compile(["X-*", "P-Asserted-Identity"])
    headers = {"p-asserted-identity": ("<sip:+4930111@pbx>",), "x-big": ("a" * 600, "b" * 600, "c" * 600),
               "x-small": ("1",)}
    out, dropped = keep.select(headers)
    assert [name for name, _ in out] == ["P-Asserted-Identity", "X-Big", "X-Big", "X-Small"]
    assert dropped == 1  # the third 600-byte value would pass 1500 bytes; the small one still fits
    assert sum(len(n) + len(v) + 4 for n, v in out) <= COPY_BUDGET


def _one_line_problem_reference(text: str) -> str | None:
    """one_line_problem without its fast path (the reference it must agree with)."""
    if len(text) > hdrs.MAX_VALUE:
        return f"longer than {hdrs.MAX_VALUE} characters"
    m = hdrs._CONTROL.search(text)
    if m:
        return f"control character 0x{ord(m.group()):02x} at offset {m.start()}"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "bytes that are not UTF-8"
    return None


@given(st.one_of(st.text(max_size=60), st.text(alphabet=" ~\t\x00\x1f\x7f\x80\x9f\xa0a\udcff", max_size=20)))
def test_one_line_problem_fast_path_agrees_with_the_full_check(text: str) -> None:
    assert one_line_problem(text) == _one_line_problem_reference(text)


def test_a_filter_remembers_its_answers_within_a_bound() -> None:
    f = HeaderFilter.compile(["X-*", "Privacy"])
    for _ in range(2):  # the second round from what it remembers: the same answers
        assert [f.allows(n) for n in ("x-a", "X-A", "privacy", "Via", "X A", "call-id")] == [
            True, True, True, False, False, False]
    for i in range(hdrs.KNOWN_NAMES + 10):
        assert f.allows(f"x-{i}")
    assert len(f._known) <= hdrs.KNOWN_NAMES


_MESSAGE_PIECES = st.sampled_from([
    "SIP/2.0 200 OK", "\r\n", "\n", "\r", " ", "\t", "\x0b", "\x1c", ":", ";", "Via: x", "P-Asserted-Identity",
    "p-asserted-identity", "Privacy", "privacy: id", "X-Acme", "x-", "s", "Subject", "i", "Call-ID", "Contact",
    "\u212aey", "K", "é", "İ", "<sip:a@b>", "id", "\r\n\r\n", "\n\n", "v=0",
])
_PATTERN_SETS = st.sampled_from([
    ["P-Asserted-Identity", "Privacy"], DEFAULT, ["*"], ["S*"], ["Subject"], ["X-Key"], ["x-*-id"], ["K*"], [],
])


@settings(max_examples=600, deadline=None)
@given(st.lists(_MESSAGE_PIECES, max_size=25).map("".join), _PATTERN_SETS)
@example("SIP/2.0 200 OK\r\n\x0bPrivacy: id\r\n\r\n", ["Privacy"])  # stripped like a blank
@example("SIP/2.0 200 OK\r\n Privacy : id\r\n", ["Privacy"])  # a first header line indented
@example("SIP/2.0 200 OK\r\nX-\u212aey: v\r\n", ["X-Key"])  # KELVIN SIGN lower-cases to k
@example("SIP/2.0 200 OK\ns: hello\n", ["Subject"])  # a compact form
def test_select_of_an_unparsed_message_is_the_select_of_its_parse(raw: str, patterns: list[str]) -> None:
    flt = HeaderFilter.compile(patterns)
    assert flt.select(MessageHeaders(raw)) == flt.select(parse_message(raw)[1]), raw


def test_a_2xx_without_a_header_to_pass_on_is_not_parsed() -> None:
    raw = ("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n"
           "To: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContact: <sip:10.0.0.2>\r\n"
           "Content-Length: 0\r\n\r\n")
    flt = HeaderFilter.compile(["P-Asserted-Identity", "Privacy"])
    message = MessageHeaders(raw)
    assert flt.select(message) == ([], 0) and not message.parsed
    with_pai = MessageHeaders(raw.replace("Contact", "P-Asserted-Identity: <sip:+4930@x>\r\nContact"))
    assert flt.select(with_pai) == ([("P-Asserted-Identity", "<sip:+4930@x>")], 0) and with_pai.parsed
    assert dict(with_pai) == parse_message(with_pai.raw)[1]
