"""DispatcherPlugin through a real pluggy PluginManager, with an injected snapshot."""

from __future__ import annotations

import argparse
import queue
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pluggy
import pytest

from b2bua import hookimpl, hookspecs
from b2bua.api import CallInfo, DialMode, EndCause, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.config import ConfigError, parse_config
from b2bua.loop import Task
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.dnsrefresh import refresh_addresses
from plugins.dispatcher.model import Attrs, DestFlags, Destination, DestinationSet, Snapshot, build_snapshot
from plugins.dispatcher.plans import ROUTE, CallRoute
from plugins.dispatcher.plugin import DispatcherPlugin

from .loophost import on_a_thread

I, P = int(DestFlags.INACTIVE), int(DestFlags.PROBING)  # noqa: E741

SNAPSHOT = build_snapshot(
    [
        Destination(
            1, "sip:10.0.0.1:5060", attrs=Attrs(body="duid=gw1;prefix=49", duid="gw1", extra={"prefix": "49"}), row_id=1
        ),
        Destination(1, "sip:10.0.0.2:5060", attrs=Attrs(duid="gw2"), row_id=2),
        Destination(2, "sip:10.0.1.1", attrs=Attrs(duid="a", maxload=1)),
        Destination(2, "sip:10.0.1.2", attrs=Attrs(duid="b", maxload=1)),
        Destination(3, "sip:10.0.2.1", flags=I | P),
    ],
    "test",
)


class FakeApp:
    """The Host services the plugin uses; thread hand-offs go through a queue."""

    def __init__(self, pm: pluggy.PluginManager, config: Any) -> None:
        self.hook = pm.hook
        self.config = config
        self.handoff: queue.Queue[Callable[[], None]] = queue.Queue()
        self.probes: list[Any] = []

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.handoff.put(callback)

    def run_blocking(self, fn: Callable[[], Any], on_done: Callable[[Future[Any]], None] | None = None) -> Future[Any]:
        """``on_done`` goes through the hand-off queue, as the host's loop runs it."""
        return on_a_thread(fn, on_done, self.handoff.put)

    def run_task(self, steps: Task[Any], on_done: Callable[[Future[Any]], None] | None = None) -> Future[Any]:
        """Runs at once up to the first wait; each wait's continuation goes through the hand-off
        queue (so one ``wait_handoff`` finishes a reload whose load is done)."""
        future: Future[Any] = Future()

        def resume(sent: Future[Any] | None) -> None:
            while True:
                try:
                    item = steps.send(sent)
                except StopIteration as stop:
                    future.set_result(stop.value)
                    break
                except Exception as exc:
                    future.set_exception(exc)
                    break
                sent = None
                if isinstance(item, Future):
                    item.add_done_callback(lambda done: self.handoff.put(lambda: resume(done)))
                    return
            if on_done is not None:
                on_done(future)

        resume(None)
        return future

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        # timers never fire here: probing is tested in test_probing
        return _NoTimer()

    def send_request(self, *args: Any, **kwargs: Any) -> None:
        self.probes.append(args)


class _NoTimer:
    def cancel(self) -> None:
        pass


