"""``b2bua drain [--wait [SECONDS]]`` and ``b2bua undrain``: take the node (or one destination)
out of service without stopping it, and back.

``drain`` calls ``core.drain`` (``--destination SETID URI``: ``dispatcher.drain``); new calls
then get 503 Draining and OPTIONS 503, calls in progress go on. With ``--wait`` it waits for
the last call to end, asking again every :data:`CHUNK` seconds (so no request is held open
long), and prints how many calls are left each time; ``--wait`` alone waits as long as it
takes, ``--wait 300`` at most 300 seconds. Exit codes: 0 done (drained, or not waiting), 1 the
wait ran out with calls left or the method answered with an error, 2 usage, configuration or
connection problems (as ``b2bua rpc``). A rolling restart::

    b2bua drain --wait 600 && systemctl restart b2bua
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from b2bua.config import ConfigError
from b2bua.control import ControlClient, ControlUnavailable, RpcCallError
from b2bua.control_cli import EXIT_OK, EXIT_RPC_ERROR, EXIT_USAGE, add_connection_options, make_client

T = TypeVar("T")

#: seconds one drain call waits at the server before the command asks again
CHUNK = 30.0
#: seconds the client allows on top of the server's wait
MARGIN = 10.0


def add_drain_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``drain`` and ``undrain`` to ``subparsers``."""
    drain = subparsers.add_parser(
        "drain", help="stop taking new calls; let the calls in progress finish",
        description="Drain the running b2bua (core.drain): new calls get 503 Draining and OPTIONS 503 (a SIP "
        "edge's probing takes the node out), /health answers 503, calls in progress go on. With --destination, "
        "drain one dispatcher destination instead (dispatcher.drain: state d, kept across reloads). Undo with "
        "'b2bua undrain'.",
        epilog="example, a rolling restart:\n  b2bua drain --wait 600 && systemctl restart b2bua",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    drain.add_argument("--wait", nargs="?", type=float, const=math.inf, default=None, metavar="SECONDS",
                       help="wait until the last call ended (at most SECONDS); exit 1 if calls are left")
    _common(drain)
    drain.set_defaults(func=run_drain)
    undrain = subparsers.add_parser(
        "undrain", help="take new calls again after a drain",
        description="End a drain (core.undrain; with --destination, dispatcher.undrain: the destination is "
        "active again, 'ap' while keepalives run).",
    )
    _common(undrain)
    undrain.set_defaults(func=run_undrain)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--destination", nargs=2, metavar=("SETID", "URI"),
                        help="one dispatcher destination (URI, or 'all' of the set) instead of the node")
    add_connection_options(parser)
    parser.add_argument("--json", action="store_true", help="print the last answer as JSON")


def run_drain(args: argparse.Namespace) -> int:
    """The ``b2bua drain`` handler."""
    if args.wait is not None and (math.isnan(args.wait) or args.wait < 0):
        sys.stderr.write("error: --wait needs seconds, 0 or more\n")
        return EXIT_USAGE
    target = "the node" if args.destination is None else f"set {args.destination[0]} {args.destination[1]}"
    deadline = time.monotonic() + (args.wait or 0.0)

    def ask(client: ControlClient, wait: float) -> dict[str, Any]:
        method, params = ("core.drain", [wait]) if args.destination is None else \
            ("dispatcher.drain", [args.destination[0], args.destination[1], wait])
        return dict(client.call(method, params, timeout=max(args.timeout, wait + MARGIN)))

    def steps(client: ControlClient) -> dict[str, Any]:
        result = ask(client, 0.0)
        _say(f"draining {target}: {result['calls']} call(s) in progress", args)
        while args.wait is not None and result["calls"] and time.monotonic() < deadline:
            result = ask(client, min(CHUNK, max(0.0, deadline - time.monotonic())))
            if result["calls"]:
                _say(f"{result['calls']} call(s) left", args)
        if not result["calls"]:
            _say(f"drained {target}: no calls left", args)
        return result

    result, failed = _call(args, steps)
    if result is None:
        return failed
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return EXIT_RPC_ERROR if args.wait is not None and result["calls"] else EXIT_OK


def run_undrain(args: argparse.Namespace) -> int:
    """The ``b2bua undrain`` handler."""

    def steps(client: ControlClient) -> Any:
        if args.destination is None:
            return client.call("core.undrain", timeout=args.timeout)
        return client.call("dispatcher.undrain", list(args.destination), timeout=args.timeout)

    result, failed = _call(args, steps)
    if result is None:
        return failed
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    elif isinstance(result, dict):
        sys.stdout.write(f"state: {result['state']} ({result['calls']} call(s) in progress)\n")
    else:
        sys.stdout.write(f"{result}\n")
    return EXIT_OK


def _call(args: argparse.Namespace, steps: Callable[[ControlClient], T]) -> tuple[T | None, int]:
    """``(steps(client), 0)``, or ``(None, exit code)`` after saying why on stderr."""
    try:
        client = make_client(args)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return None, EXIT_USAGE
    try:
        return steps(client), EXIT_OK
    except RpcCallError as exc:
        sys.stderr.write(f"error: {exc.code} {exc.message}\n")
        return None, EXIT_RPC_ERROR
    except ControlUnavailable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return None, EXIT_USAGE


def _say(text: str, args: argparse.Namespace) -> None:
    stream = sys.stderr if args.json else sys.stdout
    stream.write(text + "\n")
    stream.flush()
