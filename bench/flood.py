"""Flood benchmark: what a refused request costs, and whether trusted calls survive a flood.

A sipp caller on a trusted address places calls through the B2BUA to a sipp gateway while a
flooder on an untrusted address sends INVITEs (unique Call-IDs, never ACKed) at a fixed rate.
Prints, per flood rate: the flood's answers by code, the trusted calls' failures and p99 setup
time, the B2BUA's CPU (cores) and its CPU per flood message (µs), for the early filter on
(requests refused in pjsip, before pjsua) and off (refused in App._on_incoming after pjsua set
the call up), and with the source blocked or only refused (``--no-block``: invite_rate 0).

    .venv/bin/python bench/flood.py                          # 500 1000 2000 INVITE/s, 10 s each
    .venv/bin/python bench/flood.py --rates 2000 --seconds 20 --calls-rate 50
    .venv/bin/python bench/flood.py --modes filter-noblock nofilter-noblock   # cost per refusal

Every run is bounded in messages and time. Run it on a quiet machine: the flooder, sipp and the
B2BUA share the CPU, and the numbers are only comparable between runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loguru import logger  # noqa: E402

from tests.e2e.flood import Flood  # noqa: E402
from tests.e2e.harness import B2buaProcess, Gateway, free_port, start_calls  # noqa: E402
from tests.e2e.sipfuzz import Peer, request  # noqa: E402

B2BUA_IP, CALLER_IP, GATEWAY_IP, FLOOD_IP = "127.0.0.1", "127.0.0.2", "127.0.0.10", "127.0.0.66"
TICKS = os.sysconf("SC_CLK_TCK")
MODES = {
    "filter": "early_filter = true",
    "nofilter": "early_filter = false",
    "filter-noblock": "early_filter = true\ninvite_rate = 0.0",
    "nofilter-noblock": "early_filter = false\ninvite_rate = 0.0",
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def config(port: int, gw: Gateway, mode: str) -> str:
    return (f'[sip]\nlisten = ["udp:{B2BUA_IP}:{port}"]\nmax_calls = 1000\nmax_forks = 1\n'
            f'[log]\nlevel = "INFO"\n[control]\nsocket = ""\n[routing]\ndefault_target = "{gw.uri}"\n'
            f'[security]\ntrusted = ["{CALLER_IP}/32"]\n{MODES[mode]}\n')


def run(workdir: Path, mode: str, rate: int, seconds: float, calls_rate: int) -> str:
    gw = Gateway.start("answer", GATEWAY_IP, None, workdir)
    port = free_port(B2BUA_IP, "udp")
    b2b = B2buaProcess.start(workdir, config(port, gw, mode))
    try:
        def invite(n: int, src_port: int) -> bytes:
            return request("INVITE", Peer(B2BUA_IP, port, FLOOD_IP, src_port), user=str(1000 + n % 9000),
                           call_id=f"flood-{n}", branch=f"f{n}")

        n_calls = max(1, int(calls_rate * seconds))
        cpu0 = cpu_seconds(b2b.pid)
        started = time.monotonic()
        flood = Flood((B2BUA_IP, port), FLOOD_IP, invite, count=int(rate * seconds), rate=rate, seconds=seconds,
                      linger=1.0).start()
        calls = start_calls(B2BUA_IP, port, ip=CALLER_IP, workdir=workdir, n=n_calls, rate=calls_rate,
                            call_duration_ms=100, name=f"caller-{mode}-{rate}")
        result = calls.wait(seconds + 60)
        flood.join()
        elapsed = time.monotonic() - started
        cpu = cpu_seconds(b2b.pid) - cpu0
        # what the trusted calls alone cost, measured the same way afterwards
        cpu1 = cpu_seconds(b2b.pid)
        quiet = start_calls(B2BUA_IP, port, ip=CALLER_IP, workdir=workdir, n=n_calls, rate=calls_rate,
                            call_duration_ms=100, name=f"quiet-{mode}-{rate}").wait(seconds + 60)
        calls_cpu = cpu_seconds(b2b.pid) - cpu1
        per_msg = (cpu - calls_cpu) / max(1, flood.sent) * 1e6
        setups = sorted(result.setup_times)
        p99 = setups[min(len(setups) - 1, int(len(setups) * 0.99))] * 1000 if setups else float("nan")
        answers = " ".join(f"{code}:{n}" for code, n in sorted(flood.responses.items())) or "none"
        return (f"{mode:17} {rate:6} {flood.sent / max(flood.elapsed, 1e-9):8.0f} {answers:>22} "
                f"{result.failed:5}/{result.created:<5} {p99:8.1f} {cpu / elapsed:6.2f} {per_msg:8.1f}"
                f"   (quiet: {quiet.failed} failed, median setup "
                f"{statistics.median(quiet.setup_times) * 1000 if quiet.setup_times else float('nan'):.1f} ms)")
    finally:
        b2b.stop()
        gw.stop(grace=0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[500, 1000, 2000], help="flood INVITEs per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each flood")
    ap.add_argument("--calls-rate", type=int, default=20, help="trusted calls per second meanwhile")
    ap.add_argument("--modes", nargs="+", default=["filter", "nofilter"], choices=sorted(MODES))
    args = ap.parse_args()
    logger.remove()  # the harness logs every process it starts
    print(f"{'mode':17} {'offered':>6} {'sent/s':>8} {'flood answers':>22} {'failed/calls':>11} "
          f"{'p99 ms':>8} {'cores':>6} {'µs/msg':>8}")
    for mode in args.modes:
        for rate in args.rates:
            with tempfile.TemporaryDirectory(prefix=f"flood-{mode}-{rate}-") as tmp:
                print(run(Path(tmp), mode, rate, args.seconds, args.calls_rate), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
