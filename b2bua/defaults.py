"""The host's own hook implementations, registered ``trylast`` so any plugin overrides them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from b2bua import hookimpl
from b2bua.api import DialMode, Failure, Reject, RoutePlan, Target
from b2bua.sip import retry_after
from b2bua.sippolicy import relay

if TYPE_CHECKING:
    from b2bua.api import CallInfo, Host
    from b2bua.config import Config


class HostDefaults:
    """Static routing (``[routing] default_target``) and a plain failover policy."""

    def __init__(self) -> None:
        self.default_target = ""
        self.no_route = Reject(503, "No Route")

    @hookimpl(trylast=True)
    def b2bua_configure(self, config: Config, app: Host) -> None:
        self.default_target = config.routing.default_target
        self.no_route = Reject(config.routing.no_route_code, config.routing.no_route_reason,
                               retry_after(config.sip.retry_after))

    @hookimpl(trylast=True)
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject:
        if self.default_target:
            return RoutePlan((Target(self.default_target),))
        return self.no_route

    @hookimpl(trylast=True)
    def b2bua_next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> Target | Reject:
        """Next target of a serial plan on 408 or 5xx; otherwise relay the failure
        (:func:`b2bua.sippolicy.relay`: a gateway's 503 reaches the caller as 500)."""
        retryable = failure.code == 408 or 500 <= failure.code <= 599
        if plan.mode is DialMode.SERIAL and retryable and failure.attempt < len(plan.targets):
            return plan.targets[failure.attempt]
        return relay(failure)

