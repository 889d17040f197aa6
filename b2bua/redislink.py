"""The one way to Redis: a command thread, a subscriber thread, results handed to the loop.

Nothing here runs on the loop thread but :meth:`RedisLink.submit` (a queue put) and the
callbacks it hands back through ``post`` (the scheduler's ``call_soon_threadsafe``):

* the **command thread** runs submitted jobs, ``fn(client)``, one after the other, in the order
  they were submitted, and hands each outcome to ``on_done(result, error)`` on the loop;
* the **subscriber thread** holds the subscription to one channel and hands received payloads
  (bytes, never decoded here) to ``on_messages(list)`` on the loop, many per loop pass.

Redis unreachable (a refused connection, a timeout, a subscription that broke) makes the link
*down*: one WARNING for the whole outage, jobs fail at once with :class:`LinkDown` instead of
waiting on the network, and both threads retry every ``retry`` seconds. When both connections
work again the link is *up*: ``on_up`` runs on the loop (after the subscription is back, so a
catch-up read it starts misses no message) and the outage's length is logged.

``redis`` (the ``cluster`` extra) is imported only when a link is made.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from loguru import logger

from b2bua.extras import install_command

#: seconds between reconnection attempts while Redis is unreachable
RETRY = 1.0
#: seconds the subscriber waits for a message before it checks whether to stop
SUBSCRIBER_POLL = 0.5
#: payloads handed to the loop in one callback at most (the rest in the next one)
BATCH = 2000

Job = Callable[[Any], Any]
Done = Callable[[Any, "BaseException | None"], None]
Post = Callable[[Callable[[], None]], None]


class LinkDown(ConnectionError):
    """Redis is unreachable: the job was not sent."""


class RedisMissing(RuntimeError):
    """The ``redis`` package is not installed."""


def redis_module() -> Any:
    """The ``redis`` package, or :class:`RedisMissing` saying how to install it."""
    try:
        import redis
    except ImportError:
        raise RedisMissing(f"[cluster] redis_url needs the redis package: {install_command('cluster')}") from None
    return redis


def safe_url(url: str) -> str:
    """``url`` without its password, for logs and listings."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


