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
import dataclasses
import itertools
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

from b2bua import sip as sip_text
from b2bua.api import DEFAULT_OUTBOUND, Outbound, ProbeResult
from b2bua.capabilities import allow_header, clear_allow_events, trim_accept, trim_allow, trim_supported
from b2bua.codecs import describe_offer, display_id, priorities
from b2bua.config import (
    SRTP_MODES,
    TLS_VERSIONS,
    Config,
    ConfigError,
    Listen,
    TlsConfig,
    call_legs,
    rtp_port_span,
)
from b2bua.digest import ProblemLog
from b2bua.events import LegError
from b2bua.nameservers import Nameserver, effective_nameservers
from b2bua.outbound import MAX_ACCOUNTS, MAX_WAYS, OutboundProfile, credentials_for, default_profile, profile_for
from b2bua.rxfilter import RequestScreen, ResponseScreen, RxFilter
from b2bua.sip import ACCEPTED_BODIES, ALLOWED_METHODS, SUPPORTED_TAGS, printable, printable_lines
from b2bua.tls import TlsFiles, check_tls_files

if TYPE_CHECKING:
    from b2bua.loop import Scheduler, Timer

PROBE_HEADER = "X-B2BUA-Probe"
_PROBE_RE = re.compile(r"^X-B2BUA-Probe:\s*(\d+)", re.MULTILINE | re.IGNORECASE)

#: pjsua's media "quality" (see Endpoint.start)
RESAMPLER_QUALITY = 2

#: pjsip's line saying why it refuses an INVITE's SDP (Endpoint._on_rejected logs the refusal)
_SDP_ERROR = "Bad SDP in incoming INVITE: "
#: how long an answered server transaction lingers to absorb retransmitted requests (Timer J; an
#: INVITE's after the ACK of its 2xx): RFC 3261's 64*T1 = 32 s held every ended call's dialog for
#: 32 s (most of the memory at a high call rate); Kamailio's tm waits 5 s (wt_timer). Needs the
#: build's pjsip_tsx_set_wait_timer (scripts/pjproject-patches/0004-b2bua-call-cost.patch).
TSX_WAIT_MS = 5000
#: expired timers pjsip runs per poll. Its default, 10, trails under load (a poll also reads up to
#: 16 messages, and a call's messages arm more timers than that): transactions due to end wait
#: in the heap holding their pools (measured at 600 calls/s offered: 23,000 transactions, 730 MB)
TIMERS_PER_POLL = 64

#: pjsua2 callbacks the build calls without a SWIG director (0004-b2bua-call-cost.patch): a
#: Python override of one of them would never run, so defining one is an error at start-up
NO_DIRECTOR = frozenset({
    "onCallMediaTransportState", "onCallSdpCreated", "onStreamPreCreate", "onStreamCreated",
    "onStreamDestroyed", "onCreateMediaTransport", "onAudioMediaOpCompleted", "onSelectAccount",
})

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
#: pjsua's line for an RTP/RTCP port still held by a live call: it takes the next pair (up to 100),
#: so it is no error; every pass over the port range after the first meets the ports of calls up
_PORT_BUSY = ("RTP socket bind() at ", "RTCP socket bind() at ")


class BuildError(RuntimeError):
    """pjsua2 is not built for the configured load (the PyPI wheel allows 4 call legs)."""


