"""Media peers for the tests: `MediaPeer` starts ``peer.py`` (a pjsua2 phone) and follows it.

Each peer is a process of its own (one pjsua2 Endpoint per process) on its own 127.0.0.x address
with a free SIP port and RTP ports; every wait is bounded and a peer that dies or misbehaves is a
`HarnessError` with its log. Its files live in the test's workdir: ``<name>.events.jsonl`` (what it
saw, one JSON object per line), ``<name>.pjsip.log`` (pjsip's log, SIP messages included),
``<name>.out`` (stdout/stderr) and the recordings ``<name>-call<n>.wav``.

Typical use (the fixtures in ``conftest.py`` do the starting and stopping)::

    gw = MediaPeer.start(workdir, "127.0.0.5", name="gw", tone=440)
    phone = MediaPeer.start(workdir, "127.0.0.6", name="phone", tone=1300)
    call = phone.talk(gw.uri_for("svc"), seconds=1.5)
    assert tones.analyse_wav(call.recording, skip=0.3).is_tone(440)

Events (``event`` names the kind; every event has ``t``, wall-clock seconds):

- ``ready``: sip, rtp_port, clock_rate, codecs. ``stopped``: the peer is exiting cleanly.
- ``incoming``: call, source, invite (whole INVITE), headers (first value per lower-cased name), sdp.
- ``calling``: call, uri. ``state``: call, state (pjsua's text: EARLY, CONFIRMED, ...), code, reason,
  call_id. ``ended``: call, code, reason, stats (the last `stream stats <peer.py>` snapshot).
- ``rx``: call, method, first_line, code, content_type, body: each SIP message received in a call.
- ``media``: call, index, status (active, local-hold, remote-hold, none), dir, codec, clock_rate,
  remote_rtp. ``recorded``: call, path (the WAV file is complete).
- ``dtmf``: call, digit, method (rfc4733 or info), duration_ms, phase (start or end).
- ``done`` / ``error``: the outcome of a command (``id``), or an error in a callback.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness import HarnessError, _child_env, _tail, _wait_exit, free_port
from .tones import ToneReport, analyse_wav

PEER_SCRIPT = Path(__file__).resolve().with_name("peer.py")
Event = dict[str, Any]

#: how long a peer may take to start (pjsua2 start-up, a few hundred ms unloaded)
READY_TIMEOUT = 20.0
#: how long a SIP exchange through the B2BUA may take on a loaded test host
SIGNAL_TIMEOUT = 10.0
#: what a call's first moments hold (jitter buffers filling) is not judged
SETTLE = 0.3


@dataclass(frozen=True)
class Talk:
    """One finished call a peer placed: its number, how it ended, and what the peer heard."""

    number: int
    ended: Event
    recording: Path | None

    @property
    def code(self) -> int:
        return int(self.ended["code"])


class MediaPeer:
    """A running ``peer.py``. Start it with `MediaPeer.start`; stop it with `stop`."""

    def __init__(self, proc: subprocess.Popen[bytes], *, name: str, ip: str, port: int, rtp_port: int,
                 workdir: Path) -> None:
        self.proc = proc
        self.name = name
        self.ip = ip
        self.port = port
        self.rtp_port = rtp_port
        self.workdir = workdir
        self.events_path = workdir / f"{name}.events.jsonl"
        self.log_path = workdir / f"{name}.pjsip.log"
        self.out_path = workdir / f"{name}.out"
        self._ids = itertools.count(1)
        self.ready: Event = {}

    # -- start and stop ---------------------------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, ip: str, *, name: str, port: int | None = None, answer: str = "answer",
              tone: float | str | None = None, early_tone: float | str | None = None, delay: float = 0.0,
              telephone_event: bool = True, play: Path | None = None, codecs: Sequence[str] = (),
              clock_rate: int = 8000, record: bool = True, record_self: bool = False, echo: bool = False,
              max_calls: int = 32, log_level: int = 4, rtp_port: int | None = None, sdp_address: str = "",
              stats_interval: float = 0.5, ready_timeout: float = READY_TIMEOUT,
              tls: tuple[Path, Path] | None = None, srtp: str = "off") -> MediaPeer:
        """Start a peer on ``ip`` (a free SIP port unless ``port``; free RTP ports) and wait until ready.

        :param answer: what it does with an incoming INVITE: ``answer``, ``ring``,
            ``ring-then-answer:<s>``, ``early`` (183 with SDP, its tone as early media),
            ``early-then-answer:<s>``, ``reject:<code>``, ``manual`` (nothing: use `command`).
        :param tone: play this frequency (Hz) into every call, or ``"HZ:ON_MS:OFF_MS"`` bursts.
        :param early_tone: play this one instead until a call is answered (an announcement in early media).
        :param delay: seconds before acting on an incoming INVITE (``answer``'s first response).
        :param telephone_event: offer and accept RFC 4733 telephone-event (False: a peer that knows
            DTMF only in-band or by INFO).
        :param play: play this WAV file (looped) instead.
        :param codecs: codec ids in order of preference (``"PCMU"``, ``"G722"``, ``"opus"``);
            the others are off. Empty: pjsua's defaults.
        :param clock_rate: the peer's conference bridge rate, which is also the recordings' rate.
        :param record: record each call's received audio (``Talk.recording``).
        :param record_self: mix the peer's own tone into its recordings (latency measurement).
        :param echo: send each call's received audio back into it.
        :param rtp_port: its first RTP port (where another peer's RTP was); a free one when None.
        :param sdp_address: the address its SDP names instead of ``ip`` (a phone behind a NAT: its
            RTP comes from ``ip``).
        :param tls: ``(certificate, key)``: also listen for SIP over TLS (a free TCP port,
            `tls_port`); its calls to a ``;transport=tls`` URI go over TLS. It checks no certificate.
        :param srtp: ``off``, ``optional`` or ``mandatory``: SRTP (SDES) in its offers and answers.
        """
        if not PEER_SCRIPT.exists():
            raise HarnessError(f"{PEER_SCRIPT} is missing")
        for attempt in range(5):
            sip_port = port or free_port(ip, "udp")
            first_rtp = rtp_port or free_port(ip, "udp") & ~1
            tls_args = ["--tls-port", str(free_port(ip, "tcp")), "--tls-cert", str(tls[0]), "--tls-key",
                        str(tls[1])] if tls else []
            tls_args += ["--srtp", srtp]
            peer = cls._launch(workdir, ip, sip_port, first_rtp, name=name, sdp_address=sdp_address, extra=tls_args,
                               answer=answer, tone=tone, early_tone=early_tone, delay=delay,
                               telephone_event=telephone_event, play=play,
                               codecs=codecs, clock_rate=clock_rate, record=record, record_self=record_self,
                               echo=echo, max_calls=max_calls, log_level=log_level, stats_interval=stats_interval)
            try:
                peer.ready = peer.wait_for("ready", timeout=ready_timeout)
                return peer
            except HarnessError:
                errors = [e["message"] for e in peer.events("error")]
                peer.stop(timeout=2.0)
                # another process took the port between our probe and its bind: try another
                taken = any("Address already in use" in m or "EADDRINUSE" in m for m in errors)
                if attempt < 4 and port is None and rtp_port is None and taken:
                    continue
                raise
        raise HarnessError(f"peer {name}: no free port on {ip} after 5 attempts")  # pragma: no cover

    @classmethod
    def _launch(cls, workdir: Path, ip: str, port: int, rtp_port: int, *, name: str, answer: str,
                tone: float | str | None, early_tone: float | str | None, delay: float, telephone_event: bool,
                play: Path | None,
                codecs: Sequence[str], clock_rate: int,
                record: bool, record_self: bool, echo: bool, max_calls: int, log_level: int,
                stats_interval: float, sdp_address: str = "", extra: Sequence[str] = ()) -> MediaPeer:
        events = workdir / f"{name}.events.jsonl"
        events.write_text("")  # a restarted peer of the same name starts a fresh file
        cmd = [sys.executable, str(PEER_SCRIPT), "--name", name, "--ip", ip, "--port", str(port),
               "--rtp-port", str(rtp_port), "--events", str(events), "--log", str(workdir / f"{name}.pjsip.log"),
               "--log-level", str(log_level), "--answer", answer, "--clock-rate", str(clock_rate),
               "--max-calls", str(max_calls), "--stats-interval", str(stats_interval)]
        if codecs:
            cmd += ["--codecs", ",".join(codecs)]
        if tone is not None:
            cmd += ["--tone", str(tone)]
        if early_tone is not None:
            cmd += ["--early-tone", str(early_tone)]
        if delay:
            cmd += ["--delay", str(delay)]
        if not telephone_event:
            cmd.append("--no-telephone-event")
        if play is not None:
            cmd += ["--play", str(play)]
        if record:
            cmd += ["--record", str(workdir)]
        if record_self:
            cmd.append("--record-self")
        if echo:
            cmd.append("--echo")
        if sdp_address:
            cmd += ["--sdp-address", sdp_address]
        cmd += extra
        with (workdir / f"{name}.out").open("ab") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, env=_child_env(None), stdin=subprocess.PIPE, stdout=out,
                                    stderr=subprocess.STDOUT)
        return cls(proc, name=name, ip=ip, port=port, rtp_port=rtp_port, workdir=workdir)

    def stop(self, timeout: float = 5.0) -> int:
        """Ask it to quit (it hangs up its calls and finishes its recordings), then SIGTERM, SIGKILL."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._send({"cmd": "quit"})
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            if _wait_exit(self.proc, timeout) is None:
                self.proc.send_signal(signal.SIGTERM)
                if _wait_exit(self.proc, 2.0) is None:
                    self.proc.kill()
        return self.proc.wait(5.0)

    # -- addresses ----------------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """``sip:ip:port``, as a dispatcher destination."""
        return f"sip:{self.ip}:{self.port}"

    def uri_for(self, user: str) -> str:
        """``sip:user@ip:port``."""
        return f"sip:{user}@{self.ip}:{self.port}"

    @property
    def tls_port(self) -> int:
        """Its TLS listener's port (0: none)."""
        return int(self.ready.get("tls_port") or 0)

    @property
    def tls_uri(self) -> str:
        """``sip:ip:tls_port;transport=tls``, as a dispatcher destination."""
        return f"sip:{self.ip}:{self.tls_port};transport=tls"

    # -- events -------------------------------------------------------------------------------------

    def events(self, kind: str | None = None, call: int | None = None) -> list[Event]:
        """Every event so far (of ``kind``, about ``call``), in order; a torn last line is left out."""
        try:
            text = self.events_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.split("\n"):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # being written
            if (kind is None or event.get("event") == kind) and (call is None or event.get("call") == call):
                out.append(event)
        return out

    def wait_for(self, kind: str, timeout: float = SIGNAL_TIMEOUT, *, call: int | None = None,
                 where: Callable[[Event], bool] | None = None, what: str = "") -> Event:
        """The first event of ``kind`` (about ``call``, matching ``where``); HarnessError after ``timeout``
        or when the peer exits first."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(kind, call):
                if where is None or where(event):
                    return event
            rc = self.proc.poll()
            if rc is not None:
                raise HarnessError(f"peer {self.name} exited {rc} while waiting for {what or kind}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise HarnessError(f"peer {self.name}: no {what or kind} event within {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)

    def errors(self) -> list[str]:
        """Error events (a failed command or callback): a clean run has none."""
        return [e["message"] for e in self.events("error")]

    # -- commands -----------------------------------------------------------------------------------

    def _send(self, request: dict[str, Any]) -> None:
        if self.proc.stdin is None:
            raise HarnessError(f"peer {self.name}: no stdin")
        self.proc.stdin.write((json.dumps(request) + "\n").encode())
        self.proc.stdin.flush()

    def command(self, cmd: str, timeout: float = SIGNAL_TIMEOUT, **fields: Any) -> Any:
        """Send a command (see ``peer.py``) and return its result; HarnessError if it fails."""
        rid = next(self._ids)
        try:
            self._send({"cmd": cmd, "id": rid, **fields})
        except (OSError, ValueError) as exc:
            raise HarnessError(f"peer {self.name}: cannot send {cmd}: {exc}\n{self.log_tail()}") from None
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if event.get("id") == rid and event["event"] in ("done", "error"):
                    if event["event"] == "error":
                        raise HarnessError(f"peer {self.name}: {event['message']}")
                    return event.get("result")
            if self.proc.poll() is not None or time.monotonic() >= deadline:
                raise HarnessError(f"peer {self.name}: no answer to {cmd}\n{self.log_tail()}")
            time.sleep(0.02)

    def call(self, uri: str, *, count: int = 1, rate: float = 50.0, headers: dict[str, str] | None = None) -> list[int]:
        """Place ``count`` calls to ``uri`` (``rate`` per second); their numbers."""
        return list(self.command("call", uri=uri, count=count, rate=rate, headers=headers or {}))

    def hangup(self, call: int | str = "all", code: int = 0) -> None:
        self.command("hangup", call=call, code=code)

    def dtmf(self, call: int, digits: str, method: str = "rfc4733", duration_ms: int = 160) -> None:
        """Send ``digits``: ``rfc4733`` (RTP events), ``info`` (application/dtmf-relay), ``info-dtmf``."""
        self.command("dtmf", call=call, digits=digits, method=method, duration_ms=duration_ms)

    def hold(self, call: int, direction: str = "sendonly", method: str = "reinvite") -> None:
        """Put ``call`` on hold: offer ``direction`` (``sendonly``, ``inactive``) in a re-INVITE or UPDATE."""
        self.command("hold", call=call, direction=direction, method=method)

    def unhold(self, call: int, method: str = "reinvite") -> None:
        """Resume ``call``: offer ``sendrecv`` in a re-INVITE or UPDATE."""
        self.command("unhold", call=call, method=method)

    def digits(self, call: int) -> list[Event]:
        """The completed digits ``peer`` received in ``call`` so far (``dtmf`` events of phase end)."""
        return [e for e in self.events("dtmf", call) if e["phase"] == "end"]

    def wait_digits(self, call: int, count: int, timeout: float = SIGNAL_TIMEOUT) -> list[Event]:
        """The first ``count`` completed digits of ``call`` (bounded wait)."""
        self.wait_for("dtmf", timeout, call=call, what=f"{count} digits",
                      where=lambda _e: len(self.digits(call)) >= count)
        return self.digits(call)[:count]

    def stats(self, call: int | str = "all") -> dict[str, dict[str, Any]]:
        """Each call's stream counters now (see ``peer.py`` ``_stream_stats``), by call number."""
        return dict(self.command("stats", call=call))

    # -- calls --------------------------------------------------------------------------------------

    def wait_state(self, call: int, state: str, timeout: float = SIGNAL_TIMEOUT) -> Event:
        """Wait for ``call`` to reach ``state`` (EARLY, CONFIRMED, DISCONNCTD, ...); HarnessError if it ends first."""
        def reached(event: Event) -> bool:
            return event["state"] == state

        deadline = time.monotonic() + timeout
        while True:
            hits = [e for e in self.events("state", call) if reached(e)]
            if hits:
                return hits[0]
            ended = self.events("ended", call)
            if ended:
                raise HarnessError(f"peer {self.name}: call {call} ended ({ended[0]['code']} {ended[0]['reason']}) "
                                   f"before reaching {state}")
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise HarnessError(f"peer {self.name}: call {call} not {state} within {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)

    def wait_ended(self, call: int, timeout: float = SIGNAL_TIMEOUT) -> Event:
        """The ``ended`` event of ``call``."""
        return self.wait_for("ended", timeout, call=call, what=f"end of call {call}")

    def recording(self, call: int, timeout: float = SIGNAL_TIMEOUT) -> Path | None:
        """The finished WAV file of ``call`` (None if the call never had audio)."""
        self.wait_ended(call, timeout)
        if not self.events("media", call):
            return None
        event = self.wait_for("recorded", timeout, call=call, what=f"recording of call {call}")
        return Path(event["path"])

    def heard(self, call: int, *, from_answer: bool = True) -> ToneReport | None:
        """What this peer heard in ``call`` (after it ended): from the answer on, or from its first
        audio (early media included); the first `SETTLE` seconds left out. None: no audio at all."""
        recording = self.recording(call)
        if recording is None:
            return None
        skip = SETTLE
        if from_answer:  # the recording starts with the call's first media, maybe early media
            first_media = min(e["t"] for e in self.events("media", call))
            answered = [e["t"] for e in self.events("state", call) if e["state"] == "CONFIRMED"]
            skip += max(0.0, answered[0] - first_media) if answered else 0.0
        return analyse_wav(recording, skip=skip)

    def incoming(self) -> list[Event]:
        """The INVITEs that reached this peer, in order."""
        return self.events("incoming")

    def talk(self, uri: str, seconds: float, *, timeout: float = SIGNAL_TIMEOUT,
             headers: dict[str, str] | None = None) -> Talk:
        """One call: dial ``uri``, wait for the answer, talk ``seconds``, hang up; what was heard.

        A call that is not answered ends the wait early: `Talk.code` says how it ended.
        """
        (number,) = self.call(uri, headers=headers)
        deadline = time.monotonic() + timeout
        while not self.events("ended", number):
            if any(e["state"] == "CONFIRMED" for e in self.events("state", number)):
                time.sleep(seconds)  # the call's length, not a wait for something to happen
                with contextlib.suppress(HarnessError):  # the far end may have hung up meanwhile
                    self.hangup(number)
                break
            if time.monotonic() >= deadline or self.proc.poll() is not None:
                raise HarnessError(f"peer {self.name}: call {number} to {uri} neither answered nor ended "
                                   f"within {timeout}s\n{self.log_tail()}")
            time.sleep(0.02)
        ended = self.wait_ended(number)
        return Talk(number, ended, self.recording(number))

    def log_tail(self, lines: int = 25) -> str:
        """The last lines of the peer's output and pjsip log, and its error events."""
        errors = "\n".join(self.errors()) or "(none)"
        return (f"--- {self.out_path}\n{_tail(self.out_path, 10)}\n--- {self.log_path}\n{_tail(self.log_path, lines)}\n"
                f"--- errors\n{errors}")

