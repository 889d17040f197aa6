"""Kamailio's dispatcher.list format: parsing, errors with path:line, round trip, file I/O."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from plugins.dispatcher.listfile import (
    ListFileError,
    format_line,
    load_list_file,
    parse_line,
    parse_list,
    write_list_file,
)
from plugins.dispatcher.model import Attrs, Destination, build_snapshot
from plugins.dispatcher.resolve import LoadError


@pytest.mark.parametrize(
    "line",
    [
        "1 sip:127.0.0.1:5060 0 0",
        "2 sip:gw.example.com;user=phone;lr 8 10",
        "3 sip:[2001:db8::1]:5080;transport=tcp 16 0",
        "10 sip:gw1@10.0.0.1;transport=udp 0 5 duid=gw1;weight=50;prefix=49",
        "0 sip:a.example.com:5070 63 2147483647 maxload=10;socket=udp:10.0.0.5:5060",
        '1 sip:10.0.0.2 0 0 obproxy="sip:10.0.0.9;lr"',
    ],
)
def test_round_trip(line: str) -> None:
    dest = parse_line(line)
    assert dest is not None
    assert format_line(dest) == line
    assert parse_line(format_line(dest)) == dest


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1 sip:10.0.0.1", Destination(1, "sip:10.0.0.1")),
        ("1 10.0.0.1:5060", Destination(1, "sip:10.0.0.1:5060")),  # scheme added
        ("1 gw.example.com", Destination(1, "sip:gw.example.com")),
        ("1 SIP:GW.example.com", Destination(1, "SIP:GW.example.com")),  # kept as written
        ("  7\tsip:10.0.0.1   0x18\t3\r\n", Destination(7, "sip:10.0.0.1", flags=24, priority=3)),
        ("1 sip:10.0.0.1 0X8", Destination(1, "sip:10.0.0.1", flags=8)),
        ("1 sip:10.0.0.1#gw one", Destination(1, "sip:10.0.0.1")),  # '#' ends the URI
        ("1 sip:10.0.0.1 8#probe it", Destination(1, "sip:10.0.0.1", flags=8)),
        ("1 sip:10.0.0.1 8 5 # the rest is a comment", Destination(1, "sip:10.0.0.1", flags=8, priority=5)),
        ("1 sip:10.0.0.1 0 0 duid=a # note", Destination(1, "sip:10.0.0.1", attrs=Attrs(body="duid=a", duid="a"))),
    ],
)
def test_parse_line_forms(line: str, expected: Destination) -> None:
    assert parse_line(line) == expected


@pytest.mark.parametrize("line", ["", "   ", "\n", "\r\n", "# comment", "   # indented comment", "#1 sip:a"])
def test_blank_and_comment_lines(line: str) -> None:
    assert parse_line(line) is None


def test_description_and_row_id_are_not_in_the_line() -> None:
    dest = Destination(1, "sip:10.0.0.1", description="carrier A", row_id=9)
    assert format_line(dest) == "1 sip:10.0.0.1 0 0"


LONG = "1 sip:10.0.0.1 0 0 prefix=" + "x" * 1000


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1", "missing destination URI after the set id"),
        ("1 # no uri", "missing destination URI"),
        ("x sip:10.0.0.1", "set id 'x': not a number"),
        ("-1 sip:10.0.0.1", "set id '-1': not a number"),
        ("1.5 sip:10.0.0.1", "set id '1.5': not a number"),
        ("99999999999 sip:10.0.0.1", "not a number 0..2147483647"),
        ("1 tel:+4930123", "URI scheme 'tel' is not sip"),
        ("1 http://example.com/", "URI scheme 'http' is not sip"),
        ("1 sip:gw.example.com?X-Injected=yes", "URI headers (?X-Injected=yes) are not allowed"),
        ("1 sip:gw.example.com;maddr=10.0.0.9", "URI parameter 'maddr' is not allowed"),
        ("1 sip:10.0.0.1 0 0 ping_from=sip:p@x?X-Injected=yes", "ping_from=sip:p@x?X-Injected=yes: URI headers"),
        ("1 sip:10.0.0.1 0 0 prefix=\x1b[2J", "attrs: character \\x1b at position 8 is not printable"),
        ("1 sip:10.0.0.1 0 0 x=" + "y" * 520, "attrs: 522 characters long; the limit is 512"),
        ("1 sip:", "no host"),
        ("1 sip:10.0.0.1:0", "bad port '0'"),
        ("1 sip:10.0.0.1:70000", "bad port '70000'"),
        ("1 sip:10.0.0.1:50x", "bad port '50x'"),
        ("1 sip:[2001:db8::1", "bad IPv6 reference"),
        ("1 sip:[zz::1]", "bad IPv6 reference"),
        ("1 sip:bad_host", "bad host 'bad_host'"),
        ("1 sip:10.0.0.1 abc", "flags 'abc': not a decimal or 0x hex number"),
        ("1 sip:10.0.0.1 -1", "flags '-1': not a decimal or 0x hex number"),
        ("1 sip:10.0.0.1 0xZZ", "flags '0xZZ'"),
        ("1 sip:10.0.0.1 64", "flags 64: unknown bits 0x40"),
        ("1 sip:10.0.0.1 0 high", "priority 'high': not a number"),
        ("1 sip:10.0.0.1 0 -5", "priority '-5': not a number"),
        ("1 sip:10.0.0.1 0 0 weight=abc", "attrs: weight=abc: not an integer"),
        ("1 sip:10.0.0.1 0 0 weight=150", "attrs: weight=150: must be 1..100"),
        ("1 sip:10.0.0.1 0 0 duid=a extra", "too many fields (6)"),
        ("1 sip:10.0.0.1 0 0 duid=a;x=1 y=2", "attrs must not contain blanks"),
        (LONG, f"line is {len(LONG)} characters long; the limit is 1023"),
    ],
)
def test_malformed_lines_give_path_line_and_reason(line: str, reason: str) -> None:
    text = "# gateways\n1 sip:10.0.0.1\n" + line + "\n2 sip:10.0.0.2\n"
    with pytest.raises(ListFileError) as info:
        parse_list(text, "/etc/b2bua/dispatcher.list")
    message = str(info.value)
    assert message.startswith("/etc/b2bua/dispatcher.list:3: ")
    assert reason in message
    assert info.value.errors == [message]
    assert isinstance(info.value, LoadError)


def test_line_of_exactly_1023_characters_is_fine() -> None:
    start = "1 sip:" + "u" * 500 + "@10.0.0.1 0 0 prefix="
    line = start + "x" * (1023 - len(start))
    assert len(line) == 1023
    assert parse_line(line) is not None


def test_every_bad_line_is_reported() -> None:
    text = "1 sip:a.example\nx sip:b\n1 sip:c 0 zz\n# ok\n1 tel:1234a\n"
    with pytest.raises(ListFileError) as info:
        parse_list(text, "d.list")
    assert [e.split(": ", 1)[0] for e in info.value.errors] == ["d.list:2", "d.list:3", "d.list:5"]


def test_many_errors_are_summarised() -> None:
    text = "x sip:a\n" * 30
    with pytest.raises(ListFileError) as info:
        parse_list(text, "d.list")
    assert len(info.value.errors) == 30
    assert str(info.value).splitlines()[-1] == "... and 10 more errors"


def test_row_id_is_the_line_number() -> None:
    text = "# header\n\n1 sip:10.0.0.1\n  # note\n2 sip:10.0.0.2\n"
    assert [(d.setid, d.row_id) for d in parse_list(text, "d.list")] == [(1, 3), (2, 5)]


def test_kamailio_order_from_a_file() -> None:
    """Reference §1, reproduced live with Kamailio 5.6.3: equal priorities come out reversed."""
    text = (
        "1 sip:127.0.0.1:25901 0 10\n"
        "1 sip:127.0.0.1:25902 8 10\n"
        "1 sip:127.0.0.1:25903 0 5\n"
    )
    snapshot = build_snapshot(parse_list(text, "d.list"), "d.list")
    assert [d.uri for d in snapshot.sets[1].destinations] == [
        "sip:127.0.0.1:25902",
        "sip:127.0.0.1:25901",
        "sip:127.0.0.1:25903",
    ]


def test_load_list_file(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("# sets\n1 sip:10.0.0.1 8 5 duid=a\n\n2 gw.example.com:5080\n", encoding="utf-8")
    dests = load_list_file(path)
    assert dests == [
        Destination(1, "sip:10.0.0.1", 8, 5, Attrs(body="duid=a", duid="a"), row_id=2),
        Destination(2, "sip:gw.example.com:5080", row_id=4),
    ]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.list"
    with pytest.raises(ListFileError, match=re.escape(f"{path}: cannot read: No such file or directory")):
        load_list_file(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.list"
    path.write_bytes(b"1 sip:10.0.0.1\n2 sip:caf\xe9.example\n")
    with pytest.raises(ListFileError, match=re.escape(f"{path}:2: not valid UTF-8")):
        load_list_file(path)


def test_write_list_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:old\n")
    path.chmod(0o640)
    dests = [
        Destination(1, "sip:10.0.0.1:5060", 8, 10, Attrs(body="duid=gw1;weight=50", duid="gw1", weight=50)),
        Destination(1, "sip:10.0.0.2:5060", 0, 10),
        Destination(2, "sip:gw.example.com;transport=tcp", 16, 0, description="not in the file"),
    ]
    write_list_file(path, dests, header="written by b2bua\nsecond line")
    text = path.read_text()
    assert text.splitlines()[:2] == ["# written by b2bua", "# second line"]
    loaded = load_list_file(path)
    assert [(d.setid, d.uri, d.flags, d.priority, d.attrs) for d in loaded] == [
        (d.setid, d.uri, d.flags, d.priority, d.attrs) for d in dests
    ]
    assert [d.row_id for d in loaded] == [3, 4, 5]
    assert path.stat().st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["dispatcher.list"]  # no temp file left behind


def test_write_list_file_refuses_unwritable_entries_and_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.1 0 0\n")
    bad = Destination(1, "sip:10.0.0.2", attrs=Attrs(extra={"note": "two words"}))
    with pytest.raises(ValueError, match="cannot contain blanks"):
        write_list_file(path, [Destination(1, "sip:10.0.0.3"), bad])
    assert path.read_text() == "1 sip:10.0.0.1 0 0\n"
    assert os.listdir(tmp_path) == ["dispatcher.list"]


def test_write_new_file(tmp_path: Path) -> None:
    path = tmp_path / "new.list"
    write_list_file(path, [Destination(3, "sip:10.0.0.3")])
    assert path.read_text() == "3 sip:10.0.0.3 0 0\n"
