"""``ping_reply_codes`` parsing (plugins.dispatcher.replycodes)."""

from __future__ import annotations

import pytest

from plugins.dispatcher.replycodes import ReplyCodes, parse_reply_codes

ACCEPT_TABLE = [
    # setting, {code: accepted?}
    ("", {200: True, 202: True, 299: True, 180: False, 404: False, 408: False, 503: False}),
    ("code=403;class=4", {200: True, 403: True, 404: True, 408: True, 499: True, 503: False, 603: False}),
    ("code=501", {501: True, 502: False, 500: False, 200: True}),
    ("class=5", {500: True, 599: True, 404: False}),
    ("code=404;code=405", {404: True, 405: True, 406: False}),
    (" code = 403 ; CLASS=6 ;", {403: True, 603: True, 404: False}),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPT_TABLE)
def test_accepts(text: str, expected: dict[int, bool]) -> None:
    codes = parse_reply_codes(text)
    assert {code: codes.accepts(code) for code in expected} == expected


def test_parsed_value() -> None:
    assert parse_reply_codes("class=4;code=403;code=501") == ReplyCodes(frozenset({403, 501}), frozenset({4}))


def test_round_trip() -> None:
    codes = parse_reply_codes("class=4; code=501 ;code=403")
    assert str(codes) == "code=403;code=501;class=4"
    assert parse_reply_codes(str(codes)) == codes


@pytest.mark.parametrize(
    ("text", "bad_item", "why"),
    [
        ("code=99", "code=99", "100-699"),
        ("code=700", "code=700", "100-699"),
        ("class=0", "class=0", "1-6"),
        ("class=7", "class=7", "1-6"),
        ("codes=403", "codes=403", "expected 'code=NNN'"),
        ("403", "403", "expected 'code=NNN'"),
        ("code=", "code=", "expected 'code=NNN'"),
        ("code=abc", "code=abc", "expected 'code=NNN'"),
        ("code=-1", "code=-1", "expected 'code=NNN'"),
        ("501,403", "501,403", "expected 'code=NNN'"),  # the issue tracker's form is not the syntax
        ("code=403,class=4", "code=403,class=4", "expected 'code=NNN'"),
        ("code=403;foo=1", "foo=1", "expected 'code=NNN'"),
    ],
)
def test_rejects_naming_the_item(text: str, bad_item: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_reply_codes(text)
    message = str(info.value)
    assert message.startswith("ping_reply_codes: bad item ")
    assert repr(bad_item) in message
    assert why in message
