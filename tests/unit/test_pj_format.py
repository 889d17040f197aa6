"""Text our pjproject build writes by hand instead of through glibc's printf family (patch 0008):
IPv4 addresses (``pj_inet_ntop``, not ``inet_ntop``), an address with its port
(``pj_sockaddr_print``, not two ``snprintf`` calls), pool names ending in ``%p``
(``pj_pool_init_int``) and codec ids (``pjmedia_codec_info_to_id``). Checked against the real
library: the same text as the C library's ``inet_ntop`` (``socket.inet_ntop``) and ``snprintf``
for every edge and random input, IPv6 untouched, and too small buffers cut or refused as before."""

from __future__ import annotations

import ctypes
import importlib.util
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

# the module's C library only (no pjsua2 import, no Endpoint): these functions need no pj_init()
_SPEC = importlib.util.find_spec("_pjsua2")
assert _SPEC is not None and _SPEC.origin, "the pjsua2 build is not installed (scripts/setup.sh --test)"
LIB = ctypes.CDLL(_SPEC.origin)
LIB.pj_inet_ntop.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
LIB.pj_inet_ntop.restype = ctypes.c_int
LIB.pj_sockaddr_print.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint]
LIB.pj_sockaddr_print.restype = ctypes.c_char_p
LIB.pj_pool_init_int.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
LIB.pj_pool_init_int.restype = None
LIBC = ctypes.CDLL(None)
#: pj_pool_t: a list member (two pointers), then obj_name[PJ_MAX_OBJ_NAME]
POOL_NAME_OFFSET, PJ_MAX_OBJ_NAME = 2 * ctypes.sizeof(ctypes.c_void_p), 32
WITH_PORT, WITH_BRACKETS = 1, 2
EDGES = ["0.0.0.0", "255.255.255.255", "10.0.0.1", "127.0.0.1", "1.2.3.4", "9.10.99.100",
         "100.200.250.255", "192.168.1.10", "203.0.113.9", "99.9.0.100"]


def pj_inet_ntop(packed: bytes, size: int = 64) -> tuple[int, bytes]:
    af = socket.AF_INET if len(packed) == 4 else socket.AF_INET6
    buf = ctypes.create_string_buffer(b"\xff" * size, size)
    status = LIB.pj_inet_ntop(af, packed, buf, size)
    return status, buf.value


def sockaddr(ip: str, port: int) -> bytes:
    """A Linux ``struct sockaddr_in``/``sockaddr_in6`` (pj_sockaddr has the same layout)."""
    if ":" in ip:
        return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + socket.inet_pton(
            socket.AF_INET6, ip) + struct.pack("=I", 0)
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def pj_print(ip: str, port: int, flags: int, size: int = 64) -> bytes:
    buf = ctypes.create_string_buffer(size)
    LIB.pj_sockaddr_print(sockaddr(ip, port), buf, size, flags)
    return buf.value


def test_ipv4_text_is_inet_ntops_for_every_edge() -> None:
    for ip in EDGES:
        assert pj_inet_ntop(socket.inet_aton(ip)) == (0, ip.encode()), ip


@given(st.binary(min_size=4, max_size=4))
def test_ipv4_text_is_inet_ntops(packed: bytes) -> None:
    assert pj_inet_ntop(packed) == (0, socket.inet_ntop(socket.AF_INET, packed).encode())


def test_a_buffer_too_small_for_the_text_is_refused_and_left_empty() -> None:
    packed = socket.inet_aton("255.255.255.255")  # 15 characters and the NUL
    assert pj_inet_ntop(packed, 16) == (0, b"255.255.255.255")
    status, text = pj_inet_ntop(packed, 15)
    assert status != 0 and text == b""
    assert pj_inet_ntop(socket.inet_aton("1.2.3.4"), 8) == (0, b"1.2.3.4")
    assert pj_inet_ntop(socket.inet_aton("1.2.3.4"), 7)[0] != 0


def test_ipv6_still_goes_through_inet_ntop() -> None:
    for ip in ("::1", "2001:db8::1", "fe80::1:2:3:4", "::ffff:10.0.0.1"):
        packed = socket.inet_pton(socket.AF_INET6, ip)
        assert pj_inet_ntop(packed) == (0, socket.inet_ntop(socket.AF_INET6, packed).encode())


@given(st.binary(min_size=4, max_size=4), st.integers(0, 65535))
def test_sockaddr_print_is_address_colon_port(packed: bytes, port: int) -> None:
    ip = socket.inet_ntop(socket.AF_INET, packed)
    assert pj_print(ip, port, WITH_PORT) == f"{ip}:{port}".encode()
    assert pj_print(ip, port, 0) == ip.encode()
    assert pj_print(ip, port, WITH_PORT | WITH_BRACKETS) == f"{ip}:{port}".encode()  # IPv4: no brackets


