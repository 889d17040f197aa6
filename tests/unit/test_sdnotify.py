"""sd_notify over a real datagram socket, as systemd listens for it."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from b2bua.sdnotify import SdNotifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def test_messages_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SdNotifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.ready("listening on udp:127.0.0.1:5060")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", f"MAINPID={os.getpid()}",
                                                   "STATUS=listening on udp:127.0.0.1:5060"]
    assert notifier.status("draining:\n 3 calls")
    assert sock.recv(4096) == b"STATUS=draining: 3 calls"
    assert notifier.stopping() and sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"
    notifier.close()


def test_abstract_socket_address() -> None:
    name = f"b2bua-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = SdNotifier(f"@{name}")
        assert notifier.watchdog()
        assert sock.recv(100) == b"WATCHDOG=1"
        notifier.close()


def test_outside_systemd_nothing_is_sent_and_a_dead_socket_does_not_raise(tmp_path: Path) -> None:
    assert not SdNotifier.from_env({}).ready("x")
    gone = SdNotifier(str(tmp_path / "missing"))
    assert not gone.ready("x") and not gone.watchdog()


@pytest.mark.parametrize(("env", "interval"), [
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000"}, 1.5),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5),
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, 0.0),  # another process's
    ({"WATCHDOG_USEC": "3000000"}, 0.0),  # nowhere to send the pings
    ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "x"}, 0.0),
])
def test_watchdog_interval_is_half_the_timeout_and_only_ours(env: dict[str, str], interval: float) -> None:
    assert SdNotifier.from_env(env).watchdog_interval == interval
