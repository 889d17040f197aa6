"""Valid SIP requests and hostile mutations of them, for fuzzing the parser and the running B2BUA.

Pure and deterministic: every function takes a ``random.Random``, so a failing case is
reproduced by its seed. ``request()`` builds a well-formed INVITE/OPTIONS/BYE/CANCEL/ACK;
``mutate()`` applies one to three of :data:`MUTATIONS` (bytes flipped, fields truncated or
repeated, huge headers, thousands of Vias, wrong Content-Length, bytes that are not UTF-8,
control characters, ...); ``corpus()`` yields a mix of both. Used by
``tests/unit/test_wire.py`` (against :func:`b2bua.wire.parse_request`) and
``tests/e2e/test_wire_input.py`` (against the B2BUA over UDP).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

METHODS = ("INVITE", "OPTIONS", "BYE", "CANCEL", "ACK")

SDP = ("v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n"
       "m=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n")


@dataclass(frozen=True)
class Peer:
    """Where requests go and where they claim to come from."""

    target_ip: str = "127.0.0.1"
    target_port: int = 5060
    src_ip: str = "127.0.0.2"
    src_port: int = 5060


def request(method: str, peer: Peer, *, user: str = "33123", call_id: str = "fuzz-1@host", branch: str = "1",
            from_tag: str = "f1", to_tag: str = "", cseq: int = 1, display: str = "Fuzz",
            user_agent: str = "fuzzer", extra: tuple[str, ...] = ()) -> bytes:
    """A well-formed request (an INVITE carries SDP)."""
    body = SDP.format(ip=peer.src_ip) if method == "INVITE" else ""
    to = f"<sip:{user}@{peer.target_ip}>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} sip:{user}@{peer.target_ip}:{peer.target_port} SIP/2.0",
        f"Via: SIP/2.0/UDP {peer.src_ip}:{peer.src_port};branch=z9hG4bK-{branch};rport",
        "Max-Forwards: 70",
        f'From: "{display}" <sip:caller@{peer.src_ip}>;tag={from_tag}',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {method}",
        f"Contact: <sip:caller@{peer.src_ip}:{peer.src_port}>",
        f"User-Agent: {user_agent}",
        *extra,
    ]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _lines(msg: bytes) -> tuple[list[bytes], bytes]:
    head, sep, body = msg.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body if sep else b""


def _join(lines: list[bytes], body: bytes) -> bytes:
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def flip_bytes(rng: random.Random, msg: bytes) -> bytes:
    data = bytearray(msg)
    for _ in range(rng.randint(1, 8)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def insert_hostile(rng: random.Random, msg: bytes) -> bytes:
    junk = rng.choice([b"\xff", b"\x00", b"\x1b[31m", b"\xc3", b"\xed\xa0\x80", b"\x7f", b"\r", b"\n",
                       b"\xe2\x80\xae", b"\x85", b"%00", b"\\", b'"', b"<", b";", b"\t", b" "])
    at = rng.randrange(len(msg) + 1)
    return msg[:at] + junk + msg[at:]


def truncate(rng: random.Random, msg: bytes) -> bytes:
    return msg[: rng.randrange(len(msg) + 1)]


def truncate_field(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    i = rng.randrange(len(lines))
    lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
    return _join(lines, body)


def repeat_header(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
    lines[i:i] = [lines[i]] * rng.choice([1, 2, 10, 200])
    return _join(lines, body)


def drop_header(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    if len(lines) > 1:
        del lines[rng.randrange(1, len(lines))]
    return _join(lines, body)


def huge_header(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    size = rng.choice([1000, 2100, 3900, 10000, 70000])
    lines.insert(rng.randrange(1, len(lines) + 1), b"X-Huge: " + b"a" * size)
    return _join(lines, body)


def many_vias(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    n = rng.choice([33, 100, 1000, 3000])
    if rng.random() < 0.5:
        vias = [b"Via: SIP/2.0/UDP 10.0.0.%d;branch=z9hG4bK%d" % (i % 250, i) for i in range(n)]
    else:  # one header line, comma-separated
        vias = [b"Via: " + b", ".join(b"SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK%d" % i for i in range(n))]
    lines[2:2] = vias
    return _join(lines, body)


def wrong_content_length(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    value = rng.choice([b"99999", b"-1", b"abc", b"", b"4294967296", b"1 1", b"%d" % (len(body) + 1), b"0"])
    lines = [ln for ln in lines if not ln.lower().startswith(b"content-length")]
    lines.append(b"Content-Length: " + value)
    return _join(lines, body)


def bad_field_value(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    names = [b"Call-ID", b"From", b"To", b"CSeq", b"Via", b"Max-Forwards", b"Contact"]
    name = rng.choice(names)
    value = rng.choice([b"", b" ", b"\xff\xfe", b"<sip:>", b"<>", b"sip:", b"tel:abc", b"x" * 300,
                        b"<sip:a@b>;tag=" + b"t" * 200, b"1 OPTIONS", b"4294967296 INVITE", b"999",
                        b"<sip:a@[::1>", b"<sip:a@b:99999>", b'"unterminated <sip:a@b>', b"<sip:a b@c>",
                        b"<http://x/>", b"SIP/2.0/UDP", b"\x1b[2J"])
    for i, line in enumerate(lines):
        if line.lower().startswith(name.lower() + b":"):
            lines[i] = name + b": " + value
            break
    return _join(lines, body)


def bad_request_line(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    method, _, rest = lines[0].partition(b" ")
    lines[0] = rng.choice([
        b"INVITE  sip:a@b SIP/2.0", method + b" tel:+4930123 SIP/2.0", method + b" sip:a@b SIP/3.0",
        method + b" <sip:a@b> SIP/2.0", b"INV\xffITE sip:a@b SIP/2.0", method + b" sip:%00@b SIP/2.0",
        method + b" " + b"sip:" + b"a" * 3000 + b"@b SIP/2.0", b"", b"SIP/2.0 200 OK", method + b" " + rest + b" x",
        method + b" sip:a@b;lr;lr;" + b"p=1;" * 400 + b" SIP/2.0",
    ])
    return _join(lines, body)


def line_endings(rng: random.Random, msg: bytes) -> bytes:
    return msg.replace(b"\r\n", rng.choice([b"\n", b"\r", b"\n\r", b"\r\r\n"]))


def duplicate_party(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    name = rng.choice([b"From", b"To", b"Call-ID", b"CSeq"])
    lines.insert(1, name + b": <sip:evil@10.0.0.1>;tag=x" if name in (b"From", b"To") else name + b": 1 INVITE")
    return _join(lines, body)


def folded_header(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    i = rng.randrange(1, len(lines)) if len(lines) > 1 else 0
    lines.insert(i + 1, rng.choice([b" continued", b"\tmore", b" ", b" \xff"]))
    return _join(lines, body)


def garbage_body(rng: random.Random, msg: bytes) -> bytes:
    lines, body = _lines(msg)
    junk = bytes(rng.randrange(256) for _ in range(rng.choice([1, 50, 500])))
    body = body[: rng.randrange(len(body) + 1)] + junk
    lines = [ln for ln in lines if not ln.lower().startswith(b"content-length")]
    lines.append(b"Content-Length: %d" % len(body))
    if not any(ln.lower().startswith(b"content-type") for ln in lines):
        lines.append(b"Content-Type: application/sdp")
    return _join(lines, body)


MUTATIONS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    flip_bytes, insert_hostile, truncate, truncate_field, repeat_header, drop_header, huge_header, many_vias,
    wrong_content_length, bad_field_value, bad_request_line, line_endings, duplicate_party, folded_header,
    garbage_body,
)


def valid(rng: random.Random, peer: Peer, n: int = 0) -> bytes:
    """A well-formed request of a random method with fresh identifiers."""
    method = rng.choice(METHODS)
    in_dialog = method in ("BYE", "ACK") or (method == "OPTIONS" and rng.random() < 0.3)
    return request(method, peer, call_id=f"fuzz-{n}-{rng.getrandbits(32):x}@{peer.src_ip}",
                   branch=f"{n}x{rng.getrandbits(24)}", from_tag=f"f{rng.getrandbits(20)}",
                   to_tag=f"t{rng.getrandbits(20)}" if in_dialog else "", cseq=rng.randint(1, 1000))


def mutate(rng: random.Random, msg: bytes) -> bytes:
    """``msg`` with one to three random mutations."""
    for _ in range(rng.randint(1, 3)):
        msg = rng.choice(MUTATIONS)(rng, msg)
    return msg


def corpus(rng: random.Random, peer: Peer, n: int, valid_share: float = 0.1) -> Iterator[bytes]:
    """``n`` requests: about ``valid_share`` of them well-formed, the rest mutated."""
    for i in range(n):
        msg = valid(rng, peer, i)
        yield msg if rng.random() < valid_share else mutate(rng, msg)
