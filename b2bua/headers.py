"""Which headers cross the B2BUA, and in what shape: the one home of header pass-through.

A B2BUA writes each leg's messages itself; only the headers an operator lists cross from one
leg to the other (``[headers] to_gateway`` from the caller's INVITE to every B leg,
``[headers] to_caller`` from the answering B leg's 200 back to the caller's 200; see
:meth:`b2bua.session.Session._to_caller` for why not on 180/183). Whatever the patterns say,
these never cross (:data:`NEVER_COPIED`):

* topology: Via, Route, Record-Route, Contact, Path, Service-Route, Call-ID: the other leg's
  addresses and identifiers stay on their own side (topology hiding);
* what pjsua writes for each leg itself: From, To, CSeq, Max-Forwards, the body's headers
  (the body is not copied), the dialog's capabilities and extensions (Supported, Require,
  Allow, Session-Expires, RSeq, RAck, ...) and User-Agent/Server;
* authentication: one hop's credentials and challenges (Authorization, WWW-Authenticate, ...).

A pattern is a header name, case-insensitive, where ``*`` stands for any run of characters
(``X-*``). Values from the wire are checked before they are passed on (:func:`usable_value`):
one line of printable text, valid UTF-8, at most :data:`MAX_VALUE` characters; anything else
is dropped (and counted by the caller). Everything here is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from b2bua.sip import COMPACT, TOKEN, MessageHeaders
from b2bua.wire import MAX_LINE

#: longest header value passed on, in characters: the longest header line a request from the
#: wire may have (:data:`b2bua.wire.MAX_LINE`; a STIR/SHAKEN Identity header is ~1 kB)
MAX_VALUE = MAX_LINE

#: lower-case names never copied from one leg to the other (see the module docstring)
NEVER_COPIED = frozenset({
    # topology hiding
    "via", "route", "record-route", "contact", "path", "service-route", "call-id",
    # written by pjsua for each leg
    "from", "to", "cseq", "max-forwards", "content-length", "content-type", "content-encoding",
    "content-disposition", "content-language", "mime-version", "supported", "require",
    "proxy-require", "unsupported", "allow", "allow-events", "accept", "accept-encoding",
    "session-expires", "min-se", "rseq", "rack", "user-agent", "server", "expires",
    # one hop's authentication
    "authorization", "proxy-authorization", "www-authenticate", "proxy-authenticate",
    "authentication-info", "security-client", "security-server", "security-verify",
})

#: what a header name may contain (RFC 3261 token); a pattern may add ``*``
_PATTERN = re.compile(r"[A-Za-z0-9\-.!%_+`'~*]+")
#: C0 controls (TAB included: a value is passed on as one line of plain text), DEL, C1
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a header name or a name with ``*`` wildcards; ValueError saying why.

    A plain name from :data:`NEVER_COPIED` is refused too: it would never be copied.
    """
    if not _PATTERN.fullmatch(pattern):
        raise ValueError(
            f"{pattern!r} is not a header name pattern: letters, digits and -.!%_+`'~ with * as a wildcard"
            " (e.g. 'P-Asserted-Identity', 'X-*')"
        )
    if "*" not in pattern and pattern.lower() in NEVER_COPIED:
        raise ValueError(f"{pattern!r} is never copied between legs (topology hiding, or pjsua writes it itself)")
    return pattern


#: bytes of header lines copied from one message to the other leg's (name, ": ", value, CRLF):
#: pjsip builds a message in a 4000-byte buffer (PJSIP_MAX_PKT_LEN), and a caller's INVITE of
#: up to 4000 bytes with its X- headers copied whole would make the B leg's too long to send
COPY_BUDGET = 1500
#: header names whose verdict a :class:`HeaderFilter` remembers
KNOWN_NAMES = 512