def test_sockaddr_print_brackets_ipv6_on_request_and_cuts_like_snprintf() -> None:
    assert pj_print("2001:db8::1", 5060, WITH_PORT | WITH_BRACKETS) == b"[2001:db8::1]:5060"
    assert pj_print("2001:db8::1", 5060, WITH_PORT) == b"2001:db8::1:5060"
    assert pj_print("::1", 0, WITH_BRACKETS) == b"[::1]"
    # snprintf(buf, size, ...) kept size - 1 characters and the NUL
    assert pj_print("255.255.255.255", 65535, WITH_PORT, size=10) == b"255.255.2"
    assert pj_print("10.0.0.1", 5060, WITH_PORT, size=1) == b""


def pool_name(name: bytes) -> tuple[bytes, bytes]:
    """The name pj_pool_init_int gives a pool, and what snprintf(name, pool) makes of it."""
    pool = ctypes.create_string_buffer(512)
    LIB.pj_pool_init_int(pool, name, 4000, 0, None)
    got = ctypes.string_at(ctypes.addressof(pool) + POOL_NAME_OFFSET, PJ_MAX_OBJ_NAME).split(b"\0")[0]
    want = ctypes.create_string_buffer(PJ_MAX_OBJ_NAME)
    LIBC.snprintf(want, ctypes.c_size_t(PJ_MAX_OBJ_NAME), name, ctypes.c_void_p(ctypes.addressof(pool)))
    return got, want.value


def test_pool_names_with_an_address_are_snprintfs() -> None:
    for name in (b"%p", b"tdta%p", b"udp%p", b"rtpstream%p", b"a-prefix-long-enough-to-be-cut%p", b"x" * 40 + b"%p"):
        got, want = pool_name(name)
        assert got == want, name
        assert got.startswith(name[:-2][: PJ_MAX_OBJ_NAME - 1]), name


def test_pool_names_without_an_address_are_copied() -> None:
    for name in (b"pjsua", b"100%", b"a%d", b"%pz"):
        assert pool_name(name)[0] == name


class CodecInfo(ctypes.Structure):
    """pjmedia_codec_info: type, pt, encoding_name (a pj_str_t), clock_rate, channel_cnt."""

    _fields_ = [("type", ctypes.c_int), ("pt", ctypes.c_uint), ("name_ptr", ctypes.c_char_p),
                ("name_len", ctypes.c_ssize_t), ("clock_rate", ctypes.c_uint), ("channel_cnt", ctypes.c_uint)]


LIB.pjmedia_codec_info_to_id.argtypes = [ctypes.POINTER(CodecInfo), ctypes.c_char_p, ctypes.c_uint]
LIB.pjmedia_codec_info_to_id.restype = ctypes.c_void_p


def codec_id(name: bytes, clock_rate: int, channels: int, max_len: int = 32) -> bytes | None:
    info = CodecInfo(0, 0, name, len(name), clock_rate, channels)
    buf = ctypes.create_string_buffer(b"\xff" * max_len, max_len)
    returned = LIB.pjmedia_codec_info_to_id(ctypes.byref(info), buf, max_len)
    assert returned in (None, ctypes.addressof(buf))
    return buf.value if returned else None if buf.value == b"" else b"?"


def snprintf_id(name: bytes, clock_rate: int, channels: int, max_len: int = 32) -> bytes | None:
    """What pjmedia made with snprintf("%.*s/%u/%u"): the text, or None when it did not fit."""
    text = b"%s/%d/%d" % (name.split(b"\0")[0], clock_rate, channels)
    return text if len(text) < max_len else None


def test_codec_ids_are_snprintfs() -> None:
    for case in ((b"PCMU", 8000, 1), (b"opus", 48000, 2), (b"G722", 16000, 1), (b"L16", 44100, 2),
                 (b"x", 0, 0), (b"speex", 4294967295, 4294967295), (b"A" * 26, 8000, 1),
                 (b"A" * 25, 8000, 1), (b"A" * 40, 8000, 1), (b"PC\0MU", 8000, 1)):
        assert codec_id(*case) == snprintf_id(*case), case
    assert codec_id(b"PCMU", 8000, 1, max_len=12) == b"PCMU/8000/1"
    assert codec_id(b"PCMU", 8000, 1, max_len=11) is None  # 11 characters need 12 bytes
    assert codec_id(b"PCMU", 8000, 1, max_len=1) is None


@given(st.binary(max_size=40).filter(lambda b: b"\0" not in b), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.integers(1, 64))
def test_codec_ids_are_snprintfs_for_any_input(name: bytes, rate: int, channels: int, max_len: int) -> None:
    assert codec_id(name, rate, channels, max_len) == snprintf_id(name, rate, channels, max_len)
