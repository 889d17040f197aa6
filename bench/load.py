"""Call-rate benchmark: sipp caller -> B2BUA -> sipp gateway, at rising rates, on loopback.

Prints, per offered rate: achieved calls/s, failed %, p50/p99 setup time (INVITE to 200 at
the caller), the B2BUA's CPU (cores) and RSS, and the same numbers for sipp calling sipp
directly (the ceiling of this machine), with the ratio.

    .venv/bin/python bench/load.py                       # rates 200 400 600 800, 10 s each
    .venv/bin/python bench/load.py --rates 600 --seconds 20
    .venv/bin/python bench/load.py --concurrent 1000     # hold 1000 bridged calls
    .venv/bin/python bench/load.py --recovery 800        # 10 s at 800 calls/s, then 100 calls/s probes

Every run is bounded in calls and time. Needs sipp (scripts/setup.sh --test installs it).
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALLER_IP, B2BUA_IP, GATEWAY_IP = "127.0.0.2", "127.0.0.1", "127.0.0.10"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6


@dataclass
class Result:
    offered: int
    achieved: float
    calls: int
    failed: int
    p50: float
    p99: float
    cpu: float = 0.0
    rss: float = 0.0

    @property
    def failed_pct(self) -> float:
        return 100.0 * self.failed / max(1, self.calls)


def start_gateway(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", GATEWAY_IP, "-p", str(port), "-nostdin",
         "-max_socket", "10000", "-trace_err", "-error_file", str(workdir / "uas_err.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def run_caller(workdir: Path, target: str, rate: int, calls: int, hold_ms: int, timeout: float) -> Result:
    port = free_port(CALLER_IP)
    for old in workdir.glob("uac_*_rtt.csv"):
        old.unlink()
    stat = workdir / "uac_stat.csv"
    cmd = ["sipp", "-sn", "uac", "-i", CALLER_IP, "-p", str(port), "-r", str(rate), "-m", str(calls),
           "-l", str(max(rate * 4, 100) + rate * hold_ms // 1000), "-d", str(hold_ms), "-s", "1000",
           "-nostdin", "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-stf", str(stat), "-fd", "1",
           "-timeout", f"{int(timeout)}s", "-timeout_error", "-max_socket", "10000", target]
    started = time.monotonic()
    subprocess.run(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 30,
                   check=False)
    elapsed = time.monotonic() - started
    rows = list(csv.reader(stat.read_text().splitlines(), delimiter=";")) if stat.exists() else []
    header, last = (rows[0], rows[-1]) if len(rows) >= 2 else ([], [])
    values = dict(zip(header, last, strict=False))
    ok = int(values.get("SuccessfulCall(C)", 0))
    failed = int(values.get("FailedCall(C)", 0))
    samples: list[float] = []
    for path in workdir.glob("uac_*_rtt.csv"):
        for row in csv.reader(path.read_text().splitlines()[1:], delimiter=";"):
            if len(row) >= 2:
                samples.append(float(row[1]))
    samples.sort()
    p50 = statistics.median(samples) if samples else float("nan")
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))] if samples else float("nan")
    achieved = (ok + failed) / max(1e-9, elapsed - hold_ms / 1000)
    return Result(rate, achieved, ok + failed, failed + (calls - ok - failed), p50, p99)


def write_config(workdir: Path, port: int, gw_port: int, max_calls: int) -> Path:
    path = workdir / "config.toml"
    path.write_text(
        f'[sip]\nlisten = ["udp:{B2BUA_IP}:{port}"]\nmax_calls = {max_calls}\nmax_forks = 1\n'
        f'[log]\nlevel = "INFO"\n[control]\nsocket = ""\n'
        f'[routing]\ndefault_target = "sip:{GATEWAY_IP}:{gw_port}"\n'
    )
    return path


def start_b2bua(workdir: Path, config: Path) -> subprocess.Popen[bytes]:
    log = (workdir / "b2bua.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "b2bua", "run", "-c", str(config)], cwd=workdir,
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if b"b2bua ready" in (workdir / "b2bua.log").read_bytes():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop(proc)
    raise SystemExit("the B2BUA did not start:\n" + (workdir / "b2bua.log").read_text()[-3000:])


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[200, 400, 600, 800])
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each rate step")
    ap.add_argument("--hold-ms", type=int, default=0, help="call duration at the caller")
    ap.add_argument("--concurrent", type=int, default=0,
                    help="instead: hold this many bridged calls for 20 s (ramp 100 calls/s)")
    ap.add_argument("--no-direct", action="store_true", help="skip the sipp->sipp ceiling")
    ap.add_argument("--recovery", type=int, default=0, metavar="RATE",
                    help="instead: overload at RATE calls/s for --seconds, then probe at 100 calls/s "
                         "2, 30 and 60 s later (does the B2BUA recover?)")
    args = ap.parse_args()
    if not shutil.which("sipp"):
        raise SystemExit("sipp is missing: scripts/setup.sh --test installs it")
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-bench-"))
    gw_port = free_port(GATEWAY_IP)
    gateway = start_gateway(workdir, gw_port)
    b2b_port = free_port(B2BUA_IP)
    max_calls = args.concurrent + 20 if args.concurrent else 1000
    b2bua = start_b2bua(workdir, write_config(workdir, b2b_port, gw_port, max_calls))
    try:
        if args.concurrent:
            return concurrent(workdir, b2bua, b2b_port, args.concurrent)
        if args.recovery:
            return recovery(workdir, b2b_port, args.recovery, args.seconds)
        print(f"{'offered':>7} | {'via B2BUA: cps':>14} {'failed%':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU':>5} "
              f"{'RSS MB':>7} | {'direct: cps':>11} {'failed%':>8} {'p99 ms':>7} | {'ratio':>5}")
        for rate in args.rates:
            calls = int(rate * args.seconds)
            cpu0, t0 = cpu_seconds(b2bua.pid), time.monotonic()
            via = run_caller(workdir, f"{B2BUA_IP}:{b2b_port}", rate, calls, args.hold_ms, args.seconds * 3 + 10)
            via.cpu = (cpu_seconds(b2bua.pid) - cpu0) / (time.monotonic() - t0)
            via.rss = rss_mb(b2bua.pid)
            time.sleep(2)  # let transactions of this step end
            if args.no_direct:
                direct = Result(rate, float("nan"), 0, 0, float("nan"), float("nan"))
            else:
                direct = run_caller(workdir, f"{GATEWAY_IP}:{gw_port}", rate, calls, args.hold_ms,
                                    args.seconds * 3 + 10)
            ratio = via.achieved / direct.achieved if direct.achieved == direct.achieved and direct.achieved else 0
            print(f"{rate:>7} | {via.achieved:>14.0f} {via.failed_pct:>8.2f} {via.p50:>7.1f} {via.p99:>7.1f} "
                  f"{via.cpu:>5.2f} {via.rss:>7.0f} | {direct.achieved:>11.0f} {direct.failed_pct:>8.2f} "
                  f"{direct.p99:>7.1f} | {ratio:>5.2f}", flush=True)
            time.sleep(2)
    finally:
        stop(b2bua)
        stop(gateway, signal.SIGINT)  # sipp ends at once on SIGINT (it ignores SIGTERM while busy)
        if b2bua.returncode != 0:  # an abort at shutdown (negative: the signal) must not go unseen
            print(f"the B2BUA exited with {b2bua.returncode}: see {workdir / 'b2bua.log'}", flush=True)
    print(f"logs: {workdir}")
    return 0


def recovery(workdir: Path, port: int, rate: int, seconds: float) -> int:
    """Overload the B2BUA, then check that calls at a modest rate go through again."""
    target = f"{B2BUA_IP}:{port}"
    over = run_caller(workdir, target, rate, int(rate * seconds), 0, seconds * 3 + 10)
    print(f"overload: {rate} calls/s for {seconds:g} s -> {over.achieved:.0f} achieved, "
          f"{over.failed_pct:.1f} % failed", flush=True)
    ended = time.monotonic()
    for after in (2, 30, 60):
        time.sleep(max(0.0, ended + after - time.monotonic()))
        probe = run_caller(workdir, target, 100, 500, 0, 40)
        print(f"{after:>3} s later: 100 calls/s x 5 s -> {probe.failed_pct:.1f} % failed, p99 setup "
              f"{probe.p99:.0f} ms", flush=True)
    return 0


def concurrent(workdir: Path, b2bua: subprocess.Popen[bytes], port: int, n: int) -> int:
    """Ramp to ``n`` calls held for 20 s, sample the B2BUA, then let them all hang up."""
    hold_ms = int(n / 100 * 1000) + 20000
    cpu0, t0 = cpu_seconds(b2bua.pid), time.monotonic()
    result = run_caller(workdir, f"{B2BUA_IP}:{port}", 100, n, hold_ms, hold_ms / 1000 + n / 100 + 60)
    cpu = (cpu_seconds(b2bua.pid) - cpu0) / (time.monotonic() - t0)
    print(f"concurrent calls held: {n} for {hold_ms / 1000:.0f} s | completed {result.calls - result.failed} "
          f"failed {result.failed} ({result.failed_pct:.2f} %) | p99 setup {result.p99:.1f} ms | "
          f"CPU {cpu:.2f} cores avg | RSS {rss_mb(b2bua.pid):.0f} MB")
    return 0 if result.failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
