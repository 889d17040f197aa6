"""What a recording sounds like: silence, or a tone, and at which frequency.

The media peers (``peer.py``) each play a tone of their own and record what they hear; a test
reads the recording with :func:`analyse` and asserts on the frequency it finds, so "the caller
heard gateway 2" is a property of the audio, not of the signalling.

The analysis is deliberately simple and robust against what a phone line does to a tone (G.711
quantisation, resampling, a lost frame concealed): a Hann-windowed FFT of the whole signal gives
the dominant frequency (parabolic interpolation between bins, so better than a bin's width) and
how much of the signal's energy lies within a few hertz of it. :func:`timeline` does the same per
window, for "first this tone, then that one" (early media, hold).

Pure numpy; no pjsua2. Used by the e2e tests and ``bench/media.py``; by hand,
``python tones.py FILE.wav...`` says what each recording holds.
"""

from __future__ import annotations

import itertools
import sys
import wave
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float64]

#: full scale of 16-bit PCM
FULL_SCALE = 32768.0
#: quieter than this (RMS, dB relative to full scale) is silence: a G.711 line idles near
#: -70 dBFS; the peers play their tones near -10 dBFS
SILENCE_DBFS = -50.0
#: the band around a frequency that counts as "that tone" (resampling and interpolation
#: shift a tone by a hertz or two at most)
BAND_HZ = 15.0
#: a tone is "heard" when at least this share of the signal's energy lies in its band
MIN_SHARE = 0.5


@dataclass(frozen=True)
class ToneReport:
    """One recording (or one window of it) in a few numbers."""

    rate: int
    seconds: float
    rms_dbfs: float
    #: the strongest frequency, Hz (0.0 for silence)
    dominant_hz: float
    #: share of the energy within BAND_HZ of the dominant frequency (0..1)
    dominant_share: float

    @property
    def silent(self) -> bool:
        return self.rms_dbfs < SILENCE_DBFS

    def is_tone(self, hz: float, *, tolerance: float = BAND_HZ, min_share: float = MIN_SHARE) -> bool:
        """Whether this is the tone ``hz``: not silence, dominant within ``tolerance``, clean enough."""
        return (not self.silent and abs(self.dominant_hz - hz) <= tolerance
                and self.dominant_share >= min_share)

    def describe(self) -> str:
        if self.silent:
            return f"silence ({self.rms_dbfs:.1f} dBFS, {self.seconds:.2f} s)"
        return (f"{self.dominant_hz:.1f} Hz ({self.dominant_share:.0%} of the energy, "
                f"{self.rms_dbfs:.1f} dBFS, {self.seconds:.2f} s)")


def read_wav(path: Path | str) -> tuple[Samples, int]:
    """A 16-bit PCM WAV file as floats in [-1, 1) (first channel) and its sample rate."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit samples, expected 16-bit PCM")
        channels = w.getnchannels()
        rate = w.getframerate()
        raw = w.readframes(w.getnframes())
    pcm = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        pcm = pcm[::channels]
    return pcm.astype(np.float64) / FULL_SCALE, rate


def write_wav(path: Path | str, samples: Samples, rate: int) -> None:
    """Floats in [-1, 1) as a mono 16-bit PCM WAV file (clipped)."""
    pcm = np.clip(np.round(samples * FULL_SCALE), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def sine(hz: float, seconds: float, rate: int, *, dbfs: float = -10.0, phase: float = 0.0) -> Samples:
    """A sine tone at ``dbfs`` (RMS relative to full scale)."""
    n = round(seconds * rate)
    amplitude = np.sqrt(2.0) * 10 ** (dbfs / 20)
    return amplitude * np.sin(2 * np.pi * hz * np.arange(n) / rate + phase)


def rms_dbfs(samples: Samples) -> float:
    """RMS level in dB relative to full scale (-inf clipped to -120)."""
    if samples.size == 0:
        return -120.0
    rms = float(np.sqrt(np.mean(samples * samples)))
    return max(-120.0, 20 * np.log10(rms)) if rms > 0 else -120.0


def analyse(samples: Samples, rate: int) -> ToneReport:
    """Level, dominant frequency and its share of the energy for ``samples``."""
    seconds = samples.size / rate if rate else 0.0
    level = rms_dbfs(samples)
    if samples.size < 16 or level < SILENCE_DBFS:
        return ToneReport(rate, seconds, level, 0.0, 0.0)
    centred = samples - samples.mean()
    window = np.hanning(centred.size)
    power = np.abs(np.fft.rfft(centred * window)) ** 2
    power[0] = 0.0  # DC
    total = float(power.sum())
    if total <= 0:
        return ToneReport(rate, seconds, level, 0.0, 0.0)
    peak = int(np.argmax(power))
    bin_hz = rate / centred.size
    dominant = (peak + _parabolic_offset(power, peak)) * bin_hz
    # the Hann window spreads a pure tone over +-2 bins: never count a band narrower than that
    half = max(2, int(np.ceil(BAND_HZ / bin_hz)))
    share = float(power[max(0, peak - half): peak + half + 1].sum()) / total
    return ToneReport(rate, seconds, level, float(dominant), share)


def _parabolic_offset(power: Samples, peak: int) -> float:
    """Where between bins the true peak lies (-0.5..0.5), from the log power of its neighbours."""
    if not 0 < peak < power.size - 1:
        return 0.0
    a, b, c = np.log(power[peak - 1: peak + 2] + 1e-30)
    denominator = a - 2 * b + c
    return float(0.5 * (a - c) / denominator) if denominator else 0.0


def analyse_wav(path: Path | str, *, skip: float = 0.0) -> ToneReport:
    """:func:`analyse` of a WAV file, leaving out its first ``skip`` seconds (jitter buffer fill)."""
    samples, rate = read_wav(path)
    return analyse(samples[round(skip * rate):], rate)


def timeline(samples: Samples, rate: int, *, window: float = 0.2) -> list[ToneReport]:
    """:func:`analyse` of consecutive ``window``-second slices (the last partial one dropped)."""
    step = max(16, round(window * rate))
    return [analyse(samples[i: i + step], rate) for i in range(0, samples.size - step + 1, step)]


def tone_runs(reports: Sequence[ToneReport], candidates: Sequence[float], *,
              tolerance: float = BAND_HZ) -> list[tuple[float | None, int]]:
    """Collapse a :func:`timeline` into runs of ``(tone, windows)``; ``None`` is silence or other sound.

    Each window is labelled with the candidate frequency it is (see :meth:`ToneReport.is_tone`);
    consecutive equal labels merge. ``[(None, 3), (440.0, 10), (880.0, 12)]`` reads "silence, then
    440 Hz, then 880 Hz".
    """
    runs: list[tuple[float | None, int]] = []
    for report in reports:
        label = next((hz for hz in candidates if report.is_tone(hz, tolerance=tolerance)), None)
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1] + 1)
        else:
            runs.append((label, 1))
    return runs


def burst_onsets(samples: Samples, rate: int, *, threshold_dbfs: float = -30.0, window: float = 0.002) -> list[float]:
    """Seconds at which the signal rises above ``threshold_dbfs`` (``window``-second blocks): each
    burst's start. For latency: a burst and its echo mixed in one recording are two onsets."""
    step = max(1, round(window * rate))
    usable = samples.size - samples.size % step
    if usable == 0:
        return []
    blocks = samples[:usable].reshape(-1, step)
    loud = np.mean(blocks * blocks, axis=1) > 10 ** (threshold_dbfs / 10)
    rising = np.nonzero(loud[1:] & ~loud[:-1])[0] + 1
    starts = ([0] if loud[0] else []) + rising.tolist()
    return [i * step / rate for i in starts]


