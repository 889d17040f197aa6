"""Example plugin: caller-ID normalisation per route and per destination.

A PBX sends the caller's number the way its users dial (``0301234567``, ``+49301234567``,
``0049301234567``); each carrier wants one format. This plugin rewrites the user part of the
B leg's From and of the P-Asserted-Identity copied from the caller (``[headers] to_gateway``)
in ``b2bua_prepare_target``, which runs for every attempt, so a failover to another carrier
gets that carrier's format. Enable it next to the built-ins (the folder holding this file must
be importable, e.g. on ``PYTHONPATH``)::

    [plugins]
    enabled = ["callerid:CallerId", "dispatcher", "failover"]

    [plugins.callerid]
    country_code = "49"                       # what a national number (0301234567) is in
    sets = { "1" = "e164", "2" = "national" } # per dispatcher set: e164, national or keep
    hide_name = false                         # true: no display name towards the carriers

Per destination, a ``cli=e164|national|keep`` attribute in ``dispatcher.list`` wins over its
set's format (``1 sip:10.0.0.1:5060 0 0 cli=national``). Targets that do not come from the
dispatcher are left alone. ``tests/e2e/test_callerid_example.py`` runs it over real SIP.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from b2bua import CallInfo, OutgoingRequest, Target, hookimpl
from b2bua.config import Config, ConfigError
from b2bua.sipuri import parse_name_addr, parse_uri_lenient

STYLES = ("e164", "national", "keep")


def normalise(number: str, style: str, country_code: str) -> str:
    """``number`` in ``style``: ``e164`` (``+4930...``) or ``national`` (``030...``).

    Numbers that are neither national (``0``...), international (``00``...) nor E.164
    (``+``...), such as extensions, are left as they are; so is everything with ``keep``.
    """
    if style == "keep" or not number.lstrip("+").isdigit():
        return number
    if number.startswith("+"):
        e164 = number[1:]
    elif number.startswith("00"):
        e164 = number[2:]
    elif number.startswith("0"):
        e164 = country_code + number[1:]
    else:
        return number  # an extension or a short code
    if style == "e164":
        return "+" + e164
    if e164.startswith(country_code):
        return "0" + e164[len(country_code):]
    return "00" + e164


def with_user(uri: str, style: str, country_code: str) -> str:
    """``uri`` (sip:, sips: or tel:) with its user part normalised."""
    parts = parse_uri_lenient(uri)
    if not parts.user:
        return uri
    user = normalise(parts.user, style, country_code)
    if parts.scheme == "tel":
        return f"tel:{user}{uri[4 + len(parts.user):]}"
    return str(parts._replace(user=user))


class CallerId:
    def __init__(self) -> None:
        self.country_code = "49"
        self.sets: dict[int, str] = {}
        self.hide_name = False

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        where = config.where("plugins.callerid")
        section = config.plugin_section("callerid")
        unknown = set(section) - {"country_code", "sets", "hide_name"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}")
        self.country_code = str(section.get("country_code", "49"))
        if not self.country_code.isdigit():
            raise ConfigError(f"{where} country_code: {self.country_code!r} is not a number such as '49'")
        self.hide_name = bool(section.get("hide_name", False))
        sets = section.get("sets", {})
        if not isinstance(sets, Mapping):
            raise ConfigError(f"{where} sets: expected a table such as {{ \"1\" = \"e164\" }}")
        for key, style in sets.items():
            if not str(key).isdigit() or style not in STYLES:
                raise ConfigError(f"{where} sets.{key}: expected a set id mapped to one of {', '.join(STYLES)}")
            self.sets[int(key)] = style

    def style_for(self, target: Target) -> str | None:
        """The format a dispatcher target wants: its ``cli`` attribute, else its set's, else None."""
        info: Any = target.data.get("dispatcher") if isinstance(target.data, Mapping) else None
        if not isinstance(info, Mapping):
            return None
        attrs = info.get("attrs") or {}
        style = attrs.get("cli") if isinstance(attrs, Mapping) else None
        return style if style in STYLES else self.sets.get(info.get("setid", -1))

    @hookimpl
    def b2bua_prepare_target(self, call: CallInfo, target: Target, request: OutgoingRequest) -> None:
        style = self.style_for(target)
        if style is not None:
            request.from_uri = with_user(request.from_uri, style, self.country_code)
            request.headers[:] = [(name, self._identity(value, style)) if name.lower() == "p-asserted-identity"
                                  else (name, value) for name, value in request.headers]
        if self.hide_name and style is not None:
            request.from_name = ""

    def _identity(self, value: str, style: str) -> str:
        addr = parse_name_addr(value)
        uri = with_user(addr.uri, style, self.country_code)
        return value.replace(addr.uri, uri, 1) if uri != addr.uri else value
