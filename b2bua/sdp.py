"""What the B2BUA reads from an SDP itself (pure, no pjsua2): the audio stream's direction.

pjsua parses and answers every SDP; the B2BUA only needs to know, when a peer sends a new offer
in a dialog, which direction the peer asks for, to relay hold and resume to the other leg. The
text given here is pjsua's own print of an SDP it has parsed already, but it is still read
defensively: anything unexpected means ``sendrecv`` (no hold).
"""

from __future__ import annotations

from b2bua.events import MediaDirection

_DIRECTIONS = {d.value: d for d in MediaDirection}
#: RFC 2543's hold: the connection address 0.0.0.0 (RFC 3264 section 8.4 still asks to honour it)
_HOLD_ADDRESSES = ("0.0.0.0", "::")


def audio_direction(sdp: str) -> MediaDirection:
    """The direction of the first audio stream of ``sdp``, from its writer's side.

    The stream's own ``a=sendonly|recvonly|inactive|sendrecv`` wins over the session's; a port
    of 0 (the stream refused) is ``inactive``; a connection address of ``0.0.0.0`` (RFC 2543
    hold) takes away receiving. No audio stream at all: ``inactive``.
    """
    session_dir = MediaDirection.SENDRECV
    session_hold = False
    in_media = in_audio = seen_audio = False
    media_dir: MediaDirection | None = None
    media_hold: bool | None = None
    port_zero = False
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            if in_audio:
                break  # the first audio stream is over
            fields = line[2:].split()
            in_media = True
            in_audio = bool(fields) and fields[0] == "audio"
            if in_audio:
                seen_audio = True
                port_zero = len(fields) > 1 and fields[1] == "0"
            continue
        if in_media and not in_audio:
            continue  # another stream's lines (video before the audio)
        if line.startswith("a="):
            direction = _DIRECTIONS.get(line[2:])
            if direction is None:
                continue
            if in_audio:
                media_dir = direction
            else:
                session_dir = direction
        elif line.startswith("c="):
            fields = line.split()
            hold = len(fields) >= 3 and fields[-1] in _HOLD_ADDRESSES
            if in_audio:
                media_hold = hold
            else:
                session_hold = hold
    if not seen_audio or port_zero:
        return MediaDirection.INACTIVE
    direction = media_dir or session_dir
    if (session_hold if media_hold is None else media_hold) and direction.receives:
        direction = MediaDirection.SENDONLY if direction.sends else MediaDirection.INACTIVE
    return direction


def active_streams(sdp: str) -> list[str]:
    """The ``media/proto`` of each ``m=`` line of ``sdp`` with a port (``image/udptl``,
    ``audio/RTP/AVP``); a stream at port 0 is declined and left out."""
    streams = []
    for raw in sdp.splitlines():
        fields = raw[2:].split() if raw.startswith("m=") else []
        if len(fields) >= 2 and fields[1] != "0":
            streams.append(f"{fields[0]}/{fields[2] if len(fields) > 2 else '?'}")
    return streams


def replaces_audio(sdp: str) -> bool:
    """Whether ``sdp`` offers another medium instead of audio: a stream that is not audio with a
    port (T.38 fax's ``m=image``, video alone) and no audio stream with one.

    pjsua cannot take such an offer (it answers 488): it is no hold, and must not be relayed as one.
    """
    media = {stream.partition("/")[0] for stream in active_streams(sdp)}
    return bool(media) and "audio" not in media
