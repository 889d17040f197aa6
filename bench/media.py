"""Talking-calls benchmark: N concurrent calls with two-way RTP through the B2BUA.

A caller phone places N calls through the B2BUA to a gateway phone; both play a tone into every
call for ``--seconds``, so every call carries 50 RTP packets a second each way on each leg. Then:

- **frames**, from the phones' own RTP/RTCP and jitter-buffer counters, per direction (what the
  caller received came through the B2BUA's A leg, what the gateway received through its B leg):
  lost (sequence gaps), late (discarded by the jitter buffer), concealed (frames the jitter
  buffer had to make up: missing or empty);
- **added one-way latency**: a probe phone sends a 10 ms burst every second to an echo phone and
  records the burst and its echo in one file; half the difference between the round trip through
  the B2BUA (during the load) and phone to phone directly (before it) is what the B2BUA adds;
- **CPU and RSS** of the B2BUA: idle, under load, and per call;
- with ``--early S``: each gateway answers with 183 and S seconds of early media first (bridged
  to the caller before the 200); the B2BUA's CPU from the first INVITE until every call is
  answered, per call (compare with a run without ``--early``: the set-up's cost, early media's
  RTP included);
- with ``--dtmf K``: after the load window, a second one of the same length in which every
  caller sends K digits (``--dtmf-method``); the B2BUA's extra CPU per relayed digit, and how
  many digits the gateway received.

The phones are pjsua2 processes (``tests/e2e/media/peer.py``) on the same machine: their CPU is
printed too, because on a small machine they compete with the B2BUA. Every run is bounded.

    .venv/bin/python bench/media.py                          # 100 calls, 60 s, G.711 (PCMU)
    .venv/bin/python bench/media.py --calls 20 --seconds 10  # a quick check
    .venv/bin/python bench/media.py --calls 400 --caller-codec G722 --clock-rate 16000
    .venv/bin/python bench/media.py --calls 100 --seconds 20 --dtmf 10 --early 3

Numbers are only worth publishing from a machine nothing else loads.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from e2e.configs import ListEntry, b2bua_config, write_list_file  # noqa: E402
from e2e.harness import B2buaProcess, HarnessError, free_port  # noqa: E402
from e2e.media.peers import MediaPeer  # noqa: E402
from e2e.media.tones import burst_onsets, read_wav, round_trips  # noqa: E402
from load import cpu_seconds, rss_mb  # noqa: E402 - bench/load.py, this script's neighbour

B2BUA_IP, CALLER_IP, GATEWAY_IP, PROBE_IP, ECHO_IP = (f"127.0.0.{x}" for x in (60, 61, 62, 63, 64))
#: the probe's bursts: 10 ms of 1 kHz every second (an echo later than that is a burst of its own)
BURST = "1000:10:990"
BURST_PERIOD = 1.0


@dataclass
class Usage:
    """CPU (cores) and RSS (MB) of some processes over a window."""

    cpu: dict[str, float]
    rss: dict[str, float]


@contextmanager
def measure(pids: dict[str, int]) -> Iterator[Usage]:
    """CPU used by each process between enter and exit, and its RSS at exit."""
    usage = Usage({}, {})
    start = {name: cpu_seconds(pid) for name, pid in pids.items()}
    t0 = time.monotonic()
    yield usage
    elapsed = time.monotonic() - t0
    usage.cpu = {name: (cpu_seconds(pid) - start[name]) / elapsed for name, pid in pids.items()}
    usage.rss = {name: rss_mb(pid) for name, pid in pids.items()}


@dataclass
class Frames:
    """One direction's frame counters summed over the calls."""

    calls: int = 0
    received: int = 0
    lost: int = 0
    late: int = 0
    concealed: int = 0

    def add(self, now: dict[str, Any], before: dict[str, Any]) -> None:
        """One call's counters over the window: ``now`` minus ``before`` (both cumulative)."""
        def delta(key: str) -> int:
            return int(now.get(key, 0)) - int(before.get(key, 0))

        self.calls += 1
        self.received += delta("rx_packets")
        self.lost += delta("rx_lost")
        self.late += delta("jb_frames_discarded")
        self.concealed += delta("jb_frames_lost") + delta("jb_empty")

    def share(self, count: int) -> float:
        expected = self.received + self.lost
        return 100.0 * count / expected if expected else 0.0

    def line(self, label: str) -> str:
        return (f"{label:<22} {self.calls:>5} calls  {self.received:>9} frames  lost {self.lost:>6} "
                f"({self.share(self.lost):.3f} %)  late {self.late:>6} ({self.share(self.late):.3f} %)  "
                f"concealed {self.concealed:>6} ({self.share(self.concealed):.3f} %)")