def round_trips(onsets: Sequence[float], period: float) -> list[float]:
    """Delays between each burst and its echo, from :func:`burst_onsets` of a recording that mixes
    bursts sent every ``period`` seconds with their echo: gaps under half a period."""
    return [b - a for a, b in itertools.pairwise(onsets) if b - a < period / 2]


#: DTMF's row and column frequencies and the keys they make (ITU-T Q.23)
DTMF_LOW = (697.0, 770.0, 852.0, 941.0)
DTMF_HIGH = (1209.0, 1336.0, 1477.0, 1633.0)
DTMF_KEYS = ("123A", "456B", "789C", "*0#D")


def dtmf_digits(samples: Samples, rate: int, *, window: float = 0.02,
                min_dbfs: float = -40.0) -> list[tuple[str, float]]:
    """The in-band DTMF digits in a recording and how long each sounded, ``[("5", 0.16), ...]``.

    Per ``window``-second block, the power at the eight DTMF frequencies (a DFT at each); a block
    is a digit when its strongest row and column tone hold most of its energy. Consecutive blocks
    of the same digit make one, across one block that is not (as a DTMF receiver bridges a
    drop-out shorter than the 40 ms pause between digits, ITU-T Q.24: a jitter buffer that ran
    empty for a frame on a loaded machine); a digit shorter than two blocks is noise.
    """
    step = max(16, round(window * rate))
    n = np.arange(step)
    freqs = DTMF_LOW + DTMF_HIGH
    basis = np.exp(-2j * np.pi * np.outer(freqs, n) / rate)
    labels: list[str | None] = []
    for i in range(0, samples.size - step + 1, step):
        block = samples[i: i + step]
        energy = float(np.sum(block * block))
        if rms_dbfs(block) < min_dbfs or energy <= 0:
            labels.append(None)
            continue
        # a tone of amplitude A gives |DFT|^2 = (A N / 2)^2 and energy N A^2 / 2: share 1 alone
        share = 2 * np.abs(basis @ block) ** 2 / (step * energy)
        row, col = int(np.argmax(share[:4])), int(np.argmax(share[4:]))
        tonal = share[row] > 0.2 and share[4 + col] > 0.2 and share[row] + share[4 + col] > 0.7
        labels.append(DTMF_KEYS[row][col] if tonal else None)
    for i in range(1, len(labels) - 1):
        if labels[i] is None and labels[i - 1] is not None and labels[i - 1] == labels[i + 1]:
            labels[i] = labels[i - 1]
    digits: list[tuple[str, float]] = []
    for label, run in itertools.groupby(labels):
        count = len(list(run))
        if label is not None and count >= 2:
            digits.append((label, count * step / rate))
    return digits


if __name__ == "__main__":
    for name in sys.argv[1:] or ["-h"]:
        if name in ("-h", "--help"):
            print("usage: tones.py FILE.wav...   (what each recording holds, its first 0.3 s left out)")
            break
        print(f"{name}: {analyse_wav(name, skip=0.3).describe()}")
