"""The pjsua2 endpoint: library set-up, transports, the accounts, out-of-dialog requests.

One thread owns all of this (see ``docs/internals.md``): ``threadCnt = 0``,
``mainThreadOnly = True``, and the loop calls :meth:`Endpoint.poll`.

**Accounts.** A pjsua account is how pjsua sends: its transport (listener), route set
(outbound proxy) and digest credentials. The B2BUA makes one per way of sending in use
(:class:`b2bua.outbound.OutboundProfile`), the first one at start-up (the default: no
listener chosen, ``[sip] outbound_proxy``, the credentials without a name), the others the
first time a B leg or keepalive needs them; every one receives incoming calls the same way.
One account per credential set rather than one for all: a B leg's dialog takes its
credentials from its account, so two trunks of one carrier (same realm, different
usernames) need two accounts, and a socket or proxy is an account setting in pjsua anyway.
pjsua allows ``PJSUA_MAX_ACC`` accounts (16 in our build): 15 ways of sending besides the
default. Other accounts get an identity no incoming INVITE matches (``b2bua.invalid``), so
pjsua keeps giving incoming calls to the default one.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

from b2bua import sip as sip_text
from b2bua.api import DEFAULT_OUTBOUND, Outbound, ProbeResult
from b2bua.codecs import describe_offer, display_id, priorities
from b2bua.config import Config, ConfigError, Listen
from b2bua.digest import ProblemLog
from b2bua.events import LegError
from b2bua.outbound import OutboundProfile, credentials_for, default_profile, profile_for
from b2bua.rxfilter import RequestScreen, ResponseScreen, RxFilter
from b2bua.sip import printable

if TYPE_CHECKING:
    from b2bua.loop import Scheduler, Timer

PROBE_HEADER = "X-B2BUA-Probe"
#: pjsua accounts our build allows (PJSUA_MAX_ACC in scripts/build-pjsua2.sh)
MAX_ACCOUNTS = 16
_PROBE_RE = re.compile(r"^X-B2BUA-Probe:\s*(\d+)", re.MULTILINE | re.IGNORECASE)

#: pjsua's media "quality" (see Endpoint.start)
RESAMPLER_QUALITY = 2

#: pjsip log level -> loguru level
_PJ_LEVELS = {0: "CRITICAL", 1: "ERROR", 2: "WARNING", 3: "INFO", 4: "DEBUG", 5: "TRACE", 6: "TRACE"}
#: pjsip's and pjsua's lines about one bad packet (some quote its raw bytes): a flood would
#: multiply them, so they are logged at DEBUG, escaped, and counted in the summary of refused
#: requests under the reason given (None: the transport's drop report counts that packet already)
_PACKET_PROBLEMS = {
    "Error processing packet from": None, "Dropping ": None, "Unable to match whole message": None,
    "Error parsing '": None, "Error parsing/validating SDP body": None,
    "Bad SDP in incoming INVITE": "bad-sdp", "Unknown Content-Type in incoming INVITE": "content-type",
    "Error initializing media channel: Not Acceptable Here": "no-common-codec",
}
_PACKET_PREFIXES = tuple(_PACKET_PROBLEMS)


class BuildError(RuntimeError):
    """pjsua2 is not built for the configured load (the PyPI wheel allows 4 call legs)."""


class PjLogWriter(pj.LogWriter):  # type: ignore[misc]
    """Routes pjsip's own log into loguru."""

    #: set while the endpoint shuts down (see :meth:`write`)
    closing = False
    #: counts a bad packet pjsip or pjsua refused by itself (see _PACKET_PROBLEMS)
    on_packet_problem: Callable[[str], None] | None = None

    def write(self, entry: pj.LogEntry) -> None:
        try:
            level = _PJ_LEVELS.get(entry.level, "DEBUG")
            msg = entry.msg.rstrip()
            # keepalives still in flight end inside libDestroy, after the account is gone, and
            # pjsua2 reports each as an error: expected at shutdown, so not one. An INVITE pjsua
            # refuses itself (488: no codec in common) gets one line with its Call-ID and codecs
            # from Endpoint._on_rejected: pjsip's own would be an ERROR per call without either.
            if (self.closing and "cannot find Account instance" in msg) or msg.startswith(
                    "Request verification failed"):
                level = "DEBUG"
            elif msg.startswith(_PACKET_PREFIXES):
                level, msg = "DEBUG", printable(msg, 2000)
                reason = next(r for p, r in _PACKET_PROBLEMS.items() if msg.startswith(p))
                if reason and self.on_packet_problem is not None:
                    self.on_packet_problem(reason)
            elif not msg.isascii():  # a packet dump (pjsip_level 4+): bytes that are not UTF-8 escaped
                msg = msg.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            logger.opt(depth=0).bind(call_id="pjsip").log(level, msg)
        except Exception:  # never let an exception cross into C++
            pass


