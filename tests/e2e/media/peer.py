"""A SIP phone with real RTP for the tests: one pjsua2 Endpoint in its own process.

It answers incoming calls as told (``--answer``: answer, ring, 183 with early media, reject with a
code, ...) and places calls when told on stdin; it plays a tone (or a WAV file) into every call,
records what it hears to one WAV file per call, can loop the audio back (``--echo``), sends and
reports DTMF (RFC 4733 and SIP INFO of both kinds), and puts calls on hold and back (re-INVITE or
UPDATE, ``sendonly`` or ``inactive``). Everything it sees is an
event: one JSON object per line in ``--events`` (written as it happens, so a test can follow it).
``peers.py`` starts it and reads the events; the tone analyser is ``tones.py``.

Commands, one JSON object per line on stdin (``id`` is echoed in the ``done``/``error`` event):

    {"cmd": "call", "uri": "sip:svc@127.0.0.5:5060", "count": 1, "rate": 50, "headers": {"X-A": "1"}}
    {"cmd": "answer", "call": 1, "code": 200}          # a call the --answer behaviour left ringing
    {"cmd": "hangup", "call": 1}                       # or "call": "all"; "code" for an unanswered one
    {"cmd": "dtmf", "call": 1, "digits": "123#", "method": "rfc4733", "duration_ms": 160}
                                                       # method: rfc4733, info (dtmf-relay), info-dtmf
    {"cmd": "hold", "call": 1, "direction": "sendonly", "method": "reinvite"}   # or inactive; or update
    {"cmd": "unhold", "call": 1, "method": "reinvite"}   {"cmd": "update", "call": 1}  # a refresh
    {"cmd": "stats", "call": "all"}
    {"cmd": "quit"}

Events (each has ``event`` and ``t``, wall-clock seconds): ready, incoming, calling, state, rx,
media, dtmf, stats, ended, done, error; see ``peers.py`` for their fields.

Only the standard library and pjsua2: this file runs as a script (``python peer.py --help``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import heapq
import itertools
import json
import os
import queue
import re
import signal
import stat
import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import pjsua2 as pj

BEHAVIOURS = ("answer", "ring", "ring-then-answer:<s>", "early", "early-then-answer:<s>", "reject:<code>",
              "manual")
DTMF_METHODS = ("rfc4733", "info", "info-dtmf")
#: pjmedia_stream_dtmf_event_flags (not in the SWIG module)
DTMF_IS_UPDATE, DTMF_IS_END = 1 << 0, 1 << 1
#: hold directions (ours) and the methods a hold or resume can go by
HOLD_DIRECTIONS = {"sendonly": pj.PJMEDIA_DIR_ENCODING, "inactive": pj.PJMEDIA_DIR_NONE,
                   "recvonly": pj.PJMEDIA_DIR_DECODING, "sendrecv": pj.PJMEDIA_DIR_ENCODING_DECODING}
HOLD_METHODS = ("reinvite", "update")
_HEADER = re.compile(r"^([A-Za-z-]+):\s*(.*)$")


def parse_behaviour(text: str) -> tuple[str, float, int]:
    """``"early-then-answer:2"`` -> ``("early-then-answer", 2.0, 0)``; ``"reject:503"`` -> code 503."""
    kind, _, arg = text.partition(":")
    if kind in ("answer", "ring", "early", "manual") and not arg:
        return kind, 0.0, 0
    if kind in ("ring-then-answer", "early-then-answer") and arg:
        seconds = float(arg)
        if not 0 <= seconds <= 3600:
            raise ValueError(f"--answer {text}: seconds must be 0..3600")
        return kind, seconds, 0
    if kind == "reject" and arg.isdigit() and 300 <= int(arg) <= 699:
        return kind, 0.0, int(arg)
    raise ValueError(f"--answer {text!r}: expected one of {', '.join(BEHAVIOURS)}")


#: every PeerCall whose pjsua2 side still exists, for shutdown
_alive: weakref.WeakSet[PeerCall] = weakref.WeakSet()


class Events:
    """JSON lines to a file, flushed per line (the harness reads them while we run)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, "t": round(time.time(), 6), **fields}) + "\n")
        self.out.flush()


