"""Probing benchmark: what OPTIONS keepalives to 1000 destinations cost the B2BUA.

Set-up, all on loopback:

- a responder (this script's ``responder`` subcommand, one asyncio process) listens on 1000 UDP
  sockets, 100 ports on each of 127.0.1.1-127.0.1.10, and answers every OPTIONS with 200;
- the B2BUA with the dispatcher: set 1 = those 1000 destinations, probed every ``--interval``
  seconds (probing mode 1, latency statistics on); set 2 = one sipp UAS (flag 32: never probed)
  that takes the calls (``[[plugins.dispatcher.routes]] set = 2``);
- a sipp UAC offering ``--rate`` calls/s (``bench/load.py``'s caller: setup time = INVITE to 200).

Probing is switched with ``dispatcher.ping_active`` between phases, so "on" and "off" are the
same process with the same destinations. Prints per phase the B2BUA's CPU (% of one core, from
/proc/<pid>/stat), the OPTIONS/s the responder answered, and under load the calls, failures and
p50/p99 setup times; then the verdict against the targets: probing under 10 % of one core, p99
unchanged within noise (the spread between repeated "off" phases).

    .venv/bin/python bench/probing.py                        # ~2 minutes
    .venv/bin/python bench/probing.py --rate 100 --seconds 5 --pairs 1
    .venv/bin/python bench/probing.py --destinations 2000 --interval 0.5

Every phase is bounded in time and calls. Needs sipp (``scripts/setup.sh --test`` installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import load as callbench  # noqa: E402  (bench/load.py: caller, gateway, /proc readers)

from b2bua.control import ControlClient  # noqa: E402

RESPONDER_NET = "127.0.1."
MAX_RESPONDER_ADDRESSES = 250
PER_ADDRESS = 100
READY_TIMEOUT = 30.0
CPU_TARGET = 0.10  # of one core
#: headers a response copies from the request (full and compact names)
_COPIED = {b"via", b"v", b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"}


# --------------------------------------------------------------------------------------------------
# The responder


def options_reply(data: bytes) -> bytes | None:
    """A ``200 OK`` for an OPTIONS request, or None for anything else (responses, other methods).

    Copies Via, From, To (adding a tag), Call-ID and CSeq, as RFC 3261 §8.2.6 asks.
    """
    head, sep, _ = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"OPTIONS "):
        return None
    out = [b"SIP/2.0 200 OK"]
    for line in head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        key = name.strip().lower()
        if not colon or key not in _COPIED:
            continue
        if key in (b"to", b"t") and b";tag=" not in value.lower():
            line = line + b";tag=bench"
        out.append(line)
    out += [b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS", b"Content-Length: 0", b"", b""]
    return b"\r\n".join(out)


class _Answer(asyncio.DatagramProtocol):
    def __init__(self, counter: list[int]) -> None:
        self.counter = counter
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the selector loop's UDP transport does not subclass DatagramTransport, but is one
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = options_reply(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
            self.counter[0] += 1


async def _respond(addresses: int, per_address: int, ports_file: Path, stats_file: Path) -> None:
    loop = asyncio.get_running_loop()
    counter = [0]
    endpoints = []
    for a in range(1, addresses + 1):
        for _ in range(per_address):
            transport, _ = await loop.create_datagram_endpoint(lambda: _Answer(counter),
                                                               local_addr=(f"{RESPONDER_NET}{a}", 0))
            endpoints.append(transport.get_extra_info("sockname")[:2])
    tmp = ports_file.with_suffix(".tmp")
    tmp.write_text("".join(f"{ip}:{port}\n" for ip, port in endpoints))
    tmp.replace(ports_file)  # atomic: the parent never reads a half-written list
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    while not stop.is_set():
        stats_tmp = stats_file.with_suffix(".tmp")
        stats_tmp.write_text(f"{counter[0]}\n")
        stats_tmp.replace(stats_file)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


def responder_main(args: argparse.Namespace) -> int:
    """The ``responder`` subcommand: listen, write the ports, answer until SIGTERM."""
    asyncio.run(_respond(args.addresses, args.per_address, Path(args.ports_file), Path(args.stats_file)))
    return 0


# --------------------------------------------------------------------------------------------------
# The benchmark


@dataclass(frozen=True)
class Phase:
    """One measured phase."""

    name: str
    probing: bool
    cpu: float  #: share of one core
    options_per_s: float
    calls: int = 0
    failed: int = 0
    p50: float = float("nan")
    p99: float = float("nan")


class Responder:
    """The responder subprocess and its counters."""

    def __init__(self, workdir: Path, addresses: int, per_address: int) -> None:
        self.ports_file = workdir / "responder.ports"
        self.stats_file = workdir / "responder.stats"
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "responder", "--addresses", str(addresses), "--per-address",
             str(per_address), "--ports-file", str(self.ports_file), "--stats-file", str(self.stats_file)],
            stdout=subprocess.DEVNULL, stderr=(workdir / "responder.log").open("wb"),
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ports_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                callbench.stop(self.proc)
                raise SystemExit(f"the responder did not start: {(workdir / 'responder.log').read_text()[-2000:]}")
            time.sleep(0.05)
        self.endpoints = self.ports_file.read_text().split()

    def answered(self) -> int:
        """OPTIONS answered so far."""
        try:
            return int(self.stats_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0


def write_setup(workdir: Path, endpoints: Sequence[str], uas: str, port: int, interval: float,
                timeout: float) -> Path:
    """The list file and config; returns the config's path."""
    lines = [f"1 sip:{ep} 0\n" for ep in endpoints] + [f"2 sip:{uas} 32\n"]
    (workdir / "dispatcher.list").write_text("".join(lines))
    config = workdir / "config.toml"
    config.write_text(f"""\
[sip]
listen = ["udp:{callbench.B2BUA_IP}:{port}"]
max_calls = 50
require_call_slots = false

[log]
level = "INFO"

[control]
socket = "b2bua.sock"

[plugins]
enabled = ["dispatcher"]

[plugins.dispatcher]
list_file = "dispatcher.list"
ping_interval = {interval}
ping_timeout = {timeout}
probing_mode = 1
probing_threshold = 2
inactive_threshold = 1
ping_latency_stats = true

[[plugins.dispatcher.routes]]
set = 2
algorithm = "round-robin"
""")
    return config