class _PjEndpoint(pj.Endpoint):  # type: ignore[misc]
    """``pj.Endpoint`` with the one endpoint-level callback we use."""

    def __init__(self, on_rejected: Callable[[Any], None]) -> None:
        super().__init__()
        self._on_rejected = on_rejected

    def onRejectedIncomingCall(self, prm: pj.OnRejectedIncomingCallParam) -> None:
        try:
            self._on_rejected(prm)
        except Exception:  # never let an exception cross into C++
            logger.opt(exception=True).error("rejected call handler failed")


def _pjlib() -> ctypes.CDLL:
    return ctypes.CDLL(pj._pjsua2.__file__)


def call_slots() -> int:
    """The effective number of call legs pjsua allows (PJSUA_MAX_CALLS, after libInit)."""
    return int(_pjlib().pjsua_call_get_max_count())


class LocalAccount(pj.Account):  # type: ignore[misc]
    """One of the B2BUA's accounts (see the module docstring): each receives INVITEs, sends B
    legs and keepalives of its profile, and hands challenges to the challenged leg.

    ``realms`` (lower-case, ``*``: any), ``auth_name`` and ``problems`` are read by
    :meth:`b2bua.legs.Leg.on_challenge`.
    """

    def __init__(self, on_incoming: Callable[[Any], None], on_request_done: Callable[[Any], None],
                 on_challenge: Callable[[Any], None] | None = None, *, realms: Sequence[str] = (),
                 auth_name: str = "", problems: ProblemLog | None = None) -> None:
        super().__init__()
        self._on_incoming = on_incoming
        self._on_request_done = on_request_done
        self._on_challenge = on_challenge
        self.realms = tuple(r.lower() for r in realms)
        self.auth_name = auth_name
        self.problems = problems

    def onAuthChallenge(self, prm: pj.OnAuthChallengeParam) -> None:
        try:
            if self._on_challenge is not None:
                self._on_challenge(prm)
        except Exception:
            logger.opt(exception=True).error("challenge handler failed")

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        try:
            self._on_incoming(prm)
        except Exception:
            logger.opt(exception=True).error("incoming call handler failed")

    def onSendRequest(self, prm: pj.OnSendRequestParam) -> None:
        try:
            self._on_request_done(prm)
        except Exception:
            logger.opt(exception=True).error("request completion handler failed")


class _Pending:
    __slots__ = ("callback", "deadline", "sent")

    def __init__(self, callback: Callable[[ProbeResult], None], sent: float) -> None:
        self.callback: Callable[[ProbeResult], None] | None = callback
        self.sent = sent
        self.deadline: Timer | None = None