class PeerAccount(pj.Account):  # type: ignore[misc]
    def __init__(self, peer: Peer) -> None:
        super().__init__()
        self.peer = peer

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        self.peer.guard(self.peer.on_incoming, prm)


class PeerCall(pj.Call):  # type: ignore[misc]
    def __init__(self, peer: Peer, number: int, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(peer.account, call_id)
        _alive.add(self)
        self.peer = peer
        self.number = number
        self.ended = False
        self.recorder: pj.AudioMediaRecorder | None = None
        self.record_path = ""
        self.wired = False  # the call's audio was wired up at least once
        self.playing: pj.AudioMedia | None = None  # the source we play into it (early tone until answered)
        self.confirmed = False
        self.stats: dict[str, Any] = {}

    def release(self) -> None:
        """Delete the pjsua2 side now (as b2bua.legs.Leg.release does): ~Call hangs up whatever
        call holds the slot, so a slot pjsua already gave to a newer call is left alone."""
        if "this" not in self.__dict__:
            return
        _alive.discard(self)
        cid = self.getId()
        if cid >= 0 and pj.Call.lookup(cid) is not self and self.isActive():
            self.this.disown()
        else:
            pj.Call.__swig_destroy__(self)
        del self.this

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        self.peer.guard(self.peer.on_state, self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.peer.guard(self.peer.on_media, self)

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        self.peer.guard(self.peer.on_tsx, self, prm)

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        self.peer.guard(self.peer.on_dtmf, self, prm)


class Peer:
    """The endpoint, its account, the calls, the audio sources; runs on the main thread only."""

    def __init__(self, args: argparse.Namespace, events: Events) -> None:
        self.args = args
        self.events = events
        self.behaviour = parse_behaviour(args.answer)
        self.ep = pj.Endpoint()
        self.account: PeerAccount | None = None
        self.calls: dict[int, PeerCall] = {}
        self.finished: list[PeerCall] = []  # released on the next loop pass, never in a callback
        self.closing: list[tuple[int, str, float]] = []  # recordings being closed: call, path, deadline
        self.numbers = itertools.count(1)
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self.timer_seq = itertools.count()
        self.commands: queue.Queue[str | None] = queue.Queue()
        self.source: pj.AudioMedia | None = None
        self.early_source: pj.AudioMedia | None = None  # --early-tone: played until the call is answered
        self.running = True
        self.record_dir = Path(args.record) if args.record else None

    # -- set-up -----------------------------------------------------------------------------------

    def start(self) -> None:
        a = self.args
        with contextlib.suppress(OSError, AttributeError):  # the banner libCreate prints before any config
            ctypes.CDLL(pj._pjsua2.__file__).pj_log_set_level(0)
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = a.max_calls
        cfg.uaConfig.userAgent = f"media-peer/{a.name}"
        cfg.medConfig.threadCnt = 0
        cfg.medConfig.hasIoqueue = True
        cfg.medConfig.clockRate = a.clock_rate
        cfg.medConfig.sndClockRate = a.clock_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.noVad = True
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.maxMediaPorts = a.max_calls * 2 + 16
        cfg.logConfig.level = a.log_level
        cfg.logConfig.consoleLevel = 0
        cfg.logConfig.msgLogging = a.log_level >= 4
        if a.log:
            cfg.logConfig.filename = a.log
        self.ep.libInit(cfg)
        if a.no_telephone_event:  # neither offered nor answered: a peer that knows only in-band DTMF
            lib = ctypes.CDLL(pj._pjsua2.__file__)
            lib.pjsua_get_pjmedia_endpt.restype = ctypes.c_void_p
            lib.pjmedia_endpt_set_flag.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p]
            off = ctypes.c_int(0)
            lib.pjmedia_endpt_set_flag(lib.pjsua_get_pjmedia_endpt(), 0, ctypes.byref(off))  # HAS_TELEPHONE_EVENT
        tcfg = pj.TransportConfig()
        tcfg.port = a.port
        tcfg.boundAddress = a.ip
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
        if a.tls_port:  # calls to a ";transport=tls" URI go over it; it takes TLS calls too
            tls = pj.TransportConfig()
            tls.port = a.tls_port
            tls.boundAddress = a.ip
            tls.publicAddress = a.ip  # its Contact: the listener's address (pjsip would ask the route)
            tls.tlsConfig.certFile = a.tls_cert
            tls.tlsConfig.privKeyFile = a.tls_key
            tls.tlsConfig.method = pj.PJSIP_SSL_UNSPECIFIED_METHOD
            tls.tlsConfig.proto = pj.PJ_SSL_SOCK_PROTO_TLS1_2 | pj.PJ_SSL_SOCK_PROTO_TLS1_3
            self.ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
        self.ep.libStart()
        self.ep.audDevManager().setNullDev()
        available = [c.codecId for c in self.ep.codecEnum2()]
        wanted = [w.strip() for w in a.codecs.split(",") if w.strip()] if a.codecs else []
        for cid in available:
            rank = next((i for i, w in enumerate(wanted) if cid.lower().startswith(w.lower())), None)
            if wanted:
                self.ep.codecSetPriority(cid, 0 if rank is None else 250 - rank)
        missing = [w for w in wanted if not any(c.lower().startswith(w.lower()) for c in available)]
        if missing:
            raise SystemExit(f"peer {a.name}: codecs {missing} not in this pjsua2 ({', '.join(available)})")
        acfg = pj.AccountConfig()
        acfg.idUri = f"sip:{a.name}@{a.ip}:{a.port}"
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_INACTIVE
        acfg.callConfig.prackUse = pj.PJSUA_100REL_NOT_USED
        acfg.mediaConfig.transportConfig.port = a.rtp_port
        acfg.mediaConfig.transportConfig.portRange = a.rtp_range
        acfg.mediaConfig.transportConfig.boundAddress = a.ip
        acfg.mediaConfig.srtpUse = ("off", "optional", "mandatory").index(a.srtp)
        acfg.mediaConfig.srtpSecureSignaling = 0
        if a.sdp_address:  # behind a NAT: the SDP names another address than the RTP's source
            acfg.mediaConfig.transportConfig.publicAddress = a.sdp_address
        self.account = PeerAccount(self)
        self.account.create(acfg, True)
        self.source = self._make_source()
        if a.early_tone:
            self.early_source = self._tone_source(a.early_tone)
        self.events.emit("ready", sip=f"{a.ip}:{a.port}", tls_port=a.tls_port, rtp_port=a.rtp_port,
                         clock_rate=a.clock_rate,
                         codecs=[c.codecId for c in self.ep.codecEnum2() if c.priority > 0])

    def _make_source(self) -> pj.AudioMedia | None:
        a = self.args
        if a.play:
            player = pj.AudioMediaPlayer()
            player.createPlayer(a.play, 0)  # 0: loop
            return player
        if a.tone:
            return self._tone_source(a.tone)
        return None

    def _tone_source(self, tone: tuple[float, int, int]) -> pj.AudioMedia:
        hz, on_ms, off_ms = tone
        gen = pj.ToneGenerator()
        gen.createToneGenerator(self.args.clock_rate, 1)
        desc = pj.ToneDesc()
        desc.freq1 = int(hz)
        desc.freq2 = 0
        desc.on_msec = on_ms
        desc.off_msec = off_ms
        desc.volume = 0
        tones = pj.ToneDescVector()
        tones.append(desc)
        gen.play(tones, True)
        return gen

    # -- loop -------------------------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self._read_stdin, daemon=True).start()
        next_stats = time.monotonic() + self.args.stats_interval
        while self.running:
            self.ep.libHandleEvents(10)
            now = time.monotonic()
            while self.timers and self.timers[0][0] <= now:
                _, _, fn = heapq.heappop(self.timers)
                self.guard(fn)
            while True:
                try:
                    line = self.commands.get_nowait()
                except queue.Empty:
                    break
                if line is None:  # stdin closed: the harness is gone
                    self.running = False
                    break
                self.guard(self.on_command, line)
            if self.args.stats_interval and now >= next_stats:
                next_stats = now + self.args.stats_interval
                self._snapshot_all()
            self._release_finished()
        self.shutdown()

    def _snapshot_all(self) -> None:
        # a method of its own: a loop variable in run() would keep the last call alive past libDestroy
        for call in list(self.calls.values()):
            self.guard(self.snapshot_stats, call)

    def _read_stdin(self) -> None:
        for line in sys.stdin:
            if line.strip():
                self.commands.put(line)
        # the end of a pipe means whoever drove us is gone: stop rather than linger as an orphan;
        # /dev/null (a shell's background job) ends at once and means nothing
        if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
            self.commands.put(None)

    def later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self.timer_seq), fn))

    def guard(self, fn: Callable[..., None], *args: Any) -> None:
        """Run a handler; report an exception as an event (none may cross into C++)."""
        try:
            fn(*args)
        except pj.Error as exc:
            self.events.emit("error", message=f"{getattr(fn, '__name__', fn)}: {exc.info()}")
        except Exception as exc:  # a bug in this script must show in the test, not vanish
            self.events.emit("error", message=f"{getattr(fn, '__name__', fn)}: {type(exc).__name__}: {exc}")

    def _release_finished(self) -> None:
        for call in self.finished:
            if call.recorder is not None:
                # the conference bridge closes the file a moment later, on its own thread
                call.recorder = None
                self.closing.append((call.number, call.record_path, time.monotonic() + 5.0))
            call.release()
        self.finished.clear()
        for item in list(self.closing):
            number, path, deadline = item
            complete = _wav_complete(path)
            if complete or time.monotonic() > deadline:
                self.closing.remove(item)
                if complete:
                    self.events.emit("recorded", call=number, path=path)
                else:
                    self.events.emit("error", message=f"call {number}: {path} was not closed within 5 s")

    def shutdown(self) -> None:
        with contextlib.suppress(pj.Error):
            self.ep.hangupAllCalls()
        deadline = time.monotonic() + 2.0
        while (self.calls or self.finished or self.closing) and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
            self._release_finished()
        for call in list(self.calls.values()):
            call.recorder = None
        self.calls.clear()
        self.source = self.early_source = None
        gc.collect()
        for call in list(_alive):  # a pjsua2 Call deleted after libDestroy aborts the process
            call.release()
        self.ep.libDestroy()

    # -- incoming calls ---------------------------------------------------------------------------

    def on_incoming(self, prm: pj.OnIncomingCallParam) -> None:
        number = next(self.numbers)
        call = PeerCall(self, number, prm.callId)
        self.calls[number] = call
        invite = _text(prm.rdata.wholeMsg)
        self.events.emit("incoming", call=number, source=prm.rdata.srcAddress, invite=invite,
                         headers=_headers(invite), sdp=_body(invite))
        kind, seconds, code = self.behaviour
        # act on the next pass (pjsua may not have finished setting the call up inside this
        # callback), or --delay seconds later
        delay = self.args.delay
        if kind == "reject":
            self.later(delay, lambda: self.answer(number, code))
        elif kind == "answer":
            self.later(delay, lambda: (self.answer(number, 180), self.answer(number, 200)))
        elif kind in ("ring", "ring-then-answer"):
            self.later(delay, lambda: self.answer(number, 180))
        elif kind in ("early", "early-then-answer"):
            self.later(delay, lambda: self.answer(number, 183))
        if kind in ("ring-then-answer", "early-then-answer"):
            self.later(delay + seconds, lambda: self.answer(number, 200))

    def answer(self, number: int, code: int) -> None:
        call = self.calls.get(number)
        if call is None or call.ended:
            return
        prm = pj.CallOpParam(True)
        prm.statusCode = code
        if code >= 300:
            call.hangup(prm)
        else:
            call.answer(prm)

    # -- call events ------------------------------------------------------------------------------

    def on_state(self, call: PeerCall) -> None:
        info = call.getInfo()
        self.events.emit("state", call=call.number, state=info.stateText, code=info.lastStatusCode,
                         reason=info.lastReason, call_id=info.callIdString)
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and not call.confirmed:
            call.confirmed = True
            if self.early_source is not None:  # the announcement is over: the call's own tone now
                self._play(call, self.source)
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and not call.ended:
            call.ended = True
            self.events.emit("ended", call=call.number, code=info.lastStatusCode, reason=info.lastReason,
                             stats=call.stats)
            self.calls.pop(call.number, None)
            self.finished.append(call)

    def on_media(self, call: PeerCall) -> None:
        info = call.getInfo()
        for media in info.media:
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            status = _MEDIA_STATUS.get(media.status, str(media.status))
            fields: dict[str, Any] = {"index": media.index, "status": status, "dir": _DIR.get(media.dir, "")}
            if media.status in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_LOCAL_HOLD,
                                pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                with contextlib.suppress(pj.Error):
                    si = call.getStreamInfo(media.index)
                    fields.update(codec=si.codecName, clock_rate=si.codecClockRate,
                                  remote_rtp=si.remoteRtpAddress)
                self._wire(call, media.index)
            self.events.emit("media", call=call.number, **fields)

    def _wire(self, call: PeerCall, index: int) -> None:
        """Our tone into the call, the call into its recorder (and back into itself with --echo).

        After every media update: pjsua may have replaced the call's conference port (a new
        direction or codec restarts the stream), and a new port may reuse an old one's number,
        so connections are made again each time (connecting twice changes nothing)."""
        aud = call.getAudioMedia(index)
        call.wired = True
        call.playing = None  # maybe a new port: whatever played into the old one plays into this one
        early = self.early_source is not None and not call.confirmed
        self._play(call, self.early_source if early else self.source)
        # our (null) speaker plays every call, as a phone's would: the bridge reads a call's audio
        # only when it goes somewhere, and its jitter buffer counters mean something only then
        aud.startTransmit(self.ep.audDevManager().getPlaybackDevMedia())
        if self.args.echo:
            aud.startTransmit(aud)
        if self.record_dir is not None:
            if call.recorder is None:
                call.record_path = str(self.record_dir / f"{self.args.name}-call{call.number}.wav")
                call.recorder = pj.AudioMediaRecorder()
                call.recorder.createRecorder(call.record_path)
                if self.args.record_self and self.source is not None:
                    self.source.startTransmit(call.recorder)
            aud.startTransmit(call.recorder)

    def _play(self, call: PeerCall, source: pj.AudioMedia | None) -> None:
        """Play ``source`` (and nothing else of ours) into the call's audio."""
        try:
            aud = call.getAudioMedia(-1)
        except pj.Error:
            return  # no audio (yet)
        if call.playing is not None and call.playing is not source:
            with contextlib.suppress(pj.Error):
                call.playing.stopTransmit(aud)
        if source is not None:
            source.startTransmit(aud)
        call.playing = source

    def on_tsx(self, call: PeerCall, prm: pj.OnCallTsxStateParam) -> None:
        body = prm.e.body.tsxState
        if body.type != pj.PJSIP_EVENT_RX_MSG:
            return
        msg = _text(body.src.rdata.wholeMsg)
        first = msg.split("\r\n", 1)[0]
        if not first or body.tsx.state not in (pj.PJSIP_TSX_STATE_TRYING, pj.PJSIP_TSX_STATE_PROCEEDING,
                                               pj.PJSIP_TSX_STATE_COMPLETED, pj.PJSIP_TSX_STATE_TERMINATED):
            return
        headers = _headers(msg)
        if (body.tsx.method == "INFO" and first.startswith("INFO ") and body.tsx.state == pj.PJSIP_TSX_STATE_TRYING
                and headers.get("content-type", "").lower() == "application/dtmf"):
            # pjsua answers only application/dtmf-relay itself (pjsip would answer this one 500)
            digit = _body(msg).strip()
            respond_in_dialog(body.src.rdata, 200 if len(digit) == 1 else 400)
            self.events.emit("dtmf", call=call.number, digit=digit, method="info-dtmf", duration_ms=0,
                             phase="end")
        self.events.emit("rx", call=call.number, method=body.tsx.method, first_line=first,
                         code=body.tsx.statusCode if first.startswith("SIP/2.0") else 0,
                         content_type=headers.get("content-type", ""), body=_body(msg))

    def on_dtmf(self, call: PeerCall, prm: pj.OnDtmfEventParam) -> None:
        method = "info" if prm.method == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        end = bool(prm.flags & DTMF_IS_END) or method == "info"
        if prm.flags & DTMF_IS_UPDATE and not end:
            return  # only the first and the last indication of a digit
        self.events.emit("dtmf", call=call.number, digit=prm.digit, method=method,
                         duration_ms=prm.duration, phase="end" if end else "start")

    def snapshot_stats(self, call: PeerCall) -> None:
        """The audio stream's RTP/RTCP and jitter buffer counters, kept for the 'ended' event."""
        if call.ended or not call.wired:
            return
        info = call.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status != pj.PJSUA_CALL_MEDIA_NONE:
                call.stats = _stream_stats(call.getStreamStat(media.index))
                call.stats.update(self._wiring(call, media.audioConfSlot))
                with contextlib.suppress(pj.Error):  # where our RTP goes and where the last came from
                    call.stats["rtp_to"] = call.getStreamInfo(media.index).remoteRtpAddress
                    call.stats["rtp_from"] = call.getMedTransportInfo(media.index).srcRtpName
                return

    def _wiring(self, call: PeerCall, slot: int) -> dict[str, Any]:
        """What the conference bridge carries now (its clock applies connections on its next tick):
        whether what we play reaches the call, and the call reaches its recorder; None: not ours."""
        if slot < 0:
            return {"conf_slot": slot}

        def listens(source: int, sink: int) -> bool | None:
            if source < 0 or sink < 0:
                return None
            info = pj.AudioMedia.getPortInfoFromId(source)  # held: SWIG's .listeners points into it
            return sink in info.listeners

        playing = call.playing.getPortId() if call.playing is not None else -1
        recorder = call.recorder.getPortId() if call.recorder is not None else -1
        return {"conf_slot": slot, "plays_into_call": listens(playing, slot),
                "call_into_recorder": listens(slot, recorder)}

    # -- commands ---------------------------------------------------------------------------------

    def on_command(self, line: str) -> None:
        request = json.loads(line)
        cmd = request.get("cmd")
        rid = request.get("id")
        handler = getattr(self, f"cmd_{cmd}", None) if isinstance(cmd, str) else None
        if handler is None:
            self.events.emit("error", id=rid, message=f"unknown command {cmd!r}")
            return
        try:
            result = handler(request)
        except pj.Error as exc:
            self.events.emit("error", id=rid, message=f"{cmd}: {exc.info()}")
            return
        except (KeyError, ValueError, TypeError) as exc:
            self.events.emit("error", id=rid, message=f"{cmd}: {type(exc).__name__}: {exc}")
            return
        self.events.emit("done", id=rid, cmd=cmd, result=result)

    def _calls(self, request: dict[str, Any]) -> list[PeerCall]:
        which = request.get("call", "all")
        if which == "all":
            return list(self.calls.values())
        call = self.calls.get(int(which))
        if call is None:
            raise KeyError(f"no call {which} in progress")
        return [call]

    def cmd_call(self, request: dict[str, Any]) -> list[int]:
        uri = str(request["uri"])
        count = int(request.get("count", 1))
        rate = float(request.get("rate", 50))
        headers = request.get("headers", {})
        numbers = [next(self.numbers) for _ in range(count)]
        for i, number in enumerate(numbers):
            self.later(i / rate, lambda n=number: self._dial(n, uri, headers))
        return numbers

    def _dial(self, number: int, uri: str, headers: dict[str, str]) -> None:
        call = PeerCall(self, number)
        self.calls[number] = call
        prm = pj.CallOpParam(True)
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        prm.opt.textCount = 0
        if headers:
            hv = pj.SipHeaderVector()
            for name, value in headers.items():
                h = pj.SipHeader()
                h.hName = name
                h.hValue = value
                hv.append(h)
            prm.txOption.headers = hv
        self.events.emit("calling", call=number, uri=uri)
        try:
            call.makeCall(uri, prm)
        except pj.Error as exc:
            self.calls.pop(number, None)
            self.events.emit("ended", call=number, code=500, reason=f"makeCall: {exc.info()}", stats={})

    def cmd_answer(self, request: dict[str, Any]) -> None:
        for call in self._calls(request):
            self.answer(call.number, int(request.get("code", 200)))

    def cmd_hangup(self, request: dict[str, Any]) -> None:
        for call in self._calls(request):
            self.snapshot_stats(call)
            prm = pj.CallOpParam(True)
            if request.get("code"):
                prm.statusCode = int(request["code"])
            call.hangup(prm)

    def cmd_dtmf(self, request: dict[str, Any]) -> None:
        digits = str(request["digits"])
        method = request.get("method", "rfc4733")
        duration = int(request.get("duration_ms", 160))
        if method not in DTMF_METHODS:
            raise ValueError(f"method {method!r}: expected one of {', '.join(DTMF_METHODS)}")
        for call in self._calls(request):
            if method == "info-dtmf":  # RFC 2976-style INFO with application/dtmf: one digit each
                for digit in digits:
                    prm = pj.CallSendRequestParam()
                    prm.method = "INFO"
                    prm.txOption.contentType = "application/dtmf"
                    prm.txOption.msgBody = digit
                    call.sendRequest(prm)
                continue
            prm = pj.CallSendDtmfParam()
            prm.digits = digits
            prm.duration = duration
            prm.method = pj.PJSUA_DTMF_METHOD_SIP_INFO if method == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
            call.sendDtmf(prm)

    def cmd_hold(self, request: dict[str, Any]) -> None:
        self._direction(request, str(request.get("direction", "sendonly")))

    def cmd_unhold(self, request: dict[str, Any]) -> None:
        self._direction(request, "sendrecv")

    def _direction(self, request: dict[str, Any], direction: str) -> None:
        """Offer ``direction`` (ours) in a re-INVITE or an UPDATE (``method``)."""
        method = str(request.get("method", "reinvite"))
        if direction not in HOLD_DIRECTIONS or method not in HOLD_METHODS:
            raise ValueError(f"direction {direction!r} / method {method!r}: expected one of "
                             f"{', '.join(HOLD_DIRECTIONS)} / {', '.join(HOLD_METHODS)}")
        for call in self._calls(request):
            prm = pj.CallOpParam(True)
            prm.opt.flag = pj.PJSUA_CALL_SET_MEDIA_DIR
            dirs = pj.IntVector()
            dirs.append(HOLD_DIRECTIONS[direction])
            prm.opt.mediaDir = dirs
            if method == "update":
                call.update(prm)
            else:
                call.reinvite(prm)

    def cmd_update(self, request: dict[str, Any]) -> None:
        for call in self._calls(request):
            call.update(pj.CallOpParam(True))

    def cmd_stats(self, request: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for call in self._calls(request):
            self.snapshot_stats(call)
            out[str(call.number)] = call.stats
        return out

    def cmd_quit(self, request: dict[str, Any]) -> None:
        self.running = False


_MEDIA_STATUS = {
    pj.PJSUA_CALL_MEDIA_NONE: "none", pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local-hold", pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote-hold",
    pj.PJSUA_CALL_MEDIA_ERROR: "error",
}
_DIR = {
    pj.PJMEDIA_DIR_NONE: "inactive", pj.PJMEDIA_DIR_ENCODING: "sendonly", pj.PJMEDIA_DIR_DECODING: "recvonly",
    pj.PJMEDIA_DIR_ENCODING_DECODING: "sendrecv",
}


def _stream_stats(stat: pj.StreamStat) -> dict[str, Any]:
    rx, tx, jb = stat.rtcp.rxStat, stat.rtcp.txStat, stat.jbuf
    return {
        "rx_packets": rx.pkt, "rx_lost": rx.loss, "rx_discarded": rx.discard, "rx_dup": rx.dup,
        "rx_reordered": rx.reorder, "rx_jitter_ms": rx.jitterUsec.mean / 1000,
        "tx_packets": tx.pkt, "rtt_ms": stat.rtcp.rttUsec.mean / 1000,
        "jb_frames_lost": jb.lost, "jb_frames_discarded": jb.discard, "jb_empty": jb.empty,
        "jb_avg_delay_ms": jb.avgDelayMsec, "jb_max_delay_ms": jb.maxDelayMsec,
    }


def respond_in_dialog(rdata: Any, code: int) -> None:
    """Answer an in-dialog request pjsua leaves to the application, through pjsip's C API (as
    b2bua.legs does; this script imports nothing of the project)."""
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pjsip_rdata_get_dlg.restype = ctypes.c_void_p
    lib.pjsip_rdata_get_dlg.argtypes = [ctypes.c_void_p]
    lib.pjsip_dlg_respond.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p]
    pointer = int(rdata.pjRxData)
    dialog = lib.pjsip_rdata_get_dlg(pointer)
    if dialog:
        lib.pjsip_dlg_respond(dialog, pointer, code, None, None, None)