class RedisLink:
    """Redis for code on the loop thread, without ever blocking it.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` URL.
    :param channel: the pub/sub channel followed (bytes or str).
    :param post: runs a callable on the loop thread soon (any thread may call it).
    :param on_messages: gets the received payloads (a list of bytes), on the loop.
    :param on_up: Redis answers again (and at the first connection), on the loop.
    :param on_down: Redis became unreachable, on the loop.
    :param timeout: seconds a command or a connection attempt may take.
    :param client_factory: makes a client from the URL (tests pass their own).
    """

    def __init__(
        self,
        url: str,
        channel: str,
        *,
        post: Post,
        on_messages: Callable[[list[bytes]], None],
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[], None] | None = None,
        timeout: float = 1.0,
        retry: float = RETRY,
        client_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.url = url
        self.channel = channel
        self._post = post
        self._on_messages = on_messages
        self._on_up = on_up
        self._on_down = on_down
        self.timeout = timeout
        self.retry = retry
        self._factory = client_factory or self._default_factory
        self._jobs: queue.SimpleQueue[tuple[Job, Done | None] | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._commands_ok = False
        self._subscribed = False
        #: the command connection failed: the subscription is suspect too (a cut without a reset
        #: leaves it silent, not broken), so the subscriber connects again
        self._resubscribe = False
        self._up: bool | None = None  #: as last reported to the loop (None: not known yet)
        self._down_since: float | None = None  #: monotonic start of the outage (None: never connected yet)
        self._warned = False
        self._inbox: list[bytes] = []
        self._inbox_posted = False
        self.received = 0  #: payloads received since start
        self.outages = 0  #: times the link went down

    # -- life --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start both threads; the first connection is reported like a return (``on_up``)."""
        for name, target in (("b2bua-redis", self._command_loop), ("b2bua-redis-sub", self._subscriber_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop both threads; queued jobs after the stop are dropped."""
        self._stop.set()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    @property
    def up(self) -> bool:
        """Whether Redis answered the last command and the subscription stands (loop's view)."""
        return bool(self._up)

    def down_for(self) -> float:
        """Seconds Redis has been unreachable (0 while up)."""
        return 0.0 if self._up or self._down_since is None else time.monotonic() - self._down_since

    @property
    def known(self) -> bool:
        """Whether the link has been up or down yet (False right after start)."""
        return self._up is not None

    # -- jobs ----------------------------------------------------------------------------------

    def submit(self, fn: Job, on_done: Done | None = None) -> None:
        """Run ``fn(client)`` on the command thread; ``on_done(result, error)`` then runs on the
        loop (``error`` is :class:`LinkDown` when Redis is unreachable). Any thread."""
        self._jobs.put((fn, on_done))

    def call(self, fn: Job, timeout: float | None = None) -> Any:
        """Run ``fn(client)`` now on a connection of its own and return its result (start-up,
        command-line tools: callers that may wait). Raises what ``fn`` or the connection raised."""
        client = self._factory(self.url, timeout if timeout is not None else self.timeout)
        try:
            return fn(client)
        finally:
            client.close()

    # -- the command thread ----------------------------------------------------------------------

    def _default_factory(self, url: str, timeout: float | None) -> Any:
        redis = redis_module()
        return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                    socket_keepalive=True, health_check_interval=0)

    def _command_loop(self) -> None:
        client = self._factory(self.url, self.timeout)
        while not self._stop.is_set():
            if not self._commands_ok and not self._reconnect(client):
                self._fail_queued()
                self._stop.wait(self.retry)
                continue
            try:
                item = self._jobs.get(timeout=self.retry)
            except queue.Empty:
                continue
            if item is None:
                break
            fn, on_done = item
            try:
                result, error = fn(client), None
            except Exception as exc:
                result, error = None, exc
                if self._is_connection_error(exc):
                    self._set_state(commands=False, why=exc)
                    error = LinkDown(str(exc))
            if on_done is not None:
                self._post(_deferred(on_done, result, error))
        try:
            client.close()
        except Exception:  # the connection is going away anyway
            logger.opt(exception=True).debug("cluster: closing the Redis client")

    def _reconnect(self, client: Any) -> bool:
        try:
            client.ping()
        except Exception as exc:
            self._set_state(commands=False, why=exc)
            return False
        self._set_state(commands=True)
        return True

    def _fail_queued(self) -> None:
        """While down, queued jobs fail at once: their callers fall back to local state."""
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._jobs.put(None)
                return
            _, on_done = item
            if on_done is not None:
                self._post(_deferred(on_done, None, LinkDown("Redis is unreachable")))

    # -- the subscriber thread -------------------------------------------------------------------

    def _subscriber_loop(self) -> None:
        while not self._stop.is_set():
            pubsub = None
            try:
                client = self._factory(self.url, None)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self._set_state(subscribed=True)
                while not self._stop.is_set():
                    if self._resubscribe:
                        self._resubscribe = False
                        raise ConnectionError("the command connection failed: subscribing again")
                    message = pubsub.get_message(timeout=SUBSCRIBER_POLL)
                    if message is not None and message.get("type") == "message":
                        self._deliver(message["data"])
            except Exception as exc:
                self._set_state(subscribed=False, why=exc)
                self._stop.wait(self.retry)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # already broken
                        logger.opt(exception=True).debug("cluster: closing the Redis subscription")

    def _deliver(self, payload: Any) -> None:
        data = payload if isinstance(payload, bytes) else str(payload).encode("utf-8", "replace")
        with self._lock:
            self.received += 1
            self._inbox.append(data)
            if self._inbox_posted:
                return
            self._inbox_posted = True
        self._post(self._drain_inbox)

    def _drain_inbox(self) -> None:
        with self._lock:
            batch, self._inbox = self._inbox[:BATCH], self._inbox[BATCH:]
            more = bool(self._inbox)
            self._inbox_posted = more
        if more:
            self._post(self._drain_inbox)
        if batch:
            self._on_messages(batch)

    # -- up and down -------------------------------------------------------------------------------

    @staticmethod
    def _is_connection_error(exc: BaseException) -> bool:
        redis = redis_module()
        return isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError))

    def _set_state(self, *, commands: bool | None = None, subscribed: bool | None = None,
                   why: BaseException | None = None) -> None:
        with self._lock:
            if commands is not None:
                if self._commands_ok and not commands:
                    self._resubscribe = True
                self._commands_ok = commands
            if subscribed is not None:
                self._subscribed = subscribed
            up = self._commands_ok and self._subscribed
            if why is not None or up:
                # posted under the lock: the loop sees the changes in the order they happened
                self._post(lambda: self._report(up, why))

    def _report(self, up: bool, why: BaseException | None) -> None:
        """On the loop: log and tell the owner about a change (once per outage)."""
        if up == self._up:
            return
        self._up = up
        where = safe_url(self.url)
        if not up:
            self.outages += 1
            self._down_since = time.monotonic()
            if not self._warned:
                self._warned = True
                logger.warning("cluster: Redis at {} is unreachable ({}): this node runs on its own state "
                               "until Redis answers again", where, _short(why))
            if self._on_down is not None:
                self._on_down()
            return
        if self._down_since is not None and self._warned:
            logger.warning("cluster: Redis at {} answers again after {:.1f} s: catching up", where,
                           time.monotonic() - self._down_since)
        elif self._down_since is None:
            logger.info("cluster: connected to Redis at {}", where)
        self._warned = False
        self._down_since = None
        if self._on_up is not None:
            self._on_up()


def _deferred(on_done: Done, result: Any, error: BaseException | None) -> Callable[[], None]:
    """``on_done(result, error)`` as a callable for the loop."""
    return lambda: on_done(result, error)


def _short(exc: BaseException | None) -> str:
    if exc is None:
        return "no answer"
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
