"""How the dispatcher's shared state is named and carried: pure functions, no I/O.

Entry names in Redis (``<set> <uri>``), keepalive shards and who should probe each
(rendezvous hashing), and the checked reading of what comes from Redis (messages, hash
values): input from another process is never trusted to be well formed.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

from plugins.dispatcher.latency import LatencyStats
from plugins.dispatcher.runtime import DestKey

#: keepalive shards: leases are per shard, entries hashed into them
SHARDS = 64
_LATENCY_FIELDS = tuple(f.name for f in fields(LatencyStats))


def field_of(key: DestKey) -> str:
    """An entry's name in Redis hashes and keys: ``<set> <uri>`` (a URI has no blanks)."""
    return f"{key[0]} {key[1]}"


def key_of_field(text: str | bytes) -> DestKey | None:
    """:func:`field_of` read back; None for anything else."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    setid, sep, uri = text.partition(" ")
    if not sep or not (setid.isascii() and setid.isdigit()) or not uri or " " in uri:
        return None
    return int(setid), uri.lower()


def shard_of(key: DestKey, shards: int = SHARDS) -> int:
    """The keepalive shard of an entry (stable across nodes and versions of Python)."""
    return zlib.crc32(field_of(key).encode("utf-8")) % shards


def preferred(shard: int, nodes: Iterable[str]) -> str | None:
    """The node that should probe ``shard``: rendezvous (highest random weight) hashing, so a
    node joining or leaving moves only its share of the shards."""
    best, best_score = None, -1
    for node in nodes:
        score = int.from_bytes(hashlib.blake2b(f"{shard}/{node}".encode(), digest_size=8).digest(), "big")
        if score > best_score:
            best, best_score = node, score
    return best


def wanted_shards(node: str, probers: Iterable[str], shards: int = SHARDS) -> str:
    """``'0'``/``'1'`` per shard: the shards ``node`` should hold among ``probers`` (itself included)."""
    nodes = sorted({*probers, node})
    return "".join("1" if preferred(s, nodes) == node else "0" for s in range(shards))


def encode_latency(stats: Any) -> list[float] | None:
    if not isinstance(stats, LatencyStats):
        return None
    return [getattr(stats, name) for name in _LATENCY_FIELDS]


def decode_latency(value: Any) -> LatencyStats | None:
    """A message's latency list back as :class:`LatencyStats`; None when absent or malformed."""
    if not isinstance(value, list) or len(value) != len(_LATENCY_FIELDS):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return None
    stats = dict(zip(_LATENCY_FIELDS, value, strict=True))
    stats["timeout"] = int(stats["timeout"])
    stats["count"] = int(stats["count"])
    return LatencyStats(**stats)


@dataclass(frozen=True)
class StateUpdate:
    """One published health or operator change, checked."""

    key: DestKey
    flags: int
    seq: int
    node: str
    write: int  #: the publishing node's own number of the write
    operator: bool  #: an operator's change (``set_state``): kept as an admin disable when D
    latency: LatencyStats | None
    epoch: str = ""  #: which Redis numbered it (see ``P:epoch``)


def parse_state(message: dict[str, Any]) -> StateUpdate:
    """A ``state`` message (or a health key's value) as a :class:`StateUpdate`.

    :raises ValueError: a field is missing or of the wrong type.
    """
    k, flags, seq, node = message.get("k"), message.get("f"), message.get("s"), message.get("n")
    if not (isinstance(k, list) and len(k) == 2 and isinstance(k[0], int) and isinstance(k[1], str) and k[1]):
        raise ValueError(f"bad entry {k!r}")
    for name, value in (("f", flags), ("s", seq)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"bad {name} {value!r}")
    if not isinstance(node, str):
        raise ValueError(f"bad node {node!r}")
    write, epoch = message.get("i", 0), message.get("e", "")
    return StateUpdate((k[0], k[1].lower()), int(flags), int(seq), node,  # type: ignore[arg-type]
                       write if isinstance(write, int) else 0, bool(message.get("o")),
                       decode_latency(message.get("l")), epoch if isinstance(epoch, str) else "")


def parse_counts(value: Any) -> dict[DestKey, int]:
    """A ``load`` message's or load hash's ``{"<set> <uri>": count}`` (bad items are skipped)."""
    out: dict[DestKey, int] = {}
    if not isinstance(value, dict):
        raise ValueError(f"bad counts {value!r}")
    for name, count in value.items():
        key = key_of_field(name)
        if isinstance(count, (bytes, str)):
            text = count.decode() if isinstance(count, bytes) else count
            count = int(text) if text.isascii() and text.isdigit() else None
        if key is not None and isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            out[key] = count
    return out


def health_ttl(ping_interval: float, node_ttl: float) -> float:
    """Seconds a published health entry stays without a new keepalive (0: kept)."""
    return 3 * ping_interval + node_ttl if ping_interval > 0 else 0.0
