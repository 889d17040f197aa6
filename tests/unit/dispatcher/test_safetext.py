"""Admin text checked on the way in and escaped on the way out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugins.dispatcher.safetext import check_printable, escape, shown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("carrier A", "carrier A"),
        ("Köln Süd", "Köln Süd"),  # printable non-ASCII stays
        ("two\nlines", "two\\nlines"),
        ("cr\rtab\t", "cr\\rtab\\t"),
        ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),
        ("c1 csi \x9b31m", "c1 csi \\x9b31m"),
        ("bidi \u202egnp.exe", "bidi \\u202egnp.exe"),
        ("nbsp\u00a0x", "nbsp\\xa0x"),
        ("back\\slash", "back\\\\slash"),
        ("\U000e0001tag", "\\U000e0001tag"),
    ],
)
def test_escape(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_escape_can_leave_backslashes_alone() -> None:
    assert escape("a\\x41\nb", backslash=False) == "a\\x41\\nb"


@given(st.text())
def test_escaped_text_is_one_printable_line_and_tells_values_apart(text: str) -> None:
    out = escape(text)
    assert out.isprintable()
    assert escape(text + "\n") != out


def test_shown_is_bounded() -> None:
    assert shown("x" * 100) == "x" * 80 + "..."
    assert shown("a\nb") == "a\\nb"


def test_check_printable() -> None:
    assert check_printable("fine text", 20) == "fine text"
    with pytest.raises(ValueError, match=r"^description: 21 characters long; the limit is 20$"):
        check_printable("x" * 21, 20, "description")
    with pytest.raises(ValueError, match=r"^character \\x1b at position 3 is not printable"):
        check_printable("ab\x1b[2J", 20)
    with pytest.raises(ValueError, match=r"character \\t at position 2"):
        check_printable("a\tb", 20)
