"""Example plugin: route calls by the Request-URI's user prefix.

Enable it in ``config.toml`` (the folder holding this file must be importable, e.g. on
``PYTHONPATH``), next to the built-in plugins or alone::

    [plugins]
    enabled = ["prefix_router:PrefixRouter", "dispatcher", "failover"]

    [plugins.prefix_router]
    "49" = "sip:10.0.0.1:5060"     # Germany to gateway 1
    "33" = "sip:10.0.0.2:5060"     # France to gateway 2

The longest matching prefix wins; a call that matches nothing is left to the next plugin (the
dispatcher, or the host's ``[routing] default_target``). ``tests/e2e/test_example_plugin.py``
runs it over real SIP.
"""

from __future__ import annotations

from b2bua import CallInfo, RoutePlan, Target, hookimpl
from b2bua.config import Config, ConfigError
from b2bua.sipuri import parse_uri, parse_uri_lenient


class PrefixRouter:
    def __init__(self) -> None:
        self.routes: dict[str, str] = {}  # prefix -> gateway URI, longest prefix first

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        where = config.where("plugins.prefix_router")
        routes = {}
        for prefix, uri in config.plugin_section("prefix_router").items():
            try:
                if not prefix.isdigit() or not isinstance(uri, str):
                    raise ValueError("expected a digit prefix mapped to a sip: URI")
                parse_uri(uri)  # strict: a typo stops start-up instead of failing calls
            except ValueError as exc:
                raise ConfigError(f"{where} {prefix!r}: {exc}") from None
            routes[prefix] = uri
        self.routes = dict(sorted(routes.items(), key=lambda item: -len(item[0])))

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | None:
        user = parse_uri_lenient(call.request_uri).user
        for prefix, uri in self.routes.items():
            if user.startswith(prefix):
                return RoutePlan((Target(uri),))
        return None  # not mine: the next plugin decides
