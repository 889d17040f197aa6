"""The B2BUA's hook specifications (pluggy project name ``b2bua``).

Hooks are called with keyword arguments only. Decision hooks are ``firstresult``: the first
plugin that returns something other than None decides, and the plugins after it are not asked;
so a decision hook should have no side effects, and its paired notification hook carries them.
The built-ins document the side effects they do have: the dispatcher's ``b2bua_route_call``
advances its round-robin and weight cursors and stores the chosen route in ``call.stash`` (as
Kamailio's ``ds_select_dst`` does), and the failover plugin's ``b2bua_route_call`` wrapper
starts the call's ``total_timeout`` clock. Every hook runs on the loop thread: never block in
one (no I/O, no sleeps).

Call order: users' plugins first, then the built-ins' decision hooks (``trylast``), then the
host's defaults (:mod:`b2bua.defaults`, ``trylast`` and registered after every plugin), whatever
the order in ``[plugins] enabled`` (see :func:`b2bua.plugins.make_manager`).

Order of the hooks for one call::

    b2bua_incoming_call -> b2bua_route_call
      -> for each attempt: b2bua_prepare_target -> b2bua_leg_started
           -> (failed) b2bua_leg_failed -> b2bua_next_target -> next attempt or final answer
           -> (answered) b2bua_call_answered
      -> b2bua_call_ended
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from b2bua.api import CallInfo, EndCause, Failure, Host, OutgoingRequest, Reject, RoutePlan, Target
    from b2bua.config import Config
    from b2bua.rpc import RpcRegistry

hookspec = pluggy.HookspecMarker("b2bua")

# -- Initialization ---------------------------------------------------------------------------


@hookspec(historic=True)
def b2bua_addhooks(pluginmanager: pluggy.PluginManager) -> None:
    """Add a plugin's own hook specifications (e.g. ``dispatcher_dst_state_changed``).

    :param pluginmanager: the B2BUA's plugin manager; call ``pluginmanager.add_hookspecs(module)``.

    Historic: a plugin registered later still gets the call.
    """


@hookspec(historic=True)
def b2bua_configure(config: Config, app: Host) -> None:
    """Read and validate the plugin's own configuration, once, before start-up.

    :param config: the whole parsed ``config.toml``; a plugin's section is
        ``config.plugin_section("name")`` (a dict), parsed with :func:`b2bua.config.parse_section`.
    :param app: the host services; keep it for later. It runs on the loop thread before the SIP
        stack starts, so only part of them work yet: ``app.config`` and ``app.hook`` do;
        ``app.call_later`` and ``app.call_soon_threadsafe`` queue work that runs once the loop
        serves (after ``b2bua_startup``); ``app.run_on_loop`` runs its callable at once (this is
        the loop thread); ``app.send_request`` does not work (there is no SIP stack yet: it
        raises). Send requests from ``b2bua_startup`` on.

    Raise :class:`b2bua.config.ConfigError` for a bad setting: start-up stops with its message.
    Historic: a plugin registered later still gets the call.
    """


@hookspec
def b2bua_startup(app: Host) -> None:
    """The SIP stack is up and no call has arrived yet: load data, start timers.

    :param app: the host services, all of them working from here on. An exception here stops
        start-up with the error.
    """


@hookspec
def b2bua_shutdown(app: Host) -> None:
    """The B2BUA is stopping (calls are drained or hung up): stop timers, close storage."""


@hookspec
def b2bua_reload(app: Host) -> None:
    """The operator asked for a reload (SIGHUP): re-read data sources.

    Runs on the loop thread: read with ``app.run_blocking`` (the result comes back on the
    loop) and build anything large in an ``app.run_task``. A failed reload must keep the
    previous data.
    """


@hookspec
def b2bua_register_rpc(registry: RpcRegistry) -> None:
    """Add control-API methods: ``registry.add("name.method", func, help="...")``.

    Methods run on the loop thread unless added with ``on_loop=False``; they take the
    JSON-RPC params (positional or named) and return a JSON-serialisable result, or raise
    :class:`b2bua.rpc.RpcError`.
    """


# -- Call decisions (firstresult) ---------------------------------------------------------------


@hookspec(firstresult=True)
def b2bua_incoming_call(call: CallInfo) -> Reject | None:
    """Admit or refuse a new call before it is routed (ACLs, capacity, rate limits).

    :param call: the incoming call.
    :return: a :class:`~b2bua.api.Reject` to refuse it, or None to let it through.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def b2bua_route_call(call: CallInfo) -> RoutePlan | Reject | None:
    """Decide where the call goes.

    :param call: the admitted call.
    :return: a :class:`~b2bua.api.RoutePlan` (targets in order; serial or parallel), a
        :class:`~b2bua.api.Reject`, or None to let the next plugin decide. The dispatcher
        (``trylast``) answers after users' plugins, always (a Reject when no rule matches);
        the host's default (``[routing] default_target``) answers last; with no route at all
        the caller gets ``[routing] no_route_code``.

    Stops at first non-None result.
    """