def _wav_complete(path: str) -> bool:
    """Whether pjmedia has closed the WAV file: the RIFF size in its header matches the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            size = f.seek(0, 2)
    except OSError:
        return False
    return len(head) == 8 and head[:4] == b"RIFF" and int.from_bytes(head[4:], "little") == size - 8 > 36


def _text(raw: Any) -> str:
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")


def _headers(msg: str) -> dict[str, str]:
    """The first value of each header, names lower-cased (enough for a test to look at)."""
    out: dict[str, str] = {}
    for line in msg.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        m = _HEADER.match(line)
        if m:
            out.setdefault(m.group(1).lower(), m.group(2).strip())
    return out


def _body(msg: str) -> str:
    return msg.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in msg else ""


def _tone(text: str) -> tuple[float, int, int]:
    """``440`` (continuous) or ``440:40:960`` (40 ms bursts every second)."""
    parts = text.split(":")
    if len(parts) == 1:
        return float(parts[0]), 30_000, 0  # pjmedia keeps on_msec in a short: loop every 30 s
    if len(parts) == 3:
        return float(parts[0]), int(parts[1]), int(parts[2])
    raise argparse.ArgumentTypeError(f"{text!r}: expected HZ or HZ:ON_MS:OFF_MS")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="user part of our SIP URI; names the recordings")
    p.add_argument("--ip", required=True)
    p.add_argument("--port", type=int, required=True, help="SIP (UDP) port")
    p.add_argument("--rtp-port", type=int, required=True, help="first RTP port")
    p.add_argument("--rtp-range", type=int, default=0, help="RTP ports pjsua may try above --rtp-port "
                   "(default: 4 per call slot, at least 200)")
    p.add_argument("--events", required=True, help="JSON-lines event file")
    p.add_argument("--log", default="", help="pjsip log file")
    p.add_argument("--log-level", type=int, default=4, help="pjsip log level (4 logs SIP messages)")
    p.add_argument("--answer", default="answer", help=f"incoming calls: {', '.join(BEHAVIOURS)}")
    p.add_argument("--codecs", default="", help="codec ids in order of preference (others off), e.g. PCMU,G722")
    p.add_argument("--clock-rate", type=int, default=8000, help="conference bridge (and recording) rate")
    p.add_argument("--tone", type=_tone, default=None, help="play HZ or HZ:ON_MS:OFF_MS into every call")
    p.add_argument("--play", default="", help="play this WAV file (looped) into every call instead")
    p.add_argument("--early-tone", type=_tone, default=None,
                   help="play HZ (or HZ:ON_MS:OFF_MS) until a call is answered: an announcement in early media")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before acting on an incoming INVITE")
    p.add_argument("--no-telephone-event", action="store_true",
                   help="neither offer nor accept RFC 4733 telephone-event (DTMF only in-band or by INFO)")
    p.add_argument("--record", default="", help="record each call's received audio into this folder")
    p.add_argument("--record-self", action="store_true", help="mix our own tone into each recording too")
    p.add_argument("--echo", action="store_true", help="send every call's received audio back to it")
    p.add_argument("--max-calls", type=int, default=32)
    p.add_argument("--sdp-address", default="", help="the address our SDP names (default --ip): a phone behind a NAT")
    p.add_argument("--tls-port", type=int, default=0, help="also listen for SIP over TLS on this port")
    p.add_argument("--srtp", default="off", choices=["off", "optional", "mandatory"],
                   help="SRTP in its offers and answers (SDES keys)")
    p.add_argument("--tls-cert", default="", help="PEM certificate of the TLS listener")
    p.add_argument("--tls-key", default="", help="PEM private key of the TLS listener")
    p.add_argument("--stats-interval", type=float, default=0.5, help="seconds between stream stat snapshots")
    args = p.parse_args(argv)
    try:
        parse_behaviour(args.answer)
    except ValueError as exc:
        p.error(str(exc))
    args.rtp_range = args.rtp_range or max(200, 4 * args.max_calls)
    with open(args.events, "a", encoding="utf-8") as out:
        events = Events(out)
        peer = Peer(args, events)

        def stop(_signum: int, _frame: Any) -> None:
            peer.running = False

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            peer.start()
        except pj.Error as exc:
            events.emit("error", message=f"start: {exc.info()}")
            return 2
        except Exception as exc:
            events.emit("error", message=f"start: {type(exc).__name__}: {exc}")
            return 2
        peer.run()
        events.emit("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
