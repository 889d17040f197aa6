"""``b2bua rpc <method> [params...]``: call a control method, like Kamailio's ``kamcmd``.

Params are JSON when they parse as JSON (``5``, ``true``, ``null``, ``{"a": 1}``), else strings;
an ``s:`` prefix forces a string (``s:5`` is the string ``"5"``, ``s:-x`` passes a string
starting with a dash). Results print as an indented tree (strings unquoted), or as JSON with
``--json``. Exit codes: 0 success, 1 the method answered with an error, 2 usage, config or
connection problems.

``--all`` calls every live node of the cluster (``[cluster]``; the nodes and their control
addresses come from Redis, see :mod:`b2bua.fanout`) and prints each node's answer under its
name (``--json``: one object keyed by node name). The exit code is the worst of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from b2bua.config import CONFIG_ENV, DEFAULT_CONFIG, Config, ConfigError, load_config
from b2bua.control import ControlClient, ControlUnavailable, RpcCallError
from b2bua.sip import printable, printable_lines

TOKEN_ENV = "B2BUA_TOKEN"

EXIT_OK = 0
EXIT_RPC_ERROR = 1
EXIT_USAGE = 2

_EPILOG = """\
examples:
  b2bua rpc help                          every method with its usage
  b2bua rpc core.uptime
  b2bua rpc dispatcher.set_state ip 1 sip:10.0.0.1:5060
  b2bua rpc --json dispatcher.list        JSON for scripts (jq)
  b2bua rpc --url http://127.0.0.1:8080/ --token SECRET core.version
  b2bua rpc --all dispatcher.reload       every node of the cluster ([cluster] in the config)

Options go before the method. Negative numbers pass as they are (-1); a string that starts
with '-' needs 's:' (s:-x), and 's:' also keeps "5" or "true" a string (s:5).
"""


def add_rpc_command(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Add the ``rpc`` subcommand to ``subparsers``; its handler is ``args.func(args) -> int``."""
    parser = subparsers.add_parser(
        "rpc",
        help="call a control method (like kamcmd)",
        description="Call a control method of a running b2bua over its unix socket or HTTP.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("method", help="method name, e.g. core.uptime; 'help' lists them all")
    parser.add_argument(
        "params", nargs="*", metavar="param",
        help="positional params: JSON when they parse as JSON, else strings; 's:' forces a string",
    )
    add_connection_options(parser)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--all", action="store_true",
                        help="call every live node of the cluster (listed in the [cluster] Redis)")
    parser.set_defaults(func=run_rpc)
    return parser


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """``-c``, ``--socket``, ``--url``, ``--token``, ``--timeout``: where the running b2bua is
    (read by :func:`make_client`); ``b2bua rpc``, ``drain`` and ``undrain`` share them."""
    parser.add_argument(
        "-c", "--config", default=None, metavar="FILE",
        help=f"config file with the [control] settings (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG} when "
        "there is one, else built-in defaults)",
    )
    parser.add_argument("--socket", metavar="PATH", help="connect to this unix socket")
    parser.add_argument("--url", metavar="URL", help="connect over HTTP, e.g. http://127.0.0.1:8080/")
    parser.add_argument(
        "--token", metavar="TOKEN", help=f"HTTP bearer token (default: ${TOKEN_ENV}, then the config's)"
    )
    parser.add_argument("--timeout", type=positive_seconds, default=10.0, metavar="SECONDS",
                        help="seconds to wait for the answer (default: 10)")


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (-1 and nan were a traceback, 0 a
    connection error)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def parse_param(text: str) -> Any:
    """One command-line param: ``s:``-prefixed text as a string, else JSON if it parses, else text."""
    if text.startswith("s:"):
        return text[2:]
    try:
        value = json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text
    return value


def _not_json(name: str) -> Any:
    # json.loads accepts NaN and Infinity; to an operator they are words, not numbers
    raise ValueError(name)


def format_tree(value: Any) -> str:
    """``value`` as kamcmd prints structures: braces and tab indentation, strings unquoted.

    A top-level list prints one item after the other; None prints nothing.
    """
    lines: list[str] = []
    if value is None:
        return ""
    if isinstance(value, list):
        for item in value:
            _emit(lines, item, 0, "")
    else:
        _emit(lines, value, 0, "")
    return "\n".join(lines)


def shown(text: object) -> str:
    """Text from a node, a database row or the wire, safe to print on one terminal line:
    control and format characters (ESC, CR, a line break) escaped."""
    text = str(text)
    return text if text.isprintable() else printable(text, sys.maxsize)


