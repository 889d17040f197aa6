"""Small plugins the host's end-to-end tests enable (importable as ``tests.e2e.host_plugins``)."""

from __future__ import annotations

from b2bua import CallInfo, DialMode, RoutePlan, Target, hookimpl
from b2bua.config import Config


class ParallelRouter:
    """Forks every call to the URIs listed in ``[plugins.parallel] targets``."""

    def __init__(self) -> None:
        self.targets: tuple[Target, ...] = ()

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        self.targets = tuple(Target(uri) for uri in config.plugin_section("parallel").get("targets", ()))

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan:
        return RoutePlan(self.targets, DialMode.PARALLEL)


class RaisingRouter:
    """Raises for calls to user ``boom``; leaves the rest to the next plugin."""

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> None:
        if call.request_uri.startswith("sip:boom@"):
            raise RuntimeError("this plugin is broken on purpose")
