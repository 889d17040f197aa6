"""Small plugins the host's end-to-end tests enable (importable as ``tests.e2e.host_plugins``)."""

from __future__ import annotations

from typing import Any

from b2bua import CallInfo, DialMode, RoutePlan, Target, hookimpl
from b2bua.api import Outbound
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


class _HoldsCallObjects:
    """Base of the test plugins that reach into the App for pjsua2 Call objects (real plugins
    never see legs) and hold them in ``held``."""

    def __init__(self) -> None:
        self.app: Any = None
        self.held: list[Any] = []

    @hookimpl
    def b2bua_configure(self, config: Config, app: Any) -> None:
        self.app = app


class LegKeeper(_HoldsCallObjects):
    """Keeps every answered call's legs forever: a plugin bug a shutdown must survive."""

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        session = self.app.sessions[call.id]
        self.held.extend([session.a, *session.b.values()])


class SlotTaker(_HoldsCallObjects):
    """Simulates pjsua handing an answered call's slot to another Call object without a callback
    (what overload does): a second Leg takes over the first caller's call."""

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        from b2bua.legs import Leg

        if self.held:
            return  # the first call only
        a_leg = self.app.sessions[call.id].a
        self.held.append(Leg(self.app.endpoint.account, None, 0, a_leg.getId()))


class CredentialPerCallRouter:
    """Routes each call to ``[plugins.per_call] target`` with the credentials named by the
    Request-URI's user (``sip:c7@...`` -> ``Outbound(auth="c7")``): one way of sending per user."""

    def __init__(self) -> None:
        self.target = ""

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        self.target = str(config.plugin_section("per_call").get("target", ""))

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan:
        user = call.request_uri.removeprefix("sip:").split("@", 1)[0]
        return RoutePlan((Target(self.target, outbound=Outbound(auth=user)),))


class RequestSender:
    """At start-up sends one out-of-dialog request per method in ``[plugins.sender] methods`` to
    ``target`` through the host's ``send_request`` and logs each result: ``sender: METHOD -> CODE REASON``."""

    def __init__(self) -> None:
        self.section: dict[str, Any] = {}

    @hookimpl
    def b2bua_configure(self, config: Config) -> None:
        self.section = dict(config.plugin_section("sender"))

    @hookimpl
    def b2bua_startup(self, app: Any) -> None:
        from loguru import logger

        for method in self.section.get("methods", ()):
            app.send_request(method, self.section["target"], from_uri="sip:sender@b2bua.invalid",
                             callback=lambda r, m=method: logger.info("sender: {} -> {} {}", m, r.code, r.reason))
