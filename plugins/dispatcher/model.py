"""Destinations and sets, as Kamailio's dispatcher keeps them (pure data, no I/O).

A :class:`Snapshot` is what one load (list file or database) produced: immutable, swapped
whole on reload. Runtime state that changes while calls flow (state flags set by probing or
by an operator, probe counters, latency statistics, round-robin cursors, call load) lives in
:mod:`plugins.dispatcher.runtime`, keyed by :attr:`Destination.key`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property


class DestFlags(enum.IntFlag):
    """Kamailio's destination flag bits (same values, so list files and RPC stay compatible)."""

    NONE = 0
    INACTIVE = 1  #: I - not selected
    TRYING = 2  #: T - failures seen, below the threshold; still selected
    DISABLED = 4  #: D - administratively disabled: not selected, not probed
    PROBING = 8  #: P - probed with keepalives
    NODNS = 16  #: do not resolve the host at load; never probed
    NOPING = 32  #: never probed (Kamailio 6.0+)


#: longest description ``b2bua dispatcher add`` writes and a loader accepts (characters);
#: Kamailio's ``description`` column holds 64, and a table's own column size applies too
MAX_DESCRIPTION_LENGTH = 255

#: bits that a state change rewrites (Kamailio's DS_STATES_ALL)
STATE_BITS = DestFlags(63)


def state_letters(flags: int) -> str:
    """Kamailio's two-letter display: AP, AX, TP, TX, IP, IX, DP, DX (and AN/IN/DN/TN)."""
    f = DestFlags(flags & 63)
    if f & DestFlags.INACTIVE:
        first = "I"
    elif f & DestFlags.DISABLED:
        first = "D"
    elif f & DestFlags.TRYING:
        first = "T"
    else:
        first = "A"
    if f & DestFlags.PROBING:
        second = "P"
    elif f & DestFlags.NOPING:
        second = "N"
    else:
        second = "X"
    return first + second


#: the bits that keep a destination from being selected (I, D), as a plain int for hot loops
UNUSABLE = int(DestFlags.INACTIVE | DestFlags.DISABLED)


def is_usable(flags: int) -> bool:
    """Kamailio's ``!ds_skip_dst``: neither inactive nor disabled (T is still used)."""
    return not flags & UNUSABLE  # a plain int: IntFlag operations cost microseconds per call


@dataclass(frozen=True)
class Attrs:
    """Parsed destination attributes (``duid=gw1;weight=25;...``).

    ``body`` is the original string; ``extra`` keeps every attribute we do not interpret
    (e.g. ``prefix=49``), visible to hooks through ``Target.data``.
    """

    body: str = ""
    duid: str = ""
    maxload: int = 0
    weight: int = 0
    rweight: int = 0
    cc: int = 0
    latency: int = 0
    socket: str = ""
    sockname: str = ""
    ping_from: str = ""
    obproxy: str = ""
    extra: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Destination:
    """One gateway entry of a set, as loaded.

    :param uri: the destination URI as written (``sip:`` added when the scheme was missing).
    :param flags: the configured flags (the loaded state; runtime state starts from these).
    :param row_id: database row id, or the list file's line number.
    :param address: the resolved ``(ip, port, transport)``; the host name is resolved at load.
    """

    setid: int
    uri: str
    flags: int = 0
    priority: int = 0
    attrs: Attrs = field(default_factory=Attrs)
    description: str = ""
    row_id: int = 0
    address: tuple[str, int, str] | None = None

    @cached_property
    def key(self) -> tuple[int, str]:
        """Identity across reloads: (set id, URI lower-cased)."""
        return (self.setid, self.uri.lower())


@dataclass(frozen=True)
class DestinationSet:
    """One set (group) in Kamailio's array order (see :func:`kamailio_order`)."""

    setid: int
    destinations: tuple[Destination, ...]


@dataclass(frozen=True)
class Snapshot:
    """Every set from one load, keyed by set id."""

    sets: Mapping[int, DestinationSet] = field(default_factory=dict)
    source: str = ""  #: where it came from, for messages ("dispatcher.list", "sqlite:///...")

    def destinations(self) -> tuple[Destination, ...]:
        return tuple(d for s in self.sets.values() for d in s.destinations)


def kamailio_order(entries: list[Destination]) -> tuple[Destination, ...]:
    """Order one set's entries as Kamailio's ``add_dest2list`` + ``reindex_dests`` do.

    Highest priority first; among equal priorities the load order is reversed (the last line
    of the file comes first). Hashes map to array indexes, so this order decides which
    gateway a given Call-ID reaches.
    """
    # stable sort by priority descending over the reversed load order
    return tuple(sorted(reversed(entries), key=lambda d: -d.priority))


def build_snapshot(entries: list[Destination], source: str) -> Snapshot:
    """Group loaded entries into sets in Kamailio's order."""
    by_set: dict[int, list[Destination]] = {}
    for d in entries:
        by_set.setdefault(d.setid, []).append(d)
    return Snapshot(
        {sid: DestinationSet(sid, kamailio_order(ds)) for sid, ds in sorted(by_set.items())}, source
    )
