"""Plugin loading, the default hooks, and the documentation of every hook."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
from loguru import logger

from b2bua import hookimpl
from b2bua.api import CallInfo, DialMode, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.config import parse_config
from b2bua.plugins import Hooks, PluginError, make_manager

ROOT = Path(__file__).resolve().parents[2]


def call() -> CallInfo:
    return CallInfo(1, "cid", "sip:4930@b2bua", "sip:a@x", "sip:4930@b2bua")


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("tmp_plugin")]:
        del sys.modules[name]


def write(plugin_dir: Path, name: str, body: str) -> None:
    (plugin_dir / f"{name}.py").write_text(textwrap.dedent(body))


def test_default_route_uses_default_target() -> None:
    pm = make_manager([])
    hooks = Hooks(pm)
    hooks.configure(parse_config({"routing": {"default_target": "sip:10.0.0.1"}}), app=None)  # type: ignore[arg-type]
    plan = hooks.route_call(call())
    assert plan == RoutePlan((Target("sip:10.0.0.1"),))


def test_no_route_answers_configured_code() -> None:
    hooks = Hooks(make_manager([]))
    hooks.configure(parse_config({"routing": {"no_route_code": 404, "no_route_reason": "Nowhere"}}), app=None)  # type: ignore[arg-type]
    assert hooks.route_call(call()) == Reject(404, "Nowhere", (("Retry-After", "5"),))


@pytest.mark.parametrize(
    ("code", "kind", "attempt", "expected"),
    [
        (503, FailureKind.RESPONSE, 1, Target("sip:b")),
        (408, FailureKind.NO_RESPONSE, 1, Target("sip:b")),
        (404, FailureKind.RESPONSE, 1, Reject(404, "Not Found")),
        (486, FailureKind.RESPONSE, 1, Reject(486, "Busy Here")),
        (503, FailureKind.RESPONSE, 2, Reject(500, "Server Internal Error")),  # RFC 3261 16.7: no 503 relayed
        (408, FailureKind.NO_ANSWER, 2, Reject(408, "Request Timeout")),
    ],
)
def test_default_next_target(code: int, kind: FailureKind, attempt: int, expected: object) -> None:
    hooks = Hooks(make_manager([]))
    plan = RoutePlan((Target("sip:a"), Target("sip:b")))
    reason = {503: "Service Unavailable", 404: "Not Found", 486: "Busy Here", 408: ""}[code]
    failure = Failure(plan.targets[attempt - 1], code, reason, kind, attempt)
    assert hooks.next_target(call(), plan, failure) == expected


def test_parallel_plan_is_not_redialled_by_default() -> None:
    hooks = Hooks(make_manager([]))
    plan = RoutePlan((Target("sip:a"), Target("sip:b")), DialMode.PARALLEL)
    failure = Failure(plan.targets[0], 503, "Service Unavailable", FailureKind.RESPONSE, 1)
    assert hooks.next_target(call(), plan, failure) == Reject(500, "Server Internal Error")


class _Seen:
    """A plugin registered after start-up: it records the hooks it was called in."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail

    @hookimpl
    def b2bua_incoming_call(self, call: CallInfo) -> Reject | None:
        self.calls.append("incoming_call")
        return Reject(486, "Busy Here")

    @hookimpl
    def b2bua_prepare_target(self, call: CallInfo, target: Target, request: object) -> None:
        self.calls.append("prepare_target")
        if self.fail:
            raise RuntimeError("boom")


def test_hooks_without_implementations_are_skipped_until_a_plugin_registers() -> None:
    pm = make_manager([])
    hooks = Hooks(pm)
    assert not pm.hook.b2bua_incoming_call.get_hookimpls()
    assert hooks.incoming_call(call()) is None  # pluggy's answer without implementations
    hooks.prepare_target(call(), Target("sip:x"), None)  # type: ignore[arg-type]
    seen = _Seen()
    pm.register(seen, name="late")
    assert hooks.incoming_call(call()) == Reject(486, "Busy Here")
    hooks.prepare_target(call(), Target("sip:x"), None)  # type: ignore[arg-type]
    assert seen.calls == ["incoming_call", "prepare_target"]
    pm.unregister(name="late")
    assert hooks.incoming_call(call()) is None


