"""b2bua.sdp.replaces_audio: which offers are another medium instead of audio (T.38 fax)."""

from __future__ import annotations

import pytest

from b2bua.sdp import replaces_audio

HEAD = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"


@pytest.mark.parametrize(("media", "expected"), [
    ("m=image 4000 udptl t38\r\na=T38FaxVersion:0\r\n", True),  # T.38 alone
    ("m=audio 0 RTP/AVP 0\r\nm=image 4000 udptl t38\r\n", True),  # T.38, the audio stream removed
    ("m=video 5000 RTP/AVP 96\r\n", True),  # video alone: nothing pjsua can answer either
    ("m=audio 4000 RTP/AVP 0\r\nm=image 4002 udptl t38\r\n", False),  # audio stays: pjsua answers it
    ("m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", False),  # a hold
    ("m=audio 0 RTP/AVP 0\r\n", False),  # every stream removed: relayed as inactive, as before
    ("m=image 0 udptl t38\r\nm=audio 4000 RTP/AVP 0\r\n", False),  # T.38 refused by the peer itself
    ("", False),
    ("m=image\r\nm=\r\n", False),  # malformed lines are no streams
])
def test_an_offer_replaces_audio_only_when_another_stream_has_a_port_and_no_audio_does(
        media: str, expected: bool) -> None:
    assert replaces_audio(HEAD + media) is expected
