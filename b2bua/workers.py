"""Run N B2BUA processes on one machine as one service: ``python -m b2bua.workers -n N``.

One B2BUA process is one loop thread, so it uses one core (``docs/performance.md``). Workers are
full B2BUA processes with the same ``config.toml``, apart from what two processes cannot share
(worker 0 keeps the configured values, worker ``i`` gets):

* SIP: every ``[sip] listen`` port + i (the upstream proxy spreads calls over the workers, e.g. a
  Kamailio dispatcher set of the N addresses); RTP: ``[sip] rtp_port`` + i x the ports each
  worker takes (``[sip] rtp_ports``, or ``b2bua.config.rtp_port_span``);
* the control socket ``b2bua.sock`` -> ``b2bua-i.sock``; ``[control] http`` port + i;
  ``[log] file`` ``x.log`` -> ``x-i.log``; the dispatcher's ``state_file`` likewise;
* ``[cluster] node`` ``x`` -> ``x-wI`` in every worker, worker 0 too (``x-w0``, ``x-w1``: each
  worker is a node of its own, and the names say whose workers they are); ``[plugins.cdr] node``
  likewise (its default, the host name, too: a call record says which worker wrote it); ``[cluster]
  control_url`` names ``[control] http``'s port, moved like it (+ i). A ``control_url`` on another
  port (a proxy in front) cannot be told apart per worker: worker 1 and up refuse to start.

Destinations come from the same list file or SQL table in every worker. Runtime state
(probing results, admin states set over a control socket, call-load counters) is each worker's
own, and an admin command goes to every worker's socket; unless ``[cluster] redis_url`` is set:
then the workers are nodes of one cluster (each named after the host and its SIP port, or
``[cluster] node`` and its worker number), sharing
that state through Redis (``docs/scale-out.md``; ``b2bua dispatcher list --all``).

The supervisor starts the workers, prefixes each one's log lines with ``wI |``, says
``workers ready`` once every worker is, restarts a worker that dies (after 1 s, at most 5
times a minute), passes SIGHUP on, and on SIGTERM/SIGINT stops them all (each drains its calls
for ``[sip] shutdown_grace``). A systemd template unit can do the same job instead: see
``docs/performance.md``, "More than one core".
"""

from __future__ import annotations

import argparse
import copy
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

from b2bua.config import Config, ConfigError, Listen, load_config, parse_config, read_toml, rtp_port_span

#: restarts allowed per worker within RESTART_WINDOW seconds before the supervisor gives up
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
READY = "b2bua ready"


def _suffixed(name: str, index: int) -> str:
    """``b2bua.sock`` -> ``b2bua-2.sock``; ``x`` -> ``x-2``."""
    path = Path(name)
    return str(path.with_name(f"{path.stem}-{index}{path.suffix}"))