def errors_of_prepare_target(hooks: Hooks) -> list[str]:
    """The ERROR lines logged while ``hooks`` notify ``b2bua_prepare_target`` once."""
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="ERROR")
    try:
        hooks.prepare_target(call(), Target("sip:x"), None)  # type: ignore[arg-type]
    finally:
        logger.remove(sink)
    return lines


def test_a_raising_notification_plugin_costs_one_call() -> None:
    pm = make_manager([])
    hooks = Hooks(pm)
    pm.register(_Seen(fail=True), name="late")
    assert errors_of_prepare_target(hooks) == ["plugin 'late' failed in b2bua_prepare_target"]


def test_a_raising_notification_plugin_does_not_stop_the_others() -> None:
    """The plugin pluggy calls first raises; the one after it (a call-record writer, say) still hears."""
    pm = make_manager([])
    hooks = Hooks(pm)
    quiet, failing = _Seen(), _Seen(fail=True)
    pm.register(quiet, name="records")
    pm.register(failing, name="user")  # registered last: called first
    assert errors_of_prepare_target(hooks) == ["plugin 'user' failed in b2bua_prepare_target"]
    assert (failing.calls, quiet.calls) == (["prepare_target"], ["prepare_target"])


def test_a_notification_wrapper_still_runs_through_pluggy() -> None:
    class Wrapper:
        def __init__(self) -> None:
            self.seen: list[str] = []

        @hookimpl(wrapper=True)
        def b2bua_prepare_target(self, call: CallInfo, target: Target, request: object) -> object:
            self.seen.append("before")
            result = yield
            self.seen.append("after")
            return result

    pm = make_manager([])
    hooks = Hooks(pm)
    wrapper, seen = Wrapper(), _Seen()
    pm.register(seen, name="plain")
    pm.register(wrapper, name="wrapper")
    hooks.prepare_target(call(), Target("sip:x"), None)  # type: ignore[arg-type]
    assert (wrapper.seen, seen.calls) == (["before", "after"], ["prepare_target"])


def test_module_path_plugin_overrides_default(plugin_dir: Path) -> None:
    write(plugin_dir, "tmp_plugin_ok", """
        from b2bua import hookimpl, RoutePlan, Target
        class Router:
            @hookimpl
            def b2bua_route_call(self, call):
                return RoutePlan((Target("sip:mine"),))
    """)
    hooks = Hooks(make_manager(["tmp_plugin_ok:Router"]))
    hooks.configure(parse_config({"routing": {"default_target": "sip:default"}}), app=None)  # type: ignore[arg-type]
    assert hooks.route_call(call()).targets[0].uri == "sip:mine"  # type: ignore[union-attr]
    assert hooks.plugin_names() == ["tmp_plugin_ok:Router"]


@pytest.mark.parametrize(
    "enabled",
    [
        ["tmp_plugin_mine:Mine", "dispatcher", "failover"],  # docs/hooks.md's order
        ["dispatcher", "failover", "tmp_plugin_mine:Mine"],
        ["failover", "tmp_plugin_mine:Mine", "dispatcher"],
    ],
)
def test_users_decision_hooks_run_before_the_built_ins(plugin_dir: Path, enabled: list[str]) -> None:
    """Whatever the order in ``enabled``: the user's plugin, then the built-in, then the host's default."""
    write(plugin_dir, "tmp_plugin_mine", """
        from b2bua import hookimpl
        class Mine:
            @hookimpl
            def b2bua_route_call(self, call):
                return None
            @hookimpl
            def b2bua_next_target(self, call, plan, failure):
                return None
    """)
    pm = make_manager(enabled)
    for hook, built_in in (("b2bua_route_call", "dispatcher"), ("b2bua_next_target", "failover")):
        impls = getattr(pm.hook, hook).get_hookimpls()
        called = [impl.plugin_name for impl in reversed(impls) if not impl.wrapper]
        assert called == ["tmp_plugin_mine:Mine", built_in, "b2bua.defaults"], hook