@hookspec(firstresult=True)
def b2bua_next_target(call: CallInfo, plan: RoutePlan, failure: Failure) -> Target | Reject | None:
    """An attempt failed: choose the next target, or give up with a final answer.

    :param call: the call.
    :param plan: the plan returned by ``b2bua_route_call``.
    :param failure: the failed attempt (code, reason, kind, attempt number, target).
    :return: the next :class:`~b2bua.api.Target` to dial, or a :class:`~b2bua.api.Reject`
        with the caller's final answer. The host's default tries the plan's next target on
        408 and 5xx, and otherwise relays the failure (:func:`b2bua.sippolicy.relay`: a
        gateway's 503 reaches the caller as 500).

    In parallel mode it is asked once, after every fork failed, with the best failure
    (:func:`b2bua.sippolicy.best_failure`: Kamailio tm's choice, RFC 3261 §16.7). It is not
    asked for a cancelled attempt, nor once the call is answered or the caller has left.
    Users' plugins are asked before the failover plugin (``trylast``), which answers always.
    Stops at first non-None result.
    """


# -- Call notifications -----------------------------------------------------------------------


@hookspec
def b2bua_prepare_target(call: CallInfo, target: Target, request: OutgoingRequest) -> None:
    """Adjust one outgoing INVITE before it is sent: change ``request`` in place.

    :param call: the call.
    :param target: the target being dialled.
    :param request: Request-URI, From and To (URIs and display names) and extra headers of the
        B leg (mutable; :class:`~b2bua.api.OutgoingRequest` says what the host fills in). A value
        that is not one line of text fails the attempt instead of reaching the wire.

    Fires for every attempt, failovers included: the place for caller-ID normalisation per
    route or destination (``docs/examples/callerid.py``).
    """


@hookspec
def b2bua_leg_started(call: CallInfo, target: Target) -> None:
    """A B leg's INVITE is about to be sent to ``target`` (e.g. count the destination's load).

    Every attempt that got a call slot fires it, even one whose INVITE then cannot be sent
    (its ``b2bua_leg_failed`` follows at once, kind ``error``).
    """


@hookspec
def b2bua_leg_failed(call: CallInfo, failure: Failure) -> None:
    """A B leg ended without being answered: a failure response, a timeout, a send error,
    or cancelled because another fork answered or the caller gave up (``failure.kind``).

    Fires once per attempt, before ``b2bua_next_target`` for the same failure. It fires
    *without* a ``b2bua_leg_started`` for an attempt that was never sent (``kind`` ``error``):
    no pjsua call slot (``503 Out of call slots``), a request ``b2bua_prepare_target`` left
    unsendable or an ``Outbound`` the host cannot honour (``500``); a plugin that counts load
    in ``b2bua_leg_started`` must not release any for it (compare ``failure.attempt`` with the
    attempts it saw start).
    """


@hookspec
def b2bua_call_answered(call: CallInfo, target: Target) -> None:
    """A B leg answered and the caller was answered: the call is bridged to ``target``."""


@hookspec
def b2bua_call_ended(call: CallInfo, cause: EndCause, answered: Target | None) -> None:
    """The call is over (both legs gone): release per-call resources.

    :param cause: how it ended.
    :param answered: the target that answered, or None if the call was never answered.
    """


# -- Plugin API --------------------------------------------------------------------------------


@hookspec
def b2bua_cli_commands(subparsers: Any) -> None:
    """Add ``b2bua`` command-line subcommands (argparse ``subparsers``).

    A subcommand sets ``func=handler`` with ``parser.set_defaults``; the handler gets the
    parsed ``argparse.Namespace`` and returns the process exit code.
    """
