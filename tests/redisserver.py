"""A private ``redis-server`` on loopback for the cluster tests (unit and end-to-end).

Each server has its own directory (config-less: every setting on the command line), a port
found free on 127.0.0.1 (retried when another process takes it first), no persistence (a
restart loses everything, the hardest case for the nodes) and its log in that directory.
``stop()``/``start()`` on the same port is how a test takes Redis away and brings it back.
A missing ``redis-server`` is an error naming the package (``scripts/setup.sh --test``
installs it), never a skip.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

#: seconds a start or a stop may take
WAIT = 10.0


class RedisServerError(RuntimeError):
    """redis-server is missing or did not start/stop."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RedisServerError("redis-server is not installed (Debian package redis-server; scripts/setup.sh --test "
                               "installs it)")
    return found


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process; ``url`` is ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.host = host
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def start(self) -> RedisServer:
        """Start (again on the same port after :meth:`stop`); waits until it answers PING."""
        binary = redis_server_binary()
        for _ in range(5):
            port = self.port or _free_port(self.host)
            self.proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", self.host, "--dir", str(self.directory), "--save", "",
                 "--appendonly", "no", "--daemonize", "no", "--logfile", str(self.log), "--protected-mode", "no"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and self.proc.poll() is None and not _answers(self.host, port):
                time.sleep(0.05)
            if self.proc.poll() is None and _answers(self.host, port):
                self.port = port
                return self
            self._reap()
            if self.port:  # the same port is wanted: someone else has it now
                break
        raise RedisServerError(f"redis-server did not start on {self.host}:{self.port or '?'}; see {self.log}")

    def stop(self) -> None:
        """SIGTERM and wait (the port stays this server's for :meth:`start`)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self.proc = None

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(WAIT)
        self.proc = None