def test_misspelt_hook_fails_clearly(plugin_dir: Path) -> None:
    write(plugin_dir, "tmp_plugin_typo", """
        from b2bua import hookimpl
        class Router:
            @hookimpl
            def b2bua_route_cal(self, call):
                return None
    """)
    with pytest.raises(PluginError, match=r"tmp_plugin_typo:Router.*b2bua_route_cal"):
        make_manager(["tmp_plugin_typo:Router"])


def test_plugin_that_fails_to_import(plugin_dir: Path) -> None:
    write(plugin_dir, "tmp_plugin_broken", "import does_not_exist_anywhere\n")
    with pytest.raises(PluginError, match=r"'tmp_plugin_broken' failed to load: ModuleNotFoundError"):
        make_manager(["tmp_plugin_broken"])


def test_unknown_entry_point_lists_installed() -> None:
    with pytest.raises(PluginError, match=r"no such entry point \(installed: .*dispatcher.*no module .dispatchr."):
        make_manager(["dispatchr"])


def test_every_hook_is_documented() -> None:
    """docs/hooks.md has a section headed by each hook's exact signature (datasette's test)."""
    import inspect

    from b2bua import hookspecs
    from plugins.dispatcher import hookspecs as dispatcher_hookspecs

    doc = (ROOT / "docs" / "hooks.md").read_text()
    headings = set(re.findall(r"^### `([a-z0-9_]+\([^)]*\))`", doc, re.MULTILINE))
    missing = []
    for module in (hookspecs, dispatcher_hookspecs):
        for name, func in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith(("b2bua_", "dispatcher_")):
                continue
            assert func.__doc__, f"{name} has no docstring"
            signature = f"{name}({', '.join(inspect.signature(func).parameters)})"
            if signature not in headings:
                missing.append(signature)
    assert not missing, f"undocumented hooks in docs/hooks.md: {missing}"


def test_hooks_md_shows_the_real_example() -> None:
    """The code block of "A plugin in thirty lines" is docs/examples/prefix_router.py (docstring aside)."""
    doc = (ROOT / "docs" / "hooks.md").read_text()
    section = doc.split("## A plugin in thirty lines", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = (ROOT / "docs" / "examples" / "prefix_router.py").read_text()
    body = code.split('"""', 2)[2].lstrip("\n").replace("from __future__ import annotations\n\n", "")
    assert snippet == body
    for cited in re.findall(r"`((?:tests|docs)/[\w/.]+\.py)`", doc):
        assert (ROOT / cited).is_file(), f"docs/hooks.md cites {cited}, which does not exist"


def test_hooks_md_task_example_runs(plugin_dir: Path) -> None:
    """The *Host services* example of docs/hooks.md is a whole module that loads as a plugin,
    and its reload builds the table with the task from the file it names."""
    from concurrent.futures import Future

    from b2bua.loop import run_here, run_task_now

    doc = (ROOT / "docs" / "hooks.md").read_text()
    section = doc.split("## Host services", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    (plugin_dir / "tmp_plugin_prefix_table.py").write_text(snippet)
    pm = make_manager(["tmp_plugin_prefix_table:PrefixTable"], with_defaults=False)
    (plugin,) = [p for p in pm.get_plugins() if type(p).__name__ == "PrefixTable"]
    plugin.path = plugin_dir / "prefixes.txt"
    plugin.path.write_text("49 sip:10.0.0.1:5060\n33 sip:10.0.0.2:5060\n")

    class App:  # the two host services the example uses, run here and now
        def run_blocking(self, fn):  # type: ignore[no-untyped-def]
            return run_here(fn)

        def run_task(self, steps, on_done):  # type: ignore[no-untyped-def]
            done: Future[object] = Future()
            done.set_result(run_task_now(steps))
            on_done(done)
            return done

    pm.hook.b2bua_reload(app=App())
    assert plugin.table == {"49": "sip:10.0.0.1:5060", "33": "sip:10.0.0.2:5060"}


def test_installed_top_level_packages() -> None:
    """The distribution installs exactly two top-level packages (docs/internals.md, "The
    top-level package named plugins"): nothing else generic may leak into site-packages."""
    import importlib.metadata

    top_level = importlib.metadata.distribution("b2bua").read_text("top_level.txt") or ""
    assert sorted(top_level.split()) == ["b2bua", "plugins"]
