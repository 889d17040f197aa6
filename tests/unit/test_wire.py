"""What the B2BUA accepts from the wire: b2bua.wire, by examples, properties and a mutation fuzzer."""

from __future__ import annotations

import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from b2bua import wire
from b2bua.wire import (
    MAX_CALL_ID,
    MAX_METHOD,
    Malformed,
    WireRequest,
    call_info,
    check_in_dialog,
    check_response,
    parse_request,
    peek,
    peek_dialog,
    raw_call_id,
    split_source,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import sipfuzz  # a plain module shared with the e2e fuzz test

PEER = sipfuzz.Peer("127.0.0.1", 5060, "127.0.0.2", 5062)


def invite(**kw: object) -> bytes:
    return sipfuzz.request("INVITE", PEER, **kw)  # type: ignore[arg-type]


def replace(msg: bytes, old: bytes, new: bytes) -> bytes:
    assert old in msg, old
    return msg.replace(old, new, 1)


def test_a_valid_invite_is_parsed() -> None:
    r = parse_request(invite(call_id="abc@h", display="Zoë"))
    assert (r.method, r.request_uri, r.call_id) == ("INVITE", "sip:33123@127.0.0.1:5060", "abc@h")
    assert r.from_uri == "sip:caller@127.0.0.2" and r.to_uri == "sip:33123@127.0.0.1"
    assert r.from_header == '"Zoë" <sip:caller@127.0.0.2>;tag=f1'
    assert (r.from_tag, r.to_tag, r.in_dialog, r.cseq) == ("f1", "", False, 1)
    assert (r.transport, r.via_count, r.user_agent) == ("udp", 1, "fuzzer")
    assert r.headers["content-type"] == ("application/sdp",) and r.body_length > 0


@pytest.mark.parametrize("method", sipfuzz.METHODS)
def test_every_method_is_parsed(method: str) -> None:
    r = parse_request(sipfuzz.request(method, PEER, to_tag="t9" if method in ("BYE", "ACK") else ""))
    assert r.method == method and r.in_dialog == (method in ("BYE", "ACK"))


def test_compact_forms_folding_and_lf_line_ends_are_accepted() -> None:
    msg = (b"OPTIONS sip:b2bua@127.0.0.1 SIP/2.0\n"
           b"v: SIP/2.0/TCP 127.0.0.2;branch=z9hG4bK1\n"
           b"f: <tel:+49-30-123;phone-context=+49>;tag=a\n"
           b"t: <sip:b2bua@127.0.0.1>\n"
           b"i: x\n"
           b"CSeq: 7 OPTIONS\n"
           b"X-Folded: one\n\ttwo\n"
           b"l: 0\n\n")
    r = parse_request(msg)
    assert (r.call_id, r.from_uri, r.transport, r.cseq) == ("x", "tel:+49-30-123;phone-context=+49", "tcp", 7)
    assert r.headers["x-folded"] == ("one two",)


def test_a_blank_continuation_line_adds_nothing() -> None:
    # "Via: SIP/2.0/" folded onto a line of blanks once left "SIP/2.0/ " and an IndexError
    msg = (b"OPTIONS sip:b2bua@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/\r\n  \r\nFrom: <sip:a@127.0.0.2>;tag=1\r\n"
           b"To: <sip:b2bua@127.0.0.1>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nX-Folded: one\r\n \t\r\n"
           b"Content-Length: 0\r\n\r\n")
    r = parse_request(msg)
    assert (r.headers["via"], r.transport, r.headers["x-folded"]) == (("SIP/2.0/",), "", ("one",))


MALFORMED = [
    # (what, mutation of a valid INVITE, reason, code)
    ("Call-ID not UTF-8", lambda m: replace(m, b"Call-ID: fuzz-1@host", b"Call-ID: ab\xffcd"), "not-utf8", 400),
    ("NUL in a header", lambda m: replace(m, b"User-Agent: fuzzer", b"User-Agent: a\x00b"), "control-char", 400),
    ("ANSI escape in From", lambda m: replace(m, b'"Fuzz"', b'"\x1b[2JFuzz"'), "control-char", 400),
    ("C1 control (UTF-8 NEL)", lambda m: replace(m, b'"Fuzz"', b'"F\xc2\x85z"'), "control-char", 400),
    ("bare CR inside a line", lambda m: replace(m, b"User-Agent: fuzzer", b"User-Agent: a\rb"), "control-char", 400),
    ("Call-ID with a blank", lambda m: replace(m, b"Call-ID: fuzz-1@host", b"Call-ID: a b"), "call-id", 400),
    ("Call-ID too long", lambda m: replace(m, b"Call-ID: fuzz-1@host", b"Call-ID: " + b"x" * 257), "call-id", 400),
    ("no Call-ID", lambda m: replace(m, b"Call-ID: fuzz-1@host\r\n", b""), "missing-header", 400),
    ("no Via", lambda m: replace(m, b"Via: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK-1;rport\r\n", b""),
     "missing-header", 400),
    ("two From", lambda m: replace(m, b"To:", b"From: <sip:evil@x>;tag=2\r\nTo:"), "duplicate-header", 400),
    ("two Call-ID", lambda m: replace(m, b"To:", b"i: other\r\nTo:"), "duplicate-header", 400),
    ("From URI not a URI", lambda m: replace(m, b"<sip:caller@127.0.0.2>", b"<sip:call er@127.0.0.2>"), "from",
     400),
    ("To URI port out of range", lambda m: replace(m, b"To: <sip:33123@127.0.0.1>", b"To: <sip:a@b:99999>"),
     "to", 400),
    ("From tel: with letters", lambda m: replace(m, b"<sip:caller@127.0.0.2>", b"<tel:call-me>"), "from", 400),
    ("INVITE without From tag", lambda m: replace(m, b";tag=f1", b""), "tag", 400),
    ("tag not a token", lambda m: replace(m, b";tag=f1", b";tag=a{b}"), "tag", 400),
    ("Request-URI tel:", lambda m: replace(m, b"INVITE sip:33123@127.0.0.1:5060", b"INVITE tel:+4930123"),
     "request-uri", 416),
    ("Request-URI bad host", lambda m: replace(m, b"sip:33123@127.0.0.1:5060 SIP", b"sip:33123@-bad- SIP"),
     "request-uri", 400),
    ("SIP/3.0", lambda m: replace(m, b"5060 SIP/2.0", b"5060 SIP/3.0"), "request-line", 400),
    ("CSeq method differs", lambda m: replace(m, b"CSeq: 1 INVITE", b"CSeq: 1 OPTIONS"), "cseq", 400),
    ("CSeq number too big", lambda m: replace(m, b"CSeq: 1 INVITE", b"CSeq: 4294967296 INVITE"), "cseq", 400),
    ("Content-Length too big", lambda m: replace(m, b"Content-Length: ", b"Content-Length: 9"), "content-length",
     400),
    ("Content-Length not a number", lambda m: replace(m, b"Content-Length: ", b"Content-Length: -"),
     "content-length", 400),
    ("Max-Forwards 256", lambda m: replace(m, b"Max-Forwards: 70", b"Max-Forwards: 256"), "max-forwards", 400),
    ("33 Vias", lambda m: replace(m, b"Max-Forwards", b"Via: SIP/2.0/UDP h;branch=z9hG4bKx\r\n" * 32 +
                                  b"Max-Forwards"), "via", 400),
    ("Via not SIP/2.0", lambda m: replace(m, b"Via: SIP/2.0/UDP", b"Via: HTTP/1.1"), "via", 400),
    ("header line too long", lambda m: replace(m, b"Max-Forwards", b"X-A: " + b"a" * 2100 + b"\r\nMax-Forwards"),
     "header-too-long", 400),
    ("too many headers", lambda m: replace(m, b"Max-Forwards", b"X-A: 1\r\n" * 100 + b"Max-Forwards"),
     "too-many-headers", 400),
    ("header without colon", lambda m: replace(m, b"Max-Forwards: 70", b"Max-Forwards 70"), "header-syntax", 400),
    ("SDP not UTF-8", lambda m: replace(m, b"s=-", b"s=\xff"), "sdp", 400),
    ("NUL in the SDP", lambda m: replace(m, b"s=-", b"s=\x00"), "sdp", 400),
]


@pytest.mark.parametrize(("what", "mutation", "reason", "code"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_requests_say_why(what: str, mutation: object, reason: str, code: int) -> None:
    with pytest.raises(Malformed) as info:
        parse_request(mutation(invite()))  # type: ignore[operator]
    assert (info.value.reason, info.value.code) == (reason, code), info.value.detail
    assert info.value.detail.isprintable()


def test_a_binary_body_that_is_not_sdp_is_not_read() -> None:
    body = bytes(range(256))
    msg = replace(invite(), b"Content-Type: application/sdp", b"Content-Type: application/isup")
    head = msg.split(b"\r\n\r\n", 1)[0]
    head = head.rsplit(b"\r\n", 1)[0] + b"\r\nContent-Length: 256"
    assert parse_request(head + b"\r\n\r\n" + body).body_length == 256


def test_a_shorter_content_length_is_accepted() -> None:
    # RFC 3261 18.3: over UDP, bytes past Content-Length are ignored
    shorter = re.sub(rb"Content-Length: \d+", b"Content-Length: 10", invite())
    assert parse_request(shorter).method == "INVITE"


def test_details_escape_what_they_quote() -> None:
    with pytest.raises(Malformed) as info:
        parse_request(replace(invite(), b"Call-ID: fuzz-1@host", b"Call-ID: a\x1b[31m b"))
    assert "\x1b" not in info.value.detail


@pytest.mark.parametrize(("source", "expected"), [
    ("127.0.0.2:5060", ("127.0.0.2", 5060)), ("[::1]:5070", ("::1", 5070)), ("[::1]", ("::1", 0)),
    ("10.0.0.1", ("10.0.0.1", 0)), ("", ("", 0)),
])
def test_split_source(source: str, expected: tuple[str, int]) -> None:
    assert split_source(source) == expected


def test_call_info_of_an_invite() -> None:
    info = call_info(7, parse_request(invite(call_id="abc@h")), "[::1]:5062", 1.5)
    assert (info.id, info.call_id, info.from_uri, info.to_uri) == (7, "abc@h", "sip:caller@127.0.0.2",
                                                                    "sip:33123@127.0.0.1")
    assert (info.source_ip, info.source_port, info.transport, info.started) == ("::1", 5062, "udp", 1.5)
    assert info.request_uri == "sip:33123@127.0.0.1:5060" and info.header("user-agent") == "fuzzer"


def test_a_call_names_the_transports_the_b2bua_listens_on() -> None:
    from b2bua.config import TRANSPORTS
    from b2bua.wire import CALL_TRANSPORTS

    assert set(TRANSPORTS) == CALL_TRANSPORTS, "wire.CALL_TRANSPORTS is config.TRANSPORTS (an import cycle keeps two)"


def test_peek_reads_method_and_to_tag_without_parsing() -> None:
    assert peek(invite()) == ("INVITE", "")
    assert peek(sipfuzz.request("BYE", PEER, to_tag="x")) == ("BYE", "x")
    assert peek(b"t: <sip:a@b> ; tag = 1\r\n") == ("", "")
    assert peek(b"BYE sip:a@b SIP/2.0\r\nt: <sip:a@b> ; TAG = 1\r\n") == ("BYE", "1")
    assert peek(b"\xff\xfe x") == ("", "")
    assert peek(b"BYE sip:a@b SIP/2.0\r\nTo: <sip:a@b>;tag=\r\n") == ("BYE", ""), "an empty tag is none"
    # the tag is a parameter of the header, as pjsip reads it, not of the URI
    assert peek(b"INVITE sip:a@b SIP/2.0\r\nTo: <sip:a@b;tag=1>\r\n") == ("INVITE", "")
    assert peek(b"INVITE sip:a@b SIP/2.0\r\nTo: sip:a@b;tag=1\r\n") == ("INVITE", "1")
    assert peek(b'INVITE sip:a@b SIP/2.0\r\nTo: "x>;tag=2" <sip:a@b>\r\n') == ("INVITE", "")


def test_peek_dialog_reads_the_keys_of_pjsips_dialog_table() -> None:
    bye = sipfuzz.request("BYE", PEER, call_id="a1b2@host", from_tag="theirs", to_tag="ours")
    assert peek_dialog(bye) == (b"a1b2@host", b"theirs")
    compact = b"BYE sip:a@b SIP/2.0\r\nf: <sip:x@y>;tag=F\r\nt: sip:a@b;tag=T\r\ni:  c\xffd  \r\n\r\n"
    assert peek_dialog(compact) == (b"c\xffd", b"F"), "bytes as they came, blanks around the Call-ID trimmed"
    assert peek_dialog(b"BYE sip:a@b SIP/2.0\nCall-ID: x\nFrom: <sip:a@b;tag=u>\n\n") == (b"x", b"")
    too_long = b"BYE sip:a@b SIP/2.0\r\nCall-ID: " + b"a" * (MAX_CALL_ID + 1) + b"\r\n\r\n"
    assert peek_dialog(too_long) == (b"", b""), "a Call-ID no dialog of ours can have"


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_peek_and_peek_dialog_take_any_bytes(raw: bytes) -> None:
    method, to_tag = peek(raw)
    assert method == "" or (method.isalpha() and len(method) <= MAX_METHOD)
    to_tag.encode("utf-8", "surrogateescape")  # the bytes it came from, always
    call_id, from_tag = peek_dialog(raw)
    assert len(call_id) <= MAX_CALL_ID
    assert all(b"\n" not in key and b"\r" not in key for key in (call_id, from_tag, to_tag.encode("utf-8",
                                                                                               "surrogateescape")))


@given(st.binary(max_size=200), st.binary(max_size=40), st.binary(max_size=40))
def test_the_keys_of_a_dialog_are_read_back_as_sent_among_any_bytes(noise: bytes, tag: bytes, call_id: bytes) -> None:
    """A tag or Call-ID is the bytes sent (pjsip compares bytes), whatever else the message holds."""
    tag = b"t" + bytes(b for b in tag if b not in b"\r\n;,\t >\"<")
    call_id = b"c" + bytes(b for b in call_id if b not in b"\r\n \t")
    text = tag.decode("utf-8", "surrogateescape")
    assume(text == text.strip())  # a tag that ends in Unicode blank (\x0b, NBSP) is malformed anyway
    raw = (b"BYE sip:a@b SIP/2.0\r\nX-Noise: " + noise.replace(b"\n", b"").replace(b"\r", b"") + b"\r\n"
           b"To: <sip:a@b>;tag=" + tag + b"\r\nFrom: sip:c@d;tag=f\r\nCall-ID: " + call_id + b"\r\n\r\n")
    assert peek(raw)[1].encode("utf-8", "surrogateescape") == tag
    assert peek_dialog(raw) == (call_id, b"f")


@pytest.mark.parametrize(("raw", "reason"), [
    (b"BYE sip:a@b SIP/2.0\r\nTo: <sip:a@b>;tag=1\r\n\r\n", ""),
    (b"BYE sip:a@b SIP/2.0\r\nTo: <sip:a@b>;tag=\xff\r\n\r\n", "not-utf8"),
    (b"BYE sip:a@b SIP/2.0\r\nX: \x07\r\n\r\n", "control-char"),
    (b"BYE sip:a@b\r\nTo: x\r\n\r\n", "request-line"),
    (b"BYE sip:a@b SIP/2.0\r\n" + b"X: 1\r\n" * 101 + b"\r\n", "too-many-headers"),
    (b"BYE sip:a@b SIP/2.0\r\nX: " + b"a" * 2100 + b"\r\n\r\n", "header-too-long"),
])
def test_check_in_dialog(raw: bytes, reason: str) -> None:
    if not reason:
        assert check_in_dialog(raw) == "BYE"
        return
    with pytest.raises(Malformed) as info:
        check_in_dialog(raw)
    assert info.value.reason == reason


def test_raw_call_id_is_escaped() -> None:
    assert raw_call_id(b"INVITE x\r\nCall-ID: ab\xffcd\x1b\r\n") == "ab\\xffcd\\x1b"
    assert raw_call_id(b"INVITE x\r\n\r\n") == ""


@pytest.mark.parametrize(("raw", "ok"), [
    (b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", True),
    (b"SIP/2.0 503 Service Unavailable\r\n\r\n", True),
    (b"SIP/2.0 486 Besch\xc3\xa4ftigt\r\n\r\n", True),
    (b"SIP/2.0 503 Serv\xffice\r\n\r\n", False),
    (b"SIP/2.0 200 OK\r\nX: \x00\r\n\r\n", False),
    (b"SIP/2.0 2000 OK\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\n\r\n", False),
])
def test_check_response(raw: bytes, ok: bool) -> None:
    if ok:
        check_response(raw)
    else:
        with pytest.raises(Malformed):
            check_response(raw)


# -- properties ------------------------------------------------------------------------------------


def assert_safe(r: WireRequest) -> None:
    """What every accepted request guarantees to the code that reads it."""
    texts = [r.method, r.request_uri, r.call_id, r.from_header, r.to_header, r.from_uri, r.to_uri, r.from_tag,
             r.to_tag]
    texts += [v for values in r.headers.values() for v in values]
    for text in texts:
        text.encode("utf-8")  # no lone surrogates: pjsua2 takes it
        assert not any((ord(c) < 32 and c != "\t") or 0x7F <= ord(c) <= 0x9F for c in text), repr(text)
        assert len(text) <= wire.MAX_LINE
    assert len(r.call_id) <= wire.MAX_CALL_ID and len(r.from_tag) <= wire.MAX_TAG
    assert r.via_count <= wire.MAX_VIA and sum(len(v) for v in r.headers.values()) <= wire.MAX_HEADERS
    assert r.request_uri.startswith(("sip:", "sips:"))


def parse_or_malformed(raw: bytes) -> WireRequest | None:
    try:
        r = parse_request(raw)
    except Malformed as exc:
        assert exc.reason and exc.detail.isprintable() and exc.code in (400, 416)
        return None
    assert_safe(r)
    return r


@given(st.binary(max_size=5000))
def test_any_bytes_parse_or_are_malformed(raw: bytes) -> None:
    parse_or_malformed(raw)


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_any_bytes_around_a_valid_head(prefix: bytes, suffix: bytes) -> None:
    parse_or_malformed(prefix + invite() + suffix)
    parse_or_malformed(invite()[:200] + prefix + invite()[200:])


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~", min_size=1,
                 max_size=40)
_display = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'), max_size=40)


@given(method=st.sampled_from(sipfuzz.METHODS), user=st.from_regex(r"[0-9+*]{1,20}", fullmatch=True),
       call_id=_token, tag=_token, display=_display, cseq=st.integers(0, 2**31 - 1), ua=_display)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_generated_valid_requests_are_accepted(method: str, user: str, call_id: str, tag: str, display: str,
                                               cseq: int, ua: str) -> None:
    msg = sipfuzz.request(method, PEER, user=user, call_id=call_id, from_tag=tag, display=display, cseq=cseq,
                          user_agent=ua.strip() or "x")
    r = parse_request(msg)
    assert (r.method, r.call_id, r.from_tag, r.cseq) == (method, call_id, tag, cseq)
    assert r.from_header == f'"{display}" <sip:caller@127.0.0.2>;tag={tag}'
    assert_safe(r)


@given(st.integers(0, 2**32 - 1))
def test_mutated_requests_parse_or_are_malformed(seed: int) -> None:
    rng = random.Random(seed)
    parse_or_malformed(sipfuzz.mutate(rng, sipfuzz.valid(rng, PEER)))


def test_a_few_thousand_mutations_by_seed() -> None:
    """The corpus the e2e fuzz test sends, all of it; also how fast the parser is on it."""
    rng = random.Random(17)
    messages = list(sipfuzz.corpus(rng, PEER, 3000))
    started = time.perf_counter()
    accepted = sum(parse_or_malformed(m) is not None for m in messages)
    elapsed = time.perf_counter() - started
    assert 0 < accepted < len(messages)  # the mutations reach both outcomes
    print(f"{len(messages)} messages, {accepted} accepted, {elapsed / len(messages) * 1e6:.1f} µs each")


def _check_response_full(raw: bytes) -> bool:
    """check_response without its fast path (the reference it must agree with)."""
    from b2bua.wire import _STATUS_LINE, MAX_MESSAGE, decode_head, split_message

    if len(raw) > MAX_MESSAGE:
        return False
    try:
        lines = decode_head(split_message(raw)[0])
    except Malformed:
        return False
    return bool(_STATUS_LINE.match(lines[0] + " "))


_HEAD_PIECES = st.sampled_from([b"SIP/2.0 ", b"200", b" OK", b"183", b"9", b"\r\n", b"\n", b"\r", b"\t",
                                b"Via: x", b"\x00", b"\x7f", b"\xc3\xa4", b"\xff", b"\x1b", b" ", b"To: <sip:a>"])


@settings(max_examples=400, deadline=None)
@given(st.lists(_HEAD_PIECES, max_size=12), st.sampled_from([b"\r\n\r\n", b"\n\n", b""]))
def test_check_response_fast_path_agrees_with_the_full_check(pieces: list[bytes], end: bytes) -> None:
    raw = b"".join(pieces) + end + b"body"
    try:
        check_response(raw)
        ok = True
    except Malformed:
        ok = False
    assert ok == _check_response_full(raw), raw


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Malformed as exc:
        return (exc.reason, exc.detail, exc.code)


_TEXT_PIECES = st.sampled_from([b"a", b"To: x", b"\r\n", b"\r", b"\n", b"\t", b" ", b"~", b"\x7f", b"\xc2\x85",
                                b"\xc3\xa4", b"\xff", b"\x00", b"\x1f", b"\x0b"])


@settings(max_examples=500, deadline=None)
@given(st.lists(_TEXT_PIECES, max_size=12).map(b"".join))
def test_decode_head_fast_path_agrees_with_the_full_check(head: bytes) -> None:
    assert _outcome(wire._head_text, head) == _outcome(wire._head_text_checked, head)


@settings(max_examples=500, deadline=None)
@given(st.lists(_TEXT_PIECES, max_size=12).map(b"".join))
def test_sdp_check_fast_path_agrees_with_the_full_check(body: bytes) -> None:
    assert _outcome(wire._check_body, body, "application/sdp") == _outcome(wire._check_sdp_text, body)


def test_header_names_remembered_file_the_same_within_a_bound() -> None:
    lines = ["Via: a", "v : b", "f:<sip:a@b>;tag=1", "X-A\t: c", "x-a: d"]
    expected = {"via": ("a", "b"), "from": ("<sip:a@b>;tag=1",), "x-a": ("c", "d")}
    wire._HEADER_KEYS.clear()
    assert wire.parse_headers(lines) == expected  # names checked, then remembered
    assert wire.parse_headers(lines) == expected  # from what is remembered
    with pytest.raises(Malformed, match="header-syntax"):  # a remembered name does not excuse a bad one
        wire.parse_headers(["Via: a", "Via x: b"])
    for i in range(wire.MAX_HEADER_KEYS + 10):
        wire.parse_headers([f"X-{i}: v"])
    assert len(wire._HEADER_KEYS) <= wire.MAX_HEADER_KEYS


def _party_full(name: str, value: str) -> Any:
    """:func:`wire._party` as it was before its fast path: parse_name_addr, then parse_uri."""
    from b2bua.sipuri import parse_name_addr, parse_uri

    addr = parse_name_addr(value)
    uri = addr.uri
    try:
        if uri.lower().startswith("tel:"):
            if not wire._TEL.fullmatch(uri):
                raise Malformed(name.lower(), f"{name} {uri!r} is not a tel: number")
        else:
            try:
                parse_uri(uri)
            except ValueError as exc:
                raise Malformed(name.lower(), f"{name} URI {exc}") from None
        tag = addr.param("tag") or ""
        if tag and (len(tag) > wire.MAX_TAG or not wire._TOKEN.fullmatch(tag)):
            raise Malformed("tag", "bad tag")
    except Malformed as exc:
        return exc.reason
    return uri, tag


_PARTY_PIECES = st.sampled_from(['"', "\\", "<", ">", ";", " ", "\t", "sip:", "sips:", "tel:+49", "SIP:", "a", "@",
                                 "b.c", "1.2.3.4", ":5060", ":0", ";tag=", "tag", "=", "x1", ";TAG=", "é", "\x85",
                                 "\u2028", "Alice", '"Bob \\"B\\"" ', "[::1]", "?h=v", ";lr", "%41"])


@settings(max_examples=1500, deadline=None)
@given(st.lists(_PARTY_PIECES, max_size=14).map("".join))
def test_party_fast_path_agrees_with_the_full_parse(value: str) -> None:
    fast = _outcome(wire._party, "From", value)
    full = _party_full("From", value)
    assert (fast[0] if isinstance(fast, tuple) and len(fast) == 3 else fast) == full, value


@pytest.mark.parametrize("value", ["sipp <sip:sipp@127.0.0.1:5061>;tag=123SIPpTag001", '"Zoë" <sip:a@b>;tag=f1',
                                   "<sip:service@127.0.0.1:5060>", "Bob <sips:b@example.com;transport=tls>"])
def test_the_usual_from_and_to_take_the_fast_path(value: str) -> None:
    assert wire._USUAL_NAME_ADDR.fullmatch(value) is not None and wire._USUAL_PARTY.fullmatch(value) is not None
    assert wire._party("From", value) == _party_full("From", value)