def set_states(control: ControlClient) -> dict[str, int]:
    """How many destinations of set 1 are in each state (``{"AP": 1000}``)."""
    result = control.call("dispatcher.list", ["short"], timeout=10.0)
    counts: dict[str, int] = {}
    for record in result["RECORDS"]:
        if record["SET"]["ID"] == 1:
            for target in record["SET"]["TARGETS"]:
                flags = target["DEST"]["FLAGS"]
                counts[flags] = counts.get(flags, 0) + 1
    return counts


def switch(control: ControlClient, on: bool, settle: float) -> None:
    """``dispatcher.ping_active``, then wait for the probes in flight to end."""
    control.call("dispatcher.ping_active", [int(on)])
    time.sleep(settle)


def measure_idle(name: str, on: bool, pid: int, responder: Responder, seconds: float) -> Phase:
    cpu0, answered0, t0 = callbench.cpu_seconds(pid), responder.answered(), time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return Phase(name, on, (callbench.cpu_seconds(pid) - cpu0) / elapsed,
                 (responder.answered() - answered0) / elapsed)


def measure_load(name: str, on: bool, pid: int, responder: Responder, workdir: Path, target: str,
                 rate: int, seconds: float) -> Phase:
    calls = int(rate * seconds)
    cpu0, answered0, t0 = callbench.cpu_seconds(pid), responder.answered(), time.monotonic()
    result = callbench.run_caller(workdir, target, rate, calls, 0, seconds * 3 + 10)
    elapsed = time.monotonic() - t0
    return Phase(name, on, (callbench.cpu_seconds(pid) - cpu0) / elapsed,
                 (responder.answered() - answered0) / elapsed, result.calls, result.failed, result.p50, result.p99)


def print_table(phases: Sequence[Phase]) -> None:
    print(f"\n{'phase':<14} {'probing':>7} | {'B2BUA CPU %':>11} {'OPTIONS/s':>10} | {'calls':>6} "
          f"{'failed':>6} {'p50 ms':>7} {'p99 ms':>7}")
    for p in phases:
        load = (f"{p.calls:>6} {p.failed:>6} {p.p50:>7.1f} {p.p99:>7.1f}" if p.calls
                else f"{'-':>6} {'-':>6} {'-':>7} {'-':>7}")
        print(f"{p.name:<14} {'on' if p.probing else 'off':>7} | {100 * p.cpu:>11.1f} {p.options_per_s:>10.0f} | "
              + load)


def print_verdict(phases: Sequence[Phase], destinations: int, interval: float) -> None:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    idle_on = mean([p.cpu for p in phases if not p.calls and p.probing])
    idle_off = mean([p.cpu for p in phases if not p.calls and not p.probing])
    cost = idle_on - idle_off
    print(f"\nprobing {destinations} destinations every {interval:g} s: {100 * cost:.1f} % of one core "
          f"(idle on {100 * idle_on:.1f} % - off {100 * idle_off:.1f} %); target < {100 * CPU_TARGET:.0f} %: "
          f"{'MET' if cost < CPU_TARGET else 'NOT MET'}")
    on = [p.p99 for p in phases if p.calls and p.probing]
    off = [p.p99 for p in phases if p.calls and not p.probing]
    if on and off:
        noise = max(off) - min(off) if len(off) > 1 else float("nan")
        delta = mean(on) - mean(off)
        verdict = ("unchanged within noise" if delta <= max(noise, 0.1 * mean(off))
                   else "WORSE than the noise") if noise == noise else "(one pair: no noise estimate)"
        print(f"call setup p99 under load: on {mean(on):.1f} ms vs off {mean(off):.1f} ms "
              f"(ratio {mean(on) / mean(off):.2f}, off-phase spread {noise:.1f} ms): {verdict}")
        cpu_on = mean([p.cpu for p in phases if p.calls and p.probing])
        cpu_off = mean([p.cpu for p in phases if p.calls and not p.probing])
        print(f"B2BUA CPU under load: on {100 * cpu_on:.1f} % vs off {100 * cpu_off:.1f} % of one core "
              f"(ratio {cpu_on / cpu_off:.2f})")


