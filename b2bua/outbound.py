"""How a request leaves the B2BUA: listener, outbound proxy, credentials (pure, no pjsua2).

A target's :class:`~b2bua.api.Outbound` (what its destination asks for) is resolved against
``[sip]`` into an :class:`OutboundProfile`, the key of the pjsua2 account that sends such
requests (:mod:`b2bua.endpoint` makes one account per profile in use). Resolution refuses what
cannot be honoured, with a reason naming the setting: a socket that is no listener, an unknown
socket name or credential, a listener whose transport is not the one the next hop needs. The
dispatcher checks its destinations with the same function when it loads them, so a bad
attribute is a load error naming the line, and a plugin's target fails its attempt instead of
leaving from the wrong place.
"""

from __future__ import annotations

from dataclasses import dataclass

from b2bua.api import Outbound
from b2bua.config import SRTP_MODES, Credential, Listen, SipConfig
from b2bua.sipuri import parse_uri, parse_uri_lenient

#: pjsua accounts our build allows (PJSUA_MAX_ACC in scripts/build-pjsua2.sh): the default way of
#: sending and at most ``MAX_ACCOUNTS - 1`` others. pjsua *asserts* (aborts the process) when
#: asked for one more, so :mod:`b2bua.endpoint` refuses it first and the dispatcher at load.
MAX_ACCOUNTS = 16
#: ways of sending besides the default
MAX_WAYS = MAX_ACCOUNTS - 1


@dataclass(frozen=True)
class OutboundProfile:
    """One way of sending: the key of a pjsua2 account.

    :param listener: the transport to send from; None: pjsip chooses by the destination.
    :param proxy: the outbound proxy URI (with ``;lr``), or ``""``.
    :param auth: the credential's name, or ``""`` for the credentials without a name (per realm).
    :param srtp: what its offers ask of SRTP (and its answers take): one of
        :data:`~b2bua.config.SRTP_MODES`.
    """

    listener: Listen | None = None
    proxy: str = ""
    auth: str = ""
    srtp: str = "off"

    def describe(self) -> str:
        """For log lines: ``from udp:10.0.0.1:5060 via sip:sbc;lr with credentials 'carrier'``."""
        parts = []
        if self.listener is not None:
            parts.append(f"from {self.listener}")
        if self.proxy:
            parts.append(f"via {self.proxy}")
        if self.auth:
            parts.append(f"with credentials {self.auth!r}")
        if self.srtp != "off":
            parts.append(f"SRTP {self.srtp}")
        return " ".join(parts) or "default"


def loose_route(uri: str) -> str:
    """``uri`` as a loose-routing proxy: ``;lr`` added when missing (RFC 3261 §16.12.1.1; a
    strict router would receive the Request-URI rewritten to its own address)."""
    if parse_uri_lenient(uri).param("lr") is not None:
        return uri
    return f"{uri};lr"


def check_proxy(uri: str) -> str:
    """``uri`` if it is a proxy URI the host can use (strict SIP URI, no headers); ValueError."""
    parsed = parse_uri(uri)
    if parsed.headers:
        raise ValueError(f"{uri}: a proxy URI has no '?headers'")
    return uri


def profile_for(outbound: Outbound, sip: SipConfig, next_hop: str = "") -> OutboundProfile:
    """Resolve what a target asks for against ``[sip]``.

    :param next_hop: the URI the request is sent to without a proxy (the Request-URI), to
        check that the listener's transport can reach the first hop.
    :raises ValueError: naming the attribute (``socket=``, ``sockname=``, ``obproxy=``,
        ``auth=``) and why it cannot be honoured.
    """
    listener, named = _listener(outbound, sip)
    proxy = outbound.proxy or sip.outbound_proxy
    if proxy:
        try:
            check_proxy(proxy)
        except ValueError as exc:
            what = "obproxy=" if outbound.proxy else "[sip] outbound_proxy "
            raise ValueError(f"{what}{exc}") from None
        proxy = loose_route(proxy)
    if outbound.auth and sip.credential(outbound.auth) is None:
        known = ", ".join(c.name for c in sip.credentials if c.name) or "none"
        raise ValueError(f"auth={outbound.auth}: no [[sip.credentials]] named {outbound.auth!r} (named: {known})")
    hop = proxy or next_hop
    transport = parse_uri_lenient(hop).transport if hop else ""
    if listener is not None and transport and transport != listener.transport:
        raise ValueError(f"{named}: a {listener.transport.upper()} listener, but {hop} is reached over "
                         f"{transport.upper()}")
    srtp = outbound.srtp or "off"
    if srtp not in SRTP_MODES:
        raise ValueError(f"srtp={srtp}: use one of {', '.join(SRTP_MODES)}")
    if srtp != "off" and transport and transport != "tls":
        raise ValueError(f"srtp={srtp}: {hop} is not reached over TLS, and the SRTP keys would cross in clear "
                         "(;transport=tls or sips:)")
    return OutboundProfile(listener, proxy, outbound.auth, srtp)


def _listener(outbound: Outbound, sip: SipConfig) -> tuple[Listen | None, str]:
    """The listener asked for, and how it was asked for (``sockname=wan``) for messages."""
    if outbound.sockname:  # wins over socket, as in Kamailio
        value = sip.socket_names.get(outbound.sockname)
        if value is None:
            known = ", ".join(sip.socket_names) or "none"
            raise ValueError(f"sockname={outbound.sockname}: no such name in [sip] socket_names (known: {known})")
        return Listen.parse(value), f"sockname={outbound.sockname} ({value})"
    if not outbound.socket:
        return None, ""
    try:
        listener = Listen.parse(outbound.socket)
    except ValueError as exc:
        raise ValueError(f"socket={outbound.socket}: {exc}") from None
    if listener not in sip.listeners:
        raise ValueError(f"socket={outbound.socket}: not one of the listeners in [sip] listen "
                         f"({', '.join(sip.listen)})")
    return listener, f"socket={outbound.socket}"


def credentials_for(profile: OutboundProfile, sip: SipConfig) -> tuple[Credential, ...]:
    """The credentials an account of ``profile`` answers challenges with: the named one, or
    every credential without a name (each for its realm)."""
    if profile.auth:
        named = sip.credential(profile.auth)
        return (named,) if named is not None else ()
    return tuple(c for c in sip.credentials if not c.name)


def default_profile(sip: SipConfig) -> OutboundProfile:
    """The profile of a target that asks for nothing (the B2BUA's first account)."""
    return OutboundProfile(None, loose_route(sip.outbound_proxy) if sip.outbound_proxy else "", "")
