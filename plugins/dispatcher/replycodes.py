"""``ping_reply_codes``: which keepalive replies count as "alive", besides 2xx.

Kamailio's ``ds_ping_reply_codes`` syntax: ``;``-separated ``code=NNN`` (100-699) and
``class=N`` (1-6) items, e.g. ``code=403;class=4``. Kamailio silently drops items it does
not understand; we refuse them with a message naming the item, because a typo there turns
a healthy gateway into a dead one (or the reverse) without a word.

Beware: a probe that timed out is a local 408, so accepting ``code=408`` or ``class=4``
means a destination that never answers is never marked down.
"""

from __future__ import annotations

from dataclasses import dataclass

_FORMS = "expected 'code=NNN' (100-699) or 'class=N' (1-6), separated by ';'"


@dataclass(frozen=True)
class ReplyCodes:
    """The accepted keepalive replies: 2xx always, plus listed codes and classes."""

    codes: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()

    def accepts(self, code: int) -> bool:
        """True when a probe answered with ``code`` proves the destination alive."""
        return 200 <= code <= 299 or code in self.codes or code // 100 in self.classes

    def __str__(self) -> str:
        """The Kamailio form, e.g. ``code=403;class=4`` (codes first, each sorted)."""
        items = [f"code={c}" for c in sorted(self.codes)] + [f"class={c}" for c in sorted(self.classes)]
        return ";".join(items)


def parse_reply_codes(text: str) -> ReplyCodes:
    """Parse a ``ping_reply_codes`` value; ``""`` accepts only 2xx.

    Names are case-insensitive; spaces around items, names and values are allowed, and an
    empty item (``code=403;``) is skipped.

    :raises ValueError: naming the first item that is not ``code=NNN`` / ``class=N``.
    """
    codes: set[int] = set()
    classes: set[int] = set()
    for raw in text.split(";"):
        item = raw.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not (value.isascii() and value.isdigit()) or name not in ("code", "class"):
            raise ValueError(f"ping_reply_codes: bad item {item!r}: {_FORMS}")
        number = int(value)
        if name == "code":
            if not 100 <= number <= 699:
                raise ValueError(f"ping_reply_codes: bad item {item!r}: a code must be 100-699")
            codes.add(number)
        else:
            if not 1 <= number <= 6:
                raise ValueError(f"ping_reply_codes: bad item {item!r}: a class must be 1-6")
            classes.add(number)
    return ReplyCodes(frozenset(codes), frozenset(classes))