class PjLogWriter(pj.LogWriter):  # type: ignore[misc]
    """Routes pjsip's own log into loguru."""

    #: set while the endpoint shuts down (see :meth:`write`)
    closing = False
    #: counts a bad packet pjsip or pjsua refused by itself (see _PACKET_PROBLEMS)
    on_packet_problem: Callable[[str], None] | None = None
    #: why pjsip refused the SDP of the INVITE being refused now (read by Endpoint._on_rejected)
    sdp_error = ""
    #: RTP/RTCP ports pjsua found busy and skipped (logged at DEBUG; summed up by the lifecycle)
    busy_ports = 0
    #: the thread inside :meth:`Endpoint.send_request`'s ``sendRequest`` (None: none is)
    sending_thread: int | None = None

    def write(self, entry: pj.LogEntry) -> None:
        try:
            level = _PJ_LEVELS.get(entry.level, "DEBUG")
            msg = entry.msg.rstrip()
            # keepalives still in flight end inside libDestroy, after the account is gone, and
            # pjsua2 reports each as an error: expected at shutdown, so not one. An INVITE pjsua
            # refuses itself (488: no codec in common, 400: an SDP that does not parse) gets one
            # line with its Call-ID and why from Endpoint._on_rejected: pjsip's own would be one
            # or two ERRORs per call without a Call-ID, which a flood of bad INVITEs multiplies. A B
            # leg too long to send: the session logs it once per attempt, with the Call-ID.
            if (self.closing and "cannot find Account instance" in msg) or msg.startswith(
                    "Request verification failed") or "(PJSIP_EMSGTOOLONG)" in msg:
                level = "DEBUG"
            elif level in ("ERROR", "WARNING") and self.sending_thread == threading.get_ident():
                # an out-of-dialog request that cannot be sent ("Unable to send request", then
                # pjsua2's own line for the error it raises): the failure reaches the request's
                # callback, whose owner says it once (the dispatcher: once per destination);
                # logged here it was two ERRORs per keepalive, every ping_interval, forever
                level = "DEBUG"
            elif msg.startswith(_PORT_BUSY) and "already in use" in msg:
                level = "DEBUG"
                self.busy_ports += 1
            elif msg.startswith(_PACKET_PREFIXES):
                if msg.startswith(_SDP_ERROR):
                    self.sdp_error = printable(msg[len(_SDP_ERROR):].split(" [status=", 1)[0], 200)
                level, msg = "DEBUG", printable(msg, 2000)
                reason = next(r for p, r in _PACKET_PROBLEMS.items() if msg.startswith(p))
                if reason and self.on_packet_problem is not None:
                    self.on_packet_problem(reason)
            else:  # a packet dump (pjsip_level 4+) holds whatever a peer sent
                msg = printable_lines(msg)
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


class _PjStr(ctypes.Structure):
    """pjlib's ``pj_str_t``."""

    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


def check_overrides(cls: type) -> None:
    """Refuse a pjsua2 subclass that overrides a callback the build never calls into Python."""
    mine = {name for klass in cls.__mro__ if not klass.__module__.startswith("pjsua2") for name in vars(klass)}
    bad = sorted(mine & NO_DIRECTOR)
    if bad:
        raise TypeError(f"{cls.__qualname__} overrides {', '.join(bad)}: this pjsua2 build calls no Python "
                        "for it (scripts/pjproject-patches/0004-b2bua-call-cost.patch)")


#: a TLS handshake must end within this (a connection left half-open holds a socket)
TLS_HANDSHAKE_MS = 10_000


def _tls_config(tls: TlsConfig, files: TlsFiles) -> pj.TlsConfig:
    """pjsua2's settings of a ``tls:`` listener (and of the outgoing connections it makes)."""
    cfg = pj.TlsConfig()
    cfg.certFile = files.certificate
    cfg.privKeyFile = files.private_key
    cfg.password = tls.private_key_password
    cfg.CaListFile = files.ca_list
    cfg.method = pj.PJSIP_SSL_UNSPECIFIED_METHOD  # the versions in proto
    cfg.proto = TLS_VERSIONS[tls.min_version]
    cfg.verifyServer = tls.verify_server
    cfg.verifyClient = tls.verify_client
    cfg.requireClientCert = tls.verify_client
    cfg.msecTimeout = TLS_HANDSHAKE_MS
    return cfg


def _pjlib() -> ctypes.CDLL:
    return ctypes.CDLL(pj._pjsua2.__file__)


class _TimeVal(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("msec", ctypes.c_long)]  # pj_time_val


