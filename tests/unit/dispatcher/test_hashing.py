"""ds_get_hash bit-exact with Kamailio, and the URI keys fed to it."""

from __future__ import annotations

import pytest

from plugins.dispatcher.hashing import ds_get_hash, uri_hash_keys

# Kamailio 5.6.3 `dispatcher.hash` (reference §2.2); kamcmd prints some as signed ints
VECTORS = [
    (b"alice", b"server.com", 1412806172),
    (b"bob", b"server.com", 3883463682),
    (b"bob", b"server.com:5070", 1243008018),
    (b"a84b4c76e66710@pc33.atlanta.com", None, 2175018094),
    (b"abc", None, 7167810),
    (b"", None, 1),
    ("été".encode(), None, 3139016441),  # bytes >= 0x80 are signed chars
]


@pytest.mark.parametrize(("x", "y", "expected"), VECTORS)
def test_kamailio_vectors(x: bytes, y: bytes | None, expected: int) -> None:
    assert ds_get_hash(x, y) == expected


@pytest.mark.parametrize(
    ("x", "y", "nslots", "slot"),
    [
        (b"alice", b"server.com", 4, 0),
        (b"bob", b"server.com", 4, 2),
        (b"bob", b"server.com:5070", 4, 2),
        (b"a84b4c76e66710@pc33.atlanta.com", None, 3, 1),
    ],
)
def test_kamailio_slots(x: bytes, y: bytes | None, nslots: int, slot: int) -> None:
    assert ds_get_hash(x, y) % nslots == slot


def test_signed_kamcmd_values_are_the_same_32_bits() -> None:
    assert ds_get_hash(b"bob", b"server.com") - 2**32 == -411503614
    assert ds_get_hash(b"a84b4c76e66710@pc33.atlanta.com") - 2**32 == -2119949202


def test_empty_second_key_equals_none() -> None:
    assert ds_get_hash(b"bob", b"") == ds_get_hash(b"bob", None) == ds_get_hash(b"bob")


@pytest.mark.parametrize("data", [b"", b"a", b"abcd", b"\xff\xfe\xfd", "日本語".encode(), b"x" * 1001])
def test_result_is_unsigned_32_bit_and_never_zero(data: bytes) -> None:
    h = ds_get_hash(data, data)
    assert 1 <= h <= 0xFFFFFFFF


@pytest.mark.parametrize(
    ("uri", "user_only", "keys"),
    [
        ("sip:bob@server.com", False, (b"bob", b"server.com")),
        ("sip:bob@server.com:5060", False, (b"bob", b"server.com")),
        ("sip:bob@server.com:5070", False, (b"bob", b"server.com:5070")),
        ("sips:bob@server.com:5061", False, (b"bob", b"server.com")),
        ("sips:bob@server.com:5060", False, (b"bob", b"server.com:5060")),
        ("sip:bob@server.com:5070", True, (b"bob", b"")),
        ("sip:bob:secret@Server.COM;transport=tcp", False, (b"bob", b"Server.COM")),
        ("<sip:alice@[2001:db8::1]:5080;transport=tcp>", False, (b"alice", b"[2001:db8::1]:5080")),
        ('"Alice" <sip:alice@example.com>;tag=1', False, (b"alice", b"example.com")),
        ("sip:example.com", False, (b"", b"example.com")),
        ("tel:+493012345;phone-context=x", False, (b"+493012345", b"")),
        ("sip:+49301234@gw.example.com?subject=x", False, (b"+49301234", b"gw.example.com")),
    ],
)
def test_uri_hash_keys(uri: str, user_only: bool, keys: tuple[bytes, bytes]) -> None:
    assert uri_hash_keys(uri, user_only) == keys


def test_from_uri_hash_equals_reference_vector() -> None:
    assert ds_get_hash(*uri_hash_keys("sip:bob@server.com:5070", False)) == 1243008018


@pytest.mark.parametrize(
    ("uri", "keys"),
    [
        ("SIP:Bob@host:5062", (b"Bob", b"host:5062")),
        ("sip:[::1]", (b"", b"[::1]")),
        ("sip:u@[::1]:05060", (b"u", b"[::1]")),
        ("sip:u@h:123456", (b"u", b"h:123456")),
        ("garbage", (b"", b"garbage")),
        ("", (b"", b"")),
    ],
)
def test_hash_keys_of_odd_uris_never_raise(uri: str, keys: tuple[bytes, bytes]) -> None:
    assert uri_hash_keys(uri, False) == keys
