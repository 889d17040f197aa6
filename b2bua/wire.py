"""SIP messages from the wire: bytes until proven text.

:func:`parse_request` decides whether the B2BUA can handle a request at all and returns its
fields as text that is safe to log and to hand to pjsua2; anything else raises
:class:`Malformed`, whose ``reason`` is a short stable key (counted in the log summary) and
whose ``detail`` says where and why. "Can be handled" means (Kamailio's ``sanity`` module
checks much the same):

* the head (start line and headers) is UTF-8 without control characters other than the
  line breaks and HTAB; an SDP body is UTF-8 with no control characters but CR, LF, HTAB;
* the message, each header line, the number of headers and of Via entries are bounded
  (the ``MAX_*`` constants);
* the Request-URI is a ``sip:``/``sips:`` URI by :func:`b2bua.sipuri.parse_uri`; From and
  To are name-addrs whose URI parses the same way (or is a ``tel:`` number), with token
  tags; Call-ID is an RFC 3261 ``word[@word]``; CSeq is ``number method`` with the
  request's method; Call-ID, From, To, CSeq, Content-Length, Max-Forwards appear once;
* Content-Length, when present, is a number no larger than the body received.

:func:`check_response` applies the text rules to a response's head. :func:`peek` is the
cheap pre-look (method, To tag) for a request that may be dropped before it is parsed,
:func:`peek_dialog` reads the rest of what names the dialog it claims (Call-ID, From tag), and
:func:`check_in_dialog` is the lighter check for requests inside a dialog.
Everything here is pure: no I/O, no clock, no pjsua2.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

from b2bua.api import CallInfo
from b2bua.sip import COMPACT, printable
from b2bua.sipuri import USUAL_URI_LENGTH, USUAL_URI_PATTERN, check_uri, parse_name_addr

#: largest message handled (bytes); pjsip's own buffer is 4000 bytes (PJSIP_MAX_PKT_LEN)
MAX_MESSAGE = 65535
#: most header lines (after unfolding) in one message
MAX_HEADERS = 100
#: longest header line, name and (unfolded) value, in characters: a STIR/SHAKEN Identity
#: header is about 1 kB
MAX_LINE = 2048
#: most Via entries (each proxy on the way adds one)
MAX_VIA = 32
#: longest Call-ID, tag and method
MAX_CALL_ID = 256
MAX_TAG = 128
MAX_METHOD = 32
#: largest body (bytes)
MAX_BODY = 32768

#: headers that must appear exactly once (a second From is a classic way to confuse a parser)
SINGLE = ("call-id", "from", "to", "cseq", "content-length", "max-forwards")
REQUIRED = ("call-id", "from", "to", "cseq", "via")

_TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
# RFC 3261 §25.1: word = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~" /
#   "(" / ")" / "<" / ">" / ":" / "\" / DQUOTE / "/" / "[" / "]" / "?" / "{" / "}")
_WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
_CALL_ID = re.compile(rf"{_WORD}(?:@{_WORD})?")
_CSEQ = re.compile(r"([0-9]{1,10})[ \t]+(\S+)")
_TEL = re.compile(r"tel:\+?[0-9A-Fa-f*#().\-]{1,64}(?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[^;\s]*)?)*")
# control characters other than HTAB, CR and LF, C1 controls included
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_STATUS_LINE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9]) ")
#: printable ASCII, HTAB, CR and LF: text that is UTF-8 without a control character, told in C
#: (``bytes.translate`` deletes them: nothing is left; :func:`_plain`)
_PLAIN_HEAD = bytes(range(0x20, 0x7F)) + b"\t\r\n"
_STATUS_LINE_BYTES = re.compile(rb"SIP/2\.0 [1-6][0-9][0-9] ")
# peek(): the To header's value, and a tag parameter in it; peek_dialog(): From's value
_TO = re.compile(rb"\n(?:to|t)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_FROM = re.compile(rb"\n(?:from|f)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_TAG = re.compile(rb";[ \t]*tag[ \t]*=", re.IGNORECASE)
_AGENT = re.compile(rb"\n(user-agent|from|f)[ \t]*:([^\r\n]{0,300})", re.IGNORECASE)
#: the usual From/To value, told in one match (:func:`_party`'s fast path): an optional display
#: name (a token run, or a quoted string without escapes), the URI in angle brackets, and at
#: most a tag; groups: the URI, the tag. Anything else takes :func:`parse_name_addr`
_DISPLAY_NAME = r'(?:"[^"\\]*"|[^"<>;\s][^"<>;]*?)?[ \t]*'
_TAG_PARAM = r"(?:;tag=([A-Za-z0-9\-.!%*_+`'~]+))?"
_USUAL_NAME_ADDR = re.compile(_DISPLAY_NAME + r'<([^<>"\s]+)>' + _TAG_PARAM)
#: the same with the usual URI inside (:func:`b2bua.sipuri.check_uri`'s fast path): the whole
#: From or To checked in one match; groups: the URI, its scheme, user, host, port, parameters,
#: the tag. Tried on values of at most :data:`_USUAL_PARTY_LENGTH` characters
_USUAL_PARTY = re.compile(_DISPLAY_NAME + "<(" + USUAL_URI_PATTERN + ")>" + _TAG_PARAM)
_USUAL_PARTY_LENGTH = USUAL_URI_LENGTH  # the regex backtracks no longer than check_uri's on a URI
#: header names as written (before the colon) that are tokens, and the key each is filed under:
#: names repeat from message to message, and a look-up here spares the token check (~3,000
#: instructions a line); emptied when it holds MAX_HEADER_KEYS
_HEADER_KEYS: dict[str, str] = {}
MAX_HEADER_KEYS = 512
_RAW_CALL_ID = re.compile(rb"\n(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


class Malformed(ValueError):
    """A message the B2BUA cannot handle.

    :param reason: a short stable key (``not-utf8``, ``control-char``, ``call-id`` ...), counted
        by reason in the log summary.
    :param detail: where and why, already escaped for a log line.
    :param code: the status to answer with (400; 416 for a Request-URI scheme other than sip/sips).
    """

    def __init__(self, reason: str, detail: str, code: int = 400) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.code = code


class WireRequest(NamedTuple):
    """A request that passed :func:`parse_request`: every text field is UTF-8 without control
    characters and bounded in size. Immutable; a named tuple, which costs a tenth of a frozen
    dataclass to make (it is made for every new call).

    ``headers`` maps lower-case header names (compact forms expanded) to their values in order;
    ``from_uri``/``to_uri`` are the URIs inside From/To; ``transport`` is the top Via's
    (``udp``, ``tcp`` ...); ``via_count`` counts Via entries, not lines.
    """

    method: str
    request_uri: str
    call_id: str
    from_header: str
    to_header: str
    from_uri: str
    to_uri: str
    from_tag: str
    to_tag: str
    cseq: int
    headers: Mapping[str, tuple[str, ...]]
    transport: str = "udp"
    via_count: int = 1
    body_length: int = 0

    @property
    def in_dialog(self) -> bool:
        """Whether the request belongs to a dialog (its To has a tag)."""
        return bool(self.to_tag)

    def header(self, name: str) -> str:
        """The first value of header ``name`` (lower-case), or ``""``."""
        values = self.headers.get(name)
        return values[0] if values else ""

    @property
    def user_agent(self) -> str:
        return self.header("user-agent")


#: the transports a call's :attr:`~b2bua.api.CallInfo.transport` names (the top Via's, which the
#: caller writes: anything else is reported as udp): :data:`b2bua.config.TRANSPORTS`, which this
#: module cannot import (config imports headers, which imports this); a unit test keeps them equal
CALL_TRANSPORTS = frozenset({"udp", "tcp", "tls"})


def call_info(number: int, request: WireRequest, source: str, started: float) -> CallInfo:
    """The :class:`CallInfo` of an incoming INVITE that passed :func:`parse_request`.

    :param number: the B2BUA's own session number.
    :param source: ``ip:port`` it came from (pjsua2's ``srcAddress``; IPv6 in brackets).
    :param started: when it arrived (monotonic seconds).
    """
    ip, port = split_source(source)
    return CallInfo(
        id=number, call_id=request.call_id, request_uri=request.request_uri, from_uri=request.from_uri,
        to_uri=request.to_uri, from_header=request.from_header, to_header=request.to_header, source_ip=ip,
        source_port=port, transport=request.transport if request.transport in CALL_TRANSPORTS else "udp",
        headers=request.headers,
        started=started,
    )


def split_source(source: str) -> tuple[str, int]:
    """``ip:port`` (IPv6 in brackets) as ``(ip, port)``; port 0 when there is none."""
    host, colon, port = source.rpartition(":")
    if not colon or (source.startswith("[") and not host.endswith("]")):
        return source.strip("[]"), 0
    return host.strip("[]"), int(port) if port.isdigit() else 0


def peek(raw: bytes) -> tuple[str, str]:
    """The method and the To header's tag (``""``: none), without parsing the rest (2-4 µs).

    For the decisions made before a request is parsed (does it claim a dialog? then it is
    looked up before its source's block and rate apply). The tag is a header parameter of To,
    read as pjsip reads it (a ``;tag=`` inside ``<...>`` belongs to the URI); it is text decoded
    with ``surrogateescape`` (encoded back the same way, the bytes as they came). The method is
    ``""`` when the start line has none.
    """
    space = raw.find(b" ", 0, MAX_METHOD + 1)
    method = raw[:space].decode("ascii", "replace") if space > 0 else ""
    if not method.isalpha():
        method = ""
    m = _TO.search(raw, 0, 16384)
    if not m or not _TAG.search(m.group(1)):
        return method, ""
    return method, _tag(m.group(1))


def peek_dialog(raw: bytes) -> tuple[bytes, bytes]:
    """The rest of what names the dialog a request claims, as bytes as they came: ``(Call-ID,
    From tag)``, each ``b""`` when absent (a Call-ID over :data:`MAX_CALL_ID` bytes counts as
    absent).

    With the To tag (:func:`peek`, our local tag) these are the keys pjsip's dialog table is
    searched by (``pjsip_ua_find_dialog``); read only for a request with a To tag.
    """
    m = _RAW_CALL_ID.search(raw, 0, 16384)
    call_id = m.group(1).rstrip(b" \t") if m else b""
    if len(call_id) > MAX_CALL_ID:
        call_id = b""
    frm = _FROM.search(raw, 0, 16384)
    return call_id, _tag(frm.group(1)).encode("utf-8", "surrogateescape") if frm else b""


def _tag(value: bytes) -> str:
    """The tag parameter of a From/To value (``""``: none)."""
    if not _TAG.search(value):
        return ""
    return parse_name_addr(value.decode("utf-8", "surrogateescape")).param("tag") or ""


def peek_agent(raw: bytes) -> tuple[str, str]:
    """User-Agent and From of a message that is not parsed (for a scanner check), as text."""
    found = {"user-agent": "", "from": ""}
    for name, value in _AGENT.findall(raw, 0, 16384):
        key = "from" if name.lower() in (b"f", b"from") else "user-agent"
        found[key] = found[key] or value.decode("utf-8", "replace")
    return found["user-agent"], found["from"]


def raw_call_id(raw: bytes) -> str:
    """The Call-ID of a message that may not parse, escaped for a log line (``""`` when none)."""
    m = _RAW_CALL_ID.search(raw, 0, 16384)
    return printable(m.group(1)[:200].decode("utf-8", "surrogateescape").strip(), 100) if m else ""


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """Head (start line and headers) and body; the body is empty when there is no blank line."""
    end = raw.find(b"\r\n\r\n")
    if end >= 0:
        return raw[:end], raw[end + 4:]
    end = raw.find(b"\n\n")
    if end >= 0:
        return raw[:end], raw[end + 2:]
    return raw, b""


def _utf8(data: bytes, reason: str, what: str = "") -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Malformed(reason, f"{what}byte 0x{data[exc.start]:02x} at offset {exc.start} is not UTF-8") from None


def _plain(data: bytes) -> bool:
    """Printable ASCII, HTAB, CR and LF alone (almost every head and SDP): UTF-8 without a
    control character, told in C (~2,000 instructions; the regex search takes ~55 a character)."""
    return not data.translate(None, _PLAIN_HEAD)


def _head_text(head: bytes) -> str:
    """The head as text: :func:`_plain` heads at once, the rest by :func:`_head_text_checked`."""
    return head.decode("ascii") if _plain(head) else _head_text_checked(head)


def _head_text_checked(head: bytes) -> str:
    """The head as text; :class:`Malformed` unless UTF-8 without control characters (the full
    check, which says what is wrong and where)."""
    text = _utf8(head, "not-utf8")
    m = _CONTROL.search(text)
    if m:
        where = text.count("\n", 0, m.start()) + 1
        raise Malformed("control-char", f"control character 0x{ord(m.group()):02x} on line {where}")
    return text


def decode_head(head: bytes) -> list[str]:
    """The head's lines as text; :class:`Malformed` unless UTF-8 without control characters."""
    text = _head_text(head)
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    for number, line in enumerate(lines, 1):
        if "\r" in line or "\n" in line:
            raise Malformed("control-char", f"a bare line break on line {number}")
    return lines


def parse_headers(lines: list[str]) -> dict[str, tuple[str, ...]]:
    """Header lines (start line excluded) as lower-case name -> values; folded lines joined.

    The values are tuples from the start (what :class:`WireRequest` holds): a header repeated is
    rare, and copying a tuple then costs less than making every value a list and converting them.
    """
    headers: dict[str, tuple[str, ...]] = {}
    last: str | None = None  # the key of the header line before
    count = 0
    for number, line in enumerate(lines, 2):
        if not line:
            continue
        if line[0] in " \t":
            if last is None:
                raise Malformed("header-syntax", f"line {number} continues no header")
            values = headers[last]
            folded = line.strip()
            if folded:  # a blank continuation adds nothing (and no trailing space)
                values = headers[last] = (*values[:-1], f"{values[-1]} {folded}")
            if len(values[-1]) > MAX_LINE:
                raise Malformed("header-too-long", f"line {number}: longer than {MAX_LINE} characters")
            continue
        if len(line) > MAX_LINE:
            raise Malformed("header-too-long", f"line {number}: longer than {MAX_LINE} characters")
        count += 1
        if count > MAX_HEADERS:
            raise Malformed("too-many-headers", f"more than {MAX_HEADERS} header lines")
        written, colon, value = line.partition(":")
        key = _HEADER_KEYS.get(written) if colon else None
        if key is None:
            name = written.rstrip(" \t")
            if not colon or not _TOKEN.fullmatch(name):
                raise Malformed("header-syntax", f"line {number}: {printable(line, 60)!r} is not 'Name: value'")
            key = name.lower()
            key = COMPACT.get(key, key)
            if len(_HEADER_KEYS) >= MAX_HEADER_KEYS:
                _HEADER_KEYS.clear()  # a peer sending ever new names: bounded, never stale
            _HEADER_KEYS[written] = key
        known = headers.get(key)
        headers[key] = (value.strip(" \t"),) if known is None else (*known, value.strip(" \t"))
        last = key
    return headers


def parse_request(raw: bytes) -> WireRequest:
    """Parse and check a request; :class:`Malformed` says why it cannot be handled."""
    if len(raw) > MAX_MESSAGE:
        raise Malformed("too-big", f"{len(raw)} bytes (at most {MAX_MESSAGE})")
    head, body = split_message(raw)
    lines = decode_head(head)
    method, request_uri = _request_line(lines[0])
    headers = parse_headers(lines[1:])
    for name in REQUIRED:
        if name not in headers:
            raise Malformed("missing-header", f"no {_title(name)} header")
    for name in SINGLE:
        if len(headers.get(name, ())) > 1:
            raise Malformed("duplicate-header", f"{len(headers[name])} {_title(name)} headers")
    call_id = headers["call-id"][0]
    if len(call_id) > MAX_CALL_ID or not _CALL_ID.fullmatch(call_id):
        raise Malformed("call-id", f"Call-ID {printable(call_id, 60)!r} is not a word[@word] of at most "
                        f"{MAX_CALL_ID} characters")
    from_header, to_header = headers["from"][0], headers["to"][0]
    from_uri, from_tag = _party("From", from_header)
    to_uri, to_tag = _party("To", to_header)
    if not from_tag and method == "INVITE":
        raise Malformed("tag", "From has no tag")
    cseq = _cseq(headers["cseq"][0], method)
    vias = headers["via"]
    via_count = sum(v.upper().count("SIP/2.0/") for v in vias)
    if via_count > MAX_VIA:
        raise Malformed("via", f"{via_count} Via entries (at most {MAX_VIA})")
    top = vias[0]
    if not top.upper().startswith("SIP/2.0/"):
        raise Malformed("via", f"Via {printable(top, 60)!r} does not start with SIP/2.0/")
    transport = (top[8:].split(None, 1) or [""])[0].lower()
    _content_length(headers.get("content-length"), len(body))
    if "max-forwards" in headers:
        value = headers["max-forwards"][0]
        if not value.isdigit() or len(value) > 3 or int(value) > 255:
            raise Malformed("max-forwards", f"Max-Forwards {printable(value, 20)!r} is not 0-255")
    if body:
        _check_body(body, headers.get("content-type", ("",))[0])
    return WireRequest(
        method=method, request_uri=request_uri, call_id=call_id, from_header=from_header,
        to_header=to_header, from_uri=from_uri, to_uri=to_uri, from_tag=from_tag, to_tag=to_tag,
        cseq=cseq, headers=headers, transport=transport,
        via_count=via_count, body_length=len(body),
    )


def check_in_dialog(raw: bytes) -> str:
    """Check a request inside a dialog (its To has a tag) and return its method.

    Only the text rules and the sizes: pjsip matches it to a dialog (or answers 481), pjsua
    handles it, and none of its fields is read here, so the full parse is spared (about 5 µs
    against 40 µs; each call has an ACK and a BYE or two).
    """
    if len(raw) > MAX_MESSAGE:
        raise Malformed("too-big", f"{len(raw)} bytes (at most {MAX_MESSAGE})")
    head, _ = split_message(raw)
    lines = decode_head(head)
    if len(lines) > MAX_HEADERS + 1:
        raise Malformed("too-many-headers", f"more than {MAX_HEADERS} header lines")
    if max(map(len, lines)) > MAX_LINE:
        raise Malformed("header-too-long", f"a line longer than {MAX_LINE} characters")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0" or len(parts[0]) > MAX_METHOD or not _TOKEN.fullmatch(parts[0]):
        raise Malformed("request-line", f"{printable(lines[0], 80)!r} is not 'METHOD URI SIP/2.0'")
    return parts[0]


def check_response(raw: bytes) -> None:
    """Check a response's head: a status line, UTF-8 text without control characters.

    Only what could reach Python as text (the reason phrase, headers) is checked: pjsip parsed
    the rest already. The early filter passes a plain ASCII response on in C (the same rule as
    the fast path below, ``b2bua.rxfilter``); this sees the rest, and every response when the
    filter is off (about 2 µs for a plain ASCII head).
    """
    if len(raw) > MAX_MESSAGE:
        raise Malformed("too-big", f"{len(raw)} bytes (at most {MAX_MESSAGE})")
    head, _ = split_message(raw)
    # almost every response is plain ASCII with CRLF line breaks: that is checked in C (~4,000
    # instructions, not ~37,000); anything else takes the full check, which says what is wrong
    if _plain(head) and head.count(b"\r") == head.count(b"\n") == head.count(b"\r\n") \
            and _STATUS_LINE_BYTES.match(head.split(b"\r\n", 1)[0] + b" "):
        return
    lines = decode_head(head)
    if not _STATUS_LINE.match(lines[0] + " "):
        raise Malformed("status-line", f"{printable(lines[0], 60)!r} is not 'SIP/2.0 code reason'")


def _request_line(line: str) -> tuple[str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or parts[2] != "SIP/2.0":
        raise Malformed("request-line", f"{printable(line, 80)!r} is not 'METHOD URI SIP/2.0'")
    method, uri = parts[0], parts[1]
    if len(method) > MAX_METHOD or not _TOKEN.fullmatch(method):
        raise Malformed("request-line", f"method {printable(method, 40)!r} is not a token")
    scheme = uri.partition(":")[0].lower()
    if scheme not in ("sip", "sips"):
        raise Malformed("request-uri", f"Request-URI scheme {printable(scheme, 20)!r} is not sip or sips", 416)
    try:
        check_uri(uri)
    except ValueError as exc:
        raise Malformed("request-uri", f"Request-URI {exc}") from None
    return method, uri


def _party(name: str, value: str) -> tuple[str, str]:
    """The URI and tag of a From/To value."""
    if len(value) <= _USUAL_PARTY_LENGTH:
        usual = _USUAL_PARTY.fullmatch(value)
        if usual is not None:  # the rest of this function would find nothing wrong with it
            uri, port, tag = usual.group(1, 5, 7)
            if len(uri) <= USUAL_URI_LENGTH and (not port or 1 <= int(port) <= 65535) \
                    and (tag is None or len(tag) <= MAX_TAG):
                return uri, tag or ""
    m = _USUAL_NAME_ADDR.fullmatch(value)
    if m is not None:  # what parse_name_addr would split it into, in one match
        uri, tag = m.group(1), m.group(2) or ""
    else:
        addr = parse_name_addr(value)
        uri, tag = addr.uri, addr.param("tag") or ""
    if uri.lower().startswith("tel:"):
        if not _TEL.fullmatch(uri):
            raise Malformed(name.lower(), f"{name} {printable(uri, 60)!r} is not a tel: number")
    else:
        try:
            check_uri(uri)
        except ValueError as exc:
            raise Malformed(name.lower(), f"{name} URI {exc}") from None
    if tag and (len(tag) > MAX_TAG or not _TOKEN.fullmatch(tag)):
        raise Malformed("tag", f"{name} tag {printable(tag, 40)!r} is not a token of at most {MAX_TAG} characters")
    return uri, tag


def _cseq(value: str, method: str) -> int:
    m = _CSEQ.fullmatch(value)
    if not m or int(m.group(1)) >= 2**31:
        raise Malformed("cseq", f"CSeq {printable(value, 40)!r} is not 'number METHOD'")
    if m.group(2) != method:
        raise Malformed("cseq", f"CSeq method {printable(m.group(2), 20)!r} is not the request's {method}")
    return int(m.group(1))


def _content_length(values: tuple[str, ...] | None, received: int) -> None:
    if not values:
        return
    value = values[0]
    if not value.isdigit() or len(value) > 10:
        raise Malformed("content-length", f"Content-Length {printable(value, 20)!r} is not a number")
    declared = int(value)
    if declared > MAX_BODY:
        raise Malformed("content-length", f"Content-Length {declared} (at most {MAX_BODY})")
    if declared > received:
        raise Malformed("content-length", f"Content-Length {declared} but {received} bytes of body received")


def _check_body(body: bytes, content_type: str) -> None:
    if len(body) > MAX_BODY:
        raise Malformed("too-big", f"a body of {len(body)} bytes (at most {MAX_BODY})")
    if content_type.split(";", 1)[0].strip().lower() != "application/sdp":
        return  # other bodies (SIP-I's ISUP is binary) are pjsua's, never read as text here
    if not _plain(body):
        _check_sdp_text(body)


def _check_sdp_text(body: bytes) -> None:
    """An SDP body's full check: UTF-8 without control characters."""
    text = _utf8(body, "sdp", "SDP ")
    m = _CONTROL.search(text)
    if m:
        raise Malformed("sdp", f"control character 0x{ord(m.group()):02x} in the SDP")


def _title(name: str) -> str:
    return {"call-id": "Call-ID", "cseq": "CSeq"}.get(name, name.title())