class TimerHeap:
    """pjsip's timer heap, through the C functions the build exports (ctypes)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        endpt, heap = lib.pjsua_get_pjsip_endpt, lib.pjsip_endpt_get_timer_heap
        endpt.restype = heap.restype = ctypes.c_void_p
        heap.argtypes = [ctypes.c_void_p]
        self._heap = ctypes.c_void_p(heap(endpt()))
        self._set_max = lib.pj_timer_heap_set_max_timed_out_per_poll
        self._set_max.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self._earliest, self._now = lib.pj_timer_heap_earliest_time, lib.pj_gettickcount
        self._earliest.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._now.argtypes = [ctypes.c_void_p]
        self._when, self._clock = _TimeVal(), _TimeVal()

    @classmethod
    def find(cls) -> TimerHeap | None:
        """The endpoint's heap (after libInit); None when this pjsua2 does not export the functions."""
        try:
            return cls(_pjlib())
        except AttributeError:
            return None

    def set_timers_per_poll(self, count: int) -> None:
        self._set_max(self._heap, count)

    def lag(self) -> float:
        """Seconds the earliest timer is overdue (0: none is)."""
        if self._earliest(self._heap, ctypes.byref(self._when)) != 0:
            return 0.0  # no timer at all
        self._now(ctypes.byref(self._clock))
        late: float = (self._clock.sec - self._when.sec) + (self._clock.msec - self._when.msec) / 1000
        return max(0.0, late)


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
                 on_dropped: Callable[[str], None] | None = None,
                 on_closed: Callable[[], None] | None = None) -> None:
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
        #: the account calls arrive on: the default, but for what it takes of SRTP ([sip] srtp);
        #: B legs that ask for nothing leave through the default (no SRTP offered)
        self._incoming = dataclasses.replace(self._default, srtp=config.sip.srtp)
        self._auth_problems = ProblemLog()
        self._screens = (screen_request, screen_response, on_dropped)
        self._on_closed = on_closed  #: a refused source's TCP connection was closed (the filter)
        self._rx_filter: RxFilter | None = None
        self._timers: TimerHeap | None = None  #: pjsip's timer heap, once started
        for cls in (type(self.ep), LocalAccount, PjLogWriter):
            check_overrides(cls)

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
        # our build's pjsua2 (patch 0007): only the call states and transactions b2bua.legs reads
        cfg.uaConfig.b2buaLeanCallbacks = True
        cfg.uaConfig.maxCalls = call_legs(sip)
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
        # one conference port per call leg, and some to spare: each port's slot arrays and every
        # port removal's sweep are as long as the bridge (2 x the legs cost ~40,000 instructions
        # per call more)
        cfg.medConfig.maxMediaPorts = cfg.uaConfig.maxCalls + 16
        self._log_writer = PjLogWriter()
        self._log_writer.on_packet_problem = self._screens[2]
        cfg.logConfig.writer = self._log_writer
        cfg.logConfig.level = self.config.log.pjsip_level
        cfg.logConfig.consoleLevel = self.config.log.pjsip_level
        cfg.logConfig.decor = 0
        nameservers = effective_nameservers(sip.nameservers)
        for server in nameservers:  # makes pjsua create its asynchronous resolver
            cfg.uaConfig.nameserver.append(server.ip)
        self.ep.libInit(cfg)
        self._set_nameservers(nameservers)
        self._set_rtp_source_lock(sip.rtp_strict_source)
        self._set_wait_timer()
        self._timers = TimerHeap.find()
        if self._timers is not None:
            self._timers.set_timers_per_poll(TIMERS_PER_POLL)
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

        lib = _pjlib()
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        endpt = lib.pjsua_get_pjsip_endpt()
        for header, now, expected in (("Allow", trim_allow(lib, endpt), ALLOWED_METHODS),
                                      ("Supported", trim_supported(lib, endpt), SUPPORTED_TAGS),
                                      ("Accept", trim_accept(lib, endpt), ACCEPTED_BODIES)):
            if now != expected:  # something we take that pjsip does not list (a build without it)
                logger.warning("{}: {} (expected {})", header, ", ".join(now), ", ".join(expected))
        clear_allow_events(lib)
        self._install_filter(allow_header(lib, endpt))
        tls_files = check_tls_files(self.config)
        for warning in tls_files.warnings:
            logger.warning("{}", warning)
        for listen in sip.listeners:
            self._create_transport(listen, tls_files)

        self.ep.libStart()
        self.ep.audDevManager().setNullDev()

        self.account = self._create_account(self._incoming)

    def _account_config(self, profile: OutboundProfile) -> pj.AccountConfig:
        sip = self.config.sip
        acfg = pj.AccountConfig()
        first = sip.listeners[0]
        host = f"[{first.address}]" if ":" in first.address else first.address
        # only the default account may match incoming INVITEs (pjsua scores the identity's domain)
        acfg.idUri = f"sip:b2bua@{host}:{first.port}" if profile == self._incoming else "sip:b2bua@b2bua.invalid"
        acfg.callConfig.timerUse = pj.PJSUA_SIP_TIMER_OPTIONAL if sip.session_timers else pj.PJSUA_SIP_TIMER_INACTIVE
        acfg.callConfig.prackUse = pj.PJSUA_100REL_NOT_USED
        acfg.mediaConfig.lockCodecEnabled = False  # no re-INVITE to lock a codec: carriers dislike it
        # SDES keys only where the signalling is TLS (pjsua's secure signalling 1: the hop)
        acfg.mediaConfig.srtpUse = SRTP_MODES.index(profile.srtp)
        acfg.mediaConfig.srtpSecureSignaling = 1
        # Contact over TCP and TLS: the listener's port, not the connection's own (a phone's way
        # through a NAT, RFC 5626's ;ob): a gateway that closed the connection opens a new one
        # to the Contact for its BYE, and nothing listens on the connection's port
        acfg.natConfig.contactUseSrcPort = False
        acfg.natConfig.sipOutboundUse = 0
        acfg.mediaConfig.transportConfig.port = sip.rtp_port
        acfg.mediaConfig.transportConfig.portRange = rtp_port_span(sip)
        # media leaves from the listener's address too (the SDP names it)
        media_listener = profile.listener or first
        acfg.mediaConfig.transportConfig.boundAddress = media_listener.address
        if sip.public_address and media_listener.address == first.address:  # 1:1 NAT: the SDP's c= and o=
            acfg.mediaConfig.transportConfig.publicAddress = sip.public_address
        if profile.listener is not None:
            acfg.sipConfig.transportId = self._transports[profile.listener]
        if profile.proxy:
            acfg.sipConfig.proxies.append(profile.proxy)
        for cred in credentials_for(profile, sip):
            acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", cred.realm, cred.username, 0, cred.password))
        return acfg

    def _create_account(self, profile: OutboundProfile) -> LocalAccount:
        if len(self._accounts) >= MAX_ACCOUNTS:  # pjsua_acc_add would assert: the process would abort
            raise LegError("too many ways of sending", f"cannot send {profile.describe()}: all {MAX_ACCOUNTS} pjsua "
                           f"accounts are in use (at most {MAX_WAYS} ways of sending besides the default)")
        creds = credentials_for(profile, self.config.sip)
        account = LocalAccount(self._on_incoming, self._on_request_done, self._on_challenge,
                               realms=[c.realm for c in creds], auth_name=profile.auth, problems=self._auth_problems)
        first = not self._accounts
        try:
            account.create(self._account_config(profile), first)
        except pj.Error as exc:
            raise LegError(exc.reason, f"cannot make a pjsua account to send {profile.describe()}: "
                                       f"{exc.info()}") from None
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
            if self._incoming == self._default:
                return self.account
            profile = self._default
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

    def _set_nameservers(self, servers: Sequence[Nameserver]) -> None:
        """Give pjsip's resolver the ports too (pjsua's ``UaConfig.nameserver`` takes addresses only
        and asks port 53), or warn that host names will be resolved on the loop."""
        if not servers:
            logger.warning("no nameservers ([sip] nameservers is empty and /etc/resolv.conf lists none): pjsip "
                           "resolves host names with the system resolver on the loop thread, so a slow DNS "
                           "server stalls every call, and SRV records are not used")
            return
        lib = _pjlib()
        lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_resolver.restype = ctypes.c_void_p
        lib.pjsip_endpt_get_resolver.argtypes = [ctypes.c_void_p]
        lib.pj_dns_resolver_set_ns.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        resolver = lib.pjsip_endpt_get_resolver(lib.pjsua_get_pjsip_endpt())
        if not resolver:
            raise ConfigError(f"{self.config.where('sip')} nameservers: pjsip did not create its DNS resolver")
        ips = [s.ip.encode("ascii") for s in servers]
        names = (_PjStr * len(servers))(*(_PjStr(ip, len(ip)) for ip in ips))
        ports = (ctypes.c_uint16 * len(servers))(*(s.port for s in servers))
        status = lib.pj_dns_resolver_set_ns(resolver, len(servers), names, ports)
        if status != 0:
            raise ConfigError(f"{self.config.where('sip')} nameservers: pjsip refused them (status {status})")
        logger.info("DNS: pjsip resolves host names asynchronously through {}", ", ".join(map(str, servers)))

    def _install_filter(self, allow: int) -> None:
        screen_request, screen_response, on_dropped = self._screens
        if screen_request is None or screen_response is None or on_dropped is None:
            return
        if not self.config.security.early_filter:
            logger.info("[security] early_filter = false: new calls are refused after pjsua set them up; "
                        "other requests are still screened before pjsua sees them")
        lib = _pjlib()
        if not RxFilter.available(lib):
            logger.warning("this pjsua2 build lacks what the SIP filter needs: only INVITEs are screened, after "
                           "pjsua set their call up (each refusal costs a call slot and RTP ports); pjsua answers "
                           "other requests itself")
            return
        # kept until libDestroy even if only part of it got registered: pjsip holds its callbacks
        self._rx_filter = RxFilter(lib, screen_request, screen_response, on_dropped, self._on_closed)
        try:
            self._rx_filter.install(allow)
        except RuntimeError as exc:
            logger.error("the SIP filter could not be installed ({}): only INVITEs are screened, after pjsua "
                         "set their call up; pjsua answers other requests itself", exc)
            return
        logger.debug("SIP filter installed: requests are screened before pjsua sees them")

    def _create_transport(self, listen: Listen, tls_files: TlsFiles) -> None:
        tcfg = pj.TransportConfig()
        tcfg.port = listen.port
        tcfg.boundAddress = listen.address
        ipv6 = ":" in listen.address
        sip = self.config.sip
        if sip.public_address and listen.address == sip.listeners[0].address:  # 1:1 NAT: Via and Contact
            tcfg.publicAddress = sip.public_address
        if listen.transport != "udp" and not tcfg.publicAddress and listen.address not in ("0.0.0.0", "::"):
            # a TCP or TLS listener bound to one address is named in the Contact of requests
            # over it (patch 0021), not the interface the kernel routes to the far end by
            tcfg.publicAddress = listen.address
        if listen.transport == "tls":
            tcfg.tlsConfig = _tls_config(sip.tls, tls_files)
        kind = {
            ("udp", False): pj.PJSIP_TRANSPORT_UDP,
            ("tcp", False): pj.PJSIP_TRANSPORT_TCP,
            ("tls", False): pj.PJSIP_TRANSPORT_TLS,
            ("udp", True): pj.PJSIP_TRANSPORT_UDP6,
            ("tcp", True): pj.PJSIP_TRANSPORT_TCP6,
            ("tls", True): pj.PJSIP_TRANSPORT_TLS6,
        }[(listen.transport, ipv6)]
        try:
            self._transports[listen] = self.ep.transportCreate(kind, tcfg)
        except pj.Error as exc:
            raise OSError(f"cannot listen on {listen}: {exc.info()}") from None
        self.listeners.append(str(listen))

    def _set_wait_timer(self) -> None:
        """Answered server transactions linger TSX_WAIT_MS, not 32 s (when the build allows it)."""
        try:
            set_wait = _pjlib().pjsip_tsx_set_wait_timer
        except AttributeError:
            logger.info("this pjsua2 build keeps answered transactions 32 s (no pjsip_tsx_set_wait_timer): "
                        "memory grows with the call rate; scripts/setup.sh builds the B2BUA's pjsua2")
            return
        set_wait.argtypes = [ctypes.c_uint]
        set_wait.restype = None
        set_wait(TSX_WAIT_MS)

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

    def _set_rtp_source_lock(self, on: bool) -> None:
        """``[sip] rtp_strict_source``: pjmedia's source lock (scripts/pjproject-patches/0003), a
        global read by the media threads; set before any call exists."""
        try:
            ctypes.c_int.in_dll(_pjlib(), "pjmedia_stream_rtp_source_lock").value = int(on)
        except ValueError:  # a pjsua2 built without the patch (PyPI's, say)
            if on:
                logger.warning("this pjsua2 has no RTP source lock (scripts/build-pjsua2.sh builds one): RTP "
                               "from another address is followed after 10 packets in a row")

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
        sdp_error = ""
        if self._log_writer is not None:
            sdp_error, self._log_writer.sdp_error = self._log_writer.sdp_error, ""
        if prm.statusCode == 488:
            offered = sip_text.printable(", ".join(describe_offer(body))) or "no audio"
            log.info("refused: 488 Not Acceptable Here: the caller offers {}; [sip] codecs are {}",
                     offered, ", ".join(self.config.sip.codecs))
        elif sdp_error:
            log.info("refused: {} {} ({})", prm.statusCode, sip_text.printable(prm.reason), sdp_error)
        else:
            log.info("refused by pjsua: {} {}", prm.statusCode, sip_text.printable(prm.reason))

    def poll(self, timeout: float) -> None:
        """Handle pjsip events for at most ``timeout`` seconds."""
        # round up: a wait under 1 ms must not become a busy poll of 0 ms
        self.ep.libHandleEvents(math.ceil(timeout * 1000))

    def transactions(self) -> int:
        """SIP transactions pjsip holds now (answered ones linger TSX_WAIT_MS)."""
        try:
            return int(_pjlib().pjsip_tsx_layer_get_tsx_count())
        except (OSError, AttributeError):
            return -1

    def timer_lag(self) -> float:
        """Seconds pjsip's earliest timer is overdue (0: none is): how far its timers trail."""
        return self._timers.lag() if self._timers is not None else 0.0

    def busy_ports(self) -> int:
        """RTP/RTCP ports pjsua found held by live calls and skipped, since start."""
        return self._log_writer.busy_ports if self._log_writer is not None else 0

    def screen_counts(self) -> dict[str, dict[str, int]]:
        """SIP messages the early filter passed on in C and those the Python screen checked,
        since start (:meth:`RxFilter.counts`; empty when the filter is off)."""
        return self._rx_filter.counts() if self._rx_filter is not None else {}

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
        problem = sip_text.request_method_problem(method)  # pjsip would assert (abort) on an ACK
        if problem:
            self._finish(probe_id, ProbeResult(500, f"Not sent: {problem}", None, local=True))
            return
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
        writer = self._log_writer
        inside = writer.sending_thread if writer is not None else None  # a callback may send again
        if writer is not None:
            writer.sending_thread = threading.get_ident()
        try:
            account.sendRequest(prm)
        except pj.Error as exc:
            self._finish(probe_id, ProbeResult(500, f"Sending failed: {exc.reason}", None, local=True))
            return
        finally:
            if writer is not None:
                writer.sending_thread = inside
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
