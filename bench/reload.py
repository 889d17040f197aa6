"""Reload benchmark: calls at a steady rate through the B2BUA while a large list is reloaded.

A sipp caller sends calls at ``--rate`` per second through the real B2BUA (dispatcher plugin,
default overload settings) to a sipp gateway. The list file holds that gateway in set 1 and
``--lines`` entries in all (the rest in other sets, never dialled). After a warm-up the list
is reloaded ``--reloads`` times over the control socket (``dispatcher.reload`` returns once
the new destinations are in use), and with ``--list`` listed as many times
(``dispatcher.list full``). Prints, for calls that started during a reload or listing and for
the others: calls, failed calls, setup time p50/p99/max (INVITE to 200 at the caller); then
each window's length and the B2BUA's RSS before and after.

    .venv/bin/python bench/reload.py                          # 100,000 lines, 100 calls/s, 3 reloads
    .venv/bin/python bench/reload.py --list                   # and 3 listings of the whole list
    .venv/bin/python bench/reload.py --lines 20000 --reloads 1 --gap 5   # a quick check

Every run is bounded in calls and time. Needs sipp (scripts/setup.sh --test installs it).
Numbers for docs/performance.md come from a quiet machine (nothing else running).
"""

from __future__ import annotations

import argparse
import csv
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from b2bua.control import ControlClient  # noqa: E402
from bench.load import rss_mb, stop  # noqa: E402
from tests.e2e.harness import B2buaProcess, free_port  # noqa: E402

# addresses of their own: RTP ports on 127.0.0.1 are often taken by other runs on a shared machine
CALLER_IP, B2BUA_IP, GATEWAY_IP = "127.0.0.62", "127.0.0.61", "127.0.0.63"
#: a call that started this long after a window ended still counts as "during" (its INVITE
#: may have waited in the socket while the loop was busy)
WINDOW_TAIL = 0.2


@dataclass(frozen=True)
class Window:
    kind: str  #: "reload" or "list"
    start: float  #: epoch seconds
    end: float


@dataclass(frozen=True)
class Sample:
    start: float  #: epoch seconds the call's INVITE went out
    setup_ms: float


def write_list(path: Path, gateway: str, lines: int, per_set: int, variant: int) -> None:
    """Set 1 is the real gateway; the other ``lines - 1`` entries fill sets 2, 3, ... (never dialled).
    ``variant`` changes one priority per file, so each reload reads a different list."""
    with path.open("w") as out:
        out.write(f"1 {gateway} 0 0 duid=gw\n")
        for i in range(lines - 1):
            setid = 2 + i // per_set
            priority = variant if i == 0 else i % 3
            out.write(f"{setid} sip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:5060 0 {priority} "
                      f"duid=d{i}\n")


def config_text(port: int) -> str:
    return (f'[sip]\nlisten = ["udp:{B2BUA_IP}:{port}"]\nmax_calls = 1000\n'
            f'[log]\nlevel = "INFO"\n[control]\nsocket = "b2bua.sock"\n'
            f'[plugins]\nenabled = ["dispatcher"]\n'
            f'[plugins.dispatcher]\nlist_file = "dispatcher.list"\nping_interval = 0\nstate_file = ""\n')


