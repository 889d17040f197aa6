"""Example plugin: route calls by the Request-URI's user prefix.

Enable it in ``config.toml`` (the folder holding this file must be importable, e.g. on
``PYTHONPATH``)::

    [plugins]
    enabled = ["prefix_router:PrefixRouter"]

    [plugins.prefix_router]
    "49" = "sip:10.0.0.1:5060"     # Germany to gateway 1
    "33" = "sip:10.0.0.2:5060"     # France to gateway 2

The longest matching prefix wins; a call that matches nothing is left to the next plugin
(or the host's ``[routing] default_target``).
"""

from __future__ import annotations

from b2bua import CallInfo, RoutePlan, Target, hookimpl
from b2bua.config import Config, ConfigError
from b2bua.sip import uri_user


class PrefixRouter:
    def __init__(self) -> None:
        self.routes: dict[str, str] = {}

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        where = config.where("plugins.prefix_router")
        for prefix, uri in config.plugin_section("prefix_router").items():
            if not prefix.isdigit() or not isinstance(uri, str) or not uri.startswith("sip:"):
                raise ConfigError(f"{where} {prefix!r}: expected a digit prefix mapped to a sip: URI")
            self.routes[prefix] = uri

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | None:
        user = uri_user(call.request_uri)
        for prefix in sorted(self.routes, key=len, reverse=True):
            if user.startswith(prefix):
                return RoutePlan((Target(self.routes[prefix]),))
        return None
