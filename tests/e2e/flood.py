"""Send SIP requests over UDP at a rate from one address, and count what comes back.

A hostile peer for tests and ``bench/flood.py``: it never ACKs, never retransmits, and reads
responses only to count them by status code. Every run is bounded by a message count and a
time limit. ``Flood.run()`` blocks; ``Flood.start()`` runs it on a thread (``join()`` waits).
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

#: status line of a response: b"SIP/2.0 403 Forbidden"
_STATUS_AT = len(b"SIP/2.0 ")


class Flood:
    """Sends ``messages`` to ``target`` from ``src_ip`` at ``rate`` per second, at most ``seconds``.

    ``messages`` may be a callable ``(n, port) -> bytes`` (the n-th message, knowing the local
    port for Via/Contact) or an iterable of bytes. ``responses`` counts the status codes received
    (until ``linger`` seconds after the last message); ``sent`` the messages sent.
    """

    def __init__(self, target: tuple[str, int], src_ip: str, messages: Callable[[int, int], bytes] | Iterable[bytes],
                 *, count: int, rate: float, seconds: float, linger: float = 1.0) -> None:
        self.target = target
        self.count = count
        self.rate = rate
        self.seconds = seconds
        self.linger = linger
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((src_ip, 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self._messages = messages
        self.sent = 0
        self.responses: Counter[int] = Counter()
        self.elapsed = 0.0
        self._thread: threading.Thread | None = None

    def _iter(self) -> Iterator[bytes]:
        if callable(self._messages):
            for n in range(self.count):
                yield self._messages(n, self.port)
        else:
            for n, msg in enumerate(self._messages):
                if n >= self.count:
                    break
                yield msg

    def run(self) -> Flood:
        started = time.monotonic()
        deadline = started + self.seconds
        interval = 1.0 / self.rate
        try:
            for msg in self._iter():
                now = time.monotonic()
                if now >= deadline:
                    break
                due = started + self.sent * interval
                if due > now:
                    self._drain()
                    time.sleep(min(due - now, 0.01))
                try:
                    self.sock.sendto(msg, self.target)
                except OSError:
                    pass  # a message too big for UDP, or the kernel's buffer full: lost, as on a network
                self.sent += 1
                if self.sent % 64 == 0:
                    self._drain()
            self.elapsed = time.monotonic() - started
            end = time.monotonic() + self.linger
            while time.monotonic() < end:
                self._drain()
                time.sleep(0.01)
        finally:
            self.sock.close()
        return self

    def _drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, OSError):
                return
            code = data[_STATUS_AT:_STATUS_AT + 3]
            if data.startswith(b"SIP/2.0 ") and code.isdigit():
                self.responses[int(code)] += 1

    def start(self) -> Flood:
        self._thread = threading.Thread(target=self.run, name=f"flood-{self.port}", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> Flood:
        assert self._thread is not None
        self._thread.join(timeout if timeout is not None else self.seconds + self.linger + 10)
        if self._thread.is_alive():
            raise TimeoutError(f"the flood from port {self.port} did not end")
        return self

    @property
    def answered(self) -> int:
        """Responses received, provisional ones included."""
        return sum(self.responses.values())
