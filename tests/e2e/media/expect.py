"""What the media tests expect to hear, and how they say so."""

from __future__ import annotations

from ..configs import RunningB2bua
from .peers import MediaPeer

#: each party plays its own tone: the caller one, each gateway another
CALLER_HZ = 1300.0
GATEWAY_HZ = (440.0, 880.0, 660.0)
#: how long a test call talks
TALK_SECONDS = 1.5
#: how clean "only this one" must be: a second party's audio mixed in at anything but a whisper
#: takes the tone under this share of the energy (two equal tones: 50 %)
ONLY = 0.8


def b2bua_uri(b2b: RunningB2bua, user: str = "media") -> str:
    """The URI a phone dials to call through ``b2b``."""
    return f"sip:{user}@{b2b.ip}:{b2b.port}"


def assert_heard(peer: MediaPeer, call: int, hz: float, *, only: bool = True, from_answer: bool = True) -> None:
    """``peer`` heard the tone ``hz`` in ``call`` (and, with ``only``, nothing else worth noting)."""
    report = peer.heard(call, from_answer=from_answer)
    assert report is not None, f"{peer.name} call {call}: no audio at all"
    assert report.is_tone(hz, min_share=ONLY if only else 0.5), (
        f"{peer.name} call {call} should hear {hz:g} Hz, heard {report.describe()}")
