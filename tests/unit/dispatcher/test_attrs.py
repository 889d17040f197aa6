"""Attribute strings: Kamailio's ``name=value;...`` syntax, typed fields, strict errors."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from plugins.dispatcher.attrs import format_attrs, parse_attrs
from plugins.dispatcher.model import Attrs


@pytest.mark.parametrize(
    ("text", "fields", "extra"),
    [
        ("", {}, {}),
        ("   ", {}, {}),
        (";", {}, {}),
        ("duid=gw1", {"duid": "gw1"}, {}),
        ("weight=1", {"weight": 1}, {}),
        ("weight=100", {"weight": 100}, {}),
        ("rweight=25;", {"rweight": 25}, {}),
        ("maxload=0", {"maxload": 0}, {}),
        ("maxload=250", {"maxload": 250}, {}),
        ("cc=1;latency=40", {"cc": 1, "latency": 40}, {}),
        ("WEIGHT=5;DuId=A", {"weight": 5, "duid": "A"}, {}),  # names case-insensitive, values kept
        ("socket=udp:10.0.0.5:5060", {"socket": "udp:10.0.0.5:5060"}, {}),
        ("sockname=wan", {"sockname": "wan"}, {}),
        ("ping_from=sip:probe@b2bua.example", {"ping_from": "sip:probe@b2bua.example"}, {}),
        ('obproxy="sip:10.0.0.9;transport=tcp"', {"obproxy": "sip:10.0.0.9;transport=tcp"}, {}),
        ("prefix=49;strip=2", {}, {"prefix": "49", "strip": "2"}),
        ("Class=4", {}, {"class": "4"}),
        ("none", {}, {"none": ""}),
        ("duid=x; weight = 30 ;", {"duid": "x", "weight": 30}, {}),
        ("ping_socket=udp:1.2.3.4:5060;ocmax=80", {}, {"ping_socket": "udp:1.2.3.4:5060", "ocmax": "80"}),
    ],
)
def test_parse_attrs(text: str, fields: dict[str, Any], extra: dict[str, str]) -> None:
    attrs = parse_attrs(text)
    assert attrs == Attrs(body=attrs.body, **fields)
    assert dict(attrs.extra) == extra


def test_body_keeps_text_without_trailing_semicolon() -> None:
    assert parse_attrs(" duid=a;Weight=5; ").body == "duid=a;Weight=5"
    assert parse_attrs("").body == ""


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("weight=abc", "weight=abc: not an integer"),
        ("weight=0", "weight=0: must be 1..100"),
        ("weight=101", "weight=101: must be 1..100"),
        ("weight=-5", "weight=-5: must be 1..100"),
        ("rweight=0", "rweight=0: must be 1..100"),
        ("rweight=1.5", "rweight=1.5: not an integer"),
        ("maxload=-1", "maxload=-1: must be 0..2147483647"),
        ("maxload=", "maxload=: not an integer"),
        ("maxload", "maxload: needs a value"),
        ("cc=2", "cc=2: must be 0..1"),
        ("latency=fast", "latency=fast: not an integer"),
        ("weight=5;weight=6", "weight: given twice"),
        ("a=1;;b=2", "empty attribute name"),
        ("=5", "=5: empty attribute name"),
        ("we ight=5", "we ight: invalid attribute name"),
        ('x="open', "unterminated quote"),
        ('x=a"b"c', 'x=a"b"c: stray quote'),
        ("weight=١٢", "not an integer"),  # non-ASCII digits are not digits here
    ],
)
def test_bad_attrs_say_why(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse_attrs(text)


@pytest.mark.parametrize(
    "text",
    ["duid=gw1;weight=50;prefix=49", "Weight=5;DUID=a", 'obproxy="sip:1.2.3.4;transport=tcp";x=1', "flag"],
)
def test_format_keeps_the_original_body(text: str) -> None:
    assert format_attrs(parse_attrs(text)) == text


@pytest.mark.parametrize(
    "attrs",
    [
        Attrs(duid="gw1", weight=50),
        Attrs(maxload=10, rweight=3, cc=1, latency=20, socket="udp:10.0.0.1:5060", sockname="lan"),
        Attrs(ping_from="sip:a@b", obproxy="sip:p;lr", extra={"prefix": "49", "flag": ""}),
        Attrs(extra={"note": "two words"}),
    ],
)
def test_format_from_fields_round_trips(attrs: Attrs) -> None:
    again = parse_attrs(format_attrs(attrs))
    assert replace(again, body="") == attrs  # Attrs equality ignores extra: compare it apart
    assert dict(again.extra) == dict(attrs.extra)


def test_format_ignores_a_stale_body() -> None:
    stale = replace(parse_attrs("duid=a;weight=10"), weight=20)
    assert format_attrs(stale) == "duid=a;weight=20"


def test_format_empty() -> None:
    assert format_attrs(Attrs()) == ""
