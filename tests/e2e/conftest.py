"""Fixtures for the end-to-end tests; the helpers themselves are in ``harness.py``.

Every test here is marked ``sipp``. Each test's processes write into its ``workdir`` (pytest's
``tmp_path``); pytest keeps the last runs' directories, and ``--basetemp=test-artifacts`` keeps them
where CI can collect them. A failing test's report names its workdir.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import pytest

from .harness import (
    AddressAllocator,
    B2buaProcess,
    Caller,
    Gateway,
    HarnessError,
    Transport,
    sipp_binary,
)
from .media.peers import MediaPeer

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e with ``sipp``."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.sipp)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Name the workdir (scenarios, sipp and B2BUA logs) in a failing e2e test's report."""
    report: pytest.TestReport = yield
    workdir = getattr(item, "funcargs", {}).get("workdir")
    if report.failed and isinstance(workdir, Path):
        files = "\n".join(sorted(p.name for p in workdir.iterdir())) if workdir.is_dir() else "(gone)"
        report.sections.append(("e2e workdir", f"{workdir}\n{files}"))
    return report


@pytest.fixture(scope="session")
def sipp() -> str:
    """The sipp executable; a missing sipp fails the session's e2e tests (never a skip)."""
    try:
        return sipp_binary()
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(autouse=True)
def _require_sipp(sipp: str) -> None:
    """Every e2e test needs sipp."""


@pytest.fixture(scope="session")
def addresses() -> AddressAllocator:
    """127.0.0.x addresses, one per SIP peer, distinct across the session."""
    return AddressAllocator()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The test's directory for configs, scenarios and every process's logs."""
    return tmp_path


class GatewayFactory(Protocol):
    """``gateway_factory("reject:503")`` starts a gateway on a fresh address and a free port."""

    def __call__(self, behaviour: str = "answer", *, ip: str | None = None, port: int | None = None,
                 transport: Transport = "udp", name: str | None = None) -> Gateway: ...


@pytest.fixture
def gateway_factory(workdir: Path, addresses: AddressAllocator) -> Iterator[GatewayFactory]:
    """Starts sipp gateways; every one is stopped when the test ends (paused ones are resumed first)."""
    started: list[Gateway] = []

    def start(behaviour: str = "answer", *, ip: str | None = None, port: int | None = None,
              transport: Transport = "udp", name: str | None = None) -> Gateway:
        gw = Gateway.start(behaviour, ip or addresses.next(), port, workdir, transport=transport, name=name)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop(grace=0.2)  # the test is over: no need to let open calls finish


class ScenarioGatewayFactory(Protocol):
    """``scenario_gateway("uas_auth.xml", {"REALM": "x"}, label="auth")``: a gateway running a
    scenario of ``scenarios/`` (its ``{{NAME}}`` placeholders filled from the values)."""

    def __call__(self, template: str, values: Mapping[str, str], *, label: str, ip: str | None = None,
                 port: int | None = None, transport: Transport = "udp") -> Gateway: ...


@pytest.fixture
def scenario_gateway(workdir: Path, addresses: AddressAllocator) -> Iterator[ScenarioGatewayFactory]:
    """Starts gateways running scenarios of the test's own; every one is stopped when the test ends."""
    started: list[Gateway] = []

    def start(template: str, values: Mapping[str, str], *, label: str, ip: str | None = None,
              port: int | None = None, transport: Transport = "udp") -> Gateway:
        gw = Gateway.start_scenario(template, values, ip or addresses.next(), workdir, behaviour=label, port=port,
                                    transport=transport)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop(grace=0.2)


@pytest.fixture
def caller(workdir: Path, addresses: AddressAllocator) -> Caller:
    """A calling party on its own address: ``caller.run_calls(gw.ip, gw.port, n=3)``."""
    return Caller(addresses.next(), workdir)


class B2buaFactory(Protocol):
    """``b2bua_factory(config_text)`` starts the B2BUA and waits for ``b2bua ready``."""

    def __call__(self, config_text: str, *, expected_exit: int | None = 0, subdir: str | None = None,
                 **kwargs: Any) -> B2buaProcess: ...


@pytest.fixture
def b2bua_factory(workdir: Path) -> Iterator[B2buaFactory]:
    """Starts the B2BUA under test; at teardown stops it and checks its exit code.

    ``expected_exit=None`` accepts any exit code (a test that kills or crashes it on purpose).
    ``subdir`` runs it in ``workdir/<subdir>`` (two B2BUAs in one test need two config.toml).
    Extra keyword arguments go to `B2buaProcess.start` (``ready_timeout``, ``module``, ``env``, ``args``).
    """
    started: list[tuple[B2buaProcess, int | None]] = []

    def start(config_text: str, *, expected_exit: int | None = 0, subdir: str | None = None,
              **kwargs: Any) -> B2buaProcess:
        where = workdir / subdir if subdir else workdir
        where.mkdir(exist_ok=True)
        b2b = B2buaProcess.start(where, config_text, **kwargs)
        started.append((b2b, expected_exit))
        return b2b

    yield start
    problems = []
    for b2b, expected in started:
        rc = b2b.stop()
        if expected is not None and rc != expected:
            problems.append(f"b2bua (pid {b2b.pid}) exited {rc}, expected {expected}\n{b2b.log_tail()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class MediaPeerFactory(Protocol):
    """``media_peer_factory("reject:503", tone=880, name="gw2")``: see `MediaPeer.start` for the options;
    ``ip`` (and ``port``) put it where another peer was."""

    def __call__(self, answer: str = "answer", *, name: str | None = None, ip: str | None = None,
                 **kwargs: Any) -> MediaPeer: ...


@pytest.fixture
def media_peer_factory(workdir: Path, addresses: AddressAllocator) -> Iterator[MediaPeerFactory]:
    """Starts media peers (``media/peer.py``: pjsua2 phones with real RTP, gateway or caller) on fresh
    127.0.0.x addresses; each is stopped when the test ends and must have run without errors."""
    started: list[MediaPeer] = []

    def start(answer: str = "answer", *, name: str | None = None, ip: str | None = None,
              **kwargs: Any) -> MediaPeer:
        peer = MediaPeer.start(workdir, ip or addresses.next(), name=name or f"peer{len(started) + 1}",
                               answer=answer, **kwargs)
        started.append(peer)
        return peer

    yield start
    problems = []
    for peer in started:
        rc = peer.stop()
        if rc != 0 or peer.errors():
            problems.append(f"peer {peer.name} exited {rc}\n{peer.log_tail()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
