"""How calls and keepalives to a destination leave the B2BUA: its ``socket``, ``sockname``,
``ping_socket``, ``obproxy`` and ``auth`` attributes as a :class:`b2bua.api.Outbound`.

Kamailio's meanings, with the differences a B2BUA brings (``docs/kamailio.md``):

* ``socket=udp:10.0.0.5:5060`` / ``sockname=wan``: the listener B legs and keepalives leave
  from (``sockname`` names one in ``[sip] socket_names`` and wins over ``socket``); without
  either, ``[plugins.dispatcher] default_sockname`` or ``default_socket`` (Kamailio's
  ``ds_default_sockname``/``ds_default_socket``) if set, else pjsip picks one;
* ``ping_socket=...``: the listener keepalives leave from (Kamailio 6.1), over the others; for
  a destination naming no listener, ``[plugins.dispatcher] ping_socket`` (``ds_ping_socket``)
  comes before the defaults. In all, keepalives: attribute ``ping_socket`` > ``sockname`` >
  ``socket`` > ``ping_socket`` > ``default_sockname`` > ``default_socket``;
* ``obproxy=sip:sbc.example;lr``: the outbound proxy; in Kamailio only keepalives use it (the
  script routes calls), here B legs too, overriding ``[sip] outbound_proxy``;
* ``auth=NAME``: the ``[[sip.credentials]]`` entry answering 401/407 (no Kamailio equivalent;
  its ``uac`` module has ``uac_auth()`` in the script);
* ``srtp=mandatory|optional|off``: what B legs' offers ask of SRTP (no Kamailio equivalent: a
  proxy does not touch the SDP); only for a destination reached over TLS.

:func:`check_outbound` runs on every load (start-up, reload, ``b2bua check-config``; a
reload's runs in the child process that reads the source, off the loop): an attribute the host
cannot honour is a load error naming the list-file line or table row, so it is never silently
ignored.
"""

from __future__ import annotations

import dataclasses

from b2bua.api import Outbound
from b2bua.config import SipConfig
from b2bua.outbound import MAX_WAYS, OutboundProfile, default_profile, profile_for
from b2bua.sipuri import parse_uri_lenient
from plugins.dispatcher.config import NO_DEFAULTS, SendDefaults
from plugins.dispatcher.model import Attrs, Destination, Snapshot
from plugins.dispatcher.resolve import LoadError


class OutboundError(LoadError):
    """Destinations whose attributes the host cannot honour; the message names each one."""


def names_listener(attrs: Attrs) -> bool:
    """Whether a destination's own attributes say which listener B legs leave from."""
    return bool(attrs.socket or attrs.sockname)


def outbound_of(attrs: Attrs, defaults: SendDefaults = NO_DEFAULTS) -> Outbound:
    """What B legs to a destination with ``attrs`` ask for."""
    socket, sockname = (attrs.socket, attrs.sockname) if names_listener(attrs) else (defaults.socket, defaults.sockname)
    return Outbound(socket=socket, sockname=sockname, proxy=attrs.obproxy, auth=attrs.extra.get("auth", ""),
                    srtp=attrs.extra.get("srtp", ""))


def probe_outbound(attrs: Attrs, defaults: SendDefaults = NO_DEFAULTS) -> Outbound:
    """What keepalives to a destination with ``attrs`` ask for: ``ping_socket`` over the others."""
    outbound = dataclasses.replace(outbound_of(attrs, defaults), srtp="")  # an OPTIONS has no media
    ping_socket = attrs.extra.get("ping_socket", "") or ("" if names_listener(attrs) else defaults.ping_socket)
    return dataclasses.replace(outbound, socket=ping_socket, sockname="") if ping_socket else outbound


def without_passwords(sip: SipConfig) -> SipConfig:
    """``sip`` with every password blanked: all a check needs, to hand to a child process."""
    creds = tuple(dataclasses.replace(c, password="-") for c in sip.credentials)
    return dataclasses.replace(sip, credentials=creds)


