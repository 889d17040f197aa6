"""systemd's notification protocol (``sd_notify(3)``), without a dependency: a datagram to
``$NOTIFY_SOCKET``.

Under a unit with ``Type=notify`` (``docs/deploy.md``) the B2BUA says ``READY=1`` once it
listens (systemd holds ``systemctl start`` and the units ordered after it until then),
``STOPPING=1`` when shutdown begins, ``STATUS=...`` lines ``systemctl status`` shows (drained,
calls left), and, with ``WatchdogSec=`` set, ``WATCHDOG=1`` from a loop timer: a loop thread
that stops turning stops the pings, and systemd restarts the service.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op. A send never blocks and never
raises: the socket is non-blocking and a failure is logged once at DEBUG.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger

#: most bytes of a STATUS= text sent
MAX_STATUS = 200


class SdNotifier:
    """Sends notifications to ``address`` (``$NOTIFY_SOCKET``: a path, or ``@name`` for an
    abstract socket); ``address`` empty: a no-op notifier."""

    def __init__(self, address: str = "", watchdog_usec: int = 0) -> None:
        self.address = address
        #: the watchdog timeout systemd set (``$WATCHDOG_USEC``), 0: none
        self.watchdog_usec = watchdog_usec
        self._sock: socket.socket | None = None
        self._failed = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SdNotifier:
        """The notifier systemd's environment asks for (``NOTIFY_SOCKET``, ``WATCHDOG_USEC``,
        ``WATCHDOG_PID``: the watchdog is ours only when the pid is ours or not given)."""
        env = os.environ if environ is None else environ
        watchdog = 0
        pid = env.get("WATCHDOG_PID", "")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            watchdog = int(env["WATCHDOG_USEC"])
        return cls(env.get("NOTIFY_SOCKET", ""), watchdog)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float:
        """Seconds between watchdog pings (half the timeout, as sd_watchdog_enabled(3) advises); 0: none."""
        return self.watchdog_usec / 2e6 if self.enabled else 0.0

    def notify(self, *lines: str) -> bool:
        """Send ``lines`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; True when sent."""
        if not self.address:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = self._connect()
            self._sock.send(message)
            return True
        except OSError as exc:
            self._close()
            if not self._failed:
                self._failed = True
                logger.debug("sd_notify to {}: {}", self.address, exc.strerror or exc)
            return False

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", f"MAINPID={os.getpid()}", _status(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", _status(status))

    def status(self, status: str) -> bool:
        return self.notify(_status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        self._close()

    def _connect(self) -> socket.socket:
        path = self.address
        if path.startswith("@"):  # an abstract socket: a leading NUL instead of the @
            path = "\0" + path[1:]
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    one_line = " ".join(text.split())
    return f"STATUS={one_line[:MAX_STATUS]}"