def bench_main(args: argparse.Namespace) -> int:
    if not shutil.which("sipp"):
        raise SystemExit("sipp is missing: scripts/setup.sh --test installs it")
    addresses = -(-args.destinations // PER_ADDRESS)
    if addresses > MAX_RESPONDER_ADDRESSES:
        raise SystemExit(f"--destinations: at most {MAX_RESPONDER_ADDRESSES * PER_ADDRESS}")
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-bench-probing-"))
    responder = Responder(workdir, addresses, PER_ADDRESS)
    endpoints = responder.endpoints[: args.destinations]
    uas_port = callbench.free_port(callbench.GATEWAY_IP)
    uas = callbench.start_gateway(workdir, uas_port)
    b2b_port = callbench.free_port(callbench.B2BUA_IP)
    config = write_setup(workdir, endpoints, f"{callbench.GATEWAY_IP}:{uas_port}", b2b_port, args.interval,
                         args.timeout)
    t0 = time.monotonic()
    b2bua = callbench.start_b2bua(workdir, config)
    control = ControlClient.unix(workdir / "b2bua.sock")
    phases: list[Phase] = []
    try:
        deadline = time.monotonic() + max(10.0, 5 * args.interval)
        while (states := set_states(control)).get("AP", 0) < len(endpoints) and time.monotonic() < deadline:
            time.sleep(0.2)
        print(f"{len(endpoints)} destinations on {addresses} addresses; start to all probed: "
              f"{time.monotonic() - t0:.1f} s; states {json.dumps(states)}; B2BUA RSS "
              f"{callbench.rss_mb(b2bua.pid):.0f} MB", flush=True)
        settle = args.timeout + 0.2
        target = f"{callbench.B2BUA_IP}:{b2b_port}"
        for pair in range(1, args.pairs + 1):
            for on in (True, False):
                switch(control, on, settle)
                phases.append(measure_idle(f"idle #{pair}", on, b2bua.pid, responder, args.seconds))
            for on in (False, True):
                switch(control, on, settle)
                phases.append(measure_load(f"{args.rate} cps #{pair}", on, b2bua.pid, responder, workdir, target,
                                           args.rate, args.seconds))
                print(f"  {phases[-1].name} probing {'on' if on else 'off'} done", flush=True)
        down = {k: v for k, v in set_states(control).items() if k != "AP"}
        print(f"after the run: states of set 1 other than AP: {down or 'none'}")
    finally:
        callbench.stop(b2bua)
        callbench.stop(uas)
        callbench.stop(responder.proc)
    print_table(phases)
    print_verdict(phases, len(endpoints), args.interval)
    print(f"logs: {workdir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    resp = sub.add_parser("responder", help="(internal) answer OPTIONS on many UDP ports")
    resp.add_argument("--addresses", type=int, required=True)
    resp.add_argument("--per-address", type=int, required=True)
    resp.add_argument("--ports-file", required=True)
    resp.add_argument("--stats-file", required=True)
    ap.add_argument("--destinations", type=int, default=1000, help="destinations probed")
    ap.add_argument("--interval", type=float, default=1.0, help="ping_interval, seconds")
    ap.add_argument("--timeout", type=float, default=0.5, help="ping_timeout, seconds")
    ap.add_argument("--rate", type=int, default=200, help="calls per second under load")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    ap.add_argument("--pairs", type=int, default=2, help="on/off pairs of phases (noise estimate: 2+)")
    args = ap.parse_args(argv)
    if args.command == "responder":
        return responder_main(args)
    if not 1 <= args.destinations <= MAX_RESPONDER_ADDRESSES * PER_ADDRESS:
        ap.error(f"--destinations: 1..{MAX_RESPONDER_ADDRESSES * PER_ADDRESS}")
    if not (0.1 <= args.interval <= 60 and 0 < args.timeout <= args.interval and 1 <= args.rate <= 2000
            and 1 <= args.seconds <= 300 and 1 <= args.pairs <= 5):
        ap.error("need 0.1 <= --interval <= 60, 0 < --timeout <= --interval, --rate 1..2000, "
                 "--seconds 1..300, --pairs 1..5")
    if os.sysconf("SC_OPEN_MAX") < args.destinations + 256:
        ap.error(f"ulimit -n is below {args.destinations + 256}: the responder needs a socket per destination")
    return bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
