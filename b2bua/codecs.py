"""Which of the build's codecs ``[sip] codecs`` turns on, and in what order (pure, no pjsua2).

pjsua names a codec ``NAME/CLOCK/CHANNELS`` (``PCMU/8000/1``, ``G722/16000/1``,
``opus/48000/2``). A ``[sip] codecs`` entry names one by ``NAME``, ``NAME/CLOCK`` or the whole id,
case-insensitively; each entry must match at least one codec of the running build, and every
codec no entry names is off (priority 0), so nothing is offered that was not asked for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

#: pjsua's highest codec priority; entries get 250, 249, ... in the order listed
TOP_PRIORITY = 250
_ENTRY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]*(/[0-9]+(/[0-9]+)?)?$")
#: RFC 3551's static audio payload types, for offers without an rtpmap
STATIC_PAYLOADS = {"0": "PCMU/8000", "3": "GSM/8000", "4": "G723/8000", "8": "PCMA/8000", "9": "G722/8000",
                   "18": "G729/8000"}
#: names people write for things that are not codecs pjsua lists
_NOT_CODECS = {"telephone-event": "RFC 4733 DTMF (telephone-event) is not a codec here: it is always offered"}


def check_entry(entry: str) -> None:
    """Raise ValueError unless ``entry`` looks like ``NAME[/CLOCK[/CHANNELS]]``."""
    if not _ENTRY.match(entry):
        raise ValueError(f"{entry!r}: expected NAME, NAME/CLOCK or NAME/CLOCK/CHANNELS, e.g. 'PCMU/8000'")
    reason = _NOT_CODECS.get(entry.split("/", 1)[0].lower())
    if reason:
        raise ValueError(f"{entry!r}: {reason}")


def matches(entry: str, codec_id: str) -> bool:
    """Whether ``entry`` (``opus``, ``G722/16000``) names ``codec_id`` (``opus/48000/2``)."""
    wanted = entry.lower().split("/")
    have = codec_id.lower().split("/")
    return len(wanted) <= len(have) and have[: len(wanted)] == wanted


def display_id(codec_id: str) -> str:
    """``PCMU/8000/1`` -> ``PCMU/8000``: mono ids as operators write them."""
    return codec_id[:-2] if codec_id.endswith("/1") else codec_id


def priorities(entries: Sequence[str], available: Iterable[str]) -> dict[str, int]:
    """The pjsua priority of every available codec id: listed ones in order, the rest 0.

    :raises ValueError: an entry matches no available codec; the message lists the available ones.
    """
    codec_ids = list(available)
    out = dict.fromkeys(codec_ids, 0)
    for rank, entry in enumerate(entries):
        hits = [cid for cid in codec_ids if matches(entry, cid)]
        if not hits:
            have = ", ".join(display_id(c) for c in codec_ids) or "none"
            raise ValueError(f"{entry!r} is not a codec of this pjsua2 build (available: {have})")
        for cid in hits:
            if not out[cid]:  # the first entry naming a codec decides its rank
                out[cid] = TOP_PRIORITY - rank
    return out


def describe_offer(sdp: str) -> list[str]:
    """The audio codecs an SDP offers, as ``name/clock`` (its rtpmap, else the static payload
    type's name, else ``payload N``), telephone-event left out.

    For the log line of a call refused with 488: which codecs the caller wanted.
    """
    lines = [line.strip() for line in sdp.splitlines()]
    names: dict[str, str] = {}
    for line in lines:
        if line.startswith("a=rtpmap:"):
            pt, _, name = line[len("a=rtpmap:"):].partition(" ")
            names[pt] = name.strip()
    formats = [pt for line in lines if line.startswith("m=audio ") for pt in line.split()[3:]]
    described = (names.get(pt) or STATIC_PAYLOADS.get(pt) or f"payload {pt}" for pt in formats)
    return [name for name in described if not name.lower().startswith("telephone-event/")]