class Events:
    def __init__(self) -> None:
        self.changes: list[tuple[str, int | None, int, str]] = []

    @hookimpl
    def dispatcher_dst_state_changed(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        self.changes.append((dest.uri, old, new, reason))


class Harness:
    def __init__(self, section: dict[str, Any], snapshot: Snapshot = SNAPSHOT) -> None:
        self.snapshot = snapshot
        self.loads = 0
        self.pm = pluggy.PluginManager("b2bua")
        self.pm.add_hookspecs(hookspecs)
        self.plugin = DispatcherPlugin(loader=self._load, rng=random.Random(1))
        self.events = Events()
        self.pm.register(self.plugin, name="dispatcher")
        self.pm.register(self.events, name="events")
        self.pm.hook.b2bua_addhooks.call_historic(kwargs={"pluginmanager": self.pm})
        self.pm.check_pending()
        config = parse_config({"plugins": {"enabled": ["dispatcher"], "dispatcher": section}}, "config.toml")
        self.app = FakeApp(self.pm, config)
        self.pm.hook.b2bua_configure.call_historic(kwargs={"config": config, "app": self.app})
        self.pm.hook.b2bua_startup(app=self.app)
        self.n = 0

    def _load(self, cfg: DispatcherConfig, list_file: Path | None) -> Snapshot:
        self.loads += 1
        if isinstance(self.snapshot, Exception):
            raise self.snapshot
        return self.snapshot

    def call(self, ruri: str = "sip:4930123@b2bua", **kw: Any) -> CallInfo:
        self.n += 1
        return CallInfo(self.n, f"call-{self.n}@x", ruri, "sip:alice@a", ruri, source_ip="10.9.9.9", **kw)

    def route(self, call: CallInfo) -> RoutePlan | Reject:
        result = self.pm.hook.b2bua_route_call(call=call)
        assert isinstance(result, (RoutePlan, Reject))
        return result

    def load_of(self, setid: int, uri: str) -> int:
        rt = self.plugin.state.runtime((setid, uri))
        assert rt is not None
        return rt.load


ROUTES = {
    "hash_size": 4,
    "routes": [
        {"ruri_user_prefix": "49", "set": 1, "algorithm": "round-robin"},
        {"ruri_user_prefix": "43", "set": 2, "algorithm": "call-load"},
        {"ruri_user_prefix": "44", "set": 1, "algorithm": "parallel"},
        {"ruri_user_prefix": "33", "set": 3, "algorithm": 4},
        {"ruri_user_prefix": "1", "set": 99, "algorithm": 4},
    ],
}


@pytest.fixture
def h() -> Iterator[Harness]:
    yield Harness(ROUTES)


def uris(plan: RoutePlan | Reject) -> list[str]:
    assert isinstance(plan, RoutePlan), plan
    return [t.uri for t in plan.targets]


def test_startup_reports_every_destination(h: Harness) -> None:
    assert h.loads == 1
    assert len(h.events.changes) == 5
    assert ("sip:10.0.2.1", None, I | P, "startup") in h.events.changes


def test_route_call_round_robin_with_failover_targets(h: Harness) -> None:
    first = h.route(h.call())
    assert uris(first) == ["sip:10.0.0.2:5060", "sip:10.0.0.1:5060"]
    assert uris(h.route(h.call())) == ["sip:10.0.0.1:5060", "sip:10.0.0.2:5060"]
    assert isinstance(first, RoutePlan) and first.mode is DialMode.SERIAL
    assert first.data["dispatcher"] == {"setid": 1, "alg": 4, "rule": 0}


def test_target_data_identifies_the_destination(h: Harness) -> None:
    plan = h.route(h.call())
    assert isinstance(plan, RoutePlan)
    gw1 = next(t for t in plan.targets if t.uri == "sip:10.0.0.1:5060")
    assert gw1.data["dispatcher"] == {
        "setid": 1,
        "uri": "sip:10.0.0.1:5060",
        "key": (1, "sip:10.0.0.1:5060"),
        "duid": "gw1",
        "attrs": {"prefix": "49"},
        "row_id": 1,
    }


def test_stash_records_the_route(h: Harness) -> None:
    call = h.call()
    h.route(call)
    assert call.stash[ROUTE] == CallRoute(0, 1, 4, ((1, "sip:10.0.0.2:5060"), (1, "sip:10.0.0.1:5060")))


def test_parallel_algorithm_gives_a_parallel_plan(h: Harness) -> None:
    plan = h.route(h.call("sip:4420@b2bua"))
    assert isinstance(plan, RoutePlan) and plan.mode is DialMode.PARALLEL and len(plan.targets) == 2


@pytest.mark.parametrize(
    "ruri",
    [
        "sip:3301@b2bua",  # set 3: its only destination is inactive
        "sip:1555@b2bua",  # set 99 is not loaded
        "sip:999@b2bua",  # no rule matches
    ],
)
def test_no_destination_rejects_with_retry_after(h: Harness, ruri: str) -> None:
    assert h.route(h.call(ruri)) == Reject(503, "No Destination Available", (("Retry-After", "5"),))


def test_reject_settings() -> None:
    h = Harness({"no_destination_code": 480, "no_destination_reason": "Nope", "retry_after": 0, "routes": [{"set": 3}]})
    assert h.route(h.call()) == Reject(480, "Nope", ())


def test_no_routes_means_set_1_round_robin() -> None:
    h = Harness({})
    assert uris(h.route(h.call("sip:777@x")))[0] == "sip:10.0.0.2:5060"
    assert uris(h.route(h.call("sip:777@x")))[0] == "sip:10.0.0.1:5060"
    call = h.call()
    h.route(call)
    assert call.stash[ROUTE].rule == -1


def test_dispatcher_mark_takes_a_destination_out(h: Harness) -> None:
    plan = h.route(h.call())
    assert isinstance(plan, RoutePlan)
    h.pm.hook.dispatcher_mark(target=plan.targets[0], state="ip", reason="503 from gateway")
    assert h.events.changes[-1] == ("sip:10.0.0.2:5060", 0, I | P, "503 from gateway")
    for _ in range(3):
        assert uris(h.route(h.call())) == ["sip:10.0.0.1:5060"]
    h.pm.hook.dispatcher_mark(target=plan.targets[0], state="a", reason="operator")
    assert len(uris(h.route(h.call()))) == 2


def test_dispatcher_mark_default_state_and_foreign_targets(h: Harness) -> None:
    plan = h.route(h.call())
    assert isinstance(plan, RoutePlan)
    h.pm.hook.dispatcher_mark(target=plan.targets[0], state="", reason="failed")
    assert h.plugin.state.flags((1, "sip:10.0.0.2:5060")) == I | P  # probing_mode 1: "ip"
    before = list(h.events.changes)
    h.pm.hook.dispatcher_mark(target=Target("sip:other"), state="i", reason="x")
    h.pm.hook.dispatcher_mark(target=plan.targets[1], state="zz", reason="bad letters")
    assert h.events.changes == before
    assert h.plugin.state.flags((1, "sip:10.0.0.1:5060")) == 0


def test_call_load_follows_the_legs(h: Harness) -> None:
    c1 = h.call("sip:4301@b2bua")
    plan = h.route(c1)
    assert uris(plan) == ["sip:10.0.1.2", "sip:10.0.1.1"]
    assert isinstance(plan, RoutePlan)
    first, second = plan.targets
    h.pm.hook.b2bua_leg_started(call=c1, target=first)
    assert h.load_of(2, "sip:10.0.1.2") == 1
    # the next call avoids the loaded one (maxload 1)
    assert uris(h.route(h.call("sip:4302@b2bua"))) == ["sip:10.0.1.1"]
    # c1's first leg fails: its slot is freed, the failover leg takes one
    h.pm.hook.b2bua_leg_failed(call=c1, failure=Failure(first, 503, "Service Unavailable"))
    h.pm.hook.b2bua_leg_failed(call=c1, failure=Failure(first, 503, "again"))  # no double release
    h.pm.hook.b2bua_leg_started(call=c1, target=second)
    assert (h.load_of(2, "sip:10.0.1.2"), h.load_of(2, "sip:10.0.1.1")) == (0, 1)
    assert uris(h.route(h.call("sip:4303@b2bua"))) == ["sip:10.0.1.2"]
    h.pm.hook.b2bua_call_ended(call=c1, cause=EndCause.CALLER_HANGUP, answered=second)
    h.pm.hook.b2bua_call_ended(call=c1, cause=EndCause.CALLER_HANGUP, answered=second)
    assert (h.load_of(2, "sip:10.0.1.2"), h.load_of(2, "sip:10.0.1.1")) == (0, 0)


def test_parallel_forks_release_cancelled_legs(h: Harness) -> None:
    c = h.call("sip:4400@b2bua")
    plan = h.route(c)
    assert isinstance(plan, RoutePlan)
    for t in plan.targets:
        h.pm.hook.b2bua_leg_started(call=c, target=t)
    winner, loser = plan.targets
    h.pm.hook.b2bua_leg_failed(call=c, failure=Failure(loser, 487, "Request Terminated", FailureKind.CANCELLED))
    assert (h.load_of(1, winner.uri), h.load_of(1, loser.uri)) == (1, 0)
    h.pm.hook.b2bua_call_ended(call=c, cause=EndCause.CALLEE_HANGUP, answered=winner)
    assert h.plugin.state.active_calls() == 0


def test_foreign_targets_are_ignored_by_load_accounting(h: Harness) -> None:
    c = h.call()
    h.pm.hook.b2bua_leg_started(call=c, target=Target("sip:elsewhere"))
    h.pm.hook.b2bua_leg_failed(call=c, failure=Failure(Target("sip:elsewhere"), 500, "x"))
    assert h.plugin.state.active_calls() == 0


def wait_handoff(app: FakeApp, timeout: float = 5.0) -> None:
    app.handoff.get(timeout=timeout)()


def test_reload_swaps_on_the_loop_and_keeps_state(h: Harness) -> None:
    h.plugin.state.set_state(1, "sip:10.0.0.1:5060", "i")
    h.snapshot = build_snapshot([*SNAPSHOT.destinations(), Destination(1, "sip:10.0.0.3")], "test v2")
    h.pm.hook.b2bua_reload(app=h.app)
    h.pm.hook.b2bua_reload(app=h.app)  # a second request while one runs is ignored
    wait_handoff(h.app)
    assert h.loads == 2
    assert h.plugin.state.find(1, "sip:10.0.0.3") is not None
    assert h.plugin.state.flags((1, "sip:10.0.0.1:5060")) == I  # keep_state_on_reload
    assert ("sip:10.0.0.3", None, 0, "reload") in h.events.changes


def test_failed_reload_keeps_the_destinations(h: Harness) -> None:
    h.snapshot = RuntimeError("database unreachable")  # type: ignore[assignment]
    h.pm.hook.b2bua_reload(app=h.app)
    wait_handoff(h.app)
    assert len(uris(h.route(h.call()))) == 2
    h.snapshot = SNAPSHOT
    h.pm.hook.b2bua_reload(app=h.app)  # not stuck in "reloading"
    wait_handoff(h.app)
    assert h.loads == 3


def test_bad_config_stops_configure() -> None:
    with pytest.raises(ConfigError, match=r"\[\[plugins.dispatcher.routes\]\]\[0\] algorithm"):
        Harness({"routes": [{"algorithm": "nope"}]})


def test_cli_commands_hook_adds_dispatcher_simulate(h: Harness) -> None:
    parser = argparse.ArgumentParser(prog="b2bua")
    h.pm.hook.b2bua_cli_commands(subparsers=parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dispatcher", "simulate", "--set", "1", "--alg", "4"])
    assert args.func.__name__ == "cmd_simulate" and args.setid == 1


def test_route_call_is_fast(h: Harness) -> None:
    calls = [h.call() for _ in range(2000)]
    start = time.perf_counter()
    for c in calls:
        h.route(c)
    assert time.perf_counter() - start < 1.0  # well under 0.5 ms per call on the loop thread


def test_dns_refresh_keeps_order_and_reports_changes() -> None:
    a = Destination(1, "sip:localhost:5070", priority=5)
    b = Destination(1, "sip:127.0.0.9:5060", priority=5, address=("127.0.0.9", 5060, "udp"))
    snap = Snapshot({1: DestinationSet(1, (a, b))}, "test")
    fresh = refresh_addresses(snap)
    assert fresh is not None
    assert [d.uri for d in fresh.sets[1].destinations] == [a.uri, b.uri]  # not re-sorted
    assert fresh.sets[1].destinations[0].address == ("127.0.0.1", 5070, "udp")
    assert refresh_addresses(fresh) is None  # nothing changed


def test_a_state_file_in_a_missing_folder_stops_configure(tmp_path: Path) -> None:
    # it used to start: each 'set_state d' then answered "Ok. Dispatcher state updated." and the
    # disable was lost at the next restart, with one ERROR line ("cannot write the admin state file")
    missing = tmp_path / "typo"
    with pytest.raises(ConfigError, match=rf"\[plugins.dispatcher\] state_file: folder {missing} does not exist"):
        Harness({"state_file": str(missing / "state.json")})
    Harness({"state_file": str(tmp_path / "state.json")})  # an existing folder is fine
