"""Plugin loading and the typed facade every hook call goes through."""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import pluggy
from loguru import logger

from b2bua import PROJECT, defaults, hookspecs
from b2bua.config import ConfigError

if TYPE_CHECKING:
    from b2bua.api import CallInfo, EndCause, Failure, Host, OutgoingRequest, Reject, RoutePlan, Target
    from b2bua.config import Config
    from b2bua.rpc import RpcRegistry
    from b2bua.stats import StatsRegistry

ENTRY_POINT_GROUP = PROJECT


class PluginError(ConfigError):
    """A plugin could not be found, imported or registered."""


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Installed plugins of group ``b2bua``, by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin_object(spec: str) -> Any:
    """Import a plugin by entry-point name or ``package.module[:attr]``; instantiate classes."""
    eps = entry_points()
    try:
        if spec in eps:
            obj = eps[spec].load()
        else:
            module_name, _, attr = spec.partition(":")
            try:
                obj = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name != module_name.split(".")[0] and exc.name != module_name:
                    raise
                known = ", ".join(sorted(eps)) or "none installed"
                raise PluginError(
                    f"plugin {spec!r}: no such entry point (installed: {known}) and no module "
                    f"{module_name!r} on the Python path"
                ) from None
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {spec!r} failed to load: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:
            raise PluginError(f"plugin {spec!r}: {type(exc).__name__}: {exc}") from exc
    return obj


def unused_sections(config: Config) -> list[str]:
    """Warnings for ``[plugins.<name>]`` tables of installed plugins that ``[plugins] enabled``
    does not load: their settings would be ignored without a word. A table named after no
    installed plugin is left alone (a plugin loaded by module path may read any table)."""
    eps = entry_points()
    modules = [spec.partition(":")[0] for spec in config.plugins.enabled]
    warnings = []
    for name in sorted(config.plugin_sections):
        ep = eps.get(name)
        if ep is None:
            continue
        package = ep.module.rpartition(".")[0] or ep.module
        if name in config.plugins.enabled or ep.value in config.plugins.enabled or any(
                m == package or m.startswith(package + ".") for m in modules):
            continue
        warnings.append(f"{config.where('plugins.' + name)} is set, but {name!r} is not in [plugins] "
                        "enabled: these settings are not used")
    return warnings


def make_manager(enabled: Iterable[str], *, with_defaults: bool = True) -> pluggy.PluginManager:
    """A plugin manager with the host's specs, the ``enabled`` plugins and the host's defaults.

    Call order of a hook (pluggy): plain implementations first, the plugin registered last
    first; then the ``trylast`` ones in registration order. The built-in plugins mark their
    decision hooks ``trylast``, and the host's defaults are registered after every plugin, so
    a decision hook asks users' plugins first, then the built-ins (in ``enabled`` order), then
    the host's default, whatever the order in ``enabled``.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for spec in enabled:
        obj = load_plugin_object(spec)
        try:
            pm.register(obj, name=spec)
        except ValueError as exc:
            raise PluginError(f"plugin {spec!r}: {exc}") from exc
    if with_defaults:
        # trylast like the built-ins, and registered after them: trylast impls run in
        # registration order, so the host's defaults answer last
        pm.register(defaults.HostDefaults(), name="b2bua.defaults")
    pm.hook.b2bua_addhooks.call_historic(kwargs={"pluginmanager": pm})
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) if exc.plugin is not None else "?"
        raise PluginError(f"plugin {name!r}: {exc} (a misspelt hook name?)") from exc
    return pm


class Hooks:
    """Typed calls of every host hook, keyword arguments only (one place to find each call site).

    Decision hooks let a plugin's exception propagate: the caller (the call's session) turns it
    into a 500 for that one call. Notification hooks log the error with the call and go on.

    A per-call hook no loaded plugin implements (``b2bua_incoming_call`` and
    ``b2bua_prepare_target`` in the shipped config) is not called through pluggy: asking the
    hook for its implementations costs a list copy, a call through pluggy with none ~12,000
    instructions. Asked at every call, so a plugin registered later is called from then on.
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._hook = pm.hook

    # lifecycle
    def configure(self, config: Config, app: Host) -> None:
        self._hook.b2bua_configure.call_historic(kwargs={"config": config, "app": app})

    def startup(self, app: Host) -> None:
        self._hook.b2bua_startup(app=app)

    def shutdown(self, app: Host) -> None:
        self._hook.b2bua_shutdown(app=app)

    def register_rpc(self, registry: RpcRegistry) -> None:
        self._hook.b2bua_register_rpc(registry=registry)

    def register_stats(self, registry: StatsRegistry) -> None:
        self._hook.b2bua_register_stats(registry=registry)

    # decisions
    def incoming_call(self, call: CallInfo) -> Reject | None:
        hook = self._hook.b2bua_incoming_call
        if not hook.get_hookimpls():
            return None  # what pluggy answers for a firstresult hook without implementations
        return hook(call=call)  # type: ignore[no-any-return]

    def route_call(self, call: CallInfo) -> RoutePlan | Reject | None:
        return self._hook.b2bua_route_call(call=call)  # type: ignore[no-any-return]

    def next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> Target | Reject | None:
        return self._hook.b2bua_next_target(call=call, plan=plan, failure=failure)  # type: ignore[no-any-return]

    # notifications
    def prepare_target(self, call: CallInfo, target: Target, request: OutgoingRequest) -> None:
        self._notify("b2bua_prepare_target", call, call=call, target=target, request=request)

    def leg_started(self, call: CallInfo, target: Target) -> None:
        self._notify("b2bua_leg_started", call, call=call, target=target)

    def leg_failed(self, call: CallInfo, failure: Failure) -> None:
        self._notify("b2bua_leg_failed", call, call=call, failure=failure)

    def call_answered(self, call: CallInfo, target: Target) -> None:
        self._notify("b2bua_call_answered", call, call=call, target=target)

    def call_ended(self, call: CallInfo, cause: EndCause, answered: Target | None) -> None:
        self._notify("b2bua_call_ended", call, call=call, cause=cause, answered=answered)

    def _notify(self, name: str, about: CallInfo, **kwargs: Any) -> None:
        """Each implementation on its own, in pluggy's order: one that raises is logged with the
        Call-ID and the next is still called (through pluggy the first exception would stop the
        rest, and a user's plugin that fails in ``b2bua_call_ended`` would cost the call's record).
        A hook with a wrapper implementation goes through pluggy, which runs wrappers."""
        hook = getattr(self._hook, name)
        impls = hook.get_hookimpls()
        if not impls:
            return
        if any(impl.hookwrapper or impl.wrapper for impl in impls):
            try:
                hook(**kwargs)
            except Exception:
                logger.bind(call_id=about.call_id).opt(exception=True).error("a plugin failed in {}", name)
            return
        for impl in reversed(impls):  # pluggy calls the list's last first
            try:
                impl.function(*[kwargs[arg] for arg in impl.argnames])
            except Exception:
                logger.bind(call_id=about.call_id).opt(exception=True).error(
                    "plugin {!r} failed in {}", impl.plugin_name, name)

    def plugin_names(self) -> list[str]:
        # the host's own impls (b2bua.defaults, b2bua.stats) are not plugins an operator enabled
        return [name for name, _ in self.pm.list_name_plugin() if not name.startswith("b2bua.")]