def _scalar(value: Any) -> str:
    if isinstance(value, str):  # several lines print as several (help texts); ESC and the like escaped
        return value if value.isprintable() else printable_lines(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return json.dumps(value)  # true/false/null, numbers as JSON writes them


def _emit(lines: list[str], value: Any, depth: int, prefix: str) -> None:
    pad = "\t" * depth
    if isinstance(value, dict):
        if not value:
            lines.append(f"{pad}{prefix}{{}}")
            return
        lines.append(f"{pad}{prefix}{{")
        for key, item in value.items():
            _emit(lines, item, depth + 1, f"{shown(key)}: ")
        lines.append(f"{pad}}}")
    elif isinstance(value, list):
        if not value:
            lines.append(f"{pad}{prefix}[]")
            return
        lines.append(f"{pad}{prefix}[")
        for item in value:
            _emit(lines, item, depth + 1, "")
        lines.append(f"{pad}]")
    else:
        first, *rest = _scalar(value).split("\n")
        lines.append(f"{pad}{prefix}{first}")
        # continuation lines of a keyed value sit under the key, one level in
        more = pad + "\t" if prefix else pad
        lines.extend(f"{more}{line}" for line in rest)


def _load_config(path: str | None) -> Config:
    if path is not None:
        return load_config(path)
    if Path(DEFAULT_CONFIG).is_file():
        return load_config(DEFAULT_CONFIG)
    return Config()


def _http_url(address: str) -> str:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def make_client(args: argparse.Namespace) -> ControlClient:
    """The client for ``--url``, ``--socket``, or the config's ``[control]`` settings.

    :raises ConfigError: the config cannot be read, or it turns the control API off.
    :raises ValueError: ``--url`` is not an http URL.
    """
    token = args.token or os.environ.get(TOKEN_ENV, "")
    if args.url:
        if not token and (args.config is not None or Path(DEFAULT_CONFIG).is_file()):
            token = _load_config(args.config).control.token
        return ControlClient.http(args.url, token)
    if args.socket:
        return ControlClient.unix(Path(args.socket).expanduser())
    config = _load_config(args.config)
    control = config.control
    # the socket first: it needs no token and never leaves the host
    if control.socket:
        return ControlClient.unix(config.resolve_path(control.socket))
    if control.http:
        return ControlClient.http(_http_url(control.http), token or control.token)
    raise ConfigError(f"{config.path}: [control] sets neither socket nor http: nothing to connect to")


def run_rpc(args: argparse.Namespace) -> int:
    """The ``b2bua rpc`` handler: call the method, print the result; the exit code."""
    if getattr(args, "all", False):
        return run_rpc_all(args)
    try:
        client = make_client(args)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    params = [parse_param(p) for p in args.params]
    try:
        result = client.call(args.method, params or None, timeout=args.timeout)
    except RpcCallError as exc:
        sys.stderr.write(f"error: {exc.code} {exc.message}\n")
        if exc.data is not None:
            sys.stderr.write(format_tree(exc.data) + "\n")
        return EXIT_RPC_ERROR
    except ControlUnavailable as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    text = json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_tree(result)
    if text:
        sys.stdout.write(text + "\n")
    return EXIT_OK


def run_rpc_all(args: argparse.Namespace) -> int:
    """``b2bua rpc --all``: the method on every live node, each answer under the node's name."""
    from b2bua.fanout import call_all, cluster_nodes
    from b2bua.redislink import RedisMissing

    if args.url or args.socket:
        sys.stderr.write("error: --all finds the nodes in Redis: leave out --url and --socket\n")
        return EXIT_USAGE
    try:
        config = _load_config(args.config)
        nodes = cluster_nodes(config)
    except (ConfigError, RedisMissing) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    if not nodes:
        sys.stderr.write("error: Redis lists no live node\n")
        return EXIT_USAGE
    token = args.token or os.environ.get(TOKEN_ENV, "") or config.control.token
    params = [parse_param(p) for p in args.params]
    answers = call_all(nodes, args.method, params or None, token=token, timeout=args.timeout)
    code = EXIT_OK
    for answer in answers:
        if answer.error is not None:
            code = max(code, EXIT_RPC_ERROR if answer.rpc_error else EXIT_USAGE)
    if args.json:
        out = {a.node: ({"error": a.error} if a.error is not None else a.result) for a in answers}
        sys.stdout.write(json.dumps(out, indent=2, ensure_ascii=False) + "\n")
        return code
    for answer in answers:
        host, control = shown(answer.info.get("host", "?")), shown(answer.info.get("control", "?"))
        sys.stdout.write(f"== {shown(answer.node)} ({host}, {control})\n")
        if answer.error is not None:
            sys.stdout.write(f"error: {shown(answer.error)}\n")
            continue
        text = format_tree(answer.result)
        if text:
            sys.stdout.write(text + "\n")
    return code