def check_defaults(defaults: SendDefaults, sip: SipConfig) -> None:
    """Raise :class:`OutboundError` when a default listener is not one of ``[sip]``'s."""
    for name, outbound in (("default_socket", Outbound(socket=defaults.socket)),
                           ("default_sockname", Outbound(sockname=defaults.sockname)),
                           ("ping_socket", Outbound(socket=defaults.ping_socket))):
        if outbound:
            try:
                profile_for(outbound, sip)
            except ValueError as exc:
                raise OutboundError(f"[plugins.dispatcher] {name}: {exc}") from None


def sending_problem(dest: Destination, sip: SipConfig, defaults: SendDefaults = NO_DEFAULTS) -> str:
    """Why the host cannot send to ``dest`` as its attributes (or the ``defaults`` it takes) ask;
    ``""`` when it can. What :func:`check_outbound` says of each destination, but the count of
    ways of sending (which depends on the others); ``b2bua dispatcher add`` asks it before
    writing."""
    return _ways_of_sending(dest, sip, defaults, _transports(sip))[0]


def _transports(sip: SipConfig) -> frozenset[str]:
    """The transports ``[sip] listen`` has a listener of (pjsip sends over no other)."""
    return frozenset(listener.transport for listener in sip.listeners)


def _ways_of_sending(dest: Destination, sip: SipConfig, defaults: SendDefaults,
                     transports: frozenset[str]) -> tuple[str, tuple[OutboundProfile, ...]]:
    """Why ``dest`` cannot be sent to (``""``: it can), and the ways its calls and keepalives
    are sent when it can."""
    hop = dest.attrs.obproxy or sip.outbound_proxy or dest.uri
    transport = parse_uri_lenient(hop).transport
    if "auth" in dest.attrs.extra and not dest.attrs.extra["auth"]:
        return "auth= needs a credential's name", ()
    if transport not in transports:
        # pjsip could send it nothing: no transport of that kind
        whose = hop if hop == dest.uri else f"its proxy {hop}"
        return f"{whose} is reached over {transport.upper()}, and [sip] listen has no {transport} listener", ()
    profiles = []
    for outbound in {outbound_of(dest.attrs, defaults), probe_outbound(dest.attrs, defaults)}:
        if not outbound:
            continue
        try:
            profiles.append(profile_for(outbound, sip, dest.uri))
        except ValueError as exc:
            why = str(exc)
            if (outbound.socket or outbound.sockname) and not names_listener(dest.attrs) \
                    and not dest.attrs.extra.get("ping_socket") and why.startswith("sock"):
                why = f"{why} (from {defaults.describe(outbound)})"
            return why, ()
    return "", tuple(profiles)


def check_outbound(snapshot: Snapshot, sip: SipConfig, *, rows: bool = False,
                   defaults: SendDefaults = NO_DEFAULTS) -> None:
    """Raise :class:`OutboundError` listing every destination of ``snapshot`` whose attributes
    (or the ``defaults`` it takes) cannot be honoured (at most 20 named).

    Each distinct listener, proxy and credential combination is one pjsua account: more than
    :data:`~b2bua.outbound.MAX_WAYS` besides the default is an error naming the first
    destination past the limit (pjsua has no room for its account).

    :param rows: places are table row ids (a database), not list-file line numbers.
    """
    check_defaults(defaults, sip)
    problems = []
    default = default_profile(sip)
    ways: set[OutboundProfile] = set()
    transports = _transports(sip)
    for dest in sorted(snapshot.destinations(), key=lambda d: d.row_id):  # in the source's order
        why, profiles = _ways_of_sending(dest, sip, defaults, transports)
        for profile in profiles:
            if profile != default and profile not in ways:
                ways.add(profile)
                if len(ways) > MAX_WAYS:
                    why = (f"one way of sending too many ({profile.describe()}): pjsua holds the default and "
                           f"at most {MAX_WAYS} others (listener, proxy and credentials combined)")
                    break
        if why:
            place = f"row id {dest.row_id}" if rows else f"line {dest.row_id}"
            problems.append(f"{snapshot.source} {place}: set {dest.setid} {dest.uri}: {why}")
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise OutboundError("; ".join(problems[:20]) + more)