@dataclass(frozen=True)
class HeaderFilter:
    """Compiled patterns: which header names cross, and how their names are written.

    Build it with :meth:`compile`; ``spelling`` maps a lower-case name to the way a plain
    (wildcard-free) pattern writes it.
    """

    regex: re.Pattern[str] | None
    spelling: Mapping[str, str]
    #: a search of a lower-cased message head that finds every header line whose name could
    #: cross (and maybe others): no match, nothing crosses (:meth:`select` of a
    #: :class:`~b2bua.sip.MessageHeaders` skips the parse)
    candidates: re.Pattern[str] | None = None
    #: :meth:`allows`' answers by name as written (names repeat from call to call; each answer
    #: costs ~5,000 instructions, a look-up here ~100); emptied when it holds :data:`KNOWN_NAMES`
    _known: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def compile(cls, patterns: Sequence[str]) -> HeaderFilter:
        """The filter for ``patterns`` (already checked with :func:`check_pattern`)."""
        if not patterns:
            return cls(None, {})
        alternatives = "|".join(re.escape(p.lower()).replace(r"\*", ".*") for p in patterns)
        spelling = {p.lower(): p for p in patterns if "*" not in p}
        regex = re.compile(f"(?:{alternatives})")
        # a line's name is what precedes its first colon, stripped, lower-cased, a compact form
        # expanded (parse_message): wildcards span no colon or line break, and a compact letter
        # is a candidate when its long name would cross
        names = [re.escape(p.lower()).replace(r"\*", r"[^:\r\n]*") for p in patterns]
        names += [re.escape(short) for short, name in COMPACT.items()
                  if name not in NEVER_COPIED and regex.fullmatch(name)]
        candidates = re.compile(rf"^\s*(?:{'|'.join(names)})\s*:", re.MULTILINE)
        return cls(regex, spelling, candidates=candidates)

    def allows(self, name: str) -> bool:
        """Whether header ``name`` (any case) crosses."""
        known = self._known.get(name)
        if known is not None:
            return known
        lower = name.lower()
        allowed = (self.regex is not None and lower not in NEVER_COPIED and is_name(name)
                   and self.regex.fullmatch(lower) is not None)
        if len(self._known) >= KNOWN_NAMES:
            self._known.clear()  # a peer sending ever new names: bounded, never stale
        self._known[name] = allowed
        return allowed

    def select(self, headers: Mapping[str, Iterable[str]],
               budget: int = COPY_BUDGET) -> tuple[list[tuple[str, str]], int]:
        """The headers of ``headers`` (lower-case name -> values, as :func:`b2bua.sip.parse_message`
        gives them) that cross, as ``(Name, value)`` pairs in order, and how many values were
        dropped: unusable (:func:`usable_value`), or past ``budget`` bytes of header lines."""
        if self.regex is None:
            return [], 0
        if isinstance(headers, MessageHeaders) and not headers.parsed and self.candidates is not None:
            raw = headers.raw
            end = raw.find("\r\n\r\n")  # the head as parse_message takes it
            if not self.candidates.search(raw[:end if end >= 0 else len(raw)].lower()):
                return [], 0
        out: list[tuple[str, str]] = []
        dropped = 0
        left = budget
        for name, values in headers.items():
            if not self.allows(name):
                continue
            written = self.spelling.get(name) or canonical_name(name)
            for value in values:
                size = len(written) + len(value.encode("utf-8", "surrogateescape")) + 4 if usable_value(value) else 0
                if 0 < size <= left:
                    out.append((written, value))
                    left -= size
                else:
                    dropped += 1
        return out, dropped


@dataclass(frozen=True)
class Passthrough:
    """``[headers]`` compiled: what crosses to the gateways, and what back to the caller."""

    to_gateway: HeaderFilter = HeaderFilter(None, {})
    to_caller: HeaderFilter = HeaderFilter(None, {})

    @classmethod
    def compile(cls, to_gateway: Sequence[str], to_caller: Sequence[str]) -> Passthrough:
        return cls(HeaderFilter.compile(to_gateway), HeaderFilter.compile(to_caller))


def is_name(name: str) -> bool:
    """Whether ``name`` is a header name (an RFC 3261 token)."""
    return TOKEN.fullmatch(name) is not None


def usable_value(value: str) -> bool:
    """Whether a header value from the wire may be passed on: at most :data:`MAX_VALUE`
    characters, valid UTF-8 (no bytes pjsua2 handed over undecoded), no control characters."""
    return one_line_problem(value) is None


def canonical_name(lower: str) -> str:
    """A lower-case header name written the usual way: ``x-account-code`` -> ``X-Account-Code``."""
    return "-".join(part[:1].upper() + part[1:] for part in lower.split("-"))


def merge(copied: Sequence[tuple[str, str]], own: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``copied`` headers followed by ``own`` ones; an ``own`` header replaces every copied one of
    the same name (a plugin's or destination's value wins over the caller's)."""
    if not own:
        return list(copied)
    mine = {name.lower() for name, _ in own}
    return [h for h in copied if h[0].lower() not in mine] + list(own)


def one_line_problem(text: str) -> str | None:
    """Why ``text`` cannot go into a message as one header value or URI (None when it can)."""
    if len(text) > MAX_VALUE:
        return f"longer than {MAX_VALUE} characters"
    if text.isascii() and text.isprintable():
        return None  # the usual value, told in C: the search below takes ~55 instructions a character
    m = _CONTROL.search(text)
    if m:
        return f"control character 0x{ord(m.group()):02x} at offset {m.start()}"
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: bytes pjsua2 handed over undecoded
            return "bytes that are not UTF-8"
    return None
