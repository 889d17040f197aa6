"""``[sip] codecs``: its syntax (config) and what it turns on in a build (b2bua.codecs)."""

from __future__ import annotations

import pytest

from b2bua.codecs import TOP_PRIORITY, describe_offer, display_id, matches, priorities
from b2bua.config import ConfigError, parse_config

#: what scripts/build-pjsua2.sh's module lists (pjsua's codec ids)
BUILD = ["PCMU/8000/1", "PCMA/8000/1", "G722/16000/1", "opus/48000/2", "G729/8000/1", "L16/44100/1",
         "L16/44100/2"]


@pytest.mark.parametrize(
    ("entry", "codec_id", "expected"),
    [
        ("PCMU/8000", "PCMU/8000/1", True),
        ("pcmu", "PCMU/8000/1", True),
        ("PCMU/8000/1", "PCMU/8000/1", True),
        ("opus", "opus/48000/2", True),
        ("OPUS/48000", "opus/48000/2", True),
        ("PCM", "PCMU/8000/1", False),  # no prefix matches: PCM is neither PCMU nor PCMA
        ("G72", "G722/16000/1", False),
        ("G722/8000", "G722/16000/1", False),  # the SDP says 8000, pjsua's clock is 16000
        ("PCMU/8000/2", "PCMU/8000/1", False),
        ("PCMU/8000/1/x", "PCMU/8000/1", False),
    ],
)
def test_an_entry_names_a_codec_by_its_parts(entry: str, codec_id: str, expected: bool) -> None:
    assert matches(entry, codec_id) is expected


def test_listed_codecs_are_ranked_and_the_rest_are_off() -> None:
    prio = priorities(["G722", "PCMU/8000"], BUILD)
    assert prio["G722/16000/1"] == TOP_PRIORITY
    assert prio["PCMU/8000/1"] == TOP_PRIORITY - 1
    assert {cid for cid, p in prio.items() if p == 0} == set(BUILD) - {"G722/16000/1", "PCMU/8000/1"}


def test_an_entry_may_name_several_codecs_and_the_first_entry_wins() -> None:
    prio = priorities(["L16", "PCMA", "L16/44100/1"], BUILD)
    assert prio["L16/44100/1"] == prio["L16/44100/2"] == TOP_PRIORITY
    assert prio["PCMA/8000/1"] == TOP_PRIORITY - 1


@pytest.mark.parametrize("entry", ["G729a", "GSM", "iLBC/8000", "PCMU/16000"])
def test_a_codec_the_build_lacks_is_an_error_listing_the_available_ones(entry: str) -> None:
    with pytest.raises(ValueError) as err:
        priorities(["PCMU", entry], BUILD)
    message = str(err.value)
    assert f"{entry!r} is not a codec of this pjsua2 build" in message
    assert "available: PCMU/8000, PCMA/8000, G722/16000, opus/48000/2, G729/8000, L16/44100, L16/44100/2" in message


def test_display_ids_drop_the_mono_suffix() -> None:
    assert display_id("PCMU/8000/1") == "PCMU/8000"
    assert display_id("opus/48000/2") == "opus/48000/2"


@pytest.mark.parametrize(
    ("codecs", "message"),
    [
        ([], "codecs: list at least one codec"),
        (["PCMU", "pcmu"], "codecs: 'pcmu' is listed twice"),
        (["PCMU 8000"], "codecs[0]: 'PCMU 8000': expected NAME, NAME/CLOCK or NAME/CLOCK/CHANNELS"),
        (["PCMU/"], "codecs[0]: 'PCMU/': expected NAME"),
        (["PCMA", "telephone-event/8000"], "codecs[1]: 'telephone-event/8000': RFC 4733 DTMF"),
    ],
)
def test_the_config_checks_the_entries(codecs: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sip": {"codecs": codecs}}, "config.toml")
    assert f"config.toml: [sip] {message}" in str(err.value)


def test_the_default_is_g711() -> None:
    assert parse_config({}).sip.codecs == ("PCMU/8000", "PCMA/8000")


def test_describe_offer_names_the_audio_codecs_of_an_sdp() -> None:
    sdp = ("v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"
           "m=audio 4000 RTP/AVP 9 3 96 101 18 120\r\na=rtpmap:96 opus/48000/2\r\n"
           "a=rtpmap:101 telephone-event/8000\r\na=rtpmap:18 G729/8000\r\n"
           "m=video 4002 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n")
    assert describe_offer(sdp) == ["G722/8000", "GSM/8000", "opus/48000/2", "G729/8000", "payload 120"]
    assert describe_offer("") == []
    assert describe_offer("m=video 4002 RTP/AVP 97\r\n") == []
