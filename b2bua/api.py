"""What plugins see of a call: plain data, no pjsua2.

Hook implementations receive a :class:`CallInfo` and return :class:`RoutePlan`,
:class:`Target` or :class:`Reject` values; the host turns those into SIP. Everything
here is importable and testable without pjsua2 or a running B2BUA.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

T = TypeVar("T")


class StashKey(Generic[T]):
    """A typed key for :class:`Stash` (pytest's idea): one module-level key per plugin datum."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"StashKey({self.name!r})"


class Stash:
    """Per-call storage for plugins, keyed by :class:`StashKey` so plugins never collide."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        return cast("T | None", self._data.get(key, default))

    def setdefault(self, key: StashKey[T], default: T) -> T:
        return cast(T, self._data.setdefault(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __delitem__(self, key: StashKey[Any]) -> None:
        del self._data[key]


@dataclass(eq=False)
class CallInfo:
    """One incoming call (the A leg's INVITE) as the hooks see it.

    ``headers`` maps lower-case header names to their values in order of appearance.
    ``id`` is the B2BUA's own session number; ``call_id`` is the caller's Call-ID.
    """

    id: int
    call_id: str
    request_uri: str
    from_uri: str
    to_uri: str
    from_header: str = ""
    to_header: str = ""
    source_ip: str = ""
    source_port: int = 0
    transport: str = "udp"
    method: str = "INVITE"
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    started: float = 0.0
    stash: Stash = field(default_factory=Stash)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.headers.get(name.lower())
        return values[0] if values else None

    @property
    def source(self) -> str:
        """``ip:port`` the INVITE came from (IPv6 in brackets)."""
        host = f"[{self.source_ip}]" if ":" in self.source_ip else self.source_ip
        return f"{host}:{self.source_port}"


@dataclass(frozen=True)
class Outbound:
    """How a B leg (and the destination's keepalives) leave the B2BUA: every field optional.

    The host resolves it when it dials (:mod:`b2bua.outbound`); a value it cannot honour fails
    that attempt with a clear reason (the dispatcher checks its destinations when it loads them).

    :param socket: the listener to send from, as ``[sip] listen`` writes it (``udp:10.0.0.5:5060``;
        Kamailio's ``socket`` attribute).
    :param sockname: the listener by its name in ``[sip] socket_names``; wins over ``socket``
        (Kamailio's ``sockname``).
    :param proxy: an outbound proxy URI the request is sent through (a ``Route`` header; ``;lr``
        is added when missing); empty: ``[sip] outbound_proxy``, if any.
    :param auth: the ``name`` of a ``[[sip.credentials]]`` entry answering 401/407 challenges;
        empty: the credentials without a name, chosen by the challenge's realm.
    :param srtp: how the B leg's offer asks for SRTP: ``mandatory`` (RTP/SAVP with SDES keys),
        ``optional`` (RTP/AVP with keys: SRTP if the far end takes it), ``off`` or empty (plain
        RTP). Only towards a TLS hop: the keys cross in the SIP message.
    """

    socket: str = ""
    sockname: str = ""
    proxy: str = ""
    auth: str = ""
    srtp: str = ""

    def __bool__(self) -> bool:
        return bool(self.socket or self.sockname or self.proxy or self.auth or self.srtp)


#: no outbound preference: the host's defaults
DEFAULT_OUTBOUND = Outbound()


@dataclass(frozen=True)
class Target:
    """One destination to dial.

    :param uri: the destination (gateway) URI, e.g. ``sip:10.0.0.1:5060;transport=tcp``.
        The B leg's Request-URI keeps the caller's R-URI user part with this URI's host,
        port and parameters (Kamailio's ``ds_select_domain``), unless ``request_uri`` is set.
    :param request_uri: an explicit Request-URI for the B leg.
    :param headers: extra headers for the B leg's INVITE.
    :param attempt_timeout: seconds to wait for any provisional response (None: host default).
    :param answer_timeout: seconds to wait for the answer once ringing (None: host default).
    :param data: opaque per-target data of the plugin that made it (e.g. a destination key).
    :param outbound: the listener, outbound proxy and credentials to use (:class:`Outbound`).
    :param next_hop: ``IP:port`` (IPv6 in brackets) the INVITE is sent to while the Request-URI
        keeps its host, e.g. one SRV target of ``sip:carrier.example`` (Kamailio's ``$du``);
        ``""``: where the Request-URI's host leads (DNS). An outbound proxy wins over it.
    """

    uri: str
    request_uri: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attempt_timeout: float | None = None
    answer_timeout: float | None = None
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    outbound: Outbound = DEFAULT_OUTBOUND
    next_hop: str = ""

    @property
    def label(self) -> str:
        """The target for a log line: its URI, with the next hop when it has one
        (``sip:carrier.example via 192.0.2.7:5060``)."""
        return f"{self.uri} via {self.next_hop}" if self.next_hop else self.uri


class DialMode(str, enum.Enum):
    """How a :class:`RoutePlan` is dialled."""

    SERIAL = "serial"
    PARALLEL = "parallel"


@dataclass(frozen=True)
class RoutePlan:
    """Where a call goes: the first target (or all, in parallel mode), then the failover list."""

    targets: tuple[Target, ...]
    mode: DialMode = DialMode.SERIAL
    data: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.targets:
            raise ValueError("a RoutePlan needs at least one target; return Reject(...) instead")


@dataclass(frozen=True)
class Reject:
    """A final answer to the caller: ``code`` 300-699, ``reason``, optional extra headers."""

    code: int
    reason: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not 300 <= self.code <= 699:
            raise ValueError(f"Reject code must be 300-699, not {self.code}")


class FailureKind(str, enum.Enum):
    """Why one attempt (B leg) failed."""

    RESPONSE = "response"  #: the gateway sent a final non-2xx response
    NO_RESPONSE = "no-response"  #: no provisional within the attempt timeout (local 408)
    NO_ANSWER = "no-answer"  #: rang, but no answer within the answer timeout (local 408)
    CANCELLED = "cancelled"  #: the B2BUA cancelled it (another fork won, or the caller left)
    ERROR = "error"  #: the INVITE could not be sent (bad URI, transport error)


@dataclass(frozen=True)
class Failure:
    """The outcome of one failed attempt.

    :param code: the final status code (408 for the timeouts, 500/503 for local errors).
    :param attempt: 1 for the first attempt of the call, 2 for the second, ...
    :param headers: the failure response's headers (lower-case names), when one was received.
    """

    target: Target
    code: int
    reason: str
    kind: FailureKind = FailureKind.RESPONSE
    attempt: int = 1
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)
    elapsed: float = 0.0


@dataclass
class OutgoingRequest:
    """The INVITE about to be sent for one attempt; ``b2bua_prepare_target`` may change it.

    The host fills it in from the caller's INVITE: From keeps the caller's URI and display
    name, To the caller's To with the host part of the Request-URI, and ``headers`` holds the
    caller's headers ``[headers] to_gateway`` lets through, then the target's own (which
    replace copied ones of the same name). Display names are plain text (the host quotes and
    escapes them); an empty one is left out. Values must be one line of printable text: a
    control character fails the attempt (``500``, kind ``error``) instead of reaching the wire.

    :param request_uri: the B leg's Request-URI.
    :param from_uri: the From URI (the caller's, e.g. for caller-ID normalisation).
    :param to_uri: the To URI.
    :param headers: extra headers, in order; the host writes Via, From, To, Call-ID, CSeq,
        Contact, Max-Forwards and the body's headers itself.
    :param from_name: the From display name (``""``: none).
    :param to_name: the To display name (``""``: none).
    :param next_hop: ``IP:port`` the INVITE is sent to (``Target.next_hop``); ``""``: where the
        Request-URI leads.
    :param max_forwards: the INVITE's Max-Forwards (0-255): the caller's less one, so a routing
        loop through B2BUAs and proxies ends (RFC 7332); a plugin may lower it.
    """

    request_uri: str
    from_uri: str
    to_uri: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    from_name: str = ""
    to_name: str = ""
    next_hop: str = ""
    max_forwards: int = 70


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of one out-of-dialog request (OPTIONS keepalive).

    ``code`` is the final status, 408 for our own deadline, 500 when it could not be sent.
    ``latency`` is seconds from send to final response (None when nothing came back).
    """

    code: int
    reason: str
    latency: float | None = None
    local: bool = False  #: True when the code was made up locally (timeout, send error)

    @property
    def unsent(self) -> bool:
        """True when the request could not be sent at all (a local answer other than a timeout:
        no route from the listener, a transport error, a target that cannot be used)."""
        return self.local and self.code != 408


class EndCause(str, enum.Enum):
    """How a call ended, for ``b2bua_call_ended``."""

    CALLER_HANGUP = "caller-hangup"
    CALLEE_HANGUP = "callee-hangup"
    CALLER_CANCEL = "caller-cancel"
    REJECTED = "rejected"  #: refused before any attempt (admission, routing, a plugin error)
    FAILED = "failed"  #: every attempt failed; the caller got a final failure
    SHUTDOWN = "shutdown"
    MEDIA_TIMEOUT = "media-timeout"  #: a peer sent no RTP for [sip] rtp_timeout seconds: the B2BUA hung up
    ERROR = "error"


class TimerHandle(Protocol):
    """A scheduled callback; ``cancel()`` is idempotent."""

    def cancel(self) -> None: ...


class Host(Protocol):
    """The services the B2BUA offers plugins (the ``app`` argument of the lifecycle hooks).

    Unless a method says otherwise, call it on the loop thread (from a hook or a timer); the
    loop-only ones raise :class:`b2bua.loop.WrongThreadError` when called from another thread.
    """

    @property
    def config(self) -> Any:
        """The whole parsed configuration (:class:`b2bua.config.Config`)."""
        ...

    @property
    def hook(self) -> Any:
        """``pluginmanager.hook``: for plugins that call their own hooks (keyword arguments only)."""
        ...

    @property
    def cluster(self) -> Any:
        """The cluster this node belongs to (:class:`b2bua.cluster.Cluster`: node name, Redis link,
        membership), or None without ``[cluster] redis_url``."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop thread after ``delay`` seconds (loop thread only)."""
        ...

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the loop thread soon."""
        ...

    def run_on_loop(self, callback: Callable[[], T], timeout: float = 10.0) -> T:
        """From another thread: run ``callback`` on the loop and return its result (or raise).

        :raises TimeoutError: the loop did not start ``callback`` within ``timeout`` seconds;
            it is cancelled then and never runs (once started, its outcome is awaited).
        """
        ...

    def run_blocking(self, fn: Callable[[], T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        """Run work that *waits* (files, databases, DNS) on the host's worker threads.

        Then ``on_done(future)`` runs on the loop thread: ``future.result()`` returns what
        ``fn`` returned or raises what it raised. Any thread may call it. Without ``on_done``
        a failure is logged. Work still queued at shutdown is dropped. Work that *computes*
        belongs in :meth:`run_task`: a thread running Python takes the GIL from the loop.
        """
        ...

    def run_task(self, steps: Generator[Future[Any] | None, Future[Any] | None, T],
                 on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        """Run work that *computes* (parsing, building or rendering something large) on the
        loop thread, a slice of about 2 ms per loop pass, so calls are never stalled by it.

        ``steps`` is a generator: it yields None wherever it may be paused, or a Future (from
        :meth:`run_blocking`) to wait for, and is sent that Future back when it is done. Its
        return value is the task's result: ``on_done(future)`` runs on the loop at the end.
        Loop thread only.
        """
        ...

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
        """Send an out-of-dialog request (e.g. OPTIONS) and call ``callback`` exactly once
        (loop thread only).

        The callback gets the final response, or a local 408 after ``timeout`` seconds, or a
        local 500 when the request could not be sent (an ``outbound`` the host cannot honour
        too; an ACK, which exists only for an INVITE's answer). ``outbound`` chooses the
        listener, proxy and credentials as for a B leg.
        """
        ...
