"""The early filter's C fast path (``b2bua_screen_text_passes`` in our pjproject build) passes
only messages that b2bua.wire's own rules pass: a message it lets by is never one Python would
have refused. Checked against the real library with the fuzz corpus and hypothesis."""

from __future__ import annotations

import ctypes
import importlib.util
import random
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from b2bua.rxfilter import text_passes
from b2bua.wire import MAX_HEADERS, MAX_LINE, MAX_MESSAGE, Malformed, check_in_dialog, check_response

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import sipfuzz  # a plain module shared with the e2e fuzz test

# the module's C library only (no pjsua2 import, no Endpoint): the function under test is pure
_SPEC = importlib.util.find_spec("_pjsua2")
assert _SPEC is not None and _SPEC.origin, "the pjsua2 build is not installed (scripts/setup.sh --test)"
LIB = ctypes.CDLL(_SPEC.origin)
PEER = sipfuzz.Peer("127.0.0.1", 5060, "127.0.0.2", 5062)


def python_passes(raw: bytes, *, request: bool) -> bool:
    """What the Python screen lets through, for a request inside a live dialog or a response."""
    try:
        if request:
            return check_in_dialog(raw) != "REFER"  # a REFER is declined (603) even in a dialog
        check_response(raw)
        return True
    except Malformed:
        return False


def in_dialog(method: str, extra: tuple[str, ...] = ()) -> bytes:
    return sipfuzz.request(method, PEER, to_tag="b2b-tag", extra=extra)


def response(status: bytes = b"SIP/2.0 200 OK", extra: bytes = b"") -> bytes:
    return (status + b"\r\nVia: SIP/2.0/UDP 127.0.0.2:5062;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n"
            b"To: <sip:b@y>;tag=2\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n" + extra + b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize("method", ["ACK", "BYE", "INVITE", "UPDATE", "INFO", "OPTIONS", "PRACK", "CANCEL"])
def test_a_calls_in_dialog_requests_pass_in_c(method: str) -> None:
    raw = in_dialog(method)
    assert text_passes(LIB, raw, request=True), raw
    assert python_passes(raw, request=True)


@pytest.mark.parametrize("status", [b"SIP/2.0 100 Trying", b"SIP/2.0 180 Ringing", b"SIP/2.0 200 OK",
                                    b"SIP/2.0 503 Service Unavailable", b"SIP/2.0 699", b"SIP/2.0 183 "])
def test_plain_responses_pass_in_c(status: bytes) -> None:
    assert text_passes(LIB, response(status), request=False)


@pytest.mark.parametrize(("raw", "why"), [
    (in_dialog("REFER"), "a REFER is declined in Python"),
    (in_dialog("BYE").replace(b"BYE sip:", b"BYE  sip:", 1), "two spaces in the request line"),
    (in_dialog("BYE").replace(b" SIP/2.0\r\n", b" SIP/2.1\r\n", 1), "another version"),
    (in_dialog("BYE").replace(b"\r\n", b"\n"), "bare LF line ends"),
    (in_dialog("BYE").replace(b"Max-Forwards", b"Max-Forw\x00rds", 1), "a NUL"),
    (in_dialog("BYE").replace(b"BYE sip:", b"B\xc3\x89E sip:", 1), "UTF-8 in the method"),
    (in_dialog("BYE").replace(b"\r\n\r\n", b"\r\n", 1), "no blank line"),
    (in_dialog("BYE", extra=("X-Long: " + "a" * MAX_LINE,)), "a line over MAX_LINE"),
    (in_dialog("BYE", extra=tuple(f"X-{i}: 1" for i in range(MAX_HEADERS))), "more than MAX_HEADERS lines"),
    (in_dialog("BYE") + b"x" * MAX_MESSAGE, "a message over MAX_MESSAGE"),
])
def test_what_needs_a_judgement_goes_to_python(raw: bytes, why: str) -> None:
    assert not text_passes(LIB, raw, request=True), why


@pytest.mark.parametrize(("raw", "why"), [
    (response(b"SIP/2.0 503 Serv\xffice Unavailable"), "not UTF-8"),
    (response(b"SIP/2.0 200 \xc3\xa9t\xc3\xa9"), "UTF-8 that is not ASCII: Python decides"),
    (response(b"SIP/2.0 700 Odd"), "a class past 6xx"),
    (response(b"SIP/2.0 20 OK"), "two digits"),
    (response(b"SIP/2.0 2000 OK"), "four digits"),
    (response(extra=b"X-Bell: \x07\r\n"), "a control character"),
    (response().replace(b"\r\n", b"\n"), "bare LF line ends"),
])
def test_unusual_responses_go_to_python(raw: bytes, why: str) -> None:
    assert not text_passes(LIB, raw, request=False), why


def test_what_c_passes_python_passes_over_the_fuzz_corpus() -> None:
    rng = random.Random(20261206)
    passed = {True: 0, False: 0}
    for raw in sipfuzz.corpus(rng, PEER, 4000, valid_share=0.3):
        for request in (True, False):
            candidate = raw if request else b"SIP/2.0 200 OK" + raw[raw.find(b"\r\n"):]
            if text_passes(LIB, candidate, request=request):
                passed[request] += 1
                assert python_passes(candidate, request=request), candidate
    assert min(passed.values()) > 100, passed  # the corpus's valid messages do take the fast path


_TEXT = st.binary(max_size=40) | st.sampled_from([b"\r\n", b" ", b"\t", b"\n", b"\r", b"SIP/2.0", b"REFER", b"\xff"])


@settings(max_examples=1500, deadline=None)
@given(st.data())
def test_what_c_passes_python_passes_for_spliced_messages(data: st.DataObject) -> None:
    request = data.draw(st.booleans())
    raw = in_dialog("BYE") if request else response()
    for _ in range(data.draw(st.integers(1, 4))):  # splice random bytes into a valid message
        at = data.draw(st.integers(0, len(raw)))
        cut = data.draw(st.integers(0, 8))
        raw = raw[:at] + data.draw(_TEXT) + raw[at + cut:]
    if text_passes(LIB, raw, request=request):
        assert python_passes(raw, request=request), raw