class Endpoint:
    """Owns ``pj.Endpoint``, the transports and the account."""

    def __init__(self, config: Config, scheduler: Scheduler, on_incoming: Callable[[Any], None], *,
                 screen_request: RequestScreen | None = None, screen_response: ResponseScreen | None = None,
                 on_dropped: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.scheduler = scheduler
        self.ep = _PjEndpoint(self._on_rejected)
        self.account: LocalAccount | None = None
        self._log_writer: PjLogWriter | None = None
        self._on_incoming = on_incoming
        self._probe_ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.slots = 0
        self.listeners: list[str] = []
        self._transports: dict[Listen, int] = {}  #: pjsua transport id per listener
        self._accounts: dict[OutboundProfile, LocalAccount] = {}  #: every account by its profile
        self._default = default_profile(config.sip)
        self._auth_problems = ProblemLog()
        self._screens = (screen_request, screen_response, on_dropped)
        self._rx_filter: RxFilter | None = None

    # -- life cycle -----------------------------------------------------------------------------

    def start(self) -> None:
        sip = self.config.sip
        # the libCreate banner is printed before any log config applies: silence pjlib first
        try:
            _pjlib().pj_log_set_level(0)
        except (OSError, AttributeError):
            pass
        self.ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0
        cfg.uaConfig.mainThreadOnly = True
        cfg.uaConfig.maxCalls = max(4, min(sip.max_calls * (1 + sip.max_forks) + 8, 4096))
        cfg.uaConfig.userAgent = sip.user_agent
        cfg.medConfig.threadCnt = 0
        cfg.medConfig.hasIoqueue = True
        cfg.medConfig.clockRate = sip.clock_rate
        cfg.medConfig.sndClockRate = sip.clock_rate
        cfg.medConfig.channelCount = 1
        cfg.medConfig.noVad = True
        # pjsua's "quality" picks the resampler's filter; 1-2 is the Speex resampler's quality 3
        # (its VoIP setting): a 16 kHz bridge costs 0.33 % of a core per G.711 call with it,
        # 0.97 % at pjsua's default of 8 (Speex quality 10) (docs/media.md)
        cfg.medConfig.quality = RESAMPLER_QUALITY
        cfg.medConfig.ecTailLen = 0
        cfg.medConfig.maxMediaPorts = cfg.uaConfig.maxCalls * 2 + 16
        self._log_writer = PjLogWriter()
        self._log_writer.on_packet_problem = self._screens[2]
        cfg.logConfig.writer = self._log_writer
        cfg.logConfig.level = self.config.log.pjsip_level
        cfg.logConfig.consoleLevel = self.config.log.pjsip_level
        cfg.logConfig.decor = 0
        self.ep.libInit(cfg)
        self._set_opus_rate(sip.clock_rate)
        self._set_codecs(sip.codecs)  # before any listener: a misspelt codec stops the start
        self.slots = call_slots()
        needed = sip.max_calls * 2
        logger.info("pjsua2 {}: {} call slots", self.ep.libVersion().full, self.slots)
        if self.slots < needed:
            message = (
                f"pjsua2 has {self.slots} call slots but [sip] max_calls = {sip.max_calls} needs "
                f"{needed} (one A and one B leg per call). This pjsua2 is not the B2BUA build: run "
                "scripts/setup.sh (it builds pjsua2 with scripts/build-pjsua2.sh), or lower max_calls; "
                "for development only, set [sip] require_call_slots = false."
            )
            if sip.require_call_slots:
                raise BuildError(message)
            logger.warning(message)

        self._install_filter()
        for listen in sip.listeners:
            self._create_transport(listen)

        self.ep.libStart()
        self.ep.audDevManager().setNullDev()

        self.account = self._create_account(self._default)

    def _account_config(self, profile: OutboundProfile) -> pj.AccountConfig:
        sip = self.config.sip
        acfg = pj.AccountConfig()
        first = sip.listeners[0]
        host = f"[{first.address}]" if ":" in first.address else first.address
        # only the default account may match incoming INVITEs (pjsua scores the identity's domain)
        acfg.idUri = f"sip:b2bua@{host}:{first.port}" if profile == self._default else "sip:b2bua@b2bua.invalid"
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL if sip.session_timers else pj.PJSUA_SIP_TIMER_INACTIVE
        acfg.callConfig.prackUse = pj.PJSUA_100REL_NOT_USED
        acfg.mediaConfig.lockCodecEnabled = False  # no re-INVITE to lock a codec: carriers dislike it
        acfg.mediaConfig.transportConfig.port = sip.rtp_port
        # room to spare: pjsua takes ports in turn and gives a call up after 100 busy pairs
        acfg.mediaConfig.transportConfig.portRange = min(65534 - sip.rtp_port, max(1000, self.slots * 8))
        # media leaves from the listener's address too (the SDP names it)
        media_listener = profile.listener or first
        acfg.mediaConfig.transportConfig.boundAddress = media_listener.address
        if profile.listener is not None:
            acfg.sipConfig.transportId = self._transports[profile.listener]
        if profile.proxy:
            acfg.sipConfig.proxies.append(profile.proxy)
        for cred in credentials_for(profile, sip):
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", cred.realm, cred.username, 0, cred.password))
        return acfg

    def _create_account(self, profile: OutboundProfile) -> LocalAccount:
        creds = credentials_for(profile, self.config.sip)
        account = LocalAccount(self._on_incoming, self._on_request_done, self._on_challenge,
                               realms=[c.realm for c in creds], auth_name=profile.auth, problems=self._auth_problems)
        first = not self._accounts
        try:
            account.create(self._account_config(profile), first)
        except pj.Error as exc:
            raise LegError(exc.reason, f"cannot make a pjsua account to send {profile.describe()}: {exc.info()} "
                                       f"(pjsua allows {MAX_ACCOUNTS} accounts: at most {MAX_ACCOUNTS - 1} ways "
                                       "of sending besides the default)") from None
        self._accounts[profile] = account
        if not first:
            logger.info("new way of sending: {} (account {} of at most {})", profile.describe(), len(self._accounts),
                        MAX_ACCOUNTS)
        return account

    def account_for(self, profile: OutboundProfile | None) -> LocalAccount:
        """The account sending as ``profile`` says (None: the default), made on first use.

        :raises LegError: pjsua cannot make one more account.
        """
        if profile is None:
            assert self.account is not None, "the endpoint has not started"
            return self.account
        account = self._accounts.get(profile)
        return account if account is not None else self._create_account(profile)

    def _on_challenge(self, prm: pj.OnAuthChallengeParam) -> None:
        """A 401/407 to a request of one of our calls: its leg decides (``Leg.on_challenge``).
        Out-of-dialog requests (keepalives) are not answered: their 401/407 is their result."""
        if prm.callId < 0:
            return
        leg = pj.Call.lookup(prm.callId)
        on_challenge = getattr(leg, "on_challenge", None)
        if on_challenge is not None:
            on_challenge(prm)

    def _install_filter(self) -> None:
        screen_request, screen_response, on_dropped = self._screens
        if screen_request is None or screen_response is None or on_dropped is None:
            return
        if not self.config.security.early_filter:
            logger.info("[security] early_filter = false: refusals are answered after pjsua set the call up")
            return
        lib = _pjlib()
        if not RxFilter.available(lib):
            logger.warning("this pjsua2 build lacks what the SIP filter needs: requests are screened after pjsua "
                           "set their call up (each refusal costs a call slot and RTP ports)")
            return
        # kept until libDestroy even if only part of it got registered: pjsip holds its callbacks
        self._rx_filter = RxFilter(lib, pj.SipRxData(), screen_request, screen_response, on_dropped)
        try:
            self._rx_filter.install()
        except RuntimeError as exc:
            logger.error("the SIP filter could not be installed ({}): requests are screened after pjsua set "
                         "their call up", exc)
            return
        logger.debug("SIP filter installed: requests are screened before pjsua sees them")

    def _create_transport(self, listen: Listen) -> None:
        tcfg = pj.TransportConfig()
        tcfg.port = listen.port
        tcfg.boundAddress = listen.address
        ipv6 = ":" in listen.address
        kind = {
            ("udp", False): pj.PJSIP_TRANSPORT_UDP,
            ("tcp", False): pj.PJSIP_TRANSPORT_TCP,
            ("udp", True): pj.PJSIP_TRANSPORT_UDP6,
            ("tcp", True): pj.PJSIP_TRANSPORT_TCP6,
        }[(listen.transport, ipv6)]
        try:
            self._transports[listen] = self.ep.transportCreate(kind, tcfg)
        except pj.Error as exc:
            raise OSError(f"cannot listen on {listen}: {exc.info()}") from None
        self.listeners.append(str(listen))

    def _set_codecs(self, codecs: Sequence[str]) -> None:
        """Turn on exactly the ``[sip] codecs`` (in order), the rest off; a codec the build lacks is
        a ConfigError naming the ones it has."""
        available = [info.codecId for info in self.ep.codecEnum2()]
        try:
            ranks = priorities(codecs, available)
        except ValueError as exc:
            raise ConfigError(f"{self.config.where('sip')} codecs: {exc}") from None
        for cid, priority in ranks.items():
            self.ep.codecSetPriority(cid, priority)
        offered = sorted((cid for cid, p in ranks.items() if p), key=lambda cid: -ranks[cid])
        logger.info("codecs: {}", ", ".join(display_id(cid) for cid in offered))

    def _set_opus_rate(self, clock_rate: int) -> None:
        """Run Opus at the bridge's rate: nothing above it survives the bridge anyway, and at 8 kHz
        it costs half the CPU of 48 kHz (no resampling, a narrowband encoder; the SDP's
        maxplaybackrate tells the far end to send no more)."""
        if not any(info.codecId.lower().startswith("opus/") for info in self.ep.codecEnum2()):
            return
        opus = self.ep.getCodecOpusConfig()
        opus.sample_rate = clock_rate
        self.ep.setCodecOpusConfig(opus)

    def _on_rejected(self, prm: pj.OnRejectedIncomingCallParam) -> None:
        """pjsua answered an INVITE itself, before any call state (488: no codec in common)."""
        raw = prm.rdata.wholeMsg or ""
        head, _, body = raw.partition("\r\n\r\n")
        call_id = sip_text.parse_message(head)[1].get("call-id", ("-",))[0]
        log = logger.bind(call_id=sip_text.printable(call_id, 100))
        if prm.statusCode == 488:
            offered = sip_text.printable(", ".join(describe_offer(body))) or "no audio"
            log.info("refused: 488 Not Acceptable Here: the caller offers {}; [sip] codecs are {}",
                     offered, ", ".join(self.config.sip.codecs))
        else:
            log.info("refused by pjsua: {} {}", prm.statusCode, sip_text.printable(prm.reason))

    def poll(self, timeout: float) -> None:
        """Handle pjsip events for at most ``timeout`` seconds."""
        # round up: a wait under 1 ms must not become a busy poll of 0 ms
        self.ep.libHandleEvents(math.ceil(timeout * 1000))

    def hangup_all(self) -> None:
        self.ep.hangupAllCalls()

    def destroy(self) -> None:
        for pending in self._pending.values():
            if pending.deadline is not None:
                pending.deadline.cancel()
        self._pending.clear()
        if self._log_writer is not None:
            self._log_writer.closing = True
        for account in self._accounts.values():
            try:
                account.shutdown()
            except pj.Error:
                pass
        self._accounts.clear()
        self.account = None
        self.ep.libDestroy()

    # -- out-of-dialog requests (keepalives) ---------------------------------------------------

    def send_request(
        self,
        method: str,
        uri: str,
        *,
        from_uri: str,
        callback: Callable[[ProbeResult], None],
        timeout: float = 2.0,
        headers: Sequence[tuple[str, str]] = (),
        outbound: Outbound = DEFAULT_OUTBOUND,
    ) -> None:
        """Send an out-of-dialog request; ``callback`` runs exactly once (see ``Host``)."""
        probe_id = next(self._probe_ids)
        pending = _Pending(callback, time.monotonic())
        self._pending[probe_id] = pending
        try:
            account = self.account_for(profile_for(outbound, self.config.sip, uri) if outbound else None)
        except (ValueError, LegError) as exc:
            self._finish(probe_id, ProbeResult(500, f"Not sent: {exc}", None, local=True))
            return
        prm = pj.SendRequestParam()
        prm.method = method
        prm.txOption.targetUri = uri
        prm.txOption.localUri = from_uri
        hv = pj.SipHeaderVector()
        for name, value in (*headers, (PROBE_HEADER, str(probe_id))):
            h = pj.SipHeader()
            h.hName = name
            h.hValue = value
            hv.append(h)
        prm.txOption.headers = hv
        try:
            account.sendRequest(prm)
        except pj.Error as exc:
            self._finish(probe_id, ProbeResult(500, f"Sending failed: {exc.reason}", None, local=True))
            return
        if probe_id in self._pending:  # not completed synchronously
            pending.deadline = self.scheduler.call_later(
                timeout, lambda: self._finish(probe_id, ProbeResult(408, "Request Timeout", None, local=True))
            )

    def _on_request_done(self, prm: pj.OnSendRequestParam) -> None:
        tsx = prm.e.body.tsxState.tsx
        code = tsx.statusCode
        if code < 200:
            return
        m = _PROBE_RE.search(tsx.lastTx.wholeMsg)
        if not m:
            return
        probe_id = int(m.group(1))
        pending = self._pending.get(probe_id)
        if pending is None:
            return  # our own deadline answered already
        # pjsip's own timeout / transport errors come back as local 408/503 without a message
        local = prm.e.body.tsxState.type != pj.PJSIP_EVENT_RX_MSG
        latency = None if local else time.monotonic() - pending.sent
        self._finish(probe_id, ProbeResult(code, tsx.statusText, latency, local=local))

    def _finish(self, probe_id: int, result: ProbeResult) -> None:
        pending = self._pending.pop(probe_id, None)
        if pending is None or pending.callback is None:
            return
        if pending.deadline is not None:
            pending.deadline.cancel()
        callback, pending.callback = pending.callback, None
        try:
            callback(result)
        except Exception:
            logger.opt(exception=True).error("request callback failed")