def start_gateway(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["sipp", "-sn", "uas", "-i", GATEWAY_IP, "-p", str(port), "-nostdin", "-max_socket", "10000",
         "-trace_err", "-error_file", str(workdir / "uas_err.log")],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def start_caller(workdir: Path, target: str, rate: int, calls: int) -> subprocess.Popen[bytes]:
    port = free_port(CALLER_IP)
    return subprocess.Popen(
        ["sipp", "-sn", "uac", "-i", CALLER_IP, "-p", str(port), "-r", str(rate), "-m", str(calls),
         "-l", str(rate * 20), "-d", "0", "-s", "1000", "-nostdin", "-trace_rtt", "-rtt_freq", "1",
         "-trace_stat", "-stf", str(workdir / "uac_stat.csv"), "-fd", "1", "-recv_timeout", "10000",
         "-max_socket", "10000", target],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def read_stats(workdir: Path) -> tuple[float, list[tuple[float, int]]]:
    """sipp's start (epoch) and, per 1 s period, (period end, calls failed in it)."""
    rows = list(csv.DictReader((workdir / "uac_stat.csv").read_text().splitlines(), delimiter=";"))
    if not rows:
        raise SystemExit(f"the caller wrote no statistics: see {workdir}")
    started = float(rows[0]["StartTime"].split("\t")[-1])
    periods = [(float(r["CurrentTime"].split("\t")[-1]), int(r["FailedCall(P)"])) for r in rows]
    return started, periods


def read_samples(workdir: Path, started: float) -> list[Sample]:
    samples = []
    for path in workdir.glob("uac_*_rtt.csv"):
        for row in csv.reader(path.read_text().splitlines()[1:], delimiter=";"):
            if len(row) >= 2:
                answered, setup = started + float(row[0]) / 1000, float(row[1])
                samples.append(Sample(answered - setup / 1000, setup))
    return samples


def inside(t: float, windows: list[Window]) -> bool:
    return any(w.start <= t <= w.end + WINDOW_TAIL for w in windows)


def overlaps(start: float, end: float, windows: list[Window]) -> bool:
    return any(start <= w.end + WINDOW_TAIL and w.start <= end for w in windows)


def summary(name: str, samples: list[Sample], failed: int) -> str:
    times = sorted(s.setup_ms for s in samples)
    if not times:
        return f"{name:<22} {0:>7} {failed:>7} {'-':>8} {'-':>8} {'-':>8}"
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return (f"{name:<22} {len(times):>7} {failed:>7} {statistics.median(times):>8.1f} {p99:>8.1f} "
            f"{times[-1]:>8.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=100_000, help="list-file lines (default 100000)")
    ap.add_argument("--per-set", type=int, default=100, help="entries per filler set (default 100)")
    ap.add_argument("--rate", type=int, default=100, help="calls per second (default 100)")
    ap.add_argument("--reloads", type=int, default=3, help="reloads (default 3)")
    ap.add_argument("--list", action="store_true", help="also list the whole set as often (dispatcher.list full)")
    ap.add_argument("--gap", type=float, default=12.0, help="seconds from one reload/listing to the next")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds of calls before the first reload")
    ap.add_argument("--module", default="b2bua",
                    help="run the B2BUA as 'python -m MODULE' (a wrapper that instruments it; found on PYTHONPATH)")
    args = ap.parse_args()
    if not shutil.which("sipp"):
        raise SystemExit("sipp is missing: scripts/setup.sh --test installs it")
    workdir = Path(tempfile.mkdtemp(prefix="b2bua-bench-reload-"))
    gw_port = free_port(GATEWAY_IP)
    list_path = workdir / "dispatcher.list"
    write_list(list_path, f"sip:{GATEWAY_IP}:{gw_port}", args.lines, args.per_set, 0)
    gateway = start_gateway(workdir, gw_port)
    port = free_port(B2BUA_IP)
    print(f"starting the B2BUA with {args.lines} list lines ...", flush=True)
    b2bua = B2buaProcess.start(workdir, config_text(port), ready_timeout=300, module=args.module)
    client = ControlClient.unix(workdir / "b2bua.sock")
    actions = ["reload"] * args.reloads + (["list"] * args.reloads if args.list else [])
    seconds = args.warmup + len(actions) * args.gap + 3
    caller = start_caller(workdir, f"{B2BUA_IP}:{port}", args.rate, int(args.rate * seconds))
    windows: list[Window] = []
    rss = [("before", rss_mb(b2bua.pid))]
    try:
        time.sleep(args.warmup)
        for n, kind in enumerate(actions):
            slot = time.time()
            if kind == "reload":
                write_list(list_path, f"sip:{GATEWAY_IP}:{gw_port}", args.lines, args.per_set, n + 1)
                t0 = time.time()
                answer = client.call("dispatcher.reload", timeout=600)
            else:
                t0 = time.time()
                answer = client.call("dispatcher.list", ["full"], timeout=600)
                answer = f"{answer['NRSETS']} sets"
            windows.append(Window(kind, t0, time.time()))
            rss.append((f"after {kind} {n + 1}", rss_mb(b2bua.pid)))
            print(f"{kind} {n + 1}: {windows[-1].end - t0:.2f} s ({answer})", flush=True)
            time.sleep(max(0.0, slot + args.gap - time.time()))
        try:
            caller.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            print("the caller overran its time: stopped", flush=True)
    finally:
        stop(caller, signal.SIGINT)  # sipp ends at once on SIGINT
        rc = b2bua.stop(60)
        stop(gateway, signal.SIGINT)
    started, periods = read_stats(workdir)
    samples = read_samples(workdir, started)
    print(f"\n{args.lines} lines, {args.rate} calls/s; a call is 'during' when it started in a window "
          f"(or {WINDOW_TAIL:g} s after one)")
    print(f"{'calls':<22} {'calls':>7} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    begin = started
    failed: dict[str, int] = {}
    for end, count in periods:
        kinds = [k for k in ("reload", "list") if overlaps(begin, end, [w for w in windows if w.kind == k])]
        key = kinds[0] if kinds else "outside"
        failed[key] = failed.get(key, 0) + count
        begin = end
    outside = [s for s in samples if not inside(s.start, windows)]
    print(summary("outside any window", outside, failed.get("outside", 0)))
    for kind in ("reload", "list"):
        mine = [w for w in windows if w.kind == kind]
        if mine:
            print(summary(f"during a {kind}", [s for s in samples if inside(s.start, mine)], failed.get(kind, 0)))
    for kind in ("reload", "list"):
        mine = [w for w in windows if w.kind == kind]
        if mine:
            print(f"{kind} windows: " + ", ".join(f"{w.end - w.start:.2f} s" for w in mine))
    print("B2BUA RSS: " + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss))
    shed = b2bua.log_text().count("new calls get 503")
    print(f"overload warnings in the B2BUA log: {shed}; B2BUA exit code {rc}; failed calls are counted per "
          f"1 s period of sipp's statistics")
    print(f"logs: {workdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
