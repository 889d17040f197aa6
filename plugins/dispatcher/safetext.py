"""Admin text on its way in and out: descriptions and attrs are checked when written, and
anything read from a list file or a table is escaped before it reaches a terminal.

A value with a line break, a terminal escape sequence (``ESC [``, or the one-character C1
``CSI``) or a bidi override could otherwise print as a forged row or rewrite the screen of the
operator who runs ``b2bua dispatcher show``.
"""

from __future__ import annotations


def escape(text: str, *, backslash: bool = True) -> str:
    """``text`` with every character that is not printable written as a Python escape
    (``\\n``, ``\\x1b``, ``\\u202e``), so one value stays one line on a terminal.

    :param backslash: double a backslash too, so two different values never print alike
        (off for messages that already escaped their data).
    """
    if text.isprintable() and (not backslash or "\\" not in text):
        return text
    out = []
    for ch in text:
        if ch == "\\" and backslash:
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        elif ch in _NAMED:
            out.append(_NAMED[ch])
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: str, limit: int = 80) -> str:
    """``text`` fit for an error message: escaped, and cut after ``limit`` characters."""
    out = escape(text)
    return out if len(out) <= limit else out[:limit] + "..."


def check_printable(text: str, limit: int, name: str = "") -> str:
    """Return ``text`` if it has at most ``limit`` characters, all printable (blanks other than
    the space are not); ValueError (starting with ``name: `` when given) otherwise."""
    where = f"{name}: " if name else ""
    if len(text) > limit:
        raise ValueError(f"{where}{len(text)} characters long; the limit is {limit}")
    if not text.isprintable():
        at = next(i for i, ch in enumerate(text) if not ch.isprintable())
        raise ValueError(f"{where}character {escape(text[at])} at position {at + 1} is not printable"
                         " (line breaks, tabs, control and format characters are refused)")
    return text
