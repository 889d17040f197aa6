"""A SIP back-to-back user agent on pjsua2, extended by pluggy plugins.

Write a plugin::

    from b2bua import hookimpl, RoutePlan, Target

    class PrefixRouter:
        @hookimpl
        def b2bua_route_call(self, call):
            if call.request_uri.startswith("sip:49"):
                return RoutePlan((Target("sip:10.0.0.1:5060"),))
            return None

and enable it in ``config.toml``: ``[plugins] enabled = ["mypackage.mymodule:PrefixRouter"]``.
See ``docs/hooks.md`` for every hook.
"""

from __future__ import annotations

import pluggy

from b2bua.api import (
    CallInfo,
    DialMode,
    EndCause,
    Failure,
    FailureKind,
    Host,
    Outbound,
    OutgoingRequest,
    ProbeResult,
    Reject,
    RoutePlan,
    Stash,
    StashKey,
    Target,
    TimerHandle,
)

__version__ = "0.1.0"
PROJECT = "b2bua"
hookimpl = pluggy.HookimplMarker(PROJECT)

__all__ = [
    "PROJECT",
    "CallInfo",
    "DialMode",
    "EndCause",
    "Failure",
    "FailureKind",
    "Host",
    "Outbound",
    "OutgoingRequest",
    "ProbeResult",
    "Reject",
    "RoutePlan",
    "Stash",
    "StashKey",
    "Target",
    "TimerHandle",
    "__version__",
    "hookimpl",
]
