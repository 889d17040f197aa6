"""Configuration: ``config.toml`` parsed once into frozen dataclasses.

Every section is a frozen dataclass whose fields carry a default and a one-line help
(``metadata["help"]``, shown in ``docs/config.md``). :func:`parse_section` turns a TOML table
into such a dataclass and reports unknown keys and wrong types with their TOML path, e.g.
``config.toml: [sip] max_calls: expected an integer, got "many"``. Plugins use the same
function for their own ``[plugins.<name>]`` sections.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import sys
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from b2bua.codecs import check_entry
from b2bua.headers import check_pattern
from b2bua.nameservers import check_nameservers
from b2bua.sipuri import is_ip_literal, parse_uri

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

C = TypeVar("C")


#: names the config file every ``-c/--config`` defaults to when set (see :func:`default_config_path`)
CONFIG_ENV = "B2BUA_CONFIG"
#: the config file every ``-c/--config`` defaults to otherwise, in the current folder
DEFAULT_CONFIG = "config.toml"


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    """The config file a command reads without ``-c``: ``$B2BUA_CONFIG``, else ``./config.toml``."""
    value = (os.environ if environ is None else environ).get(CONFIG_ENV, "")
    return value or DEFAULT_CONFIG


class ConfigError(ValueError):
    """A configuration error; each message names the file, TOML path and reason.

    ``errors`` holds every problem found, one message each (parsing goes on after the first, so
    an operator fixes them in one round); ``str()`` is those messages, one per line.
    """

    def __init__(self, *errors: str) -> None:
        self.errors: tuple[str, ...] = errors or ("invalid configuration",)
        super().__init__("\n".join(self.errors))


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a default and a help line.

    ``bounds=(low, high)`` (inclusive; ``None``: no limit on that side) makes :func:`parse_section`
    refuse a number out of range, naming the TOML path; ``docs/config.md`` shows the range.
    """
    if isinstance(default, list):
        return field(default=tuple(default), metadata={"help": help, **kw})
    if isinstance(default, (dict, set)):
        factory = type(default)
        value = default
        return field(default_factory=lambda: factory(value), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin in (tuple, list):
        return "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; return it converted (lists -> tuples)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected a boolean (true/false), got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):  # TOML has inf and nan; no setting means either
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        control = _CONTROL_CHAR.search(value)
        if control:  # a setting is one line: a CR/LF would end up inside a header or a log line
            raise ConfigError(f"{where}: must be one line of text, without control characters "
                              f"(found {control.group()!r} at offset {control.start()})")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce_each(((f"{where}[{i}]", i, v) for i, v in enumerate(value)), item).values())
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return _coerce_each(((f"{where}.{k}", k, v) for k, v in value.items()), vt)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return parse_section(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _coerce_each(items: Iterable[tuple[str, Any, Any]], tp: Any) -> dict[Any, Any]:
    """``{key: _coerce(value)}`` for ``(where, key, value)`` items; every item's errors in one ConfigError."""
    out: dict[Any, Any] = {}
    errors: list[str] = []
    for where, key, value in items:
        try:
            out[key] = _coerce(value, tp, where)
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(*errors)
    return out


#: keys that were replaced, and what replaced them (named in the error a config using them gets)
REPLACED_KEYS = {"overload_backlog": "overload_delay"}


def parse_section(cls: type[C], data: Mapping[str, Any], where: str) -> C:
    """Build the frozen dataclass ``cls`` from TOML table ``data``.

    :param where: the TOML path for messages, e.g. ``"config.toml: [sip]"``.
    :raises ConfigError: on unknown keys, wrong types or values out of range (all of them, in
        ``errors``), or else on a failed ``validate()`` (its first problem).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    errors: list[str] = []
    known = ", ".join(sorted(fields))
    for key in sorted(set(data) - set(fields)):
        successor = REPLACED_KEYS.get(key)
        if successor in fields:
            errors.append(f"{where}: {key!r} is no more: {successor!r} took its place (docs/config.md)")
        else:
            errors.append(f"{where}: unknown key {key!r} (known keys: {known})")
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        try:
            value = _coerce(value, hints[name], f"{where} {name}")
            bounds = fields[name].metadata.get("bounds")
            if bounds is not None:
                _check_bounds(value, bounds, f"{where} {name}")
        except ConfigError as exc:
            if fields[name].metadata.get("secret"):  # the messages would quote the value
                errors.append(f"{where} {name}: expected one line of text (the value is not shown)")
            else:
                errors.extend(exc.errors)
            continue
        kwargs[name] = value
    if errors:
        raise ConfigError(*errors)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}") from exc
    return obj


#: a codec as pjsua names it (matched as a prefix): PCMU, PCMU/8000, opus/48000/2
#: RFC 9110 token68-like: what an Authorization header carries unchanged
_TOKEN = re.compile(r"[\x21-\x7e]+")
#: C0 controls but TAB, DEL and C1 controls: never part of a one-line setting
_CONTROL_CHAR = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def describe_bounds(bounds: tuple[float | None, float | None]) -> str:
    """``(1024, 65534)`` as ``1024-65534``, ``(0, None)`` as ``0 or more``."""
    low, high = (None if b is None else str(b) if isinstance(b, int) else f"{b:g}" for b in bounds)
    if high is None:
        return f"{low} or more"
    if low is None:
        return f"{high} or less"
    return f"{low}-{high}"


def _check_bounds(value: Any, bounds: tuple[float | None, float | None], where: str) -> None:
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{where}: must be {describe_bounds(bounds)}, got {value!r}")


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and addresses in 127.0.0.0/8 or ``::1`` (brackets allowed).

    The one rule for "reachable only from this machine", used by config validation and by the
    control API before it serves HTTP without a token.
    """
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_uri_setting(key: str, value: str, what: str) -> None:
    """``value`` must be a strict SIP URI without ``?headers``; ValueError starting with ``key``."""
    try:
        uri = parse_uri(value)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if uri.headers:
        raise ValueError(f"{key}: {value!r}: {what} has no '?headers'")


def split_host_port(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (IPv6 in brackets) as ``(address, port)``; the port must be 0-65535.

    :raises ValueError: naming the expected form.
    """
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or "[" in host or "]" in host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r}: expected ADDRESS:PORT")
    return host, int(port)


# -- Sections ----------------------------------------------------------------------------------

TRANSPORTS = ("udp", "tcp", "tls")
#: listeners pjsua holds (its transport table; a 9th failed the start)
MAX_LISTENERS = 8
#: credentials one pjsua account holds (PJSUA_ACC_MAX_PROXIES; a 9th failed the account)
MAX_ACCOUNT_CREDENTIALS = 8
#: conference bridge rates offered (each is also an Opus sample rate)
CLOCK_RATES = (8000, 16000, 48000)
#: [sip] dtmf, dtmf_fallback and hold values (b2bua.bridge's DtmfMode, DtmfFallback, HoldMode)
DTMF_MODES = ("rfc4733", "info", "info-dtmf", "same", "off")
DTMF_FALLBACKS = ("inband", "info", "drop")
HOLD_MODES = ("relay", "absorb")
#: SRTP for calls received ([sip] srtp) and offered (the srtp= attribute), in pjsua's order
#: (PJMEDIA_SRTP_DISABLED, _OPTIONAL, _MANDATORY)
SRTP_MODES = ("off", "optional", "mandatory")


_LISTEN_FORM = "expected 'udp:ADDRESS:PORT', 'tcp:ADDRESS:PORT' or 'tls:ADDRESS:PORT'"


@dataclass(frozen=True)
class Listen:
    """One ``transport:address:port`` from ``[sip] listen``."""

    transport: str
    address: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen:
        transport, sep, rest = text.partition(":")
        if not sep or transport.lower() not in TRANSPORTS:
            raise ValueError(f"{text!r}: {_LISTEN_FORM}")
        try:
            address, port = split_host_port(rest)
        except ValueError:
            raise ValueError(f"{text!r}: {_LISTEN_FORM}") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"{text!r}: the port must be 1-65535")
        # digits and dots (no host name ends in a number, RFC 1123) or a colon: an IP address,
        # else pjsip would look '999.0.0.1' up as a name and fail only when it binds
        if (":" in address or not address.strip("0123456789.")) and not is_ip_literal(address):
            raise ValueError(f"{text!r}: {address!r} is not an IP address")
        return cls(transport.lower(), address, port)

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.transport}:{host}:{self.port}"


#: a credential's name (what a destination's ``auth=`` attribute names)
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: a socket name (Kamailio's ``listen=... name "wan"``), what ``sockname=`` names
_SOCKET_NAME = _CREDENTIAL_NAME


@dataclass(frozen=True)
class Credential:
    """Digest credentials B legs answer 401/407 challenges with.

    Without a ``name`` it is used **per realm**: by every destination that names no
    credential, when a challenge names its ``realm``. With a ``name`` it is used **per
    destination**: only by destinations naming it (dispatcher attribute ``auth=NAME``,
    ``Target.outbound.auth``); its realm may then be ``"*"`` (any realm). A challenge is
    answered once per realm and request: a second one for the same realm (a wrong password)
    ends the attempt.
    """

    realm: str = opt("", "the challenge's realm this answers (case-insensitive); '*': any (named credentials only)")
    username: str = opt("", "user name")
    password: str = field(default="", repr=False, metadata={"help": "password (never logged or shown)",
                                                             "secret": True})
    name: str = opt("", "what destinations name it by (auth=NAME); empty: used per realm by the others")

    def validate(self) -> None:
        for key in ("realm", "username", "password"):
            if not getattr(self, key):
                raise ValueError(f"{key}: must not be empty")
        if '"' in self.realm or '"' in self.username:
            raise ValueError("realm and username cannot contain a double quote")
        if self.name and not _CREDENTIAL_NAME.fullmatch(self.name):
            raise ValueError(f"name: {self.name!r}: use letters, digits, '_', '.', '-' (at most 64)")
        if self.realm == "*" and not self.name:
            raise ValueError("realm '*' answers any challenge: give it a name and let destinations name it (auth=)")


#: [sip.tls] min_version values, and the pjlib protocol bits (PJ_SSL_SOCK_PROTO_*) each allows
TLS_VERSIONS = {"1.2": 16 | 32, "1.3": 32}
#: the CA bundle Debian's ca-certificates keeps up to date
SYSTEM_CA_LIST = "/etc/ssl/certs/ca-certificates.crt"


@dataclass(frozen=True)
class TlsConfig:
    """``[sip.tls]``: SIP over TLS, for ``tls:`` listeners (callers connecting to us) and for
    destinations reached over TLS (``sips:``, ``;transport=tls``). Paths are relative to the
    config file."""

    certificate: str = opt("", "PEM file with our certificate (then its chain); needed by a tls: listener")
    private_key: str = opt("", "PEM file with the certificate's private key")
    private_key_password: str = field(default="", repr=False, metadata={
        "help": "the private key's password, if it is encrypted (never logged or shown)", "secret": True})
    ca_list: str = opt(SYSTEM_CA_LIST, "PEM file of the certificate authorities a peer's certificate must chain to")
    verify_server: bool = opt(
        True, "a destination's certificate must chain to ca_list and name the host dialled (its IP address, or"
        " the name in the URI): else the connection is closed unused and the attempt fails with pjsip's local"
        " 503 (SSL certificate verification error), which failover_codes' 5xx moves on from"
    )
    verify_client: bool = opt(
        False, "callers must present a certificate that chains to ca_list (mutual TLS); else the connection is"
        " refused in the handshake"
    )
    min_version: str = opt("1.2", "lowest TLS version accepted, both ways: 1.2 or 1.3")

    def validate(self) -> None:
        if self.min_version not in TLS_VERSIONS:
            raise ValueError(f"min_version: {self.min_version!r} is not one of {', '.join(TLS_VERSIONS)}")
        if bool(self.certificate) != bool(self.private_key):
            raise ValueError("certificate and private_key: set both or neither")
        if (self.verify_server or self.verify_client) and not self.ca_list:
            raise ValueError("ca_list: needed to verify certificates (verify_server, verify_client)")

    def files(self) -> tuple[tuple[str, str], ...]:
        """``(setting, path)`` of each file set, as written."""
        return tuple((name, getattr(self, name)) for name in ("certificate", "private_key", "ca_list")
                     if getattr(self, name))


@dataclass(frozen=True)
class SipConfig:
    listen: tuple[str, ...] = opt(
        ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"], "SIP listeners, 'udp|tcp|tls:ADDRESS:PORT' (at most 8; tls"
        " needs [sip.tls] certificate and private_key)"
    )
    max_calls: int = opt(500, "concurrent calls admitted; more get admission_code", bounds=(1, None))
    max_forks: int = opt(4, "most B legs one call may dial at once (parallel mode)", bounds=(1, None))
    admission_code: int = opt(503, "answer to a call over max_calls (or out of call slots)", bounds=(400, 699))
    retry_after: int = opt(5, "Retry-After seconds on admission and no-route answers (0: none)", bounds=(0, 86400))
    attempt_timeout: float = opt(
        5.0, "seconds a B leg may take to send any provisional (local 408)", bounds=(0.1, 300)
    )
    answer_timeout: float = opt(
        60.0, "seconds a B leg may ring before it is given up (local 408)", bounds=(0.1, 3600)
    )
    user_agent: str = opt("b2bua", "User-Agent and Server header value")
    codecs: tuple[str, ...] = opt(
        ["PCMU/8000", "PCMA/8000"], "audio codecs offered and accepted on both legs, in order of preference: "
        "NAME[/CLOCK[/CHANNELS]] of the build's codecs (PCMU, PCMA, G722, opus, G729); the others are off"
    )
    clock_rate: int = opt(
        8000, "sample rate of the bridge between the legs: 8000 (G.711 is never resampled; wideband calls "
        "are bridged narrowband) or 16000 (G.722/Opus stay wideband end to end; G.711 legs are resampled)"
    )
    rtp_port: int = opt(
        16000, "first RTP port, even; media uses the rtp_ports ports above it", bounds=(1024, 65534),
    )
    rtp_ports: int = opt(
        0, "how many ports from rtp_port media may use (2 per call leg: RTP, RTCP); 0: 4 per call leg "
        "max_calls and max_forks allow, at least 1000 (16000-26031 by default)", bounds=(0, 64510),
    )
    session_timers: bool = opt(False, "offer RFC 4028 session timers on B legs")
    dtmf: str = opt(
        "rfc4733", "how a DTMF digit from one leg is sent on the other: rfc4733 (RTP telephone-events), info "
        "(SIP INFO application/dtmf-relay), info-dtmf (INFO application/dtmf), same (the way it came), off"
    )
    dtmf_fallback: str = opt(
        "inband", "toward a leg that negotiated no telephone-event, instead of rfc4733: inband (tones in the "
        "audio), info (SIP INFO application/dtmf-relay) or drop"
    )
    hold: str = opt(
        "relay", "a hold or resume (re-INVITE or UPDATE) from one side: relay (re-INVITE the other side with "
        "the same direction, so a gateway knows the caller is on hold) or absorb (answered on its own leg only)"
    )
    rtp_watch_interval: float = opt(
        5.0, "seconds between checks of an answered call's RTP counters (floods, unexpected sources, "
        "rtp_timeout); 0: no checks", bounds=(0, 3600)
    )
    rtp_timeout: float = opt(
        0.0, "end a call when a peer that should send audio (not on hold) sent no RTP for this many seconds "
        "(checked every rtp_watch_interval); 0: never", bounds=(0, 86400)
    )
    rtp_strict_source: bool = opt(
        True, "once a leg has RTP from its peer (the SDP's address, or the first it latched onto: a NATed "
        "peer), drop RTP from any other address; false: follow a new source after 10 packets in a row, as "
        "pjmedia does (whoever can send that many takes the call's audio)"
    )
    rtp_flood_pps: int = opt(
        400, "RTP packets a second to one leg that are logged as a flood (a 20 ms stream is 50)", bounds=(60, None)
    )
    public_address: str = opt(
        "", "behind 1:1 NAT (a cloud VM with a public IP): the public IP address written into Via, Contact and "
        "the SDP (c=, o=) instead of the first listen address (for the listeners on that address); empty: the "
        "listen address (docs/deploy.md)"
    )
    shutdown_grace: float = opt(
        10.0, "seconds to let calls finish on SIGTERM before hanging them up", bounds=(0, 3600)
    )
    overload_lag: float = opt(
        0.0, "when the loop runs this many seconds late, new calls get 503 + Retry-After for a second (0: off; "
        "overload_delay is the saturation signal, a late loop alone is mostly a stall shedding does not cure)",
        bounds=(0, 60),
    )
    overload_delay: float = opt(
        0.1, "while the oldest SIP message on a UDP listener has waited unread longer than this many seconds "
        "(at two looks 50 ms apart) and is not being drained (or longer than 3 x this), or a listener's receive "
        "buffer is over half full, a share of new calls gets 503 + Retry-After, cut until the queue drains "
        "(0: off; Linux)", bounds=(0, 10),
    )
    udp_receive_buffer: int = opt(
        4 * 1024 * 1024, "bytes of kernel receive buffer asked for on each SIP UDP listener (the kernel counts "
        "~2.3 KB per message queued; past net.core.rmem_max only with CAP_NET_ADMIN; 0: the system's default)",
        bounds=(0, 1 << 30),
    )
    require_call_slots: bool = opt(
        True, "refuse to start when pjsua2 has fewer call slots than max_calls x 2 (development: false)"
    )
    outbound_proxy: str = opt(
        "", "send every B leg and keepalive through this proxy (a Route header; ';lr' added) unless its "
        "destination names another (obproxy); empty: none"
    )
    socket_names: Mapping[str, str] = opt(
        {}, "names for listeners, for the sockname= attribute: { wan = \"udp:203.0.113.5:5060\" }"
    )
    srtp: str = opt(
        "off", "SRTP on calls we receive over TLS: off (an RTP/SAVP offer gets 488), optional (SRTP when the caller"
        " offers keys, else RTP), mandatory (an offer without keys gets 488); B legs: the srtp= attribute"
    )
    tls: TlsConfig = field(default_factory=TlsConfig)  #: ``[sip.tls]``, documented as a table of its own
    credentials: tuple[Credential, ...] = opt(
        [], "digest credentials for 401/407 challenges on B legs ([[sip.credentials]] tables, below; at most 8 "
        "without a name)"
    )
    nameservers: tuple[str, ...] = opt(
        [], "DNS servers ('IP' or 'IP:PORT') pjsip asks without blocking calls (SRV, A, cached for their TTL);"
        " the dispatcher asks them too; empty: the nameserver lines of /etc/resolv.conf (docs/interop.md)"
    )

    def validate(self) -> None:
        self._validate_outbound()
        seen: dict[Listen, int] = {}
        for i, item in enumerate(self.listen):
            try:
                listen = Listen.parse(item)
            except ValueError as exc:
                raise ValueError(f"listen[{i}]: {exc}") from exc
            if listen in seen:
                raise ValueError(f"listen[{i}]: {item!r} is the same listener as listen[{seen[listen]}]")
            seen[listen] = i
        if not self.listen:
            raise ValueError("listen: at least one listener is needed")
        if len(self.listen) > MAX_LISTENERS:
            raise ValueError(f"listen: {len(self.listen)} listeners, but pjsua holds at most {MAX_LISTENERS}")
        tls = [str(x) for x in seen if x.transport == "tls"]
        if tls and not self.tls.certificate:
            raise ValueError(f"listen: {tls[0]} needs a certificate: set [sip.tls] certificate and private_key")
        check_nameservers(self.nameservers)
        if self.public_address:
            try:
                ipaddress.ip_address(self.public_address)
            except ValueError:
                raise ValueError(f"public_address: {self.public_address!r} is not an IP address") from None
        if self.rtp_port % 2:
            raise ValueError(f"rtp_port: must be even (RTP on even ports, RTCP on the next), got {self.rtp_port}")
        # each leg holds an RTP and an RTCP port, each call at least two legs
        needed = 4 * self.max_calls
        if self.rtp_port + needed - 1 > 65535:
            raise ValueError(
                f"rtp_port: {self.rtp_port} leaves {65536 - self.rtp_port} ports for media, but max_calls = "
                f"{self.max_calls} needs at least {needed} (RTP and RTCP for two legs a call): lower rtp_port"
            )
        if self.rtp_ports and self.rtp_ports < needed:
            raise ValueError(f"rtp_ports: {self.rtp_ports} ports, but max_calls = {self.max_calls} needs at least "
                             f"{needed} (RTP and RTCP for two legs a call)")
        self._validate_media()

    def _validate_media(self) -> None:
        for name, allowed in (("dtmf", DTMF_MODES), ("dtmf_fallback", DTMF_FALLBACKS), ("hold", HOLD_MODES),
                              ("srtp", SRTP_MODES)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        if self.rtp_timeout and not self.rtp_watch_interval:
            raise ValueError("rtp_timeout: needs rtp_watch_interval above 0 (the watch is what notices the silence)")
        # the syntax only: which codecs exist is known once pjsua2 runs (b2bua.endpoint)
        if self.clock_rate not in CLOCK_RATES:
            raise ValueError(f"clock_rate: {self.clock_rate} is not one of {', '.join(map(str, CLOCK_RATES))}")
        if not self.codecs:
            raise ValueError("codecs: list at least one codec")
        seen: set[str] = set()
        for i, entry in enumerate(self.codecs):
            try:
                check_entry(entry)
            except ValueError as exc:
                raise ValueError(f"codecs[{i}]: {exc}") from exc
            if entry.lower() in seen:
                raise ValueError(f"codecs: {entry!r} is listed twice")
            seen.add(entry.lower())

    @property
    def listeners(self) -> tuple[Listen, ...]:
        return tuple(Listen.parse(x) for x in self.listen)

    def _validate_outbound(self) -> None:
        if self.outbound_proxy:
            check_uri_setting("outbound_proxy", self.outbound_proxy, "a proxy URI")
        listeners = set()
        for item in self.listen:
            try:
                listeners.add(Listen.parse(item))
            except ValueError:
                pass  # reported by validate()
        for name, value in self.socket_names.items():
            if not _SOCKET_NAME.fullmatch(name):
                raise ValueError(f"socket_names: {name!r}: use letters, digits, '_', '.', '-'")
            try:
                listen = Listen.parse(value)
            except ValueError as exc:
                raise ValueError(f"socket_names.{name}: {exc}") from None
            if listen not in listeners:
                raise ValueError(f"socket_names.{name}: {value!r} is not one of listen ({', '.join(self.listen)})")
        names: dict[str, int] = {}
        realms: dict[str, int] = {}
        for i, cred in enumerate(self.credentials):
            if cred.name:
                if cred.name in names:
                    first = names[cred.name]
                    raise ValueError(f"credentials[{i}]: name {cred.name!r} is taken by credentials[{first}]")
                names[cred.name] = i
            else:
                realm = cred.realm.lower()
                if realm in realms:
                    raise ValueError(
                        f"credentials[{i}]: realm {cred.realm!r} has credentials without a name in credentials"
                        f"[{realms[realm]}] too: which one a challenge gets would be a guess; name them and let"
                        " destinations choose (auth=NAME)"
                    )
                realms[realm] = i
        if len(realms) > MAX_ACCOUNT_CREDENTIALS:  # all of them go to the default account
            raise ValueError(f"credentials: {len(realms)} without a name, but one pjsua account answers challenges "
                             f"with at most {MAX_ACCOUNT_CREDENTIALS} (give some a name and let destinations choose "
                             "them: auth=NAME)")

    def credential(self, name: str) -> Credential | None:
        """The credential called ``name``, or None."""
        return next((c for c in self.credentials if c.name == name), None)


# What pjsua is given for a [sip] section: here, not in b2bua.endpoint, so that the workers'
# supervisor and the docs' tests can size RTP ranges without loading pjsua2.

def call_legs(sip: SipConfig) -> int:
    """The call legs pjsua is asked for: every call's A leg and up to max_forks B legs (the build
    may allow fewer: :func:`call_slots`)."""
    return max(4, min(sip.max_calls * (1 + sip.max_forks) + 8, 4096))


def rtp_port_span(sip: SipConfig) -> int:
    """How many ports from ``[sip] rtp_port`` media may use: ``rtp_ports``, or 4 per call leg.

    pjsua takes the next free RTP/RTCP pair in turn and skips a busy one (100 at most), so
    twice the 2 ports a leg needs keeps the search short when every leg is up.
    """
    span = sip.rtp_ports or max(1000, 4 * call_legs(sip))
    return min(span, 65534 - sip.rtp_port)


LOG_LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class LogConfig:
    level: str = opt("INFO", "log level: TRACE, DEBUG, INFO, WARNING, ERROR")
    pjsip_level: int = opt(1, "pjsip's own log level routed into the log (4+ logs every message)", bounds=(0, 5))
    file: str = opt("", "also log to this file (rotated at 50 MB; its folder must exist); empty: stderr only")
    json: bool = opt(False, "write log lines as JSON objects")

    def validate(self) -> None:
        if self.level.upper() not in LOG_LEVELS:
            raise ValueError(f"level: {self.level!r} is not one of {', '.join(LOG_LEVELS)}")


@dataclass(frozen=True)
class ControlConfig:
    socket: str = opt("b2bua.sock", "unix socket of the control API (mode 0600); empty: off")
    http: str = opt("", "also serve the control API over HTTP at ADDRESS:PORT (loopback unless token)")
    token: str = opt("", "bearer token required by the HTTP control API (printable ASCII, no spaces)")
    read_token: str = opt(
        "", "bearer token for the read-only HTTP routes only (/metrics, the status page's data): give Prometheus "
        "this one, not token; with either set, those need one of them (/health, /ready, /live never need a token)"
    )
    max_request_bytes: int = opt(65536, "largest control request accepted", bounds=(256, 16 * 1024 * 1024))

    def validate(self) -> None:
        if self.http:
            try:
                host, port = split_host_port(self.http)
            except ValueError as exc:
                raise ValueError(f"http: {exc}") from None
            if not 1 <= port <= 65535:
                raise ValueError(f"http: {self.http!r}: the port must be 1-65535")
            if not is_loopback_host(host) and not self.token:
                raise ValueError(f"http: {self.http!r} is not a loopback address: set token too")
        for key in ("token", "read_token"):
            if getattr(self, key) and not _TOKEN.fullmatch(getattr(self, key)):
                # it travels in an HTTP header: anything else cannot be sent as it is
                raise ValueError(f"{key}: use printable ASCII without spaces (e.g. the output of "
                                 "`openssl rand -hex 32`)")
        if self.read_token and self.read_token == self.token:
            raise ValueError("read_token: must differ from token (it is handed to monitoring systems)")


@dataclass(frozen=True)
class RoutingConfig:
    default_target: str = opt("", "send every call the plugins do not route to this URI; empty: none")
    no_route_code: int = opt(503, "answer when no plugin routes the call", bounds=(400, 699))
    no_route_reason: str = opt("No Route", "reason phrase of that answer")

    def validate(self) -> None:
        if self.default_target:  # URI headers would be added to every INVITE sent there
            check_uri_setting("default_target", self.default_target, "a target URI")


#: what crosses by default: caller identity and diversion (RFC 3325, 3323, 5806, 7044) and X- headers
TO_GATEWAY = ["P-Asserted-Identity", "P-Preferred-Identity", "Privacy", "Diversion", "History-Info", "X-*"]
#: back from the answering gateway: the connected party's identity and its privacy (RFC 3325, 4916)
TO_CALLER = ["P-Asserted-Identity", "Privacy"]


@dataclass(frozen=True)
class HeadersConfig:
    """Which headers cross the B2BUA (``docs/interop.md``). A pattern is a header name with
    ``*`` as a wildcard, case-insensitive. Via, Route, Record-Route, Contact, Call-ID, the
    headers pjsua writes itself and authentication headers never cross, whatever the patterns;
    values that are not one line of printable UTF-8 (or longer than 2048 characters) are dropped."""

    to_gateway: tuple[str, ...] = opt(
        TO_GATEWAY, "headers copied from the caller's INVITE to every B leg's INVITE ([]: none)"
    )
    to_caller: tuple[str, ...] = opt(
        TO_CALLER, "headers copied from a B leg's 180/183 to the caller's 180/183, and from the answering B "
        "leg's 200 to the caller's 200 ([]: none)"
    )

    def validate(self) -> None:
        for key in ("to_gateway", "to_caller"):
            for i, pattern in enumerate(getattr(self, key)):
                try:
                    check_pattern(pattern)
                except ValueError as exc:
                    raise ValueError(f"{key}[{i}]: {exc}") from None


#: User-Agent / From substrings of common SIP scanners (sipvicious, sipcli, ...), lower-case
SCANNERS = [
    "friendly-scanner", "friendly-request", "sipvicious", "sipcli", "sip-scan", "sundayddr", "iwar",
    "sivus", "smap", "siparmyknife", "vaxsipuseragent", "pplsip",
]


@dataclass(frozen=True)
class SecurityConfig:
    """Who may call, and how much: checked for each request outside a dialog before pjsua sees it."""

    trusted: tuple[str, ...] = opt(
        ["127.0.0.0/8", "::1/128"], "sources (address or CIDR) whose INVITEs are routed; others get untrusted_code"
    )
    untrusted_code: int = opt(403, "answer to a request from a source not in trusted (403 or 404)",
                              bounds=(400, 699))
    invite_rate: float = opt(
        5.0, "INVITEs per second one untrusted source may send; past it the source is blocked (0: no limit)",
        bounds=(0, None),
    )
    request_rate: float = opt(
        10.0, "other requests outside a dialog per second one untrusted source may send; past it: blocked "
        "(0: no limit)", bounds=(0, None),
    )
    trusted_invite_rate: float = opt(
        0.0, "INVITEs per second one trusted source may send; past it they get 503 + Retry-After (0: no limit)",
        bounds=(0, None),
    )
    trusted_request_rate: float = opt(
        0.0, "other requests outside a dialog per second one trusted source may send; past it: 503 (0: no limit)",
        bounds=(0, None),
    )
    rate_burst: float = opt(2.0, "seconds' worth of requests a source may send at once above its rate",
                            bounds=(0.1, 3600))
    block_time: float = opt(300.0, "seconds every request outside a dialog from a blocked source is dropped "
                            "unanswered (0: never blocked)", bounds=(0, None))
    scanners: tuple[str, ...] = opt(
        SCANNERS, "User-Agent or From substrings of SIP scanners: dropped unanswered, an untrusted sender blocked "
        "([]: off)"
    )
    early_filter: bool = opt(
        True, "decide about a new INVITE in pjsip, before pjsua sets up a call (stateless answers); false: after "
        "(costs a call slot and RTP ports per refusal). Other requests are screened in pjsip either way"
    )
    log_interval: float = opt(10.0, "seconds between summaries of refused and malformed requests (each at DEBUG)",
                              bounds=(1, 3600))

    def validate(self) -> None:
        for i, item in enumerate(self.trusted):
            try:
                ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                raise ValueError(f"trusted[{i}]: {item!r} is not an address or network ({exc})") from None
        for i, item in enumerate(self.scanners):
            if not item.strip():
                raise ValueError(f"scanners[{i}]: empty")


#: a node's name: letters, digits and ``.-_``, as it appears in Redis keys, logs and listings
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class ClusterConfig:
    """Several B2BUA processes (on one machine or many) serving as one: operator states, call
    loads, keepalive results and node membership shared through Redis (docs/scale-out.md).
    Without ``redis_url`` every process keeps its own state, as a single B2BUA does."""

    redis_url: str = opt(
        "", "Redis holding the shared state, e.g. redis://127.0.0.1:6379/0 (rediss:// for TLS, unix:///path); "
        "empty: no cluster. Unreachable at start-up or later: a WARNING, and the node runs on its own state "
        "until Redis answers again"
    )
    node: str = opt(
        "", "this node's name, unique in the cluster (letters, digits, '.', '-', '_'); empty: the host name and "
        "the first SIP port (host-5060). A second live node with the same name is refused. Under b2bua.workers, "
        "worker i is NODE-wI"
    )
    name: str = opt("b2bua", "the cluster's name: the prefix of its Redis keys (several clusters may share one Redis)")
    heartbeat: float = opt(1.0, "seconds between a node's heartbeats (membership, keepalive leases)",
                           bounds=(0.1, 60))
    node_ttl: float = opt(
        5.0, "seconds without a heartbeat after which a node counts as gone: its call loads stop counting and "
        "its keepalives are taken over (Redis' clock)", bounds=(0.5, 600)
    )
    load_sync: float = opt(
        0.02, "most seconds a change of this node's call loads waits before it is sent to the others (changes "
        "within it go as one message)", bounds=(0, 5)
    )
    redis_timeout: float = opt(1.0, "seconds a Redis command may take before Redis counts as unreachable",
                               bounds=(0.05, 30))
    control_url: str = opt(
        "", "how other hosts reach this node's control API for `--all` (http://ADDRESS:PORT/); empty: "
        "[control] http, else the unix socket (same host only). Under b2bua.workers it must name [control] "
        "http's port (worker i: that port + i)"
    )

    def validate(self) -> None:
        if self.redis_url and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ValueError(f"redis_url: {self.redis_url!r}: expected redis://HOST[:PORT][/DB], "
                             "rediss://... or unix:///PATH")
        if self.node and not _NODE_NAME.fullmatch(self.node):
            raise ValueError(f"node: {self.node!r}: use 1-64 letters, digits, '.', '-' or '_' (not first)")
        if not _NODE_NAME.fullmatch(self.name):
            raise ValueError(f"name: {self.name!r}: use 1-64 letters, digits, '.', '-' or '_' (not first)")
        if self.node_ttl < 2 * self.heartbeat:
            raise ValueError(f"node_ttl: {self.node_ttl:g} s must be at least twice heartbeat ({self.heartbeat:g} s)")
        if self.control_url and not self.control_url.startswith(("http://", "https://")):
            raise ValueError(f"control_url: {self.control_url!r}: expected http://ADDRESS:PORT/")

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


@dataclass(frozen=True)
class PluginsConfig:
    enabled: tuple[str, ...] = opt(
        [], "plugins to load: entry-point names (group 'b2bua') or 'package.module[:attr]'"
    )

    def validate(self) -> None:
        for i, name in enumerate(self.enabled):
            if not name.strip():
                raise ValueError(f"enabled[{i}]: empty plugin name")
            if name in self.enabled[:i]:
                raise ValueError(f"enabled[{i}]: {name!r} is listed twice")


@dataclass(frozen=True)
class Config:
    """The whole ``config.toml``."""

    sip: SipConfig = field(default_factory=SipConfig)
    log: LogConfig = field(default_factory=LogConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    headers: HeadersConfig = field(default_factory=HeadersConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    #: raw ``[plugins.<name>]`` tables, parsed by each plugin in ``b2bua_configure``
    plugin_sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: str = "<defaults>"
    base_dir: Path = field(default_factory=Path.cwd)

    def plugin_section(self, name: str) -> Mapping[str, Any]:
        """The ``[plugins.<name>]`` table, or an empty one."""
        return self.plugin_sections.get(name, {})

    def where(self, section: str) -> str:
        """A location prefix for error messages, e.g. ``config.toml: [plugins.dispatcher]``."""
        return f"{self.path}: [{section}]"

    def resolve_path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.base_dir / p


SECTIONS: dict[str, type] = {
    "sip": SipConfig,
    "log": LogConfig,
    "control": ControlConfig,
    "routing": RoutingConfig,
    "security": SecurityConfig,
    "headers": HeadersConfig,
    "cluster": ClusterConfig,
}


def parse_config(data: Mapping[str, Any], path: str = "<config>", base_dir: Path | None = None) -> Config:
    """Build :class:`Config` from a parsed TOML document.

    :raises ConfigError: with every problem of every section in ``errors``.
    """
    config, errors = parse_config_all(data, path, base_dir)
    if errors:
        raise ConfigError(*errors)
    return config


def parse_config_all(
    data: Mapping[str, Any], path: str = "<config>", base_dir: Path | None = None
) -> tuple[Config, tuple[str, ...]]:
    """Parse every section, going on after errors: the config (a section with errors left at its
    defaults) and every error found. ``check-config`` uses it to check the plugins' sections
    too when a host section is wrong."""
    errors: list[str] = []
    for name in sorted(set(data) - set(SECTIONS) - {"plugins"}):
        errors.append(f"{path}: unknown section [{name}] (known: {', '.join([*SECTIONS, 'plugins'])})")
    sections: dict[str, Any] = {}
    for name, cls in SECTIONS.items():
        try:
            sections[name] = parse_section(cls, data.get(name, {}), f"{path}: [{name}]")
        except ConfigError as exc:
            errors.extend(exc.errors)
    raw = data.get("plugins", {})
    if not isinstance(raw, Mapping):
        errors.append(f"{path}: [plugins]: expected a table, got {raw!r}")
        raw = {}
    plugin_sections = {k: v for k, v in raw.items() if isinstance(v, dict)}
    plugins = PluginsConfig()
    try:
        plugins = parse_section(
            PluginsConfig, {k: v for k, v in raw.items() if not isinstance(v, dict)}, f"{path}: [plugins]"
        )
    except ConfigError as exc:
        errors.extend(exc.errors)
    config = Config(
        plugins=plugins,
        plugin_sections=plugin_sections,
        path=path,
        base_dir=base_dir or Path.cwd(),
        **sections,
    )
    return config, tuple(errors)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The TOML document in ``path``; an unreadable or malformed file is a :class:`ConfigError`."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {exc.start}: {data[exc.start]:#04x})") from exc
    if text.startswith("\ufeff"):  # what Notepad writes; TOML parsers read it as a stray character
        raise ConfigError(f"{p}:1: starts with a byte order mark (U+FEFF): save it as UTF-8 without one")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from exc


def load_config(path: str | Path) -> Config:
    """Read and parse a TOML config file; every problem is in the :class:`ConfigError`."""
    p = Path(path)
    return parse_config(read_toml(p), str(p), p.resolve().parent)


def secrets_warning(config: Config, path: str | Path) -> str:
    """A warning when ``path`` holds passwords and others may read it (``""`` otherwise);
    ``b2bua run`` and ``check-config`` print it."""
    path = Path(path)
    if not config.sip.credentials and not config.sip.tls.private_key_password:
        return ""
    try:
        mode = path.stat().st_mode
    except OSError:
        return ""
    if not mode & 0o077:
        return ""
    return (f"{path} holds passwords ([[sip.credentials]], [sip.tls]) and is readable or writable by others (mode "
            f"{mode & 0o777:04o}): chmod 600 {path}")