def worker_config(data: Mapping[str, Any], index: int, rtp_span: int) -> dict[str, Any]:
    """The TOML document of worker ``index`` (0 keeps ``data``'s addresses).

    :raises ConfigError: ``[cluster] control_url`` names a port worker ``index`` cannot have.
    """
    out = copy.deepcopy(dict(data))
    sip = out.setdefault("sip", {})
    sip["rtp_ports"] = rtp_span
    _cluster_identity(out, index)
    cdr = out.get("plugins", {}).get("cdr")
    if isinstance(cdr, dict):  # which worker wrote a record; the records' file is shared (appends)
        node = cdr.get("node") or socket.gethostname()
        if isinstance(node, str):
            cdr["node"] = f"{node}-w{index}"
    if index == 0:
        return out
    listen = sip.get("listen", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"])
    moved = []
    for item in listen:
        spec = Listen.parse(item)
        host = f"[{spec.address}]" if ":" in spec.address else spec.address
        moved.append(f"{spec.transport}:{host}:{spec.port + index}")
    sip["listen"] = moved
    sip["rtp_port"] = int(sip.get("rtp_port", 16000)) + index * rtp_span
    control = out.setdefault("control", {})
    control["socket"] = _suffixed(control.get("socket", "b2bua.sock"), index) if control.get(
        "socket", "b2bua.sock") else ""
    if control.get("http"):
        host, _, port = str(control["http"]).rpartition(":")
        control["http"] = f"{host}:{int(port) + index}"
    log = out.setdefault("log", {})
    if log.get("file"):
        log["file"] = _suffixed(log["file"], index)
    dispatcher = out.get("plugins", {}).get("dispatcher")
    if isinstance(dispatcher, dict):
        state = dispatcher.get("state_file", "dispatcher-state.json")
        if state:
            dispatcher["state_file"] = _suffixed(state, index)
    return out


def _cluster_identity(doc: dict[str, Any], index: int) -> None:
    """Make ``[cluster] node`` and ``control_url`` worker ``index``'s own (two live nodes cannot
    share a name: the second would be refused and restarted forever)."""
    cluster = doc.get("cluster")
    if not isinstance(cluster, dict):
        return
    node = cluster.get("node")
    if isinstance(node, str) and node:
        cluster["node"] = f"{node}-w{index}"
    url = cluster.get("control_url")
    if not isinstance(url, str) or not url or index == 0:
        return
    http = doc.get("control", {}).get("http")
    http_port = _port_of(str(http).rpartition(":")[2]) if http else None
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return  # not a URL: the config's own check says so
    if port != http_port:
        where = f"[control] http's port {http_port}" if http_port is not None else "no [control] http"
        raise ConfigError(
            f"[cluster] control_url {url!r} names port {port}, {where}: worker {index} listens on that port + "
            f"{index}, and a URL on another port cannot be told apart per worker; name [control] http's port "
            "in control_url (each worker gets its own) or leave control_url empty")
    netloc = parts.netloc if parts.port is None else parts.netloc[:parts.netloc.rfind(":")]
    cluster["control_url"] = urlunsplit(parts._replace(netloc=f"{netloc}:{port + index}"))


def _port_of(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def parse_worker_config(path: Path, data: Mapping[str, Any], index: int, rtp_span: int) -> Config:
    """Worker ``index``'s :class:`Config` from the TOML document ``data`` of ``path``.

    :raises ConfigError: every message names the file and the worker.
    """
    where = f"{path} (worker {index})"
    try:
        doc = worker_config(data, index, rtp_span)
    except ConfigError as exc:
        raise ConfigError(*(f"{where}: {e}" for e in exc.errors)) from None
    return parse_config(doc, where, path.resolve().parent)


def run_worker(path: str, index: int, rtp_span: int, verbose: int) -> int:
    """One worker, in this process: the config of ``path`` as worker ``index`` sees it."""
    from b2bua.cli import run_config

    p = Path(path)
    try:
        # started alone (a systemd template unit: --worker %i), the span is the one supervise() uses
        span = rtp_span or rtp_port_span(load_config(p).sip)
        config = parse_worker_config(p, read_toml(p), index, span)
    except ConfigError as exc:
        print(f"worker {index}: {exc}", file=sys.stderr)
        return 2
    return run_config(config, verbose)


class Worker:
    def __init__(self, index: int, cmd: Sequence[str], out: TextIO) -> None:
        self.index = index
        self.cmd = list(cmd)
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready = threading.Event()
        self.starts: list[float] = []

    def start(self) -> None:
        self.ready.clear()
        self.starts = [t for t in self.starts if time.monotonic() - t < RESTART_WINDOW] + [time.monotonic()]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        threading.Thread(target=self._pump, args=(self.proc,), name=f"worker-{self.index}-log", daemon=True).start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        prefix = f"w{self.index} | "
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace")
            if READY in line:
                self.ready.set()
            self.out.write(prefix + line)
            self.out.flush()

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)


def supervise(config_path: str, n: int, verbose: int, out: TextIO = sys.stderr) -> int:
    config = load_config(config_path)  # a bad config stops here, once, not in N workers
    span = rtp_port_span(config.sip)
    if config.sip.rtp_port + n * span > 65535:
        raise ConfigError(f"{n} workers need RTP ports {config.sip.rtp_port}-{config.sip.rtp_port + n * span - 1}: "
                          "lower [sip] rtp_port, rtp_ports or max_calls")
    path = Path(config_path)
    data = read_toml(path)
    for i in range(n):  # what one worker changes may not fit (a control_url, a node name grown too long)
        parse_worker_config(path, data, i, span)
    workers = [Worker(i, [sys.executable, "-m", "b2bua.workers", "--worker", str(i), "--rtp-span", str(span),
                          "-c", config_path, *(["-" + "v" * verbose] if verbose else [])], out)
               for i in range(n)]
    stopping = threading.Event()

    def on_stop(signum: int, _frame: Any) -> None:
        stopping.set()

    def on_hup(_signum: int, _frame: Any) -> None:
        for w in workers:
            w.signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_hup)
    for w in workers:
        w.start()
    announced = False
    code = 0
    while not stopping.is_set():
        if not announced and all(w.ready.is_set() for w in workers):
            announced = True
            out.write(f"workers ready: {n} B2BUA processes, SIP ports "
                      f"{', '.join(str(Listen.parse(config.sip.listen[0]).port + i) for i in range(n))}\n")
            out.flush()
        for w in workers:
            assert w.proc is not None
            status = w.proc.poll()
            if status is None or stopping.is_set():
                continue
            if len(w.starts) >= MAX_RESTARTS:
                out.write(f"worker {w.index} exited with {status} {MAX_RESTARTS} times within "
                          f"{RESTART_WINDOW:g} s: stopping the service\n")
                stopping.set()
                code = 1
                break
            out.write(f"worker {w.index} exited with {status}: restarting it in 1 s\n")
            time.sleep(1)
            w.start()
        stopping.wait(0.2)
    for w in workers:
        w.signal(signal.SIGTERM)
    grace = config.sip.shutdown_grace + 30
    for w in workers:
        assert w.proc is not None
        try:
            w.proc.wait(grace)
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()
        if w.proc.returncode not in (0, -signal.SIGTERM):
            code = code or 1
    return code


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m b2bua.workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-c", "--config", default="config.toml", metavar="FILE")
    ap.add_argument("-n", "--workers", type=int, default=2, help="how many B2BUA processes (one per core)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    ap.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)  # run one worker
    ap.add_argument("--rtp-span", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker >= 0:
        return run_worker(args.config, args.worker, args.rtp_span, args.verbose)
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    try:
        return supervise(args.config, args.workers, args.verbose)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