def frames_between(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> Frames:
    """The frame counters of the calls in both snapshots (`MediaPeer.stats`), over the time between."""
    out = Frames()
    for number, stats in now.items():
        if number in before:
            out.add(stats, before[number])
    return out


def probe_round_trips(probe: MediaPeer, uri: str, calls: int, seconds: float) -> list[float]:
    """Round trips (s) of the probe's bursts to the echo phone at ``uri``, ``calls`` calls in turn."""
    trips: list[float] = []
    for _ in range(calls):
        talk = probe.talk(uri, seconds, timeout=30)
        if talk.code != 200 or talk.recording is None:
            raise HarnessError(f"probe call to {uri} failed: {talk.ended}")
        samples, rate = read_wav(talk.recording)
        trips += round_trips(burst_onsets(samples, rate), BURST_PERIOD)
    return trips


def wait_all(peer: MediaPeer, numbers: Sequence[int], state: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = set(numbers)
    while pending:
        pending -= {e["call"] for e in peer.events("state") if e["state"] == state}
        ended = {e["call"] for e in peer.events("ended")} & pending
        if ended:
            raise HarnessError(f"{len(ended)} calls ended before {state}, e.g. "
                               f"{next(e for e in peer.events('ended') if e['call'] in ended)}")
        if time.monotonic() > deadline:
            raise HarnessError(f"{len(pending)} of {len(numbers)} calls not {state} after {timeout:.0f} s")
        time.sleep(0.2)


def run(args: argparse.Namespace, workdir: Path) -> None:
    n = args.calls
    slots = n + args.probe_calls + 8
    with ExitStack() as stack:
        def peer(ip: str, name: str, **kwargs: Any) -> MediaPeer:
            p = MediaPeer.start(workdir, ip, name=name, log_level=1, stats_interval=0, max_calls=slots, **kwargs)
            stack.callback(p.stop, 10.0)
            return p

        answer = f"early-then-answer:{args.early:g}" if args.early else "answer"
        gateway = peer(GATEWAY_IP, "gateway", answer=answer, tone=440, early_tone=660 if args.early else None,
                       record=False, codecs=[args.gateway_codec])
        # the B2BUA offers the gateway's codec first: the echo phone picks it, like the gateway (the
        # probe's path is the load's), and takes the caller's codec when the probe calls it directly
        codecs = list(dict.fromkeys([args.gateway_codec, args.caller_codec]))
        echo = peer(ECHO_IP, "echo", echo=True, record=False, codecs=codecs)
        caller = peer(CALLER_IP, "caller", tone=1300, record=False, codecs=[args.caller_codec],
                      clock_rate=args.peer_clock_rate)
        probe = peer(PROBE_IP, "probe", tone=BURST, record=True, record_self=True, codecs=[args.caller_codec],
                     clock_rate=args.peer_clock_rate)

        print(f"latency baseline: {args.probe_calls} probe call(s) phone to phone", flush=True)
        direct = probe_round_trips(probe, echo.uri_for("probe"), args.probe_calls, args.probe_seconds)

        write_list_file(workdir, [ListEntry(1, gateway.uri), ListEntry(2, echo.uri)])
        port = free_port(B2BUA_IP)
        config = b2bua_config(
            B2BUA_IP, port, log_level="INFO",
            routes=[{"ruri_user_prefix": "probe", "set": 2, "algorithm": "round-robin"},
                    {"set": 1, "algorithm": "round-robin"}],
            sip={"max_calls": slots, "codecs": codecs, "clock_rate": args.clock_rate,
                 "attempt_timeout": 30.0, "shutdown_grace": 0.5})
        b2b = B2buaProcess.start(workdir, config)
        stack.callback(b2b.stop)
        pids = {"b2bua": b2b.pid, "caller": caller.proc.pid, "gateway": gateway.proc.pid}

        with measure(pids) as idle:
            time.sleep(3)
        print(f"{n} calls at {args.rate:g}/s, {args.caller_codec} -> {args.gateway_codec}, "
              f"bridge {args.clock_rate} Hz", flush=True)
        with measure(pids) as setup:
            set_up_from = time.monotonic()
            numbers = caller.call(f"sip:load@{B2BUA_IP}:{port}", count=n, rate=args.rate)
            wait_all(caller, numbers, "CONFIRMED", timeout=n / args.rate + args.early + 30)
            set_up_in = time.monotonic() - set_up_from
        time.sleep(2)  # jitter buffers settle
        at_start = caller.stats(), gateway.stats()
        with measure(pids) as load:
            talking = time.monotonic()
            trips = probe_round_trips(probe, f"sip:probe@{B2BUA_IP}:{port}", args.probe_calls,
                                      args.probe_seconds)
            time.sleep(max(0.0, args.seconds - (time.monotonic() - talking)))
        down = frames_between(at_start[0], caller.stats())  # B2BUA -> caller: through the A legs
        up = frames_between(at_start[1], gateway.stats())  # B2BUA -> gateway: through the B legs
        digits = 0
        if args.dtmf:
            with measure(pids) as dtmf:
                started = time.monotonic()
                for number in numbers:
                    caller.dtmf(number, ("1234567890*#" * args.dtmf)[:args.dtmf], method=args.dtmf_method,
                                duration_ms=100)
                time.sleep(max(0.0, args.seconds - (time.monotonic() - started)))
            digits = sum(len(gateway.digits(number)) for number in range(1, n + 1))
        caller.hangup("all")
        gateway_calls = len(gateway.incoming())
        b2b_log = b2b.log_text()

    errors = [line for line in b2b_log.splitlines() if " ERROR " in line or " WARNING " in line]
    print()
    print(down.line("to the caller (A legs)"))
    print(up.line("to the gateway (B legs)"))
    if gateway_calls != n:
        print(f"!! the gateway got {gateway_calls} calls, expected {n}")
    rtt_direct = statistics.median(direct) * 1000 if direct else float("nan")
    rtt_b2bua = statistics.median(trips) * 1000 if trips else float("nan")
    print(f"round trip (median): phone to phone {rtt_direct:.1f} ms ({len(direct)} bursts), through the "
          f"B2BUA under load {rtt_b2bua:.1f} ms ({len(trips)} bursts): added one-way latency "
          f"{(rtt_b2bua - rtt_direct) / 2:.1f} ms")
    cpu = load.cpu["b2bua"]
    print(f"B2BUA CPU: idle {idle.cpu['b2bua'] * 100:.1f} %, with {n} talking calls {cpu * 100:.1f} % of a core, "
          f"{(cpu - idle.cpu['b2bua']) * 100 / n:.3f} % per call")
    setup_ms = (setup.cpu["b2bua"] - idle.cpu["b2bua"]) * set_up_in * 1000 / n
    print(f"call set-up{f' with {args.early:g} s of early media' if args.early else ''}: B2BUA CPU "
          f"{setup_ms:.2f} ms per call ({n} calls in {set_up_in:.1f} s)")
    if args.dtmf:
        extra = (dtmf.cpu["b2bua"] - load.cpu["b2bua"]) * args.seconds
        sent = n * args.dtmf
        print(f"DTMF ({args.dtmf_method}): {sent} digits sent, {digits} received by the gateway; B2BUA CPU "
              f"{extra * 1e6 / max(1, digits):.0f} us per relayed digit over the talking calls' own")
    print(f"B2BUA RSS: idle {idle.rss['b2bua']:.0f} MB, loaded {load.rss['b2bua']:.0f} MB, "
          f"{(load.rss['b2bua'] - idle.rss['b2bua']) * 1000 / n:.0f} KB per call")
    print(f"load generators: caller {load.cpu['caller'] * 100:.0f} %, gateway {load.cpu['gateway'] * 100:.0f} % "
          f"of a core ({os.cpu_count()} cores here)")
    if errors:
        print(f"B2BUA warnings/errors: {len(errors)}, first: {errors[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=100, help="concurrent talking calls")
    p.add_argument("--seconds", type=float, default=60.0, help="how long they talk")
    p.add_argument("--rate", type=float, default=50.0, help="calls set up per second")
    p.add_argument("--caller-codec", default="PCMU", help="the caller's only codec (PCMU, PCMA, G722, opus, G729)")
    p.add_argument("--gateway-codec", default="PCMU", help="the gateway's only codec")
    p.add_argument("--clock-rate", type=int, default=8000, help="the B2BUA's [sip] clock_rate")
    p.add_argument("--peer-clock-rate", type=int, default=8000, help="the caller and probe phones' bridge rate")
    p.add_argument("--probe-calls", type=int, default=3, help="latency probe calls (each way of measuring)")
    p.add_argument("--probe-seconds", type=float, default=6.0, help="length of a probe call")
    p.add_argument("--early", type=float, default=0.0,
                   help="seconds of early media (183) the gateway plays before answering each call")
    p.add_argument("--dtmf", type=int, default=0, help="digits each caller sends in a second load window")
    p.add_argument("--dtmf-method", default="rfc4733", choices=("rfc4733", "info", "info-dtmf"))
    p.add_argument("--workdir", default="", help="keep logs here (default: a temporary folder)")
    args = p.parse_args(argv)
    if not 1 <= args.calls <= 1000 or not 1 <= args.seconds <= 3600 or args.rate <= 0:
        p.error("need 1 <= calls <= 1000, 1 <= seconds <= 3600, rate > 0")
    if not 0 <= args.early <= 60 or not 0 <= args.dtmf <= 100:
        p.error("need 0 <= early <= 60, 0 <= dtmf <= 100")
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        run(args, workdir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-media-") as tmp:
            run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
