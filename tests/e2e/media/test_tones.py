"""The tone analyser on synthetic signals: it must tell tones apart, and tell a tone from silence."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from .tones import (
    SILENCE_DBFS,
    analyse,
    analyse_wav,
    burst_onsets,
    dtmf_digits,
    read_wav,
    rms_dbfs,
    round_trips,
    sine,
    timeline,
    tone_runs,
    write_wav,
)


def mulaw_round_trip(samples: np.ndarray) -> np.ndarray:
    """What G.711 µ-law does to a signal (8-bit companding), in floats."""
    mu = 255.0
    encoded = np.sign(samples) * np.log1p(mu * np.abs(samples)) / np.log1p(mu)
    quantised = np.round(encoded * 127) / 127
    return np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
@pytest.mark.parametrize("hz", [300.0, 440.0, 880.0, 1300.0, 3400.0])
def test_a_pure_tone_is_found(rate: int, hz: float) -> None:
    report = analyse(sine(hz, 1.0, rate), rate)
    assert not report.silent
    assert abs(report.dominant_hz - hz) < 1.0, report
    assert report.dominant_share > 0.95, report
    assert report.is_tone(hz)
    assert abs(report.rms_dbfs - (-10.0)) < 0.1


def test_a_frequency_between_bins_is_interpolated() -> None:
    # 0.5 s at 8 kHz: bins are 2 Hz apart; 441.37 Hz sits between two of them
    report = analyse(sine(441.37, 0.5, 8000), 8000)
    assert abs(report.dominant_hz - 441.37) < 0.5, report


@pytest.mark.parametrize("samples", [np.zeros(8000), sine(440, 1.0, 8000, dbfs=-60.0),
                                     np.random.default_rng(1).normal(0, 10 ** (-70 / 20), 8000)],
                         ids=["zeros", "quiet-tone", "line-noise"])
def test_silence_is_not_a_tone(samples: np.ndarray) -> None:
    report = analyse(samples, 8000)
    assert report.silent, report
    assert not report.is_tone(440)
    assert report.describe().startswith("silence")


def test_the_louder_of_two_tones_dominates() -> None:
    mix = sine(440, 1.0, 8000, dbfs=-10) + sine(880, 1.0, 8000, dbfs=-20)
    report = analyse(mix, 8000)
    assert report.is_tone(440), report
    assert not report.is_tone(880)
    assert 0.85 < report.dominant_share < 0.95, report  # 10 dB apart: ~91 % of the energy


def test_an_even_mix_is_no_clean_tone() -> None:
    # what a caller would hear if two gateways' audio were both bridged to it
    mix = sine(440, 1.0, 8000, dbfs=-10) + sine(880, 1.0, 8000, dbfs=-10)
    report = analyse(mix, 8000)
    assert report.dominant_share < 0.55, report
    assert not (report.is_tone(440, min_share=0.6) or report.is_tone(880, min_share=0.6))


def test_a_tone_survives_noise_and_g711() -> None:
    rng = np.random.default_rng(7)
    noisy = sine(1300, 1.0, 8000, dbfs=-20) + rng.normal(0, 10 ** (-35 / 20), 8000)
    report = analyse(mulaw_round_trip(noisy), 8000)
    assert report.is_tone(1300), report


def test_a_wav_file_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "tone.wav"
    write_wav(path, sine(880, 0.5, 16000), 16000)
    samples, rate = read_wav(path)
    assert rate == 16000 and samples.size == 8000
    assert analyse_wav(path).is_tone(880)
    # skipping the start leaves the rest
    assert abs(analyse_wav(path, skip=0.25).seconds - 0.25) < 1e-9


def test_read_wav_takes_the_first_channel_and_refuses_8_bit(tmp_path: Path) -> None:
    stereo = tmp_path / "stereo.wav"
    left, right = sine(440, 0.5, 8000), sine(880, 0.5, 8000)
    frames = np.empty(left.size * 2, dtype="<i2")
    frames[0::2] = np.round(left * 32767)
    frames[1::2] = np.round(right * 32767)
    with wave.open(str(stereo), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(frames.tobytes())
    assert analyse_wav(stereo).is_tone(440)
    eight = tmp_path / "8bit.wav"
    with wave.open(str(eight), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    with pytest.raises(ValueError, match="8-bit"):
        read_wav(eight)


def test_a_timeline_shows_what_came_when() -> None:
    rate = 8000
    signal = np.concatenate([np.zeros(int(0.4 * rate)), sine(440, 1.0, rate), sine(880, 1.0, rate)])
    runs = tone_runs(timeline(signal, rate, window=0.2), [440.0, 880.0])
    assert runs == [(None, 2), (440.0, 5), (880.0, 5)]


def test_burst_onsets_find_the_start_of_a_burst() -> None:
    rate = 8000
    signal = np.concatenate([np.zeros(2000), sine(1000, 0.05, rate), np.zeros(1000)])
    (start,) = burst_onsets(signal, rate)
    assert abs(start - 0.25) <= 0.002
    assert burst_onsets(np.zeros(4000), rate) == []
    assert burst_onsets(sine(1000, 0.1, rate), rate) == [0.0]  # loud from the first sample


def test_levels() -> None:
    assert rms_dbfs(np.zeros(10)) == -120.0
    assert rms_dbfs(np.array([])) == -120.0
    assert abs(rms_dbfs(sine(440, 1.0, 8000, dbfs=-20)) + 20) < 0.05
    assert SILENCE_DBFS < -40


def test_round_trips_pair_each_burst_with_its_echo() -> None:
    # a 30 ms burst every 0.5 s, and its echo 87 ms later, 6 dB weaker: the mix one recording holds
    rate = 8000
    signal = np.zeros(rate * 2)
    burst = sine(1000, 0.03, rate)
    for k in range(4):
        start = round(k * 0.5 * rate)
        echo = start + round(0.087 * rate)
        signal[start: start + burst.size] += burst
        signal[echo: echo + burst.size] += burst / 2
    onsets = burst_onsets(signal, rate)
    assert len(onsets) == 8
    trips = round_trips(onsets, period=0.5)
    assert len(trips) == 4 and all(abs(t - 0.087) <= 0.002 for t in trips), trips
    assert burst_onsets(np.zeros(100), rate) == []


def _dtmf(low: float, high: float, seconds: float, rate: int) -> np.ndarray:
    return sine(low, seconds, rate, dbfs=-16.0) + sine(high, seconds, rate, dbfs=-16.0)


@pytest.mark.parametrize(("gap", "heard"), [(0.02, ["3"]), (0.06, ["3", "3"])])
def test_a_dtmf_digit_survives_a_20_ms_dropout_but_not_a_pause(gap: float, heard: list[str]) -> None:
    # "3" (697 + 1477 Hz) for 60 ms, silence, "3" for 140 ms (what a jitter buffer empty for one
    # frame does to one digit): one digit across 20 ms, two across a real 40 ms+ pause
    rate = 8000
    signal = np.concatenate([_dtmf(697.0, 1477.0, 0.06, rate), np.zeros(round(gap * rate)),
                             _dtmf(697.0, 1477.0, 0.14, rate), np.zeros(rate // 5)])
    assert [digit for digit, _ in dtmf_digits(signal, rate)] == heard
