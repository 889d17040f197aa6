"""Destination attributes: ``duid=gw1;weight=25;prefix=49`` <-> :class:`~plugins.dispatcher.model.Attrs`.

The syntax is Kamailio's (``ds_set_attrs()``, which uses the SIP parameter parser):
``name[=value]`` items separated by ``;``, names case-insensitive, one trailing ``;``
ignored, values optionally in double quotes (so a value may hold a ``;``). Names we
interpret are typed into :class:`Attrs` fields; every other one is kept, lower-cased, in
``Attrs.extra`` (e.g. ``prefix=49``, ``ping_socket=...``, ``ocmax=80``).

Admin data, bounded: at most :data:`MAX_ATTRS_LENGTH` characters, all printable (no line
breaks, tabs, control or format characters), and URI-valued attributes (``ping_from``,
``obproxy``) are strict SIP URIs without URI headers, since they end up in SIP messages.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from b2bua.sipuri import parse_uri
from plugins.dispatcher.model import Attrs
from plugins.dispatcher.safetext import check_printable, shown

#: longest attribute string (Kamailio's ``attrs`` column holds 128; a list-file line 1023)
MAX_ATTRS_LENGTH = 512

_NAME = re.compile(r"[A-Za-z0-9_.!%*+`'~-]+")
_INT = re.compile(r"[+-]?[0-9]+")


def _int(name: str, value: str, low: int, high: int) -> int:
    if not _INT.fullmatch(value):
        raise ValueError(f"{name}={shown(value)}: not an integer")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"{name}={value}: must be {low}..{high}")
    return number


def _str(name: str, value: str) -> str:
    return value


def check_message_uri(name: str, value: str) -> str:
    """``value`` if it is a SIP URI fit to go into messages (the From of keepalives, a proxy):
    strict (:func:`b2bua.sipuri.parse_uri`), no URI headers; ValueError naming ``name``."""
    try:
        uri = parse_uri(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if uri.headers:
        raise ValueError(f"{name}={value}: URI headers (?{uri.headers}) are not allowed")
    return value


def _percent(name: str, value: str) -> int:
    return _int(name, value, 1, 100)


def _count(name: str, value: str) -> int:
    return _int(name, value, 0, 2**31 - 1)


def _flag(name: str, value: str) -> int:
    return _int(name, value, 0, 1)


#: attributes with an :class:`Attrs` field, and how their value is checked
_KNOWN: dict[str, Callable[[str, str], int | str]] = {
    "duid": _str,
    "maxload": _count,
    "weight": _percent,
    "rweight": _percent,
    "cc": _flag,
    "latency": _count,
    "socket": _str,
    "sockname": _str,
    "ping_from": check_message_uri,
    "obproxy": check_message_uri,
}


def _split(body: str) -> list[str]:
    """Split on ``;`` outside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in body:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ValueError(f"{shown(body)}: unterminated quote")
    items.append("".join(current))
    return items


def _unquote(name: str, value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if '"' in value:
        raise ValueError(f"{name}={shown(value)}: stray quote")
    return value


def parse_attrs(text: str) -> Attrs:
    """Parse an attribute string; raise ValueError naming the bad item and why.

    Stricter than Kamailio, on purpose: Kamailio logs an invalid ``weight``/``rweight``
    (outside 1..100) or a non-numeric value and loads the entry with 0, which silently
    changes the traffic split. Our loads are all-or-nothing, so an invalid value is an error
    and the previous destinations stay in use. Duplicate names are errors too (Kamailio
    keeps the last one). ``Attrs.body`` is the text without surrounding blanks and without
    one trailing ``;``; it is what hooks see, as ``$xavp(_dsdst_=>attrs)`` does in Kamailio.
    Longer than :data:`MAX_ATTRS_LENGTH` or not printable: ValueError.
    """
    check_printable(text, MAX_ATTRS_LENGTH)
    body = text.strip()
    if body.endswith(";"):
        body = body[:-1]
    if not body:
        return Attrs()
    typed: dict[str, int | str] = {}
    extra: dict[str, str] = {}
    seen: set[str] = set()
    for item in _split(body):
        raw_name, sep, raw_value = item.partition("=")
        name = raw_name.strip().lower()
        if not name:
            raise ValueError(f"{shown(item.strip()) or '(empty)'}: empty attribute name")
        if not _NAME.fullmatch(name):
            raise ValueError(f"{shown(raw_name.strip())}: invalid attribute name")
        if name in seen:
            raise ValueError(f"{name}: given twice")
        seen.add(name)
        value = _unquote(name, raw_value.strip())
        check = _KNOWN.get(name)
        if check is None:
            extra[name] = value
        elif not sep and check is not _str:
            raise ValueError(f"{name}: needs a value")
        else:
            typed[name] = check(name, value)
    return Attrs(body=body, extra=extra, **typed)  # type: ignore[arg-type]


def _quote(value: str) -> str:
    if value and not re.search(r'[;\s"]', value):
        return value
    if '"' in value:
        raise ValueError(f"{shown(value)}: an attribute value cannot contain a double quote")
    return f'"{value}"'


def format_attrs(attrs: Attrs) -> str:
    """The attribute string for ``attrs``: its original ``body`` when that still describes
    it, else a canonical ``name=value;...`` (known attributes first, then ``extra``)."""
    if attrs.body:
        try:
            again = parse_attrs(attrs.body)
        except ValueError:
            again = None
        if again == attrs and dict(again.extra) == dict(attrs.extra):
            return attrs.body
    parts: list[str] = []
    for name in _KNOWN:
        value = getattr(attrs, name)
        if value not in (0, ""):
            parts.append(f"{name}={_quote(str(value))}")
    for name, value in attrs.extra.items():
        parts.append(f"{name}={_quote(value)}" if value else name)
    return ";".join(parts)
