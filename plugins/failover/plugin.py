"""The failover plugin: after a failed attempt, the next target or the caller's final answer.

It replaces the host's default (next target on 408/5xx, else relay) with the operator's
``[plugins.failover]`` settings; the decisions are the pure functions of
:mod:`plugins.failover.policy`. It also fills per-target timeouts into the route plan and,
with ``mark`` set, asks the dispatcher to mark a destination that did not answer
(Kamailio's ``ds_mark_dst`` in ``failure_route``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from b2bua import hookimpl
from b2bua.api import Failure, Reject, RoutePlan, StashKey, Target
from b2bua.config import parse_section
from plugins.failover import policy
from plugins.failover.config import FailoverConfig

if TYPE_CHECKING:
    from b2bua.api import CallInfo, Host
    from b2bua.config import Config


@dataclass
class CallRecord:
    """What the plugin remembers about one call: when it arrived, what was dialled, what failed."""

    started: float
    tried: list[Target] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


#: per-call data of this plugin in ``call.stash``
CALL_RECORD: StashKey[CallRecord] = StashKey("failover.call")


class FailoverPlugin:
    """``[plugins.failover]``: failover codes, hunt-stop codes, timers, marking, final answer.

    :param clock: seconds on a monotonic clock (tests pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = FailoverConfig()
        self.app: Host | None = None
        self.default_attempt_timeout: float | None = None
        self._clock = clock
        self._warned_no_mark_hook = False

    # -- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def b2bua_configure(self, config: Config, app: Host) -> None:
        """Parse ``[plugins.failover]`` and keep the host services."""
        section = config.plugin_section("failover")
        self.cfg = parse_section(FailoverConfig, section, config.where("plugins.failover"))
        self.app = app
        self.default_attempt_timeout = config.sip.attempt_timeout
        cfg = self.cfg
        logger.info(
            "failover: next target on {}, hunt stops on {}, max_attempts={}, total_timeout={}, mark={!r}, final={}",
            cfg.failover_set,
            cfg.hunt_stop_set,
            cfg.max_attempts or "plan",
            cfg.total_timeout or "none",
            cfg.mark,
            cfg.final,
        )

    # -- per call ----------------------------------------------------------------------------

    def _record(self, call: CallInfo) -> CallRecord:
        return call.stash.setdefault(CALL_RECORD, CallRecord(started=self._clock()))

    @hookimpl(wrapper=True)
    def b2bua_route_call(
        self, call: CallInfo
    ) -> Generator[None, RoutePlan | Reject | None, RoutePlan | Reject | None]:
        """Start the call's clock and fill the configured timeouts into the chosen plan."""
        self._record(call)
        plan = yield
        if isinstance(plan, RoutePlan):
            return policy.with_timeouts(plan, self.cfg)
        return plan

    @hookimpl
    def b2bua_leg_started(self, call: CallInfo, target: Target) -> None:
        """Remember the dialled target (the next target is the first plan entry not dialled)."""
        self._record(call).tried.append(target)

    @hookimpl
    def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
        """Remember the failure, and mark the destination when it is to blame (``mark``)."""
        self._record(call).failures.append(failure)
        if policy.should_mark(failure, self.cfg):
            self._mark(call, failure)

    @hookimpl(trylast=True)  # a user's plugin is asked first; the host's default comes after this
    def b2bua_next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> Target | Reject:
        """The next untried plan target, or the final answer (see :func:`policy.next_step`)."""
        record = self._record(call)
        step = policy.next_step(
            plan,
            failure,
            record.tried,
            self._clock() - record.started,
            self.cfg,
            failures=record.failures,
            default_attempt_timeout=self.default_attempt_timeout,
        )
        log = logger.bind(call_id=call.call_id)
        what = f"attempt {failure.attempt} to {failure.target.label} failed: {failure.code} {failure.reason}"
        if isinstance(step, Target):
            log.debug("{}; next target {}", what, step.label)
        else:
            log.debug("{}; answering {} {}", what, step.code, step.reason)
        return step

    def _mark(self, call: CallInfo, failure: Failure) -> None:
        cfg = self.cfg
        hook = getattr(self.app.hook, "dispatcher_mark", None) if self.app is not None else None
        if hook is None:
            if not self._warned_no_mark_hook:
                self._warned_no_mark_hook = True
                logger.warning("failover: mark={!r} is set but no plugin provides dispatcher_mark", cfg.mark)
            return
        reason = f"failover: {failure.kind.value} {failure.code} {failure.reason}".rstrip()
        try:
            hook(target=failure.target, state=cfg.mark.lower(), reason=reason)
        except Exception:
            # a side effect: a broken marker must not stop the other leg_failed hooks
            log = logger.bind(call_id=call.call_id)
            log.exception("failover: dispatcher_mark failed for {}", failure.target.uri)
